"""The data commands through the real `keyspan` CLI against a real server on 127.0.0.1.

Round trips run the installed console script in a subprocess; exit codes and messages
use click's CliRunner in-process (same code, faster).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from keyspan.services.cli import cli
from keyspan.streams import Client
from tests.conftest import ThreadedServer

KEYSPAN = str(Path(sys.executable).with_name("keyspan"))


def run_cli(address: str, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "KEYSPAN_ADDRESS": address, "GRPC_VERBOSITY": "ERROR"}
    return subprocess.run([KEYSPAN, *args], input=stdin, capture_output=True, env=env, timeout=120)


def invoke(address: str, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [*args], env={"KEYSPAN_ADDRESS": address})
    return result.exit_code, result.output


def line(obj: dict[str, object]) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def sample_lines(n: int) -> list[str]:
    """Sorted JSON lines of every kind of record: text, documents, JSON strings, binary."""
    lines = []
    for i in range(n):
        key = f"item/{i:06d}"
        match i % 5:
            case 0:
                lines.append(line({"key": key, "value": f"text {i} é"}))
            case 1:
                lines.append(line({"key": key, "value": {"n": i, "tags": ["a", "b"], "ratio": i / 7}}))
            case 2:
                lines.append(line({"key": key, "value": "a JSON string", "json": True}))
            case 3:
                lines.append(line({"key_hex": (key.encode() + b"\xff").hex(), "value_b64": "AAEC/w=="}))
            case _:
                lines.append(line({"key": key, "value": [1, None, True]}))
    return lines


def test_load_then_dump_round_trips_20k_sorted_entries_exactly(server_address: str, tmp_path: Path) -> None:
    text = "\n".join(sample_lines(20_000)) + "\n"
    source = tmp_path / "in.jsonl"
    source.write_text(text, encoding="utf-8")

    loaded = run_cli(server_address, "load", str(source), "--output", "json")
    assert loaded.returncode == 0, loaded.stderr
    assert json.loads(loaded.stdout)["entries"] == 20_000
    assert b"entries/s" in loaded.stderr  # the tqdm bar: rate and ETA on stderr

    dumped = run_cli(server_address, "dump")
    assert dumped.returncode == 0, dumped.stderr
    assert dumped.stdout.decode() == text


def test_load_sorts_unsorted_input_with_spills_and_later_lines_win(
    server_address: str, tmp_path: Path
) -> None:
    lines = sample_lines(3_000)
    shuffled = lines[:]
    random.Random(3).shuffle(shuffled)
    shuffled.append(line({"key": "item/000000", "value": "replaced"}))
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(shuffled) + "\n", encoding="utf-8")

    loaded = run_cli(server_address, "load", str(source), "--chunk-entries", "500", "--no-progress")
    assert loaded.returncode == 0, loaded.stderr

    dumped = run_cli(server_address, "dump").stdout.decode().splitlines()
    assert dumped == [line({"key": "item/000000", "value": "replaced"}), *lines[1:]]


def test_load_reads_csv_and_stdin(server_address: str, tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("key,value\nb,2\na,1\n")
    assert run_cli(server_address, "load", str(tmp_path / "in.csv")).returncode == 0
    piped = run_cli(server_address, "load", "-", stdin=b'{"key": "c", "value": 3}\n')
    assert piped.returncode == 0, piped.stderr
    assert run_cli(server_address, "dump").stdout.decode().splitlines() == [
        line({"key": "a", "value": "1"}),
        line({"key": "b", "value": "2"}),
        line({"key": "c", "value": 3}),
    ]


def test_load_reads_past_a_byte_order_mark(server_address: str, tmp_path: Path) -> None:
    """Excel writes UTF-8 CSV with a BOM: it is not part of the first key (or of a JSON line)."""
    (tmp_path / "excel.csv").write_bytes(b"\xef\xbb\xbfkey,value\r\na,1\r\n")
    (tmp_path / "bom.jsonl").write_bytes(b'\xef\xbb\xbf{"key": "b", "value": 2}\n')
    for name in ("excel.csv", "bom.jsonl"):
        loaded = run_cli(server_address, "load", str(tmp_path / name), "--no-progress")
        assert loaded.returncode == 0, loaded.stderr
        assert loaded.stderr.startswith(b"loaded 1 entry in ")
    assert run_cli(server_address, "dump").stdout.decode().splitlines() == [
        line({"key": "a", "value": "1"}),
        line({"key": "b", "value": 2}),
    ]


def test_dump_keeps_the_ttl(server_address: str, tmp_path: Path) -> None:
    with Client(server_address) as kv:
        kv.put("t", b"v", ttl_s=600)
    (obj,) = [json.loads(x) for x in run_cli(server_address, "dump").stdout.splitlines()]
    assert obj["key"] == "t" and 590 < obj["ttl_s"] <= 600


def test_a_bad_input_line_exits_2_naming_the_line(server_address: str, tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_text('{"key": "a", "value": 1}\n{"key": 5, "value": 1}\n')
    result = run_cli(server_address, "load", str(tmp_path / "bad.jsonl"))
    assert result.returncode == 2
    assert b"bad.jsonl:2: key: must be a string" in result.stderr and b"Traceback" not in result.stderr


def test_put_get_patch_delete(server_address: str) -> None:
    assert invoke(server_address, "put", "user/ann", "hello") == (0, "1\n")
    assert invoke(server_address, "get", "user/ann") == (0, "hello")  # not a terminal: no newline added
    assert invoke(server_address, "put", "doc", '{"a": 1}', "--json")[0] == 0
    code, out = invoke(
        server_address, "patch", "doc", "--merge", '{"b": 2}', "--set", "$.a=[1]", "--remove", "$.b"
    )
    assert (code, json.loads(out)) == (0, {"a": [1]})
    code, out = invoke(server_address, "get", "doc", "--paths", "$.a", "--output", "json")
    assert code == 0 and json.loads(out)["value"] == {"$.a": [1]}
    assert invoke(server_address, "delete", "doc")[0] == 0


def test_put_keep_ttl_keeps_the_expiry_and_refuses_a_ttl_beside_it(server_address: str) -> None:
    assert invoke(server_address, "put", "s/9", "one", "--ttl", "600")[0] == 0
    with Client(server_address) as kv:
        expires = kv.get("s/9").expires_at  # type: ignore[union-attr]
        assert invoke(server_address, "put", "s/9", "two", "--keep-ttl")[0] == 0
        assert kv.get("s/9").expires_at == expires  # type: ignore[union-attr]
    code, out = invoke(server_address, "put", "s/9", "three", "--keep-ttl", "--ttl", "5")
    assert code == 2 and "give it or --ttl, not both" in out


def test_scan_prints_key_tab_value_in_order(server_address: str) -> None:
    for key in ("b", "a", "c"):
        invoke(server_address, "put", key, key.upper())
    assert invoke(server_address, "scan") == (0, "a\tA\nb\tB\nc\tC\n")
    assert invoke(server_address, "scan", "a", "c", "--reverse", "--limit", "1") == (0, "b\tB\n")


def test_a_scan_line_is_one_entry_whatever_its_value_holds(server_address: str) -> None:
    from keyspan.streams import Client

    with Client(server_address) as kv:
        kv.put("o/1", b"two\nlines\tand a tab")  # split the line in two
        kv.put("o/2", b"\x1b[31mred")  # drove the terminal
        kv.put("o/3", b"\xff\xfe")  # not UTF-8
        kv.put("o/4", "caf\u00e9 \u00a0ok".encode())  # text: as it is
        kv.put("o/5", {"a": "x\ny"}, json=True)  # a document's text has no raw newline
    code, out = invoke(server_address, "scan", "o/", "o0")
    assert code == 0 and out.splitlines() == [
        "o/1\t0x" + b"two\nlines\tand a tab".hex(),
        "o/2\t0x" + b"\x1b[31mred".hex(),
        "o/3\t0xfffe",
        "o/4\tcaf\u00e9 \u00a0ok",
        'o/5\t{"a":"x\\ny"}',
    ]
    code, out = invoke(server_address, "get", "o/1")  # get gives the bytes as they are
    assert (code, out) == (0, "two\nlines\tand a tab")


def test_get_writes_a_binary_value_exactly_and_arguments_go_as_their_bytes(server_address: str) -> None:
    data = bytes(range(256)) * 3  # every byte, ending without a newline
    runner = CliRunner()
    env = {"KEYSPAN_ADDRESS": server_address}
    assert runner.invoke(cli, ["put", "bin/1", "-"], input=data, env=env).exit_code == 0
    got = runner.invoke(cli, ["get", "bin/1"], env=env)
    assert got.exit_code == 0 and got.stdout_bytes == data  # was data + b"\n"
    # An argument that is not UTF-8 reaches Python with surrogates: its bytes are sent
    # as given (a traceback, exit 1, before), and shown as hex where they are not text.
    assert invoke(server_address, "put", "bin/\udcff", "v\udcfe")[0] == 0
    assert runner.invoke(cli, ["get", "--hex", b"bin/\xff".hex()], env=env).stdout_bytes == b"v\xfe"
    code, out = invoke(server_address, "patch", "doc", "--set", '$.a="\udcff"')
    assert code == 2 and "is not UTF-8 text" in out


def test_dump_hex_lines_load_the_same_with_or_without_hex(server_address: str, tmp_path: Path) -> None:
    invoke(server_address, "put", "--hex", "00ff", "bin")
    invoke(server_address, "put", "h/1", "text")
    code, out = invoke(server_address, "dump", "--hex")
    assert code == 0 and out.splitlines() == [
        '{"key_hex":"00ff","value":"bin"}',
        '{"key_hex":"682f31","value":"text"}',
    ]
    dumped = tmp_path / "hex.jsonl"
    dumped.write_text(out)
    for flags in ((), ("--hex",)):
        assert invoke(server_address, "delete", "h/1")[0] == 0
        assert invoke(server_address, "load", str(dumped), "--no-progress", *flags)[0] == 0
        assert invoke(server_address, "get", "h/1") == (0, "text")  # not a key 682f31


def test_text_that_begins_with_0x_is_shown_as_hex_so_it_reads_one_way(server_address: str) -> None:
    # The text key 0x4142 and the binary key 0x4142 (AB) printed alike.
    from keyspan.streams import Client

    with Client(server_address) as kv:
        kv.put("0x4142", b"0xff")
        kv.put(b"AB", b"plain")
    assert invoke(server_address, "scan") == (0, f"0x{b'0x4142'.hex()}\t0x{b'0xff'.hex()}\nAB\tplain\n")


def test_scan_projects_each_json_document_by_paths(server_address: str) -> None:
    invoke(server_address, "put", "doc/1", '{"name": "ann", "age": 41}', "--json")
    invoke(server_address, "put", "doc/2", '{"name": "bob"}', "--json")
    invoke(server_address, "put", "doc/3", "raw bytes")
    code, out = invoke(server_address, "scan", "doc/", "doc0", "--paths", "$.name", "--paths", "$.age")
    assert code == 0
    assert out.splitlines() == [
        'doc/1\t{"$.name":"ann","$.age":41}',
        'doc/2\t{"$.name":"bob","$.age":null}',
        "doc/3\traw bytes",
    ]
    code, out = invoke(server_address, "scan", "doc/", "--paths", "$$")
    assert code == 2 and "paths[0]" in out


def test_text_output_shows_unprintable_keys_as_hex(server_address: str) -> None:
    with Client(server_address) as kv:
        kv.put(b"tab\tkey", b"v1")
        kv.put(b"\xffbin", b"v2")
    # A tab or newline in a key would break the KEY<TAB>VALUE lines; bytes that are not
    # UTF-8 cannot be printed as text.
    assert invoke(server_address, "scan", "t", "u") == (0, "0x746162096b6579\tv1\n")
    assert invoke(server_address, "scan", "\u00ff") == (0, "0xff62696e\tv2\n")


def test_hex_keys(server_address: str) -> None:
    assert invoke(server_address, "put", "--hex", "00ff", "bin")[0] == 0
    assert invoke(server_address, "scan", "--hex") == (0, "00ff\tbin\n")
    code, out = invoke(server_address, "get", "--hex", "zz")
    assert code == 2 and "not hex" in out


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("get", "missing"), 1, "not found: missing"),
        (("delete", "missing"), 1, "not found: missing"),
        (("put", "k", "v", "--if-etag", "99"), 3, "precondition failed"),
        (("put", "x" * 1100, "v"), 2, "key: is 1100 bytes; the limit is 1024"),
        (("put", "k", "v", "--ttl", "-1"), 2, "'--ttl': must be 0 (no TTL) or between"),
        (("patch", "k", "--merge", "{}"), 3, "not a JSON document"),
        (("patch", "k"), 2, "give at least one of"),
        (("put", "k"), 2, "Missing argument"),
    ],
)
def test_expected_errors_exit_with_their_code_and_one_line(
    server_address: str, args: tuple[str, ...], code: int, message: str
) -> None:
    invoke(server_address, "put", "k", "v")
    exit_code, output = invoke(server_address, *args)
    assert exit_code == code and message in output and "Traceback" not in output


def test_an_address_whose_port_is_out_of_range_is_a_usage_error() -> None:
    code, output = invoke("127.0.0.1:94847", "put", "k", "v")  # gRPC took the port modulo 65536
    assert code == 2 and "the port of '127.0.0.1:94847' must be between 1 and 65535" in output


@pytest.mark.parametrize("ttl", ["-1", "nan", "inf", "0.0001", "1e12"])
def test_a_ttl_out_of_range_is_a_usage_error_before_anything_is_sent(ttl: str) -> None:
    # Checked by the server only, it was exit 4 (unavailable) with the server down.
    code, output = invoke("127.0.0.1:1", "put", "k", "v", "--ttl", ttl)
    assert code == 2 and "must be 0 (no TTL) or between 0.001 and 315360000 seconds" in output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("put", "", "v"), "key: must not be empty (1..1024 bytes)"),
        (("get", ""), "key: must not be empty (1..1024 bytes)"),
        (("delete", "x" * 1025), "key: is 1025 bytes; the limit is 1024"),
        (("patch", "", "--merge", "{}"), "key: must not be empty (1..1024 bytes)"),
        (("put", "k", "v", "--if-absent", "--if-etag", "3"), "if_absent: cannot be combined with if_etag"),
        (("scan", "b", "a"), "end: must be greater than start (the range is [start, end))"),
        (("sweep", "b", "a"), "end: must be greater than start (the range is [start, end))"),
    ],
)
def test_a_request_the_server_would_refuse_is_a_usage_error_with_no_server(
    args: tuple[str, ...], message: str
) -> None:
    # Checked by the server only, these were exit 4 (unavailable) with the server down.
    code, output = invoke("127.0.0.1:1", *args, "--timeout", "0.5")
    assert (code, output) == (2, f"keyspan: {message}\n")


def test_unavailable_exits_4(server_address: str) -> None:
    code, output = invoke("127.0.0.1:1", "get", "k", "--timeout", "0.5")
    assert code == 4 and output.startswith("keyspan: unavailable:")


@pytest.mark.parametrize("args", [("dump",), ("scan",), ("load", "-")])
def test_a_long_command_to_an_address_nobody_serves_fails_fast(args: tuple[str, ...]) -> None:
    """load, dump and scan wait out a server that goes away, but only once it answered."""
    started = time.monotonic()
    result = run_cli("127.0.0.1:1", *args, stdin=b'{"key": "a", "value": 1}\n')
    assert result.returncode == 4 and result.stderr.startswith(b"keyspan: unavailable:")
    assert time.monotonic() - started < 20  # the client's default retries, not RIDE_OUT_S


def test_stats_prints_a_table(server_address: str) -> None:
    invoke(server_address, "put", "a", "1")
    code, out = invoke(server_address, "stats")
    assert code == 0
    assert out.splitlines()[0].split() == [
        "PARTITION",
        "START",
        "END",
        "ENTRIES",
        "BYTES",
        "EXPIRED",
        "REVISION",
    ]
    assert out.splitlines()[-1].split()[:2] == ["total", "1"]
    # bounds quoted, as admin partitions shows them: a split at ' ' was a blank column
    assert [line.split()[1:3] for line in out.splitlines()[1:3]] == [["-inf", "'g'"], ["'g'", "'n'"]]


def test_sweep_reports_what_it_deleted(server_address: str) -> None:
    code, out = invoke(server_address, "sweep", "--rate", "100", "--output", "json")
    assert code == 0 and json.loads(out) == {"scanned": 0, "deleted": 0}


@pytest.mark.parametrize(
    "command", ["put", "get", "delete", "patch", "scan", "load", "dump", "sweep", "stats", "completion"]
)
def test_every_command_explains_itself_with_an_example(command: str) -> None:
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0 and "keyspan " + command in result.output


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_prints_a_script_that_completes_commands(shell: str) -> None:
    script = run_cli("127.0.0.1:1", "completion", shell)
    assert script.returncode == 0 and b"_KEYSPAN_COMPLETE" in script.stdout
    env = {**os.environ, "_KEYSPAN_COMPLETE": "bash_complete", "COMP_WORDS": "keyspan lo", "COMP_CWORD": "1"}
    completed = subprocess.run([KEYSPAN], capture_output=True, env=env, timeout=30)
    assert b"load" in completed.stdout


def test_a_write_to_a_full_disk_exits_5_and_says_so(threaded_server: ThreadedServer) -> None:
    db = threaded_server.server.shards.partitions[0].shard._db  # the writer's connection of [-inf, g)
    db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")
    code, output = invoke(threaded_server.address, "put", "a", "x" * 50_000)
    assert code == 5
    assert "resource_exhausted: partition p0000: the disk is full; the write was not applied" in output


# Documents Python's json would change: numbers it turns into other text (or Infinity,
# which is not JSON), a lone surrogate escape it cannot write as UTF-8, 990 levels deep.
EXACT_DOCUMENTS = {
    "n/big": "1e400",
    "n/mixed": '{"a":1.50,"b":1E2,"c":0.10000000000000000001,"d":-0,"e":12345678901234567890}',
    "n/string": '"\\ud800 lone"',
    "n/surrogate": '{"x":"\\udfff"}',
    "n/deep": "[" * 990 + "1" + "]" * 990,
}


def test_dump_load_round_trips_documents_exactly(server_address: str, tmp_path: Path) -> None:
    with Client(server_address) as kv:
        for key, text in EXACT_DOCUMENTS.items():
            kv.put(key, text.encode(), json=True)
    first = run_cli(server_address, "dump")
    assert first.returncode == 0, first.stderr
    with Client(server_address) as kv:
        for key in EXACT_DOCUMENTS:
            assert kv.delete(key)

    (tmp_path / "backup.jsonl").write_bytes(first.stdout)
    loaded = run_cli(server_address, "load", str(tmp_path / "backup.jsonl"), "--no-progress")
    assert loaded.returncode == 0, loaded.stderr
    with Client(server_address) as kv:
        stored = {key: kv.get(key).value.decode() for key in EXACT_DOCUMENTS}
    assert stored == EXACT_DOCUMENTS
    assert run_cli(server_address, "dump").stdout == first.stdout


def test_get_scan_and_patch_print_documents_as_stored(server_address: str) -> None:
    invoke(server_address, "put", "n/mixed", EXACT_DOCUMENTS["n/mixed"], "--json")
    code, out = invoke(server_address, "get", "n/mixed", "--output", "json")
    assert code == 0 and f'"value":{EXACT_DOCUMENTS["n/mixed"]},' in out
    code, out = invoke(server_address, "scan", "--output", "json")
    assert code == 0 and f'"value":{EXACT_DOCUMENTS["n/mixed"]},' in out

    code, out = invoke(
        server_address, "patch", "n/mixed", "--set", "$.f=0.30000000000000000004", "--merge", '{"g": 1e400}'
    )
    assert (code, out) == (0, EXACT_DOCUMENTS["n/mixed"][:-1] + ',"g":1e400,"f":0.30000000000000000004}\n')


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("put", "k", "NaN", "--json"), "NaN is not JSON"),
        (("patch", "k", "--merge", '{"a": Infinity}'), "Infinity is not JSON"),
        (("patch", "k", "--set", "$.a=-Infinity"), "-Infinity is not JSON"),
    ],
)
def test_nan_and_infinity_are_refused_before_sending(
    server_address: str, args: tuple[str, ...], message: str
) -> None:
    code, out = invoke(server_address, *args)
    assert code == 2 and message in out


def test_a_nan_line_is_named_by_its_line(server_address: str, tmp_path: Path) -> None:
    (tmp_path / "nan.jsonl").write_text('{"key": "a", "value": 1}\n{"key": "b", "value": NaN}\n')
    result = run_cli(server_address, "load", str(tmp_path / "nan.jsonl"))
    assert result.returncode == 2
    assert b"nan.jsonl:2: NaN is not JSON" in result.stderr and b"Traceback" not in result.stderr


def _stored_keys(address: str) -> list[str]:
    with Client(address) as kv:
        return [entry.key.decode() for entry in kv.scan()]


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (("--batch-bytes", "0"), "--batch-bytes"),
        (("--batch-bytes", "-1"), "--batch-bytes"),
        (("--batch-bytes", str(1 << 30)), "--batch-bytes"),
        (("--chunk-entries", "0"), "--chunk-entries"),
    ],
)
def test_a_load_with_a_size_out_of_range_is_a_usage_error_and_writes_nothing(
    server_address: str, tmp_path: Path, args: tuple[str, ...], flag: str
) -> None:
    (tmp_path / "in.jsonl").write_text('{"key": "a", "value": 1}\n')
    code, out = invoke(server_address, "load", str(tmp_path / "in.jsonl"), "--no-progress", *args)
    assert code == 2 and f"Invalid value for '{flag}'" in out
    assert _stored_keys(server_address) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("put", "k", "v", "--if-etag", "-5"), "'--if-etag': -5 is not in the range 1<=x<=1844674407370955"),
        (("put", "k", "v", "--if-etag", "99999999999999999999"), "'--if-etag': 99999999999999999999 is not"),
        (("put", "k", "v", "--if-etag", "0"), "'--if-etag': 0 is no etag (etags start at 1); to write only"),
        (("delete", "k", "--if-etag", "-1"), "'--if-etag': -1 is not in the range"),
        (("delete", "k", "--if-etag", "0"), "'--if-etag': 0 is no etag"),
        (("patch", "k", "--merge", "{}", "--if-etag", "-1"), "'--if-etag': -1 is not in the range"),
        (("scan", "--limit", "-1"), "'--limit': -1 is not in the range 0<=x<=18446744073709551615"),
        (("scan", "a", "b", "--limit", "99999999999999999999"), "'--limit': 99999999999999999999 is not"),
        (("sweep", "--rate", "0.5"), "'--rate': 0.5 is not 0 (no limit) or between 1 and 1e+09"),
        (("sweep", "--rate", "nan"), "'--rate': nan is not 0 (no limit)"),
        (("get", "k", "--timeout", "0"), "'--timeout': 0.0 is not in the range 0<x<=31536000"),
        (("get", "k", "--timeout", "-1"), "'--timeout': -1.0 is not in the range 0<x<=31536000"),
        (("get", "k", "--timeout", "1e10"), "'--timeout': 10000000000.0 is not in the range 0<x<=31536000"),
        (("get", "k", "--timeout", "nan"), "'--timeout': nan is not a number of seconds above 0"),
        (("get", "k", "--address", ""), "'--address' (env var: 'KEYSPAN_ADDRESS'): must be HOST:PORT"),
    ],
)
def test_an_option_out_of_its_range_is_a_usage_error(
    server_address: str, args: tuple[str, ...], message: str
) -> None:
    invoke(server_address, "put", "k", "v")
    exit_code, output = invoke(server_address, *args)
    assert exit_code == 2 and message in output and "Traceback" not in output
    with Client(server_address) as kv:
        entry = kv.get("k")
    assert entry is not None and entry.etag == 1  # nothing was written


BAD_LOADS = {
    "key_hex_null.jsonl": (b'{"key_hex": null, "value": "x"}\n', "key_hex_null.jsonl:2: key_hex: must be"),
    "key_hex_number.jsonl": (b'{"key_hex": 12, "value": "x"}\n', "key_hex_number.jsonl:2: key_hex: must be"),
    "b64_null.jsonl": (b'{"key": "b", "value_b64": null}\n', "b64_null.jsonl:2: value_b64: must be a string"),
    "not_utf8.jsonl": (b'{"key": "b", "value": "\xff"}\n', "not_utf8.jsonl:2: is not UTF-8 (byte 0xff"),
    "deep.jsonl": (
        b'{"key": "b", "value": %s1%s}\n' % (b"[" * 100_000, b"]" * 100_000),
        "deep.jsonl:2: value: nests deeper than 1000 levels",
    ),
    "open_quote.csv": (b'b,"no end\n', "open_quote.csv:2: CSV: a quoted field is not closed\n"),
    "json_text.jsonl": (
        b'{"key": "b", "value": "x", "json": "false"}\n',
        'json_text.jsonl:2: json: must be true or false, not "false"\n',
    ),
    "both_keys.jsonl": (
        b'{"key": "b", "key_hex": "63", "value": "x"}\n',
        "both_keys.jsonl:2: key: give key or key_hex, not both\n",
    ),
    "typo.jsonl": (
        b'{"key": "b", "value": "x", "ttl": 5}\n',
        'typo.jsonl:2: "ttl": not a record field; the fields are',
    ),
    "bad_b64.jsonl": (
        b'{"key": "b", "value_b64": "!!!"}\n',
        "bad_b64.jsonl:2: value_b64: must be base64 (RFC 4648)\n",
    ),
    "not_json.jsonl": (b"not json\n", "not_json.jsonl:2: not a JSON object: Expecting value at column 1\n"),
    "unclosed.jsonl": (  # it said column 1: the parser counted from past the line's newline
        b'{"key": "b", "value": "c"\n',
        "unclosed.jsonl:2: not a JSON object: Expecting ',' delimiter at column 26\n",
    ),
    "UPPER.CSV": (b"b,2,3\n", "UPPER.CSV:2: a CSV row is key,value; got 3 columns\n"),  # read as JSON lines
}


@pytest.mark.parametrize("name", BAD_LOADS)
def test_a_malformed_line_stops_the_load_before_anything_is_written(
    server_address: str, tmp_path: Path, name: str
) -> None:
    good = b"a,1\n" if name.lower().endswith(".csv") else b'{"key": "a", "value": 1}\n'
    text, message = BAD_LOADS[name]
    (tmp_path / name).write_bytes(good + text)
    result = run_cli(server_address, "load", str(tmp_path / name), "--no-progress")
    assert result.returncode == 2, result.stderr
    assert result.stderr.decode().startswith(f"keyspan: {tmp_path}/{message}")
    assert result.stderr.count(b"\n") == 1  # one line, no traceback
    assert _stored_keys(server_address) == []


def test_a_carriage_return_in_a_quoted_csv_field_is_loaded_as_it_is(
    server_address: str, tmp_path: Path
) -> None:
    # The file was read with newline translation: "a\r\nb" and "a\rb" were stored as "a\nb".
    (tmp_path / "cr.csv").write_bytes(b'crlf,"a\r\nb"\r\ncr,"a\rb"\r\nlf,"a\nb"\r\n')
    for source, stdin in ((str(tmp_path / "cr.csv"), None), ("-", (tmp_path / "cr.csv").read_bytes())):
        args = ["load", source, "--no-progress", *(["--format", "csv"] if stdin else [])]
        assert run_cli(server_address, *args, stdin=stdin).returncode == 0
        with Client(server_address) as kv:
            got = {k: kv.get(k).value for k in ("crlf", "cr", "lf")}  # type: ignore[union-attr]
        assert got == {"crlf": b"a\r\nb", "cr": b"a\rb", "lf": b"a\nb"}
        for key in ("crlf", "cr", "lf"):
            invoke(server_address, "delete", key)


def test_a_document_too_deep_past_the_first_batch_is_named_by_its_line(
    server_address: str, tmp_path: Path
) -> None:
    """It was found only by the server, after the batches sorted before it were written."""
    lines = [line({"key": f"pm/{i:05d}", "value": "y" * 100}) for i in range(20_000)]
    lines.insert(10, '{"key": "pm/99999", "value": ' + "[" * 1001 + "1" + "]" * 1001 + "}")
    (tmp_path / "deep.jsonl").write_text("\n".join(lines) + "\n")
    result = run_cli(server_address, "load", str(tmp_path / "deep.jsonl"), "--no-progress")
    assert result.returncode == 2
    assert b"deep.jsonl:11: value: nests deeper than 1000 levels" in result.stderr
    assert _stored_keys(server_address) == []


def test_a_value_over_the_servers_limit_is_named_by_its_key_with_what_went_in(tmp_path: Path) -> None:
    """The server's --max-value-bytes is not known to the client: the server refuses
    the entry, after the batches sorted before it were written."""
    server = ThreadedServer(tmp_path / "data", max_value_bytes=1000)
    try:
        lines = [line({"key": f"v/{i:05d}", "value": "y" * (2000 if i == 7000 else 50)}) for i in range(9000)]
        random.Random(3).shuffle(lines)
        (tmp_path / "big.jsonl").write_text("\n".join(lines) + "\n")
        load = ("load", str(tmp_path / "big.jsonl"), "--no-progress", "--batch-bytes", "65536")
        result = run_cli(server.address, *load)
        assert result.returncode == 2, result.stderr
        said = result.stderr.decode()
        named = "keyspan: entries[7000].value (key 'v/07000'): is 2000 bytes; the limit is 1000; "
        assert said.startswith(named)
        loaded = int(said.rsplit("; ", 1)[1].split()[0].replace(",", ""))
        assert 0 < loaded <= 7000
        assert said.endswith(f"; {loaded:,} entries before it in key order were loaded\n")
        assert said.count("\n") == 1  # one line, no traceback
        with Client(server.address) as kv:
            assert len(list(kv.scan(start="v/"))) == loaded
    finally:
        server.stop()


def test_a_csv_value_over_128_kib_loads(server_address: str, tmp_path: Path) -> None:
    value = "x" * 200_000
    (tmp_path / "big.csv").write_text(f"a,{value}\n")
    result = run_cli(server_address, "load", str(tmp_path / "big.csv"), "--no-progress")
    assert result.returncode == 0, result.stderr
    with Client(server_address) as kv:
        entry = kv.get("a")
    assert entry is not None and entry.value == value.encode()


def test_the_cli_bounds_are_the_clients() -> None:
    from keyspan.services import cli_data
    from keyspan.streams import arguments, bulk_sender

    assert cli_data.MAX_BATCH_BYTES == bulk_sender.MAX_BATCH_BYTES
    assert cli_data.MAX_UINT64 == arguments.MAX_UINT64
    assert cli_data.MAX_TIMEOUT_S == arguments.MAX_TIMEOUT_S


def test_an_address_without_a_port_is_a_usage_error() -> None:
    # gRPC would take port 443 and fail as unavailable (exit 4)
    for command in (["get", "k"], ["scan"]):
        result = CliRunner().invoke(cli, [*command, "--address", "127.0.0.1"])
        assert result.exit_code == 2 and "'127.0.0.1' is not HOST:PORT (no port)" in result.output


@pytest.mark.parametrize("command", [["scan"], ["dump"], ["sweep"], ["get", "k"]])
def test_timeout_bounds_a_stream_commands_wait_for_a_server_that_never_answers(command: list[str]) -> None:
    # A port that takes connections and never speaks HTTP/2: the stream commands waited
    # for gRPC's own 20 s handshake limit whatever --timeout said.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        result = CliRunner().invoke(cli, [*command, "--timeout", "1", "--address", address])
        assert result.exit_code == 4, result.output
        assert time.monotonic() - started < 6
    finally:
        silent.close()


def test_a_call_that_runs_out_of_its_timeout_says_so_not_unavailable() -> None:
    """It said "unavailable: Deadline Exceeded", naming neither the wait nor the option."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        result = CliRunner().invoke(cli, ["get", "k", "--timeout", "0.5", "--address", address])
    finally:
        silent.close()
    assert result.exit_code == 4
    assert result.output == "keyspan: timed out: Deadline Exceeded (--timeout sets the limit)\n"


