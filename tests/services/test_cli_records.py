"""The load/dump record format and the bounded-memory sort."""

from __future__ import annotations

import io
import json
import os
import random
import re
import resource
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keyspan.services.cli_records import RecordError, dump_line, parse_json_line, read_records, sorted_records
from keyspan.streams import Entry


@pytest.mark.parametrize(
    ("line", "record"),
    [
        ('{"key": "a", "value": "text"}', (b"a", b"text", False, 0.0)),
        ('{"key": "a", "value": {"x": 1}}', (b"a", b'{"x":1}', True, 0.0)),
        ('{"key": "a", "value": "s", "json": true}', (b"a", b'"s"', True, 0.0)),
        ('{"key": "a", "value": "s", "json": false}', (b"a", b"s", False, 0.0)),
        ('{"key_hex": "00ff", "value_b64": "AAE="}', (b"\x00\xff", b"\x00\x01", False, 0.0)),
        ('{"key": "a", "value": null, "ttl_s": 2.5}', (b"a", b"null", True, 2.5)),
    ],
)
def test_json_lines_become_records(line: str, record: tuple[bytes, bytes, bool, float]) -> None:
    assert parse_json_line(line) == record


@pytest.mark.parametrize(
    "line",
    [
        '{"key": "a", "value": "text"}',
        '{"key": "doc", "value": {"a": [1, 2.5, null, true], "b": "é"}}',
        '{"key": "s", "value": "just text", "json": true}',
        '{"key_hex": "00ff", "value_b64": "AAE="}',
    ],
)
def test_dump_line_is_the_inverse_of_parse(line: str) -> None:
    record = parse_json_line(line)
    key, value, is_json, _ = record
    assert parse_json_line(dump_line(Entry(key, value, 1, None, is_json))) == record


def test_dump_line_gives_the_ttl_left() -> None:
    entry = Entry(b"k", b"v", 1, datetime.now(UTC) + timedelta(seconds=30), False)
    assert 29 < json.loads(dump_line(entry))["ttl_s"] <= 30


def test_a_bad_line_is_named_by_file_and_line() -> None:
    text = io.StringIO('{"key": "a", "value": "x"}\n{"value": "no key"}\n')
    with pytest.raises(RecordError, match=r"in\.jsonl:2: key: must be a string"):
        list(read_records(text, "jsonl", name="in.jsonl"))


@pytest.mark.parametrize(
    ("fmt", "text", "message"),
    [
        ("jsonl", '{"key": "a", "value": "x"}\n{"key": "", "value": "x"}\n', "in:2: key: must not be empty"),
        (
            "jsonl",
            '{"key": "%s", "value": "x"}\n' % ("k" * 1025),
            "in:1: key: is 1025 bytes; the limit is 1024",
        ),
        ("jsonl", '{"key": "a", "value": "x", "ttl_s": -5}\n', "in:1: ttl_s: must be 0 .no TTL. or between"),
        ("jsonl", '{"key": "a", "value": "x", "ttl_s": "5"}\n', "in:1: ttl_s: must be a number of seconds"),
        ("csv", "a,1\n,2\n", "in:2: key: must not be empty"),
        ("csv", "a,1\nb\n", "in:2: a CSV row is key,value; got 1 columns"),
    ],
)
def test_a_key_or_ttl_the_server_would_refuse_is_named_by_its_line(fmt: str, text: str, message: str) -> None:
    # Checked before the sort: once sorted and batched, the server could only name the
    # entry's place in a batch.
    with pytest.raises(RecordError, match=message):
        list(read_records(io.StringIO(text), fmt, name="in"))


def test_csv_rows_are_key_value_with_an_optional_header() -> None:
    text = io.StringIO("key,value\nb,2\na,1\n")
    assert list(read_records(text, "csv")) == [(b"b", b"2", False, 0.0), (b"a", b"1", False, 0.0)]


def test_a_blank_csv_line_is_skipped_as_in_json_lines() -> None:
    text = io.StringIO("key,value\nb,2\n\na,1\n\n")  # it stopped the load: 0 columns
    assert list(read_records(text, "csv")) == [(b"b", b"2", False, 0.0), (b"a", b"1", False, 0.0)]


