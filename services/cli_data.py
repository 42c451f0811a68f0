"""The data commands of `keyspan`: put, get, delete, patch, scan, load, dump, sweep, stats,
and `completion`.

Every data command takes the client options --address (env KEYSPAN_ADDRESS), --hex,
--output and --timeout. Expected errors print one line naming the field and the rule,
and exit with: 0 ok, 1 not found, 2 usage or invalid argument, 3 precondition failed
(etag mismatch, not a JSON document), 4 unavailable or deadline exceeded, 5 other
server errors. No stack traces for any of them.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import click

from keyspan.services.cli import (
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_PRECONDITION,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    cli,
)
from keyspan.services.config import DEFAULT_ADDRESS
from keyspan.storage.errors import key_text

EXIT_SERVER_ERROR = 5
EXIT_TERMINATED = 143  # 128 + SIGTERM
EXAMPLES_ADDRESS = "127.0.0.1:7420"
# load, dump and scan wait out a server that is away (a restart, a node moving) for up to
# this long without progress, then go on where they were; the client's default gives up
# after 8 failed attempts, a few seconds, which a restart of a big node outlasts.
RIDE_OUT_S = 60.0
MAX_UINT64 = (1 << 64) - 1  # etags and scan limits on the wire (keyspan.streams.arguments)
MAX_TIMEOUT_S = 365 * 24 * 3600  # a call's deadline at the most (keyspan.streams.arguments)
MAX_BATCH_BYTES = 8 << 20  # keyspan.streams.bulk_sender; not imported, so Tab completion stays fast
MAX_DELETES_PER_S = 1e9  # the server's bound on a sweep's rate
_COUNT_EVERY = 1000  # entries between updates of a running count (tqdm's update costs ~1 us)


class Etag(click.IntRange):
    """An etag given as a precondition: 1 to 2**64-1. A 0 is refused, not sent: on the
    wire it means "no precondition", so a 0 read back for an absent key would write
    unconditionally."""

    name = "etag"

    def __init__(self, absent_hint: str = "") -> None:
        super().__init__(min=1, max=MAX_UINT64)
        self.absent_hint = absent_hint

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = click.INT.convert(value, param, ctx)
        if number == 0:
            self.fail(f"0 is no etag (etags start at 1){self.absent_hint}", param, ctx)
        return super().convert(number, param, ctx)


class Seconds(click.FloatRange):
    """A number of seconds above 0 and at most a year, as the client takes (click's
    FloatRange lets NaN through)."""

    name = "seconds"

    def __init__(self) -> None:
        super().__init__(min=0, min_open=True, max=MAX_TIMEOUT_S)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{number} is not a number of seconds above 0", param, ctx)
        return number


class Ttl(click.ParamType):
    """A TTL in seconds, checked as the server checks it, before anything is sent: 0
    (never), or MIN_TTL_S up to MAX_TTL_S."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from keyspan.storage.errors import InvalidArgumentError
        from keyspan.storage.limits import check_ttl

        number = click.FLOAT.convert(value, param, ctx)
        try:
            return check_ttl(number)
        except InvalidArgumentError as err:
            self.fail(err.rule, param, ctx)


class Rate(click.FloatRange):
    """A rate that is 0 (no limit) or between 1 and `high` per second."""

    name = "rate"

    def __init__(self, high: float) -> None:
        super().__init__(min=0, max=high)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not (number == 0 or number >= 1):  # NaN fails too
            self.fail(f"{number} is not 0 (no limit) or between 1 and {self.max:g}", param, ctx)
        return number

    def _describe_range(self) -> str:
        """What --help shows in brackets: "0<=x<=1e9" said 0.5 was allowed."""
        return f"x=0 or 1<=x<={self.max:g}"


class Utf8Text(click.ParamType):
    """Text that must be UTF-8 (JSON text, a JSON path): an argument of other bytes is a
    usage error, where encoding it later raised."""

    name = "text"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            value.encode()
        except UnicodeEncodeError:
            self.fail(f"{value!r} is not UTF-8 text", param, ctx)
        return value


