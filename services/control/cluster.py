"""The cluster as control sees it: nodes, partitions, the map and its version.

All decisions live here, free of gRPC and of the event loop, with the clock passed in, so
tests drive them with a fake clock:

- bootstrap: a new cluster gets its partitions (split points given, or uniform over the
  first key byte), all unassigned; they are spread over the schedulable nodes, least
  loaded first, as soon as `min_nodes` nodes are up. After that, any unassigned partition
  (a force-removed owner's) goes to the least loaded schedulable node at once. Partitions
  never move by themselves: moving data online is a separate operation.
- liveness: a node is UP while its heartbeats are fresh and its probe is not failing,
  SUSPECT after `suspect_after_s` without one (or while its probe fails), DOWN after
  `down_after_s`. Only DOWN changes the map: its partitions become UNAVAILABLE.
- the map's version grows by one whenever the map (owners, addresses, states) changes;
  the ranges are checked to tile the key space every time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from keyspan.services.common.clock import running_clock
from keyspan.services.control.store import ControlStore
from keyspan.services.control.store import now_ms as wall_ms
from keyspan.storage.errors import FailedPreconditionError, KeyspanError, NotFoundError
from keyspan.storage.keys import KeyRange
from keyspan.storage.shardset import ranges_from_split_points
from keyspan.streams.partition_map import (
    ASSIGNED,
    SERVING,
    UNASSIGNED,
    UNAVAILABLE,
    MapEntry,
    PartitionMap,
    check_tiling,
)

log = logging.getLogger(__name__)
# A difference between how far the system clock and the running clock moved between two
# calls above which the system clock is taken to have stepped (_clock). The two are read
# together; NTP's slewing moves them apart by 0.5 ms a second at most.
CLOCK_STEP_MS = 500
UP, SUSPECT, DOWN = "up", "suspect", "down"
# A map version a node or watcher reports is taken up to this (a bogus one must not push
# the count past what SQLite stores).
MAX_OBSERVED_VERSION = 1 << 53


class NotAllowedError(FailedPreconditionError):
    """An operator change that is refused now; `reason` is a stable ErrorInfo reason."""


class UnknownError(NotFoundError):
    def __init__(self, what: str, name: str) -> None:
        KeyspanError.__init__(self, f"no {what} {name!r}")
        self.key = name.encode()


@dataclass(frozen=True, kw_only=True)
class Liveness:
    suspect_after_s: float = 3.0
    down_after_s: float = 6.0


def uniform_split_points(partitions: int) -> list[bytes]:
    """Split points that cut the key space evenly by its first byte."""
    if not 1 <= partitions <= 256:
        raise KeyspanError(f"partitions: {partitions} must be between 1 and 256")
    return [bytes([256 * i // partitions]) for i in range(1, partitions)]


class ClusterState:
    def __init__(
        self, store: ControlStore, liveness: Liveness, min_nodes: int = 1, recovery_wait_s: float = 15.0
    ) -> None:
        self.store, self.liveness, self.min_nodes = store, liveness, min_nodes
        self.recovery_wait_s = recovery_wait_s
        self._window_from_ms = 0  # when this control started: see restarted()
        self._now_ms = 0  # the latest time a register, heartbeat or tick was given
        self._ticked_at = running_clock()  # this process's clock at the last tick
        self._ticked_ms = 0  # the time given to the last tick
        # (from_ms, to_ms) of recent stretches this control did not run (stalls): time in
        # them does not count against a node's heartbeats.
        self._stalls: list[tuple[int, int]] = []
        # (system clock in ms, running clock in s) at the last call that read them: _clock
        self._clock_read: tuple[int, float] | None = None
        self._registered_ms: dict[str, int] = {}  # when each node last registered with this control
        # When a new control.db's first assignment found nodes holding partitions on their
        # disks (its cluster existed before): for recovery_wait_s from then, a partition no
        # registered node holds waits for one that may, rather than going to a node empty.
        # Kept in control.db: a control restarted during the wait goes on waiting.
        recovering = store.get_meta("recovering_from_ms")
        self._recovering_from_ms: int | None = None if recovering is None else int(recovering)
        # The partitions each node said it holds on its disk (its registration), with
        # their copies' revisions, so that a partition with no owner goes back to the node
        # that has its newest copy: after a control.db is lost, or a node forgotten with
        # remove --force rejoins.
        self._on_disk: dict[str, dict[str, int]] = {}
        self.map = PartitionMap()
        self._rebuild_map(initial=True)

    # -- creation and restart --------------------------------------------------------------

    def create(self, split_points: Sequence[bytes]) -> bool:
        """Create the partitions of a new cluster; False when it exists already."""
        if self.store.partitions():
            return False
        ranges = ranges_from_split_points(split_points)
        check_tiling(ranges)
        rows = [
            {"partition_id": f"p{i:04d}", "start": r.start, "end": r.end, "node_id": "", "acked": 0}
            for i, r in enumerate(ranges)
        ]
        self.store.insert_partitions(rows)
        self.store.log("create", partitions=len(rows))
        self._rebuild_map()
        return True

    def restarted(self, now_ms: int | None = None) -> None:
        """After a control restart, give every live node a fresh heartbeat window: its
        liveness counts from now, while last_heartbeat_ms keeps when its last heartbeat
        came (it was overwritten, and `admin nodes` showed a node dead for seconds as
        heard from just now)."""
        self._window_from_ms = self._clock(now_ms)  # also the clocks' first read: see _clock

    # -- the map ---------------------------------------------------------------------------

    def _entries(self) -> list[MapEntry]:
        nodes = {n["node_id"]: n for n in self.store.nodes()}
        out = []
        for p in self.store.partitions():
            owner = nodes.get(p["node_id"])
            if owner is None:
                state, address = UNASSIGNED, ""
            elif owner["status"] == DOWN:
                state, address = UNAVAILABLE, owner["address"]
            else:
                state, address = (SERVING if p["acked"] else ASSIGNED), owner["address"]
            out.append(
                MapEntry(
                    p["partition_id"],
                    KeyRange(p["start"], p["end"]),
                    (owner and p["node_id"]) or "",
                    address,
                    state,
                    p["revision_floor"],
                )
            )
        return out

    def observe_version(self, seen: int) -> bool:
        """A node's heartbeat or a watcher says it holds map version `seen`. A control
        whose versions are behind it (started on a new control.db: they start over at 1)
        jumps past it: nodes and gateways drop a map not newer than theirs, and held the
        old one until the new control's count passed it."""
        if seen <= self.map.version or seen > MAX_OBSERVED_VERSION or not self.map.entries:
            return False
        log.warning(
            "a node or watcher holds a newer map version than this control: continuing from it",
            extra={"map_version": self.map.version, "seen": seen},
        )
        self.store.set_meta("map_version", seen)
        return self._rebuild_map(force=True)

    def _rebuild_map(self, initial: bool = False, force: bool = False) -> bool:
        """Recompute the map; bump and persist the version when it changed (or `force`)."""
        entries = self._entries()
        if not entries:
            return False
        check_tiling([e.range for e in entries])
        version = int(self.store.get_meta("map_version", 0))
        if initial and self.store.get_meta("map_fingerprint") == _fingerprint(entries):
            self.map = PartitionMap(entries, version)
            return False
        if not initial and not force and _fingerprint(entries) == _fingerprint(self.map.entries):
            return False
        version += 1
        self.store.set_meta("map_version", version)
        self.store.set_meta("map_fingerprint", _fingerprint(entries))
        self.map = PartitionMap(entries, version)
        log.info("map version", extra={"map_version": version})
        return True

    # -- nodes -----------------------------------------------------------------------------

    def register(
        self,
        node_id: str,
        address: str,
        probe_address: str,
        capacity: int,
        hosted: Sequence[str],
        now_ms: int | None = None,
        disk_id: str = "",
        revisions: dict[str, int] | None = None,
    ) -> bool:
        """A node's registration; `revisions` gives its hosted copies' revisions."""
        now_ms = self._clock(now_ms)
        self._now_ms = max(self._now_ms, now_ms)
        known = self.store.node(node_id)
        if known is not None and known["disk_id"] and not disk_id:
            # A node built before disk ids cannot say which data dir it runs on: one started
            # on an empty dir under a known id served that node's partitions empty (a
            # rollback of one node in a rolling upgrade), and handed out etags again.
            raise NotAllowedError(
                "DISK_MISMATCH",
                f"node {node_id} registered before from disk {known['disk_id']}, and this process "
                "sends no disk id (a keyspan older than this control): run the same keyspan "
                "version as control on the node, or forget it with "
                f"`keyspan admin remove {node_id} --force`",
            )
        if known is not None and known["disk_id"] and disk_id and known["disk_id"] != disk_id:
            raise NotAllowedError(
                "DISK_MISMATCH",
                f"node {node_id} (last at {known['address']}) registered before from another data "
                f"dir (disk {known['disk_id']}, this one {disk_id}): give every node its own --id; "
                "a node's partitions are on the disk it registered from, so start it on that data "
                f"dir (or a copy), or forget it with `keyspan admin remove {node_id} --force`",
            )
        row: dict[str, Any] = {
            "node_id": node_id,
            "address": address,
            "probe_address": probe_address,
            "capacity": max(1, capacity),
            "status": UP,
            "last_heartbeat_ms": now_ms,
        }
        if disk_id:
            row["disk_id"] = disk_id
        self._on_disk[node_id] = {p: (revisions or {}).get(p, 0) for p in hosted}
        self._registered_ms[node_id] = now_ms
        if known is None:
            row |= {
                "cordoned": 0,
                "draining": 0,
                "probe": "",
                "entries": 0,
                "bytes": 0,
                "registered_ms": now_ms,
            }
            self.store.log("join", node_id=node_id, address=address)
        self.store.upsert_node(row)
        self._take_over_older_copies(node_id)
        self._assign_unassigned()
        self._mark_hosted(node_id, hosted)
        return self._settle()

    def _take_over_older_copies(self, node_id: str) -> None:
        """During a new control.db's recovery wait, a node that registers with a newer copy
        of a partition already given to a node with an older one takes it over: the
        first holder to register got it, perhaps the copy a repair had left behind, and
        the newer copy's acknowledged writes read as gone."""
        recovering = self._recovering()
        rows = self.partition_rows()
        for partition_id, revision in self._on_disk[node_id].items():
            row = rows.get(partition_id)
            if row is None or not row["node_id"] or row["node_id"] == node_id or revision <= row["revision"]:
                continue
            if not recovering:  # too late to take it over unasked: say so, once a registration
                log.warning(
                    "a node holds a newer copy of a partition than its owner; it is not served "
                    f"(`keyspan admin repair {partition_id} --to {node_id} --force` would serve it)",
                    extra={"partition_id": partition_id, "node_id": node_id, "owner": row["node_id"],
                           "revision": revision, "owner_revision": row["revision"]},
                )  # fmt: skip
                continue
            log.warning(
                "a newer copy registered: the partition goes to its node",
                extra={"partition_id": partition_id, "from": row["node_id"], "to": node_id,
                       "revision": revision, "was": row["revision"]},
            )  # fmt: skip
            self.store.update_partition(partition_id, node_id=node_id, acked=0, revision=revision)
            self.store.log("take_over", partition_id=partition_id, node_id=node_id)

    def _recovering(self) -> bool:
        return (
            self._recovering_from_ms is not None
            and self._now_ms - self._recovering_from_ms < self.recovery_wait_s * 1000
        )

    def _mark_hosted(self, node_id: str, hosted: Sequence[str]) -> None:
        held = set(hosted)
        for p in self.store.partitions():
            if p["node_id"] == node_id:
                acked = int(p["partition_id"] in held)
                if acked != p["acked"]:
                    self.store.update_partition(p["partition_id"], acked=acked)

    def heartbeat(
        self,
        node_id: str,
        stats: Sequence[tuple[str, int, int, int]],
        now_ms: int | None = None,
        disk_id: str = "",
    ) -> bool:
        """A heartbeat with (partition_id, entries, bytes, revision) per hosted partition, from the
        process that registered node_id from `disk_id`. NotAllowedError when control no
        longer knows that process as the node: removed (remove --force), or the id
        registered again from another disk. Its session went on, and it served the
        partitions assigned to its id beside the new process."""
        node = self.store.node(node_id)
        if node is None:
            raise NotAllowedError(
                "NODE_REMOVED", f"node {node_id} was removed from the cluster: stop this process"
            )
        if disk_id and node["disk_id"] and node["disk_id"] != disk_id:
            raise NotAllowedError(
                "DISK_MISMATCH",
                f"node {node_id} registered again from another data dir ({node['address']}): "
                "this process is not that node any more; stop it",
            )
        now_ms = self._clock(now_ms)
        entries = sum(s[1] for s in stats)
        size = sum(s[2] for s in stats)
        # Every second from every node: one commit for the node and its partitions, not one
        # each (a busy node's partitions all change their counts between two heartbeats).
        with self.store.transaction():
            self.store.upsert_node(
                {"node_id": node_id, "last_heartbeat_ms": now_ms, "entries": entries, "bytes": size}
            )
            rows = self.partition_rows()
            for partition_id, n, b, revision in stats:
                row = rows.get(partition_id)
                counts = (n, b, revision)
                if row is not None and row["node_id"] == node_id and counts != _counts(row):
                    self.store.update_partition(partition_id, entries=n, bytes=b, revision=revision)
        return self.tick(now_ms)

    def ack(self, node_id: str, hosted: Sequence[str]) -> bool:
        if self.store.node(node_id) is None:
            return False
        self._mark_hosted(node_id, hosted)
        return self._settle()

    def probe(self, node_id: str, status: str, now_ms: int | None = None) -> bool:
        if self.store.node(node_id) is None:
            return False
        self.store.upsert_node({"node_id": node_id, "probe": status})
        return self.tick(now_ms)

    def status_of(self, node: dict[str, Any], now_ms: int) -> str:
        heard_ms = node["last_heartbeat_ms"] or 0
        if node["status"] != DOWN:  # a live node's window starts again with control
            heard_ms = max(heard_ms, self._window_from_ms)
        stalled_ms = sum(max(0, min(end, now_ms) - max(start, heard_ms)) for start, end in self._stalls)
        age_s = (now_ms - heard_ms - stalled_ms) / 1000
        if age_s > self.liveness.down_after_s:
            return DOWN
        if age_s > self.liveness.suspect_after_s or node["probe"] in ("NOT_SERVING", "UNREACHABLE"):
            return SUSPECT
        return UP

    def tick(self, now_ms: int | None = None) -> bool:
        """Apply liveness transitions; True when the map changed."""
        now_ms = self._clock(now_ms)
        self._now_ms = max(self._now_ms, now_ms)
        ticked_at, self._ticked_at = self._ticked_at, running_clock()
        ticked_ms, self._ticked_ms = self._ticked_ms, now_ms
        stall_s = self._ticked_at - ticked_at
        if stall_s > self.liveness.suspect_after_s / 2 and ticked_ms:
            # This process did not run (paused, its host frozen): the heartbeats that came
            # meanwhile wait unread, and every node would look down. That stretch does not
            # count against any node; a node dead before it still goes down in time.
            log.warning("control was stalled: that time does not count against the nodes",
                        extra={"stall_s": round(stall_s, 3)})  # fmt: skip
            keep_from = now_ms - int(self.liveness.down_after_s * 1000) * 4
            self._stalls = [(a, b) for a, b in self._stalls if b > keep_from] + [(ticked_ms, now_ms)]
        for n in self.store.nodes():
            status = self.status_of(n, now_ms)
            if status != n["status"]:
                self.store.upsert_node({"node_id": n["node_id"], "status": status})
                self.store.log("status", node_id=n["node_id"], before=n["status"], after=status)
                extra = {"node_id": n["node_id"], "status": status, "was": n["status"]}
                log.log(self._status_level(n, status, now_ms), "node status", extra=extra)
        return self._settle()

    def _status_level(self, node: dict[str, Any], status: str, now_ms: int) -> int:
        """INFO for a node back up, and for one whose probe says NOT_SERVING within
        --suspect-after-s of registering (it reconciles with its map first: every start
        logged a warning); WARNING otherwise."""
        starting = (
            now_ms - self._registered_ms.get(node["node_id"], 0) <= self.liveness.suspect_after_s * 1000
        )
        if status == UP or (status == SUSPECT and starting and node["probe"] == "NOT_SERVING"):
            return logging.INFO
        return logging.WARNING

    def _clock(self, now_ms: int | None) -> int:
        """The time of a call, in ms since the epoch: `now_ms` when given (tests drive a
        fake clock), else the system clock's, read here on the store's thread beside the
        running clock. A step of the system clock between two calls (NTP, `date -s`) is
        followed: the times kept so far move with it (see _shift)."""
        if now_ms is not None:
            return now_ms
        now_ms, running, again_ms = wall_ms(), running_clock(), wall_ms()
        if again_ms - now_ms > CLOCK_STEP_MS // 50:  # paused between the reads: not a step
            return now_ms
        if self._clock_read is not None:
            wall_before, running_before = self._clock_read
            step_ms = (now_ms - wall_before) - round((running - running_before) * 1000)
            if abs(step_ms) > CLOCK_STEP_MS:
                self._shift(step_ms)
        self._clock_read = (now_ms, running)
        return now_ms

    def _shift(self, step_ms: int) -> None:
        """Move every time this control keeps for liveness and the recovery wait by a step
        of its system clock, so they read on the clock as it is now. Read as they were, a
        step forward of more than --down-after-s turned every node down at the next tick,
        and a step back kept a silent node up for as long as the step. A step taken while
        control is down is not seen."""
        log.warning("control's system clock stepped: the heartbeat times it keeps move with it",
                    extra={"step_s": step_ms / 1000})  # fmt: skip
        recovering = None if self._recovering_from_ms is None else self._recovering_from_ms + step_ms
        self.store.shift_times(step_ms, recovering)  # one commit; a failure leaves all as it was
        self._recovering_from_ms = recovering
        self._window_from_ms += step_ms if self._window_from_ms else 0
        self._ticked_ms += step_ms if self._ticked_ms else 0
        self._now_ms += step_ms if self._now_ms else 0
        self._stalls = [(start + step_ms, end + step_ms) for start, end in self._stalls]
        self._registered_ms = {node_id: ms + step_ms for node_id, ms in self._registered_ms.items()}

    def _schedulable(self) -> list[dict[str, Any]]:
        return [
            n for n in self.store.nodes() if n["status"] == UP and not n["cordoned"] and not n["draining"]
        ]

    def _settle(self) -> bool:
        """Assign what can be assigned, then rebuild the map."""
        self._assign_unassigned()
        return self._rebuild_map()

    def _assign_unassigned(self) -> None:
        nodes = self._schedulable()
        known = {n["node_id"] for n in self.store.nodes()}
        orphans = [p for p in self.store.partitions() if p["node_id"] not in known]
        if not orphans or not nodes:
            return
        if not self.store.get_meta("bootstrapped", False):
            if len(nodes) < self.min_nodes:
                return
            self.store.set_meta("bootstrapped", True)
            if any(self._on_disk.values()):
                self._recovering_from_ms = self._now_ms
                self.store.set_meta("recovering_from_ms", self._now_ms)
                log.warning(
                    "a new control.db, and nodes hold partitions on their disks: partitions none "
                    "of them holds wait for their node before they are assigned empty",
                    extra={"recovery_wait_s": self.recovery_wait_s},
                )
        recovering = self._recovering()
        load = {n["node_id"]: 0 for n in nodes}
        capacity = {n["node_id"]: n["capacity"] or 1 for n in nodes}
        for p in self.store.partitions():
            if p["node_id"] in load:
                load[p["node_id"]] += 1
        for p in orphans:
            pid = p["partition_id"]
            copies = {n: self._on_disk[n][pid] for n in load if pid in self._on_disk.get(n, {})}
            holders = list(copies)
            if not holders and recovering:  # its node may register yet: not given away empty
                continue
            if holders:
                # The newest copy: a repair leaves the older one on its old owner's disk,
                # and a copy that the repair's floor raised is far past it.
                newest = max(copies.values())
                holders = [n for n in holders if copies[n] == newest]
            owner = min(holders or load, key=lambda node_id: (load[node_id] / capacity[node_id], node_id))
            load[owner] += 1
            changes: dict[str, Any] = {"node_id": owner, "acked": 0}
            if holders:
                changes["revision"] = copies[owner]
            elif self._recovering_from_ms is not None:
                # given out empty after the recovery wait: its copy may have handed out
                # etags that this control.db never heard of
                changes["revision_floor"] = _next_floor(p)
            self.store.update_partition(p["partition_id"], **changes)
            self.store.log("assign", partition_id=p["partition_id"], node_id=owner)

    # -- operator changes ------------------------------------------------------------------

    def _require_node(self, node_id: str) -> dict[str, Any]:
        node = self.store.node(node_id)
        if node is None:
            raise UnknownError("node", node_id)
        return node

    def set_flags(self, node_id: str, **flags: int) -> dict[str, Any]:
        self._require_node(node_id)
        self.store.upsert_node({"node_id": node_id, **flags})
        self.store.log("flags", node_id=node_id, **flags)
        self._settle()
        return self._require_node(node_id)

    def remove(self, node_id: str, force: bool) -> list[str]:
        self._require_node(node_id)
        owned = [e.partition_id for e in self.map.owned_by(node_id)]
        if owned and not force:
            raise NotAllowedError(
                "NODE_OWNS_PARTITIONS",
                f"node {node_id} owns {len(owned)} partitions ({', '.join(owned)}); "
                "repair them elsewhere first, or remove with --force",
            )
        self.store.delete_node(node_id)
        rows = self.partition_rows()
        for partition_id in owned:  # the next owner's copy goes on past the etags they gave
            floor = _next_floor(rows[partition_id])
            self.store.update_partition(partition_id, node_id="", acked=0, revision_floor=floor)
        self.store.log("remove", node_id=node_id, force=force, partitions=owned)
        self._settle()
        return owned

    def repair(self, partition_id: str, to_node_id: str, force: bool = False) -> None:
        entry = self.map.by_id(partition_id)
        if entry is None:
            raise UnknownError("partition", partition_id)
        target = self._require_node(to_node_id)
        row = self.partition_rows()[partition_id]
        if entry.node_id == to_node_id and entry.state == SERVING:  # a new map version for nothing
            raise NotAllowedError(
                "ALREADY_SERVING",
                f"partition {partition_id} is already served by {to_node_id}: nothing to repair",
            )
        owner = self.store.node(entry.node_id) if entry.node_id else None
        # Refused whatever the count says: it is as old as the owner's last heartbeat, so an
        # empty partition written a moment ago was reassigned, and its writes hidden. A
        # SUSPECT owner has only missed heartbeats; it stays in the map, serving.
        if (
            not force
            and owner is not None
            and entry.node_id != to_node_id
            and owner["status"] in (UP, SUSPECT)
        ):
            count = (
                f"{row['entries']:,} entries at its last heartbeat"
                if row["entries"]
                else "no entries at its last heartbeat, but it may have written since"
            )
            raise NotAllowedError(
                "PARTITION_HAS_DATA",
                f"partition {partition_id} is on node {entry.node_id}, which is {owner['status']}, with "
                f"{count}: {to_node_id} would serve it from its own disk (empty "
                "if it never held it), since moving data online is not built, and what is written "
                "there stays on its disk if you repair back. Repair is for a partition whose node "
                "is lost (down); use --force to reassign anyway",
            )
        if target["status"] != UP or target["cordoned"] or target["draining"]:
            raise NotAllowedError(
                "NODE_NOT_SCHEDULABLE",
                f"node {to_node_id} is {target['status']}"
                + (", cordoned" if target["cordoned"] else "")
                + (", draining" if target["draining"] else ""),
            )
        # The counts were the old owner's copy; the new owner's heartbeats report its own.
        # Its copy continues from a revision above any the partition reached: _next_floor.
        self.store.update_partition(
            partition_id, node_id=to_node_id, acked=0, entries=0, bytes=0, revision=0,
            revision_floor=_next_floor(row),
        )  # fmt: skip
        self.store.log("repair", partition_id=partition_id, node_id=to_node_id)
        self._settle()

    def partition_rows(self) -> dict[str, dict[str, Any]]:
        return {p["partition_id"]: p for p in self.store.partitions()}


# What a partition's copy may have written past the revision its owner last reported
# (a heartbeat is a second old; a node cut off from control writes on for as long as it
# is): a billion writes, days of this store's fastest partition.
REVISION_MARGIN = 10**9


def _next_floor(row: dict[str, Any]) -> int:
    """The revision a partition's next copy continues from, above any etag a copy of it can
    have handed out: past the last floor and the last reported revision by REVISION_MARGIN,
    and no lower than the clock in ms x 1000 (a revision counts writes, ~4,000 a second at
    most here; the clock adds 1,000,000 a second). Either bound alone holds the other's
    failure: a control clock set back, or a copy whose revisions control never heard of
    (a control.db lost and started afresh)."""
    reached = max(row["revision_floor"], row["revision"]) + REVISION_MARGIN
    return max(reached, time.time_ns() // 1_000_000 * 1000)


def _counts(row: dict[str, Any]) -> tuple[int, int, int]:
    return row["entries"], row["bytes"], row["revision"]


def _fingerprint(entries: Sequence[MapEntry]) -> str:
    return repr(
        [
            (e.partition_id, e.range.start, e.range.end, e.node_id, e.address, e.state, e.revision_floor)
            for e in entries
        ]
    )
