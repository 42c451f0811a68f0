"""Shard sets on real SQLite files in tmp_path, for the storage tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from keyspan.storage.shardset import ShardSet
from tests.storage.shardsets import open_set


@pytest_asyncio.fixture
async def shards(tmp_path: Path) -> AsyncIterator[ShardSet]:
    s = await open_set(tmp_path / "d")
    try:
        yield s
    finally:
        s.close()
