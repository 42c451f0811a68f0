"""Log set-up for the processes: JSON lines for machines, text for people.

Only services/ configures handlers; storage and streams just log.
"""

from __future__ import annotations

import json
import logging
import sys
import time

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
        line = f"{self.formatTime(record, '%H:%M:%S')} {record.levelname:<7} {record.getMessage()}"
        line = f"{line}  {extra}" if extra else line
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(level: str = "INFO", fmt: str = "auto") -> None:
    handler = logging.StreamHandler(sys.stderr)
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    handler.addFilter(TraceIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
