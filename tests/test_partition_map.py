"""The client-side map cache: routing, pieces, version order and tiling checks."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from keyspan.storage.errors import UnavailableError
from keyspan.storage.keys import KeyRange
from keyspan.streams.errors import Unavailable
from keyspan.streams.partition_map import (
    SERVING,
    UNAVAILABLE,
    MapEntry,
    PartitionMap,
    TilingError,
    check_tiling,
    to_message,
)


def entries(state: int = SERVING) -> list[MapEntry]:
    return [
        MapEntry("p0", KeyRange(b"", b"g"), "n1", "127.0.0.1:1", SERVING),
        MapEntry("p1", KeyRange(b"g", b"n"), "n2", "127.0.0.1:2", state),
        MapEntry("p2", KeyRange(b"n", None), "n3", "127.0.0.1:3", SERVING),
    ]


def test_locate_finds_the_owner_at_every_bound() -> None:
    m = PartitionMap(entries(), 3)
    assert m.locate(b"\x00").partition_id == "p0"
    assert m.locate(b"f\xff").partition_id == "p0"
    assert m.locate(b"g").partition_id == "p1"
    assert m.locate(b"zzz").partition_id == "p2"


def test_pieces_cut_a_range_at_partition_bounds_in_key_order() -> None:
    m = PartitionMap(entries(), 3)
    pieces = m.pieces(b"c", b"p")
    assert [(r.start, r.end, e.partition_id) for r, e in pieces] == [
        (b"c", b"g", "p0"),
        (b"g", b"n", "p1"),
        (b"n", b"p", "p2"),
    ]
    assert [e.partition_id for _, e in m.pieces(b"h", b"i")] == ["p1"]
    assert [e.partition_id for _, e in m.pieces(b"", None)] == ["p0", "p1", "p2"]


def test_apply_takes_only_newer_versions() -> None:
    m = PartitionMap(entries(), 3)
    assert not m.apply(to_message(2, entries(UNAVAILABLE)))
    assert m.locate(b"h").routable
    assert m.apply(to_message(4, entries(UNAVAILABLE)))
    assert not m.locate(b"h").routable and m.version == 4


def test_an_empty_map_is_unavailable() -> None:
    with pytest.raises(UnavailableError):
        PartitionMap().locate(b"a")


@pytest.mark.parametrize(
    "ranges",
    [
        [KeyRange(b"a", None)],
        [KeyRange(b"", b"g"), KeyRange(b"h", None)],
        [KeyRange(b"", b"h"), KeyRange(b"g", None)],
        [KeyRange(b"", b"g")],
        [],
    ],
)
def test_gaps_overlaps_and_open_ends_are_refused(ranges: list[KeyRange]) -> None:
    with pytest.raises(TilingError):
        check_tiling(ranges)


def test_wrong_partition_carries_the_owner() -> None:
    m = PartitionMap(entries(), 7)
    err = m.locate(b"h").wrong_partition(b"h", m.version)
    assert (err.partition_id, err.start, err.end, err.address, err.map_version) == (
        "p1",
        b"g",
        b"n",
        "127.0.0.1:2",
        7,
    )


def test_map_router_routes_cuts_and_learns_from_wrong_partition() -> None:
    from keyspan.streams.map_router import MapRouter
    from keyspan.v1 import errors_pb2

    refreshed = []
    m = PartitionMap(entries(), 3)
    router = MapRouter(m, open_channel=grpc.insecure_channel, refresh=lambda: refreshed.append(1))
    first = router.stub_for_key(b"h")
    assert router.stub_for_key(b"i") is first
    assert [(s, e) for s, e, _ in router.pieces(b"c", b"h")] == [(b"c", b"g"), (b"g", b"h")]
    assert len(router.stubs()) == 3
    detail = errors_pb2.WrongPartition(key=b"h", start=b"g", end=b"n", address="127.0.0.1:9", map_version=4)
    assert router.on_wrong_partition(detail) is True
    assert refreshed == [1]
    assert router.address_for_key(b"h") == "127.0.0.1:9"
    m.apply(to_message(4, entries()))
    assert router.address_for_key(b"h") == "127.0.0.1:2"
    # A node that knows no owner (recovering): asked again, not handed to the caller.
    assert router.on_wrong_partition(errors_pb2.WrongPartition(key=b"h", map_version=4)) is True
    # A call sent under the old map reached a node already on the new one, which names the
    # owner this client's map now routes to (a repair the client learned of meanwhile):
    # retried there, not handed to the caller.
    moved = errors_pb2.WrongPartition(key=b"h", address="127.0.0.1:2", map_version=4)
    assert router.on_wrong_partition(moved) is True
    elsewhere = errors_pb2.WrongPartition(key=b"h", address="127.0.0.1:7", map_version=4)
    assert router.on_wrong_partition(elsewhere) is False
    m.apply(to_message(5, entries(UNAVAILABLE)))
    with pytest.raises(Unavailable):  # the client's retryable error, not storage's
        router.stub_for_key(b"h")
    asyncio.run(router.close())
