"""The record formats of `keyspan load` and `keyspan dump`, and the bounded-memory sort.

One JSON object per line, the same both ways, so `dump | load` round-trips exactly (a
document's numbers as written: see keyspan.streams.jsontext):

    {"key": "user/ann", "value": "text"}              value stored as bytes (UTF-8)
    {"key": "doc/1", "value": {"a": 1}}               any non-string JSON: a JSON document
    {"key": "doc/2", "value": "text", "json": true}   a JSON document that is a string
    {"key_hex": "00ff", "value_b64": "AAE="}          binary key (every key with --hex), binary value
    {"key": "tmp", "value": "x", "ttl_s": 30.5}       seconds left to live

Those fields, and only those (what dump writes), make a record: key or key_hex, value or
value_b64, and json (true or false), ttl_s if wanted. CSV input is `key,value` rows (the
value stored as bytes); a first row `key,value` is a header.

Every line is checked as it is read, so a bad one stops a load before anything is written,
named by its file and line: text that is not UTF-8, JSON that does not parse or nests
deeper than the store's 1000 levels, a field that is unknown, doubled (key and key_hex)
or of the wrong type, a key or TTL the server would refuse.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import heapq
import json
import marshal
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from operator import itemgetter
from pathlib import Path
from typing import IO, Any

from keyspan.storage.errors import InvalidArgumentError
from keyspan.storage.keys import check_key
from keyspan.storage.limits import check_ttl
from keyspan.streams import jsontext
from keyspan.streams.entry import Entry
from keyspan.streams.router import MAX_MESSAGE_BYTES

# (key, value, is_json, ttl_s): what a line becomes, and what the sort spills to disk.
Record = tuple[bytes, bytes, bool, float]
DEFAULT_CHUNK_ENTRIES = 200_000
DEFAULT_CHUNK_BYTES = 256 << 20
# Most sorted runs merged at once: each holds a file open and a read buffer. A sort with
# more runs merges them in passes (groups of this many into one run each), so a small
# --chunk-entries or a low open-files limit (macOS: 256) does not end in "Too many open
# files". A pass over 1M entries of 100 bytes took ~4 s on the 2-core dev VM.
MERGE_FAN_IN = 64
_RUN_BUFFER_BYTES = 256 << 10
# A CSV field may be as long as a value can be: the csv module's default limit is 128 KiB.
csv.field_size_limit(max(csv.field_size_limit(), MAX_MESSAGE_BYTES))
# A line that is not UTF-8 reaches the reader with its bad bytes as lone surrogates
# (errors="surrogateescape"), so it is named by its own line, not by where the decoder's
# read-ahead happened to be.
_NOT_UTF8 = re.compile("[\udc80-\udcff]")
# A field load does not know is refused, not dropped: a typo ("ttl") would lose its data.
_FIELDS = frozenset(("key", "key_hex", "value", "value_b64", "json", "ttl_s"))
_FIELDS_ARE = "the fields are key or key_hex, value or value_b64, json, ttl_s"


class RecordError(ValueError):
    """A line that is not a record; the message names the line and the field."""


def _key_of(obj: dict[str, Any], hex_keys: bool) -> bytes:
    if "key_hex" in obj:
        if "key" in obj:
            raise RecordError("key: give key or key_hex, not both")
        return _hex(_string(obj, "key_hex", "hex digits"), "key_hex")
    key = obj.get("key")
    if not isinstance(key, str):
        raise RecordError('key: must be a string ("key": "..." or "key_hex": "...")')
    return _hex(key, "key") if hex_keys else _utf8(key, "key", '"key_hex"')


def _value_of(obj: dict[str, Any]) -> tuple[bytes, bool]:
    """(value, is_json) of a record: bytes from value_b64 or a string, else a JSON document."""
    is_json = obj.get("json", False)
    if is_json is not True and is_json is not False:
        raise RecordError(f"json: must be true or false, not {jsontext.dumps(is_json)[:40]}")
    if "value_b64" in obj:
        if "value" in obj:
            raise RecordError("value: give value or value_b64, not both")
        if is_json:
            raise RecordError("json: true goes with value, not value_b64")
        return _b64(_string(obj, "value_b64", "base64")), False
    if "value" not in obj:
        raise RecordError('value: missing ("value" or "value_b64")')
    value = obj["value"]
    if isinstance(value, str) and not is_json:
        return _utf8(value, "value", '"value_b64", or "json": true'), False
    return jsontext.to_utf8(jsontext.dumps(value)), True


def _hex(text: str, name: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise RecordError(f"{name}: must be hex digits (0-9, a-f) in pairs") from None


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:  # binascii.Error: a character outside the alphabet, or padding
        raise RecordError("value_b64: must be base64 (RFC 4648)") from None


def _utf8(text: str, name: str, instead: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate escape, "\ud800": JSON takes it, UTF-8 cannot
        raise RecordError(
            f"{name}: has a lone surrogate (a \\u escape) UTF-8 cannot carry; use {instead}"
        ) from None


def _string(obj: dict[str, Any], name: str, what: str) -> str:
    value = obj[name]
    if not isinstance(value, str):
        raise RecordError(f"{name}: must be a string of {what}, not {jsontext.dumps(value)[:40]}")
    return value


def _checked(key: bytes, ttl_s: float = 0.0) -> bytes:
    """The key, when it and the TTL keep the server's rules: a bad line is named by its
    number here, before the sort, not by its place in a batch after it."""
    try:
        check_key(key)
        check_ttl(ttl_s)
    except InvalidArgumentError as err:
        raise RecordError(str(err)) from None
    return key


def _object_of(line: str) -> dict[str, Any]:
    """The line's JSON object, holding record fields only."""
    try:
        obj = jsontext.loads(line, max_depth=jsontext.MAX_DEPTH + 1)  # the line's object is a level
    except jsontext.TooDeepError:
        raise RecordError(
            f"value: nests deeper than {jsontext.MAX_DEPTH} levels, the store's limit"
        ) from None
    except json.JSONDecodeError as err:
        raise RecordError(f"not a JSON object: {err.msg} at column {err.colno}") from None
    if not isinstance(obj, dict):
        raise RecordError("must be a JSON object with key and value")
    if not _FIELDS.issuperset(obj):
        unknown = [jsontext.dumps(name)[:40] for name in obj if name not in _FIELDS]
        what = "a record field" if len(unknown) == 1 else "record fields"
        raise RecordError(f"{', '.join(unknown)}: not {what}; {_FIELDS_ARE}")
    return obj


