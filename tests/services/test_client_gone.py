"""A client that goes away while the server is blocked sending it a Scan's answers (it
stopped reading) is no server fault: nothing is logged at ERROR."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc
import pytest

from keyspan.streams import Client
from keyspan.v1 import kv_pb2, kv_pb2_grpc
from tests.conftest import ThreadedServer


async def test_a_client_leaving_a_scan_it_stopped_reading_is_logged_as_no_fault(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = ThreadedServer(tmp_path / "data")
    try:
        with Client(server.address) as kv:
            kv.bulk_put_ex((b"k%06d" % i, b"v" * 1000) for i in range(30_000))  # ~30 MB
        caplog.set_level(logging.DEBUG)
        for _ in range(6):
            async with grpc.aio.insecure_channel(server.address) as channel:
                call = kv_pb2_grpc.KVStub(channel).Scan()
                await call.write(kv_pb2.ScanRequest(credits=1_000_000))
                await call.read()
                await asyncio.sleep(0.5)  # the server fills the flow-control window, then waits
                call.cancel()
        await asyncio.sleep(0.5)
        errors = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]
        assert errors == []
        gone = [r for r in caplog.records if "client went away" in r.getMessage()]
        assert gone and all(r.levelno == logging.DEBUG and r.exc_info is None for r in gone)
    finally:
        server.stop()