def _address(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from keyspan.streams.arguments import check_address

    try:
        check_address(value)
    except ValueError as err:
        raise click.BadParameter(str(err).removeprefix("address: "), ctx, param) from None
    if not re.search(r":\d+$", value) and not value.startswith("unix:"):  # gRPC would take 443
        raise click.BadParameter(f"{value!r} is not HOST:PORT (no port)", ctx, param)
    return value


@dataclass(frozen=True)
class Conn:
    """The client options of one command."""

    address: str
    hex_keys: bool
    output: str
    timeout_s: float

    def client(self) -> Any:
        from keyspan.streams import Client  # imported late: Tab completion stays fast

        # A stream runs as long as its work takes (a sweep at --rate, a scan read by a pager);
        # --timeout bounds each unary call and a stream command's first answer (`_reach`).
        # A server that goes away is seen by the channel's keepalive, within ~40 s.
        return Client(self.address, timeout_s=self.timeout_s, stream_timeout_s=None)

    def key(self, text: str, name: str = "KEY") -> bytes:
        if not self.hex_keys:
            return os.fsencode(text)  # the argument's bytes as given, UTF-8 or not
        try:
            return bytes.fromhex(text)
        except ValueError:
            raise click.BadParameter(f"{text!r} is not hex (--hex is on)", param_hint=name) from None

    def show_key(self, raw: bytes) -> str:
        return raw.hex() if self.hex_keys else key_text(raw, quoted=False)


def client_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--address/--hex/--output/--timeout, folded into one `conn: Conn` argument."""
    options = [
        click.option(
            "--address",
            default=DEFAULT_ADDRESS,
            envvar="KEYSPAN_ADDRESS",
            show_default=True,
            show_envvar=True,
            callback=_address,
            help="HOST:PORT of the keyspan server or gateway.",
        ),
        click.option(
            "--hex", "hex_keys", is_flag=True, help="Keys are given and shown as hex (binary keys)."
        ),
        click.option(
            "--output",
            type=click.Choice(["text", "json"]),
            default="text",
            show_default=True,
            help="text for people, json for scripts.",
        ),
        click.option(
            "--timeout",
            "timeout_s",
            type=Seconds(),
            default=5.0,
            show_default=True,
            help="Seconds per call; for scan, dump, load and sweep, for the server's first answer "
            "(their streams then run as long as the work takes).",
        ),
    ]

    def wrapper(address: str, hex_keys: bool, output: str, timeout_s: float, **kw: Any) -> Any:
        return fn(Conn(address, hex_keys, output, timeout_s), **kw)

    wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
    for option in options:
        wrapper = option(wrapper)
    return wrapper


def _fail(message: str, code: int) -> None:
    click.echo(f"keyspan: {message}", err=True)
    sys.exit(code)


@contextlib.contextmanager
def expected_errors() -> Iterator[None]:
    """Turn the client's typed errors into one line on stderr and the documented exit code."""
    from keyspan.streams import errors as e

    try:
        yield
    except e.InvalidArgument as err:
        _fail(f"{err.field}: {err.rule}" if err.field else err.message, EXIT_USAGE)
    except e.NotFound as err:
        _fail(f"not found: {err.message}", EXIT_NOT_FOUND)
    except e.EtagMismatch as err:
        _fail(f"precondition failed: {err.message} (current etag {err.current_etag})", EXIT_PRECONDITION)
    except (e.NotJson, e.WrongPartition) as err:
        _fail(f"precondition failed: {err.message}", EXIT_PRECONDITION)
    except e.DeadlineExceeded as err:
        _fail(f"timed out: {err.message} (--timeout sets the limit)", EXIT_UNAVAILABLE)
    except e.Unavailable as err:
        _fail(f"unavailable: {err.message}", EXIT_UNAVAILABLE)
    except e.KeyspanClientError as err:
        _fail(f"{err.code.name.lower()}: {err.message}", EXIT_SERVER_ERROR)


def _value_of(text: str, as_json: bool) -> bytes:
    from keyspan.streams import jsontext

    data = sys.stdin.buffer.read() if text == "-" else os.fsencode(text)  # the bytes as given
    if as_json:
        try:
            jsontext.loads(data)
        except ValueError as err:
            raise click.BadParameter(f"is not JSON ({err})", param_hint="VALUE") from None
    return data


def _entry_json(conn: Conn, entry: Any) -> dict[str, Any]:
    from keyspan.services.cli_records import dump_object

    obj = dump_object(entry, conn.hex_keys)
    obj["etag"] = entry.etag
    obj["expires_at"] = entry.expires_at.isoformat() if entry.expires_at else None
    obj.pop("ttl_s", None)
    return obj


def _print_entry(conn: Conn, entry: Any, with_key: bool) -> None:
    from keyspan.streams import jsontext

    if conn.output == "json":
        click.echo(jsontext.dumps(_entry_json(conn, entry)))
        return
    out = sys.stdout.buffer
    if with_key:  # a line an entry: the value may not break it
        out.write(conn.show_key(entry.key).encode() + b"\t" + _one_line(entry.value) + b"\n")
    else:  # get: the value's bytes as they are, and a newline only for a terminal's prompt
        out.write(entry.value + (b"\n" if sys.stdout.isatty() and not entry.value.endswith(b"\n") else b""))
    out.flush()


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def _one_line(value: bytes) -> bytes:
    """The value for a KEY<TAB>VALUE line: as it is when it is UTF-8 text with no control
    character (a tab or newline would break the line, an escape sequence drive the
    terminal) that does not begin with 0x, else 0x and its hex, as a key."""
    with contextlib.suppress(UnicodeDecodeError):
        if not _CONTROL.search(value.decode()) and not value.startswith(b"0x"):  # 0x... reads as hex
            return value
    return b"0x" + value.hex().encode()


@cli.command()
@click.argument("key")
@click.argument("value")
@click.option(
    "--ttl",
    "ttl_s",
    type=Ttl(),
    default=0.0,
    help="Seconds until the entry expires: 0 (never), or 0.001 to 315360000 (ten years).",
)
@click.option(
    "--if-etag",
    type=Etag("; to write only if the key does not exist, use --if-absent"),
    help="Write only if the current etag is this.",
)
@click.option("--if-absent", is_flag=True, help="Write only if the key does not exist.")
@click.option(
    "--keep-ttl",
    is_flag=True,
    help="Keep the entry's expiry as it is (none if the key is absent or expired); not with --ttl.",
)
@click.option("--json", "as_json", is_flag=True, help="VALUE is JSON text, stored as a JSON document.")
@client_options
def put(
    conn: Conn,
    key: str,
    value: str,
    ttl_s: float,
    if_etag: int | None,
    if_absent: bool,
    keep_ttl: bool,
    as_json: bool,
) -> None:
    """Write VALUE (or stdin when VALUE is -) under KEY and print the new etag.

    Without --ttl or --keep-ttl the entry is written with no expiry. A KEY or VALUE that
    begins with - (a negative number) goes after --, with every option before it.

    \b
    Examples:
      keyspan put user/ann hello
      keyspan put doc/1 '{"name": "ann"}' --json --ttl 3600
      keyspan put counter 2 --json --if-etag 41     # exit 3 if the etag moved on
      keyspan put session/9 "$STATE" --keep-ttl     # still expires when it did
      keyspan put --json temperature -- -5
    """
    if keep_ttl and ttl_s:
        raise click.UsageError("--keep-ttl keeps the entry's expiry: give it or --ttl, not both")
    raw, data = conn.key(key), _value_of(value, as_json)
    with expected_errors(), conn.client() as kv:
        etag = kv.put(
            raw, data, ttl_s=ttl_s, if_etag=if_etag or 0, if_absent=if_absent, json=as_json, keep_ttl=keep_ttl
        )
    click.echo(json.dumps({"etag": etag}) if conn.output == "json" else str(etag))


@cli.command()
@click.argument("key")
@click.option(
    "--paths", multiple=True, type=Utf8Text(), help="JSON paths to project, like $.a.b (repeatable)."
)
@client_options
def get(conn: Conn, key: str, paths: tuple[str, ...]) -> None:
    """Print the value of KEY; exit 1 when it does not exist.

    \b
    Examples:
      keyspan get user/ann
      keyspan get doc/1 --paths '$.name' --paths '$.age'
      keyspan get doc/1 --output json   # key, value, etag, expires_at
    """
    with expected_errors(), conn.client() as kv:
        entry = kv.get(conn.key(key), paths=list(paths))
    if entry is None:
        _fail(f"not found: {key}", EXIT_NOT_FOUND)
    _print_entry(conn, entry, with_key=False)


@cli.command()
@click.argument("key")
@click.option("--if-etag", type=Etag(), help="Delete only if the current etag is this.")
@client_options
def delete(conn: Conn, key: str, if_etag: int | None) -> None:
    """Delete KEY; exit 1 when there was nothing to delete.

    \b
    Example:
      keyspan delete user/ann --if-etag 7
    """
    with expected_errors(), conn.client() as kv:
        deleted = kv.delete(conn.key(key), if_etag=if_etag or 0)
    if not deleted:
        _fail(f"not found: {key}", EXIT_NOT_FOUND)
    if conn.output == "json":
        click.echo(json.dumps({"deleted": True}))


def _path_value(text: str) -> tuple[str, bytes]:
    from keyspan.streams import jsontext

    path, sep, value = _split_at_equals(text)
    if not sep or not path.startswith("$"):
        raise click.BadParameter(f"{text!r} is not PATH=JSON, like '$.a.b=42'", param_hint="--set")
    try:
        jsontext.loads(value)
    except ValueError as err:
        raise click.BadParameter(f"{value!r} is not JSON ({err})", param_hint="--set") from None
    return path, value.encode()  # sent as written


def _split_at_equals(text: str) -> tuple[str, str, str]:
    """PATH=JSON cut at the first = outside a quoted key: `$."a=b"=2` is the path $."a=b"."""
    quoted = escaped = False
    for i, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "=" and not quoted:
            return text[:i], "=", text[i + 1 :]
    return text, "", ""


@cli.command()
@click.argument("key")
@click.option(
    "--merge",
    type=Utf8Text(),
    help="An RFC 7396 merge patch: an object merges member by member (null removes one); "
    "any other JSON value replaces the whole document.",
)
@click.option(
    "--set", "sets", multiple=True, type=Utf8Text(), help="PATH=JSON to set, like '$.a.b=42' (repeatable)."
)
@click.option("--remove", multiple=True, type=Utf8Text(), help="A JSON path to remove (repeatable).")
@click.option("--if-etag", type=Etag(), help="Patch only if the current etag is this.")
@client_options
def patch(
    conn: Conn,
    key: str,
    merge: str | None,
    sets: tuple[str, ...],
    remove: tuple[str, ...],
    if_etag: int | None,
) -> None:
    """Change part of the JSON document at KEY atomically; print the new document.

    The merge applies first, then every --set in order, then every --remove. As in
    SQLite's json_set, a --set whose path cannot be made (an array index past the end,
    a member under a value that is not an object) and a --remove of an absent path
    change nothing; the etag moves on all the same.

    \b
    Example:
      keyspan patch doc/1 --merge '{"age": 42}' --set '$.tags[0]="a"' --remove '$.old'
    """
    from keyspan.streams import jsontext

    if not (merge or sets or remove):
        raise click.UsageError("give at least one of --merge, --set, --remove")
    try:
        if merge:
            jsontext.loads(merge)
    except ValueError as err:
        raise click.BadParameter(f"is not JSON ({err})", param_hint="--merge") from None
    set_paths = [_path_value(s) for s in sets]  # in order; a path may come twice ($.tags[#])
    with expected_errors(), conn.client() as kv:
        entry = kv.patch(
            conn.key(key),
            merge=merge.encode() if merge else None,
            set=set_paths,
            remove=list(remove),
            if_etag=if_etag or 0,
            json=False,
        )
    document = jsontext.JsonText(entry.value.decode())  # the server's text: numbers as written
    if conn.output == "json":
        click.echo(jsontext.dumps({"etag": entry.etag, "value": document}))
    else:
        click.echo(document.text)


def _reach(kv: Any, timeout_s: float) -> None:
    """Fail a stream command at once, within --timeout, when nothing answers at the
    address (refused: 8 attempts, 2.6 s of waits on average; silent: the deadline). A
    server that answers but has a partition away (a gateway whose node restarts) passes."""
    from keyspan.streams import RetryPolicy, Unavailable
    from keyspan.streams.errors import never_sent

    try:
        for _ in kv.scan_ex(
            limit=1, policy=RetryPolicy(max_attempts=8, max_stall_s=timeout_s), timeout_s=timeout_s
        ):
            break
    except Unavailable as err:
        if never_sent(err.message):
            raise


def _ride_out(kv: Any, timeout_s: float) -> Any:
    """The retry policy of a long command, once the server has answered (`_reach`): one
    that goes away later is waited for up to RIDE_OUT_S without progress."""
    from keyspan.streams import RetryPolicy

    _reach(kv, timeout_s)
    return RetryPolicy(max_attempts=1_000_000, max_stall_s=RIDE_OUT_S)


def _range(conn: Conn, start: str | None, end: str | None) -> tuple[bytes | None, bytes | None]:
    from keyspan.streams.entry import key_range

    lower, upper = conn.key(start, "START") if start else None, conn.key(end, "END") if end else None
    with expected_errors():
        key_range(lower, upper)  # END above START: a usage error before the first contact
    return lower, upper


@cli.command()
@click.argument("start", required=False)
@click.argument("end", required=False)
@click.option(
    "--limit",
    type=click.IntRange(0, MAX_UINT64),
    default=0,
    help="Most entries to print (0: all).",
)
@click.option("--reverse", is_flag=True, help="Descending key order.")
@click.option(
    "--paths",
    multiple=True,
    help="JSON paths to project each JSON document by, like $.a.b (repeatable); bytes values print whole.",
)
@client_options
def scan(
    conn: Conn, start: str | None, end: str | None, limit: int, reverse: bool, paths: tuple[str, ...]
) -> None:
    """Print the entries of [START, END) in key order: KEY<TAB>VALUE per line.

    START empty means the first key, END empty +infinity. Broken streams resume.

    \b
    Examples:
      keyspan scan user/ user0 --limit 10
      keyspan scan --reverse --limit 1 --output json     # the last entry
      keyspan scan doc/ doc0 --paths '$.name'            # one field of each document
    """
    lower, upper = _range(conn, start, end)
    with expected_errors(), conn.client() as kv:
        entries = kv.scan_ex(
            lower,
            upper,
            limit=limit,
            reverse=reverse,
            paths=list(paths),
            policy=_ride_out(kv, conn.timeout_s),
        )
        for entry in entries:
            _print_entry(conn, entry, with_key=True)


@cli.command()
@click.argument("start", required=False)
@click.argument("end", required=False)
@click.option(
    "--progress/--no-progress",
    default=True,
    show_default=True,
    help="A running count of entries on stderr, when stderr is a terminal.",
)
@client_options
def dump(conn: Conn, start: str | None, end: str | None, progress: bool) -> None:
    """Write [START, END) as JSON lines in key order, for `keyspan load`.

    Each entry is as it was when its batch was read; on a live store the dump is not a
    point-in-time snapshot (for an exact copy, stop the server and copy its data dir).
    The lines are JSON whatever --output says.

    \b
    Example:
      keyspan dump > backup.jsonl && keyspan load backup.jsonl --address other:7420
    """
    from tqdm import tqdm

    from keyspan.services.cli_records import dump_line

    lower, upper = _range(conn, start, end)
    out = sys.stdout.buffer  # UTF-8 whatever the locale, as load reads it (latin-1 raised)
    count = None  # made at the first entry: a dump that reaches no server shows no "0 entries"
    try:
        with expected_errors(), conn.client() as kv:
            written = 0
            for entry in kv.scan_ex(lower, upper, policy=_ride_out(kv, conn.timeout_s)):
                if count is None:
                    count = tqdm(unit=" entries", disable=None if progress else True, file=sys.stderr)
                out.write((dump_line(entry, conn.hex_keys) + "\n").encode())
                written += 1
                if not written % _COUNT_EVERY:
                    count.update(_COUNT_EVERY)
    finally:
        if count is not None:
            count.update(written % _COUNT_EVERY)
            count.close()
    out.flush()


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "jsonl", "csv"]),
    default="auto",
    show_default=True,
    help="auto: csv for *.csv (any case), JSON lines otherwise.",
)
@click.option(
    "--chunk-entries",
    type=click.IntRange(min=1),
    default=200_000,
    show_default=True,
    help="Entries sorted in memory at a time (or 256 MiB of keys and values, whichever comes "
    "first); a bigger input is sorted in runs, spilled to temp files and merged 64 runs at a time.",
)
@click.option(
    "--batch-bytes",
    type=click.IntRange(1, MAX_BATCH_BYTES),
    default=1 << 20,
    show_default=True,
    help="Bytes per BulkPut message.",
)
@click.option("--progress/--no-progress", default=True, show_default=True, help="A progress bar on stderr.")
@client_options
def load(conn: Conn, file: str, fmt: str, chunk_entries: int, batch_bytes: int, progress: bool) -> None:
    """Load FILE (- for stdin) of JSON lines or CSV key,value rows, sorted or not.

    \b
    JSON lines: {"key": "k", "value": "text"} stores bytes; any other JSON value
    ({"key": "k", "value": {"a": 1}}) a JSON document; "ttl_s" sets a TTL; "key_hex"
    and "value_b64" carry binary data. Later lines win over earlier ones with the same key.
    Input is sorted in bounded memory (runs of --chunk-entries spilled to temp files),
    then streamed through BulkPut, retried until every entry is in: a server that goes
    away (a restart) is waited for up to 60 s without progress.

    \b
    Examples:
      keyspan load users.jsonl
      keyspan dump | keyspan load - --address 10.0.0.2:7420
    """
    from keyspan.services.cli_records import RecordError, read_records, sorted_records
    from keyspan.streams.bulk_sender import wire_entry

    name = "<stdin>" if file == "-" else file
    fmt = ("csv" if file.lower().endswith(".csv") else "jsonl") if fmt == "auto" else fmt
    started = time.monotonic()
    # One client for the probe and the load: one event loop, one connection.
    with _interrupts_once(), expected_errors(), conn.client() as kv, _open_input(file) as stream:
        policy = _ride_out(kv, conn.timeout_s)  # before the sort: an address that is wrong fails at once
        try:
            records = _counted(read_records(stream, fmt, conn.hex_keys, name), progress)
            with sorted_records(records, chunk_entries, on_pass=_merge_pass_shown(progress)) as (
                count,
                merged,
            ):
                entries = (wire_entry(*record) for record in merged)
                result = _bulk_load(kv, entries, count, batch_bytes, progress, policy, merged)
        except RecordError as err:
            _fail(str(err), EXIT_USAGE)
        except KeyboardInterrupt as err:  # before sending (_bulk_load says its own); temp files gone
            click.echo(
                "keyspan: interrupted while reading and sorting the input: nothing was loaded", err=True
            )
            raise SystemExit(_interrupted_exit(err)) from None
    elapsed_s = time.monotonic() - started
    rate = result.entries / elapsed_s if elapsed_s else 0.0
    summary = {"entries": result.entries, "bytes": result.bytes, "seconds": round(elapsed_s, 3)}
    if conn.output == "json":
        click.echo(json.dumps({**summary, "entries_per_s": round(rate), "replaced": merged.replaced}))
    else:
        what = "entry" if result.entries == 1 else "entries"
        replaced = ""
        if merged.replaced:  # the bar stopped short of the lines read, as if some were lost
            lines = "line" if merged.replaced == 1 else "lines"
            replaced = f"; {merged.replaced:,} {lines} gave a key a later line gave again, which won"
        click.echo(
            f"loaded {result.entries:,} {what} in {elapsed_s:.1f} s ({rate:,.0f} entries/s){replaced}",
            err=True,
        )


