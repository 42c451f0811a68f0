"""The `keyspan` command's entry point, kept light so that it runs first.

A SIGTERM or Ctrl-C that comes while the command still imports its modules (~0.3 s) ends
it as one that comes later would: a server (`serve`, `control`, `node`, `gateway`) exits
0, having started nothing yet, and any other command exits with the shell's code (130 for
Ctrl-C, 143 for SIGTERM). It was a KeyboardInterrupt traceback from inside an import, or
the process killed by the signal.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

SERVERS = frozenset({"serve", "control", "node", "gateway"})


def main() -> None:
    server = _command(sys.argv[1:]) in SERVERS

    def early(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0 if server else 128 + signum)

    # A signal the process was started with ignored (`cmd &` from a script ignores SIGINT,
    # `trap '' TERM`) stays ignored, as it did before this entry point.
    previous = {
        signum: handler
        for signum in (signal.SIGINT, signal.SIGTERM)
        if (handler := signal.getsignal(signum)) is not signal.SIG_IGN
    }
    for signum in previous:
        signal.signal(signum, early)
    from keyspan.services.cli import main as run

    if not server:  # a server keeps them until its event loop sets its own
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    run()


def _command(args: list[str]) -> str | None:
    """The command's name: the first argument (the group takes only --help, --version)."""
    return args[0] if args else None