def test_sort_spills_runs_and_merges_them_in_key_order() -> None:
    keys = [f"k{i:05d}".encode() for i in range(5_000)]
    shuffled = keys[:]
    random.Random(7).shuffle(shuffled)
    records = [(k, b"v", False, 0.0) for k in shuffled]
    with sorted_records(records, chunk_entries=300) as (count, merged):
        assert count == 5_000
        assert [r[0] for r in merged] == keys


def test_sort_keeps_the_last_of_equal_keys_across_runs() -> None:
    records = [(b"b", b"1", False, 0.0), (b"a", b"1", False, 0.0), (b"b", b"2", False, 0.0)]
    records += [(b"c", b"1", False, 0.0), (b"b", b"3", False, 0.0)]
    with sorted_records(records, chunk_entries=2) as (_, merged):
        assert list(merged) == [(b"a", b"1", False, 0.0), (b"b", b"3", False, 0.0), (b"c", b"1", False, 0.0)]


def test_a_sort_of_more_runs_than_it_merges_at_once_keeps_key_order_and_the_last_line() -> None:
    keys = [b"k%03d" % (i % 97) for i in range(500)]  # each key ~5 times, in runs far apart
    records = [(k, b"%d" % i, False, 0.0) for i, k in enumerate(keys)]
    random.Random(3).shuffle(records)
    last = {r[0]: r for r in records}
    passes: list[tuple[int, int]] = []
    with sorted_records(records, chunk_entries=7, fan_in=3, on_pass=lambda *p: passes.append(p)) as (
        count,
        merged,
    ):
        assert (list(merged), count) == ([last[k] for k in sorted(last)], 500)
    assert passes == [(1, 72), (2, 24), (3, 8)]  # what a load shows before each


def test_a_sort_of_more_runs_than_the_open_files_limit_loads_and_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every run was opened at once: 2,000 runs under `ulimit -n 1024` (a small
    --chunk-entries) failed with "Too many open files" and left the temp dir behind."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    records = [(b"k%04d" % i, b"v", False, 0.0) for i in range(400)]
    random.Random(5).shuffle(records)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 100, hard))
    try:
        with sorted_records(records, chunk_entries=1) as (_, merged):  # 400 runs
            keys = [r[0] for r in merged]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert keys == sorted(r[0] for r in records)
    assert list(tmp_path.iterdir()) == []


def test_sort_spills_by_bytes_too_and_counts_the_lines_it_replaced(tmp_path: object) -> None:
    # By count alone, 200,000 values of 1 MiB were held before the first spill.
    records = [(b"k%03d" % (i % 40), b"v" * 100, False, 0.0) for i in range(50)]
    with sorted_records(records, chunk_entries=1_000, chunk_bytes=1_000) as (count, merged):
        runs = len(list(Path(tempfile.gettempdir()).glob("keyspan-load-*/*.run")))
        assert [r[0] for r in merged] == [b"k%03d" % i for i in range(40)]
        assert (count, merged.replaced) == (50, 10) and runs >= 5


def _nested_line(depth: int) -> str:
    return '{"key": "a", "value": ' + "[" * depth + "1" + "]" * depth + "}\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"key_hex": null, "value": "x"}\n', "in:1: key_hex: must be a string of hex digits, not null"),
        ('{"key_hex": 12, "value": "x"}\n', "in:1: key_hex: must be a string of hex digits, not 12"),
        ('{"key": "a", "value_b64": null}\n', "in:1: value_b64: must be a string of base64, not null"),
        ('{"key": "a", "value": 1, "ttl_s": false}\n', "in:1: ttl_s: must be a number of seconds"),
        ('{"key": "\\ud800", "value": "x"}\n', 'in:1: key: has a lone surrogate .* use "key_hex"'),
        ('{"key": "a", "value": "\\udfff"}\n', 'in:1: value: has a lone surrogate .* use "value_b64"'),
        (_nested_line(100_000), "in:1: value: nests deeper than 1000 levels"),
        (_nested_line(1001), "in:1: value: nests deeper than 1000 levels, the store's limit"),
    ],
)
def test_a_field_of_the_wrong_type_or_shape_is_named_by_its_line(text: str, message: str) -> None:
    with pytest.raises(RecordError, match=message):
        list(read_records(io.StringIO(text), "jsonl", name="in"))


