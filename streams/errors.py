"""The client's exceptions, built from a failed call's status details, never from its text.

`from_rpc_error` reads the google.rpc.Status that the server packs into the trailing
metadata (grpc_status.rpc_status.from_call) and returns the matching exception:

| status                                   | exception          | carries                      |
| ---------------------------------------- | ------------------ | ---------------------------- |
| INVALID_ARGUMENT + BadRequest            | InvalidArgument    | field, rule (first violation)|
| NOT_FOUND                                | NotFound           |                              |
| ABORTED + ErrorInfo ETAG_MISMATCH        | EtagMismatch       | current_etag (0 = absent)    |
| FAILED_PRECONDITION + ErrorInfo NOT_JSON | NotJson            |                              |
| FAILED_PRECONDITION + WrongPartition     | WrongPartition     | key, range, node, map_version|
| RESOURCE_EXHAUSTED + ErrorInfo DISK_FULL | DiskFull           | partition_id, retry_after_s  |
| RESOURCE_EXHAUSTED                       | ResourceExhausted  | field, rule                  |
| UNAVAILABLE (+ RetryInfo)                | Unavailable        | retry_after_s (None: unknown)|
| DEADLINE_EXCEEDED                        | DeadlineExceeded   |                              |
| anything else                            | KeyspanClientError | code                         |

`Unavailable` and `DeadlineExceeded` are the only retryable ones (`is_retryable`).
"""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from keyspan.v1 import errors_pb2


class KeyspanClientError(Exception):
    """Base of every error the client raises. `code` is the gRPC status code."""

    retryable = False

    def __init__(self, message: str, code: grpc.StatusCode = grpc.StatusCode.UNKNOWN) -> None:
        super().__init__(message)
        self.message, self.code = message, code


class InvalidArgument(KeyspanClientError):
    """A request field broke a rule; nothing was written. Do not retry."""

    def __init__(self, message: str, field: str = "", rule: str = "") -> None:
        super().__init__(message, grpc.StatusCode.INVALID_ARGUMENT)
        self.field, self.rule = field, rule


