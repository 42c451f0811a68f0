"""The client's argument checks: each names the argument and its rule, before anything is sent.

A value of the wrong type is a TypeError and one out of its range a ValueError; a bool is
not taken for a number (True would be 1). Without these, a wrong argument surfaced as an
error from inside protobuf ("must be real number, not str"), an AttributeError, or a
string taken as a list of one-character paths.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

_PORT = re.compile(r":(\d+)$")  # HOST:PORT, [IPv6]:PORT, dns:///HOST:PORT
MAX_UINT64 = (1 << 64) - 1  # etags and scan limits are uint64 on the wire
# gRPC turns a timeout into an absolute deadline in int64 nanoseconds since 1970: past
# 2**63 ns (the year 2262, so about 7.4e9 s from 2026, and less each year) it wraps, and the
# call failed at once with DEADLINE_EXCEEDED. A year is far inside that and longer than
# any call should take; a stream that may run for ever takes stream_timeout_s=None.
MAX_TIMEOUT_S = 365 * 24 * 3600


def check_uint64(value: int, name: str, zero: str) -> int:
    """`value` when it is a uint64; else TypeError (not an int) or ValueError (out of
    range) naming `name` (zero: what 0 means)."""
    rule = f"{name}: must be 0 ({zero}) or a whole number up to 2**64-1, not {value!r}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(rule)
    if not 0 <= value <= MAX_UINT64:
        raise ValueError(rule)
    return value


def check_timeout(value: float | None, name: str, none_ok: bool = False) -> float | None:
    """`value` when it is a number of seconds above 0 and at most MAX_TIMEOUT_S (or None,
    when allowed); else TypeError (not a number) or ValueError naming `name`."""
    if value is None and none_ok:
        return None
    rule = f"{name}: must be a number of seconds above 0 and at most {MAX_TIMEOUT_S} (a year), not {value!r}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(rule)
    if not 0 < value <= MAX_TIMEOUT_S:  # NaN and infinity too
        raise ValueError(rule)
    return value


def check_number(value: float, name: str, rule: str) -> float:
    """`value` when it is an int or float (not a bool); else TypeError '`name`: must be `rule`'.
    Its range is the server's to check (INVALID_ARGUMENT names it)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name}: must be {rule}, not {value!r}")
    return value


def check_ttl(ttl_s: float) -> float:
    return check_number(ttl_s, "ttl_s", "a number of seconds (0: no TTL)")


def check_flag(value: bool, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: must be True or False, not {value!r}")
    return value


def check_paths(paths: str | Iterable[str] | None, name: str) -> list[str]:
    """The JSON paths as a list: a single str is one path, None none. Each must be a str
    (TypeError naming `name[i]`); the server checks their syntax."""
    if paths is None:
        return []
    if isinstance(paths, str):
        return [paths]
    if isinstance(paths, bytes | bytearray | memoryview | Mapping) or not isinstance(paths, Iterable):
        raise TypeError(f"{name}: must be a str or a list of str, not {type(paths).__name__}")
    listed = list(paths)
    for i, path in enumerate(listed):
        if not isinstance(path, str):
            raise TypeError(f"{name}[{i}]: must be a str (a JSON path like $.a.b), not {type(path).__name__}")
    return listed


def check_path_values(
    values: Mapping[str, Any] | Iterable[tuple[str, Any]] | None, name: str
) -> list[tuple[str, Any]]:
    """The (path, value) pairs of a mapping from JSON path to value, or of a list of such
    pairs, which may name a path more than once (`$.tags[#]` twice appends twice); None: none."""
    if values is None:
        return []
    rule = "a mapping of JSON path to value, or a list of (path, value) pairs"
    if isinstance(values, Mapping):
        pairs = list(values.items())
    elif isinstance(values, str | bytes | bytearray) or not isinstance(values, Iterable):
        raise TypeError(f"{name}: must be {rule}, not {type(values).__name__}")
    else:
        pairs = [tuple(pair) if isinstance(pair, tuple | list) else pair for pair in values]
        for i, pair in enumerate(pairs):
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise TypeError(f"{name}[{i}]: must be a (path, value) pair, not {pair!r}")
    for path, _ in pairs:
        if not isinstance(path, str):
            kind = type(path).__name__
            raise TypeError(f"{name}: a path must be a str (a JSON path like $.a.b), not {kind}")
    return pairs


def check_address(address: str, name: str = "address") -> str:
    if not isinstance(address, str):
        raise TypeError(f"{name}: must be a str HOST:PORT, not {type(address).__name__}")
    if not address.strip():
        raise ValueError(f"{name}: must be HOST:PORT, not empty")
    port = _PORT.search(address)
    if port is not None and not 1 <= int(port.group(1)) <= 65535:
        # gRPC takes the port modulo 65536: 127.0.0.1:94847 reached the server on 29311.
        raise ValueError(f"{name}: the port of {address!r} must be between 1 and 65535")
    return address
