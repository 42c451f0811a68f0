"""`python -m integration.perf.bench ...`: the same commands as `keyspan bench ...`."""

from keyspan.services.cli_bench import bench

if __name__ == "__main__":
    bench()
