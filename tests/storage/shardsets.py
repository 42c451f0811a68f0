"""Shard sets on real SQLite files, for the storage tests (the `shards` fixture is in
conftest.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from keyspan.storage.shardset import ShardSet, ranges_from_split_points


async def open_set(path: Path, split: list[bytes] | None = None) -> ShardSet:
    shards = ShardSet(path)
    ranges = ranges_from_split_points(split if split is not None else [b"m"])
    await asyncio.to_thread(shards.open, [(f"p{i}", r) for i, r in enumerate(ranges)])
    return shards