def test_delete_with_json_output_prints_what_it_did(server_address: str) -> None:
    """It printed nothing, so a script reading JSON got no document."""
    assert invoke(server_address, "put", "gone", "v")[0] == 0
    assert invoke(server_address, "delete", "gone", "--output", "json") == (0, '{"deleted": true}\n')


def test_a_value_that_begins_with_a_dash_goes_after_double_dash(server_address: str) -> None:
    assert invoke(server_address, "put", "--json", "temperature", "--", "-5")[0] == 0  # as put --help shows
    assert invoke(server_address, "get", "temperature") == (0, "-5")


def test_stream_commands_set_no_deadline_on_their_streams() -> None:
    # A sweep at --rate, or a scan read by a pager, takes as long as it takes: with the
    # client's 300 s stream deadline such a sweep was cut off, DEADLINE_EXCEEDED, exit 4.
    from keyspan.services.cli_data import Conn

    with Conn("127.0.0.1:1", False, "text", 5.0).client() as kv:
        assert (kv.aio.timeout_s, kv.aio.stream_timeout_s) == (5.0, None)


def test_a_scan_whose_reader_goes_away_exits_141_quietly(server_address: str) -> None:
    with Client(server_address) as kv:
        kv.bulk_put((f"p/{i:06d}".encode(), b"x" * 100) for i in range(50_000))
    env = {**os.environ, "KEYSPAN_ADDRESS": server_address}
    scan = subprocess.Popen([KEYSPAN, "scan"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert scan.stdout is not None and scan.stdout.readline().startswith(b"p/000000\t")
    scan.stdout.close()  # `| head -1`: the reader is gone
    _, err = scan.communicate(timeout=60)
    assert (scan.returncode, err) == (141, b"")  # was 1, the code for "not found"


def test_a_dump_to_a_full_disk_is_one_line_and_exit_6(server_address: str) -> None:
    with Client(server_address) as kv:
        kv.put("k", b"v")
    env = {**os.environ, "KEYSPAN_ADDRESS": server_address}
    with open("/dev/full", "wb") as full:  # was a traceback and exit 1, "not found"
        dump = subprocess.run([KEYSPAN, "dump"], stdout=full, stderr=subprocess.PIPE, env=env, timeout=60)
    assert dump.returncode == 6
    assert dump.stderr == b"keyspan: cannot read or write (the output): No space left on device\n"


def test_a_dump_is_utf8_whatever_the_locale(server_address: str) -> None:
    with Client(server_address) as kv:
        kv.put("h\u00e9llo", "\u2603".encode())
    env = {**os.environ, "KEYSPAN_ADDRESS": server_address, "PYTHONIOENCODING": "latin-1"}
    dump = subprocess.run([KEYSPAN, "dump"], capture_output=True, env=env, timeout=60)
    assert dump.returncode == 0, dump.stderr  # a UnicodeEncodeError traceback
    assert dump.stdout.decode() == line({"key": "h\u00e9llo", "value": "\u2603"}) + "\n"


def test_a_load_with_repeated_keys_says_which_lines_were_replaced(
    server_address: str, tmp_path: Path
) -> None:
    # It ended at 3/4 and "loaded 3 entries", as if one were lost.
    pairs = [("a", "1"), ("b", "1"), ("a", "2"), ("c", "1")]
    (tmp_path / "dup.jsonl").write_text("".join(line({"key": k, "value": v}) + "\n" for k, v in pairs))
    loaded = run_cli(server_address, "load", str(tmp_path / "dup.jsonl"), "--no-progress")
    assert loaded.returncode == 0
    assert b"loaded 3 entries in " in loaded.stderr
    assert loaded.stderr.rstrip().endswith(b"; 1 line gave a key a later line gave again, which won")
    with Client(server_address) as kv:
        assert kv.get("a").value == b"2"  # type: ignore[union-attr]


def test_a_load_ended_by_sigterm_removes_its_sort_files_and_exits_143(
    server_address: str, tmp_path: Path
) -> None:
    (tmp_path / "big.jsonl").write_text(
        "".join(line({"key": f"k{(i * 7919) % 200_000:06d}", "value": "v"}) + "\n" for i in range(200_000))
    )
    spill = tmp_path / "tmp"
    spill.mkdir()
    env = {**os.environ, "KEYSPAN_ADDRESS": server_address, "TMPDIR": str(spill)}
    args = [KEYSPAN, "load", str(tmp_path / "big.jsonl"), "--chunk-entries", "1000", "--no-progress"]
    load = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not list(spill.glob("keyspan-load-*/*.run")) and time.monotonic() < deadline:
        time.sleep(0.01)
    load.send_signal(signal.SIGTERM)
    _, err = load.communicate(timeout=60)
    assert load.returncode == 143
    assert list(spill.iterdir()) == []  # 34 MB of runs were left behind
    assert err.decode().splitlines() == [  # it said nothing
        "keyspan: interrupted while reading and sorting the input: nothing was loaded"
    ]


def test_a_load_ctrl_c_ends_says_how_far_it_got(server_address: str, tmp_path: Path) -> None:
    """Ctrl-C mid-load printed only click's "Aborted!", though part of the load was in."""
    (tmp_path / "big.jsonl").write_text(
        "".join(line({"key": f"k{i:06d}", "value": "v" * 100}) + "\n" for i in range(200_000))
    )
    args = [KEYSPAN, "load", str(tmp_path / "big.jsonl"), "--no-progress"]
    env = {**os.environ, "KEYSPAN_ADDRESS": server_address}
    load = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with Client(server_address) as kv:
        deadline = time.monotonic() + 60
        while kv.get("k000000") is None and time.monotonic() < deadline:  # the first batch is in
            time.sleep(0.01)
    load.send_signal(signal.SIGINT)
    _, err = load.communicate(timeout=60)
    assert load.returncode == 130, err
    (said,) = err.decode().splitlines()  # not followed by click's "Aborted!"
    assert said.startswith("keyspan: interrupted: at least ") and said.endswith(
        " entries were loaded (of 200,000 lines); the same load again finishes it"
    )


@pytest.fixture
def signal_handlers_kept() -> Iterator[None]:
    """SIGINT's and SIGTERM's handlers as they were, whatever the test installed."""
    kept = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in kept.items():
        signal.signal(signum, handler)


@pytest.mark.parametrize(
    ("first", "stopped_by"), [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, SystemExit)]
)
def test_a_second_interrupt_while_a_load_stops_does_not_cut_its_cleanup_short(
    first: signal.Signals,
    stopped_by: type[BaseException],
    signal_handlers_kept: None,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A second Ctrl-C during the cleanup the first began left the sort's temp files
    behind and said "nothing was loaded" after "at least N entries were loaded"."""
    from keyspan.services.cli_data import _interrupts_once

    cleaned_up = False
    with pytest.raises(stopped_by), _interrupts_once():
        try:
            os.kill(os.getpid(), first)
            time.sleep(5)  # the handler raises before this ends
        finally:
            os.kill(os.getpid(), signal.SIGINT)  # while cleaning up
            time.sleep(0.01)  # the handler runs at once: this is where it raised
            cleaned_up = True
    assert cleaned_up
    assert (
        capfd.readouterr().err
        == "keyspan: still stopping; interrupt again to quit at once, leaving temp files\n"
    )
    # A program that ran the load goes on with its own handlers (its next Ctrl-C only said
    # "still stopping", and the one after killed it).
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_command_started_with_sigint_and_sigterm_ignored_keeps_them_ignored() -> None:
    """`keyspan get ... &` from a script starts with SIGINT ignored: the entry point set it
    back to the default, and the command died of a signal it was meant to ignore."""
    with socket.socket() as silent:  # listens, never answers: the call runs to its timeout
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"127.0.0.1:{silent.getsockname()[1]}"

        def ignore_both() -> None:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)

        args = [KEYSPAN, "get", "k", "--address", address, "--timeout", "3"]
        get = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=ignore_both)
        for sent in (0.2, 1.0):  # while it imports, then while it waits for its answer
            time.sleep(sent)
            get.send_signal(signal.SIGINT)
            get.send_signal(signal.SIGTERM)
        _, err = get.communicate(timeout=60)
    assert get.returncode == 4, err
    assert b"timed out" in err


def test_a_load_that_gives_up_on_its_server_says_how_far_it_got(capsys: pytest.CaptureFixture[str]) -> None:
    """After RIDE_OUT_S with no progress it printed only gRPC's message, though part of
    the load was in."""
    from types import SimpleNamespace

    from keyspan.services.cli_data import _bulk_load
    from keyspan.streams.errors import Unavailable

    class GoneAfterOneBatch:  # stands in for the client: the failure path only
        def bulk_put_ex(self, entries: object, *, on_progress: object, **_: object) -> None:
            on_progress(SimpleNamespace(entries=1_000))  # type: ignore[operator]
            raise Unavailable("failed to connect to all addresses")

    with pytest.raises(SystemExit) as ended:
        _bulk_load(GoneAfterOneBatch(), iter(()), 5_000, 1 << 20, False, None, SimpleNamespace(replaced=0))
    assert ended.value.code == 4
    assert capsys.readouterr().err == (
        "keyspan: unavailable: failed to connect to all addresses; at least 1,000 entries were loaded "
        "(of 5,000 lines) before the server stopped answering (waited 60 s); the same load again "
        "finishes it (rewriting those)\n"
    )


def test_a_load_counts_the_lines_it_reads_before_it_sends(server_address: str, tmp_path: Path) -> None:
    """Nothing showed while a load read and sorted its input (7 s for a million lines)."""
    (tmp_path / "in.jsonl").write_text(
        "".join(line({"key": f"k{i}", "value": i}) + "\n" for i in range(3_000))
    )
    loaded = run_cli(server_address, "load", str(tmp_path / "in.jsonl"))
    assert loaded.returncode == 0
    assert b"reading: 0 lines" in loaded.stderr  # at the start; it goes once the load begins


def on_a_terminal(address: str, *args: str) -> tuple[subprocess.CompletedProcess[bytes], bytes]:
    """Run the CLI with stderr on a pseudo-terminal of 80 columns; its result, and what
    the terminal showed."""
    import fcntl
    import pty
    import struct
    import termios

    env = {**os.environ, "KEYSPAN_ADDRESS": address, "GRPC_VERBOSITY": "ERROR"}
    terminal, stderr = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    try:
        done = subprocess.run([KEYSPAN, *args], stdout=subprocess.PIPE, stderr=stderr, env=env, timeout=60)
        os.close(stderr)
        shown = b""
        with contextlib.suppress(OSError):  # EIO once the pty's other end is closed and drained
            while chunk := os.read(terminal, 1 << 16):
                shown += chunk
    finally:
        os.close(terminal)
    return done, shown


def test_a_dump_counts_its_entries_on_a_terminal_only(server_address: str) -> None:
    """A dump of a million entries showed nothing for its 8 s."""
    with Client(server_address) as kv:
        for i in range(2_500):
            kv.put(f"d{i:05d}", b"v")
    dump, shown = on_a_terminal(server_address, "dump")
    assert dump.returncode == 0 and len(dump.stdout.splitlines()) == 2_500
    assert b"2500 entries [" in shown
    piped = run_cli(server_address, "dump")  # stderr a pipe: no count in a script's log
    assert piped.returncode == 0 and piped.stderr == b""
    failed, shown = on_a_terminal("127.0.0.1:1", "dump", "--timeout", "0.5")
    assert failed.returncode == 4 and b"entries" not in shown  # no "0 entries" before the error


def test_ctrl_c_exits_130(tmp_path: Path) -> None:
    silent = socket.socket()  # a server that never answers: the scan waits for --timeout
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        scan = subprocess.Popen(
            [KEYSPAN, "scan", "--timeout", "60", "--address", address], stderr=subprocess.PIPE
        )
        time.sleep(1.5)
        scan.send_signal(signal.SIGINT)
        _, err = scan.communicate(timeout=30)
        assert scan.returncode == 130 and err.decode().strip() == "Aborted!"
    finally:
        silent.close()


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--control", "", "nodes"], "'' is not HOST:PORT"),
        (["--control", "127.0.0.1", "nodes"], "'127.0.0.1' is not HOST:PORT"),
        (["--timeout-s", "0", "nodes"], "0.0 is not in the range"),
    ],
)
def test_admin_refuses_a_bad_control_address_or_timeout_as_a_usage_error(args: list[str], said: str) -> None:
    # A traceback and exit 1 (not found), or a deadline of 0 sent to control (exit 4).
    result = CliRunner().invoke(cli, ["admin", *args])
    assert result.exit_code == 2 and said in result.output and "Traceback" not in result.output


def test_admin_pointed_at_a_data_server_says_it_is_not_a_control(server_address: str) -> None:
    # It printed "UNIMPLEMENTED: Method not found!" and exit 4 (unavailable).
    result = CliRunner().invoke(cli, ["admin", "--control", server_address, "nodes"])
    assert result.exit_code == 2
    assert f"{server_address} is not a keyspan control" in result.output


def test_patch_applies_every_set_in_order_even_on_the_same_path(server_address: str) -> None:
    # The CLI kept a dict of --set: the first append was lost, exit 0.
    assert invoke(server_address, "put", "doc", '{"tags": ["a"]}', "--json")[0] == 0
    code, out = invoke(server_address, "patch", "doc", "--set", '$.tags[#]="b"', "--set", '$.tags[#]="c"')
    assert (code, json.loads(out)) == (0, {"tags": ["a", "b", "c"]})
    code, out = invoke(server_address, "patch", "doc", "--set", '$."a=b"=2')  # the path's = is its own
    assert (code, json.loads(out)["a=b"]) == (0, 2)


def test_sweep_help_shows_the_rates_it_takes() -> None:
    # The bracket said 0<=x<=1e9, and 0.5 was refused.
    out = CliRunner().invoke(cli, ["sweep", "--help"]).output
    assert "[x=0 or 1<=x<=1e+09]" in " ".join(out.split())
