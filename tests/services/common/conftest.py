"""Fixtures for the observability tests: in-process servers on 127.0.0.1 port 0, scrapes."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
import sentry_sdk
from obs_helpers import SentryEndpoint, TraceReceiver

from keyspan.services.config import ServeConfig
from keyspan.services.server import KeyspanServer

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

StartServer = Callable[..., Awaitable[KeyspanServer]]


@pytest_asyncio.fixture
async def start_server(tmp_path: Path) -> AsyncIterator[StartServer]:
    """Start KeyspanServers with config overrides; every one is stopped afterwards."""
    started: list[KeyspanServer] = []

    async def start(**settings: Any) -> KeyspanServer:
        settings.setdefault("data", tmp_path / f"data{len(started)}")
        settings.setdefault("address", "127.0.0.1:0")
        server = KeyspanServer(ServeConfig(**settings))
        await server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop(0)


@pytest_asyncio.fixture
async def channel_to() -> AsyncIterator[Callable[..., grpc.aio.Channel]]:
    channels: list[grpc.aio.Channel] = []

    def open_channel(server: KeyspanServer, interceptors: Any = None) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}", interceptors=interceptors)
        channels.append(channel)
        return channel

    yield open_channel
    for channel in channels:
        await channel.close()


@pytest.fixture
def trace_receiver() -> Iterator[TraceReceiver]:
    receiver = TraceReceiver()
    yield receiver
    receiver.close()


@pytest.fixture
def sentry_endpoint() -> Iterator[SentryEndpoint]:
    """A Sentry endpoint; the SDK is shut down after the test, so no later test reports."""
    endpoint = SentryEndpoint()
    yield endpoint
    sentry_sdk.get_client().close(timeout=2)
    sentry_sdk.get_global_scope().set_client(None)
    endpoint.close()
