"""Control's decisions: tiling, map versions, assignment and liveness, with a fake clock."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from keyspan.services.control.cluster import (
    DOWN,
    SUSPECT,
    UP,
    ClusterState,
    Liveness,
    NotAllowedError,
    UnknownError,
    uniform_split_points,
)
from keyspan.services.control.store import MIGRATIONS, ControlStore, now_ms
from keyspan.storage.errors import KeyspanError
from keyspan.streams.partition_map import (
    SERVING,
    UNASSIGNED,
    UNAVAILABLE,
    PartitionMap,
    TilingError,
    to_message,
)

T0 = 1_000_000


@pytest.fixture(autouse=True)
def _stores_closed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every ControlStore a test opens is closed after it (each holds its dir's lock file)."""
    opened: list[ControlStore] = []
    init = ControlStore.__init__

    def tracked(self: ControlStore, path: Path) -> None:
        init(self, path)
        opened.append(self)

    monkeypatch.setattr(ControlStore, "__init__", tracked)
    yield
    for store in opened:
        store.close()


def make_state(tmp_path: Path, min_nodes: int = 1, partitions: int = 4) -> ClusterState:
    state = ClusterState(
        ControlStore(tmp_path / "control.db"), Liveness(suspect_after_s=3, down_after_s=6), min_nodes
    )
    state.create(uniform_split_points(partitions))
    return state


def join(state: ClusterState, node_id: str, now_ms: int = T0, hosted: tuple[str, ...] = ()) -> None:
    state.register(node_id, f"127.0.0.1:{1000 + len(node_id)}", "", 1, list(hosted), now_ms)


def test_schema_is_created_and_versioned(tmp_path: Path) -> None:
    store = ControlStore(tmp_path / "control.db")
    assert store.schema_version() == len(MIGRATIONS)
    assert {"nodes", "partitions", "oplog", "meta"} <= set(store.db.table_names())
    store.close()
    assert ControlStore(tmp_path / "control.db").migrate() == len(MIGRATIONS)


def test_a_newer_unreadable_or_busy_control_db_is_refused(tmp_path: Path) -> None:
    store = ControlStore(tmp_path / "control.db")
    with pytest.raises(KeyspanError, match="in use by another keyspan process"):
        ControlStore(tmp_path / "control.db")  # a second control on the same data dir
    store._conn.execute("UPDATE schema_version SET version = ?", (len(MIGRATIONS) + 1,))
    store.close()
    with pytest.raises(KeyspanError, match=f"schema version {len(MIGRATIONS) + 1}; this keyspan knows"):
        ControlStore(tmp_path / "control.db")

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "control.db").write_bytes(b"not a database " * 300)
    with pytest.raises(KeyspanError, match=r"cannot open .*control\.db: file is not a database"):
        ControlStore(tmp_path / "other" / "control.db")
    ControlStore(tmp_path / "other" / "new.db").close()  # the failed opens let go of the lock


def test_a_control_db_with_a_damaged_page_is_refused_naming_it(tmp_path: Path) -> None:
    # It failed later, building the map, with a traceback and exit 1.
    state = make_state(tmp_path)
    join(state, "a")
    state.store.close()
    path = tmp_path / "control.db"
    with path.open("r+b") as f:
        f.seek(2 * 4096)  # the third page: not the header
        f.write(os.urandom(4096))
    with pytest.raises(KeyspanError, match=r"cannot open .*control\.db: .*; restore it from a backup"):
        ControlStore(path)


def test_new_cluster_tiles_the_key_space_and_waits_for_min_nodes(tmp_path: Path) -> None:
    state = make_state(tmp_path, min_nodes=2)
    ranges = [e.range for e in state.map.entries]
    assert ranges[0].start == b"" and ranges[-1].end is None and len(ranges) == 4
    join(state, "a")
    assert {e.state for e in state.map.entries} == {UNASSIGNED}
    join(state, "b")
    owners = [e.node_id for e in state.map.entries]
    assert sorted(owners) == ["a", "a", "b", "b"]


