"""The store: a namespace of files and directories over content-addressed chunks.

Layers::

    Store (this module)        namespace operations, uploads, reads, recovery, GC, fsck
      namespace.py             the rules, as functions over one metadata transaction
      meta.MetadataStore       transactions over rows       (embedded: SQLite, WAL, FULL sync)
      objects.ObjectStore      chunk files by digest        (embedded: sharded directory tree)
      space.SpaceGuard         the free-space floor and the metadata reserve
      fs.FS                    every file-system call       (tests put shims here)

Chunks. File data is cut into fixed-size chunks (``chunk_size``, default 4 MiB; every chunk
but the last is full), each named by its BLAKE3 digest. Fixed-size rather than
content-defined chunking: a rolling hash in Python would cap ingest far below disk speed,
while fixed chunks dedup identical files and identical aligned blocks at full speed. 4 MiB
keeps the per-chunk costs (a journal transaction, two fsyncs: ~0.5 ms) small against the
data's (~3-4 ms per chunk here). Identical chunks are stored once and reference-counted
(references from files and from resumable uploads); deleting a file drops its references,
and a chunk whose count reaches zero is collected.

Memory. No request holds a whole chunk in memory to write it: an upload (and ``ingest_fd``)
writes each chunk to its temp file piece by piece through at most ``upload_pipeline``
buffers of ``upload_buffer`` bytes (2 x 1 MiB by default, whatever the chunk size; see
``upload.py``); fsck and resumed uploads verify chunks by hashing a mapping of the file. A
reader streaming pieces (WebSocket downloads) verifies each chunk whole before handing any
of it out, so it holds ``read_ahead + 1`` chunk buffers (12 MiB at the defaults); one handing
out ``sendfile`` segments (Unix socket downloads) holds only descriptors. Buffers come from
small pools (``max_idle_buffers`` idle ones per size) of page-aligned anonymous mappings,
given back to the system as soon as they are dropped.

Journal and durable order. The ``pending`` table is the intent journal: a digest is journalled
(committed) *before* a new chunk file is renamed into place, and when its last reference is
dropped. So every chunk file that might exist without a reference is listed there, and
recovery and the collector only ever look at those rows (and at ``tmp/``), never at the whole
store. Order for a write: chunk data fsynced, renamed, shard directory fsynced, then the
metadata commit that references it. An fsync failure (or a failed metadata commit) fails the
request and turns the store read-only (ReadOnlyError for every later write) until reopened.

Corruption and quarantine. Every read verifies each chunk against its digest. A chunk found
corrupt, by a read, a resumed upload or fsck, is logged at ERROR, recorded in the
``quarantine`` table and its file moved to ``quarantine/`` (under the chunk's lock, and only
if the file is still the one found bad), so that it is never served or trusted again;
``status()`` counts the quarantined chunks and fsck lists them. An upload never deduplicates
against a stored chunk it has not verified: it publishes its own freshly hashed copy over the
stored file, which heals a quarantined (or missing) chunk, and every file using it, and drops
the record; a commit over a quarantined chunk (a resumed upload's earlier chunk) fails with
CorruptDataError. A quarantined chunk nothing references any more is collected with its
record and its quarantined copy.

Free space (``space.py``). New data (uploads, ``ingest_fd``, new files and directories) is
refused with NoSpaceError below ``min_free_space``, at admission and at every chunk; deletes,
renames and reads never are. Metadata writes that add no data may release a preallocated
reserve file when the disk is full to the last byte (and so may opening), and the reserve is
allocated again once space comes back; so space can always be freed through the store, and
writes are admitted again without a restart.

Pins and collection. Chunks in use by an upload in progress or by an open reader are pinned
in memory; the collector skips pinned digests and rechecks under the chunk's lock, so a chunk
is never deleted while something is about to reference or read it.

Concurrency. There is no global lock. Namespace changes hold per-path locks (see
``locks.LockTable``) around their metadata transaction; uploads to different paths never
wait for each other, and uploads to the same path neither (last commit wins; see
``upload.py``). Readers take no lock: they read a snapshot. The metadata write transaction is
the one short serialization point, and no data I/O ever happens inside it.

Threads. Chunk I/O and hashing run in worker threads bounded by ``io_threads``
(``trio.to_thread`` with a CapacityLimiter): per 1 MiB piece, hashing takes ~0.4 ms per hash
(two: the chunk's and the whole file's), its direct write 1-3 ms, and a chunk's fsync
3-10 ms; inline, each would stall every other connection for that long, and the thread
hand-off (~50-90 us) is small against any of them. Metadata reads
run inline (see ``meta.py`` for the measurements); metadata writes run in a dedicated writer
thread.

Cancellation. Every operation is atomic with respect to cancellation: cancelled before its
metadata commit it has no effect; the commit itself is not interruptible, and once it has
happened the operation returns its result (the bounded collection that may follow runs
shielded).
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import stat as stat_module
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final, ParamSpec, TypeVar

import blake3
import trio

from librorum.errors import (
    BusyError,
    ConflictError,
    CorruptDataError,
    InvalidArgumentError,
    InvalidPathError,
    IsADirectoryError_,
    LibrorumError,
    NotFoundError,
    ReadOnlyError,
    StoreError,
    StoreIOError,
    TimeoutError_,
    TooLargeError,
)
from librorum.limits import MIN_FREE_SPACE
from librorum.protocol.constants import (
    DEFAULT_LIST_LIMIT,
    DEFAULT_MAX_FILE_SIZE,
    MAX_NAME_BYTES,
    WriteMode,
)
from librorum.store import namespace as ns
from librorum.store._translate import translating
from librorum.store.fs import FS, OsFS
from librorum.store.locks import BufferPool, ChunkPins, LockTable
from librorum.store.meta import KIND_DIR, MetaTxn, QuarantineRow, UploadRow
from librorum.store.objects import (
    DIRECT_ALIGN,
    CorruptChunkError,
    LocalChunkStore,
    Staged,
    new_buffer,
)
from librorum.store.paths import normalize
from librorum.store.reader import Reader, Span
from librorum.store.space import SpaceGuard
from librorum.store.sqlite import SqliteMetadataStore
from librorum.store.types import (
    FSCK_REPORT_ITEMS,
    FileInfo,
    FsckReport,
    ListPage,
    RecoveryReport,
    StoreStatus,
    UploadStatus,
)
from librorum.store.upload import Upload

log = logging.getLogger("librorum.store")

P = ParamSpec("P")
T = TypeVar("T")

#: Chunk size of new files (see the module docstring for the choice).
DEFAULT_CHUNK_SIZE: Final = 4 << 20
MIN_CHUNK_SIZE: Final = 4 << 10
MAX_CHUNK_SIZE: Final = 64 << 20
#: Worker threads for chunk I/O and hashing (most of their time is spent waiting for fsync).
DEFAULT_IO_THREADS: Final = 8
#: Buffers of one upload: one filling while the others are hashed and written (see
#: ``upload.py``). Two keep receiving and writing overlapped.
DEFAULT_UPLOAD_PIPELINE: Final = 2
#: Bytes of one upload buffer: an upload holds at most ``upload_pipeline`` of them, whatever
#: the chunk size (2 MiB by default). 1 MiB pieces keep the per-piece costs (two thread
#: hand-offs, ~0.1 ms) small against the piece's hashing and writing (~1-3 ms); it is also
#: the largest DATA payload a client sends by default, so a piece usually is one frame.
DEFAULT_UPLOAD_BUFFER: Final = 1 << 20
#: Chunks of one upload staged (written, writeback started, not yet fsynced) before they are
#: published together; with two batches in flight (one staging, one publishing) an upload
#: holds at most twice this many temp files open. 8 chunks of 4 MiB: 32 MiB per batch.
DEFAULT_UPLOAD_BATCH: Final = 8
#: Chunks a reader reads and verifies ahead of the consumer.
DEFAULT_READ_AHEAD: Final = 2
#: Longest wait for a path lock, a chunk lock or the metadata writer before TimeoutError_.
DEFAULT_LOCK_TIMEOUT: Final = 30.0
#: Journal entries the collector handles per step (each step runs after a commit that
#: released chunks, bounded so that the request it follows stays short).
DEFAULT_GC_BATCH: Final = 256
#: LIST pages up to this many entries are read inline; larger ones in a worker thread (a page
#: of 1,000 takes ~6 ms, too long to stall the event loop; 100 take ~0.6 ms).
DEFAULT_INLINE_LIST_LIMIT: Final = 100
#: Longest wait at close for chunk jobs in flight (then they are cancelled).
DEFAULT_CLOSE_TIMEOUT: Final = 30.0
#: Idle buffers kept for reuse, per size (upload buffers, read buffers): a small bound, so that
#: a burst of requests leaves little memory held once it is over.
DEFAULT_MAX_IDLE_BUFFERS: Final = 4
#: Upload buffers beyond each upload's first, shared by all uploads: one upload alone keeps
#: ``upload_pipeline`` buffers busy, while 64 at once hold 64 MiB instead of 128.
DEFAULT_UPLOAD_EXTRA_BUFFERS: Final = 8
#: Free space below which new data is refused (see ``space.py`` and ``limits.py``).
DEFAULT_MIN_FREE_SPACE: Final = MIN_FREE_SPACE
#: The space kept aside for metadata writes that add no data (deletes, renames, the
#: collector's journal) when the disk is full to the last byte: a delete of one file writes
#: a few pages to SQLite's log; 8 MiB covers a recursive delete of tens of thousands of
#: entries, and the log's file keeps the space it grew into once the reserve is released.
DEFAULT_METADATA_RESERVE: Final = 8 << 20
#: Upload ids follow the rule of a path component: 1 to 255 bytes of UTF-8, no NUL, no "/".
MAX_UPLOAD_ID_BYTES: Final = MAX_NAME_BYTES

_DB_NAME: Final = "meta.db"
_LOCK_NAME: Final = "LOCK"


def _check_upload_id(upload_id: str) -> None:
    try:
        size = len(upload_id.encode("utf-8"))
    except UnicodeEncodeError as exc:
        msg = "an upload id must be valid Unicode"
        raise InvalidPathError(msg) from exc
    if not 0 < size <= MAX_UPLOAD_ID_BYTES or "\x00" in upload_id or "/" in upload_id:
        msg = f"an upload id must be 1 to {MAX_UPLOAD_ID_BYTES} bytes without NUL or '/'"
        raise InvalidPathError(msg)


def _check_range(offset: int, length: int | None) -> None:
    if offset < 0 or (length is not None and length < 0):
        msg = f"offset and length must not be negative (got {offset}, {length})"
        raise ValueError(msg)


class Store:
    """An open store. Use :func:`open_store`; all methods are safe to call concurrently."""

    def __init__(
        self,
        data_dir: Path,
        *,
        fs: FS,
        max_file_size: int,
        chunk_size: int,
        io_threads: int,
        upload_pipeline: int,
        upload_batch: int,
        upload_buffer: int,
        upload_extra_buffers: int,
        read_ahead: int,
        lock_timeout: float,
        gc_batch: int,
        max_idle_buffers: int,
        inline_list_limit: int,
        min_free_space: int,
        metadata_reserve: int,
    ) -> None:
        self.data_dir = data_dir
        self._inline_list_limit = inline_list_limit
        self.max_file_size = max_file_size
        self.chunk_size = chunk_size
        self.upload_pipeline = upload_pipeline
        self.upload_batch = upload_batch
        self.upload_buffer = upload_buffer
        self.read_ahead = read_ahead
        self._fs = fs
        self._gc_batch = gc_batch
        self._io_limiter = trio.CapacityLimiter(io_threads)
        self._space = SpaceGuard(
            str(data_dir), fs, min_free=min_free_space, reserve=metadata_reserve
        )
        self._meta = SqliteMetadataStore(
            str(data_dir / _DB_NAME),
            fs,
            on_commit_failure=self._on_fatal_io,
            release_reserve=self._space.release_sync,
            lock_timeout=lock_timeout,
        )
        self._objects = LocalChunkStore(
            str(data_dir),
            fs,
            limiter=self._io_limiter,
            on_fsync_failure=self._on_fatal_io,
            check_space=self._space.check_data_sync,
        )
        self._pins = ChunkPins()
        self._path_locks: LockTable[str] = LockTable(timeout=lock_timeout)
        self._chunk_locks: LockTable[bytes] = LockTable(timeout=lock_timeout)
        self._upload_buffers = BufferPool(upload_buffer, max_idle=max_idle_buffers)
        # How many more upload buffers beyond each upload's first may be in use (see upload.py).
        self._extra_upload_buffers = upload_extra_buffers
        self._read_buffers = BufferPool(chunk_size, max_idle=max_idle_buffers)
        self._attached: dict[str, Upload | None] = {}
        self._nursery: trio.Nursery | None = None
        self._jobs_running = 0
        self._jobs_idle = trio.Event()
        self._read_only: str | None = None
        self._closed = False
        self._lock_fd: int | None = None
        self.recovery: RecoveryReport | None = None

    # --- internals used by uploads and readers --------------------------------------------------

    def _on_fatal_io(self, exc: BaseException) -> None:
        # Called from worker threads: a plain attribute store is atomic.
        if self._read_only is None:
            self._read_only = f"an fsync or metadata commit failed ({exc!r})"
            log.error("store turned read-only: %s", self._read_only)

    @property
    def read_only(self) -> bool:
        """Whether writes are refused (after an fsync failure; reopen to clear)."""
        return self._read_only is not None

    def _check_writable(self) -> None:
        if self._closed:
            msg = "the store is closed"
            raise ReadOnlyError(msg)
        if self._read_only is not None:
            msg = f"the store is read-only: {self._read_only}"
            raise ReadOnlyError(msg)

    async def _check_space(self, what: str) -> None:
        """Admit a request that adds data, or refuse it below the free-space floor (see
        ``space.py``).

        Raises:
            NoSpaceError: Below the floor.
            StoreIOError: statvfs failed.
        """
        await self._in_thread(self._space.check_data_sync, what)

    def _take_extra_buffer(self) -> bool:
        """Whether an upload may use one more buffer than its first (it then holds it until
        it finishes, and gives it back with :meth:`_give_extra_buffers`)."""
        if self._extra_upload_buffers <= 0:
            return False
        self._extra_upload_buffers -= 1
        return True

    def _give_extra_buffers(self, count: int) -> None:
        self._extra_upload_buffers += count

    def _get_buffer(self, size: int) -> mmap.mmap:
        """A read buffer of at least ``size`` bytes (a reader's whole chunk)."""
        pool = self._read_buffers
        return pool.get() if size <= pool.size else new_buffer(size)

    def _put_buffer(self, buf: mmap.mmap) -> None:
        self._read_buffers.put(buf)

    async def _in_thread(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        assert not kwargs
        return await trio.to_thread.run_sync(fn, *args, limiter=self._io_limiter)

    def _start_job(self, fn: Callable[[T], Awaitable[None]], job: T) -> None:
        if self._nursery is None or self._closed:
            msg = "the store is closed"
            raise ReadOnlyError(msg)
        self._nursery.start_soon(self._job_wrapper, fn, job)

    async def _job_wrapper(self, fn: Callable[[T], Awaitable[None]], job: T) -> None:
        self._jobs_running += 1
        try:
            await fn(job)
        finally:
            self._jobs_running -= 1
            if not self._jobs_running:
                self._jobs_idle.set()
                self._jobs_idle = trio.Event()

    async def _wait_jobs(self) -> None:
        """Let chunk jobs in flight finish (so that an attached resumable upload keeps
        everything it had stored). The caller bounds the wait."""
        while self._jobs_running:
            await self._jobs_idle.wait()

    async def _detach_idle_uploads(self) -> None:
        """At close: detach the resumable uploads still attached and not in a call, so that
        each keeps what it received (its staged batch is published and recorded). One in a
        call keeps what its published batches recorded."""
        for upload in [u for u in self._attached.values() if u is not None]:
            if upload.idle:
                try:
                    await upload.detach()
                except LibrorumError as exc:
                    log.warning("upload %s not detached at close: %s", upload.upload_id, exc)

    async def _publish_chunks(self, staged: Sequence[Staged]) -> None:
        """Make pinned, staged chunks (distinct digests) durable, as one batch. Under the
        chunks' locks, the chunks the store holds neither as referenced nor as pending are
        journalled as pending in one transaction (before any of them can appear under its
        name), then every chunk is published, a stored one over its existing file. Takes
        ownership of ``staged``: on any error or cancellation nothing of it is left in the
        temp directory or open.

        Why a stored chunk is published again rather than its fresh copy dropped: the store
        cannot know that the stored file is still good without reading it back, and a
        deduplicated upload that trusted a file which rotted since would be acknowledged and
        unreadable. The fresh copy was hashed as it was written, so publishing it costs what
        it cost to write any new chunk (its fsync, a rename, the shard's fsync, shared with
        the batch) and heals the stored file. Checking the stored file instead would read
        and hash it back (one more pass over the data, from the disk: chunks are written
        with O_DIRECT and are not in the page cache), and a bad one would need the fresh
        copy all the same. Measured: a deduplicated upload of large chunks costs what a new
        one does (0.12-0.20 GB/s against 0.37-0.70 when stored chunks were trusted, on a
        loaded machine); for small files the per-file metadata commit dominates, and
        checking small stored chunks instead of publishing them gained nothing measurable
        (identical 100-byte files: 186-224 against 188-214 files/s).

        A quarantined chunk published this way is healed: its record is dropped once the
        fresh copy is durable under its name.

        Raises:
            NoSpaceError, StoreIOError, ReadOnlyError, TimeoutError_: The batch could not be
                made durable (its chunks may be on disk, pending, collected later).
        """
        remaining = list(staged)
        try:
            digests = [item.digest for item in remaining]
            async with self._chunk_locks.hold(digests):
                known = await self._meta.read(
                    lambda t: [(t.refs(d), t.is_pending(d), t.is_quarantined(d)) for d in digests]
                )
                new = [
                    digest
                    for digest, (refs, pending, _) in zip(digests, known, strict=True)
                    if not refs and not pending
                ]
                healed = [
                    digest
                    for digest, (_, _, quarantined) in zip(digests, known, strict=True)
                    if quarantined
                ]
                self._check_writable()
                if new:
                    await self._meta.write(lambda t: t.add_pending(new))
                publishing, remaining = remaining, []  # publish_many owns them now
                await self._objects.publish_many(publishing)
                if healed:
                    await self._heal(healed)
        finally:
            if remaining:
                with trio.CancelScope(shield=True):
                    await self._objects.discard_many(remaining)

    async def _commit_file(
        self,
        path: str,
        mode: WriteMode,
        *,
        size: int,
        content_hash: bytes,
        chunk_size: int,
        chunks: Sequence[tuple[bytes, int]],
        upload_id: str | None,
    ) -> FileInfo:
        self._check_writable()
        mtime_ns = time.time_ns()
        async with self._path_locks.hold([path]):
            info, released = await self._meta.write(
                lambda t: ns.commit_file(
                    t,
                    path,
                    mode,
                    size=size,
                    content_hash=content_hash,
                    chunk_size=chunk_size,
                    chunks=chunks,
                    mtime_ns=mtime_ns,
                    upload_id=upload_id,
                )
            )
        await self._after_commit(released)
        return info

    async def _after_commit(self, released: Sequence[bytes]) -> None:
        if released:
            with trio.CancelScope(shield=True):
                await self._collect_step()

    async def _open_verified(self, span: Span) -> int:
        return await self._in_thread(
            self._objects.open_verified, span.digest, span.chunk_length, span.digest
        )

    # --- quarantine -----------------------------------------------------------------------------

    async def _on_corrupt(self, exc: CorruptDataError, size: int, where: str) -> None:
        """A chunk failed verification (or is missing) during ``where``: log it at ERROR and
        move the bad file aside, so that it is never served or trusted again until an upload
        of its content heals it (see :meth:`_quarantine`).

        Cancellation: shielded (bounded by the lock timeout and a few file operations).
        Never raises: a quarantine that fails is logged, and the caller reports the
        corruption all the same.
        """
        if not isinstance(exc, CorruptChunkError):
            return
        digest = exc.digest.hex()
        if exc.identity is None:
            log.error("chunk %s is missing (%s): files using it cannot be read", digest, where)
            return
        with trio.CancelScope(shield=True):
            try:
                moved = await self._quarantine(exc.digest, exc.identity, size, f"{where}: {exc}")
            except (StoreError, TimeoutError_) as failure:
                log.error(
                    "chunk %s failed verification (%s) and could not be quarantined: %s",
                    digest,
                    where,
                    failure,
                )
                return
        if moved:
            log.error(
                "chunk %s failed verification (%s): moved to quarantine/; uploading its "
                "content again heals the files using it",
                digest,
                where,
            )

    async def _quarantine(
        self, digest: bytes, identity: tuple[int, int], size: int, reason: str
    ) -> bool:
        """Under the chunk's lock (so that no publish or collection runs meanwhile): if the
        chunk's file is still the one found bad, record the chunk as quarantined, then move
        the file to ``quarantine/``. Recorded first: a crash between the two leaves the bad
        file under its name and recorded, found bad again by the next read; the other order
        would leave a file in ``quarantine/`` that nothing records.

        Returns:
            Whether the chunk was quarantined (False: it is gone, or was replaced since, or
            the store cannot write).

        Raises:
            StoreIOError, NoSpaceError, TimeoutError_: Recording or moving failed.
        """
        if self._read_only is not None or self._closed:
            return False
        async with self._chunk_locks.hold([digest]):
            if not await self._objects.is_current(digest, identity):
                return False
            row = QuarantineRow(digest=digest, size=size, found_ns=time.time_ns(), reason=reason)
            await self._meta.write(lambda t: t.add_quarantine(row), use_reserve=True)
            return await self._objects.quarantine(digest, identity)

    async def _heal(self, digests: Sequence[bytes]) -> None:
        """Quarantined chunks were published afresh (under their locks): drop their records,
        then their quarantined copies."""
        await self._meta.write(lambda t: t.remove_quarantine(digests), use_reserve=True)
        for digest in digests:
            log.warning("chunk %s healed: a fresh copy replaced the quarantined one", digest.hex())
        await self._objects.drop_quarantined(digests)

    async def _clear_quarantine_leftovers(self) -> int:
        """At open: remove quarantined copies that no record names (a heal or a collection
        interrupted after dropping the record). Returns how many."""
        names = await self._in_thread(self._objects.list_quarantine_sync)
        if not names:
            return 0
        recorded = {row.digest.hex() for row in await self._meta.read(lambda t: t.quarantined())}
        stale = [bytes.fromhex(n) for n in names if n not in recorded and _is_hex_digest(n)]
        if stale:
            await self._objects.drop_quarantined(stale)
        return len(stale)

    # --- garbage collection ---------------------------------------------------------------------

    async def _collect_step(self) -> tuple[int, int]:
        """Handle up to ``gc_batch`` journal entries that no pin protects: delete the chunk
        files nothing references (then fsync their shards), and drop the entries.

        Never raises: on failure the entries stay journalled and a later step retries.

        Returns:
            (entries handled, chunk files deleted).
        """
        if self._read_only is not None or self._closed:
            return (0, 0)
        try:
            batch = await self._meta.read(lambda t: t.pending(self._gc_batch + len(self._pins)))
            candidates = [d for d in batch if not self._pins.pinned(d)][: self._gc_batch]
            if not candidates:
                return (0, 0)
            async with self._chunk_locks.hold(candidates):
                candidates = [d for d in candidates if not self._pins.pinned(d)]
                refs = await self._meta.read(
                    lambda t: [(t.refs(d), t.is_quarantined(d)) for d in candidates]
                )
                dead = [d for d, (r, _) in zip(candidates, refs, strict=True) if r == 0]
                # A quarantined chunk that nothing references any more needs no healing.
                unquarantined = [
                    d for d, (r, q) in zip(candidates, refs, strict=True) if not r and q
                ]
                if dead:
                    await self._objects.delete(dead)

                def drop(t: MetaTxn) -> None:
                    t.remove_pending(candidates)
                    t.remove_quarantine(unquarantined)

                await self._meta.write(drop, use_reserve=True)
                if unquarantined:
                    await self._objects.drop_quarantined(unquarantined)
            if dead and not self._space.reserve_held:
                # Space came back: to the reserve first (new data is refused until it holds
                # its space again), once the journal no longer needs any.
                await self._in_thread(self._space.restore_sync)
            return (len(candidates), len(dead))
        except (StoreError, TimeoutError_) as exc:
            log.warning("chunk collection failed, will retry: %s", exc)
            return (0, 0)

    async def collect_garbage(self) -> int:
        """Collect every unreferenced, unpinned chunk now (normally done in bounded steps
        after each commit that releases chunks, and on open).

        Cancellation: safe at any point: a step interrupted between deleting files and
        dropping their journal entries is finished by the next step or the next open.

        Returns:
            The number of chunk files deleted.
        """
        total = 0
        while True:
            handled, deleted = await self._collect_step()
            total += deleted
            if not handled:
                return total

    # --- lifecycle ------------------------------------------------------------------------------

    async def _open(self) -> None:
        start = time.perf_counter()
        await trio.to_thread.run_sync(self._open_sync)
        self._meta.open_reader()
        temp_removed = await self._in_thread(self._objects.clear_temp_sync)
        await self._clear_quarantine_leftovers()
        if not await self._in_thread(self._space.restore_sync):
            log.warning("the disk is full: the metadata reserve is not allocated yet")
        checked = collected = 0
        while True:
            handled, deleted = await self._collect_step()
            checked += handled
            collected += deleted
            if not handled:
                break
        counters = await self._meta.read(lambda t: t.counters())
        self.recovery = RecoveryReport(
            temp_files_removed=temp_removed,
            pending_checked=checked,
            chunks_collected=collected,
            uploads_kept=counters.uploads,
            seconds=time.perf_counter() - start,
        )

    def _open_sync(self) -> None:
        with translating("open data directory"):
            os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
            fd = os.open(self.data_dir / _LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                os.close(fd)
                msg = f"the store at {self.data_dir} is open in another process"
                raise BusyError(msg) from exc
            except BaseException:
                os.close(fd)
                raise
            self._lock_fd = fd
        try:
            self._objects.init_sync()
            self._space.load_sync()
            self._meta.open_sync()
        except BaseException:
            self._unlock()
            raise

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def _close(self) -> None:
        with trio.CancelScope(shield=True):
            try:
                await self._collect_step()
            finally:
                self._closed = True
                self._meta.close_reader()
                await trio.to_thread.run_sync(self._meta.close_writer)
                self._unlock()

    # --- namespace --------------------------------------------------------------------------------

    async def stat(self, path: str) -> FileInfo:
        """Describe the entry at ``path``.

        Cancellation: not interruptible (a short inline read).

        Raises:
            InvalidPathError: ``path`` breaks the path rules.
            NotFoundError: Nothing is there.
            NotADirectoryError_: A file is on the way.
        """
        normal = normalize(path)
        return await self._meta.read(lambda t: ns.stat(t, normal))

    async def list(
        self, path: str, *, cursor: str | None = None, limit: int = DEFAULT_LIST_LIMIT
    ) -> ListPage:
        """One page of a directory's entries, sorted by name (code point order, which is
        UTF-8 byte order).

        Args:
            path: The directory.
            cursor: The previous page's ``next_cursor`` (entries after that name).
            limit: At most this many entries (>= 1).

        Cancellation: not interruptible (a page of up to ``inline_list_limit`` entries is
        read inline, a larger one in a worker thread, which runs to completion).

        Raises:
            InvalidPathError, NotFoundError: As for :meth:`stat`.
            NotADirectoryError_: ``path`` is a file.
            ValueError: ``limit`` < 1 (a caller bug).
        """
        if limit < 1:
            msg = f"limit must be at least 1, got {limit}"
            raise ValueError(msg)
        normal = normalize(path)
        read = self._meta.read if limit <= self._inline_list_limit else self._meta.read_slow
        entries, next_cursor = await read(lambda t: ns.list_dir(t, normal, cursor, limit))
        return ListPage(entries=entries, next_cursor=next_cursor)

    async def mkdir(self, path: str, *, parents: bool = False) -> FileInfo:
        """Create a directory (and missing parents if ``parents``; then an existing directory
        is not an error).

        Cancellation: cancelled before its metadata commit, it has no effect; the commit is
        not interruptible, and once made the result is returned.

        Raises:
            InvalidPathError: ``path`` breaks the path rules.
            AlreadyExistsError: Something is there.
            NotFoundError: The parent is missing (and ``parents`` is false).
            NotADirectoryError_: A file is on the way.
            ReadOnlyError, NoSpaceError, StoreIOError: The store cannot write.
        """
        normal = normalize(path)
        self._check_writable()
        await self._check_space("mkdir")
        mtime_ns = time.time_ns()
        async with self._path_locks.hold([normal]):
            return await self._meta.write(
                lambda t: ns.mkdir(t, normal, parents=parents, mtime_ns=mtime_ns)
            )

    async def delete(self, path: str, *, recursive: bool = False) -> int:
        """Delete a file, an empty directory, or (``recursive``) a whole tree, atomically.

        Returns:
            The number of entries removed.

        Cancellation: cancelled before its metadata commit, it has no effect; the commit is
        not interruptible, and once made the result is returned.

        Raises:
            InvalidPathError: ``path`` breaks the path rules.
            InvalidArgumentError: ``path`` is the root (BAD_REQUEST).
            NotFoundError: Nothing is there.
            NotEmptyError: A non-empty directory and not ``recursive``.
            ReadOnlyError, StoreIOError: The store cannot write (a delete is never refused
                for lack of space: see ``space.py``).
        """
        normal = normalize(path)
        self._check_writable()
        async with self._path_locks.hold([normal]):
            count, released = await self._meta.write(
                lambda t: ns.delete(t, normal, recursive=recursive), use_reserve=True
            )
        await self._after_commit(released)
        return count

    async def rename(self, src: str, dst: str, *, overwrite: bool = False) -> FileInfo:
        """Move a file or directory atomically (see ``namespace.rename`` for the rules).

        Cancellation: cancelled before its metadata commit, it has no effect; the commit is
        not interruptible, and once made the result is returned.

        Raises:
            InvalidPathError: A path breaks the rules.
            InvalidArgumentError: A path is the root, or ``dst`` is inside ``src``
                (BAD_REQUEST).
            NotFoundError: ``src`` or ``dst``'s parent is missing.
            AlreadyExistsError: ``dst`` exists and not ``overwrite``.
            IsADirectoryError_: ``dst`` is a directory.
            NotADirectoryError_: A file is on the way, or a directory would replace a file.
            ReadOnlyError, StoreIOError: The store cannot write (a rename is never refused
                for lack of space).
        """
        normal_src, normal_dst = normalize(src), normalize(dst)
        self._check_writable()
        async with self._path_locks.hold([normal_src, normal_dst]):
            info, released = await self._meta.write(
                lambda t: ns.rename(t, normal_src, normal_dst, overwrite=overwrite),
                use_reserve=True,
            )
        await self._after_commit(released)
        return info

    # --- uploads ---------------------------------------------------------------------------------

    async def begin_upload(
        self,
        path: str,
        *,
        mode: WriteMode = WriteMode.CREATE,
        size: int | None = None,
        upload_id: str | None = None,
    ) -> Upload:
        """Start writing a file. The mode's conditions are checked now (fail fast) and again,
        atomically, at commit.

        Args:
            path: Where the file will be.
            mode: CREATE (create or replace), EXCLUSIVE (fail if anything is there) or
                OVERWRITE (fail if no file is there).
            size: The total size, if known: checked against the maximum now, and against
                the data at each write (TooLargeError) and at commit (ConflictError).
            upload_id: Makes the upload resumable: its progress is recorded chunk by chunk
                and survives disconnects and restarts (see :meth:`resume_upload`).

        Cancellation: a cancelled call starts nothing.

        Raises:
            InvalidPathError: ``path`` or ``upload_id`` breaks the rules.
            TooLargeError: ``size`` exceeds the maximum file size.
            AlreadyExistsError, NotFoundError, NotADirectoryError_, IsADirectoryError_: The
                mode's conditions do not hold.
            ConflictError: An upload with this id exists already.
            ReadOnlyError, NoSpaceError, StoreIOError: The store cannot write.
        """
        normal = normalize(path)
        self._check_writable()
        if size is not None:
            if size < 0:
                msg = f"size must not be negative, got {size}"
                raise ValueError(msg)
            if size > self.max_file_size:
                msg = f"{size} bytes exceeds the maximum file size of {self.max_file_size}"
                raise TooLargeError(msg)
        await self._check_space("upload")
        if upload_id is None:
            return await self._anonymous_upload(normal, mode, size)
        _check_upload_id(upload_id)
        if upload_id in self._attached:
            msg = f"upload {upload_id!r} is in progress on another stream"
            raise ConflictError(msg)
        row = UploadRow(
            id=upload_id,
            path=normal,
            mode=mode.value,
            size=size,
            chunk_size=self.chunk_size,
            created_ns=time.time_ns(),
        )

        def create(t: MetaTxn) -> None:
            ns.check_write_target(t, normal, mode)
            if t.upload(upload_id) is not None:
                msg = f"upload {upload_id!r} exists already (resume it or abort it)"
                raise ConflictError(msg)
            t.create_upload(row)

        self._attached[upload_id] = None
        try:
            await self._meta.write(create)
            upload = Upload(
                self,
                path=normal,
                mode=mode,
                size=size,
                upload_id=upload_id,
                chunk_size=self.chunk_size,
                recorded=[],
                hasher=blake3.blake3(),
            )
        except BaseException:
            del self._attached[upload_id]
            raise
        self._attached[upload_id] = upload
        return upload

    async def _anonymous_upload(self, normal: str, mode: WriteMode, size: int | None) -> Upload:
        """A new upload without an id to ``normal`` (a normalised path), once the mode's
        conditions hold now (they are checked again at commit).

        Raises:
            AlreadyExistsError, NotFoundError, NotADirectoryError_, IsADirectoryError_: The
                mode's conditions do not hold.
        """
        await self._meta.read(lambda t: ns.check_write_target(t, normal, mode))
        return Upload(
            self,
            path=normal,
            mode=mode,
            size=size,
            upload_id=None,
            chunk_size=self.chunk_size,
            recorded=[],
            hasher=blake3.blake3(),
        )

    async def resume_upload(self, upload_id: str, *, offset: int | None = None) -> Upload:
        """Continue a resumable upload from its committed offset.

        The chunks stored so far are read back and verified to rebuild the content hash
        (the cost is proportional to the committed offset).

        Args:
            upload_id: The id given to :meth:`begin_upload`.
            offset: If given, the offset the client will resume from; it must equal the
                committed offset.

        Cancellation: a cancelled resume leaves the upload detached, as it was.

        Raises:
            NotFoundError: No such upload.
            ConflictError: The upload is attached to another stream, or ``offset`` differs
                from the committed offset.
            CorruptDataError: A stored chunk fails verification (it is quarantined; abort the
                upload and start again).
            ReadOnlyError: The store cannot write.
        """
        _check_upload_id(upload_id)
        self._check_writable()
        if upload_id in self._attached:
            msg = f"upload {upload_id!r} is in progress on another stream"
            raise ConflictError(msg)
        await self._check_space("upload")

        def load(t: MetaTxn) -> tuple[UploadRow | None, list[tuple[bytes, int]]]:
            row = t.upload(upload_id)
            chunks = t.upload_chunks(upload_id) if row is not None else []
            # Pinned in the same step as read: protected until the upload lets go.
            self._pins.pin(d for d, _ in chunks)
            return row, chunks

        row, chunks = await self._meta.read(load)
        try:
            if row is None:
                msg = f"no upload {upload_id!r}"
                raise NotFoundError(msg)
            committed = sum(n for _, n in chunks)
            if offset is not None and offset != committed:
                msg = f"upload {upload_id!r} is committed up to {committed}, not {offset}"
                raise ConflictError(msg)
            self._attached[upload_id] = None
            try:
                hasher = blake3.blake3()
                for digest, length in chunks:
                    # Verified and hashed from a mapping of the file: no buffer.
                    try:
                        await self._objects.check(digest, length, also=hasher)
                    except CorruptDataError as exc:
                        await self._on_corrupt(exc, length, f"resume of upload {upload_id!r}")
                        raise
                upload = Upload(
                    self,
                    path=row.path,
                    mode=WriteMode(row.mode),
                    size=row.size,
                    upload_id=upload_id,
                    chunk_size=row.chunk_size,
                    recorded=chunks,
                    hasher=hasher,
                )
            except BaseException:
                del self._attached[upload_id]
                raise
        finally:
            self._pins.unpin(d for d, _ in chunks)
        self._attached[upload_id] = upload
        return upload

    async def upload_status(self, upload_id: str) -> UploadStatus:
        """Where a resumable upload stands.

        Cancellation: not interruptible (an inline read).

        Raises:
            InvalidPathError: Malformed id.
            NotFoundError: No such upload.
        """
        _check_upload_id(upload_id)

        def load(t: MetaTxn) -> UploadStatus | None:
            row = t.upload(upload_id)
            if row is None:
                return None
            offset = sum(n for _, n in t.upload_chunks(upload_id))
            return UploadStatus(path=row.path, offset=offset, size=row.size)

        status = await self._meta.read(load)
        if status is None:
            msg = f"no upload {upload_id!r}"
            raise NotFoundError(msg)
        return status

    async def abort_upload(self, upload_id: str) -> None:
        """Forget a detached resumable upload (and release its chunks).

        Cancellation: cancelled before its metadata commit, it has no effect; the commit is
        not interruptible, and once made the result is returned.

        Raises:
            InvalidPathError: Malformed id.
            NotFoundError: No such upload.
            ConflictError: It is attached to a stream (abort it there).
            ReadOnlyError, NoSpaceError, StoreIOError: The store cannot write.
        """
        _check_upload_id(upload_id)
        self._check_writable()
        if upload_id in self._attached:
            msg = f"upload {upload_id!r} is in progress on another stream"
            raise ConflictError(msg)

        def forget(t: MetaTxn) -> list[bytes]:
            if t.upload(upload_id) is None:
                msg = f"no upload {upload_id!r}"
                raise NotFoundError(msg)
            return t.delete_upload(upload_id)

        released = await self._meta.write(forget, use_reserve=True)
        await self._after_commit(released)

    async def expire_uploads(self, max_age: float) -> int:
        """Forget the detached resumable uploads started more than ``max_age`` seconds ago
        (the daemon calls this periodically; the store keeps uploads until told otherwise).

        Cancellation: uploads already forgotten stay forgotten; the rest are kept.

        Returns:
            The number of uploads forgotten.

        Raises:
            ReadOnlyError, NoSpaceError, StoreIOError: The store cannot write.
        """
        self._check_writable()
        cutoff = time.time_ns() - int(max_age * 1e9)
        forgotten = 0
        while True:
            ids = await self._meta.read(
                lambda t: t.uploads_created_before(cutoff, self._gc_batch + len(self._attached))
            )
            ids = [i for i in ids if i not in self._attached][: self._gc_batch]
            if not ids:
                return forgotten

            def forget(t: MetaTxn, ids: list[str] = ids) -> list[bytes]:
                return [d for i in ids for d in t.delete_upload(i)]

            released = await self._meta.write(forget, use_reserve=True)
            forgotten += len(ids)
            await self._after_commit(released)

    async def write_bytes(
        self, path: str, data: bytes | bytearray | memoryview, *, mode: WriteMode = WriteMode.CREATE
    ) -> FileInfo:
        """Write a whole file from memory (a convenience over :meth:`begin_upload`).

        Cancellation: cancelled before its metadata commit, it has no effect; the commit is
        not interruptible, and once made the result is returned.

        Raises:
            The errors of :meth:`begin_upload`, :meth:`Upload.write` and :meth:`Upload.commit`.
        """
        size = memoryview(data).nbytes
        async with await self.begin_upload(path, mode=mode, size=size) as up:
            await up.write(data)
            return await up.commit()

    async def ingest_fd(
        self, path: str, fd: int, size: int, *, mode: WriteMode = WriteMode.CREATE
    ) -> FileInfo:
        """Store a client's regular file, given as a descriptor, as the file at ``path``.

        The file goes through the pipeline of a streamed upload (see ``upload.py``), its
        pieces read into the upload's buffers in worker threads: each piece is hashed there
        and written from there (with O_DIRECT where the file system allows it), so a client
        that modifies its file meanwhile gets *some* content, never a chunk that does not
        match its name. Memory: the upload's ``upload_pipeline`` buffers. The descriptor is
        not closed and its file position is not moved.

        Cancellation: before the commit, a cancelled ingest has no visible effect; the
        commit is shielded (once it starts, the file is stored and returned).

        Raises:
            InvalidArgumentError: ``fd`` is not a regular file, or its size is not ``size``.
            TooLargeError: ``size`` exceeds the maximum file size.
            The mode errors of :meth:`begin_upload`; NoSpaceError, StoreIOError,
            ReadOnlyError.
        """
        normal = normalize(path)
        self._check_writable()
        if size < 0:
            msg = f"size must not be negative, got {size}"
            raise ValueError(msg)
        if size > self.max_file_size:
            msg = f"{size} bytes exceeds the maximum file size of {self.max_file_size}"
            raise TooLargeError(msg)
        await self._check_space("upload")

        def check() -> os.stat_result:
            with translating("stat client file"):
                return self._fs.fstat(fd)

        st = await self._in_thread(check)
        if not stat_module.S_ISREG(st.st_mode):
            msg = "the descriptor is not a regular file"
            raise InvalidArgumentError(msg)
        if st.st_size != size:
            msg = f"the file has {st.st_size} bytes, not the declared {size}"
            raise InvalidArgumentError(msg)
        upload = await self._anonymous_upload(normal, mode, size)
        async with upload:
            await upload._ingest(fd, size)
            # Once the commit starts it completes: a cancelled caller must not be left not
            # knowing whether the file was stored.
            with trio.CancelScope(shield=True):
                info = await upload.commit()
        # Returned after the blocks: a cancel scope may swallow exceptions, as type checkers
        # see it.
        return info

    # --- reading ---------------------------------------------------------------------------------

    @asynccontextmanager
    async def open_read(
        self, path: str, *, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[Reader]:
        """Open a snapshot of a file's range ``[offset, offset + length)`` (clipped to the
        file's end; ``length=None`` reads to the end; an offset past the end gives an empty
        range).

        Cancellation: the reader is closed (and its chunks unpinned) on exit, shielded.

        Raises:
            InvalidPathError, NotFoundError, NotADirectoryError_: As for :meth:`stat`.
            IsADirectoryError_: ``path`` is a directory.
            ValueError: Negative offset or length (a caller bug).
        """
        _check_range(offset, length)
        normal = normalize(path)

        def snapshot(t: MetaTxn) -> tuple[FileInfo, list[Span]]:
            row = ns.resolve(t, normal)
            if row.kind == KIND_DIR:
                msg = f"is a directory: {normal}"
                raise IsADirectoryError_(msg)
            end = row.size if length is None else min(row.size, offset + length)
            spans: list[Span] = []
            chunk_size = row.chunk_size or 1
            digests = ns.digests(row)
            if offset < end:
                first, last = offset // chunk_size, (end - 1) // chunk_size
                for index in range(first, last + 1):
                    base = index * chunk_size
                    chunk_length = min(chunk_size, row.size - base)
                    spans.append(
                        Span(
                            digest=digests[index],
                            chunk_length=chunk_length,
                            start=max(offset, base) - base,
                            end=min(end, base + chunk_length) - base,
                        )
                    )
            # Pinned in the same step as read: the collector cannot take them meanwhile.
            self._pins.pin(s.digest for s in spans)
            return ns.to_info(normal, row), spans

        info, spans = await self._meta.read(snapshot)
        reader = Reader(self, info, offset, spans)
        try:
            yield reader
        finally:
            try:
                await reader._close()
            finally:
                self._pins.unpin(s.digest for s in spans)

    async def read_bytes(self, path: str, *, offset: int = 0, length: int | None = None) -> bytes:
        """Read a file's range into memory (see :meth:`open_read`).

        Cancellation: a cancelled read returns nothing and releases its snapshot.

        Raises:
            The errors of :meth:`open_read`; CorruptDataError if a chunk fails verification.
        """
        async with self.open_read(path, offset=offset, length=length) as reader:
            out = bytearray(reader.length)
            view = memoryview(out)
            pos = 0
            async for piece in reader:
                view[pos : pos + len(piece)] = piece
                pos += len(piece)
            return bytes(out)

    # --- figures and checking ------------------------------------------------------------------

    async def status(self) -> StoreStatus:
        """The store's figures (counters are maintained transactionally: O(1)).

        Cancellation: safe at any point (reads only).

        Raises:
            StoreIOError: statvfs failed.
        """
        counters, quarantined = await self._meta.read(
            lambda t: (t.counters(), len(t.quarantined()))
        )

        return StoreStatus(
            files=counters.files,
            directories=counters.dirs,
            logical_bytes=counters.logical_bytes,
            stored_bytes=counters.stored_bytes,
            chunks=counters.chunk_count,
            free_bytes=await self._in_thread(self._space.free_sync),
            uploads=counters.uploads,
            read_only=self.read_only,
            quarantined=quarantined,
        )

    async def fsck(self) -> FsckReport:
        """Check the whole store: rehash every chunk file, recount every reference, check the
        namespace and the figures, and look for missing and orphan chunk files.

        Safe on a live store: findings that concurrent activity could explain (a chunk
        written or collected during the scan) are rechecked against the current state
        before being reported. Reports, never repairs; but a chunk found corrupt is
        quarantined, as a read finding it would (logged at ERROR, moved aside, recorded:
        see :meth:`_on_corrupt`), and listed both as corrupt and as quarantined.

        Cancellation: safe at any point (reads only; chunk reads in flight are waited for).

        Raises:
            StoreIOError: The metadata could not be read.
        """
        scan = await self._meta.read_slow(_scan_metadata)
        expected: Counter[bytes] = scan.refs
        stored = scan.chunks
        refcount_errors = [
            f"{d.hex()}: recorded {stored.get(d, (0, 0))[1]}, counted {expected.get(d, 0)}"
            for d in set(expected) | set(stored)
            if stored.get(d, (0, 0))[1] != expected.get(d, 0)
        ]
        on_disk: set[bytes] = set()
        foreign: list[str] = []
        for shard, names in (await self._objects.list_all()).items():
            for name in names:
                try:
                    digest = bytes.fromhex(name)
                except ValueError:
                    digest = b""
                if len(digest) != 32 or name[:2] != shard:
                    foreign.append(f"{shard}/{name}")
                else:
                    on_disk.add(digest)
        missing = [d for d in stored if d not in on_disk]
        orphans = [d for d in on_disk if d not in stored and d not in scan.pending]
        corrupt: list[bytes] = []
        checked_bytes = 0
        todo = [d for d in stored if d in on_disk]

        async def worker() -> None:
            nonlocal checked_bytes
            while todo:
                digest = todo.pop()
                size = stored[digest][0]
                try:
                    await self._objects.check(digest, size)
                    checked_bytes += size
                except CorruptChunkError as exc:
                    if exc.identity is None:
                        missing.append(digest)  # gone since the listing: rechecked below
                    else:
                        corrupt.append(digest)
                        await self._on_corrupt(exc, size, "fsck")
                except (CorruptDataError, StoreIOError):
                    corrupt.append(digest)

        to_check = len(todo)
        async with trio.open_nursery() as nursery:
            for _ in range(max(1, int(self._io_limiter.total_tokens))):
                nursery.start_soon(worker)

        # Recheck findings a concurrent write or collection could explain. A chunk moved to
        # quarantine is reported as quarantined, not as missing.
        if orphans or missing:
            now = await self._meta.read(
                lambda t: {
                    d: (t.refs(d), t.is_pending(d), t.is_quarantined(d)) for d in orphans + missing
                }
            )
            orphans = [d for d in orphans if now[d][:2] == (0, False) and not self._pins.pinned(d)]
            missing = [d for d in missing if now[d][0] > 0 and not now[d][2]]
        quarantined = sorted(
            row.digest.hex() for row in await self._meta.read(lambda t: t.quarantined())
        )
        temp_files = await self._in_thread(self._objects.count_temp_sync)
        namespace_errors = scan.namespace_errors + [
            f"foreign file in chunks/: {f}" for f in foreign
        ]
        cap = FSCK_REPORT_ITEMS
        return FsckReport(
            files=scan.files,
            directories=scan.dirs,
            chunks_checked=to_check,
            bytes_checked=checked_bytes,
            corrupt=sorted(d.hex() for d in corrupt)[:cap],
            corrupt_count=len(corrupt),
            missing=sorted(d.hex() for d in missing)[:cap],
            missing_count=len(missing),
            orphans=sorted(d.hex() for d in orphans)[:cap],
            orphan_count=len(orphans),
            refcount_errors=sorted(refcount_errors)[:cap],
            refcount_error_count=len(refcount_errors),
            namespace_errors=namespace_errors[:cap],
            pending=len(scan.pending),
            temp_files=temp_files,
            quarantined=quarantined[:cap],
            quarantined_count=len(quarantined),
        )


def _is_hex_digest(name: str) -> bool:
    try:
        return len(bytes.fromhex(name)) == 32
    except ValueError:
        return False


class _Scan:
    def __init__(self) -> None:
        self.refs: Counter[bytes] = Counter()
        self.chunks: dict[bytes, tuple[int, int]] = {}
        self.pending: set[bytes] = set()
        self.namespace_errors: list[str] = []
        self.files = 0
        self.dirs = 0


def _scan_metadata(t: MetaTxn) -> _Scan:
    """One consistent pass over the metadata (worker thread)."""
    scan = _Scan()
    kinds: dict[int, int] = {}
    parents: list[tuple[int, int, str]] = []
    logical = 0
    for row in t.all_entries():
        kinds[row.id] = row.kind
        if row.id != 1:
            parents.append((row.id, row.parent, row.name))
        if row.kind == KIND_DIR:
            scan.dirs += 1
            continue
        scan.files += 1
        logical += row.size
        digests = ns.digests(row)
        lengths = ns.chunk_lengths(row.size, row.chunk_size or 1)
        if len(digests) != len(lengths):
            scan.namespace_errors.append(
                f"entry {row.id} ({row.name!r}): {len(digests)} chunks for {row.size} bytes"
            )
        scan.refs.update(digests)
    for entry_id, parent, name in parents:
        if kinds.get(parent) != KIND_DIR:
            scan.namespace_errors.append(f"entry {entry_id} ({name!r}): parent is not a directory")
    for digest, _size in t.all_upload_chunks():
        scan.refs[digest] += 1
    stored_bytes = 0
    for digest, size, refs in t.all_chunks():
        scan.chunks[digest] = (size, refs)
        stored_bytes += size
    scan.pending = set(t.all_pending())
    c = t.counters()
    actual = (scan.files, scan.dirs, logical, stored_bytes, len(scan.chunks), len(t.upload_ids()))
    recorded = (c.files, c.dirs, c.logical_bytes, c.stored_bytes, c.chunk_count, c.uploads)
    if actual != recorded:
        scan.namespace_errors.append(f"figures: recorded {recorded}, counted {actual}")
    return scan


@asynccontextmanager
async def open_store(
    data_dir: Path | str,
    *,
    max_file_size: int = DEFAULT_MAX_FILE_SIZE,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    io_threads: int = DEFAULT_IO_THREADS,
    upload_pipeline: int = DEFAULT_UPLOAD_PIPELINE,
    upload_batch: int = DEFAULT_UPLOAD_BATCH,
    upload_buffer: int = DEFAULT_UPLOAD_BUFFER,
    upload_extra_buffers: int = DEFAULT_UPLOAD_EXTRA_BUFFERS,
    read_ahead: int = DEFAULT_READ_AHEAD,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    gc_batch: int = DEFAULT_GC_BATCH,
    max_idle_buffers: int = DEFAULT_MAX_IDLE_BUFFERS,
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
    inline_list_limit: int = DEFAULT_INLINE_LIST_LIMIT,
    min_free_space: int = DEFAULT_MIN_FREE_SPACE,
    metadata_reserve: int = DEFAULT_METADATA_RESERVE,
    fs: FS | None = None,
) -> AsyncIterator[Store]:
    """Open (creating if needed) the store in ``data_dir``, recover from any crash, and close
    it cleanly on exit.

    Recovery removes temp files of interrupted chunk writes and collects the chunk files
    journalled as pending (intents of writes that never committed, releases not yet
    collected); resumable uploads are kept, resumable from their committed offsets. Its cost
    is proportional to that leftover work, not to the size of the store; see
    :attr:`Store.recovery`.

    Args:
        data_dir: The store's directory (created if missing).
        max_file_size: Largest file accepted.
        chunk_size: Chunk size for new files (4 KiB .. 64 MiB).
        io_threads: Worker threads for chunk I/O and hashing.
        upload_pipeline: Buffers of one upload (one filling, the others being hashed and
            written).
        upload_batch: Chunks of one upload staged before they are published (fsynced)
            together.
        upload_buffer: Bytes of one upload buffer (a multiple of 4096).
        upload_extra_buffers: Buffers beyond each upload's first, shared by all uploads
            (0: every upload works with one buffer).
        read_ahead: Chunks a reader prefetches.
        lock_timeout: Longest lock wait (seconds) before TimeoutError_.
        gc_batch: Journal entries collected per step.
        max_idle_buffers: Idle buffers kept for reuse, per size (upload, read).
        close_timeout: Longest wait at close for chunk writes in flight.
        inline_list_limit: LIST pages larger than this are read in a worker thread.
        min_free_space: Free space (bytes) below which new data is refused with
            NoSpaceError (deletes, renames and reads go on; see ``space.py``).
        metadata_reserve: Bytes kept aside in the data directory for metadata writes that
            add no data, released when the disk is full (0: none).
        fs: The file-system interface (tests pass shims).

    Raises:
        BusyError: Another process has the store open.
        StoreIOError, CorruptDataError, NoSpaceError: The store cannot be opened.
        ValueError: A setting is out of range (a configuration bug).
    """
    if upload_extra_buffers < 0:
        msg = f"upload_extra_buffers must not be negative, got {upload_extra_buffers}"
        raise ValueError(msg)
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        msg = f"chunk_size must be in {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}, got {chunk_size}"
        raise ValueError(msg)
    for name, value in (
        ("max_file_size", max_file_size),
        ("io_threads", io_threads),
        ("upload_pipeline", upload_pipeline),
        ("upload_batch", upload_batch),
        ("read_ahead", read_ahead),
        ("gc_batch", gc_batch),
    ):
        if value < 1:
            msg = f"{name} must be at least 1, got {value}"
            raise ValueError(msg)
    for name, value in (("min_free_space", min_free_space), ("metadata_reserve", metadata_reserve)):
        if value < 0:
            msg = f"{name} must not be negative, got {value}"
            raise ValueError(msg)
    if upload_buffer < DIRECT_ALIGN or upload_buffer % DIRECT_ALIGN:
        msg = f"upload_buffer must be a positive multiple of {DIRECT_ALIGN}, got {upload_buffer}"
        raise ValueError(msg)
    store = Store(
        Path(data_dir),
        fs=fs if fs is not None else OsFS(),
        max_file_size=max_file_size,
        chunk_size=chunk_size,
        io_threads=io_threads,
        upload_pipeline=upload_pipeline,
        upload_batch=upload_batch,
        upload_buffer=upload_buffer,
        upload_extra_buffers=upload_extra_buffers,
        read_ahead=read_ahead,
        lock_timeout=lock_timeout,
        gc_batch=gc_batch,
        max_idle_buffers=max_idle_buffers,
        inline_list_limit=inline_list_limit,
        min_free_space=min_free_space,
        metadata_reserve=metadata_reserve,
    )
    try:
        await store._open()
    except BaseException:
        with trio.CancelScope(shield=True):
            store._closed = True
            store._meta.close_reader()
            await trio.to_thread.run_sync(store._meta.close_writer)
            store._unlock()
        raise
    single: BaseException | None = None
    try:
        try:
            async with trio.open_nursery() as nursery:
                store._nursery = nursery
                try:
                    yield store
                finally:
                    with trio.CancelScope(shield=True), trio.move_on_after(close_timeout):
                        await store._detach_idle_uploads()
                        await store._wait_jobs()
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # The nursery only runs chunk jobs, which never raise: the one exception is the
            # caller's own, which it should see as it raised it.
            if len(group.exceptions) != 1:
                raise
            single = group.exceptions[0]
        if single is not None:
            raise single
    finally:
        await store._close()
