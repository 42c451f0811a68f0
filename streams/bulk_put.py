"""The server side of BulkPut: validate a sorted batch, commit its prefix in one partition."""

from __future__ import annotations

from collections.abc import AsyncIterator

from keyspan.storage.errors import InvalidArgumentError
from keyspan.storage.limits import MAX_BULK_ENTRIES, Limits, expiry_ms
from keyspan.storage.mutations import BulkRow
from keyspan.storage.shardset import ShardSet, now_ms
from keyspan.v1 import kv_pb2


def rows_of(entries: list[kv_pb2.Entry], limits: Limits) -> list[BulkRow]:
    """Validate a batch (sorted, no duplicates, keys and values within limits) as rows."""
    if len(entries) > MAX_BULK_ENTRIES:
        raise InvalidArgumentError(
            "entries", f"has {len(entries)} entries; the limit is {MAX_BULK_ENTRIES} per batch"
        )
    now = now_ms()
    rows: list[BulkRow] = []
    previous = b""
    max_key, max_value = limits.max_key_bytes, limits.max_value_bytes
    for i, e in enumerate(entries):
        key, value = e.key, e.value
        if not 0 < len(key) <= max_key:
            limits.key(key, f"entries[{i}].key")
        if len(value) > max_value:
            limits.value(value, f"entries[{i}].value")
        if key <= previous:
            rule = (
                "is a duplicate of the entry before"
                if key == previous
                else "sorts before the entry before; batches must be sorted by key"
            )
            raise InvalidArgumentError(f"entries[{i}].key", rule)
        previous = key
        expires = expiry_ms(e.ttl_s, now, f"entries[{i}].ttl_s") if e.ttl_s else None
        rows.append(BulkRow(key, value, e.json, expires))
    return rows


async def serve_bulk_put(
    shards: ShardSet, requests: AsyncIterator[kv_pb2.BulkPutRequest], limits: Limits
) -> AsyncIterator[kv_pb2.BulkPutResponse]:
    """Answer each batch with how many of its first entries were committed."""
    async for request in requests:
        if not request.entries:
            yield kv_pb2.BulkPutResponse(accepted=0)
            continue
        rows = rows_of(list(request.entries), limits)
        accepted, next_key = await shards.bulk_put(rows)
        response = kv_pb2.BulkPutResponse(accepted=accepted)
        if next_key is not None:
            response.next_key = next_key
        yield response
