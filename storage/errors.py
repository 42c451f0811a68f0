"""The storage layer's errors: plain exceptions that carry data, no status codes.

services/common/errors.py maps each one to a gRPC status in exactly one place.
"""

from __future__ import annotations


def key_text(raw: bytes, *, quoted: bool = True) -> str:
    """A key as people read it: its text when it is printable UTF-8, quoted in messages
    ('user/ann'), else 0x and its hex (0x00ff). A message then reads the same to a client
    in any language, and a key with a tab or newline cannot break a line of output."""
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        return "0x" + raw.hex()
    if not text.isprintable() or (not quoted and text.startswith("0x")):  # unquoted, 0x... is hex
        return "0x" + raw.hex()
    return repr(text) if quoted else text


def text_excerpt(text: str, limit: int = 80) -> str:
    """Text a client sent, quoted for a message, cut to `limit` characters: an error must
    not grow with its input, as a status travels in gRPC's trailers, which clients cap
    (grpc at 8 KiB and 16 KiB: past them the status arrives as RESOURCE_EXHAUSTED)."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


class KeyspanError(Exception):
    """Base of every error keyspan raises on purpose."""


class InvalidArgumentError(KeyspanError):
    """A request field broke a rule; nothing was written.

    `field` names the request field (``key``, ``entries[3].value``); `rule` says what it
    must be, with the limit.
    """

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field, self.rule = field, rule


class KeyTooLongError(InvalidArgumentError):
    def __init__(self, length: int, limit: int, field: str = "key") -> None:
        super().__init__(field, f"is {length} bytes; the limit is {limit}")
        self.length, self.limit = length, limit


class EmptyKeyError(InvalidArgumentError):
    def __init__(self, field: str = "key") -> None:
        super().__init__(field, "must not be empty (1..1024 bytes)")


class ValueTooLargeError(KeyspanError):
    """A value over max_value_bytes; RESOURCE_EXHAUSTED at the edge."""

    def __init__(self, size: int, limit: int, field: str = "value", when: str = "") -> None:
        self.rule = f"is {size} bytes{when}; the limit is {limit}"
        super().__init__(f"{field}: {self.rule}")
        self.field, self.size, self.limit = field, size, limit


class EtagMismatchError(KeyspanError):
    """A write's precondition did not hold. `current` is 0 when the key is absent."""

    def __init__(self, key: bytes, expected: int | None, current: int) -> None:
        wanted = "absent" if expected is None else f"etag {expected}"
        found = "absent" if current == 0 else f"etag {current}"
        super().__init__(f"key {key_text(key)} is {found}, not {wanted}")
        self.key, self.expected, self.current = key, expected, current


class NotFoundError(KeyspanError):
    def __init__(self, key: bytes) -> None:
        super().__init__(f"key {key_text(key)} does not exist")
        self.key = key


class NotJsonError(KeyspanError):
    """A JSON operation (patch, projection) on an entry that holds bytes."""

    def __init__(self, key: bytes) -> None:
        super().__init__(f"key {key_text(key)} holds bytes, not a JSON document")
        self.key = key


class WrongPartitionError(KeyspanError):
    """The key is not owned here; the fields say who owns it, as far as this side knows."""

    def __init__(
        self,
        key: bytes,
        *,
        partition_id: str = "",
        start: bytes = b"",
        end: bytes | None = None,
        node_id: str = "",
        address: str = "",
        map_version: int = 0,
    ) -> None:
        super().__init__(f"key {key_text(key)} is not served here; owner: {address or 'unknown'}")
        self.key, self.partition_id, self.start, self.end = key, partition_id, start, end
        self.node_id, self.address, self.map_version = node_id, address, map_version


class UnavailableError(KeyspanError):
    """Temporarily unable to serve (starting, draining, moving, closed); retry later.

    A write refused so was not applied, unless `may_have_applied`: a gateway that lost its
    connection to the node after it sent the write on cannot know whether it committed.
    `code` is the ErrorInfo reason at the edge (default: CONNECTION_LOST when it may have
    applied, else UNAVAILABLE).
    """

    def __init__(
        self, reason: str, retry_after_s: float = 0.1, *, may_have_applied: bool = False, code: str = ""
    ) -> None:
        super().__init__(reason)
        self.reason, self.retry_after_s = reason, retry_after_s
        self.may_have_applied = may_have_applied
        self.code = code or ("CONNECTION_LOST" if may_have_applied else "UNAVAILABLE")


class FailedPreconditionError(KeyspanError):
    """A change refused in the current state; `reason` is a stable ErrorInfo reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ConfigError(KeyspanError):
    """A setting is out of its range; raised at start-up, before anything is opened."""


class CommitFailed(Exception):
    """SQLite's COMMIT failed (an I/O error, its WAL fsync most likely) after the batch's
    statements ran: its frames may be in the WAL whole, and would then come back when the
    file is next opened. The SQLite error is the `__cause__`."""


class StorageFaultError(KeyspanError):
    """A partition's writer hit an SQLite fault (I/O error, disk full). A server fault, not
    a client's: INTERNAL at the edge, reported once. Nothing of the batch was committed,
    unless `may_have_applied`: the fault came in the COMMIT itself (CommitFailed), and the
    partition then takes no more writes until the server restarts (as PostgreSQL stops
    after a failed fsync: what the kernel kept of the file is unknown).

    The SQLite error is the `__cause__`; `partition_id` names the partition.
    """

    def __init__(self, partition_id: str, cause: BaseException, *, may_have_applied: bool = False) -> None:
        super().__init__(f"partition {partition_id}: {type(cause).__name__}: {cause}")
        self.partition_id = partition_id
        self.may_have_applied = may_have_applied


class DiskFullError(StorageFaultError):
    """The partition's disk is full (SQLite's SQLITE_FULL); nothing of the batch was
    committed. An operating condition, not a fault of the code: RESOURCE_EXHAUSTED at the
    edge, worth retrying once space is freed; the writer logs it (at most every few seconds).
    """

    def __init__(self, partition_id: str, cause: BaseException) -> None:
        KeyspanError.__init__(self, f"partition {partition_id}: the disk is full; the write was not applied")
        self.partition_id = partition_id


class OpenFilesLimitError(UnavailableError):
    """A shard connection could not be opened because the process has used up its
    open-files limit. An operating condition, not a fault of the code: UNAVAILABLE at the
    edge (only reads open connections after start-up, and a read is safe to retry), worth
    retrying once client connections close or the limit is raised."""

    def __init__(self, partition_id: str, limit: int) -> None:
        super().__init__(
            f"partition {partition_id}: the server has used up its open-files limit ({limit}); "
            "raise it (ulimit -n, or LimitNOFILE= in a systemd unit)",
            retry_after_s=1.0,
        )
        self.partition_id, self.limit = partition_id, limit


class StreamLimitError(UnavailableError):
    """A new Scan, BulkPut or Sweep stream refused because the process already has its
    most streams open (--max-streams): each open stream may hold ~2 MB of
    messages queued for a client that does not read. Nothing of it ran; retry later."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"the server has {limit} Scan, BulkPut and Sweep streams open, its limit "
            "(--max-streams); retry when one ends",
            retry_after_s=1.0,
        )
        self.limit = limit