def _ttl_of(obj: dict[str, Any]) -> float:
    ttl_s = obj.get("ttl_s")
    if ttl_s is None:
        return 0.0
    if isinstance(ttl_s, jsontext.JsonText):  # 1e5, 1.50: as written, still a number
        ttl_s = float(ttl_s.text)
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int | float):
        raise RecordError("ttl_s: must be a number of seconds")
    return float(ttl_s)


def parse_json_line(line: str, hex_keys: bool = False) -> Record:
    """One JSON-lines record; raises RecordError naming the field and the rule (a plain
    ValueError only for a number Python cannot hold, from jsontext)."""
    obj = _object_of(line)
    ttl_s = _ttl_of(obj)
    key = _checked(_key_of(obj, hex_keys), ttl_s)
    value, is_json = _value_of(obj)
    return key, value, is_json, ttl_s


def read_records(stream: IO[str], fmt: str, hex_keys: bool = False, name: str = "-") -> Iterator[Record]:
    """Records from a JSON-lines or CSV text stream, raising RecordError with `name:line:`.

    Open the stream with errors="surrogateescape" (or "strict") for UTF-8: a line that
    is not UTF-8 is then a RecordError naming it.
    """
    lines = _utf8_lines(stream, name)
    if fmt == "csv":
        yield from _csv_records(lines, hex_keys, name)
        return
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:  # without its line ending, or a fault at the end names "column 1" of the next
            yield parse_json_line(line.rstrip("\r\n"), hex_keys)
        except ValueError as err:  # RecordError; NaN, or an int over Python's digit limit
            raise RecordError(f"{name}:{number}: {err}") from None


def _utf8_lines(stream: IO[str], name: str) -> Iterator[str]:
    number = 0
    try:
        for number, line in enumerate(stream, 1):
            if not line.isascii() and (bad := _NOT_UTF8.search(line)):
                raw = line[bad.start()].encode("utf-8", "surrogateescape")
                column = bad.start() + 1
                raise RecordError(f"{name}:{number}: is not UTF-8 (byte 0x{raw.hex()} at character {column})")
            yield line
    except UnicodeDecodeError as err:  # a stream opened with errors="strict"
        raise RecordError(f"{name}:{number + 1}: is not UTF-8 ({err.reason})") from None


def _csv_records(lines: Iterator[str], hex_keys: bool, name: str) -> Iterator[Record]:
    reader = csv.reader(lines, strict=True)  # a quote left open is an error, not a newline
    # A quote left open runs to the end of the input: it is named by the line it opened
    # on, the one after the last row read.
    last_row_end = 0
    try:
        for row in reader:
            last_row_end = reader.line_num
            if not row or (last_row_end == 1 and row == ["key", "value"]):
                continue  # a blank line is skipped, as in JSON lines
            try:
                if len(row) != 2:
                    raise RecordError(f"a CSV row is key,value; got {len(row)} columns")
                key = _checked(_hex(row[0], "key") if hex_keys else row[0].encode())
            except ValueError as err:  # RecordError
                raise RecordError(f"{name}:{last_row_end}: {err}") from None
            yield key, row[1].encode(), False, 0.0
    except csv.Error as err:  # a field over the limit, a quote left open, text after a quote
        # csv tells an open quote at the end of the input only by these words.
        if str(err) == "unexpected end of data":
            raise RecordError(f"{name}:{last_row_end + 1}: CSV: a quoted field is not closed") from None
        raise RecordError(f"{name}:{reader.line_num}: CSV: {err}") from None


def _spill(chunk: list[Record], directory: str) -> Path:
    chunk.sort(key=itemgetter(0))  # stable: equal keys keep their input order
    with tempfile.NamedTemporaryFile("wb", dir=directory, delete=False, suffix=".run") as out:
        for record in chunk:
            marshal.dump(record, out)
    return Path(out.name)


