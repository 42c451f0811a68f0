"""JSON documents in SQLite: the check a value must pass to be stored as one, JSON path
projections, a Patch's change to a document, and the errors that name the faulty field
or path. Any connection can run them (a patch: the writer's, in its transaction).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import apsw

from keyspan.storage.errors import (
    EtagMismatchError,
    InvalidArgumentError,
    KeyspanError,
    NotFoundError,
    NotJsonError,
    ValueTooLargeError,
    key_text,
    text_excerpt,
)
from keyspan.storage.limits import check_paths
from keyspan.storage.mutations import Patch, PatchResult

MAX_JSON_DEPTH = 1000


def as_bytes(value: Any) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def projection(paths: Sequence[str], max_bytes: int | None = None) -> tuple[str, list[Any]]:
    """SQL for a JSON object of path -> value, with its bindings.

    With max_bytes and more than one path, the SQL first adds up the lengths of the
    values the paths select, and when they pass max_bytes it yields that sum (an
    integer) instead of building the object: overlapping paths over a big document
    (`$`, `$.a`, `$.a.b`, ...) would otherwise build an object many times its size
    before any check could see it. One path's object is about its document's size.
    """
    pairs = ", ".join("?, value -> ?" for _ in paths)
    built = f"json_object({pairs})"
    bindings: list[Any] = [p for path in paths for p in (path, path)]
    if max_bytes is None or len(paths) < 2:
        return built, bindings
    # One path at a time (a row of json_each each), so only one value's text is held:
    # a sum written out path by path held every one until the statement's step ended.
    over = (
        "(SELECT CASE WHEN total > ? THEN total END FROM "
        "(SELECT sum(length(entries.value -> p.value)) AS total FROM json_each(?) AS p))"
    )
    return f"coalesce({over}, {built})", [max_bytes, json.dumps(list(paths)), *bindings]


def projected(value: Any, max_bytes: int | None, key: bytes) -> bytes:
    """A projection's value as bytes; ValueTooLargeError when projection's SQL found it
    over max_bytes (it yields the size, an integer, in place of the object)."""
    if isinstance(value, int) and max_bytes is not None:
        raise ValueTooLargeError(value, max_bytes, "paths", f" or more, projected from {key_text(key)}")
    return as_bytes(value)


# NULL: not JSON SQLite takes; '': valid; else the path of a member whose object names it
# twice. SQLite stores such a member twice, and its JSON functions then read the first
# copy while a patch (set, remove, a merge's null) changes one, and most JSON readers
# keep the last: the same document would read differently from one tool to the next.
_JSON_CHECK = """SELECT CASE WHEN json_valid(?1, 1) THEN coalesce(
    (SELECT fullkey FROM json_tree(?1) WHERE typeof(key) = 'text' GROUP BY parent, key HAVING count(*) > 1),
    '') END"""


def json_text(db: apsw.Connection, value: bytes | str, field: str) -> str:
    """`value` as JSON text, when it is valid JSON (RFC 8259) SQLite can store, with no
    object naming a member twice; else InvalidArgumentError on `field` naming the first
    fault. Any connection can judge."""
    try:
        text = value.decode() if isinstance(value, bytes) else value
    except UnicodeDecodeError:
        raise InvalidArgumentError(field, "must be UTF-8 JSON text") from None
    # SQLite's JSON functions read text only up to a NUL, so one would cut the text
    # short unseen; JSON has no raw NUL anywhere (inside a string it is \u0000).
    repeated = db.execute(_JSON_CHECK, (text,)).fetchone()[0] if "\x00" not in text else None
    if repeated == "":
        return text
    if repeated is not None:
        rule = "must name each member of an object once (RFC 8259 leaves repeated names undefined)"
        raise InvalidArgumentError(field, f"{rule}; {repeated} is repeated")
    at = _first_json_fault(text)
    where = f"; the first fault is at character {at}" if at else ""
    rule = f"must be valid JSON text (RFC 8259) nested at most {MAX_JSON_DEPTH} levels deep"
    raise InvalidArgumentError(field, rule + where)


class _NotJsonConstant(Exception):
    """NaN or Infinity met by Python's decoder, which would take them."""


def _not_json_constant(name: str) -> Any:
    raise _NotJsonConstant(name)


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_CONSTANT = re.compile(r"-?(?:NaN|Infinity)")


