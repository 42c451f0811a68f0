"""JSON text that keeps what the store keeps: numbers as written, any string it took.

The shards store JSON documents as SQLite JSONB, which keeps a number's text (`1.50`,
`1E2`, `1e400`, `0.10000000000000000001`, `-0`) and a string's escapes (a lone `\\ud800`
too). Python's json turns such numbers into floats or ints that print differently (or as
`Infinity`, which is not JSON), and such a string into one that cannot be encoded as
UTF-8. The CLI's dump, load, get, scan and patch go through here so they carry a document
through unchanged.

Text nested deeper than the store takes (MAX_DEPTH, SQLite's limit) is refused before
it is decoded: Python's decoder would spend a recursion level on each, and a line
100,000 levels deep would end in a RecursionError.

Python's json encoder and decoder spend a recursion level per level of nesting, and the
default recursion limit is 1000, so a document the store takes could be neither written
nor read (a RecursionError). `room_to_nest` raises the limit to RECURSION_LIMIT the first
time a document needs it, and leaves it there: lowering it again afterwards would race
with another thread that needs it raised. The CLI sets the same limit at start.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any, TypeVar

T = TypeVar("T")

MAX_DEPTH = 1000  # the store's limit on nesting, SQLite's JSON_MAX_DEPTH
RECURSION_LIMIT = 5000  # MAX_DEPTH levels of json, and the frames of the program around them
_STRING = re.compile(r'"(?:[^"\\]+|\\.)*"')
_BRACKET = re.compile(r"[\[\]{}]")


class TooDeepError(ValueError):
    """JSON text that nests arrays and objects deeper than `limit` levels."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"nests deeper than {limit} levels")
        self.limit = limit


class JsonText:
    """JSON text written out as it is: a number a float would change, or a whole document."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JsonText) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return f"JsonText({self.text!r})"


def _float_as_written(text: str) -> float | JsonText:
    number = float(text)
    return number if repr(number) == text else JsonText(text)


def _int_as_written(text: str) -> int | JsonText:
    # Past Python's limit on int digits (4300 by default) int() raises: such a number
    # stays text, as the store keeps it.
    if text == "-0" or len(text) > MAX_INT_DIGITS:
        return JsonText(text)
    return int(text)


# Under Python's limit on int digits (4300 by default, sys.set_int_max_str_digits).
MAX_INT_DIGITS = 4000


def too_many_digits(err: ValueError) -> bool:
    """Whether `err` is int()'s refusal of a number past Python's digit limit."""
    return "integer string conversion" in str(err)


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON (RFC 8259)")


_DECODER = json.JSONDecoder(
    parse_float=_float_as_written, parse_int=_int_as_written, parse_constant=_refuse_constant
)
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_SURROGATE = re.compile("[\ud800-\udfff]")


def loads(text: str | bytes, max_depth: int = MAX_DEPTH) -> Any:
    """Decode JSON text; numbers a float or int would change come back as JsonText.

    Refuses NaN and Infinity (ValueError), as the server does, and text nested deeper
    than `max_depth` (TooDeepError, a ValueError) before decoding it. Decoding spends a
    Python recursion level per level of nesting: the CLI raises the recursion limit above
    MAX_DEPTH.
    """
    if isinstance(text, bytes):
        text = text.decode()
    check_depth(text, max_depth)
    return _DECODER.decode(text)


def room_to_nest(code: Callable[[Any], T], arg: Any) -> T:
    """`code(arg)` (a json encode or decode) with the recursion room for MAX_DEPTH levels.

    On a RecursionError the limit is raised to RECURSION_LIMIT, once for the process, and
    `code` runs again. A value that runs out of recursion even so nests far deeper than
    the store takes: TooDeepError(MAX_DEPTH), a ValueError.
    """
    try:
        return code(arg)
    except RecursionError:
        if sys.getrecursionlimit() >= RECURSION_LIMIT:
            raise TooDeepError(MAX_DEPTH) from None
        sys.setrecursionlimit(RECURSION_LIMIT)
    try:
        return code(arg)
    except RecursionError:
        raise TooDeepError(MAX_DEPTH) from None


def check_depth(text: str, limit: int = MAX_DEPTH) -> None:
    """Raise TooDeepError when JSON text nests arrays and objects deeper than `limit`.

    Text with no more brackets than `limit` passes on a count (a few microseconds per
    kilobyte); only text with more is walked bracket by bracket, skipping strings. Text
    that is not JSON gets an answer too; decoding it then says what is wrong.
    """
    if text.count("[") + text.count("{") <= limit:
        return
    depth = 0
    for bracket in _BRACKET.findall(_STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        if depth > limit:
            raise TooDeepError(limit)


def dumps(value: Any) -> str:
    """Compact JSON text of a decoded value, JsonText and Decimal parts written as they are."""
    try:
        return _ENCODER.encode(value)
    except TypeError:  # a JsonText inside: write it part by part
        return "".join(_parts(value))


def _parts(value: Any) -> Iterator[str]:
    if isinstance(value, JsonText):
        yield value.text
    elif isinstance(value, Decimal):  # as the client decodes a number a float cannot hold
        if not value.is_finite():
            raise ValueError(f"{value} is not JSON (RFC 8259)")
        yield str(value)
    elif isinstance(value, dict):
        yield "{"
        for i, (name, item) in enumerate(value.items()):
            yield f"{',' if i else ''}{_member_name(name)}:"
            yield from _parts(item)
        yield "}"
    elif isinstance(value, list | tuple):
        yield "["
        for i, item in enumerate(value):
            if i:
                yield ","
            yield from _parts(item)
        yield "]"
    else:
        yield _ENCODER.encode(value)


def _member_name(name: Any) -> str:
    """A member name as json.dumps writes it: a str, or an int, float, bool or None turned
    into one; any other key is its TypeError (a tuple key was written as an array, `{[1]:2}`,
    and sent)."""
    text = _ENCODER.encode({name: 0})
    return text[1 : text.rindex(":")]


def to_utf8(text: str) -> bytes:
    """UTF-8 of JSON text; a lone surrogate (from a `\\ud800` escape, which JSON allows)
    is written back as its escape, since UTF-8 has no encoding for it."""
    if not text.isascii() and _SURROGATE.search(text):
        text = _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    return text.encode()
