"""Domain errors -> gRPC statuses, in exactly one place: `wrap_errors`, applied to every
keyspan handler once, at registration (services/common/registrar.py). A request that does
not parse is INVALID_ARGUMENT too (services/common/decoding.py).

Every error a client can cause maps to a code with google.rpc details (field violations,
ErrorInfo with a stable reason, RetryInfo, keyspan.v1.WrongPartition). Anything else is a
server fault: logged once here, answered INTERNAL, and reported to Sentry when set up.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from keyspan.services.common.decoding import Undecodable, lenient
from keyspan.storage.errors import (
    DiskFullError,
    EtagMismatchError,
    FailedPreconditionError,
    InvalidArgumentError,
    KeyspanError,
    NotFoundError,
    NotJsonError,
    OpenFilesLimitError,
    StreamLimitError,
    UnavailableError,
    ValueTooLargeError,
    WrongPartitionError,
)
from keyspan.v1 import errors_pb2

log = logging.getLogger(__name__)
DOMAIN = "keyspan.dev"
# How long a client should wait before writing again to a partition whose disk is full.
DISK_FULL_RETRY_S = 5.0

# Called with the exception of every server fault; services/common/observability sets it.
fault_hooks: list[Callable[[BaseException, str], None]] = []


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


# A status travels in gRPC's trailers, which clients cap (grpc: 8 KiB, then 16 KiB, and
# a message is sent twice, as text and in the details): messages quote what the client
# sent in excerpts (text_excerpt), and this bounds whatever else a message holds.
MAX_MESSAGE_CHARS = 1000


def _bounded(text: str) -> str:
    if len(text) <= MAX_MESSAGE_CHARS:
        return text
    return f"{text[: MAX_MESSAGE_CHARS - 40]}... (cut from {len(text)} characters)"


def _status(code: int, message: str, *details: Any) -> grpc.Status:
    return rpc_status.to_status(
        status_pb2.Status(code=code, message=_bounded(message), details=[_pack(d) for d in details])
    )


def _field_violation(field: str, description: str) -> error_details_pb2.BadRequest:
    violation = error_details_pb2.BadRequest.FieldViolation(
        field=_bounded(field), description=_bounded(description)
    )
    return error_details_pb2.BadRequest(field_violations=[violation])


def _error_info(reason: str, **metadata: str) -> error_details_pb2.ErrorInfo:
    return error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata)


def _retry_info(after_s: float) -> error_details_pb2.RetryInfo:
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(int(after_s * 1e9))
    return error_details_pb2.RetryInfo(retry_delay=delay)


def wrong_partition_detail(err: WrongPartitionError) -> errors_pb2.WrongPartition:
    detail = errors_pb2.WrongPartition(
        key=err.key,
        partition_id=err.partition_id,
        start=err.start,
        node_id=err.node_id,
        address=err.address,
        map_version=err.map_version,
    )
    if err.end is not None:
        detail.end = err.end
    return detail


def to_status(err: KeyspanError) -> grpc.Status | None:
    """The status for a domain error, or None when it is a server fault."""
    match err:
        case InvalidArgumentError(field=field, rule=rule):
            return _status(code_pb2.INVALID_ARGUMENT, str(err), _field_violation(field, rule))
        case ValueTooLargeError(field=field, rule=rule):
            return _status(code_pb2.RESOURCE_EXHAUSTED, str(err), _field_violation(field, rule))
        case EtagMismatchError(current=current):
            return _status(
                code_pb2.ABORTED, str(err), _error_info("ETAG_MISMATCH", current_etag=str(current))
            )
        case NotFoundError():
            return _status(code_pb2.NOT_FOUND, str(err), _error_info("NOT_FOUND"))
        case NotJsonError():
            return _status(code_pb2.FAILED_PRECONDITION, str(err), _error_info("NOT_JSON"))
        case WrongPartitionError():
            return _status(
                code_pb2.FAILED_PRECONDITION,
                str(err),
                _error_info("WRONG_PARTITION"),
                wrong_partition_detail(err),
            )
        case FailedPreconditionError(reason=reason):
            return _status(code_pb2.FAILED_PRECONDITION, str(err), _error_info(reason))
        case OpenFilesLimitError(partition_id=partition_id, limit=limit, retry_after_s=after):
            return _status(
                code_pb2.UNAVAILABLE,
                str(err),
                _error_info("OPEN_FILES_LIMIT", partition_id=partition_id, limit=str(limit)),
                _retry_info(after),
            )
        case StreamLimitError(limit=limit, retry_after_s=after):
            return _status(
                code_pb2.UNAVAILABLE,
                str(err),
                _error_info("STREAM_LIMIT", limit=str(limit)),
                _retry_info(after),
            )
        case UnavailableError(retry_after_s=after, code=reason):
            return _status(code_pb2.UNAVAILABLE, str(err), _error_info(reason), _retry_info(after))
        case DiskFullError(partition_id=partition_id):
            return _status(
                code_pb2.RESOURCE_EXHAUSTED,
                str(err),
                _error_info("DISK_FULL", partition_id=partition_id),
                _retry_info(DISK_FULL_RETRY_S),
            )
    return None


async def _abort(context: grpc.aio.ServicerContext, err: BaseException, method: str) -> None:
    status = to_status(err) if isinstance(err, KeyspanError) else None
    if status is None:
        # The waiters of a failed write batch share its one fault: logged and reported once
        # (128 Puts waiting on a broken partition logged 114 tracebacks).
        if not getattr(err, "_keyspan_reported", False):
            with contextlib.suppress(AttributeError):
                err._keyspan_reported = True  # type: ignore[attr-defined]
            log.error("server fault", exc_info=err, extra={"method": method})
            for hook in fault_hooks:
                hook(err, method)
        status = _status(code_pb2.INTERNAL, f"internal error ({type(err).__name__}); see the server log")
    await context.abort_with_status(status)


def _wrap_unary(behavior: Callable[..., Awaitable[Any]], method: str) -> Callable[..., Awaitable[Any]]:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            if type(request) is Undecodable:
                raise request.error
            return await behavior(request, context)
        except (KeyspanError, Exception) as err:
            if isinstance(err, grpc.aio.AbortError):
                raise
            await _abort(context, err, method)

    return wrapped


async def _decoded(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """The requests of a stream; one that did not parse raises its InvalidArgumentError
    where the handler reads it."""
    async for request in requests:
        if type(request) is Undecodable:
            raise request.error
        yield request


def _wrap_stream(
    behavior: Callable[..., AsyncIterator[Any]], method: str
) -> Callable[..., AsyncIterator[Any]]:
    async def wrapped(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for response in behavior(_decoded(requests), context):
                yield response
        except (KeyspanError, Exception) as err:
            if isinstance(err, grpc.aio.AbortError):
                raise
            await _abort(context, err, method)

    return wrapped


def wrap_errors(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """The handler of a keyspan method, with its domain errors mapped to statuses (other
    services' handlers are returned as they are)."""
    if not method.startswith("/keyspan."):
        return handler
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            _wrap_unary(handler.unary_unary, method),
            request_deserializer=lenient(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
    if handler.stream_stream:
        return grpc.stream_stream_rpc_method_handler(
            _wrap_stream(handler.stream_stream, method),
            request_deserializer=lenient(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
    return handler
