"""A shard's schema and the SQL statements its writes and reads run (storage/shard.py).

Kept apart so the benchmark's raw-SQLite limits (integration/perf/raw_sqlite.py) run the
very statements a shard does.
"""

from __future__ import annotations

from collections.abc import Sequence

import apsw

# `entries` is a rowid table with a unique index on key, not a WITHOUT ROWID table keyed
# by it. A WITHOUT ROWID row keeps at most ~1 KB in its 4 KiB B-tree page, and the rest
# of a bigger row goes to an overflow page of its own: a 1.1 KB value took 4.7 KB on disk
# (4.2x; 2.3x at 2 KB), and such loads and point reads ran 4x and 3.5x slower. A rowid
# row keeps up to ~4 KB in its page, and fills its overflow pages: 1.03-1.4x at any
# size. The price is a second B-tree (the key index) for small values: ~1 us more a
# point read in a tight loop. Shards made with the WITHOUT ROWID table (before
# 2026-11-28) keep it; every statement here serves both.
SCHEMA = """
CREATE TABLE IF NOT EXISTS entries(
    key BLOB NOT NULL UNIQUE,
    value BLOB NOT NULL,
    json INTEGER NOT NULL,
    etag INTEGER NOT NULL,
    expires_at_ms INTEGER
);
CREATE INDEX IF NOT EXISTS entries_by_expiry ON entries(expires_at_ms)
    WHERE expires_at_ms IS NOT NULL;
CREATE TABLE IF NOT EXISTS changes(revision INTEGER PRIMARY KEY, key BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta(name TEXT PRIMARY KEY, value ANY) WITHOUT ROWID;
"""
UPSERT = (
    "INSERT INTO entries(key, value, json, etag, expires_at_ms) VALUES(?1, ?2, 0, ?3, ?4) "
    "ON CONFLICT(key) DO UPDATE SET value = excluded.value, json = 0, "
    "etag = excluded.etag, expires_at_ms = excluded.expires_at_ms"
)
UPSERT_JSON = UPSERT.replace("?2, 0,", "jsonb(?2), 1,").replace("json = 0", "json = 1")
LOG = "INSERT INTO changes(revision, key) VALUES(?, ?)"
# A bulk load of bytes values with no TTL (the usual one) goes in as one statement per
# table over an apsw.carray of packed entries. SQLite walks the array without the GIL,
# where executemany takes the GIL back for every row and waits for it while the event
# loop decodes the next batch: BulkPut went from ~120k to ~190k rows/s here.
# An entry is packed as its key's length in 4 ASCII digits, the key, then the value;
# ?2 is the revision before the first entry (carray's rowid counts from 1).
PACKED = "carray(?1)"
MAX_PACKED_KEY_BYTES = 9999
KEY_LENGTH = "CAST(CAST(substr(value, 1, 4) AS TEXT) AS INTEGER)"
UPSERT_PACKED = (
    f"WITH packed(i, key_length, entry) AS (SELECT rowid, {KEY_LENGTH}, value FROM {PACKED}) "
    "INSERT INTO entries(key, value, json, etag, expires_at_ms) "
    "SELECT substr(entry, 5, key_length), substr(entry, 5 + key_length), 0, ?2 + i, NULL "
    "FROM packed WHERE true "  # WHERE: lets SQLite parse the ON CONFLICT after a SELECT
    "ON CONFLICT(key) DO UPDATE SET value = excluded.value, json = 0, "
    "etag = excluded.etag, expires_at_ms = NULL"
)
LOG_PACKED = (
    f"INSERT INTO changes(revision, key) SELECT ?2 + rowid, substr(value, 5, {KEY_LENGTH}) FROM {PACKED}"
)
CURRENT = "SELECT etag, expires_at_ms FROM entries WHERE key = ?"
ANY_BETWEEN = "SELECT 1 FROM entries WHERE key >= ? AND key <= ? LIMIT 1"
# An EXISTS probe a key: ~25% faster here than `key IN carray(?)`
COUNT_STORED = "SELECT count(*) FROM carray(?) AS c WHERE EXISTS (SELECT 1 FROM entries WHERE key = c.value)"
VALUE = "CASE json WHEN 1 THEN json(value) ELSE value END"
GET = f"SELECT {VALUE}, json, etag, expires_at_ms FROM entries WHERE key = ?"


def packed_entries(keys: Sequence[bytes], values: Sequence[bytes]) -> apsw.carray:
    """The carray that UPSERT_PACKED and LOG_PACKED read (keys of at most 9999 bytes)."""
    return apsw.carray(tuple(map(b"%04d%s%s".__mod__, zip(map(len, keys), keys, values, strict=True))))
