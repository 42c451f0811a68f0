"""Shared fixtures: real keyspan servers on 127.0.0.1 with temp data dirs.

`server`/`kv` run an in-process server on the test's own loop (servicer-level tests);
`ThreadedServer`/`server_address`/`client` run one on a loop thread of its own, so blocking
Client calls from a test and AsyncClient calls from a test's loop both reach it.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from keyspan.services.config import ServeConfig
from keyspan.services.server import KeyspanServer
from keyspan.streams import Client
from keyspan.v1 import kv_pb2_grpc

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
pytest_plugins = ["pytester"]  # tests of the keyspan pytest plugin run pytest in a subprocess


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


class ThreadedServer:
    """KeyspanServer on 127.0.0.1:0 with its own loop thread; `stop()` stops both."""

    def __init__(self, data: Path, **settings: object) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        config = ServeConfig(address="127.0.0.1:0", data=data, **settings)  # type: ignore[arg-type]

        async def start() -> KeyspanServer:
            server = KeyspanServer(config)
            await server.start()
            return server

        self.server = asyncio.run_coroutine_threadsafe(start(), self.loop).result(30)
        self.address = f"127.0.0.1:{self.server.port}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(0.5), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def threaded_server(tmp_path: Path) -> Iterator[ThreadedServer]:
    """A fresh server (it starts in about 50 ms) with an empty data dir, for one test."""
    server = ThreadedServer(tmp_path / "kv", synchronous="NORMAL")
    yield server
    server.stop()


@pytest.fixture
def server_address(threaded_server: ThreadedServer) -> str:
    return threaded_server.address


@pytest.fixture
def client(server_address: str) -> Iterator[Client]:
    """A blocking Client on an empty store."""
    with Client(server_address) as kv:
        yield kv
