"""control.db: the node registry, the partitions and the operation log, through sqlite-utils.

The schema is created and migrated by code: `schema_version` holds the number of the last
migration applied, and `MIGRATIONS[i]` takes a database from version i to i + 1. The
store runs on the stdlib sqlite3 (sqlite-utils needs its DB-API); control calls it from one
worker thread, never from the event loop.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import sqlite_utils

from keyspan.storage.dirlock import lock_directory
from keyspan.storage.errors import KeyspanError


def _v1(db: sqlite_utils.Database) -> None:
    db["meta"].create({"name": str, "value": str}, pk="name")
    db["nodes"].create(
        {
            "node_id": str,
            "address": str,
            "probe_address": str,
            "capacity": int,
            "status": str,
            "cordoned": int,
            "draining": int,
            "probe": str,
            "last_heartbeat_ms": int,
            "entries": int,
            "bytes": int,
            "registered_ms": int,
        },
        pk="node_id",
    )
    db["partitions"].create(
        {
            "partition_id": str,
            "start": bytes,
            "end": bytes,
            "node_id": str,
            "acked": int,
            "entries": int,
            "bytes": int,
        },
        pk="partition_id",
        not_null={"start"},
    )
    db["oplog"].create({"id": int, "at_ms": int, "op": str, "detail": str}, pk="id")


def _v2(db: sqlite_utils.Database) -> None:
    # the data dir each node registered from (Register.disk_id); "" until it says
    db["nodes"].add_column("disk_id", str, not_null_default="")


def _v3(db: sqlite_utils.Database) -> None:
    # the revision a partition's next copy continues from (set when it changes copies; 0:
    # none), and the revision its owner last reported (heartbeats)
    db["partitions"].add_column("revision_floor", int, not_null_default=0)
    db["partitions"].add_column("revision", int, not_null_default=0)


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [_v1, _v2, _v3]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


_RESTORE = (
    "; restore it from a backup (control.db.backup beside it), or move it away to start a new"
    " one (nodes register again with the partitions on their disks)"
)


class ControlStore:
    """Rows in control.db. Every method commits before it returns."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Two controls on one database would each hand out the map: the second is refused.
        self._lock_file = lock_directory(path.parent)
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            # Every page, once (the database is small): a damaged one failed later, in the
            # middle of building the map, with a traceback.
            problems = [row[0] for row in self._conn.execute("PRAGMA quick_check(3)")]
            if problems != ["ok"]:
                raise sqlite3.DatabaseError("; ".join(problems))
            self.db = sqlite_utils.Database(self._conn)
            self.migrate()
        except sqlite3.Error as err:  # not a database, damaged, a full disk, no permission
            self.close()
            damaged = type(err) is sqlite3.DatabaseError  # not OperationalError: the file's content
            raise KeyspanError(f"cannot open {path}: {err}{_RESTORE if damaged else ''}") from None
        except BaseException:
            self.close()
            raise

    def migrate(self) -> int:
        """Apply the missing migrations in order; answer the schema version."""
        if "schema_version" not in self.db.table_names():
            self.db["schema_version"].insert({"version": 0})
        version = self.schema_version()
        if version > len(MIGRATIONS):
            raise KeyspanError(
                f"control.db has schema version {version}; this keyspan knows versions up to "
                f"{len(MIGRATIONS)}: run the keyspan release that wrote it"
            )
        for step in MIGRATIONS[version:]:
            # A step and its version number commit together: a crash between two ALTERs
            # left control.db unopenable ("duplicate column name" on the next start).
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                step(self.db)
                version += 1
                self._conn.execute("UPDATE schema_version SET version = ?", (version,))
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        return version

    def schema_version(self) -> int:
        return int(self._conn.execute("SELECT version FROM schema_version").fetchone()[0])

    def close(self) -> None:
        self._conn.close()
        self._lock_file.close()

    def backup(self, target: Path) -> None:
        """Copy the database to `target` with SQLite's online backup, whole or not at all:
        written beside it, synced, then renamed over the last copy."""
        partial = target.with_name(target.name + ".partial")
        partial.unlink(missing_ok=True)
        copy = sqlite3.connect(str(partial))
        try:
            self._conn.backup(copy)
            copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        finally:
            copy.close()
        with partial.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(partial, target)
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename too
        finally:
            os.close(directory)

    def transaction(self) -> AbstractContextManager[sqlite_utils.Database]:
        """One transaction, one commit (one fsync) for the writes inside it."""
        return self.db.atomic()

    # -- meta ----------------------------------------------------------------------------

    def get_meta(self, name: str, default: Any = None) -> Any:
        row = self._conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return default if row is None else json.loads(row[0])

    def set_meta(self, name: str, value: Any) -> None:
        self.db["meta"].upsert({"name": name, "value": json.dumps(value)}, pk="name")

    # -- rows ----------------------------------------------------------------------------

    def nodes(self) -> list[dict[str, Any]]:
        return list(self.db["nodes"].rows_where(order_by="node_id"))

    def node(self, node_id: str) -> dict[str, Any] | None:
        rows = list(self.db["nodes"].rows_where("node_id = ?", [node_id]))
        return rows[0] if rows else None

    def upsert_node(self, row: dict[str, Any]) -> None:
        self.db["nodes"].upsert(row, pk="node_id")

    def shift_times(self, step_ms: int, recovering_from_ms: int | None) -> None:
        """Move every node's last heartbeat time by step_ms (a step of the system clock), and
        write the recovery wait's start as moved, in one commit."""
        with self.transaction():
            self.db.execute(
                "UPDATE nodes SET last_heartbeat_ms = last_heartbeat_ms + ? WHERE last_heartbeat_ms > 0",
                [step_ms],
            )
            if recovering_from_ms is not None:
                self.set_meta("recovering_from_ms", recovering_from_ms)

    def delete_node(self, node_id: str) -> None:
        self.db["nodes"].delete_where("node_id = ?", [node_id])

    def partitions(self) -> list[dict[str, Any]]:
        return list(self.db["partitions"].rows_where(order_by="start"))

    def insert_partitions(self, rows: list[dict[str, Any]]) -> None:
        self.db["partitions"].insert_all(rows, pk="partition_id")

    def update_partition(self, partition_id: str, **values: Any) -> None:
        self.db["partitions"].update(partition_id, values)

    def log(self, op: str, **detail: Any) -> None:
        self.db["oplog"].insert({"at_ms": now_ms(), "op": op, "detail": json.dumps(detail, default=str)})

    def oplog(self, limit: int = 100) -> list[dict[str, Any]]:
        return list(self.db["oplog"].rows_where(order_by="id desc", limit=limit))
