"""Shared fixtures: a real in-process keyspan server on a free port, and its stub."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest_asyncio

from keyspan.services.config import ServeConfig
from keyspan.services.server import KeyspanServer
from keyspan.v1 import kv_pb2_grpc

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


@pytest_asyncio.fixture
async def server(tmp_path: Path) -> AsyncIterator[KeyspanServer]:
    srv = KeyspanServer(ServeConfig(address="127.0.0.1:0", data=tmp_path / "data", sweep_interval_s=3600))
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop(0)


@pytest_asyncio.fixture
async def kv(server: KeyspanServer) -> AsyncIterator[kv_pb2_grpc.KVStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield kv_pb2_grpc.KVStub(channel)