def _merge_pass_shown(progress: bool) -> Callable[[int, int], None] | None:
    """What a load says before each merge pass of its sort (seconds each, with many runs)."""
    if not progress:
        return None

    def shown(number: int, runs: int) -> None:
        click.echo(f"merging {runs:,} sorted runs (pass {number})", err=True)

    return shown


def _counted(records: Iterator[Any], progress: bool) -> Iterator[Any]:
    """The records, counted on stderr while a load reads and sorts them (silent before,
    for seconds a million lines)."""
    from tqdm import tqdm

    with tqdm(desc="reading", unit=" lines", leave=False, disable=not progress, file=sys.stderr) as bar:
        read = 0
        for record in records:
            yield record
            read += 1
            if not read % _COUNT_EVERY:
                bar.update(_COUNT_EVERY)
        bar.update(read % _COUNT_EVERY)


@contextlib.contextmanager
def _interrupts_once() -> Iterator[None]:
    """Ctrl-C or SIGTERM stops a load once. The first unwinds (SIGTERM as Ctrl-C does, so
    the sort's temporary files are removed, and exits 143); a second, while that cleanup
    runs, only says so (it cut the cleanup short: the temp files stayed, and a second
    message said that nothing was loaded); a third ends the process at once."""
    import signal

    signals = (signal.SIGINT, signal.SIGTERM)
    seen = 0

    def stop(signum: int, frame: Any) -> None:
        nonlocal seen
        seen += 1
        if seen == 1:
            raise _Terminated if signum == signal.SIGTERM else KeyboardInterrupt
        if seen == 2:
            os.write(2, b"keyspan: still stopping; interrupt again to quit at once, leaving temp files\n")
            return
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    # One ignored (`keyspan load ... &` from a script ignores SIGINT) stays ignored.
    previous = {s: h for s in signals if (h := signal.getsignal(s)) is not signal.SIG_IGN}
    for signum in previous:
        signal.signal(signum, stop)
    try:
        yield
    except _Terminated:
        sys.exit(EXIT_TERMINATED)
    finally:  # the cleanup this guarded is done; a program that ran the load goes on as it was
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be, so every cleanup on that path runs."""


def _interrupted_exit(err: KeyboardInterrupt) -> int:
    return EXIT_TERMINATED if isinstance(err, _Terminated) else EXIT_INTERRUPTED


@contextlib.contextmanager
def _open_input(file: str) -> Iterator[IO[str]]:
    """FILE (or stdin for -) as UTF-8 text: a BOM (Excel) is not data, bytes that are not
    UTF-8 are named by their line (cli_records), and line endings are left as they are
    (newline=""): a carriage return inside a quoted CSV field is data, and came back as a
    newline."""
    text = {"encoding": "utf-8-sig", "errors": "surrogateescape", "newline": ""}
    if file != "-":
        with open(file, **text) as stream:  # type: ignore[call-overload]
            yield stream
        return
    stream = io.TextIOWrapper(sys.stdin.buffer, **text)  # type: ignore[arg-type]
    try:
        yield stream
    finally:
        stream.detach()  # stdin stays open


def _bulk_load(
    kv: Any, entries: Iterator[Any], total: int, batch_bytes: int, progress: bool, policy: Any, merged: Any
) -> Any:
    from tqdm import tqdm

    from keyspan.streams.errors import DeadlineExceeded, InvalidArgument, Unavailable

    with tqdm(
        total=total, unit="entries", unit_scale=total >= 10_000, disable=not progress, file=sys.stderr
    ) as bar:
        done = 0

        def advance(result: Any) -> None:
            nonlocal done
            bar.total = total - merged.replaced  # lines that repeat a key are not entries
            bar.update(result.entries - done)
            done = result.entries

        def loaded() -> str:  # batches in flight may be in too; a repeated key is one entry
            return f"at least {done:,} entries were loaded (of {total:,} lines)"

        try:
            return kv.bulk_put_ex(entries, batch_bytes=batch_bytes, on_progress=advance, policy=policy)
        except InvalidArgument as err:  # an entry refused (RESOURCE_EXHAUSTED too), named by its key
            what = "entry" if done == 1 else "entries"
            _fail(f"{err.message}; {done:,} {what} before it in key order were loaded", EXIT_USAGE)
        except (Unavailable, DeadlineExceeded) as err:  # RIDE_OUT_S went by with no progress
            bar.close()
            _fail(
                f"unavailable: {err.message}; {loaded()} before the server stopped answering "
                f"(waited {RIDE_OUT_S:.0f} s); the same load again finishes it (rewriting those)",
                EXIT_UNAVAILABLE,
            )
        except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM (_Terminated)
            bar.close()
            click.echo(f"keyspan: interrupted: {loaded()}; the same load again finishes it", err=True)
            raise SystemExit(_interrupted_exit(err)) from None  # one line: no click "Aborted!" after it


@cli.command()
@click.argument("start", required=False)
@click.argument("end", required=False)
@click.option(
    "--rate",
    type=Rate(MAX_DELETES_PER_S),
    default=0.0,
    help="Most deletes per second, 1 to 1e9 (0: no limit).",
)
@client_options
def sweep(conn: Conn, start: str | None, end: str | None, rate: float) -> None:
    """Delete the expired entries of [START, END) now, showing progress.

    \b
    Example:
      keyspan sweep session/ session0 --rate 5000
    """
    lower, upper = _range(conn, start, end)
    with expected_errors(), conn.client() as kv:
        _reach(kv, conn.timeout_s)
        for report in kv.sweep(lower, upper, max_deletes_per_s=rate):
            if not report.done:
                click.echo(f"scanned {report.scanned}, deleted {report.deleted}", err=True)
    if conn.output == "json":
        click.echo(json.dumps({"scanned": report.scanned, "deleted": report.deleted}))
    else:
        click.echo(f"swept: scanned {report.scanned} expired entries, deleted {report.deleted}")


@cli.command()
@client_options
def stats(conn: Conn) -> None:
    """Show every partition with its range and approximate counts.

    \b
    Example:
      keyspan stats --output json | jq .approximate_entries
    """
    with expected_errors(), conn.client() as kv:
        report = kv.stats()
    if conn.output == "json":
        parts = [
            {
                "partition_id": p.partition_id,
                "start": conn.show_key(p.start),
                "end": None if p.end is None else conn.show_key(p.end),
                "approximate_entries": p.approximate_entries,
                "bytes": p.bytes,
                "expired_entries": p.expired_entries,
                "revision": p.revision,
            }
            for p in report.partitions
        ]
        total = {"approximate_entries": report.approximate_entries, "bytes": report.bytes}
        click.echo(json.dumps({"partitions": parts, **total}))
        return
    rows = [("PARTITION", "START", "END", "ENTRIES", "BYTES", "EXPIRED", "REVISION")]

    def bound(raw: bytes) -> str:  # quoted, as `admin partitions` shows them: a ' ' split was blank
        return raw.hex() if conn.hex_keys else key_text(raw)

    for p in report.partitions:
        end = "+inf" if p.end is None else bound(p.end)
        rows.append(
            (
                p.partition_id,
                bound(p.start) if p.start else "-inf",
                end,
                str(p.approximate_entries),
                str(p.bytes),
                str(p.expired_entries),
                str(p.revision),
            )
        )
    rows.append(("total", "", "", str(report.approximate_entries), str(report.bytes), "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo(
            "  ".join(
                cell.ljust(w) if i < 3 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh"]))
def completion(shell: str) -> None:
    """Print the shell completion script for SHELL.

    \b
    Enable it for this shell, or add the line to ~/.bashrc (~/.zshrc):
      eval "$(keyspan completion bash)"
      eval "$(keyspan completion zsh)"
    """
    from click.shell_completion import get_completion_class

    completer = get_completion_class(shell)
    assert completer is not None
    click.echo(completer(cli, {}, "keyspan", "_KEYSPAN_COMPLETE").source())
