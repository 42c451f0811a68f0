"""Request limits checked at the edge, before anything is queued or read."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from keyspan.storage.errors import InvalidArgumentError, ValueTooLargeError, key_text, text_excerpt
from keyspan.storage.keys import MAX_KEY_BYTES, check_key

MAX_TTL_S = 315_360_000.0  # ten years
MIN_TTL_S = 0.001
MAX_PATHS = 64
MAX_CREDITS = 1_000_000
MAX_BULK_ENTRIES = 100_000
# SQLite's JSON path syntax: $ then .key, ."quoted key", [N], [#] or [#-N] steps. SQLite
# parses a path only as far as the document goes, so it is checked here, up front.
# A NUL is refused: SQLite reads a path only up to its first NUL. A quoted key is a JSON
# string's body (escapes as JSON has them, \" among them): SQLite copies it into the
# document as written when it sets it, so `$."a\qb"` stored a document that is not JSON.
_QUOTED_KEY = r'"(?:[^"\\\x00]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"'
_JSON_PATH = re.compile(r"\$(?:\.(?:" + _QUOTED_KEY + r'|[^.\[\]"\x00]+)|\[(?:\d+|#(?:-\d+)?)\])*')


@dataclass(frozen=True, kw_only=True)
class Limits:
    max_key_bytes: int = MAX_KEY_BYTES
    max_value_bytes: int = 1 << 20

    def key(self, raw: bytes, field: str = "key") -> bytes:
        return check_key(raw, field, self.max_key_bytes)

    def value(self, raw: bytes, field: str = "value") -> bytes:
        if len(raw) > self.max_value_bytes:
            raise ValueTooLargeError(len(raw), self.max_value_bytes, field)
        return raw


def check_conditions(if_etag: int, if_absent: bool) -> None:
    """A write's preconditions: if_absent and an if_etag cannot both hold."""
    if if_absent and if_etag:
        raise InvalidArgumentError("if_absent", "cannot be combined with if_etag")


def check_keep_ttl(keep_ttl: bool, ttl_s: float) -> None:
    """A Put that keeps the entry's expiry sets none of its own."""
    if keep_ttl and ttl_s:
        raise InvalidArgumentError("keep_ttl", f"keeps the entry's expiry: ttl_s must then be 0, not {ttl_s}")


def check_ttl(ttl_s: float, field: str = "ttl_s") -> float:
    """The TTL in seconds, when it is 0 (no TTL) or within MIN_TTL_S..MAX_TTL_S."""
    if ttl_s != 0 and (not math.isfinite(ttl_s) or not MIN_TTL_S <= ttl_s <= MAX_TTL_S):
        raise InvalidArgumentError(
            field,
            f"must be 0 (no TTL) or between {MIN_TTL_S} and {MAX_TTL_S:.0f} seconds, not {ttl_s}",
        )
    return ttl_s


def expiry_ms(ttl_s: float, now_ms: int, field: str = "ttl_s") -> int | None:
    """The absolute expiry for a TTL in seconds; None for 0 (no TTL)."""
    if check_ttl(ttl_s, field) == 0:
        return None
    return now_ms + max(1, round(ttl_s * 1000))


def check_paths(
    paths: Sequence[str], field: str = "paths", suffix: str = "", *, distinct: bool = False
) -> tuple[str, ...]:
    """The paths, when each is a JSON path in SQLite's syntax and there are few enough.

    distinct: refuse a path given twice (a projection names its members by path).
    """
    if len(paths) > MAX_PATHS:
        raise InvalidArgumentError(field, f"has {len(paths)} paths; the limit is {MAX_PATHS}")
    seen: dict[str, int] = {}
    for i, path in enumerate(paths):
        if not _JSON_PATH.fullmatch(path):
            raise InvalidArgumentError(
                f"{field}[{i}]{suffix}", f"{text_excerpt(path)} is not a JSON path like $.a.b or $.items[0]"
            )
        if distinct and seen.setdefault(path, i) != i:
            raise InvalidArgumentError(
                f"{field}[{i}]{suffix}", f"repeats {field}[{seen[path]}] ({text_excerpt(path)})"
            )
    return tuple(paths)


def check_projection(value: bytes, max_value_bytes: int, key: bytes) -> bytes:
    """A projection's JSON text, when it is within the value limit: overlapping paths can
    build one many times the size of the document."""
    if len(value) > max_value_bytes:
        raise ValueTooLargeError(len(value), max_value_bytes, "paths", f" projected from {key_text(key)}")
    return value


def check_credits(credits: int, field: str = "credits") -> int:
    if not 1 <= credits <= MAX_CREDITS:
        raise InvalidArgumentError(field, f"must be between 1 and {MAX_CREDITS}, not {credits}")
    return credits
