"""Requests that do not parse: INVALID_ARGUMENT naming the field, not UNKNOWN.

grpc.aio answers a request its deserializer cannot parse with UNKNOWN "Unexpected
DecodeError", no details, and a traceback in the server's log, for what is the client's
fault (most often a `string` field holding bytes that are not UTF-8). `lenient` wraps a
method's deserializer so that such a request arrives as an `Undecodable` carrying the
InvalidArgumentError to answer; services/common/errors.py raises it in the handler.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError

from keyspan.storage.errors import InvalidArgumentError

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


class Undecodable:
    """Stands for a request message that did not parse."""

    __slots__ = ("error",)

    def __init__(self, error: InvalidArgumentError) -> None:
        self.error = error


def lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """`deserializer`, answering an Undecodable instead of raising DecodeError."""
    if deserializer is None:
        return None
    message_type = getattr(deserializer, "__self__", None)
    descriptor = getattr(message_type, "DESCRIPTOR", None)

    def deserialize(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except DecodeError:
            return Undecodable(explain(descriptor, raw))

    return deserialize


def explain(descriptor: Descriptor | None, raw: bytes) -> InvalidArgumentError:
    """The error for a request that did not parse: the string field that is not UTF-8
    when there is one, else the message as a whole."""
    field = None if descriptor is None else bad_utf8_field(descriptor, raw)
    if field is not None:
        return InvalidArgumentError(field, "must be UTF-8 text (it is a protobuf string field)")
    name = "the request message" if descriptor is None else descriptor.full_name
    return InvalidArgumentError("request", f"is not a valid {name} in the protobuf wire format")


def bad_utf8_field(descriptor: Descriptor, raw: bytes) -> str | None:
    """The path (`set[1].value`) of the first string field in `raw` that is not UTF-8,
    or None when there is none or the wire format itself is broken."""
    try:
        return _walk(descriptor, memoryview(raw))
    except (IndexError, ValueError):
        return None


def _walk(descriptor: Descriptor, raw: memoryview) -> str | None:
    seen: dict[str, int] = {}
    pos = 0
    while pos < len(raw):
        tag, pos = _varint(raw, pos)
        wire = tag & 7
        if wire == _VARINT:
            _, pos = _varint(raw, pos)
        elif wire == _FIXED64:
            pos += 8
        elif wire == _FIXED32:
            pos += 4
        elif wire == _LENGTH:
            size, pos = _varint(raw, pos)
            chunk, pos = raw[pos : pos + size], pos + size
            if len(chunk) < size:
                raise ValueError("truncated")
            found = _check(descriptor.fields_by_number.get(tag >> 3), chunk, seen)
            if found is not None:
                return found
        else:
            raise ValueError(f"wire type {wire}")
    return None


def _check(field: FieldDescriptor | None, chunk: memoryview, seen: dict[str, int]) -> str | None:
    if field is None:
        return None
    name = field.name
    if field.is_repeated:
        index = seen.get(name, 0)
        seen[name] = index + 1
        name = f"{name}[{index}]"
    if field.type == FieldDescriptor.TYPE_STRING:
        try:
            bytes(chunk).decode("utf-8")
        except UnicodeDecodeError:
            return name
    elif field.type == FieldDescriptor.TYPE_MESSAGE:
        inner = _walk(field.message_type, chunk)
        if inner is not None:
            return f"{name}.{inner}"
    return None


def _varint(raw: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = raw[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")
