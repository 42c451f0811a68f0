"""A data directory belongs to one keyspan process at a time."""

from __future__ import annotations

import fcntl
import os
import weakref
from pathlib import Path
from typing import IO

from keyspan.storage.errors import KeyspanError


class DirectoryLock:
    """Exclusive locks on a directory and on its LOCK file, held until `close` (or the
    process ends). The directory's own lock still holds when LOCK is deleted under a
    running process: a second one then took a new LOCK, started, and failed only ~11 s
    later on SQLite's "database is locked". LOCK stays, for a look with `ls` and for
    keyspan releases that lock only it."""

    def __init__(self, directory: Path) -> None:
        directory_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        # Closed with this object too, as the LOCK file is: a start that failed and was let
        # go (no close) kept the directory locked for the rest of the process.
        self._release_directory = weakref.finalize(self, os.close, directory_fd)
        self._lock_file: IO[str] | None = None
        try:
            _exclusive(directory_fd, directory, required=False)
            self._lock_file = open(directory / "LOCK", "a+")  # noqa: SIM115 - held until close
            _exclusive(self._lock_file.fileno(), directory)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None
        self._release_directory()  # once; later calls do nothing


def lock_directory(directory: Path) -> DirectoryLock:
    """Take an exclusive lock on `directory`, held until the lock returned is closed (or the
    process ends); KeyspanError when another process holds it."""
    return DirectoryLock(directory)


def _exclusive(fd: int, directory: Path, required: bool = True) -> None:
    """Lock `fd`; not `required`: a file system that cannot lock it (a directory on some
    network file systems) is let be, the LOCK file's lock still holding."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise KeyspanError(f"{directory} is in use by another keyspan process") from None
    except OSError:
        if required:
            raise
