"""The process's open-files limit, as the shards see it.

Every SQLite connection to a shard holds two descriptors (the database and its WAL; the
`unix-excl` VFS keeps the WAL index in memory, so there is no -shm file), and a partition
has one connection for its writer, one for reads on the event loop, one per read thread
and one for counts. A node with many partitions therefore needs many descriptors, and the
usual soft limit of 1024 runs out at about a hundred partitions.
"""

from __future__ import annotations

import errno
import logging
import os
import resource

from keyspan.storage.throttled_log import ThrottledLog

FILES_PER_CONNECTION = 2
# Descriptors kept for the rest of the process: client connections, the gRPC core's own,
# the data dir's lock, log files, the metrics endpoint.
RESERVED_FILES = 256

log = logging.getLogger(__name__)


def files_per_partition(read_threads: int) -> int:
    """Descriptors one partition may hold once every thread has read it."""
    return (read_threads + 3) * FILES_PER_CONNECTION


def open_files_limit() -> int:
    """The soft limit on this process's open descriptors (`ulimit -n`)."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def raise_open_files_limit() -> int:
    """Raise the soft open-files limit to the hard one, as servers commonly do; return the
    limit now in force. A limit that cannot be raised is left as it was."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft
        return hard
    return soft


def out_of_files() -> bool:
    """Whether the process has no descriptor left (after an open failed)."""
    try:
        fd = os.open(os.devnull, os.O_RDONLY)
    except OSError as err:
        return err.errno in (errno.EMFILE, errno.ENFILE)
    os.close(fd)
    return False


# Reads refused for want of a descriptor, logged with how many (storage/shard.py).
refusals = ThrottledLog(log, "open-files limit reached: calls refused", "refused")
