"""Client arguments of the wrong shape are a TypeError or ValueError naming the argument and
the rule, raised before anything is sent; documents as deep as the store takes go both ways."""

from __future__ import annotations

import contextlib
import gc
import itertools
import re
import socket
import sys
import threading
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest

from keyspan.streams import AsyncClient, Client, InvalidArgument, ResourceExhausted, Unavailable
from keyspan.streams.errors import ClientClosed
from keyspan.streams.jsontext import MAX_DEPTH

# -- bulk_put entries ---------------------------------------------------------------------

BULK_SHAPES = "must be a \\(key, value\\) or \\(key, value, ttl_s\\) tuple, an Entry or a kv_pb2.Entry"


@pytest.mark.parametrize(
    ("entry", "error", "message"),
    [
        (None, TypeError, f"entries\\[1\\]: {BULK_SHAPES}, not None"),
        ("zq", TypeError, f"entries\\[1\\]: {BULK_SHAPES}, not str"),
        (b"zq", TypeError, f"entries\\[1\\]: {BULK_SHAPES}, not bytes"),
        (("b",), TypeError, f"entries\\[1\\]: {BULK_SHAPES}, not a tuple of 1"),
        (("b", b"v", 5, "x"), TypeError, f"entries\\[1\\]: {BULK_SHAPES}, not a tuple of 4"),
        (("b", b"v", "5"), TypeError, "entries\\[1\\].ttl_s: must be a number of seconds .*, not '5'"),
        (("b", b"v", True), TypeError, "entries\\[1\\].ttl_s: must be a number of seconds .*, not True"),
        ((None, b"v"), TypeError, "entries\\[1\\].key: must be a Key, bytes or str, not NoneType"),
        (("\ud800", b"v"), ValueError, "entries\\[1\\].key: not valid UTF-8 text"),
        (("b", "\udc80"), ValueError, "entries\\[1\\].value: not valid UTF-8 text"),
    ],
)
@pytest.mark.parametrize("method", ["bulk_put", "bulk_put_ex"])
def test_a_bulk_entry_of_the_wrong_shape_is_named_by_its_place(
    client: Client, method: str, entry: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        getattr(client, method)([("a", b"1"), entry, ("c", b"3")])
    assert client.get("c") is None  # the rest of the input is not taken for the end


async def test_a_none_from_an_async_source_is_not_the_end_of_it(server_address: str) -> None:
    async def entries() -> AsyncIterator[Any]:
        for entry in [("a", b"1"), None, ("c", b"3")]:
            yield entry

    async with AsyncClient(server_address) as kv:
        with pytest.raises(TypeError, match=f"entries\\[1\\]: {BULK_SHAPES}, not None"):
            await kv.bulk_put(entries())
        assert await kv.get("c") is None


def test_bulk_entries_may_be_pairs_triples_and_lists(client: Client) -> None:
    result = client.bulk_put([("a", b"1"), ["b", b"2"], ("c", {"n": 3}, 60), ["d", "4", 60.0]])
    assert result.entries == 4
    entry = client.get("c", json=True)
    assert entry is not None and entry.value == {"n": 3} and entry.expires_at is not None


# -- timeouts -----------------------------------------------------------------------------

TIMEOUT_RULE = "must be a number of seconds above 0 and at most 31536000 \\(a year\\)"


@pytest.mark.parametrize("timeout_s", [1e10, 31_536_001, float("inf")])
@pytest.mark.parametrize(
    "call",
    [
        lambda kv, t: kv.get("k", timeout_s=t),
        lambda kv, t: kv.put("k", b"w", timeout_s=t),
        lambda kv, t: list(kv.scan(timeout_s=t)),
        lambda kv, t: kv.bulk_put([("k", b"w")], timeout_s=t),
    ],
    ids=["get", "put", "scan", "bulk_put"],
)
def test_a_timeout_beyond_a_year_is_a_value_error(
    client: Client, call: Callable[[Client, float], object], timeout_s: float
) -> None:
    client.put("k", b"v")
    with pytest.raises(ValueError, match=f"timeout_s: {TIMEOUT_RULE}, not {timeout_s}"):
        call(client, timeout_s)
    entry = client.get("k")
    assert entry is not None and entry.value == b"v"


@pytest.mark.parametrize("name", ["timeout_s", "stream_timeout_s"])
def test_a_client_timeout_beyond_a_year_is_a_value_error(name: str) -> None:
    with pytest.raises(ValueError, match=f"{name}: {TIMEOUT_RULE}, not 10000000000.0"):
        Client("127.0.0.1:1", **{name: 1e10})


def test_a_timeout_of_a_year_is_taken(client: Client) -> None:
    client.put("k", b"v", timeout_s=31_536_000)
    assert [e.key for e in client.scan(timeout_s=31_536_000)] == [b"k"]


# -- JSON documents as deep as the store takes --------------------------------------------


@pytest.fixture
def default_recursion_limit() -> Iterator[None]:
    """Python's default recursion limit, whatever an earlier test (the CLI's) set."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    yield
    sys.setrecursionlimit(limit)


def nested(depth: int) -> Any:
    """A list `depth` levels deep (comparing or printing one recurses: use depth_of)."""
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


def depth_of(value: Any) -> int:
    depth = 0
    while isinstance(value, list):
        depth, value = depth + 1, value[0] if value else None
    return depth


@pytest.mark.usefixtures("default_recursion_limit")
def test_a_document_as_deep_as_the_store_takes_is_written_and_read(client: Client) -> None:
    client.put("deep", nested(MAX_DEPTH), json=True)
    entry = client.get("deep", json=True)
    assert entry is not None and depth_of(entry.value) == MAX_DEPTH
    assert [depth_of(e.value) for e in client.scan("deep", "deep0", json=True)] == [MAX_DEPTH]
    assert [depth_of(e.value) for e in client.scan_ex("deep", "deep0", json=True)] == [MAX_DEPTH]
    assert depth_of(client.patch("deep", remove=["$[1]"]).value) == MAX_DEPTH
    assert depth_of(client.update("deep", lambda v: v, json=True).value) == MAX_DEPTH


def test_an_integer_past_pythons_digit_limit_is_read_back_exactly(client: Client) -> None:
    # The store keeps numbers as written; int() of one over 4300 digits raised ValueError.
    big = "9" * 5000
    client.put("big", f'{{"n": {big}, "m": 7}}'.encode(), json=True)
    entry = client.get("big", json=True)
    assert entry is not None and entry.value == {"n": Decimal(big), "m": 7}
    assert [e.value["n"] for e in client.scan("big", "big0", json=True)] == [Decimal(big)]


@pytest.mark.usefixtures("default_recursion_limit")
async def test_the_async_client_reads_a_document_as_deep_as_the_store_takes(server_address: str) -> None:
    async with AsyncClient(server_address) as kv:
        await kv.put("deep", b"[" * MAX_DEPTH + b"]" * MAX_DEPTH, json=True)
        entry = await kv.get("deep", json=True)
        assert entry is not None and depth_of(entry.value) == MAX_DEPTH
        assert [depth_of(e.value) async for e in kv.scan(json=True)] == [MAX_DEPTH]


@pytest.mark.usefixtures("default_recursion_limit")
def test_a_document_deeper_than_the_store_takes_is_refused_with_its_limit(client: Client) -> None:
    with pytest.raises(InvalidArgument, match="nested at most 1000 levels deep"):
        client.put("deep", nested(MAX_DEPTH + 1), json=True)
    with pytest.raises(ValueError, match="value: nests deeper than 1000 levels, the store's limit"):
        client.put("deep", nested(100_000), json=True)
    with pytest.raises(ValueError, match=r"entries\[0\]\.value: nests deeper than 1000 levels"):
        client.bulk_put([("deep", nested(100_000))])
    assert client.get("deep") is None


# -- paths, set, remove -------------------------------------------------------------------


def test_a_single_path_may_be_given_as_a_str(client: Client) -> None:
    client.put("doc", {"a": 1, "b": 2})
    entry = client.get("doc", paths="$.a", json=True)
    assert entry is not None and entry.value == {"$.a": 1}
    assert [e.value for e in client.scan("doc", "doc0", paths="$.b", json=True)] == [{"$.b": 2}]
    assert [e.value for e in client.scan_ex("doc", "doc0", paths="$.b", json=True)] == [{"$.b": 2}]
    assert client.patch("doc", remove="$.a").value == {"b": 2}


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda kv: kv.get("doc", paths=[1]),
            "paths\\[0\\]: must be a str \\(a JSON path like \\$.a.b\\), not int",
        ),
        (lambda kv: kv.get("doc", paths=b"$.a"), "paths: must be a str or a list of str, not bytes"),
        (lambda kv: list(kv.scan(paths=["$.a", None])), "paths\\[1\\]: must be a str .*, not NoneType"),
        (lambda kv: list(kv.scan_ex(paths=[1])), "paths\\[0\\]: must be a str"),
        (lambda kv: kv.patch("doc", remove=[1]), "remove\\[0\\]: must be a str"),
        (lambda kv: kv.patch("doc", remove=5), "remove: must be a str or a list of str, not int"),
        (
            lambda kv: kv.patch("doc", set=["$.a", 1]),  # a list of pairs, each (path, value)
            "set\\[0\\]: must be a \\(path, value\\) pair, not '\\$.a'",
        ),
        (lambda kv: kv.patch("doc", set={1: 2}), "set: a path must be a str .*, not int"),
    ],
)
def test_paths_of_the_wrong_type_are_a_type_error_naming_them(
    client: Client, call: Callable[[Client], object], message: str
) -> None:
    client.put("doc", {"a": 1})
    with pytest.raises(TypeError, match=message):
        call(client)
    assert client.get("doc", json=True).value == {"a": 1}  # type: ignore[union-attr]


# -- numbers and flags --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda kv: kv.put("k", b"v", ttl_s="5"),
            "ttl_s: must be a number of seconds \\(0: no TTL\\), not '5'",
        ),
        (
            lambda kv: kv.put("k", b"v", ttl_s=True),
            "ttl_s: must be a number of seconds \\(0: no TTL\\), not True",
        ),
        (lambda kv: kv.update("k", lambda v: v, ttl_s="5"), "ttl_s: must be a number of seconds"),
        (lambda kv: kv.put("k", b"v", if_absent="yes"), "if_absent: must be True or False, not 'yes'"),
        (
            lambda kv: list(kv.sweep(max_deletes_per_s=True)),
            "max_deletes_per_s: must be a number .*, not True",
        ),
        (lambda kv: list(kv.sweep(max_deletes_per_s="5")), "max_deletes_per_s: must be a number .*, not '5'"),
        # these were taken (json) or a ValueError, against the README's rule
        (lambda kv: kv.put("k", b"v", json="yes"), "json: must be True or False, not 'yes'"),
        (lambda kv: kv.get("k", json="no"), "json: must be True or False, not 'no'"),
        (lambda kv: list(kv.scan(json="x")), "json: must be True or False, not 'x'"),
        (lambda kv: kv.update("k", lambda v: b"v", json="yes"), "json: must be True or False"),
        (lambda kv: kv.patch("k", {"a": 1}, json=1), "json: must be True or False, not 1"),
        (lambda kv: kv.put("k", b"v", if_etag=True), "if_etag: must be 0 .*, not True"),
        (lambda kv: kv.put("k", b"v", if_etag="3"), "if_etag: must be 0 .*, not '3'"),
        (lambda kv: list(kv.scan(limit="5")), "limit: must be 0 .*, not '5'"),
        (lambda kv: kv.get("k", timeout_s="5"), "timeout_s: must be a number of seconds .*, not '5'"),
        (lambda kv: kv.update("k", lambda v: b"v", timeout_s=True), "timeout_s: must be a number of seconds"),
        # these were a ValueError, an AttributeError from inside, or raised after a call went out
        (lambda kv: kv.bulk_put([("a", b"v")], batch_bytes="1"), "batch_bytes: must be a whole number"),
        (lambda kv: kv.bulk_put([("a", b"v")], batch_bytes=1.5), "batch_bytes: must be a whole number"),
        (lambda kv: list(kv.scan_ex(policy="x")), "policy: must be a RetryPolicy, not str"),
        (lambda kv: kv.bulk_put_ex([("a", b"v")], policy="x"), "policy: must be a RetryPolicy, not str"),
        (lambda kv: kv.update("k", lambda v: b"v", policy="x"), "policy: must be a RetryPolicy, not str"),
        (lambda kv: kv.update("k", None), "fn: must be a function of the current value, not NoneType"),
        (
            lambda kv: kv.bulk_put(None),
            "items: must be an iterable or async iterable of entries, not NoneType",
        ),
        (lambda kv: kv.bulk_put([("a", b"v")], on_progress=3), "on_progress: must be a function"),
    ],
)
def test_a_number_or_flag_of_the_wrong_type_is_a_type_error_naming_it(
    client: Client, call: Callable[[Client], object], message: str
) -> None:
    with pytest.raises(TypeError, match=message):
        call(client)
    assert client.get("k") is None


def test_a_client_timeout_that_is_not_a_number_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"timeout_s: must be a number of seconds .*, not '5'"):
        Client("127.0.0.1:1", timeout_s="5")  # type: ignore[arg-type]


def test_update_takes_a_deadline_for_each_call(client: Client) -> None:
    assert client.update("u", lambda v: b"1", timeout_s=2).value == b"1"


@pytest.mark.parametrize("address", [None, 7420])
def test_an_address_that_is_not_text_is_a_type_error(address: Any) -> None:
    with pytest.raises(TypeError, match=f"address: must be a str HOST:PORT, not {type(address).__name__}"):
        Client(address)
    with pytest.raises(TypeError, match="address: must be a str HOST:PORT"):
        AsyncClient(address)


@pytest.mark.parametrize("address", ["127.0.0.1:94847", "[::1]:65536", "dns:///localhost:0"])
def test_an_address_whose_port_is_out_of_range_is_a_value_error(address: str) -> None:
    # gRPC took the port modulo 65536: 127.0.0.1:94847 reached a server on port 29311.
    with pytest.raises(ValueError, match=r"address: the port of .* must be between 1 and 65535"):
        Client(address)
    with pytest.raises(ValueError, match=r"address: the port of .* must be between 1 and 65535"):
        AsyncClient(address)


@pytest.mark.parametrize(
    "call",
    [
        lambda kv: kv.put("\ud800", b"v"),
        lambda kv: kv.get("a\udfffb"),
        lambda kv: kv.delete("\ud800"),
        lambda kv: kv.patch("\ud800", merge={}),
    ],
)
def test_a_key_that_is_not_utf8_text_is_a_value_error(
    client: Client, call: Callable[[Client], object]
) -> None:
    with pytest.raises(ValueError, match=r"key: not valid UTF-8 text \(a lone surrogate at index \d\)"):
        call(client)


def test_a_scan_bound_that_is_not_utf8_text_is_named(client: Client) -> None:
    with pytest.raises(ValueError, match="end: not valid UTF-8 text"):
        list(client.scan("a", "\ud800"))
    with pytest.raises(TypeError, match="start: must be a Key, bytes or str, not int"):
        list(client.scan_ex(5))


# -- update -------------------------------------------------------------------------------


def test_update_under_the_blocking_client_refuses_an_async_function(client: Client) -> None:
    async def bump(value: Any) -> Any:
        return (value or 0) + 1

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(TypeError, match=r"fn: must be a plain function .*; bump is a coroutine function"):
            client.update("n", bump, json=True)
        with pytest.raises(TypeError, match="fn: returned an awaitable"):
            client.update("n", lambda v: bump(v), json=True)
        gc.collect()
    assert [str(w.message) for w in caught if "never awaited" in str(w.message)] == []
    assert client.get("n") is None


async def test_update_under_the_async_client_awaits_an_async_function(server_address: str) -> None:
    async def bump(value: Any) -> Any:
        return (value or 0) + 1

    async with AsyncClient(server_address) as kv:
        assert (await kv.update("n", bump, json=True)).value == 1
        assert (await kv.update("n", lambda v: bump(v), json=True)).value == 2
        entry = await kv.get("n", json=True)
        assert entry is not None and entry.value == 2


def test_update_says_what_it_stored(client: Client) -> None:
    entry = client.update("u", lambda v: {"a": 1})  # json=False: a dict is stored as JSON, as by put
    stored = client.get("u")
    assert stored is not None and entry.is_json is stored.is_json is True
    entry = client.update("u", lambda v: b"raw")
    stored = client.get("u")
    assert stored is not None and entry.is_json is stored.is_json is False
    entry = client.update("u", lambda v: "text")  # stored as bytes: handed back as a str before
    assert entry.value == client.get("u").value == b"text"  # type: ignore[union-attr]


def test_a_scan_cut_short_by_close_hands_out_nothing_more(client: Client) -> None:
    client.bulk_put((f"c{i:04d}", b"v") for i in range(1000))
    entries = client.scan()
    next(entries)
    client.close()
    with pytest.raises(ClientClosed):  # 255 more came from the batch in hand, then ClientClosed
        next(entries)


@pytest.mark.parametrize("method", ["scan", "scan_ex"])
async def test_an_async_scan_cut_short_by_close_hands_out_nothing_more(
    server_address: str, method: str
) -> None:
    """The async client handed out the rest of the batch in hand (255 entries) after close()
    returned, and only then raised ClientClosed; the blocking client stopped at once."""
    async with AsyncClient(server_address) as seed:
        await seed.bulk_put((f"c{i:04d}", b"v") for i in range(1000))
    aio = AsyncClient(server_address)
    entries = getattr(aio, method)("c", "d").__aiter__()
    await anext(entries)
    await aio.close()
    with pytest.raises(ClientClosed):
        await anext(entries)
    await entries.aclose()


# -- a name that does not resolve ---------------------------------------------------------


def test_a_name_that_does_not_resolve_was_never_sent() -> None:
    with Client("no-such-host.invalid:1") as kv, pytest.raises(Unavailable) as caught:
        kv.put("k", b"v")
    assert caught.value.may_have_applied is False, caught.value.message


# -- rules the server enforces, checked before sending -------------------------------------

SERVER_RULES = [
    (lambda kv: kv.put("", b"v"), "key", "must not be empty (1..1024 bytes)"),
    (lambda kv: kv.get(b""), "key", "must not be empty (1..1024 bytes)"),
    (lambda kv: kv.delete("k" * 1025), "key", "is 1025 bytes; the limit is 1024"),
    (lambda kv: kv.patch("", merge={}), "key", "must not be empty (1..1024 bytes)"),
    (lambda kv: kv.update("", lambda v: 1), "key", "must not be empty (1..1024 bytes)"),
    (lambda kv: kv.put("k", b"v", if_etag=3, if_absent=True), "if_absent", "cannot be combined with if_etag"),
    (lambda kv: list(kv.scan("b", "a")), "end", "must be greater than start (the range is [start, end))"),
    (lambda kv: list(kv.scan_ex("b", "b")), "end", "must be greater than start (the range is [start, end))"),
    (lambda kv: list(kv.sweep("b", "a")), "end", "must be greater than start (the range is [start, end))"),
]


@pytest.mark.parametrize(("call", "field", "rule"), SERVER_RULES)
def test_a_request_the_server_would_refuse_is_refused_unsent_with_its_rule(
    call: Callable[[Client], object], field: str, rule: str
) -> None:
    # No server listens there: the server's own InvalidArgument comes back before any
    # connection is tried. Sent, it was Unavailable (the CLI's exit 4, not a usage error).
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{unused.getsockname()[1]}"
    with Client(address, timeout_s=5) as kv, pytest.raises(InvalidArgument) as caught:
        call(kv)
    assert (caught.value.field, caught.value.rule) == (field, rule)
    assert caught.value.message == f"{field}: {rule}"


def test_what_those_rules_allow_still_goes_through(client: Client) -> None:
    assert client.put("k" * 1024, b"v") > 0 and client.delete("k" * 1024) is True
    etag = client.put("k", b"v", if_absent=True)
    assert client.put("k", b"w", if_etag=etag, if_absent=False) > etag
    assert [e.key for e in client.scan("k", "k\x00")] == [b"k"]


def test_a_client_tries_a_server_that_went_away_at_least_every_1_2_s() -> None:
    # gRPC's default backoff grows 1.6x to 120 s: a thick client still failed to connect
    # 6.5 s after a node restarted from a 10 s outage, and scan_ex gave up, where the
    # gateway (100 ms to 1 s) was through in 1 s. Here every attempt is accepted and closed.
    attempts: list[float] = []

    def refuse(conn: socket.socket) -> None:
        attempts.append(time.monotonic())
        conn.close()

    listener = _listening(refuse)
    try:
        with Client(f"127.0.0.1:{listener.getsockname()[1]}", timeout_s=0.5) as kv:
            until = time.monotonic() + 5
            while time.monotonic() < until:
                with contextlib.suppress(Unavailable):
                    kv.get("k")
                time.sleep(0.05)
    finally:
        listener.close()
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert len(attempts) >= 6 and max(gaps) < 1.5, gaps  # 1 s, and gRPC's 20% jitter


@pytest.mark.parametrize(
    ("control", "error", "said"),
    [
        (5, TypeError, "control: must be a str HOST:PORT, not int"),
        ("", ValueError, "control: must be HOST:PORT, not empty"),
        ("127.0.0.1:99999", ValueError, "control: the port of '127.0.0.1:99999' must be between 1 and 65535"),
    ],
)
def test_a_control_address_is_checked_before_anything_is_sent(control: Any, error: type, said: str) -> None:
    # These waited out the 10 s map timeout (with gRPC's C log on stderr), or raised an
    # AttributeError from inside gRPC.
    started = time.monotonic()
    with pytest.raises(error, match=re.escape(said)):
        Client(control=control)
    assert time.monotonic() - started < 2


def test_a_patch_given_json_bytes_that_are_not_utf8_is_a_value_error_naming_them(client: Client) -> None:
    client.put("k", {"a": 1})
    with pytest.raises(
        ValueError, match=r"^merge: JSON text must be UTF-8 \(invalid start byte at byte 0\)$"
    ):
        client.patch("k", merge=b"\xff")  # a bare UnicodeDecodeError


def _listening(on_connection: Callable[[socket.socket], None]) -> socket.socket:
    """A socket listening on 127.0.0.1 whose connections go to `on_connection`, in turn,
    on a thread of its own until the socket is closed."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            on_connection(conn)

    threading.Thread(target=accept, daemon=True).start()
    return listener


def _slow_handshake_proxy(target: tuple[str, int], delay_s: float) -> tuple[socket.socket, str]:
    """A TCP proxy to `target` that lets each connection through only after `delay_s`."""

    def pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def forward(conn: socket.socket) -> None:
        time.sleep(delay_s)
        upstream = socket.create_connection(target)
        threading.Thread(target=pipe, args=(conn, upstream), daemon=True).start()
        threading.Thread(target=pipe, args=(upstream, conn), daemon=True).start()

    listener = _listening(forward)
    return listener, f"127.0.0.1:{listener.getsockname()[1]}"


def test_a_server_slow_to_shake_hands_is_still_reached(server_address: str) -> None:
    # gRPC takes grpc.min_reconnect_backoff_ms as its connect timeout too: set to 100 ms,
    # a connection whose handshake took 300 ms never completed.
    host, port = server_address.rsplit(":", 1)
    listener, address = _slow_handshake_proxy((host, int(port)), 0.3)
    try:
        with Client(address, timeout_s=5) as kv:
            assert kv.put("slow", b"v") >= 1
    finally:
        listener.close()


def test_patch_takes_set_as_pairs_so_a_path_may_come_twice(client: Client) -> None:
    client.put("doc", {"tags": ["a"]})
    entry = client.patch("doc", set=[("$.tags[#]", "b"), ("$.tags[#]", "c")])
    assert entry.value == {"tags": ["a", "b", "c"]}


def test_update_keeps_the_entrys_expiry_unless_told(client: Client) -> None:
    # It wrote with no TTL by default: an update made an expiring entry permanent.
    client.put("t", {"n": 1}, ttl_s=1000)
    before = client.get("t")
    assert before is not None and before.expires_at is not None
    for _ in range(20):  # each re-sent the time left, which moved it later by a round trip
        entry = client.update("t", lambda v: {"n": v["n"] + 1}, json=True)
    after = client.get("t")
    assert after is not None and after.expires_at == before.expires_at == entry.expires_at
    assert entry.value == {"n": 21}
    client.update("t", lambda v: v, json=True, ttl_s=0)  # 0: no expiry, as put's
    assert client.get("t").expires_at is None  # type: ignore[union-attr]


def test_a_number_a_float_cannot_hold_is_decoded_exactly_and_written_back_as_it_was(client: Client) -> None:
    # 1e400 decoded as inf (not JSON: update failed) and 0.10000000000000000001 as 0.1
    # (update wrote back a number its fn never touched).
    text = b'{"big":1e400,"precise":0.10000000000000000001,"tiny":1e-400,"price":1.50,"n":0}'
    client.put("nums", text, json=True)
    doc = client.get("nums", json=True).value  # type: ignore[union-attr]
    assert doc["big"] == Decimal("1e400") and doc["precise"] == Decimal("0.10000000000000000001")
    assert doc["tiny"] == Decimal("1e-400") and doc["price"] == 1.5 and isinstance(doc["price"], float)
    client.update("nums", lambda d: {**d, "n": d["n"] + 1}, json=True)
    after = client.get("nums", json=True).value  # type: ignore[union-attr]
    assert {k: after[k] for k in ("big", "precise", "tiny")} == {
        k: doc[k] for k in ("big", "precise", "tiny")
    }
    assert after["n"] == 1
    client.patch("nums", set={"$.more": Decimal("1e999")})
    assert client.get("nums", json=True).value["more"] == Decimal("1e999")  # type: ignore[union-attr]


@pytest.mark.parametrize("value", [{(1,): 2}, {"a": {(1, 2): "x"}}])
def test_a_document_with_a_member_name_json_cannot_write_is_a_type_error_naming_it(value: Any) -> None:
    """A tuple key was written as an array (`{[1]:2}`) and sent: the server's "not JSON at
    character 2", or Unavailable with no server, where it is refused before sending."""
    with Client("127.0.0.1:1") as kv:  # nothing listens: refused before anything is sent
        with pytest.raises(TypeError, match=r"value: keys must be str, int, float, bool or None, not tuple"):
            kv.put("k", value)
        with pytest.raises(TypeError, match=r"merge: keys must be str, int, float, bool or None, not tuple"):
            kv.patch("k", merge=value)


def test_a_put_or_patch_past_what_a_grpc_message_carries_is_refused_unsent_naming_its_field() -> None:
    """gRPC refused them with its own text ("CLIENT: Sent message larger than max"), with no
    field or rule: bulk_put_ex named the same fault."""
    big = "x" * (17 << 20)
    calls: list[tuple[Callable[[Client], object], str]] = [
        (lambda kv: kv.put("k", big), "value"),
        (lambda kv: kv.patch("k", merge={"a": big}), "merge"),
        (lambda kv: kv.patch("k", set={"$.a": big}), "set['$.a']"),
    ]
    with Client("127.0.0.1:1") as kv:  # nothing listens: refused before anything is sent
        for call, field in calls:
            with pytest.raises(ResourceExhausted, match=r"a message carries at most 1676\d{4}$") as refused:
                call(kv)
            assert refused.value.field == field
