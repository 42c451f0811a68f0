"""A data directory's lock: one keyspan process at a time."""

from __future__ import annotations

from pathlib import Path

import pytest

from keyspan.storage.dirlock import lock_directory
from keyspan.storage.errors import KeyspanError


def test_a_second_lock_is_refused_until_the_first_is_closed(tmp_path: Path) -> None:
    held = lock_directory(tmp_path)
    with pytest.raises(KeyspanError, match="is in use by another keyspan process"):
        lock_directory(tmp_path)
    held.close()
    lock_directory(tmp_path).close()


def test_a_data_dir_whose_lock_file_was_deleted_is_still_refused(tmp_path: Path) -> None:
    """A second server took a new LOCK file, started, and failed only ~11 s later on
    SQLite's "database is locked"."""
    held = lock_directory(tmp_path)
    try:
        (tmp_path / "LOCK").unlink()
        with pytest.raises(KeyspanError, match="is in use by another keyspan process"):
            lock_directory(tmp_path)
    finally:
        held.close()


def test_a_lock_let_go_without_close_frees_the_directory(tmp_path: Path) -> None:
    """A start that failed after taking it (a damaged catalogue) never closed it: the
    directory's descriptor kept its lock, and a retry in the same process was refused."""
    import gc

    lock_directory(tmp_path)  # dropped at once, never closed
    gc.collect()
    lock_directory(tmp_path).close()