def test_a_partition_with_no_owner_goes_to_the_node_that_holds_it(tmp_path: Path) -> None:
    """A control started afresh (its control.db lost) beside nodes that kept their disks."""
    state = make_state(tmp_path, min_nodes=2)
    join(state, "a", hosted=("p0003", "p0001"))
    join(state, "b", hosted=("p0000", "p0002"))
    owners = {e.partition_id: e.node_id for e in state.map.entries}
    assert owners == {"p0000": "b", "p0001": "a", "p0002": "b", "p0003": "a"}


def test_map_version_grows_on_every_change_and_only_then(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    v0 = state.map.version
    join(state, "a")
    v1 = state.map.version
    assert v1 > v0
    assert not state.tick(T0 + 100)
    assert state.map.version == v1
    state.ack("a", [e.partition_id for e in state.map.entries])
    assert state.map.version == v1 + 1
    assert {e.state for e in state.map.entries} == {SERVING}


def test_version_and_map_survive_a_restart(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    join(state, "a")
    version, entries = state.map.version, state.map.entries
    state.store.close()
    again = ClusterState(ControlStore(tmp_path / "control.db"), Liveness(), 1)
    assert not again.create(uniform_split_points(4))
    assert again.map.version == version and again.map.entries == entries


def test_missed_heartbeats_make_a_node_suspect_then_down_then_up(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    join(state, "a", hosted=("p0000", "p0001", "p0002", "p0003"))
    state.tick(T0 + 3_500)
    assert state.store.node("a")["status"] == SUSPECT
    assert {e.state for e in state.map.entries} == {SERVING}
    state.tick(T0 + 6_500)
    assert state.store.node("a")["status"] == DOWN
    assert {e.state for e in state.map.entries} == {UNAVAILABLE}
    state.heartbeat("a", [("p0000", 5, 100, 5)], T0 + 7_000)
    assert state.store.node("a")["status"] == UP
    assert {e.state for e in state.map.entries} == {SERVING}
    assert state.store.node("a")["entries"] == 5


def test_a_failing_probe_makes_a_node_suspect(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    join(state, "a")
    state.probe("a", "UNREACHABLE", T0 + 10)
    assert state.store.node("a")["status"] == SUSPECT
    state.probe("a", "SERVING", T0 + 20)
    assert state.store.node("a")["status"] == UP


def test_a_known_node_is_refused_from_another_disk_until_it_is_removed(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    state.register("a", "127.0.0.1:7411", "", 1, [], T0, "disk1")
    state.register("a", "127.0.0.1:7411", "", 1, [], T0 + 1, "disk1")  # a restart: same disk
    with pytest.raises(
        NotAllowedError, match=r"node a \(last at 127\.0\.0\.1:7411\) registered before from another"
    ) as refused:
        state.register("a", "127.0.0.1:7499", "", 1, [], T0 + 2, "disk2")
    assert refused.value.reason == "DISK_MISMATCH"
    assert state.store.node("a")["address"] == "127.0.0.1:7411"  # type: ignore[index]
    # A node built before disk ids says none: it may be on any data dir, an empty one too.
    with pytest.raises(NotAllowedError, match=r"sends no disk id \(a keyspan older") as older:
        state.register("a", "127.0.0.1:7411", "", 1, [], T0 + 3, "")
    assert older.value.reason == "DISK_MISMATCH"
    assert state.store.node("a")["disk_id"] == "disk1"  # type: ignore[index]

    state.remove("a", force=True)  # forgotten, disk and all: it may join from a new one
    state.register("a", "127.0.0.1:7499", "", 1, [], T0 + 4, "disk2")
    assert state.store.node("a")["disk_id"] == "disk2"  # type: ignore[index]


def test_a_version_1_database_gains_the_disk_column(tmp_path: Path) -> None:
    import sqlite3

    import sqlite_utils

    from keyspan.services.control.store import _v1

    conn = sqlite3.connect(tmp_path / "control.db")
    db = sqlite_utils.Database(conn)
    _v1(db)
    db["schema_version"].insert({"version": 1})
    db["nodes"].insert({"node_id": "old", "address": "127.0.0.1:1", "probe_address": "", "capacity": 1})
    conn.commit()
    conn.close()
    store = ControlStore(tmp_path / "control.db")
    assert store.schema_version() == len(MIGRATIONS) and store.node("old")["disk_id"] == ""  # type: ignore[index]
    store.close()


def test_remove_is_refused_while_the_node_owns_partitions(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    join(state, "a")
    join(state, "b")
    with pytest.raises(NotAllowedError) as refused:
        state.remove("a", force=False)
    assert refused.value.reason == "NODE_OWNS_PARTITIONS"
    state.set_flags("a", draining=1, cordoned=1)
    moved = state.remove("a", force=True)
    assert moved and {e.node_id for e in state.map.entries} == {"b"}
    with pytest.raises(UnknownError):
        state.remove("a", force=True)


def test_cordoned_nodes_get_nothing_new(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    join(state, "a")
    join(state, "b")
    state.set_flags("b", cordoned=1)
    state.remove("a", force=True)
    assert {e.state for e in state.map.entries} == {UNASSIGNED}
    state.set_flags("b", cordoned=0)
    assert {e.node_id for e in state.map.entries} == {"b"}


def test_repair_moves_a_partition_to_a_schedulable_node(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    join(state, "a")
    join(state, "b", now_ms=T0 + 5_000)
    state.tick(T0 + 7_000)
    victim = state.map.owned_by("a")[0].partition_id
    state.repair(victim, "b")
    assert state.map.by_id(victim).node_id == "b"
    join(state, "a", now_ms=T0 + 7_000)  # a is back up
    # b is up: refused even while its last heartbeat counted none (a write since was hidden)
    with pytest.raises(
        NotAllowedError, match="is on node b, which is up, with no entries at its last"
    ) as refused:
        state.repair(victim, "a")
    state.store.update_partition(victim, entries=12)
    with pytest.raises(
        NotAllowedError, match="is on node b, which is up, with 12 entries at its last"
    ) as refused:
        state.repair(victim, "a")
    assert refused.value.reason == "PARTITION_HAS_DATA" and state.map.by_id(victim).node_id == "b"
    state.tick(T0 + 7_000 + 1_500)  # b has missed heartbeats: suspect, still serving
    assert state.store.node("b")["status"] == "suspect"  # type: ignore[index]
    with pytest.raises(NotAllowedError, match="is on node b, which is suspect"):
        state.repair(victim, "a")
    join(state, "b", now_ms=T0 + 9_000)
    state.repair(victim, "a", force=True)
    assert state.map.by_id(victim).node_id == "a"
    state.repair(victim, "b", force=True)
    state.set_flags("b", cordoned=1)
    with pytest.raises(NotAllowedError):
        state.repair(victim, "b")
    with pytest.raises(UnknownError):
        state.repair("p9999", "b")


def test_each_repair_gives_the_partition_a_revision_floor_above_any_before(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    join(state, "a")
    join(state, "b")
    victim = state.map.owned_by("a")[0].partition_id
    assert state.map.by_id(victim).revision_floor == 0  # type: ignore[union-attr]  # etags start at 1
    before_ms = time.time_ns() // 1_000_000
    state.repair(victim, "b", force=True)
    first = state.map.by_id(victim).revision_floor  # type: ignore[union-attr]
    assert before_ms * 1000 <= first <= (time.time_ns() // 1_000_000) * 1000
    state.repair(victim, "a", force=True)
    second = state.map.by_id(victim).revision_floor  # type: ignore[union-attr]
    assert second > first
    carried = PartitionMap.from_message(to_message(1, state.map.entries)).by_id(victim)
    assert carried is not None and carried.revision_floor == second
    assert all(e.revision_floor == 0 for e in state.map.entries if e.partition_id != victim)


def test_a_floor_passes_the_reported_revision_whatever_control_s_clock_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from keyspan.services.control import cluster

    state = make_state(tmp_path)
    join(state, "a")
    join(state, "b")
    victim = state.map.owned_by("a")[0].partition_id
    state.repair(victim, "b", force=True)
    first = state.map.by_id(victim).revision_floor  # type: ignore[union-attr]
    state.heartbeat("b", [(victim, 3, 300, first + 3)], T0 + 1_000)  # b wrote 3 etags past it
    behind = time.time_ns() - 120 * 10**9  # control restarted on a clock 2 minutes behind
    monkeypatch.setattr(cluster.time, "time_ns", lambda: behind)
    state.repair(victim, "a", force=True)
    assert state.map.by_id(victim).revision_floor >= first + 3 + cluster.REVISION_MARGIN  # type: ignore[union-attr]


def test_partitions_a_forced_remove_leaves_get_a_floor_for_their_next_owner(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    join(state, "a")
    owned = [e.partition_id for e in state.map.owned_by("a")]
    state.heartbeat("a", [(p, 1, 10, 7) for p in owned], T0 + 1_000)
    join(state, "b", now_ms=T0 + 1_000)
    before_ms = time.time_ns() // 1_000_000
    state.remove("a", force=True)  # its disk is gone: b gets them empty
    for partition_id in owned:
        entry = state.map.by_id(partition_id)
        assert entry is not None and entry.node_id == "b" and entry.revision_floor >= before_ms * 1000


def test_repair_to_the_node_already_serving_the_partition_is_refused(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    join(state, "a")
    served = state.map.owned_by("a")[0].partition_id
    state.store.update_partition(served, acked=1)
    state.tick(T0 + 1_000)
    version = state.map.version
    with pytest.raises(NotAllowedError, match=f"partition {served} is already served by a") as refused:
        state.repair(served, "a")  # it published a new map version for nothing
    assert refused.value.reason == "ALREADY_SERVING" and state.map.version == version


def test_a_map_that_does_not_tile_is_refused(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    state.store.update_partition("p0001", start=b"\x30")
    with pytest.raises(TilingError):
        state.tick(T0)


def test_a_heartbeat_commits_once_however_many_partitions_changed(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    join(state, "a", hosted=("p0000", "p0001", "p0002", "p0003"))
    state.heartbeat("a", [(f"p000{i}", 1, 10, 1) for i in range(4)], T0 + 1_000)
    statements: list[str] = []
    state.store._conn.set_trace_callback(statements.append)
    state.heartbeat("a", [(f"p000{i}", 2, 20, 2) for i in range(4)], T0 + 2_000)  # all four changed
    state.store._conn.set_trace_callback(None)
    assert [s for s in statements if s.strip().upper().startswith("COMMIT")] == ["COMMIT"]
    assert [p["entries"] for p in state.store.partitions()] == [2, 2, 2, 2]


async def test_control_backs_up_its_database_at_start_and_on_schedule_and_a_copy_restores(
    tmp_path: Path,
) -> None:
    import asyncio
    import sqlite3

    from keyspan.services.config import ControlConfig
    from keyspan.services.control.process import ControlProcess

    config = ControlConfig(address="127.0.0.1:0", data=tmp_path / "c", partitions=4, backup_interval_s=0.2)
    control = ControlProcess(config)
    await control.start()
    backup = tmp_path / "c" / "control.db.backup"
    try:
        assert backup.exists()  # one at start
        state = control.state
        assert state is not None
        await control.call(state.register, "a", "127.0.0.1:7411", "", 1, [], now_ms(), "disk1")
        version = state.map.version
        for _ in range(50):  # the next scheduled copy has the registration
            await asyncio.sleep(0.1)
            with contextlib.closing(sqlite3.connect(backup)) as copy:
                if copy.execute("SELECT count(*) FROM nodes").fetchone()[0] == 1:
                    break
        else:
            raise AssertionError("no scheduled backup with the registered node")
    finally:
        await control.stop(0)
    (tmp_path / "c" / "control.db").unlink()
    for suffix in ("-wal", "-shm"):
        (tmp_path / "c" / f"control.db{suffix}").unlink(missing_ok=True)
    backup.rename(tmp_path / "c" / "control.db")  # restored
    restored = ControlProcess(ControlConfig(address="127.0.0.1:0", data=tmp_path / "c", partitions=4))
    await restored.start()
    try:
        assert restored.state is not None and restored.state.map.version >= version
        assert [n["node_id"] for n in await restored.call(restored.state.store.nodes)] == ["a"]
    finally:
        await restored.stop(0)


def test_a_control_behind_a_version_a_node_holds_continues_past_it(tmp_path: Path) -> None:
    """A control on a new control.db counts from 1; nodes and gateways drop maps not newer
    than theirs, so they ignored it until its count passed theirs."""
    state = make_state(tmp_path)
    join(state, "a")
    before = state.map.version
    assert state.observe_version(before + 40)
    assert state.map.version == before + 41 and state.store.get_meta("map_version") == before + 41
    assert not state.observe_version(before + 41)  # not behind: nothing to do
    assert not state.observe_version(1 << 60)  # a bogus version is not taken
    assert state.map.version == before + 41


async def test_a_watcher_holding_a_newer_version_gets_the_new_controls_map(tmp_path: Path) -> None:
    import asyncio

    import grpc

    from keyspan.services.config import ControlConfig
    from keyspan.services.control.process import ControlProcess
    from keyspan.v1 import control_pb2, control_pb2_grpc

    control = ControlProcess(ControlConfig(address="127.0.0.1:0", data=tmp_path / "c", partitions=2))
    await control.start()
    try:
        async with grpc.aio.insecure_channel(control.address) as channel:
            watch = control_pb2_grpc.ControlStub(channel).WatchMap(
                control_pb2.WatchMapRequest(after_version=500)
            )
            got = await asyncio.wait_for(watch.read(), 5)  # it waited for version 501 to come
            watch.cancel()
        assert got.version == 501 and len(got.partitions) == 2
    finally:
        await control.stop(0)


def test_a_control_restart_gives_live_nodes_a_new_window_and_keeps_their_last_heartbeat(
    tmp_path: Path,
) -> None:
    # It overwrote last_heartbeat_ms: `admin nodes` showed a node dead for seconds as heard
    # from just now.
    state = make_state(tmp_path)
    join(state, "a")  # its last heartbeat: T0
    state.store.close()
    again = make_state(tmp_path)
    again.restarted(T0 + 10_000)  # control was down for 10 s
    again.tick(T0 + 10_500)
    node = again.store.node("a")
    assert node is not None and node["status"] == "up" and node["last_heartbeat_ms"] == T0
    again.tick(T0 + 10_000 + 7_000)  # no heartbeat in the new window either: down
    assert again.store.node("a")["status"] == "down"  # type: ignore[index]


def test_a_new_control_db_waits_for_the_node_of_a_partition_no_registered_node_holds(
    tmp_path: Path,
) -> None:
    """control.db lost: once --min-nodes had registered, a partition on a node that
    registered later went, empty, to another node, and its acknowledged writes read as
    not found."""
    before_ms = time.time_ns() // 1_000_000
    state = make_state(tmp_path, min_nodes=2)
    join(state, "a", T0, hosted=("p0000", "p0001"))
    join(state, "b", T0 + 1_000)  # min_nodes reached: a recovery, since a holds partitions
    owners = {e.partition_id: e.node_id for e in state.map.entries}
    assert owners == {"p0000": "a", "p0001": "a", "p0002": "", "p0003": ""}
    join(state, "c", T0 + 5_000, hosted=("p0002",))  # late, with its partition on disk
    assert state.map.by_id("p0002").node_id == "c"  # type: ignore[union-attr]
    for now in (T0 + 5_500, T0 + 10_000):  # heartbeats keep them up; p0003 still waits
        for node_id in ("a", "b", "c"):
            state.heartbeat(node_id, [], now)
    assert state.map.by_id("p0003").node_id == ""  # type: ignore[union-attr]
    for node_id in ("a", "b", "c"):
        state.heartbeat(node_id, [], T0 + 1_000 + 15_001)  # the wait is over: no node has it
    assert state.map.by_id("p0003").node_id in ("a", "b", "c")  # type: ignore[union-attr]
    # given out empty, its etags go on past any its lost copy may have handed out
    assert state.map.by_id("p0003").revision_floor >= before_ms * 1000  # type: ignore[union-attr]
    assert state.map.by_id("p0002").revision_floor == 0  # type: ignore[union-attr]  # c's own copy


def test_a_new_cluster_assigns_at_once(tmp_path: Path) -> None:
    state = make_state(tmp_path, min_nodes=2)
    join(state, "a", T0)
    join(state, "b", T0 + 1)  # nothing on any disk: a new cluster, no wait
    assert all(e.node_id for e in state.map.entries)
    assert all(e.revision_floor == 0 for e in state.map.entries)  # its etags start at 1


def test_a_heartbeat_from_a_process_control_no_longer_knows_as_the_node_is_refused(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    state.register("a", "127.0.0.1:7411", "", 1, [], T0, "disk1")
    assert state.heartbeat("a", [], T0 + 100, "disk1") is not None
    with pytest.raises(NotAllowedError) as other_disk:
        state.heartbeat("a", [], T0 + 200, "disk0")  # the id registered since from disk1
    assert other_disk.value.reason == "DISK_MISMATCH"
    state.remove("a", force=True)
    with pytest.raises(NotAllowedError) as removed:
        state.heartbeat("a", [], T0 + 300, "disk1")
    assert removed.value.reason == "NODE_REMOVED"


def test_a_node_that_just_registered_and_is_still_syncing_is_no_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every node start logged a WARNING: its probe says NOT_SERVING until it has
    reconciled with its map, a moment after it registered."""
    import logging

    state = make_state(tmp_path)
    join(state, "a")
    with caplog.at_level(logging.INFO, logger="keyspan.services.control.cluster"):
        state.probe("a", "NOT_SERVING", T0 + 50)  # reconciling
        state.probe("a", "SERVING", T0 + 80)
        state.heartbeat("a", [], T0 + 5_000)
        state.probe("a", "NOT_SERVING", T0 + 5_050)  # long after it registered
    changes = [(r.levelname, r.status) for r in caplog.records if r.getMessage() == "node status"]  # type: ignore[attr-defined]
    assert changes == [("INFO", "suspect"), ("INFO", "up"), ("WARNING", "suspect")]


def test_a_node_going_suspect_is_a_warning_and_coming_back_is_not(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    state = make_state(tmp_path)
    join(state, "a")
    with caplog.at_level(logging.INFO, logger="keyspan.services.control.cluster"):
        state.tick(T0 + 4_000)  # suspect after 3 s
        state.heartbeat("a", [], T0 + 4_500)  # a heartbeat again
        state.tick(T0 + 4_600)
    changes = [(r.levelname, r.status, r.was) for r in caplog.records if r.getMessage() == "node status"]  # type: ignore[attr-defined]
    assert changes == [("WARNING", "suspect", "up"), ("INFO", "up", "suspect")]


def test_time_a_stalled_control_did_not_run_does_not_count_against_the_nodes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGSTOP of control for 6 s: its first tick marked every node down (their heartbeats
    waited unread), and the map made every partition unavailable for a moment. A node
    that was already failing still goes down in time (resetting every window on a stall
    kept a dead node up for as long as control kept stalling)."""
    from keyspan.services.control import cluster

    clock = [1000.0]
    monkeypatch.setattr(cluster, "running_clock", lambda: clock[0])
    state = make_state(tmp_path)  # suspect after 3 s, down after 6 s
    join(state, "a")
    join(state, "dying")
    for step in range(1, 5):  # 4 s of ticks; "dying" sends nothing from now on
        clock[0] += 1
        state.heartbeat("a", [], T0 + step * 1_000)
    assert state.store.node("dying")["status"] == SUSPECT  # type: ignore[index]
    clock[0] += 10  # control did not run for 10 s
    state.tick(T0 + 14_000)
    assert state.store.node("a")["status"] == UP  # type: ignore[index]
    assert state.store.node("dying")["status"] == SUSPECT  # type: ignore[index]
    for step in range(1, 6):  # running again: 4 s + 2.5 s without a heartbeat, over the 6 s
        clock[0] += 0.5
        state.heartbeat("a", [], T0 + 14_000 + step * 500)
    assert state.store.node("dying")["status"] == DOWN  # type: ignore[index]
    assert state.store.node("a")["status"] == UP  # type: ignore[index]


def test_a_step_of_the_system_clock_neither_downs_live_nodes_nor_keeps_a_dead_one_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Control read liveness on the system clock: a step forward of an hour (NTP, `date
    -s`) marked every node down at the next tick, and a step back kept a silent node up
    for as long as the step. The times it keeps move with a step, so a control restarted
    later reads them on the clock as it is."""
    from keyspan.services.control import cluster

    running, wall_ns = [1000.0], [time.time_ns()]
    monkeypatch.setattr(cluster, "running_clock", lambda: running[0])
    monkeypatch.setattr(time, "time_ns", lambda: wall_ns[0])
    state = make_state(tmp_path)  # suspect after 3 s, down after 6 s

    def one_second(step_s: float = 0) -> None:  # no time given: the state reads the clocks
        running[0] += 1
        wall_ns[0] += int((1 + step_s) * 1e9)
        state.heartbeat("a", [])  # "silent" sends nothing

    def status(node_id: str) -> str:
        return state.store.node(node_id)["status"]  # type: ignore[index]

    for node_id in ("a", "silent"):
        state.register(node_id, f"127.0.0.1:{1000 + len(node_id)}", "", 1, [])
    one_second(step_s=3600)
    assert (status("a"), status("silent")) == (UP, UP)
    one_second(step_s=-7200)
    for _ in range(6):  # 7 s without a heartbeat in all
        one_second()
    assert (status("a"), status("silent")) == (UP, DOWN)
    heard = state.store.node("a")["last_heartbeat_ms"]  # type: ignore[index]
    assert heard == now_ms()  # kept on the clock as it is now
    state.store.close()
    again = ClusterState(ControlStore(tmp_path / "control.db"), Liveness(suspect_after_s=3, down_after_s=6))
    again.restarted()
    running[0] += 1
    wall_ns[0] += 10**9 + 3600 * 10**9  # a step before the restarted control's first call
    again.tick()
    assert [again.store.node(n)["status"] for n in ("a", "silent")] == [UP, DOWN]  # type: ignore[index]


def test_a_shift_that_fails_to_commit_moves_nothing_and_is_made_once_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The heartbeats were moved in a commit of their own and the recovery wait's start
    after it: a failure between them (a full disk) left the first moved, and the next
    call found the same step and moved them again."""
    from keyspan.services.control import cluster

    running, wall_ns = [1000.0], [time.time_ns()]
    monkeypatch.setattr(cluster, "running_clock", lambda: running[0])
    monkeypatch.setattr(time, "time_ns", lambda: wall_ns[0])
    state = make_state(tmp_path, min_nodes=2)
    state.register("a", "127.0.0.1:1001", "", 1, ["p0000"])  # a recovery: a holds a partition
    state.register("b", "127.0.0.1:1002", "", 1, [])
    heard, waiting_from = (
        state.store.node("b")["last_heartbeat_ms"],
        state.store.get_meta("recovering_from_ms"),
    )  # type: ignore[index]
    set_meta, failing = state.store.set_meta, [True]

    def full_disk_once(name: str, value: object) -> None:
        if failing.pop() if failing else False:
            raise OSError("No space left on device")
        set_meta(name, value)

    monkeypatch.setattr(state.store, "set_meta", full_disk_once)
    running[0] += 1
    wall_ns[0] += 10**9 - 3600 * 10**9  # set back an hour
    with pytest.raises(OSError):
        state.heartbeat("a", [])
    assert state.store.node("b")["last_heartbeat_ms"] == heard  # type: ignore[index]
    state.heartbeat("a", [])
    assert state.store.node("b")["last_heartbeat_ms"] == heard - 3600 * 1000  # type: ignore[index]
    assert state.store.get_meta("recovering_from_ms") == waiting_from - 3600 * 1000


def test_a_new_control_db_gives_a_partition_to_the_node_with_its_newest_copy(tmp_path: Path) -> None:
    """control.db lost after a repair: the old owner's disk still held the older copy, and
    the partition went to whichever holder came first by load and id."""
    state = make_state(tmp_path, min_nodes=2)
    stale, repaired = 7, 1_795_971_431_776_001  # a repair's floor put the new copy far past it
    state.register("a", "127.0.0.1:1001", "", 1, ["p0000"], T0, "", {"p0000": stale})
    state.register("b", "127.0.0.1:1002", "", 1, ["p0000"], T0 + 1, "", {"p0000": repaired})
    entry = state.map.by_id("p0000")
    assert entry is not None and entry.node_id == "b"
    assert state.partition_rows()["p0000"]["revision"] == repaired  # what a later floor passes


def test_a_newer_copy_registering_during_the_recovery_wait_takes_its_partition_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With --min-nodes 1 the first holder to register got the partition, though its copy
    was the one a repair had left behind."""
    state = make_state(tmp_path, min_nodes=1)
    state.register("a", "127.0.0.1:1001", "", 1, ["p0000"], T0, "", {"p0000": 7})
    assert state.map.by_id("p0000").node_id == "a"  # type: ignore[union-attr]
    state.register("b", "127.0.0.1:1002", "", 1, ["p0000"], T0 + 1_000, "", {"p0000": 1_795_971_431_776_001})
    assert state.map.by_id("p0000").node_id == "b"  # type: ignore[union-attr]
    state.register("c", "127.0.0.1:1003", "", 1, ["p0000"], T0 + 2_000, "", {"p0000": 9})  # older
    assert state.map.by_id("p0000").node_id == "b"  # type: ignore[union-attr]
    for node_id in ("a", "b", "c"):  # the wait is over: a copy coming later does not move it
        state.heartbeat(node_id, [], T0 + 16_001)
    with caplog.at_level(logging.WARNING, logger="keyspan.services.control.cluster"):
        state.register("d", "127.0.0.1:1004", "", 1, ["p0000"], T0 + 16_002, "", {"p0000": 2 * 10**15})
    assert state.map.by_id("p0000").node_id == "b"  # type: ignore[union-attr]
    [said] = [r for r in caplog.records if "newer copy of a partition than its owner" in r.getMessage()]
    assert "keyspan admin repair p0000 --to d --force" in said.getMessage()


def test_a_control_restarted_during_the_recovery_wait_goes_on_waiting(tmp_path: Path) -> None:
    state = make_state(tmp_path, min_nodes=2)
    join(state, "a", T0, hosted=("p0000", "p0001"))
    join(state, "b", T0 + 1_000)  # a recovery: p0002 and p0003 wait for their nodes
    state.store.close()
    again = ClusterState(
        ControlStore(tmp_path / "control.db"), Liveness(suspect_after_s=3, down_after_s=6), 2
    )
    join(again, "a", T0 + 2_000, hosted=("p0000", "p0001"))
    join(again, "b", T0 + 2_000)
    assert again.map.by_id("p0002").node_id == ""  # type: ignore[union-attr]  # still waiting
    for node_id in ("a", "b"):
        again.heartbeat(node_id, [], T0 + 1_000 + 15_001)  # the wait is over
    assert again.map.by_id("p0002").node_id in ("a", "b")  # type: ignore[union-attr]
    again.store.close()


def test_a_migration_that_fails_halfway_leaves_the_database_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from keyspan.services.control import store as store_module

    def crashes_after_one_column(db: object) -> None:
        db["partitions"].add_column("revision_floor", int, not_null_default=0)  # type: ignore[index]
        raise OSError("the process died here")

    real = list(store_module.MIGRATIONS)
    monkeypatch.setattr(store_module, "MIGRATIONS", [*real[:2], crashes_after_one_column])
    with pytest.raises(OSError):
        ControlStore(tmp_path / "control.db")
    monkeypatch.setattr(store_module, "MIGRATIONS", real)
    store = ControlStore(tmp_path / "control.db")  # "duplicate column name" before
    assert store.schema_version() == len(real)
    store.close()


def test_a_pause_between_the_two_clock_reads_is_not_taken_for_a_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from keyspan.services.control import cluster

    running, wall_ns = [1000.0], [time.time_ns()]
    monkeypatch.setattr(cluster, "running_clock", lambda: running[0])
    monkeypatch.setattr(time, "time_ns", lambda: wall_ns[0])
    state = make_state(tmp_path)
    state.register("a", "127.0.0.1:1001", "", 1, [])
    heard = state.store.node("a")["last_heartbeat_ms"]  # type: ignore[index]

    def read_after_a_pause() -> float:  # control stopped 5 s right after reading the system clock
        wall_ns[0] += 5 * 10**9
        running[0] += 5
        return running[0]

    monkeypatch.setattr(cluster, "running_clock", read_after_a_pause)
    running[0] += 1
    wall_ns[0] += 10**9
    state.tick()
    assert state.store.node("a")["last_heartbeat_ms"] == heard  # type: ignore[index]
