"""The embedded metadata store: SQLite in WAL mode with ``synchronous=FULL``
(:class:`SqliteMetadataStore`, a ``meta.MetadataStore``).

Threads and the serialization point. Write transactions are the store's one global
serialization point and are kept short: they only touch rows, never chunk data (all data I/O
happens before, outside any transaction). They run one at a time (a FIFO ``trio.Lock``) in a
worker thread, because their commit fsyncs the WAL (~0.3 ms here, milliseconds on a slow
disk) and the event loop must not stall for that. Read transactions run inline on the Trio
thread on a second connection: in WAL mode they never wait for the writer, and they are
cheaper inline than the thread hand-off alone. ``python -m bench.store`` measures a STAT (path
resolution, two indexed lookups, the FileInfo) over 100,000 files both ways: inline 37,000/s
(27 us) against 10,700/s (93 us) for the same query through ``trio.to_thread`` on an idle
machine, 23,000/s against 6,100/s with other jobs running. A LIST page of 1,000 entries takes
~6 ms (150,000-180,000 entries/s): too long for the event loop, so the store reads pages of
more than 100 entries through :meth:`MetadataStore.read_slow` in a worker thread. Running
reads inline also lets the store pin the chunks a snapshot names in the same step that read
them (see ``locks.ChunkPins``).

The entries reads look up (a path's components, by parent and name, and entries by id) are
also kept in a cache (:class:`_ReadCache`) that every write transaction empties: a STAT of a
hot path then runs no SQL at all (no BEGIN, no lookups, no ROLLBACK), which is most of what a
small request costs the daemon. The cache can only be this simple because this process is the
database's one writer (the store's single-instance lock) and every write goes through
:meth:`SqliteMetadataStore.write`.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Final, TypeVar

import attrs
import trio

from librorum.activity import Wait, waiting
from librorum.errors import NoSpaceError, StoreIOError, TimeoutError_
from librorum.histogram import LockedHistogram
from librorum.store._translate import store_error_for, translating
from librorum.store.fs import FS
from librorum.store.meta import (
    KIND_DIR,
    KIND_FILE,
    ROOT_ID,
    Counters,
    EntryRow,
    MetaTxn,
    QuarantineRow,
    UploadRow,
)

T = TypeVar("T")

#: Bytes of entries (their chunk lists mostly) the read cache holds before it starts over:
#: bounds its memory whatever the namespace's size (16 MiB is ~50,000 small files).
READ_CACHE_BYTES: Final = 16 << 20
#: What an entry costs the cache besides its chunk list (the row object, its name, the keys).
_ENTRY_OVERHEAD: Final = 320

_SCHEMA_VERSION: Final = 2
#: Chunks found corrupt and moved aside (schema version 2).
_QUARANTINE_TABLE: Final = """
CREATE TABLE quarantine (
    digest BLOB PRIMARY KEY,
    size INTEGER NOT NULL,
    found_ns INTEGER NOT NULL,
    reason TEXT NOT NULL
) WITHOUT ROWID;
"""
_SCHEMA: Final = (
    """
