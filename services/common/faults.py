"""Server faults to Sentry, once each, when `--sentry-dsn` is set.

What is reported: what the error mapping (errors.py) answers INTERNAL (through
`errors.fault_hooks`), what a background task (the sweeper) fails with, and a thread (a
partition's writer) that dies of an exception. What is
not: every error a client causes (INVALID_ARGUMENT, NOT_FOUND, ABORTED, ...), which the
error mapper turns into a status without calling the hooks.

Each event carries tags `component`, `node` (the process's gRPC address), `method`,
`partition_id` when the fault names one (StorageFaultError), and `trace_id` when the
fault happened inside a traced RPC. A group-commit batch hands the same exception object
to every waiter: it is reported once, not once per waiting RPC.

The SDK is set up with no default integrations: the logging integration would turn the
one ERROR line the edge logs into a second event, and faults are reported explicitly.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import sentry_sdk
from sentry_sdk.integrations.dedupe import DedupeIntegration

from keyspan import __version__
from keyspan.services.common import errors
from keyspan.services.common.logging import PARTITION_ID, current_ids
from keyspan.services.config import ProcessConfig

# The last faults reported, by identity (built-in exceptions cannot be weakly referenced;
# holding them keeps their ids unique while they are remembered).
_reported: OrderedDict[int, BaseException] = OrderedDict()
_REMEMBERED = 256
_lock = threading.Lock()


def setup_sentry(config: ProcessConfig, component: str) -> bool:
    """Start the Sentry SDK when config has a DSN; returns whether faults are reported."""
    if not config.sentry_dsn:
        return False
    sentry_sdk.init(
        dsn=config.sentry_dsn,
        environment=config.sentry_environment,
        release=f"keyspan@{__version__}",
        default_integrations=False,
        integrations=[DedupeIntegration()],
        # A frame's locals hold the requests and the writer's batch: stored keys and
        # values, any client's, sent to a third party (a Put's value 9 times in one event).
        include_local_variables=False,
    )
    sentry_sdk.set_tag("component", component)
    if report_rpc_fault not in errors.fault_hooks:
        errors.fault_hooks.append(report_rpc_fault)
    if threading.excepthook is not _thread_crashed:
        global _previous_excepthook
        _previous_excepthook = threading.excepthook
        threading.excepthook = _thread_crashed
    return True


_previous_excepthook = threading.excepthook


def _thread_crashed(args: threading.ExceptHookArgs) -> None:
    """A thread died of an exception (a writer or reader thread: a bug): report it, then
    let the previous hook print it as usual."""
    name = args.thread.name if args.thread is not None else "thread"
    if args.exc_value is not None and not isinstance(args.exc_value, SystemExit):
        tags = {"task": name}
        if name.startswith("writer-"):
            tags[PARTITION_ID] = name.removeprefix("writer-")
        report_fault(args.exc_value, **tags)
        flush()
    _previous_excepthook(args)


def set_node(address: str) -> None:
    """Tag later events with the process's address (known once the port is bound)."""
    if sentry_sdk.get_client().is_active():
        sentry_sdk.set_tag("node", address)


def report_fault(err: BaseException, **tags: Any) -> bool:
    """Send err to Sentry once, with tags; False when it was sent before or Sentry is off."""
    if not sentry_sdk.get_client().is_active():
        return False
    with _lock:
        if id(err) in _reported:
            return False
        _reported[id(err)] = err
        if len(_reported) > _REMEMBERED:
            _reported.popitem(last=False)
    with sentry_sdk.new_scope() as scope:
        partition_id = getattr(err, PARTITION_ID, None)
        if isinstance(partition_id, str):
            scope.set_tag(PARTITION_ID, partition_id)
        ids = current_ids()
        if ids is not None:
            scope.set_tag("trace_id", ids[0])
            scope.set_context("otel", {"trace_id": ids[0], "span_id": ids[1]})
            # Sentry's own trace context, which its UI links events by, is the same trace
            # (it drew an unrelated id of its own).
            scope.set_context("trace", {"trace_id": ids[0], "span_id": ids[1]})
        for name, value in tags.items():
            scope.set_tag(name, value)
        sentry_sdk.capture_exception(err)
    return True


def report_rpc_fault(err: BaseException, method: str) -> None:
    """errors.fault_hooks entry: an RPC answered INTERNAL because of err."""
    report_fault(err, method=method)


def report_background_fault(task: str) -> Any:
    """A callback for a background task's `on_fault`, tagging events with the task."""

    def report(err: BaseException) -> None:
        report_fault(err, task=task)

    return report


def flush(timeout_s: float = 2.0) -> None:
    if sentry_sdk.get_client().is_active():
        sentry_sdk.flush(timeout_s)
