"""Shard sets on real SQLite files in tmp_path, for the storage tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from keyspan.storage.shardset import ShardSet, ranges_from_split_points


async def open_set(path: Path, split: list[bytes] | None = None) -> ShardSet:
    shards = ShardSet(path)
    ranges = ranges_from_split_points(split if split is not None else [b"m"])
    await asyncio.to_thread(shards.open, [(f"p{i}", r) for i, r in enumerate(ranges)])
    return shards


@pytest_asyncio.fixture
async def shards(tmp_path: Path) -> AsyncIterator[ShardSet]:
    s = await open_set(tmp_path / "d")
    try:
        yield s
    finally:
        s.close()
