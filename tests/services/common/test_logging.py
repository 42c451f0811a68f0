"""The servers' logging: gRPC's "client went away" errors demoted, at the level asked for."""

from __future__ import annotations

import logging
import re

import pytest

from keyspan.services.common.logging import quiet_client_gone, setup_logging

GRPC_SEND_FAILED = "ExecuteBatchError raised in core by servicer method [/keyspan.v1.KV/Put]"


@pytest.fixture
def restore_logging() -> object:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield
    root.handlers[:], level = saved
    root.setLevel(level)


@pytest.mark.parametrize("level", ["DEBUG", "WARNING"])
def test_a_client_gone_error_is_one_debug_line_shown_only_at_debug(
    level: str, restore_logging: object, capfd: pytest.CaptureFixture[str]
) -> None:
    setup_logging(level, "text")
    quiet_client_gone()
    try:
        raise ConnectionError("sent to a closed stream")
    except ConnectionError:
        logging.getLogger("grpc._cython.cygrpc").exception(GRPC_SEND_FAILED)
    err = capfd.readouterr().err
    if level == "DEBUG":
        assert "a client went away while its answer was being sent: /keyspan.v1.KV/Put" in err
        assert "Traceback" not in err and "ERROR" not in err
    else:  # printed at WARNING as a DEBUG line, before the filter looked at the level
        assert err == ""


@pytest.mark.asyncio
async def test_the_start_up_line_names_the_version_address_and_data_dir(
    start_server, caplog: pytest.LogCaptureFixture
) -> None:
    from keyspan import __version__

    with caplog.at_level(logging.INFO, logger="keyspan.services.common.process"):
        server = await start_server(split_points="m")
    (line,) = [r for r in caplog.records if r.getMessage() == "serving"]
    assert line.version == __version__  # type: ignore[attr-defined]
    assert line.address == server.address  # type: ignore[attr-defined]
    assert line.data == str(server.config.data) and line.partitions == 2  # type: ignore[attr-defined]


def test_a_text_line_has_the_time_to_the_millisecond() -> None:
    from keyspan.services.common.logging import TextFormatter

    record = logging.LogRecord("keyspan.x", logging.INFO, __file__, 1, "hello", None, None)
    record.partition_id = "p0001"
    line = TextFormatter().format(record)
    assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} INFO    hello  partition_id=p0001", line), line


def test_a_dead_collector_s_export_errors_pass_once_a_minute_with_a_count() -> None:
    from keyspan.services.common.logging import ExporterLogThrottle

    now = [0.0]
    throttle = ExporterLogThrottle(clock=lambda: now[0])
    exporter = "opentelemetry.exporter.otlp.proto.grpc.exporter"

    def record(name: str, msg: str = "Failed to export %s to %s") -> logging.LogRecord:
        return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, ("traces", "x:4317"), None)

    passed = []
    for _ in range(20):  # every 3 s for a minute
        passed.append(throttle.filter(r := record(exporter)))
        now[0] += 3
    assert passed == [True] + [False] * 19
    assert throttle.filter(r := record(exporter)) and r.held_back == 19  # type: ignore[attr-defined]
    assert throttle.filter(record(exporter, "Transient error %s %s"))  # another message
    assert all(throttle.filter(record("keyspan.storage.writer")) for _ in range(5))  # ours pass
