"""The store: a namespace of files and directories over content-addressed chunks.

Layers::

    Store (this module)        the namespace facade: stat, list, mkdir, delete, rename, reads
      uploads.UploadRegistry   starts, resumes and forgets uploads; owns the attached ones
        upload.Upload          one upload's pipeline: buffers, pieces, batches
      reader.Reader            one read's snapshot, verified chunk by chunk
      recovery.py              recovery at open, fsck
      engine.ChunkEngine       stage, publish, verify, quarantine, collect; threads, jobs, buffers
      namespace.py             the rules, as functions over one metadata transaction
      meta.MetadataStore       transactions over rows       (embedded: sqlite.py, WAL, FULL sync)
      objects.ObjectStore      chunk files by digest        (embedded: sharded directory tree)
      space.SpaceGuard         the free-space floor and the metadata reserve
      fs.FS                    every file-system call       (tests put shims here)

Both backends are parameters of :func:`open_store` (``backend.py``); ``memory.py`` has an
in-memory pair, and ``tests/store/conformance`` is the suite every pair passes.

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
3-10 ms; inline, each would stall every other connection for that long. A thread hand-off
costs ~50-90 us on an idle machine and up to ~0.15 ms of CPU on a loaded one, so an upload
makes one per piece (read, hash and write in the same call; see ``upload.py``), and a publish
one per fsync (the fsyncs of a batch run in parallel). Metadata reads
run inline (see ``sqlite.py`` for the measurements); metadata writes run in a dedicated writer
thread.

Cancellation. Every operation is atomic with respect to cancellation: cancelled before its
metadata commit it has no effect; the commit itself is not interruptible, and once it has
happened the operation returns its result (the bounded collection that may follow runs
shielded).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import trio

from librorum.activity import Wait
from librorum.domain import DEFAULT_LIST_LIMIT, DEFAULT_MAX_FILE_SIZE, WriteMode
from librorum.errors import IsADirectoryError_
from librorum.histogram import HistogramSnapshot
from librorum.limits import MIN_FREE_SPACE
from librorum.store import namespace as ns, recovery, repair
from librorum.store.backend import (
    MetadataFactory,
    ObjectFactory,
    local_chunk_files,
    sqlite_metadata,
)
from librorum.store.engine import ChunkEngine
from librorum.store.fs import FS, OsFS
from librorum.store.locks import LockTable
from librorum.store.meta import KIND_DIR, MetaTxn
from librorum.store.objects import DIRECT_ALIGN
from librorum.store.paths import normalize
from librorum.store.reader import Reader, Span
from librorum.store.types import (
    FileInfo,
    FsckProgress,
    FsckReport,
    ListPage,
    RecoveryReport,
    RepairReport,
    ScrubStep,
    StoreStatus,
    UploadStatus,
)
from librorum.store.upload import Upload
from librorum.store.uploads import MAX_UPLOAD_ID_BYTES as MAX_UPLOAD_ID_BYTES, UploadRegistry

log = logging.getLogger("librorum.store")

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


def _check_range(offset: int, length: int | None) -> None:
    if offset < 0 or (length is not None and length < 0):
        msg = f"offset and length must not be negative (got {offset}, {length})"
        raise ValueError(msg)


class Store:
    """An open store. Use :func:`open_store`; all methods are safe to call concurrently.

    Attributes:
        data_dir: The data directory.
        max_file_size, chunk_size, upload_pipeline, upload_batch, upload_buffer, read_ahead:
            The settings it was opened with.
        recovery: What recovery found at open.
    """

    def __init__(
        self,
        engine: ChunkEngine,
        uploads: UploadRegistry,
        path_locks: LockTable[str],
        *,
        inline_list_limit: int,
    ) -> None:
        self._engine = engine
        self._uploads = uploads
        self._path_locks = path_locks
        self._inline_list_limit = inline_list_limit
        self.data_dir = engine.data_dir
        self.max_file_size = engine.max_file_size
        self.chunk_size = engine.chunk_size
        self.upload_pipeline = engine.upload_pipeline
        self.upload_batch = engine.upload_batch
        self.upload_buffer = engine.upload_buffer
        self.read_ahead = engine.read_ahead
        self.recovery: RecoveryReport | None = None

    @property
    def read_only(self) -> bool:
        """Whether writes are refused (after an fsync failure; reopen to clear)."""
        return self._engine.read_only

    @property
    def read_only_reason(self) -> str | None:
        """Why writes are refused (the fsync or commit failure), or ``None`` when they are
        not."""
        return self._engine.read_only_reason

    @property
    def read_only_since(self) -> float | None:
        """When the store turned read-only (seconds since the epoch), if it has."""
        return self._engine.read_only_since

    def fsync_latency(self) -> HistogramSnapshot:
        """How long the chunk files' and directories' fsyncs have taken since the open
        (seconds; a histogram of fixed buckets). Never raises; no checkpoint."""
        return self._engine.fsync_latency.snapshot()

    def commit_latency(self) -> HistogramSnapshot:
        """How long the metadata commits have taken since the open (seconds; each makes the
        metadata's log durable, with an fsync). Never raises; no checkpoint."""
        return self._engine.commit_latency.snapshot()

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
        return await self._engine.meta.read(lambda t: ns.stat(t, normal))

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
        read = (
            self._engine.meta.read
            if limit <= self._inline_list_limit
            else self._engine.meta.read_slow
        )
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
        self._engine.check_writable()
        await self._engine.check_space("mkdir")
        mtime_ns = time.time_ns()
        async with self._path_locks.hold([normal]):
            return await self._engine.meta.write(
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
        self._engine.check_writable()
        async with self._path_locks.hold([normal]):
            count, released = await self._engine.meta.write(
                lambda t: ns.delete(t, normal, recursive=recursive), use_reserve=True
            )
        await self._engine.after_commit(released)
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
        self._engine.check_writable()
        async with self._path_locks.hold([normal_src, normal_dst]):
            info, released = await self._engine.meta.write(
                lambda t: ns.rename(t, normal_src, normal_dst, overwrite=overwrite),
                use_reserve=True,
            )
        await self._engine.after_commit(released)
        return info

    # --- uploads (see uploads.UploadRegistry for each call's cancellation and errors) --------

    async def begin_upload(
        self,
        path: str,
        *,
        mode: WriteMode = WriteMode.CREATE,
        size: int | None = None,
        upload_id: str | None = None,
    ) -> Upload:
        """Start writing a file (:meth:`UploadRegistry.begin_upload`)."""
        return await self._uploads.begin_upload(path, mode=mode, size=size, upload_id=upload_id)

    async def resume_upload(self, upload_id: str, *, offset: int | None = None) -> Upload:
        """Continue a resumable upload from its committed offset
        (:meth:`UploadRegistry.resume_upload`)."""
        return await self._uploads.resume_upload(upload_id, offset=offset)

    async def upload_status(self, upload_id: str) -> UploadStatus:
        """Where a resumable upload stands (:meth:`UploadRegistry.upload_status`)."""
        return await self._uploads.upload_status(upload_id)

    async def abort_upload(self, upload_id: str) -> None:
        """Forget a detached resumable upload (:meth:`UploadRegistry.abort_upload`)."""
        await self._uploads.abort_upload(upload_id)

    async def expire_uploads(self, max_age: float) -> int:
        """Forget the detached resumable uploads older than ``max_age`` seconds
        (:meth:`UploadRegistry.expire_uploads`)."""
        return await self._uploads.expire_uploads(max_age)

    async def write_bytes(
        self, path: str, data: bytes | bytearray | memoryview, *, mode: WriteMode = WriteMode.CREATE
    ) -> FileInfo:
        """Write a whole file from memory (:meth:`UploadRegistry.write_bytes`)."""
        return await self._uploads.write_bytes(path, data, mode=mode)

    async def ingest_fd(
        self, path: str, fd: int, size: int, *, mode: WriteMode = WriteMode.CREATE
    ) -> FileInfo:
        """Store a client's regular file, given as a descriptor, as the file at ``path``
        (:meth:`UploadRegistry.ingest_fd`)."""
        return await self._uploads.ingest_fd(path, fd, size, mode=mode)

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
            self._engine.pins.pin(s.digest for s in spans)
            return ns.to_info(normal, row), spans

        info, spans = await self._engine.meta.read(snapshot)
        reader = Reader(self._engine, info, offset, spans)
        try:
            yield reader
        finally:
            try:
                await reader.aclose()
            finally:
                self._engine.pins.unpin(s.digest for s in spans)

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
        counters, quarantined = await self._engine.meta.read(
            lambda t: (t.counters(), len(t.quarantined()))
        )

        return StoreStatus(
            files=counters.files,
            directories=counters.dirs,
            logical_bytes=counters.logical_bytes,
            stored_bytes=counters.stored_bytes,
            chunks=counters.chunk_count,
            free_bytes=await self._engine.in_thread(self._engine.space.free_sync),
            uploads=counters.uploads,
            read_only=self.read_only,
            quarantined=quarantined,
        )

    async def fsck(self, progress: FsckProgress | None = None) -> FsckReport:
        """Check the whole store: rehash every chunk file, recount every reference, check the
        namespace and the figures, look for missing and orphan chunk files, and list the
        files that use a corrupt, missing or quarantined chunk.

        Safe on a live store: findings that concurrent activity could explain (a chunk
        written or collected during the scan) are rechecked against the current state
        before being reported. Reports, never repairs; but a chunk found corrupt is
        quarantined, as a read finding it would (logged at ERROR, moved aside, recorded:
        see :meth:`ChunkEngine.on_corrupt`), and listed both as corrupt and as quarantined.

        Args:
            progress: Updated in place as the check goes (read it from another task).

        Cancellation: safe at any point (reads only; chunk reads in flight are waited for).

        Raises:
            StoreIOError: The metadata could not be read.
        """
        return await recovery.fsck(self._engine, progress)

    async def repair(self, progress: FsckProgress | None = None) -> RepairReport:
        """Check the whole store as :meth:`fsck`, then repair what it can: drop orphan chunk
        files, set wrong reference counts to the references counted, and list the files that
        still use a quarantined or missing chunk (only their content, uploaded again, heals
        them). See ``repair.py``.

        Args:
            progress: Updated in place as the check and the repair go.

        Cancellation: during the check, at any point; during the repair, between its
        bounded steps (a step that began completes).

        Raises:
            ReadOnlyError: The store refuses writes.
            StoreIOError, NoSpaceError, TimeoutError_: A step failed (earlier ones stand).
        """
        return await repair.repair(self._engine, progress)

    async def scrub_step(self, after: bytes | None, limit: int) -> ScrubStep:
        """Verify the next stored chunks after digest ``after`` (``None``: from the first),
        up to ``limit`` of them, in digest order; a chunk found corrupt is quarantined as a
        read finding it would. The background scrub calls this in a loop, at its own pace.

        Cancellation: safe at any point (the chunk being verified is waited for).

        Raises:
            StoreIOError: The metadata could not be read.
        """
        return await recovery.scrub_step(self._engine, after, limit)

    async def collect_garbage(self) -> int:
        """Collect every unreferenced, unpinned chunk now (:meth:`ChunkEngine.collect_garbage`).

        Returns:
            The number of chunk files deleted.
        """
        return await self._engine.collect_garbage()


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
    metadata: MetadataFactory | None = None,
    objects: ObjectFactory | None = None,
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
        metadata: Opens the metadata store (see ``backend.py``); SQLite in the data
            directory if not given.
        objects: Opens the object store; chunk files in the data directory if not given.

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
    engine = ChunkEngine(
        Path(data_dir),
        fs=fs if fs is not None else OsFS(),
        metadata=metadata if metadata is not None else sqlite_metadata,
        objects=objects if objects is not None else local_chunk_files,
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
        min_free_space=min_free_space,
        metadata_reserve=metadata_reserve,
    )
    # The namespace's operations and the uploads' commits share the per-path locks.
    path_locks: LockTable[str] = LockTable(timeout=lock_timeout, wait=Wait.PATH_LOCK)
    uploads = UploadRegistry(engine, path_locks)
    store = Store(engine, uploads, path_locks, inline_list_limit=inline_list_limit)
    try:
        started = time.perf_counter()
        await engine.open()
        store.recovery = await recovery.recover(engine, started=started)
    except BaseException:
        await engine.abort_open()
        raise
    single: BaseException | None = None
    try:
        try:
            async with engine.running():
                try:
                    yield store
                finally:
                    with trio.CancelScope(shield=True), trio.move_on_after(close_timeout):
                        await uploads.detach_idle()
                        await engine.wait_jobs()
        except BaseExceptionGroup as group:
            # The nursery only runs chunk jobs, which never raise: the one exception is the
            # caller's own, which it should see as it raised it.
            if len(group.exceptions) != 1:
                raise
            single = group.exceptions[0]
        if single is not None:
            raise single
    finally:
        await engine.close()