def _first_json_fault(text: str) -> int | None:
    """The 1-based character of the first fault in JSON text SQLite refused, or None when
    it is none of the text's characters (it nests too deep). Only on the way to an error.

    Python's strict decoder places the fault (SQLite's json_error_position follows JSON5:
    it placed `{"a":1} x` at character 1, and found none in a trailing comma or NaN), but
    takes NaN and Infinity, which are found outside strings here."""
    try:
        json.loads(text, parse_constant=_not_json_constant)
    except json.JSONDecodeError as err:
        return err.pos + 1
    except _NotJsonConstant:
        blanked = _STRING.sub(lambda m: "_" * len(m.group()), text)
        constant = _CONSTANT.search(blanked)
        return None if constant is None else constant.start() + 1
    except RecursionError:
        return None
    return None


def path_error(
    db: apsw.Connection | apsw.Cursor,
    paths: Sequence[str],
    fields: str | Sequence[str],
    err: apsw.SQLError,
    whole: str = "paths",
) -> KeyspanError:
    """Name the first malformed JSON path, for an SQLite error raised by a JSON function;
    when every path is well formed, blame `whole` with SQLite's reason."""
    for i, path in enumerate(paths):
        try:
            db.execute("SELECT json_extract('{}', ?)", (path,)).fetchone()
        except apsw.SQLError:
            field = f"{fields}[{i}]" if isinstance(fields, str) else fields[i]
            return InvalidArgumentError(
                field, f"{text_excerpt(path)} is not a JSON path like $.a.b or $.items[0]"
            )
    if "nested too deep" in str(err):
        return InvalidArgumentError(whole, f"the result would nest deeper than {MAX_JSON_DEPTH} levels")
    return InvalidArgumentError(whole, f"rejected by SQLite's JSON functions: {err}")


def apply_patch(db: apsw.Connection, m: Patch, etag: int, now_ms: int) -> PatchResult:
    """A Patch's change to its row, under `etag`, in the writer's open transaction (the
    caller logs it). Refused, it leaves the row and the rest of the batch as they were."""
    expr, args = _patch_expression(db, m)  # the request first: INVALID_ARGUMENT before the row
    found = db.execute("SELECT json, etag, expires_at_ms FROM entries WHERE key = ?", (m.key,)).fetchone()
    if found is None or (found[2] is not None and found[2] <= now_ms):
        if m.if_etag:
            raise EtagMismatchError(m.key, m.if_etag, 0)
        raise NotFoundError(m.key)
    if not found[0]:
        raise NotJsonError(m.key)
    if m.if_etag and found[1] != m.if_etag:
        raise EtagMismatchError(m.key, m.if_etag, found[1])
    # In a savepoint: a document the patch grew past the value limit is known only once
    # made, and must leave the row (and the rest of the batch) as it was.
    db.execute("SAVEPOINT patch")
    try:
        return PatchResult(etag, _patched(db, m, expr, [*args, etag, m.key]))
    except BaseException:
        db.execute("ROLLBACK TO patch")
        raise
    finally:
        db.execute("RELEASE patch")


def _patch_expression(db: apsw.Connection, m: Patch) -> tuple[str, list[Any]]:
    """The SQL expression of the patched document, with its bindings."""
    check_paths([p for p, _ in m.set], "set", suffix=".path")
    check_paths(m.remove, "remove")
    for i, path in enumerate(m.remove):
        if path == "$":
            raise InvalidArgumentError(f"remove[{i}]", "cannot remove the whole document; use Delete")
    expr, args = "value", []
    if m.merge_patch:
        expr = f"jsonb_patch({expr}, json(?))"
        args.append(json_text(db, m.merge_patch, "merge_patch"))
    for i, (path, text) in enumerate(m.set):
        expr = f"jsonb_set({expr}, ?, json(?))"
        args += [path, json_text(db, text, f"set[{i}].value")]
    for path in m.remove:
        expr = f"jsonb_remove({expr}, ?)"
        args.append(path)
    return expr, args


def _patched(db: apsw.Connection, m: Patch, expr: str, args: list[Any]) -> bytes:
    """Write the patched document; its JSON text."""
    sql = f"UPDATE entries SET value = {expr}, etag = ? WHERE key = ? RETURNING json(value)"
    try:
        value = as_bytes(db.execute(sql, args).fetchone()[0])
    except apsw.SQLError as err:
        paths = [p for p, _ in m.set] + list(m.remove)
        fields = [f"set[{i}].path" for i in range(len(m.set))] + [
            f"remove[{i}]" for i in range(len(m.remove))
        ]
        raise path_error(db, paths, fields, err, "set" if m.set else "merge_patch") from err
    if m.max_value_bytes and len(value) > m.max_value_bytes:
        raise ValueTooLargeError(len(value), m.max_value_bytes, "value", " once patched")
    return value
