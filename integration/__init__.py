"""Real processes on loopback: the workflows and the perf suite with its history."""
