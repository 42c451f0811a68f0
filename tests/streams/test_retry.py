"""scan_ex, bulk_put_ex and update under injected RPC failures, against a real server.

Failures come from tests/streams/fakes.py in front of the real stub; the data is real.
Each test states what the helper promises: nothing lost, nothing repeated, order kept,
bounded retries, and non-retryable errors at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

from keyspan.storage.keys import key_successor
from keyspan.streams import (
    AsyncClient,
    DeadlineExceeded,
    InvalidArgument,
    ResourceExhausted,
    RetryPolicy,
    Unavailable,
)
from keyspan.streams.client_metrics import ClientMetrics
from keyspan.streams.errors import KeyspanClientError
from tests.streams.fakes import FlakyRouter, Lost, Plan, StreamFault

pytestmark = pytest.mark.asyncio
FAST = RetryPolicy(max_attempts=5, initial_backoff_s=0.001, max_backoff_s=0.01)
UNAVAILABLE, DEADLINE = grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED


def keys(n: int, prefix: str = "k") -> list[bytes]:
    return [f"{prefix}{i:06d}".encode() for i in range(n)]


@pytest.fixture
def plan() -> Plan:
    return Plan()


@pytest_asyncio.fixture
async def kv(server_address: str, plan: Plan) -> AsyncIterator[AsyncClient]:
    """An AsyncClient whose stub breaks as `plan` says; the store starts empty."""
    async with AsyncClient(router=FlakyRouter(server_address, plan)) as aio:
        yield aio


async def load(kv: AsyncClient, n: int) -> list[bytes]:
    wanted = keys(n)
    await kv.bulk_put((k, b"v" + k) for k in wanted)
    return wanted


def first_requests(plan: Plan, method: str) -> list[object]:
    """The opening request of each stream of `method` (later ones carry only credits)."""
    return [
        r for m, r in plan.requests if m == method and (r.start or r.HasField("end") or r.limit or r.reverse)
    ]


async def test_scan_ex_resumes_after_the_last_delivered_key_when_the_stream_dies(
    kv: AsyncClient, plan: Plan
) -> None:
    wanted = await load(kv, 20_000)
    plan.fail_stream("Scan", StreamFault(after_reads=2), StreamFault(UNAVAILABLE, after_reads=3), None)

    got = [e.key async for e in kv.scan_ex(policy=FAST)]

    assert got == wanted  # none lost, none repeated, in order
    assert plan.calls["Scan"] == 3  # no grant meets a stream's end (close_after_done)
    resumed_at = [r.start for r in first_requests(plan, "Scan")]
    assert len(resumed_at) == 2 and all(start in {key_successor(k) for k in wanted} for start in resumed_at)


async def test_scan_ex_resumes_a_reverse_scan_below_the_last_delivered_key(
    kv: AsyncClient, plan: Plan
) -> None:
    wanted = await load(kv, 8_000)
    plan.fail_stream("Scan", StreamFault(after_reads=1), StreamFault(DEADLINE, after_reads=2), None)

    got = [e.key async for e in kv.scan_ex(reverse=True, policy=FAST)]

    assert got == wanted[::-1]
    assert plan.calls["Scan"] == 3


@pytest.mark.parametrize(
    ("start", "end", "reverse", "wanted"),
    [
        (b"L", b"N", True, [b"M", b"L"]),  # reverse down to its start key
        (b"L", b"M\0", False, [b"L", b"M"]),  # forward up to the key before its end
    ],
)
async def test_scan_ex_broken_after_its_last_entry_ends_instead_of_resuming_an_empty_range(
    kv: AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
    start: bytes,
    end: bytes,
    reverse: bool,
    wanted: list[bytes],
) -> None:
    """Resumed with start >= end, it was refused INVALID_ARGUMENT after delivering all."""
    await kv.bulk_put([(b"L", b"0"), (b"M", b"1")])
    real = kv.scan_batches
    broke: list[bool] = []

    def breaks_before_done(lower: bytes, upper: bytes | None, **kw: Any) -> AsyncIterator[Any]:
        async def batches() -> AsyncIterator[Any]:
            async for batch in real(lower, upper, **kw):
                yield batch
            if not broke:  # the connection lost after the last entry, before `done`
                broke.append(True)
                raise Unavailable("injected: connection lost before done")

        return batches()

    monkeypatch.setattr(kv, "scan_batches", breaks_before_done)
    got = [e.key async for e in kv.scan_ex(start, end, reverse=reverse, policy=FAST)]
    assert got == wanted


async def test_scan_ex_keeps_the_limit_across_resumes(kv: AsyncClient, plan: Plan) -> None:
    wanted = await load(kv, 6_000)
    plan.fail_stream("Scan", StreamFault(after_reads=1))

    got = [e.key async for e in kv.scan_ex("k000100", limit=3_000, policy=FAST)]

    assert got == wanted[100:3_100]


async def test_scan_ex_gives_up_after_the_policy_attempts(kv: AsyncClient, plan: Plan) -> None:
    await load(kv, 100)
    plan.fail_stream("Scan", *[StreamFault(after_reads=0) for _ in range(10)])

    with pytest.raises(Unavailable):
        _ = [e async for e in kv.scan_ex(policy=RetryPolicy(max_attempts=3, initial_backoff_s=0.001))]
    assert plan.calls["Scan"] == 3


async def test_scan_ex_raises_a_non_retryable_error_at_once(kv: AsyncClient, plan: Plan) -> None:
    with pytest.raises(InvalidArgument) as caught:
        _ = [e async for e in kv.scan_ex("a", "b", paths=["$.a[", "$.b"], policy=FAST)]
    assert caught.value.field.startswith("paths"), caught.value.message
    assert plan.calls["Scan"] == 1


async def test_plain_scan_does_not_retry(kv: AsyncClient, plan: Plan) -> None:
    await load(kv, 5_000)
    plan.fail_stream("Scan", StreamFault(after_reads=1))
    with pytest.raises(Unavailable):
        _ = [e async for e in kv.scan()]
    assert plan.calls["Scan"] == 1


async def test_plain_scan_raises_the_error_that_ended_its_stream_under_a_credit_grant(
    kv: AsyncClient, plan: Plan
) -> None:
    # The server ended the stream with an error while a grant was on its way: the grant's
    # write meets the error, which must raise as a read of it would, not reopen the stream.
    await load(kv, 5_000)
    plan.fail_stream("Scan", StreamFault(on_write=True, after_writes=1, code=DEADLINE))
    with pytest.raises(DeadlineExceeded):
        _ = [e async for e in kv.scan()]
    assert plan.calls["Scan"] == 1


async def test_plain_scan_reopens_after_its_cursor_when_a_grant_meets_a_finished_stream(
    kv: AsyncClient, plan: Plan
) -> None:
    # A server that ends the stream with OK at once after done (no close_after_done) can
    # finish under a grant: flow-control bookkeeping, so the scan goes on, nothing repeated.
    wanted = await load(kv, 5_000)
    plan.fail_stream("Scan", StreamFault(on_write=True, after_writes=1, ended=True))
    assert [e.key async for e in kv.scan()] == wanted
    assert plan.calls["Scan"] == 2


def sent_values(plan: Plan) -> dict[bytes, set[bytes]]:
    sent: dict[bytes, set[bytes]] = {}
    for method, request in plan.requests:
        if method == "BulkPut":
            for e in request.entries:
                sent.setdefault(e.key, set()).add(e.value)
    return sent


async def test_bulk_put_ex_resends_what_a_reset_stream_did_not_ack(kv: AsyncClient, plan: Plan) -> None:
    wanted = keys(30_000)
    plan.fail_stream(
        "BulkPut",
        StreamFault(after_reads=1),  # batches sent, then the connection resets mid-batch
        StreamFault(on_write=True, after_writes=2),
        None,
    )
    progress: list[int] = []

    result = await kv.bulk_put_ex(
        ((k, b"v" + k) for k in wanted),
        policy=FAST,
        batch_bytes=32 * 1024,
        on_progress=lambda r: progress.append(r.entries),
    )

    assert result.entries == len(wanted) and result.retries == 2
    assert progress == sorted(progress) and progress[-1] == len(wanted)
    stored = [(e.key, e.value) async for e in kv.scan()]
    assert stored == [(k, b"v" + k) for k in wanted]
    assert plan.calls["BulkPut"] == 3
    resent = {k: v for k, v in sent_values(plan).items() if len(v) != 1}
    assert resent == {}  # never sent a key with two different values


async def test_bulk_put_ex_survives_an_unavailable_burst(kv: AsyncClient, plan: Plan) -> None:
    plan.fail_stream("BulkPut", *[StreamFault(after_reads=0) for _ in range(4)])
    result = await kv.bulk_put_ex(((k, b"x") for k in keys(1_000)), policy=FAST)
    assert result.entries == 1_000 and result.retries == 4
    assert len([e async for e in kv.scan()]) == 1_000


async def test_bulk_put_ex_gives_up_after_the_policy_attempts(kv: AsyncClient, plan: Plan) -> None:
    plan.fail_stream("BulkPut", *[StreamFault(after_reads=0) for _ in range(10)])
    with pytest.raises(Unavailable):
        await kv.bulk_put_ex(
            ((k, b"x") for k in keys(10)), policy=RetryPolicy(max_attempts=3, initial_backoff_s=0.001)
        )
    assert plan.calls["BulkPut"] == 3


async def test_bulk_put_ex_rejects_unsorted_input_at_once(kv: AsyncClient, plan: Plan) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await kv.bulk_put_ex([("b", b"1"), ("a", b"2")], policy=FAST)
    assert caught.value.field == "entries[1].key"
    assert plan.calls["BulkPut"] <= 1


async def test_bulk_put_ex_names_an_empty_key_as_empty(kv: AsyncClient, plan: Plan) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await kv.bulk_put_ex([(b"", b"1")], policy=FAST)
    assert (caught.value.field, caught.value.rule) == ("entries[0].key", "must not be empty")


@pytest.mark.parametrize(
    ("bad", "error", "field"),
    [
        ((b"k%05d" % 2500, b"v", -5.0), InvalidArgument, "entries[2500].ttl_s"),
        ((b"k%05d" % 2500, b"x" * ((1 << 20) + 1)), ResourceExhausted, "entries[2500].value"),
    ],
    ids=["ttl", "value-too-large"],
)
async def test_bulk_put_ex_names_a_refused_entry_by_its_place_in_the_load(
    kv: AsyncClient, plan: Plan, bad: tuple[Any, ...], error: type[Exception], field: str
) -> None:
    # 3,000 entries of 1 KB go out in 1 MiB batches: the server names the entry by its
    # place in the third batch; the client says which entry of the whole load it is.
    items: list[tuple[Any, ...]] = [(b"k%05d" % i, b"v" * 1000) for i in range(3000)]
    items[2500] = bad
    with pytest.raises(error) as caught:
        await kv.bulk_put_ex(items, policy=FAST)
    assert caught.value.field == field  # type: ignore[attr-defined]
    assert str(caught.value).startswith(f"{field} (key 'k02500'): ")
    assert await kv.get(b"k00000") is not None  # the batches before it went in


async def test_bulk_put_ex_sends_the_rest_of_a_batch_that_crossed_a_partition(
    kv: AsyncClient, plan: Plan
) -> None:
    # The server cuts partitions at g, n and u: one batch of a..z is accepted in four parts.
    wanted = [bytes([c]) + b"%03d" % i for c in range(ord("a"), ord("z") + 1) for i in range(10)]
    result = await kv.bulk_put_ex(((k, k) for k in wanted), policy=FAST)
    assert result.entries == len(wanted) and result.batches == 4
    assert [e.key async for e in kv.scan()] == wanted


async def test_update_counts_exactly_under_concurrent_writers(kv: AsyncClient, plan: Plan) -> None:
    async def worker() -> None:
        for _ in range(10):
            await kv.update("counter", lambda n: (n or 0) + 1, json=True)

    await asyncio.gather(*[worker() for _ in range(8)])

    entry = await kv.get("counter", json=True)
    assert entry is not None and entry.value == 80
    assert plan.calls["Put"] > 80  # etag races happened and were retried


async def test_update_retries_when_another_writer_wins_the_race(kv: AsyncClient, plan: Plan) -> None:
    await kv.put("n", 1, json=True)
    seen: list[int | None] = []
    rivals: list[asyncio.Task[int]] = []
    real_put = kv.put

    def add_one(n: int | None) -> int:
        seen.append(n)
        if len(seen) == 1:  # a rival writes between our read and our write
            rivals.append(asyncio.get_running_loop().create_task(real_put("n", 10, json=True)))
        return (n or 0) + 1

    async def put_after_rival(*args: object, **kw: object) -> int:
        await asyncio.gather(*rivals)
        return await real_put(*args, **kw)  # type: ignore[arg-type]

    kv.put = put_after_rival  # type: ignore[method-assign]
    written = await kv.update("n", add_one, json=True)

    entry = await kv.get("n", json=True)
    assert seen == [1, 10] and written.value == 11
    assert entry is not None and entry.value == 11 and entry.etag == written.etag


async def test_update_creates_an_absent_key_only_if_still_absent(kv: AsyncClient, plan: Plan) -> None:
    assert (await kv.update("fresh", lambda n: (n or 0) + 5, json=True)).value == 5
    puts = [r for m, r in plan.requests if m == "Put"]
    assert puts[-1].if_absent and not puts[-1].if_etag


async def test_update_retries_unavailable_reads_and_writes(kv: AsyncClient, plan: Plan) -> None:
    plan.fail_unary("Get", UNAVAILABLE, DEADLINE)
    plan.fail_unary("Put", UNAVAILABLE)
    assert (await kv.update("u", lambda n: (n or 0) + 1, json=True)).value == 1
    assert plan.calls["Get"] == 4 and plan.calls["Put"] == 2


async def test_update_raises_a_write_whose_answer_was_lost_instead_of_applying_fn_twice(
    kv: AsyncClient, plan: Plan
) -> None:
    await kv.put("c", 0, json=True)
    plan.fail_unary("Put", Lost())  # committed on the server; the connection dropped after
    with pytest.raises(Unavailable) as lost:
        await kv.update("c", lambda n: n + 1, json=True)
    assert lost.value.may_have_applied and plan.calls["Put"] == 2  # the first put, then one
    stored = await kv.get("c", json=True)
    assert stored is not None and stored.value == 1  # applied once (a retry made it 2)


async def test_update_raises_a_deadline_on_the_write_at_once(kv: AsyncClient, plan: Plan) -> None:
    plan.fail_unary("Put", DEADLINE)
    with pytest.raises(DeadlineExceeded):
        await kv.update("d", lambda n: (n or 0) + 1, json=True)
    assert plan.calls["Put"] == 1


async def test_update_raises_a_non_retryable_error_at_once(kv: AsyncClient, plan: Plan) -> None:
    with pytest.raises(KeyspanClientError) as caught:  # the server refuses the value
        await kv.update("x", lambda n: b"v" * ((1 << 20) + 1))
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED, caught.value.message
    assert plan.calls["Get"] == 1 and plan.calls["Put"] == 1


async def test_retries_are_counted_in_the_client_metrics(kv: AsyncClient, plan: Plan) -> None:
    registry = CollectorRegistry()
    kv.metrics = ClientMetrics(registry)
    wanted = await load(kv, 5_000)
    plan.fail_stream(
        "Scan", StreamFault(UNAVAILABLE, after_reads=1), StreamFault(DEADLINE, after_reads=1), None
    )

    assert [e.key async for e in kv.scan_ex(policy=FAST)] == wanted
    assert registry.get_sample_value("keyspan_client_retries_total", {"method": "Scan"}) == 2


@pytest.mark.parametrize(
    ("fields", "error", "message"),
    [
        ({"max_attempts": 0}, ValueError, "max_attempts: must be between 1 and"),  # it acted as 1
        ({"max_attempts": "3"}, TypeError, "max_attempts: must be a whole number, not str"),
        ({"max_attempts": True}, TypeError, "max_attempts: must be a whole number, not bool"),
        ({"max_backoff_s": float("nan")}, ValueError, "max_backoff_s: must be above 0"),  # slept for ever
        ({"initial_backoff_s": float("inf")}, ValueError, "initial_backoff_s: must be above 0"),
        ({"max_stall_s": -1.0}, ValueError, "max_stall_s: must be above 0"),
        ({"max_backoff_s": None}, TypeError, "max_backoff_s: must be a number of seconds, not NoneType"),
        ({"initial_backoff_s": 3.0, "max_backoff_s": 2.0}, ValueError, r"initial_backoff_s: must be at most"),
    ],
)
async def test_a_retry_policy_refuses_what_would_never_end_or_fail_later(
    fields: dict[str, Any], error: type, message: str
) -> None:
    with pytest.raises(error, match=message):
        RetryPolicy(**fields)
