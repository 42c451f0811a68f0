"""batch_of: a good batch is checked column by column; a bad one names its first fault."""

from __future__ import annotations

import pytest

from keyspan.storage.errors import KeyspanError
from keyspan.storage.limits import Limits
from keyspan.storage.mutations import Bulk, BulkRow
from keyspan.streams.bulk_put import batch_of
from keyspan.v1 import kv_pb2

LIMITS = Limits(max_value_bytes=8)


def entries(*specs: tuple[bytes, bytes] | kv_pb2.Entry) -> list[kv_pb2.Entry]:
    return [s if isinstance(s, kv_pb2.Entry) else kv_pb2.Entry(key=s[0], value=s[1]) for s in specs]


def test_a_good_batch_becomes_columns_with_expiries_only_where_a_ttl_was_given() -> None:
    batch = batch_of(
        entries((b"a", b"1"), kv_pb2.Entry(key=b"b", value=b"{}", json=True, ttl_s=60), (b"c", b"3")), LIMITS
    )
    rows = list(batch.rows())
    assert rows[0] == BulkRow(b"a", b"1", False, None) and rows[2] == BulkRow(b"c", b"3", False, None)
    assert rows[1][:3] == (b"b", b"{}", True) and rows[1].expires_at_ms is not None
    # A batch of plain bytes values with no TTL (the usual one) carries no json or expiry column.
    assert batch_of(entries((b"a", b"1"), (b"b", b"2")), LIMITS) == Bulk((b"a", b"b"), (b"1", b"2"))
    assert len(batch_of([], LIMITS)) == 0


def test_a_batch_prefix_and_rows_keep_every_column() -> None:
    rows = [BulkRow(b"a", b"1"), BulkRow(b"b", b"{}", json=True), BulkRow(b"c", b"3", expires_at_ms=7)]
    batch = Bulk.of_rows(rows)
    assert list(batch.rows()) == rows
    assert list(batch.prefix(2).rows()) == rows[:2] and batch.prefix(3) is batch
    assert Bulk.of_rows(rows[:1]) == Bulk((b"a",), (b"1",))  # no json, no expiry: no columns


@pytest.mark.parametrize(
    ("batch", "field", "rule"),
    [
        (entries((b"a", b"1"), (b"c", b"2"), (b"b", b"3")), "entries[2].key", "sorted"),
        (entries((b"a", b"1"), (b"a", b"2")), "entries[1].key", "duplicate"),
        (entries((b"a", b"1"), (b"", b"2")), "entries[1].key", "empty"),
        (entries((b"a", b"1"), (b"b", b"123456789")), "entries[1].value", "8"),
        # The first fault by position wins, whatever rule it breaks.
        (
            entries(kv_pb2.Entry(key=b"a", ttl_s=-1), (b"c", b"2"), (b"b", b"3")),
            "entries[0].ttl_s",
            "between",
        ),
        (
            entries((b"b", b"1"), (b"a", b"2"), kv_pb2.Entry(key=b"c", ttl_s=-1)),
            "entries[1].key",
            "sorted",
        ),
    ],
)
def test_a_bad_batch_names_its_first_bad_entry(batch: list[kv_pb2.Entry], field: str, rule: str) -> None:
    with pytest.raises(KeyspanError) as caught:
        batch_of(batch, LIMITS)
    assert caught.value.field == field and rule in str(caught.value)  # type: ignore[attr-defined]
