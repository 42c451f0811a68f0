"""A data directory belongs to one keyspan process at a time."""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import IO

from keyspan.storage.errors import KeyspanError


def lock_directory(directory: Path) -> IO[str]:
    """Take an exclusive lock on `directory`'s LOCK file, held until the file returned is
    closed (or the process ends); KeyspanError when another process holds it."""
    lock_file = open(directory / "LOCK", "a+")  # noqa: SIM115 - held by the caller
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.close()
        raise KeyspanError(f"{directory} is in use by another keyspan process") from None
    return lock_file