class ResourceExhausted(InvalidArgument):
    """A value or message over the configured limit. Do not retry."""

    def __init__(self, message: str, field: str = "", rule: str = "") -> None:
        super().__init__(message, field, rule)
        self.code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DiskFull(KeyspanClientError):
    """The partition's disk is full: the write was not applied. Not retried by the client:
    writing again helps only once an operator frees space (`retry_after_s` is the server's
    advice for when to try)."""

    def __init__(self, message: str, partition_id: str, retry_after_s: float | None) -> None:
        super().__init__(message, grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.partition_id, self.retry_after_s = partition_id, retry_after_s


class NotFound(KeyspanClientError):
    def __init__(self, message: str) -> None:
        super().__init__(message, grpc.StatusCode.NOT_FOUND)


class EtagMismatch(KeyspanClientError):
    """A write's precondition failed. `current_etag` is 0 when the key is absent."""

    def __init__(self, message: str, current_etag: int) -> None:
        super().__init__(message, grpc.StatusCode.ABORTED)
        self.current_etag = current_etag


class NotJson(KeyspanClientError):
    """A JSON operation (patch, projection) on an entry that holds bytes."""

    def __init__(self, message: str) -> None:
        super().__init__(message, grpc.StatusCode.FAILED_PRECONDITION)


class WrongPartition(KeyspanClientError):
    """The server does not own the key; the fields name the owner as far as it knows."""

    def __init__(self, message: str, detail: errors_pb2.WrongPartition) -> None:
        super().__init__(message, grpc.StatusCode.FAILED_PRECONDITION)
        self.detail = detail
        self.key, self.partition_id, self.start = detail.key, detail.partition_id, detail.start
        self.end = detail.end if detail.HasField("end") else None
        self.node_id, self.address, self.map_version = detail.node_id, detail.address, detail.map_version


# ErrorInfo reasons of an UNAVAILABLE write that may have been applied all the same.
MAY_HAVE_APPLIED = frozenset({"CONNECTION_LOST", "OWNERSHIP_UNCONFIRMED"})


class Unavailable(KeyspanClientError):
    """The server is starting, draining or moving, or the connection failed. Retryable.

    `may_have_applied` is False when a write was refused by the server (it says so:
    ErrorInfo reason UNAVAILABLE, OPEN_FILES_LIMIT or STREAM_LIMIT) or never sent (no
    connection could be made); the write was not applied. It is True when the connection
    was lost after the write was sent (gRPC's "Socket closed", or a gateway's
    CONNECTION_LOST), or a node that had been stalled committed it before it could confirm
    it still owned the partition (OWNERSHIP_UNCONFIRMED): the write may have been
    committed, so retry it only with a precondition, as after DEADLINE_EXCEEDED.
    """

    retryable = True

    def __init__(
        self, message: str, retry_after_s: float | None = None, *, may_have_applied: bool = False
    ) -> None:
        super().__init__(message, grpc.StatusCode.UNAVAILABLE)
        self.retry_after_s = retry_after_s
        self.may_have_applied = may_have_applied


class DeadlineExceeded(KeyspanClientError):
    """The call ran out of time. Retryable for reads; a write may or may not have applied."""

    retryable = True

    def __init__(self, message: str) -> None:
        super().__init__(message, grpc.StatusCode.DEADLINE_EXCEEDED)


class ClientClosed(RuntimeError):
    """A call on a client after its close(), or one that close() cut short (a scan being
    read, a call in flight). The program closed the client; no server said anything, so
    this is not a KeyspanClientError and is never retried."""


# gRPC's words for a call it never sent: no address of the target could be connected to,
# or its name resolved to no address: "errors resolving HOST: ..." (the resolver grpcio
# 1.85 uses by default) or "DNS resolution failed ..." (the c-ares resolver).
_NEVER_SENT = ("failed to connect to all addresses", "DNS resolution failed", "errors resolving ")


def never_sent(details: str) -> bool:
    """Whether an UNAVAILABLE that gRPC raised itself (not the server) failed before the
    call left the client: after that, a lost connection leaves a write's fate unknown."""
    return any(words in details for words in _NEVER_SENT)


def is_retryable(exc: BaseException) -> bool:
    """True for UNAVAILABLE and DEADLINE_EXCEEDED (raw or already converted)."""
    if isinstance(exc, KeyspanClientError):
        return exc.retryable
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        return exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    return False


def _status_of(err: grpc.RpcError) -> status_pb2.Status | None:
    try:
        return rpc_status.from_call(err)  # type: ignore[arg-type]
    except ValueError:  # code or message inconsistent with the packed status: ignore details
        return None


def _unpack(status: status_pb2.Status | None) -> dict[str, object]:
    """The known details of a status, by kind: bad_request, error_info, retry_info, wrong_partition."""
    found: dict[str, object] = {}
    kinds = {
        "bad_request": error_details_pb2.BadRequest,
        "error_info": error_details_pb2.ErrorInfo,
        "retry_info": error_details_pb2.RetryInfo,
        "wrong_partition": errors_pb2.WrongPartition,
    }
    for packed in status.details if status is not None else []:
        for name, cls in kinds.items():
            if packed.Is(cls.DESCRIPTOR):
                message = cls()
                packed.Unpack(message)
                found.setdefault(name, message)
    return found


def _violation(details: dict[str, object]) -> tuple[str, str]:
    bad = details.get("bad_request")
    if isinstance(bad, error_details_pb2.BadRequest) and bad.field_violations:
        first = bad.field_violations[0]
        return first.field, first.description
    return "", ""


def _retry_after(details: dict[str, object]) -> float | None:
    retry = details.get("retry_info")
    return retry.retry_delay.ToNanoseconds() / 1e9 if retry is not None else None  # type: ignore[attr-defined]


def from_rpc_error(err: grpc.RpcError) -> KeyspanClientError:
    """The typed exception for a failed call, chosen by status code and details."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    message = (err.details() if hasattr(err, "details") else None) or str(code)
    details = _unpack(_status_of(err))
    info = details.get("error_info")
    reason = info.reason if isinstance(info, error_details_pb2.ErrorInfo) else ""
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(message, *_violation(details))
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        if reason == "DISK_FULL":
            return DiskFull(message, info.metadata.get("partition_id", ""), _retry_after(details))  # type: ignore[union-attr]
        return ResourceExhausted(message, *_violation(details))
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(message)
    if code == grpc.StatusCode.ABORTED and isinstance(info, error_details_pb2.ErrorInfo):
        return EtagMismatch(message, int(info.metadata.get("current_etag", "0")))
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        wrong = details.get("wrong_partition")
        if isinstance(wrong, errors_pb2.WrongPartition):
            return WrongPartition(message, wrong)
        if reason == "NOT_JSON":
            return NotJson(message)
    if code == grpc.StatusCode.UNAVAILABLE:
        # keyspan's own refusals carry an ErrorInfo; gRPC's transport failures do not.
        may_have_applied = reason in MAY_HAVE_APPLIED if reason else not never_sent(message)
        return Unavailable(message, _retry_after(details), may_have_applied=may_have_applied)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(message)
    return KeyspanClientError(message, code)
