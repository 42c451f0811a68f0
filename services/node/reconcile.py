"""Make a node's ShardSet host exactly the partitions the map assigns to it."""

from __future__ import annotations

import asyncio
import logging

from keyspan.storage.errors import KeyspanError, UnavailableError, WrongPartitionError
from keyspan.storage.shardset import ShardSet
from keyspan.streams.partition_map import PartitionMap

log = logging.getLogger(__name__)


async def reconcile(
    shards: ShardSet, node_id: str, partition_map: PartitionMap
) -> tuple[list[str], list[str]]:
    """Close partitions no longer ours (their files stay), open or create the ones assigned.

    Answers (hosted partition ids, "id: reason" for each that failed to open).
    """
    wanted = {e.partition_id: e.range for e in partition_map.owned_by(node_id)}
    for p in shards.partitions:
        if wanted.get(p.id) != p.range:
            log.info("closing partition", extra={"partition_id": p.id, "map_version": partition_map.version})
            await asyncio.to_thread(shards.drop_partition, p.id)
    held = {p.id for p in shards.partitions}
    failed = []
    for partition_id, key_range in wanted.items():
        if partition_id in held:
            continue
        try:
            await asyncio.to_thread(shards.add_partition, partition_id, key_range)
        except KeyspanError as err:
            log.error("cannot open partition", extra={"partition_id": partition_id, "error": str(err)})
            failed.append(f"{partition_id}: {err}")
    return [p.id for p in shards.partitions], failed


def missing_key_error(node_id: str, partition_map: PartitionMap, key: bytes) -> WrongPartitionError:
    """The error for a key this node does not host: the owner from the node's map, or
    UNAVAILABLE when the map says this node owns it and it is still being opened."""
    if not len(partition_map):
        return WrongPartitionError(key)
    entry = partition_map.locate(key)
    if entry.node_id == node_id:
        raise UnavailableError(f"partition {entry.partition_id} is opening on this node")
    return entry.wrong_partition(key, partition_map.version)
