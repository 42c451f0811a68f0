"""Make a node's ShardSet host exactly the partitions the map assigns to it."""

from __future__ import annotations

import asyncio
import logging

from keyspan.storage.errors import KeyspanError, UnavailableError, WrongPartitionError
from keyspan.storage.shardset import ShardSet
from keyspan.streams.partition_map import PartitionMap

log = logging.getLogger(__name__)


async def reconcile(
    shards: ShardSet, node_id: str, partition_map: PartitionMap, failures: dict[str, str] | None = None
) -> tuple[list[str], list[str]]:
    """Close partitions no longer ours (their files stay), open or create the ones assigned.

    Answers (hosted partition ids, "id: reason" for each that failed to open); `failures`,
    when given, is set to {partition id: reason} of those, for missing_key_error.
    """
    owned = partition_map.owned_by(node_id)
    wanted = {e.partition_id: e.range for e in owned}
    floors = {e.partition_id: e.revision_floor for e in owned}
    for p in shards.partitions:
        if wanted.get(p.id) != p.range:
            log.info("closing partition", extra={"partition_id": p.id, "map_version": partition_map.version})
            await asyncio.to_thread(shards.drop_partition, p.id)
    held = {p.id for p in shards.partitions}
    failed = []
    reasons: dict[str, str] = {}
    for partition_id, key_range in wanted.items():
        if partition_id in held:
            continue
        try:
            await asyncio.to_thread(shards.add_partition, partition_id, key_range, floors[partition_id])
        except KeyspanError as err:
            log.error("cannot open partition", extra={"partition_id": partition_id, "error": str(err)})
            failed.append(f"{partition_id}: {err}")
            reasons[partition_id] = str(err)
    if failures is not None:
        failures.clear()
        failures.update(reasons)
    return [p.id for p in shards.partitions], failed


def missing_key_error(
    node_id: str, partition_map: PartitionMap, key: bytes, failures: dict[str, str] | None = None
) -> WrongPartitionError:
    """The error for a key this node does not host: the owner from the node's map, or
    UNAVAILABLE when the map says this node owns it: still being opened, or failed to open
    (`failures`, from reconcile: the reason goes to the client, as it stays until fixed)."""
    if not len(partition_map):
        return WrongPartitionError(key)
    entry = partition_map.locate(key)
    if entry.node_id == node_id:
        why = (failures or {}).get(entry.partition_id)
        if why is not None:
            raise UnavailableError(f"partition {entry.partition_id} failed to open on this node: {why}", 5.0)
        raise UnavailableError(f"partition {entry.partition_id} is opening on this node")
    return entry.wrong_partition(key, partition_map.version)