FIELDS = "the fields are key or key_hex, value or value_b64, json, ttl_s"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"key": "a", "value": "x", "json": "false"}', 'json: must be true or false, not "false"'),
        ('{"key": "a", "value": "x", "json": 1}', "json: must be true or false, not 1"),
        ('{"key": "a", "value": "x", "json": 0}', "json: must be true or false, not 0"),
        ('{"key": "a", "value": "x", "json": null}', "json: must be true or false, not null"),
        ('{"key": "a", "value_b64": "eA==", "json": true}', "json: true goes with value, not value_b64"),
        ('{"key": "a", "key_hex": "62", "value": "x"}', "key: give key or key_hex, not both"),
        ('{"key": "a", "value": "x", "value_b64": "eQ=="}', "value: give value or value_b64, not both"),
        ('{"key": "a", "value": "x", "ttl": 30}', f'"ttl": not a record field; {FIELDS}'),
        (
            '{"key": "a", "value": 1, "etag": 3, "expires_at": null}',
            f'"etag", "expires_at": not record fields; {FIELDS}',
        ),
        ('{"key_hex": "zz", "value": "x"}', "key_hex: must be hex digits (0-9, a-f) in pairs"),
        ('{"key_hex": "abc", "value": "x"}', "key_hex: must be hex digits (0-9, a-f) in pairs"),
        ('{"key": "a", "value_b64": "!!!"}', "value_b64: must be base64 (RFC 4648)"),
        ('{"key": "a", "value_b64": "YQ"}', "value_b64: must be base64 (RFC 4648)"),
        ("not json", "not a JSON object: Expecting value at column 1"),
        (
            '{"key": "a", "value": "x",}',
            "not a JSON object: Expecting property name enclosed in double quotes at column 27",
        ),
    ],
)
def test_a_line_the_format_does_not_allow_is_refused_naming_the_field_and_rule(
    text: str, message: str
) -> None:
    # Each was taken before: "json": "false" as true, key_hex over key, a typo'd field
    # dropped; or refused with a message that named no field (Python's hex or base64 text).
    with pytest.raises(RecordError, match=f"^{re.escape('in:2: ' + message)}$"):
        list(read_records(io.StringIO('{"key": "ok", "value": 1}\n' + text + "\n"), "jsonl", name="in"))


@pytest.mark.parametrize(
    ("fmt", "text"),
    [("jsonl", '{"key": "6c31", "value": "x"}\n{"key": "l2", "value": "x"}\n'), ("csv", "6c31,x\nl2,x\n")],
)
def test_with_hex_keys_a_key_that_is_not_hex_is_named_by_its_line(fmt: str, text: str) -> None:
    with pytest.raises(RecordError, match=r"^in:2: key: must be hex digits \(0-9, a-f\) in pairs$"):
        list(read_records(io.StringIO(text), fmt, hex_keys=True, name="in"))


def test_a_document_1000_levels_deep_is_read() -> None:
    text = _nested_line(1000)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(5000)  # as the CLI does: Python's json spends a level per level
    try:
        ((key, value, is_json, _),) = list(read_records(io.StringIO(text), "jsonl"))
    finally:
        sys.setrecursionlimit(limit)
    assert (key, is_json, value.count(b"[")) == (b"a", True, 1000)


def test_a_line_that_is_not_utf8_is_named_by_its_own_line() -> None:
    # Many good lines first: the decoder reads ahead, so a strict decode fails on line 1.
    data = b'{"key": "a", "value": "x"}\n' * 500 + b'{"key": "b", "value": "\xff"}\n'
    stream = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", errors="surrogateescape")
    with pytest.raises(RecordError, match=r"in:501: is not UTF-8 \(byte 0xff at character 24\)"):
        list(read_records(stream, "jsonl", name="in"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('a,1\nb,"open\n', "in:2: CSV: a quoted field is not closed"),
        ('a,1\nb,"open\nc,3\nd,4\n', "in:2: CSV: a quoted field is not closed"),  # where it opened
        ('a,"q"x\n', "in:1: CSV: ',' expected after '\"'"),
    ],
)
def test_a_csv_row_that_does_not_parse_is_named_by_its_line(text: str, message: str) -> None:
    with pytest.raises(RecordError, match=message):
        list(read_records(io.StringIO(text), "csv", name="in"))


def test_a_csv_value_may_be_larger_than_the_csv_modules_128_kib() -> None:
    value = "x" * (1 << 20)
    assert list(read_records(io.StringIO(f"a,{value}\n"), "csv")) == [(b"a", value.encode(), False, 0.0)]
