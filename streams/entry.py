"""What the client hands back (Entry, PartitionInfo, Stats) and how keys and values go on the wire."""

from __future__ import annotations

import json as jsonlib
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

from keyspan.storage.errors import InvalidArgumentError
from keyspan.storage.keys import Key, check_key, range_of
from keyspan.streams import jsontext
from keyspan.streams.errors import InvalidArgument
from keyspan.v1 import kv_pb2

KeyLike = Key | bytes | str
T = TypeVar("T")


def key_bytes(key: KeyLike, name: str = "key") -> bytes:
    """The raw key: a Key's bytes, bytes as they are, str as UTF-8. The server checks length.

    Another type is a TypeError, and a str with a lone surrogate (no UTF-8 for it) a
    ValueError, each naming `name`."""
    if isinstance(key, Key):
        return key.raw
    if isinstance(key, str):
        return utf8(key, name)
    if isinstance(key, bytes | bytearray | memoryview):
        return bytes(key)
    raise TypeError(f"{name}: must be a Key, bytes or str, not {type(key).__name__}")


def point_key(key: KeyLike) -> bytes:
    """key_bytes(key), checked as the server checks an entry's key: 1 to 1024 bytes. A key
    that breaks it is the server's InvalidArgument (field "key"), raised before anything is
    sent, so that it is still a usage error when no server answers."""
    return server_rule(check_key, key_bytes(key))


def key_range(start: KeyLike | None, end: KeyLike | None) -> tuple[bytes, bytes | None]:
    """A range's raw bounds: start None is b"" (the first key), end None +infinity. An end
    not above start is the server's InvalidArgument (field "end"), raised before sending."""
    lower = key_bytes(start, "start") if start is not None else b""
    upper = key_bytes(end, "end") if end is not None else None
    server_rule(range_of, lower, upper)
    return lower, upper


def server_rule(check: Callable[..., T], *args: Any) -> T:
    """check(*args), one of the server's own argument checks (keyspan.storage), run by the
    client: its InvalidArgumentError becomes the InvalidArgument the server would send,
    with the same field and rule."""
    try:
        return check(*args)
    except InvalidArgumentError as err:
        raise InvalidArgument(str(err), err.field, err.rule) from None