def _read_run(path: Path) -> Iterator[Record]:
    with path.open("rb", buffering=_RUN_BUFFER_BYTES) as run:
        while True:
            try:
                yield marshal.load(run)
            except EOFError:
                return


class LastOfEachKey:
    """The records with equal keys collapsed, keeping the last (a later line overrides an
    earlier one); `replaced` counts the records dropped so far."""

    def __init__(self, records: Iterable[Record]) -> None:
        self._records = iter(records)
        self._previous: Record | None = None
        self.replaced = 0

    def __iter__(self) -> Iterator[Record]:
        for record in self._records:
            if self._previous is not None:
                if record[0] != self._previous[0]:
                    yield self._previous
                else:
                    self.replaced += 1
            self._previous = record
        if self._previous is not None:
            last, self._previous = self._previous, None
            yield last


@contextlib.contextmanager
def sorted_records(
    records: Iterable[Record],
    chunk_entries: int = DEFAULT_CHUNK_ENTRIES,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    fan_in: int = MERGE_FAN_IN,
    on_pass: Callable[[int, int], None] | None = None,
) -> Iterator[tuple[int, LastOfEachKey]]:
    """(count, records in key order, last of each key), holding at most `chunk_entries`
    records, and about `chunk_bytes` of keys and values, in memory: larger inputs are
    sorted in runs spilled to temporary files and merged, at most `fan_in` runs at once
    (by count alone, 200,000 values of 1 MiB would have been held before the first
    spill). `count` counts input records (duplicates included; the merged records'
    `replaced` says how many were dropped).
    Temp files are removed on exit."""
    with tempfile.TemporaryDirectory(prefix="keyspan-load-") as directory:
        runs: list[Path] = []
        chunk: list[Record] = []
        count = held = 0
        for record in records:
            chunk.append(record)
            count += 1
            held += len(record[0]) + len(record[1])
            if len(chunk) >= chunk_entries or held >= chunk_bytes:
                runs.append(_spill(chunk, directory))
                chunk, held = [], 0
        if not runs:
            chunk.sort(key=itemgetter(0))
            yield count, LastOfEachKey(chunk)
            return
        if chunk:
            runs.append(_spill(chunk, directory))
        passes = 0
        while len(runs) > fan_in:
            passes += 1
            if on_pass is not None:
                on_pass(passes, len(runs))
            runs = [_merged_run(runs[i : i + fan_in], directory) for i in range(0, len(runs), fan_in)]
        with _merging(runs) as merged:
            yield count, LastOfEachKey(merged)


@contextlib.contextmanager
def _merging(runs: list[Path]) -> Iterator[Iterator[Record]]:
    """The runs' records in key order; equal keys in run order (heapq.merge is stable), so a
    later line still wins. Every run's file is closed on exit, before the temp dir goes
    (with all of them open, its removal could fail for want of a file descriptor)."""
    readers = [_read_run(r) for r in runs]
    try:
        yield heapq.merge(*readers, key=itemgetter(0))
    finally:
        for reader in readers:
            # A load's client reads the merge on its own thread: on Ctrl-C a reader may be
            # running there ("generator already executing"); it closes when it is let go.
            with contextlib.suppress(ValueError):
                reader.close()


def _merged_run(runs: list[Path], directory: str) -> Path:
    """Consecutive runs merged into one (a later run's records stay after an earlier
    one's of the same key); the runs merged are removed."""
    with (
        _merging(runs) as merged,
        tempfile.NamedTemporaryFile("wb", dir=directory, delete=False, suffix=".run") as out,
    ):
        for record in merged:
            marshal.dump(record, out)
    for run in runs:
        run.unlink()
    return Path(out.name)


def dump_object(entry: Entry, hex_keys: bool = False, now_s: float | None = None) -> dict[str, Any]:
    """The JSON-lines object of an entry read raw (bytes value, is_json set); a JSON
    document's value is its text, for `jsontext.dumps`."""
    obj: dict[str, Any] = {}
    if hex_keys:  # key_hex, not key: a line reads the same to `load` with or without --hex
        obj["key_hex"] = entry.key.hex()
    else:
        try:
            obj["key"] = entry.key.decode()
        except UnicodeDecodeError:
            obj["key_hex"] = entry.key.hex()
    if entry.is_json:
        # The server's JSON text as it is: numbers as written, escapes kept.
        text = entry.value.decode()
        obj["value"] = jsontext.JsonText(text)
        if text.startswith('"'):
            obj["json"] = True
    else:
        try:
            obj["value"] = entry.value.decode()
        except UnicodeDecodeError:
            obj["value_b64"] = base64.b64encode(entry.value).decode()
    if entry.expires_at is not None:
        left_s = entry.expires_at.timestamp() - (time.time() if now_s is None else now_s)
        obj["ttl_s"] = max(0.001, round(left_s, 3))
    return obj


def dump_line(entry: Entry, hex_keys: bool = False) -> str:
    return jsontext.dumps(dump_object(entry, hex_keys))