CREATE TABLE entries (
    id INTEGER PRIMARY KEY,
    parent INTEGER NOT NULL,
    name TEXT NOT NULL,
    kind INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    version INTEGER NOT NULL,
    content_hash BLOB,
    chunk_size INTEGER,
    chunks BLOB,
    UNIQUE (parent, name)
);
CREATE TABLE chunks (
    digest BLOB PRIMARY KEY,
    size INTEGER NOT NULL,
    refs INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE pending (digest BLOB PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE uploads (
    id TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    mode TEXT NOT NULL,
    size INTEGER,
    chunk_size INTEGER NOT NULL,
    created_ns INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE upload_chunks (
    upload TEXT NOT NULL,
    idx INTEGER NOT NULL,
    digest BLOB NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (upload, idx)
) WITHOUT ROWID;
CREATE TABLE stats (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    files INTEGER NOT NULL,
    dirs INTEGER NOT NULL,
    logical_bytes INTEGER NOT NULL,
    stored_bytes INTEGER NOT NULL,
    chunk_count INTEGER NOT NULL,
    uploads INTEGER NOT NULL
);
"""
    + _QUARANTINE_TABLE
)

_ENTRY_COLUMNS: Final = (
    "id, parent, name, kind, size, mtime_ns, version, content_hash, chunk_size, chunks"
)


class _SqliteTxn:
    """:class:`MetaTxn` over one SQLite connection inside BEGIN ... COMMIT."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._c = conn
        # Every statement goes through this (a read with the cache swaps it, see below).
        self._execute: Callable[..., sqlite3.Cursor] = conn.execute
        self._version: int | None = None
        self._d_files = self._d_dirs = self._d_logical = 0
        self._d_stored = self._d_chunks = self._d_uploads = 0

    @staticmethod
    def _row(values: tuple[object, ...] | None) -> EntryRow | None:
        return None if values is None else EntryRow(*values)  # type: ignore[arg-type]

    def child(self, parent_id: int, name: str) -> EntryRow | None:
        cur = self._execute(
            f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE parent = ? AND name = ?",
            (parent_id, name),
        )
        return self._row(cur.fetchone())

    def entry(self, entry_id: int) -> EntryRow | None:
        cur = self._execute(f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE id = ?", (entry_id,))
        return self._row(cur.fetchone())

    def children(self, parent_id: int, after: str | None, limit: int) -> list[EntryRow]:
        if after is None:
            cur = self._execute(
                f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE parent = ? ORDER BY name LIMIT ?",
                (parent_id, limit),
            )
        else:
            cur = self._execute(
                f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE parent = ? AND name > ?"
                " ORDER BY name LIMIT ?",
                (parent_id, after, limit),
            )
        return [EntryRow(*values) for values in cur]

    def has_children(self, parent_id: int) -> bool:
        cur = self._execute("SELECT 1 FROM entries WHERE parent = ? LIMIT 1", (parent_id,))
        return cur.fetchone() is not None

    def subtree(self, entry_id: int) -> list[EntryRow]:
        cur = self._execute(
            "WITH RECURSIVE sub(id) AS (SELECT id FROM entries WHERE parent = ?"
            " UNION ALL SELECT e.id FROM entries e JOIN sub ON e.parent = sub.id)"
            f" SELECT {', '.join('e.' + c for c in _ENTRY_COLUMNS.split(', '))}"
            " FROM entries e JOIN sub ON e.id = sub.id",
            (entry_id,),
        )
        return [EntryRow(*values) for values in cur]

    def next_version(self) -> int:
        if self._version is None:
            (seq,) = self._execute("SELECT seq FROM stats WHERE id = 1").fetchone()
            self._version = int(seq) + 1
            self._execute("UPDATE stats SET seq = ? WHERE id = 1", (self._version,))
        return self._version

    def insert(
        self,
        parent_id: int,
        name: str,
        kind: int,
        *,
        size: int,
        mtime_ns: int,
        version: int,
        content_hash: bytes | None,
        chunk_size: int | None,
        chunks: bytes | None,
    ) -> EntryRow:
        cur = self._execute(
            "INSERT INTO entries (parent, name, kind, size, mtime_ns, version, content_hash,"
            " chunk_size, chunks) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (parent_id, name, kind, size, mtime_ns, version, content_hash, chunk_size, chunks),
        )
        if kind == KIND_FILE:
            self._d_files += 1
            self._d_logical += size
        else:
            self._d_dirs += 1
        entry_id = cur.lastrowid
        assert entry_id is not None
        return EntryRow(
            entry_id,
            parent_id,
            name,
            kind,
            size,
            mtime_ns,
            version,
            content_hash,
            chunk_size,
            chunks,
        )

    def set_content(
        self,
        old: EntryRow,
        *,
        size: int,
        mtime_ns: int,
        version: int,
        content_hash: bytes,
        chunk_size: int,
        chunks: bytes,
    ) -> EntryRow:
        self._execute(
            "UPDATE entries SET size = ?, mtime_ns = ?, version = ?, content_hash = ?,"
            " chunk_size = ?, chunks = ? WHERE id = ?",
            (size, mtime_ns, version, content_hash, chunk_size, chunks, old.id),
        )
        self._d_logical += size - old.size
        return attrs.evolve(
            old,
            size=size,
            mtime_ns=mtime_ns,
            version=version,
            content_hash=content_hash,
            chunk_size=chunk_size,
            chunks=chunks,
        )

    def move(self, old: EntryRow, parent_id: int, name: str, version: int) -> EntryRow:
        self._execute(
            "UPDATE entries SET parent = ?, name = ?, version = ? WHERE id = ?",
            (parent_id, name, version, old.id),
        )
        return attrs.evolve(old, parent=parent_id, name=name, version=version)

    def remove(self, rows: Sequence[EntryRow]) -> None:
        self._c.executemany("DELETE FROM entries WHERE id = ?", [(r.id,) for r in rows])
        for row in rows:
            if row.kind == KIND_FILE:
                self._d_files -= 1
                self._d_logical -= row.size
            else:
                self._d_dirs -= 1

    def refs(self, digest: bytes) -> int:
        cur = self._execute("SELECT refs FROM chunks WHERE digest = ?", (digest,))
        row = cur.fetchone()
        return 0 if row is None else int(row[0])

    def add_refs(self, chunks: Sequence[tuple[bytes, int]]) -> None:
        counts: dict[bytes, list[int]] = {}
        for digest, size in chunks:
            item = counts.setdefault(digest, [0, size])
            item[0] += 1
        for digest, (count, size) in counts.items():
            cur = self._execute(
                "UPDATE chunks SET refs = refs + ? WHERE digest = ?", (count, digest)
            )
            if cur.rowcount == 0:
                self._execute(
                    "INSERT INTO chunks (digest, size, refs) VALUES (?, ?, ?)",
                    (digest, size, count),
                )
                self._d_chunks += 1
                self._d_stored += size
        self.remove_pending(list(counts))

    def drop_refs(self, digests: Sequence[bytes]) -> list[bytes]:
        counts: dict[bytes, int] = {}
        for digest in digests:
            counts[digest] = counts.get(digest, 0) + 1
        released: list[bytes] = []
        for digest, count in counts.items():
            row = self._execute(
                "SELECT refs, size FROM chunks WHERE digest = ?", (digest,)
            ).fetchone()
            if row is None:
                continue
            refs, size = int(row[0]), int(row[1])
            if refs > count:
                self._execute("UPDATE chunks SET refs = ? WHERE digest = ?", (refs - count, digest))
            else:
                self._execute("DELETE FROM chunks WHERE digest = ?", (digest,))
                self._d_chunks -= 1
                self._d_stored -= size
                released.append(digest)
        self.add_pending(released)
        return released

    def add_pending(self, digests: Sequence[bytes]) -> None:
        self._c.executemany(
            "INSERT OR IGNORE INTO pending (digest) VALUES (?)", [(d,) for d in digests]
        )

    def remove_pending(self, digests: Sequence[bytes]) -> None:
        self._c.executemany("DELETE FROM pending WHERE digest = ?", [(d,) for d in digests])

    def is_pending(self, digest: bytes) -> bool:
        cur = self._execute("SELECT 1 FROM pending WHERE digest = ?", (digest,))
        return cur.fetchone() is not None

    def pending(self, limit: int) -> list[bytes]:
        cur = self._execute("SELECT digest FROM pending LIMIT ?", (limit,))
        return [bytes(r[0]) for r in cur]

    def create_upload(self, row: UploadRow) -> None:
        self._execute(
            "INSERT INTO uploads (id, path, mode, size, chunk_size, created_ns)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (row.id, row.path, row.mode, row.size, row.chunk_size, row.created_ns),
        )
        self._d_uploads += 1

    def upload(self, upload_id: str) -> UploadRow | None:
        cur = self._execute(
            "SELECT id, path, mode, size, chunk_size, created_ns FROM uploads WHERE id = ?",
            (upload_id,),
        )
        values = cur.fetchone()
        return None if values is None else UploadRow(*values)

    def upload_chunks(self, upload_id: str) -> list[tuple[bytes, int]]:
        cur = self._execute(
            "SELECT digest, size FROM upload_chunks WHERE upload = ? ORDER BY idx",
            (upload_id,),
        )
        return [(bytes(d), int(s)) for d, s in cur]

    def append_upload_chunk(self, upload_id: str, index: int, digest: bytes, size: int) -> None:
        self._execute(
            "INSERT INTO upload_chunks (upload, idx, digest, size) VALUES (?, ?, ?, ?)",
            (upload_id, index, digest, size),
        )
        self.add_refs([(digest, size)])

    def delete_upload(self, upload_id: str) -> list[bytes]:
        digests = [d for d, _ in self.upload_chunks(upload_id)]
        self._execute("DELETE FROM upload_chunks WHERE upload = ?", (upload_id,))
        cur = self._execute("DELETE FROM uploads WHERE id = ?", (upload_id,))
        if cur.rowcount:
            self._d_uploads -= 1
        return self.drop_refs(digests)

    def add_quarantine(self, row: QuarantineRow) -> None:
        self._execute(
            "INSERT OR REPLACE INTO quarantine (digest, size, found_ns, reason)"
            " VALUES (?, ?, ?, ?)",
            (row.digest, row.size, row.found_ns, row.reason),
        )

    def is_quarantined(self, digest: bytes) -> bool:
        cur = self._execute("SELECT 1 FROM quarantine WHERE digest = ?", (digest,))
        return cur.fetchone() is not None

    def any_quarantined(self) -> bool:
        return self._execute("SELECT 1 FROM quarantine LIMIT 1").fetchone() is not None

    def remove_quarantine(self, digests: Sequence[bytes]) -> None:
        self._c.executemany("DELETE FROM quarantine WHERE digest = ?", [(d,) for d in digests])

    def quarantined(self) -> list[QuarantineRow]:
        cur = self._execute("SELECT digest, size, found_ns, reason FROM quarantine")
        return [QuarantineRow(bytes(d), int(n), int(t), str(r)) for d, n, t, r in cur]

    def counters(self) -> Counters:
        row = self._execute(
            "SELECT seq, files, dirs, logical_bytes, stored_bytes, chunk_count, uploads"
            " FROM stats WHERE id = 1"
        ).fetchone()
        return Counters(
            seq=int(row[0]),
            files=int(row[1]) + self._d_files,
            dirs=int(row[2]) + self._d_dirs,
            logical_bytes=int(row[3]) + self._d_logical,
            stored_bytes=int(row[4]) + self._d_stored,
            chunk_count=int(row[5]) + self._d_chunks,
            uploads=int(row[6]) + self._d_uploads,
        )

    def flush_counters(self) -> None:
        deltas = (
            self._d_files,
            self._d_dirs,
            self._d_logical,
            self._d_stored,
            self._d_chunks,
            self._d_uploads,
        )
        if any(deltas):
            self._execute(
                "UPDATE stats SET files = files + ?, dirs = dirs + ?,"
                " logical_bytes = logical_bytes + ?, stored_bytes = stored_bytes + ?,"
                " chunk_count = chunk_count + ?, uploads = uploads + ? WHERE id = 1",
                deltas,
            )

    # --- full scans, for fsck -------------------------------------------------------------

    def all_entries(self) -> Iterator[EntryRow]:
        cur = self._execute(f"SELECT {_ENTRY_COLUMNS} FROM entries")
        return (EntryRow(*values) for values in cur)

    def all_chunks(self) -> Iterator[tuple[bytes, int, int]]:
        cur = self._execute("SELECT digest, size, refs FROM chunks")
        return ((bytes(d), int(s), int(r)) for d, s, r in cur)

    def all_upload_chunks(self) -> Iterator[tuple[bytes, int]]:
        cur = self._execute("SELECT digest, size FROM upload_chunks")
        return ((bytes(d), int(s)) for d, s in cur)

    def all_pending(self) -> list[bytes]:
        return [bytes(r[0]) for r in self._execute("SELECT digest FROM pending")]

    def upload_ids(self) -> list[str]:
        return [str(r[0]) for r in self._execute("SELECT id FROM uploads")]

    def uploads_created_before(self, created_ns: int, limit: int) -> list[str]:
        cur = self._execute(
            "SELECT id FROM uploads WHERE created_ns < ? ORDER BY created_ns LIMIT ?",
            (created_ns, limit),
        )
        return [str(r[0]) for r in cur]

    def set_refs(self, digest: bytes, refs: int) -> bool:
        row = self._execute("SELECT size FROM chunks WHERE digest = ?", (digest,)).fetchone()
        if row is None:
            return False
        if refs > 0:
            self._execute("UPDATE chunks SET refs = ? WHERE digest = ?", (refs, digest))
            return False
        self._execute("DELETE FROM chunks WHERE digest = ?", (digest,))
        self._d_chunks -= 1
        self._d_stored -= int(row[0])
        self.add_pending([digest])
        return True

    def chunks_after(self, after: bytes | None, limit: int) -> list[tuple[bytes, int]]:
        cur = self._execute(
            "SELECT digest, size FROM chunks WHERE digest > ?"
            " AND digest NOT IN (SELECT digest FROM quarantine) ORDER BY digest LIMIT ?",
            (after if after is not None else b"", limit),
        )
        return [(bytes(d), int(s)) for d, s in cur]


def _connect(path: str, *, same_thread: bool) -> sqlite3.Connection:
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=same_thread, cached_statements=256
    )
    conn.execute("PRAGMA busy_timeout = 10000")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA cache_size = -32768")
    conn.execute("PRAGMA temp_store = MEMORY")
    return conn


class _StaleReadError(Exception):
    """A read that used cached entries found that a write committed since it began."""


class _ReadCache:
    """Entries as the last committed state has them, for the reads on the Trio thread.

    Consistency. A write transaction calls :meth:`begin_write` before its BEGIN and
    :meth:`end_write` after its COMMIT or ROLLBACK: the first empties the cache and bumps the
    generation, and while any write is open nothing is looked up or stored. So every entry in
    the cache was read from one snapshot, the state before the next write commits. A read
    that finds all it needs in the cache saw that state. A read that misses goes to its own
    SQLite snapshot, which starts at its first lookup; if the generation changed since the
    read began, a write may have committed in between and the entries it took from the cache
    may be older than that snapshot: it starts over without the cache (:class:`_StaleReadError`). It
    stores what it looked up only if the generation is still the one it began with (so its
    snapshot is that state too). Reads run on the Trio thread only and never yield, so only
    the writer thread interleaves with one, and the writer never stores.
    """

    def __init__(self, max_bytes: int) -> None:
        self._lock = threading.Lock()
        self._max_bytes = max_bytes
        self._bytes = 0
        self.generation = 0
        self.writing = 0
        self.children: dict[tuple[int, str], EntryRow] = {}
        self.entries: dict[int, EntryRow] = {}

    def begin_write(self) -> None:
        with self._lock:
            self.writing += 1
            self.generation += 1
            self._clear()

    def end_write(self) -> None:
        with self._lock:
            self.writing -= 1
            self.generation += 1

    def store(self, generation: int, rows: Sequence[EntryRow]) -> None:
        """Keep ``rows`` (read in a snapshot of ``generation``) unless a write began since."""
        with self._lock:
            if generation != self.generation or self.writing:
                return
            for row in rows:
                self._bytes += _ENTRY_OVERHEAD + (len(row.chunks) if row.chunks else 0)
                if self._bytes > self._max_bytes:
                    # Starting over is simpler than an LRU and as good for a working set
                    # that fits; one that does not gains little from any policy.
                    self._clear()
                    self._bytes = _ENTRY_OVERHEAD + (len(row.chunks) if row.chunks else 0)
                self.children[(row.parent, row.name)] = row
                self.entries[row.id] = row

    def _clear(self) -> None:
        self.children.clear()
        self.entries.clear()
        self._bytes = 0


class _CachedReadTxn(_SqliteTxn):
    """The read transaction of :meth:`SqliteMetadataStore.read`: ``child`` and ``entry``
    answer from the cache where they can; the first statement it runs opens the SQLite
    snapshot (BEGIN) and checks that no write began since the read did."""

    def __init__(self, conn: sqlite3.Connection, cache: _ReadCache) -> None:
        super().__init__(conn)
        self._cache = cache
        self.generation = cache.generation
        self.begun = False
        self.looked_up: list[EntryRow] = []
        self._execute = self._first_execute

    def _first_execute(self, sql: str, params: Sequence[object] = ()) -> sqlite3.Cursor:
        conn = self._c
        conn.execute("BEGIN")
        self.begun = True
        self._execute = conn.execute
        cursor = conn.execute(sql, params)
        # The snapshot starts at this first SELECT: a write that began before it has bumped
        # the generation by now (begin_write runs before the writer's BEGIN).
        if self._cache.generation != self.generation:
            raise _StaleReadError
        return cursor

    def child(self, parent_id: int, name: str) -> EntryRow | None:
        row = self._cache.children.get((parent_id, name))
        if row is None:
            row = super().child(parent_id, name)
            if row is not None:
                self.looked_up.append(row)
        return row

    def entry(self, entry_id: int) -> EntryRow | None:
        row = self._cache.entries.get(entry_id)
        if row is None:
            row = super().entry(entry_id)
            if row is not None:
                self.looked_up.append(row)
        return row


class SqliteMetadataStore:
    """The embedded :class:`MetadataStore`.

    Args:
        path: The database file.
        fs: The file-system interface; each commit goes through ``fs.commit_metadata``.
        on_commit_failure: Called (from a worker thread) when a commit fails other than for
            lack of space: the commit's outcome on disk is then unknown, and the store must
            stop acknowledging writes.
        release_reserve: Called (from a worker thread) when a write that may use the
            store's space reserve, or opening, failed for lack of space: gives the reserve's
            space back and returns whether there was any to give.
        lock_timeout: Longest wait for the writer (seconds) before TimeoutError_.
        commit_latency: Where each commit's duration is recorded (seconds), if anywhere.
    """

    def __init__(
        self,
        path: str,
        fs: FS,
        *,
        on_commit_failure: Callable[[BaseException], None],
        release_reserve: Callable[[], bool],
        lock_timeout: float,
        commit_latency: LockedHistogram | None = None,
    ) -> None:
        self._path = path
        self._commit_latency = commit_latency
        self._release_reserve = release_reserve
        self._lock_timeout = lock_timeout
        self._fs = fs
        self._on_commit_failure = on_commit_failure
        self._write_lock = trio.Lock()
        self._limiter = trio.CapacityLimiter(1)
        self._reader: sqlite3.Connection | None = None
        self._writer: sqlite3.Connection | None = None
        self._thread_lock = threading.Lock()
        self._cache = _ReadCache(READ_CACHE_BYTES)

    def open_sync(self) -> bool:
        """Open (creating if needed) the database; returns whether it was created. If that
        fails for lack of space (SQLite creates its log and index files on open), or with an
        I/O error (as which SQLite reports a full disk while creating the index), the space
        reserve is released and the open tried again.

        Blocking: call from a worker thread.
        """
        try:
            return self._open_sync()
        except (NoSpaceError, StoreIOError):
            # SQLite reports a full disk while creating its index file (-shm) as an I/O
            # error: either way, try once more with the reserve's space.
            if not self._release_reserve():
                raise
            return self._open_sync()

    def _open_sync(self) -> bool:
        with translating("open metadata database"):
            writer = _connect(self._path, same_thread=False)
            try:
                mode = writer.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    msg = f"cannot put the metadata database in WAL mode (got {mode})"
                    raise sqlite3.OperationalError(msg)
                (version,) = writer.execute("PRAGMA user_version").fetchone()
                created = bool(version == 0)
                if created:
                    # executescript commits any open transaction first, so the whole
                    # initialisation is one script with its own BEGIN ... COMMIT.
                    writer.executescript(
                        "BEGIN IMMEDIATE;"
                        + _SCHEMA
                        + "INSERT INTO entries (id, parent, name, kind, size, mtime_ns, version)"
                        f" VALUES ({ROOT_ID}, 0, '', {KIND_DIR}, 0, {time.time_ns()}, 1);"
                        "INSERT INTO stats VALUES (1, 1, 0, 1, 0, 0, 0, 0);"
                        f"PRAGMA user_version = {_SCHEMA_VERSION};"
                        "COMMIT;"
                    )
                elif version == 1:
                    # Version 2 added the quarantine table; nothing else changed.
                    writer.executescript(
                        "BEGIN IMMEDIATE;"
                        + _QUARANTINE_TABLE
                        + f"PRAGMA user_version = {_SCHEMA_VERSION};"
                        "COMMIT;"
                    )
                elif version != _SCHEMA_VERSION:
                    msg = f"unknown metadata schema version {version}"
                    raise sqlite3.DatabaseError(msg)
            except BaseException:
                writer.close()
                raise
            self._writer = writer
            return created

    def open_reader(self) -> None:
        """Open the Trio thread's read connection (call on the Trio thread)."""
        with translating("open metadata database"):
            self._reader = _connect(self._path, same_thread=True)

    def close_reader(self) -> None:
        """Close the Trio thread's read connection (call on the Trio thread)."""
        if self._reader is not None:
            conn, self._reader = self._reader, None
            try:
                conn.close()
            except sqlite3.Error:
                pass

    def close_writer(self) -> None:
        """Close the write connection (blocking: the last checkpoint may run)."""
        if self._writer is not None:
            conn, self._writer = self._writer, None
            try:
                conn.close()
            except sqlite3.Error:
                pass

    async def read(self, fn: Callable[[MetaTxn], T]) -> T:
        """Run ``fn`` inline in a read snapshot (no checkpoint: not cancellable). Entries
        come from the read cache where it has them (see :class:`_ReadCache`); ``fn`` may
        run twice (it only reads)."""
        conn = self._reader
        assert conn is not None, "metadata store is closed"
        cache = self._cache
        # translating() spelled out: a context manager costs a STAT more than its lookups.
        try:
            if cache.writing:
                return self._read_uncached(conn, fn)
            txn = _CachedReadTxn(conn, cache)
            try:
                result = fn(txn)
            except _StaleReadError:
                # The snapshot is newer than entries already taken from the cache: read
                # again, all of it from the snapshot.
                conn.execute("ROLLBACK")
                return self._read_uncached(conn, fn)
            except BaseException:
                if txn.begun:
                    conn.execute("ROLLBACK")
                raise
            if txn.begun:
                conn.execute("ROLLBACK")
                cache.store(txn.generation, txn.looked_up)
            return result
        except (OSError, sqlite3.Error) as exc:
            raise store_error_for(exc, "read metadata") from exc

    @staticmethod
    def _read_uncached(conn: sqlite3.Connection, fn: Callable[[MetaTxn], T]) -> T:
        conn.execute("BEGIN")
        try:
            return fn(_SqliteTxn(conn))
        finally:
            conn.execute("ROLLBACK")

    async def read_slow(self, fn: Callable[[MetaTxn], T]) -> T:
        """Run ``fn`` in a snapshot on a fresh connection in a worker thread."""

        def run() -> T:
            with translating("read metadata"):
                conn = _connect(self._path, same_thread=True)
                try:
                    conn.execute("BEGIN")
                    return fn(_SqliteTxn(conn))
                finally:
                    conn.close()

        with waiting(Wait.DISK):
            return await trio.to_thread.run_sync(run)

    async def write(self, fn: Callable[[MetaTxn], T], *, use_reserve: bool = False) -> T:
        """Run ``fn`` in a write transaction in the writer thread and commit it. With
        ``use_reserve``, a transaction that fails for lack of space releases the store's
        space reserve (see ``space.py``) and runs once more.

        Cancellation: a cancelled wait for the writer leaves nothing done; once the
        transaction runs it is not interruptible, and its outcome (result or error) is
        returned even if cancellation was requested meanwhile.

        Raises:
            StoreError: Whatever ``fn`` raises (the transaction is rolled back), or the
                translation of a database error (NoSpaceError: the disk is full, and the
                reserve could not help).
            TimeoutError_: The writer was busy for longer than the lock timeout.
        """
        # Waiting for another transaction to commit is waiting for the disk too.
        with waiting(Wait.DISK), trio.move_on_after(self._lock_timeout) as scope:
            await self._write_lock.acquire()
        if scope.cancelled_caught:
            msg = f"metadata writer busy for more than {self._lock_timeout} s"
            raise TimeoutError_(msg)
        try:
            with waiting(Wait.DISK):
                return await trio.to_thread.run_sync(
                    self._write_sync_reserved if use_reserve else self._write_sync,
                    fn,
                    limiter=self._limiter,
                )
        finally:
            self._write_lock.release()

    def _write_sync_reserved(self, fn: Callable[[MetaTxn], T]) -> T:
        try:
            return self._write_sync(fn)
        except NoSpaceError:
            if not self._release_reserve():
                raise
            return self._write_sync(fn)

    def _write_sync(self, fn: Callable[[MetaTxn], T]) -> T:
        conn = self._writer
        assert conn is not None, "metadata store is closed"
        with self._thread_lock, translating("write metadata"):
            self._cache.begin_write()
            try:
                return self._write_txn(conn, fn)
            finally:
                self._cache.end_write()

    def _write_txn(self, conn: sqlite3.Connection, fn: Callable[[MetaTxn], T]) -> T:
        conn.execute("BEGIN IMMEDIATE")
        try:
            txn = _SqliteTxn(conn)
            result = fn(txn)
            txn.flush_counters()
        except BaseException:
            # SQLite may have rolled back already (after SQLITE_FULL, for one).
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

        def commit() -> None:
            conn.execute("COMMIT")

        started = time.perf_counter()
        try:
            self._fs.commit_metadata(commit)
        except BaseException as exc:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            if not isinstance(exc, Exception) or not _is_no_space(exc):
                self._on_commit_failure(exc)
            raise
        finally:
            if self._commit_latency is not None:
                self._commit_latency.observe(time.perf_counter() - started)
        return result


def _is_no_space(exc: Exception) -> bool:
    return isinstance(store_error_for(exc, "commit"), NoSpaceError)