def utf8(text: str, name: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError as err:
        raise ValueError(
            f"{name}: not valid UTF-8 text (a lone surrogate at index {err.start}); give it as bytes"
        ) from None


def encode_value(value: Any, as_json: bool) -> tuple[bytes, bool]:
    """(wire bytes, is_json). bytes stay bytes, str is UTF-8; dict/list/numbers/None are JSON.

    With as_json=True every value (a str too) is stored as a JSON document. A value that
    is not JSON, or nests far deeper than the store takes, is a TypeError or ValueError
    naming `value`.
    """
    if isinstance(value, bytes | bytearray | memoryview) and not as_json:
        return bytes(value), False
    if isinstance(value, str) and not as_json:
        return utf8(value, "value"), False
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        check_json_text(data)
        return data, True
    return jsontext.to_utf8(json_text(jsontext.dumps, value, "value")), True


def stored_as_json(value: Any, as_json: bool) -> bool:
    """Whether encode_value(value, as_json) makes a JSON document of `value`."""
    return as_json or not isinstance(value, bytes | bytearray | memoryview | str)


def json_text(encode: Callable[[Any], str], value: Any, name: str) -> str:
    """`encode(value)`, with room for the store's nesting; its errors name `name`."""
    try:
        return jsontext.room_to_nest(encode, value)
    except jsontext.TooDeepError as err:
        raise ValueError(f"{name}: {err}, the store's limit") from None
    except TypeError as err:
        raise TypeError(f"{name}: {err}") from None
    except ValueError as err:  # NaN, Infinity
        raise ValueError(f"{name}: {err}") from None


def document(text: bytes | str) -> Any:
    """The JSON text of a document the store holds, decoded (it nests up to 1000 levels).

    An integer past Python's limit on int digits (4300 by default; the store keeps numbers
    as written) comes back as a Decimal, exact; int() of it raised ValueError."""
    try:
        return jsontext.room_to_nest(_loads, text)
    except ValueError as err:
        if not jsontext.too_many_digits(err):
            raise
    return jsontext.room_to_nest(_loads_big_ints, text)


def _loads(text: bytes | str) -> Any:
    return jsonlib.loads(text, parse_float=_exact_float)


def _loads_big_ints(text: bytes | str) -> Any:
    return jsonlib.loads(text, parse_int=_big_int, parse_float=_exact_float)


_NONZERO_MANTISSA = re.compile(r"^-?0*\.?0*[1-9]")


def _exact_float(text: str) -> float | Decimal:
    """A float when it holds the number exactly enough to write it back (its shortest
    repr reads as the same number: 1.50 is 1.5), else a Decimal, exact: 1e400 was inf,
    which is not JSON, and 0.10000000000000000001 was 0.1, so an update wrote back a
    number its fn never touched."""
    number = float(text)
    if not math.isfinite(number) or (number == 0 and _NONZERO_MANTISSA.match(text.lower().split("e")[0])):
        return Decimal(text)
    if len(text) <= 15 or Decimal(repr(number)) == Decimal(text):
        return number
    return Decimal(text)


def _big_int(text: str) -> int | Decimal:
    return int(text) if len(text) <= jsontext.MAX_INT_DIGITS else Decimal(text)


def check_json_text(text: bytes | str) -> None:
    """Raise ValueError when `text` is not JSON. A document nested deeper than Python's
    json parses here (the server takes up to 1000 levels) is left to the server to check."""
    try:
        jsonlib.loads(text)
    except RecursionError:
        return
    except ValueError as err:
        if not jsontext.too_many_digits(err):
            raise
        jsonlib.loads(text, parse_int=str)  # a long integer is JSON: check the rest


def expires_at_of(expires_at_ms: int) -> datetime | None:
    return datetime.fromtimestamp(expires_at_ms / 1000, UTC) if expires_at_ms else None


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry as read: `value` is bytes, or the decoded JSON when asked for JSON.

    `is_json` says whether the store holds a JSON document. As bulk_put input, only key,
    value, is_json and expires_at (turned into a TTL) are used.
    """

    key: bytes
    value: Any
    etag: int = 0
    expires_at: datetime | None = None
    is_json: bool = False

    @property
    def ttl_s(self) -> float:
        """Seconds left to live, 0 when the entry never expires (at least 1 ms if it does)."""
        if self.expires_at is None:
            return 0.0
        return max(0.001, self.expires_at.timestamp() - time.time())

    @classmethod
    def from_wire(cls, e: kv_pb2.Entry | kv_pb2.GetResponse, decode_json: bool, key: bytes = b"") -> Entry:
        raw_key = key or e.key  # type: ignore[union-attr]
        value: Any = document(e.value) if decode_json and e.json else e.value
        return cls(raw_key, value, e.etag, expires_at_of(e.expires_at_ms), e.json)


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    """One partition as Stats reports it; end None means +infinity."""

    partition_id: str
    start: bytes
    end: bytes | None
    approximate_entries: int
    bytes: int
    expired_entries: int
    revision: int


@dataclass(frozen=True, slots=True)
class Stats:
    partitions: list[PartitionInfo] = field(default_factory=list)

    @property
    def approximate_entries(self) -> int:
        return sum(p.approximate_entries for p in self.partitions)

    @property
    def bytes(self) -> int:
        return sum(p.bytes for p in self.partitions)

    @classmethod
    def from_wire(cls, responses: list[kv_pb2.StatsResponse]) -> Stats:
        parts = [
            PartitionInfo(
                p.partition_id,
                p.start,
                p.end if p.HasField("end") else None,
                p.approximate_entries,
                p.bytes,
                p.expired_entries,
                p.revision,
            )
            for r in responses
            for p in r.partitions
        ]
        return cls(sorted(parts, key=lambda p: p.start))


@dataclass(frozen=True, slots=True)
class SweepProgress:
    """Expired entries found and deleted so far; done on the last report."""

    scanned: int
    deleted: int
    done: bool
