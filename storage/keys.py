"""Keys and key ranges.

A key is an immutable byte string of 1..MAX_KEY_BYTES bytes, ordered bytewise. Typed
constructors keep the order of the values they encode:

- ``Key.text("user/ann")``: UTF-8;
- ``Key.int(-5)``: 8 bytes big-endian with the sign bit flipped, so -1 < 0 < 1;
- ``Key.tuple("user", 42)``: an order-preserving tuple encoding, so ("user", 42) sorts
  before ("user", 100) and ("user", "ann") before ("user", "bob").

``Key.of(x)`` picks text for one str, int for one int, raw for bytes, tuple otherwise.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import total_ordering

from keyspan.storage.errors import EmptyKeyError, InvalidArgumentError, KeyTooLongError, key_text

MAX_KEY_BYTES = 1024

# Tuple element type codes; their order is the order of elements of different types.
_NONE, _BYTES, _TEXT, _INT = 0x00, 0x01, 0x02, 0x15
_INT_BIAS = 1 << 63


def check_key(raw: bytes, field: str = "key", limit: int = MAX_KEY_BYTES) -> bytes:
    """Return `raw` when it is a valid key; raise InvalidArgumentError naming `field`."""
    if not raw:
        raise EmptyKeyError(field)
    if len(raw) > limit:
        raise KeyTooLongError(len(raw), limit, field)
    return raw


def _utf8(text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError as err:  # a lone surrogate
        raise InvalidArgumentError(
            "key", f"is not valid UTF-8 text (a lone surrogate at index {err.start}); give it as bytes"
        ) from None


def _escape(data: bytes) -> bytes:
    # 0x00 ends an element, so a 0x00 inside it becomes 0x00 0xFF, which sorts above the end.
    return data.replace(b"\x00", b"\x00\xff") + b"\x00"


def _encode_element(part: object) -> bytes:
    if part is None:
        return bytes([_NONE])
    if isinstance(part, bool):
        raise InvalidArgumentError("key", "tuple elements are str, bytes, int or None, not bool")
    if isinstance(part, int):
        if not -_INT_BIAS <= part < _INT_BIAS:
            raise InvalidArgumentError("key", f"integers are -2**63 to 2**63-1 (signed 64 bits), not {part}")
        return bytes([_INT]) + struct.pack(">Q", part + _INT_BIAS)
    if isinstance(part, str):
        return bytes([_TEXT]) + _escape(_utf8(part))
    if isinstance(part, bytes | bytearray | memoryview):
        return bytes([_BYTES]) + _escape(bytes(part))
    raise InvalidArgumentError(
        "key", f"tuple elements are str, bytes, int or None, not {type(part).__name__}"
    )


@total_ordering
@dataclass(frozen=True, slots=True)
class Key:
    """A validated key. Compare, hash and sort by its raw bytes."""

    raw: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes):  # a str was taken, and failed in protobuf later
            raise TypeError(
                f"Key: raw must be bytes, not {type(self.raw).__name__} (Key.text for text, Key.of for any)"
            )
        check_key(self.raw)

    @classmethod
    def text(cls, value: str) -> Key:
        if not isinstance(value, str):
            raise TypeError(f"Key.text: needs a str, not {type(value).__name__}")
        return cls(_utf8(value))

    @classmethod
    def int(cls, value: int) -> Key:
        # a str or bytes was encoded as a tuple element without its type code: a wrong key
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"Key.int: needs an int, not {type(value).__name__}")
        return cls(_encode_element(value)[1:])

    @classmethod
    def tuple(cls, *parts: object) -> Key:
        return cls(b"".join(_encode_element(p) for p in parts))

    @classmethod
    def of(cls, *parts: object) -> Key:
        if len(parts) == 1:
            (part,) = parts
            if isinstance(part, Key):
                return part
            if isinstance(part, str):
                return cls.text(part)
            if isinstance(part, bytes | bytearray | memoryview):
                return cls(bytes(part))
            if isinstance(part, int) and not isinstance(part, bool):
                return cls.int(part)
        return cls.tuple(*parts)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Key):
            return NotImplemented
        return self.raw < other.raw

    def __bytes__(self) -> bytes:
        return self.raw

    def __str__(self) -> str:
        return key_text(self.raw, quoted=False)


def key_successor(raw: bytes) -> bytes:
    """The smallest key greater than `raw`: where a forward scan resumes after `raw`."""
    return raw + b"\x00"


@dataclass(frozen=True, slots=True)
class KeyRange:
    """The keys k with start <= k < end; end None means +infinity, start b"" -infinity."""

    start: bytes = b""
    end: bytes | None = None

    def __post_init__(self) -> None:
        if self.end is not None and self.end <= self.start:
            raise InvalidArgumentError("end", f"must be greater than start ({key_text(self.start)})")

    def __contains__(self, key: bytes) -> bool:
        return self.start <= key and (self.end is None or key < self.end)

    def intersect(self, other: KeyRange) -> KeyRange | None:
        start = max(self.start, other.start)
        ends = [e for e in (self.end, other.end) if e is not None]
        end = min(ends) if ends else None
        if end is not None and end <= start:
            return None
        return KeyRange(start, end)

    def __str__(self) -> str:
        return f"[{bound_text(self.start)}, {bound_text(self.end)})"


def bound_text(raw: bytes | None) -> str:
    """A range bound as people read it: -inf for the empty start, +inf for no end."""
    if raw is None:
        return "+inf"
    return key_text(raw) if raw else "-inf"


def range_of(start: bytes, end: bytes | None, field: str = "end") -> KeyRange:
    """KeyRange(start, end), or the InvalidArgumentError that names `field` when end is not
    above start (the servers' streams and the client's argument checks say it alike)."""
    if end is not None and end <= start:
        raise InvalidArgumentError(field, "must be greater than start (the range is [start, end))")
    return KeyRange(start, end)
