"""One partition's SQLite-WAL file, through apsw. Plain blocking code.

The write connection belongs to the partition's writer thread (storage/writer.py); reads
borrow one of a few read connections (WAL readers never block the writer). Nothing here
touches an event loop.

Schema: ``entries`` holds the data (JSON documents as JSONB); ``changes`` is a bounded
log of (revision, key) for every write, from which an online move catches up;
``meta`` holds the partition's id, range and revision.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import apsw

from keyspan.storage import openfiles
from keyspan.storage.errors import (
    CommitFailed,
    DiskFullError,
    EtagMismatchError,
    KeyspanError,
    NotJsonError,
    OpenFilesLimitError,
    StorageFaultError,
    UnavailableError,
)
from keyspan.storage.jsondocs import apply_patch, json_text, path_error, projected, projection
from keyspan.storage.keys import KeyRange
from keyspan.storage.mutations import (
    Bulk,
    Delete,
    Mutation,
    Patch,
    PatchResult,
    Put,
    Reclaim,
    Reclaimed,
    SweepBatch,
)
from keyspan.storage.shard_sql import (
    ANY_BETWEEN,
    COUNT_STORED,
    CURRENT,
    GET,
    LOG,
    LOG_PACKED,
    MAX_PACKED_KEY_BYTES,
    SCHEMA,
    UPSERT,
    UPSERT_JSON,
    UPSERT_PACKED,
    VALUE,
    packed_entries,
)

SCHEMA_VERSION = 1
# SQLite's "unix-excl" VFS: the process that opens a shard holds it exclusively (its own
# connections share it), and the WAL index lives in that process's memory, not in a -shm
# file. A node's shards are its own anyway (the data dir is locked), and so a read
# transaction takes its locks in memory instead of by two fcntl calls, which on a small
# VM cost more than the point read itself (A/B at c=64: ~12 us less server CPU a Get and
# ~23 us a Put; see the perf journal). While a node runs, no other process can open its
# shards, not even to read: use the RPCs or `keyspan dump`.
SHARD_VFS = "unix-excl"
WAL_SIZE_LIMIT_BYTES = 16 << 20  # the WAL file is cut back to this once it restarts
BUSY_TIMEOUT_MS = 10_000
# Shards are made with SQLite's incremental auto-vacuum, so pages that deletes and sweeps
# free can go back to the file system (`Shard.reclaim`): a reclaim starts once a shard's
# free pages come to RECLAIM_MIN_PAGES and a sixteenth of the file, and goes on, in steps
# of RECLAIM_STEP_PAGES (about 10 ms of the writer's time here), until none is left.
# Below that they are kept for the partition's next writes, which reuse them.
RECLAIM_MIN_PAGES = 256
RECLAIM_STEP_PAGES = 512


class Row(NamedTuple):
    """An entry as read: value is JSON text for documents. A NamedTuple: one is built
    per row a scan returns."""

    key: bytes
    value: bytes
    json: bool
    etag: int
    expires_at_ms: int | None


class Shard:
    """A partition's file: its schema, its write path and its read queries.

    Thread rules: `apply_batch` runs on the writer thread only; the read methods take
    a connection from `reader()`, which any thread may use.
    """

    def __init__(
        self,
        path: Path,
        partition_id: str,
        key_range: KeyRange,
        *,
        synchronous: str = "FULL",
        changelog_max: int = 100_000,
        catalogued: bool = False,
    ) -> None:
        """Open the partition's file, creating it unless it is `catalogued` (listed in the
        data dir's catalogue, so made by an earlier start and expected as it was left)."""
        self.path, self.partition_id, self.range = path, partition_id, key_range
        self._synchronous, self._changelog_max = synchronous, changelog_max
        if catalogued and path.exists() and path.stat().st_size == 0:
            # Even setting WAL mode writes a header: refuse before opening.
            raise self._damaged("it is empty (0 bytes)")
        wal = Path(f"{path}-wal")
        wal_existed = wal.exists()
        self._db = self._connect(catalogued)
        # Called right before a batch's COMMIT, and with the keys it wrote once the COMMIT
        # is over, committed or failed (None: keys unknown): the row cache's fence.
        self.before_commit: Callable[[], None] | None = None
        self.on_commit: Callable[[list[bytes] | None], None] | None = None
        self._commit_began = False
        # One read connection per thread that reads (the node's few read threads). Held
        # weakly here: a thread's connections close when the thread ends.
        self._local = threading.local()
        self._readers: weakref.WeakSet[apsw.Connection] = weakref.WeakSet()
        self._readers_lock = threading.Lock()
        self._closed = False
        # One more for the counts any thread may ask for, one thread at a time.
        self._stats_db: apsw.Connection | None = None
        self._stats_lock = threading.Lock()
        try:  # a file that is not a shard, a full disk: close the connection, then say so
            # Checked before anything here writes to the file: a damaged one is left as it
            # was found, to be restored or looked at.
            self.check()
            new = self._check_meta(catalogued)
            with self._db:
                self._db.execute(SCHEMA)
                self._db.execute(
                    "INSERT OR IGNORE INTO meta VALUES('schema_version', ?), ('revision', 0)",
                    (SCHEMA_VERSION,),
                )
                self._db.execute(
                    "INSERT OR REPLACE INTO meta VALUES('partition_id', ?), ('start', ?), ('end', ?)",
                    (partition_id, key_range.start, key_range.end),
                )
            # The last committed revision: what Stats and the etags handed out go by. The
            # writer counts in _revision during a batch and publishes it once committed.
            self.revision: int = self._meta("revision")
            self._revision = self.revision
            # Rows stored, expired ones included until swept: counted once here, then kept
            # up to date by the writes, so Stats, heartbeats and scrapes never walk the
            # table (count(*) reads every page: ~30 ms a million rows even when cached).
            self.entries: int = self._db.execute("SELECT count(*) FROM entries").fetchone()[0]
            # Made before shards were made with incremental auto-vacuum: its free pages are
            # reused by its writes but never given back (a VACUUM would convert it).
            self.reclaims: bool = self._db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
            self.reclaimed_bytes = 0
            if new:
                # Its tables and range reach the disk before the catalogue lists it, even at
                # synchronous=NORMAL (a checkpoint syncs the WAL first): a listed shard
                # without them is then damaged, never a new one.
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except BaseException:
            # Closing the last connection copies the WAL into the file: not on the way out.
            self._db.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
            self._db.close()
            with contextlib.suppress(OSError):
                if not wal_existed and wal.stat().st_size == 0:
                    wal.unlink()  # made by this open, and empty
            raise
        self._entries_delta = 0  # of the batch being applied; published when it commits
        # time.time_ns() when the last batch's statements were done and COMMIT began.
        self.last_applied_ns = 0

    def _check_meta(self, catalogued: bool) -> bool:
        """Whether the shard is new. Refuse, before anything here writes to it, a shard
        written by a keyspan with another layout (a newer one, after a downgrade), or made
        for another partition or range: a partition keeps its id and range for life, so a
        difference means a data dir from another partition map (a `keyspan serve` data dir
        given to a node, say), whose keys would be served under ranges that do not hold
        them, out of sight. A catalogued shard with no record of its partition has lost
        what it held (its range would be served empty, its etags start again at 1)."""
        has_meta = self._db.execute(
            "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'meta'"
        ).fetchone()
        stored = dict(self._db.execute("SELECT name, value FROM meta")) if has_meta else {}
        if catalogued and "partition_id" not in stored:
            raise self._damaged(
                "it holds no record of its partition (a file cut short, or replaced by a new one)"
            )
        version = stored.get("schema_version")
        if version is not None and version != SCHEMA_VERSION:
            raise KeyspanError(
                f"partition {self.partition_id}: {self.path} has schema version {version}; this "
                f"keyspan reads version {SCHEMA_VERSION}: run the keyspan release that wrote it"
            )
        if "partition_id" not in stored:
            return True
        if "revision" not in stored:  # its etags would start again at 1, and be given twice
            raise self._damaged("it holds no record of its revision (the meta table was changed by hand?)")
        was = (stored["partition_id"], stored.get("start"), stored.get("end"))
        if was != (self.partition_id, self.range.start, self.range.end):
            if not catalogued and not self._db.execute("SELECT 1 FROM entries LIMIT 1").fetchone():
                # An empty shard of a first start that stopped before its catalogue, started
                # again with other split points: used again, as the README says, where it
                # was refused as "made for another partition map".
                return True
            held = KeyRange(was[1] or b"", was[2])
            raise KeyspanError(
                f"partition {self.partition_id}: {self.path} holds partition {was[0]} {held}, not "
                f"{self.partition_id} {self.range}: it was made for another partition map (a "
                "`keyspan serve` data dir given to a node, or a node's data dir to another "
                "cluster); start on the data dir this map was made with"
            )
        return False

    def _damaged(self, why: str) -> KeyspanError:
        return KeyspanError(
            f"partition {self.partition_id}: {self.path} is damaged: {why}; it was left as it "
            "was found: restore it (or the whole data dir) from a copy"
        )

    @staticmethod
    def was_written(path: Path) -> bool:
        """Whether a shard file ever took a write, or is something else than an empty
        database (a first start that stopped before its catalogue leaves empty ones)."""
        try:
            db = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READWRITE, vfs=SHARD_VFS)
        except apsw.Error:
            return True
        try:
            if db.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0] == 0:
                return False  # created, never given its tables
            revision = db.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()
            return (
                revision is None
                or bool(revision[0])
                or db.execute("SELECT 1 FROM entries LIMIT 1").fetchone() is not None
            )
        except apsw.Error:  # not a database, not a shard
            return True
        finally:
            db.close()

    def _connect(self, catalogued: bool = True) -> apsw.Connection:
        """A connection to the shard's file, in WAL mode; `catalogued`: see __init__."""
        db = None
        try:
            db = apsw.Connection(str(self.path), vfs=SHARD_VFS)
            db.set_busy_timeout(BUSY_TIMEOUT_MS)
            # Every shard file is made in WAL mode, which its header keeps. One that is not
            # was not written by keyspan: setting the mode would change its header before the
            # checks refuse it, and it is to be left as it was found. Except a file of a first
            # start that stopped while making it (killed, a full disk: SQLite writes its
            # first page in rollback mode, then sets WAL): not catalogued, and no tables.
            current = db.execute("PRAGMA journal_mode").fetchone()
            has_content, remake = _has_content(self.path), False
            if current is not None and str(current[0]).lower() != "wal" and has_content:
                if catalogued or db.execute("SELECT 1 FROM sqlite_schema LIMIT 1").fetchone():
                    raise self._damaged(
                        f"it is not in WAL mode ({current[0]}): not a shard file keyspan wrote"
                    )
                has_content, remake = False, True  # made again: it never held anything
            if not has_content:
                # Only a database with no tables takes it, and setting the WAL mode below
                # already writes the header that fixes it: here, first.
                db.execute("PRAGMA auto_vacuum=INCREMENTAL")
                if remake:  # its first page is written: only a VACUUM (of nothing) applies it
                    db.execute("VACUUM")
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()  # opens the WAL
            if mode is None or str(mode[0]).lower() != "wal":
                raise KeyspanError(f"{self.path}: cannot enable WAL mode")
            db.execute(f"PRAGMA synchronous={self._synchronous}")
            db.execute("PRAGMA cache_size=-16384")
            # Readers that overlap without a pause (thousands of scans) keep a checkpoint
            # from restarting the WAL, which then grows (81 MB in 26 s in a probe). SQLite
            # never shrinks it by itself: cut it back to this when it restarts.
            db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}")
        except BaseException as err:
            if db is not None:
                db.close()
            if isinstance(err, apsw.CantOpenError) and openfiles.out_of_files():
                limit = openfiles.open_files_limit()
                openfiles.refusals.note(partition_id=self.partition_id, limit=limit)
                raise OpenFilesLimitError(self.partition_id, limit) from err
            raise
        return db

    def _meta(self, name: str) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else row[0]

    def check(self) -> None:
        """Run SQLite's quick_check (it reads every page); raise KeyspanError, naming the
        file and the first faults on one line, when the file is damaged."""
        try:
            result = [str(r[0]) for r in self._db.execute("PRAGMA quick_check")]
        except apsw.CorruptError as err:  # too damaged for quick_check to go on
            result = [str(err)]
        if result != ["ok"]:
            faults = "; ".join(line for r in result for line in r.splitlines() if not line.startswith("***"))
            if len(faults) > 300:
                faults = faults[:300] + " ..."
            raise self._damaged(f"SQLite's quick_check found: {faults}")

    def close(self, busy_timeout_s: float = 30.0) -> None:
        """Close every connection. A read connection busy on another thread (a read that
        found the partition before it was dropped) is closed once that read is over:
        apsw refuses to close it meanwhile, and the close stopped there, leaving the
        other connections open and the dropped partition's files in place."""
        with self._readers_lock:
            self._closed = True  # no new read connection from now on
            readers = list(self._readers)
            self._readers.clear()
        deadline = time.monotonic() + busy_timeout_s
        for db in readers:
            while True:
                try:
                    db.close()
                    break
                except apsw.ThreadingViolationError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.001)
        self._db.close()

    # -- reads -------------------------------------------------------------------------

    @contextlib.contextmanager
    def reader(self) -> Iterator[apsw.Connection]:
        """This thread's read connection to the shard, opened on first use."""
        yield self.read_connection()

    def read_connection(self, wait: bool = True) -> apsw.Connection:
        """This thread's read connection to the shard, opened on first use.

        `wait=False` gives the thread a second connection that never waits on a lock
        (apsw.BusyError instead): for reads run on the event loop.
        """
        slot = "db" if wait else "db_nowait"
        db = getattr(self._local, slot, None)
        if db is None:
            db = self._open_reader(wait)
            setattr(self._local, slot, db)
        return db

    def point_reader(self, wait: bool = True) -> apsw.Cursor:
        """This thread's cursor on its read connection, kept for point reads (`get`):
        a cursor made and freed per read cost 3-11 us more server CPU a Get at c=64
        (integration/perf/JOURNAL.md, "A kept cursor for point reads")."""
        slot = "cursor" if wait else "cursor_nowait"
        cursor = getattr(self._local, slot, None)
        if cursor is None:
            cursor = self.read_connection(wait).cursor()
            setattr(self._local, slot, cursor)
        return cursor

    @contextlib.contextmanager
    def stats_reader(self) -> Iterator[apsw.Connection]:
        """The shard's one connection for counts, which any thread may ask for: a metrics
        scrape runs on a new thread each time, and a connection of its own would cost
        each scrape an open."""
        with self._stats_lock:
            if self._stats_db is None:
                self._stats_db = self._open_reader(wait=True)
            yield self._stats_db

    def _open_reader(self, wait: bool) -> apsw.Connection:
        if self._closed:
            raise self._gone()
        db = self._connect()
        db.execute("PRAGMA query_only=1")
        if not wait:
            db.set_busy_timeout(0)
        with self._readers_lock:
            if self._closed:  # closed meanwhile: it would never be closed
                db.close()
                raise self._gone()
            self._readers.add(db)
        return db

    def _gone(self) -> UnavailableError:
        return UnavailableError(f"partition {self.partition_id} is no longer served here")

    @staticmethod
    def get(
        db: apsw.Connection | apsw.Cursor,
        key: bytes,
        now_ms: int,
        paths: Sequence[str] = (),
        max_projection_bytes: int | None = None,
    ) -> Row | None:
        """The live entry at `key`, or None when absent or expired.

        `db` is a read connection, or a cursor kept on one (`point_reader`). With paths, a
        JSON document's value is the projection; a bytes value raises NotJsonError; a
        malformed path raises InvalidArgumentError; ValueTooLargeError when the values the
        paths select add up past max_projection_bytes (then the projection is not built).
        """
        if paths:
            value_sql, bindings = projection(paths, max_projection_bytes)
            sql = GET.replace(VALUE, f"CASE json WHEN 1 THEN {value_sql} END")
            args: tuple[Any, ...] = (*bindings, key)
        else:
            sql, args = GET, (key,)
        try:
            # All rows (one at most): a kept cursor left before SQLITE_DONE would hold its
            # read transaction open until its next read, pinning the WAL.
            rows = db.execute(sql, args).fetchall()
        except apsw.SQLError as err:
            raise path_error(db, paths, "paths", err) from err
        if not rows:
            return None
        value, is_json, etag, expires = rows[0]
        if expires is not None and expires <= now_ms:
            return None
        if paths and not is_json:
            raise NotJsonError(key)
        return Row(key, projected(value, max_projection_bytes, key), bool(is_json), etag, expires)

    @staticmethod
    def scan(
        db: apsw.Connection,
        key_range: KeyRange,
        now_ms: int,
        *,
        reverse: bool = False,
        paths: Sequence[str] = (),
        max_rows: int = 1000,
        max_bytes: int = 64 * 1024,
        max_projection_bytes: int | None = None,
        max_message_bytes: int | None = None,
    ) -> tuple[list[Row], bool]:
        """Up to max_rows live entries of key_range in order, stopping past max_bytes; a
        row that would take the rows past max_message_bytes ends them before it (a big value
        after a batch's worth of small ones made a response over gRPC's message limit).

        The flag is True when the range holds nothing after the rows returned: the query
        reads one row past the batch to know (max_rows 0 only asks whether the range is
        empty). A row whose projection would pass max_projection_bytes (see `get`) ends
        the rows before it; ValueTooLargeError when it is the first.
        """
        value_sql, bindings = (VALUE, []) if not paths else projection(paths, max_projection_bytes)
        if paths:
            value_sql = f"CASE json WHEN 1 THEN {value_sql} ELSE value END"
        where = "key >= ?" + ("" if key_range.end is None else " AND key < ?")
        args: list[Any] = [*bindings, key_range.start]
        if key_range.end is not None:
            args.append(key_range.end)
        sql = (
            f"SELECT key, {value_sql}, json, etag, expires_at_ms FROM entries WHERE {where} "
            f"AND (expires_at_ms IS NULL OR expires_at_ms > ?) "
            f"ORDER BY key {'DESC' if reverse else 'ASC'} LIMIT ?"
        )
        rows: list[Row] = []
        size = 0
        full = max_rows <= 0
        try:
            for key, value, is_json, etag, expires in db.execute(sql, (*args, now_ms, max_rows + 1)):
                if full or (isinstance(value, int) and rows):
                    return rows, False  # a row after the batch: the range goes on
                value = projected(value, max_projection_bytes, key)
                row_size = len(key) + len(value) + 16
                if rows and max_message_bytes is not None and size + row_size > max_message_bytes:
                    return rows, False  # it opens the next batch
                rows.append(Row(key, value, bool(is_json), etag, expires))
                size += row_size
                full = len(rows) >= max_rows or size >= max_bytes
        except apsw.SQLError as err:
            raise path_error(db, paths, "paths", err) from err
        return rows, True

    @staticmethod
    def count_expired(db: apsw.Connection, now_ms: int) -> int:
        """Expired entries not swept yet: a range of the expiry index, not the table."""
        return db.execute(
            "SELECT count(*) FROM entries WHERE expires_at_ms IS NOT NULL AND expires_at_ms <= ?",
            (now_ms,),
        ).fetchone()[0]

    @staticmethod
    def oldest_expired_ms(db: apsw.Connection, now_ms: int) -> int | None:
        """The expiry time of the oldest expired entry still stored, or None.

        One step down the expiry index, so it is cheap at any size.
        """
        row = db.execute("SELECT min(expires_at_ms) FROM entries WHERE expires_at_ms IS NOT NULL").fetchone()
        oldest = None if row is None else row[0]
        return oldest if oldest is not None and oldest <= now_ms else None

    def size_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(f"{self.path}{suffix}").st_size
        return total

    # -- writes (writer thread only) ----------------------------------------------------

    def apply_batch(self, mutations: Sequence[Mutation]) -> list[Any]:
        """Commit all mutations in one transaction and one fsync.

        Returns one outcome per mutation: Put -> etag, Delete -> deleted (bool),
        Patch -> PatchResult, Bulk -> accepted count, SweepBatch -> (scanned, deleted),
        or the KeyspanError that failed that mutation alone (it wrote nothing). An SQLite
        error outside a single mutation aborts the batch and is raised; the revision is
        then as before.
        """
        revision_before = self._revision
        self._entries_delta = 0
        self._commit_began = False
        outcomes: list[Any] = []
        try:
            with self._transaction():
                for mutation in mutations:
                    try:
                        outcomes.append(self._apply(mutation))
                    except KeyspanError as err:
                        outcomes.append(err)
                if self._revision != revision_before:
                    self._db.execute("UPDATE meta SET value = ? WHERE name = 'revision'", (self._revision,))
                    # Trim the change log about every 1024 revisions, not on every batch.
                    if self._revision // 1024 != revision_before // 1024:
                        horizon = self._revision - self._changelog_max
                        self._db.execute("DELETE FROM changes WHERE revision <= ?", (horizon,))
                self.last_applied_ns = time.time_ns()
        except BaseException:
            self._revision = revision_before
            if self._commit_began and self.on_commit is not None:
                self.on_commit(_keys_of(mutations))  # a failed COMMIT may be on disk all the same
            raise
        self.revision = self._revision  # published once committed, as entries are
        self.entries += self._entries_delta
        if self.on_commit is not None:
            self.on_commit(_keys_of(mutations))
        return outcomes

    def raise_revision(self, floor: int) -> None:
        """Continue from revision `floor` when below it: a partition given to this copy by a
        repair, whose earlier copies handed out etags up to it (control's revision_floor).
        Before the partition takes writes: on the thread that opens it."""
        if floor <= self._revision:
            return
        with self._transaction():
            self._db.execute("UPDATE meta SET value = ? WHERE name = 'revision'", (floor,))
        # On the disk before the partition serves, even at synchronous=NORMAL (a checkpoint
        # syncs the WAL first): a floor lost to a power cut would not be applied again.
        self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        self.revision = self._revision = floor

    def vacuum(self) -> None:
        """Rewrite the file with incremental auto-vacuum and no free pages (SQLite's VACUUM),
        so a shard made before it shrinks after deletes from then on. Offline only (the
        data dir locked, nothing else open): it needs free disk about the file's size."""
        self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        self._db.execute("VACUUM")
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        self.reclaims = True

    def reclaim(self, m: Reclaim) -> Reclaimed | KeyspanError:
        """Give up to m.max_pages free pages back to the file system (writer thread only;
        the writer runs it after the batch it came with, whose writes are answered first).

        SQLite's incremental vacuum moves pages from the end of the file into free ones
        and cuts the file short; the WAL carries the moves, so the file shrinks once a
        checkpoint has copied them (run here after the last step). Nothing stored changes, so
        no reader is affected and no revision is spent. It runs in a transaction of its
        own: a full disk or an I/O error fails the reclaim (returned, not raised) and no
        write that came in its batch.
        """
        if not self.reclaims:
            return Reclaimed(0, False)
        db = self._db
        try:  # after the batch committed: whatever fails here fails the reclaim alone
            free = db.execute("PRAGMA freelist_count").fetchone()[0]
            if not m.started and (
                free < RECLAIM_MIN_PAGES or free < db.execute("PRAGMA page_count").fetchone()[0] // 16
            ):
                return Reclaimed(0, False)
            pages = min(free, m.max_pages)
            page_bytes = db.execute("PRAGMA page_size").fetchone()[0]
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(f"PRAGMA incremental_vacuum({int(pages)})").fetchall()  # a step a page
                db.execute("COMMIT")
            finally:
                if db.in_transaction:
                    db.execute("ROLLBACK")
            more = free > pages
            if not more:
                # Copy the moves into the file, which is cut short, and empty the WAL, as
                # far as no reader holds it back: it waits for none. The next checkpoint
                # copies what this one could not.
                db.set_busy_timeout(0)
                try:
                    db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                finally:
                    db.set_busy_timeout(BUSY_TIMEOUT_MS)
        except apsw.FullError as err:
            return DiskFullError(self.partition_id, err)
        except apsw.Error as err:
            fault = StorageFaultError(self.partition_id, err)
            fault.__cause__ = err
            return fault
        freed = pages * page_bytes
        self.reclaimed_bytes += freed
        return Reclaimed(freed, more)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any error.

        Not apsw's `with connection:`: its commit keeps the GIL through the WAL fsync, so
        the event loop stood still for every group commit. A COMMIT run through execute()
        releases the GIL like every other SQLite call.
        """
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        if self.before_commit is not None:
            self.before_commit()
        self._commit_began = True
        try:
            self._db.execute("COMMIT")
        except apsw.IOError as err:  # in the WAL write or its fsync: the commit may be on disk
            if self._db.in_transaction:
                with contextlib.suppress(apsw.Error):
                    self._db.execute("ROLLBACK")
            raise CommitFailed(str(err)) from err
        except BaseException:  # refused before a frame was written (a full disk, a veto)
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def _next_revision(self) -> int:
        # The revision travels with the partition through split, merge and move, so a
        # deleted-then-recreated key can never receive an etag it had before.
        self._revision += 1
        return self._revision

    @staticmethod
    def _check_precondition(key: bytes, found: Any, if_etag: int, if_absent: bool) -> None:
        """Raise EtagMismatchError unless the row `found` (CURRENT's, or None) meets them."""
        etag, expires = found or (0, None)
        current = 0 if expires is not None and expires <= _now_ms() else int(etag)
        if if_absent and current:
            raise EtagMismatchError(key, None, current)
        if if_etag and current != if_etag:
            raise EtagMismatchError(key, if_etag, current)

    def _apply(self, m: Mutation) -> Any:
        match m:
            case Put():
                return self._put(m)
            case Delete():
                return self._delete(m)
            case Patch():
                return self._patch(m)
            case Bulk():
                return self._bulk(m)
            case SweepBatch():
                return self._sweep(m)
        raise TypeError(f"not a mutation: {m!r}")

    def _put(self, m: Put) -> int:
        # The value is checked first: a request that can never succeed is INVALID_ARGUMENT
        # (do not retry) whatever the entry's state, not ABORTED (read again and retry).
        if m.json:
            value: Any = self._json_text(m.value, "value")
            sql = UPSERT_JSON
        else:
            value, sql = m.value, UPSERT
        found = self._db.execute(CURRENT, (m.key,)).fetchone()  # also counts a new row
        if m.if_etag or m.if_absent:
            self._check_precondition(m.key, found, m.if_etag, m.if_absent)
        expires_at_ms = m.expires_at_ms
        if m.keep_ttl and found is not None and found[1] is not None and found[1] > _now_ms():
            expires_at_ms = found[1]  # a live entry's expiry; an expired one is absent: none
        etag = self._revision + 1
        self._db.execute(sql, (m.key, value, etag, expires_at_ms))
        self._db.execute(LOG, (self._next_revision(), m.key))
        self._entries_delta += found is None
        return etag

    def _upsert_plain(self, keys: Sequence[bytes], values: Sequence[bytes]) -> None:
        """Write bytes values with no TTL, in order, at the next len(keys) revisions: two
        statements whatever the count."""
        packed = packed_entries(keys, values)
        self._db.execute(UPSERT_PACKED, (packed, self._revision))
        self._db.execute(LOG_PACKED, (packed, self._revision))
        self._revision += len(keys)

    def _json_text(self, value: bytes | str, field: str) -> str:
        return json_text(self._db, value, field)

    def _delete(self, m: Delete) -> bool:
        if m.if_etag:
            self._check_precondition(m.key, self._db.execute(CURRENT, (m.key,)).fetchone(), m.if_etag, False)
        gone = self._db.execute(
            "DELETE FROM entries WHERE key = ? RETURNING expires_at_ms", (m.key,)
        ).fetchone()
        if gone is None:
            return False
        self._db.execute(LOG, (self._next_revision(), m.key))
        self._entries_delta -= 1
        expires = gone[0]
        return expires is None or expires > _now_ms()

    def _patch(self, m: Patch) -> PatchResult:
        result = apply_patch(self._db, m, self._revision + 1, _now_ms())
        self._db.execute(LOG, (self._next_revision(), m.key))
        return result

    def _bulk(self, m: Bulk) -> int:
        keys = m.keys
        if not keys:
            return 0
        new = self._count_new(keys)
        plain_only = m.json is None and m.expires_at_ms is None
        if plain_only and max(map(len, keys)) <= MAX_PACKED_KEY_BYTES:
            with self._db:  # a savepoint: the rows go in whole or not at all
                self._upsert_plain(keys, m.values)
            self._entries_delta += new
            return len(keys)
        first = self._revision + 1
        plain, docs = [], []
        for i, row in enumerate(m.rows()):
            if row.json:
                field = f"entries[{i}].value"
                text = row.value.decode() if m.json_checked else self._json_text(row.value, field)
                docs.append((row.key, text, first + i, row.expires_at_ms))
            else:
                plain.append((row.key, row.value, first + i, row.expires_at_ms))
        with self._db:  # a savepoint, as above
            self._db.executemany(UPSERT, plain)
            if docs:
                self._db.executemany(UPSERT_JSON, docs)
            self._db.executemany(LOG, zip(range(first, first + len(keys)), keys, strict=True))
        self._revision += len(keys)
        self._entries_delta += new
        return len(keys)

    def _count_new(self, keys: Sequence[bytes]) -> int:
        """How many of the sorted `keys` are not stored yet. A load of keys that none
        stored falls between (the usual one: a new range, or past the end) costs one probe."""
        if self._db.execute(ANY_BETWEEN, (keys[0], keys[-1])).fetchone() is None:
            return len(keys)
        return len(keys) - self._db.execute(COUNT_STORED, (apsw.carray(tuple(keys)),)).fetchone()[0]

    def _sweep(self, m: SweepBatch) -> tuple[int, int]:
        end_sql = "" if m.end is None else " AND key < ?"
        args: list[Any] = [m.now_ms, m.start] + ([] if m.end is None else [m.end])
        keys = [
            r[0]
            for r in self._db.execute(
                "DELETE FROM entries WHERE key IN (SELECT key FROM entries "
                "WHERE expires_at_ms IS NOT NULL AND expires_at_ms <= ? AND key >= ?"
                f"{end_sql} LIMIT ?) RETURNING key",
                (*args, m.limit),
            )
        ]
        for key in keys:
            self._db.execute(LOG, (self._next_revision(), key))
        self._entries_delta -= len(keys)
        return len(keys), len(keys)

    def changes_since(self, db: apsw.Connection, revision: int, limit: int) -> list[tuple[int, bytes]]:
        """(revision, key) of the writes after `revision`, oldest first, from the change log."""
        return [
            (r, k)
            for r, k in db.execute(
                "SELECT revision, key FROM changes WHERE revision > ? ORDER BY revision LIMIT ?",
                (revision, limit),
            )
        ]


def _keys_of(mutations: Sequence[Mutation]) -> list[bytes]:
    """The keys a batch may have changed. A sweep deletes only expired rows, which every
    reader already treats as absent, so it changes nothing a reader could have seen."""
    keys: list[bytes] = []
    for m in mutations:
        if isinstance(m, Bulk):
            keys.extend(m.keys)
        elif not isinstance(m, SweepBatch | Reclaim):
            keys.append(m.key)
    return keys


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _has_content(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except FileNotFoundError:
        return False
