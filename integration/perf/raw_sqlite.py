"""The storage limit: what apsw alone does on the same disk with keyspan's table shape.

Same schema as storage/shard.py's `entries` (a rowid table with a unique key index, JSON
flag, etag, expiry and its partial index), WAL mode, the same synchronous setting; sorted
16-byte keys, values of the run's size, 1000 rows per transaction.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import apsw

from integration.perf.keys import sorted_key
from keyspan.storage.shard_sql import SCHEMA

ROWS_PER_TXN = 1000
_INSERT = "INSERT INTO entries(key, value, json, etag, expires_at_ms) VALUES(?, ?, 0, ?, NULL)"


def _connect(path: Path, synchronous: str) -> apsw.Connection:
    db = apsw.Connection(str(path))
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.execute("PRAGMA cache_size=-16384")
    return db


def bulk_insert(path: Path, rows: int, value_bytes: int, synchronous: str) -> float:
    """Rows/s inserting `rows` sorted rows, ROWS_PER_TXN per transaction."""
    db = _connect(path, synchronous)
    db.execute(SCHEMA)
    value = random.Random(1).randbytes(value_bytes)
    started = time.perf_counter()
    for first in range(0, rows, ROWS_PER_TXN):
        batch = [(sorted_key(n), value, n + 1) for n in range(first, min(rows, first + ROWS_PER_TXN))]
        with db:
            db.executemany(_INSERT, batch)
    elapsed = time.perf_counter() - started
    db.close()
    return rows / elapsed


def single_commits(path: Path, commits: int, value_bytes: int, synchronous: str) -> float:
    """Durable commits/s of one-row transactions (BEGIN, one upsert, COMMIT), one thread:
    the most a writer that committed every Put alone could do."""
    db = _connect(path, synchronous)
    db.execute(SCHEMA)
    value = random.Random(3).randbytes(value_bytes)
    started = time.perf_counter()
    for n in range(commits):
        db.execute("BEGIN IMMEDIATE")
        db.execute(_INSERT.replace("INSERT", "INSERT OR REPLACE", 1), (sorted_key(n), value, n + 1))
        db.execute("COMMIT")
    elapsed = time.perf_counter() - started
    db.close()
    return commits / elapsed


def keyspan_statements_insert(path: Path, rows: int, value_bytes: int, synchronous: str) -> float:
    """Rows/s doing what a BulkPut commit does in SQLite (upsert + change log over one
    packed carray, storage/shard.py), from Python, 1000 rows a transaction.

    Not a limit to beat but a split of the gap: BulkPut / this is what gRPC, protobuf and
    the servicer cost; this / bulk_insert is what keyspan's schema costs.
    """
    from keyspan.storage.shard_sql import LOG_PACKED, UPSERT_PACKED, packed_entries

    db = _connect(path, synchronous)
    db.execute(SCHEMA)
    value = random.Random(1).randbytes(value_bytes)
    started = time.perf_counter()
    for first in range(0, rows, ROWS_PER_TXN):
        ns = range(first, min(rows, first + ROWS_PER_TXN))
        packed = packed_entries([sorted_key(n) for n in ns], [value] * len(ns))
        with db:
            db.execute(UPSERT_PACKED, (packed, first))
            db.execute(LOG_PACKED, (packed, first))
    elapsed = time.perf_counter() - started
    db.close()
    return rows / elapsed


def point_reads(path: Path, rows: int, reads: int) -> float:
    """Reads/s of random existing keys, one connection, one thread."""
    db = _connect(path, "NORMAL")
    rng = random.Random(2)
    keys = [sorted_key(rng.randrange(rows)) for _ in range(reads)]
    sql = "SELECT value, json, etag, expires_at_ms FROM entries WHERE key = ?"
    started = time.perf_counter()
    for key in keys:
        db.execute(sql, (key,)).fetchone()
    elapsed = time.perf_counter() - started
    db.close()
    return reads / elapsed


def full_scan(path: Path) -> tuple[float, int]:
    """(rows/s, rows) reading the whole table in key order into Python."""
    db = _connect(path, "NORMAL")
    sql = "SELECT key, value, json, etag, expires_at_ms FROM entries ORDER BY key"
    started = time.perf_counter()
    n = sum(1 for _ in db.execute(sql))
    elapsed = time.perf_counter() - started
    db.close()
    return n / elapsed, n
