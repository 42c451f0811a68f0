"""Log set-up for the processes: JSON lines for machines, text for people.

Only services/ configures handlers; storage and streams just log.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from opentelemetry import trace

# Field names shared by every module's log calls.
PARTITION_ID = "partition_id"
NODE_ID = "node_id"
MAP_VERSION = "map_version"
PEER = "peer"
TRACE_ID = "trace_id"
SPAN_ID = "span_id"

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}


def current_ids() -> tuple[str, str] | None:
    """(trace_id, span_id) in hex of the span current in this context, or None."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


class TraceIdFilter(logging.Filter):
    """Adds trace_id and span_id to a record logged inside a span (set on the handler,
    so the ids are read in the logging task's own context)."""

    def filter(self, record: logging.LogRecord) -> bool:
        ids = current_ids()
        if ids is not None and not hasattr(record, TRACE_ID):
            setattr(record, TRACE_ID, ids[0])
            setattr(record, SPAN_ID, ids[1])
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        event.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            event["exc"] = self.formatException(record.exc_info)
        return json.dumps(event, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{k}={v}" for k, v in vars(record).items() if k not in _STANDARD)
        # a terminal's line: local time of day to the millisecond (JSON lines carry the date)
        at = f"{self.formatTime(record, '%H:%M:%S')}.{int(record.msecs):03d}"
        line = f"{at} {record.levelname:<7} {record.getMessage()}"
        line = f"{line}  {extra}" if extra else line
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


_GRPC_SEND_FAILED = "ExecuteBatchError raised in core by servicer method"


class ClientGoneFilter(logging.Filter):
    """gRPC logs an ERROR with a traceback when a client goes away while the server sends
    it an answer (a Scan it stopped reading, then cancelled; a Put whose deadline passed):
    the send fails before gRPC has marked the call cancelled. That is no server fault; the
    record is turned into one DEBUG line, without the traceback, and dropped unless the
    logger shows DEBUG (the level was checked at ERROR, before this filter ran)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and str(record.msg).startswith(_GRPC_SEND_FAILED):
            method = str(record.msg)[len(_GRPC_SEND_FAILED) :].strip(" []")
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            record.msg, record.args = "a client went away while its answer was being sent: %s", (method,)
            record.exc_info = record.exc_text = None
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def quiet_client_gone() -> None:
    """Install ClientGoneFilter on gRPC's server logger (once)."""
    grpc_logger = logging.getLogger("grpc._cython.cygrpc")
    if not any(isinstance(f, ClientGoneFilter) for f in grpc_logger.filters):
        grpc_logger.addFilter(ClientGoneFilter())


class ExporterLogThrottle(logging.Filter):
    """OpenTelemetry's exporter logs every failed export: with the collector down, an
    ERROR and a WARNING every few seconds for as long as it stays down (and "Queue is
    full" as spans are dropped). Its records pass at most once a minute for each message,
    the next one saying how many were held back meanwhile."""

    def __init__(self, interval_s: float = 60.0, clock: Any = time.monotonic) -> None:
        super().__init__()
        self.interval_s, self._clock = interval_s, clock
        self._last: dict[tuple[str, Any], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("opentelemetry"):
            return True
        key, now = (record.name, record.msg), self._clock()
        last = self._last.get(key)
        if last is not None and now - last[0] < self.interval_s:
            self._last[key] = (last[0], last[1] + 1)
            return False
        self._last[key] = (now, 0)
        if last is not None and last[1]:
            record.held_back = last[1]
        return True


def setup_logging(level: str = "INFO", fmt: str = "auto") -> None:
    handler = logging.StreamHandler(sys.stderr)
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    handler.addFilter(TraceIdFilter())
    handler.addFilter(ExporterLogThrottle())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
