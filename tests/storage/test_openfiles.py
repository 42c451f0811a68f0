"""The open-files limit: raised at start, warned about when too low for the partitions."""

from __future__ import annotations

import resource
from collections.abc import Iterator
from pathlib import Path

import pytest

from keyspan.storage import shardset
from keyspan.storage.openfiles import RESERVED_FILES, files_per_partition, raise_open_files_limit
from keyspan.storage.shardset import ShardSet, ShardSetOptions, ranges_from_split_points


@pytest.fixture
def restored_limit() -> Iterator[tuple[int, int]]:
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    yield limits
    resource.setrlimit(resource.RLIMIT_NOFILE, limits)


def test_the_soft_limit_is_raised_to_the_hard_one(restored_limit: tuple[int, int]) -> None:
    soft, hard = restored_limit
    if hard == resource.RLIM_INFINITY:  # nothing finite to raise it to: left as it is
        assert raise_open_files_limit() == soft
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (soft, hard)
        return
    lowered = max(hard // 2, min(hard, 64))
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
    assert raise_open_files_limit() == hard
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)


def test_too_many_partitions_for_the_limit_are_warned_about_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    per = files_per_partition(2)
    monkeypatch.setattr(shardset, "open_files_limit", lambda: RESERVED_FILES + 2 * per)  # room for 2
    ranges = [(f"p{i}", r) for i, r in enumerate(ranges_from_split_points([b"g", b"n", b"u"]))]
    shards = ShardSet(tmp_path, ShardSetOptions(read_threads=2))
    try:
        shards.open(ranges)
    finally:
        shards.close()
    warned = [r for r in caplog.records if r.levelname == "WARNING"]
    assert [r.getMessage() for r in warned] == [
        "open-files limit too low for the partitions: raise it (ulimit -n, LimitNOFILE=)"
    ]
    assert (warned[0].partitions, warned[0].files_needed) == (3, RESERVED_FILES + 3 * per)  # type: ignore[attr-defined]
