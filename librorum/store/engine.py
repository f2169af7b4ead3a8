"""The chunk engine: where chunk data is staged, published, verified, quarantined and
collected, and the runtime it runs on (worker threads, background jobs, buffer pools).

Uploads (``upload.py``) and readers (``reader.py``) work through this interface alone; the
namespace (``store.py``), the uploads registry (``uploads.py``) and recovery
(``recovery.py``) use it too. It holds the two backends, ``meta`` (a ``MetadataStore``) and
``objects`` (an ``ObjectStore``), and the rules that keep them consistent: the journal of
pending chunks, the durable order of a publish, pins and chunk locks against the collector,
and the read-only state after an fsync or commit failure. See ``store.py`` for the design.
"""

from __future__ import annotations

import fcntl
import logging
import math
import mmap
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final, ParamSpec, TypeVar

import trio

from librorum.activity import Wait, waiting
from librorum.errors import (
    BusyError,
    CorruptDataError,
    ReadOnlyError,
    StoreError,
    StoreIOError,
    TimeoutError_,
)
from librorum.store._translate import translating
from librorum.store.backend import BackendContext, MetadataFactory, ObjectFactory
from librorum.store.fs import FS
from librorum.store.locks import BufferPool, ChunkPins, LockTable
from librorum.store.meta import MetaTxn, QuarantineRow
from librorum.store.objects import (
    CorruptChunkError,
    LocalObjects,
    Staged,
    StageSync,
    ThreadStaging,
    new_buffer,
)
from librorum.store.space import SpaceGuard

log = logging.getLogger("librorum.store")

P = ParamSpec("P")
T = TypeVar("T")

#: The lock file that keeps a second process from opening the same data directory.
LOCK_NAME: Final = "LOCK"


class ChunkEngine:
    """Chunk storage and its runtime for one open store (see the module docstring).

    Use from the Trio thread only, between :meth:`open` and :meth:`close`; background jobs
    run only inside :meth:`running`.

    Attributes:
        data_dir: The data directory.
        fs: The file-system interface.
        meta: The metadata store.
        objects: The object store.
        space: The free-space floor and the metadata reserve.
        pins: Chunks in use by uploads and readers (the collector skips them).
        chunk_locks: Per-chunk locks (publish, quarantine and collection hold them).
        io_limiter: Bounds the worker threads of chunk I/O and hashing.
        held_limiter: No bound: for thread calls made while holding ``io_limiter``.
        stage_sync: The object store's blocking ``stage_piece`` (``ThreadStaging``), or
            ``None``.
        max_file_size, chunk_size, upload_pipeline, upload_batch, upload_buffer, read_ahead,
        gc_batch: The settings given to ``open_store``.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        fs: FS,
        metadata: MetadataFactory,
        objects: ObjectFactory,
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
        min_free_space: int,
        metadata_reserve: int,
    ) -> None:
        self.data_dir = data_dir
        self.fs = fs
        self.max_file_size = max_file_size
        self.chunk_size = chunk_size
        self.upload_pipeline = upload_pipeline
        self.upload_batch = upload_batch
        self.upload_buffer = upload_buffer
        self.read_ahead = read_ahead
        self.gc_batch = gc_batch
        self.io_limiter = trio.CapacityLimiter(io_threads)
        #: For ``trio.to_thread`` calls whose task holds ``io_limiter`` already.
        self.held_limiter = trio.CapacityLimiter(math.inf)
        self.space = SpaceGuard(
            str(data_dir), fs, min_free=min_free_space, reserve=metadata_reserve
        )
        ctx = BackendContext(
            data_dir=data_dir,
            fs=fs,
            io_limiter=self.io_limiter,
            lock_timeout=lock_timeout,
            on_fatal_io=self.on_fatal_io,
            release_reserve=self.space.release_sync,
            check_space=self.space.check_data_sync,
        )
        #: How long the backend's fsyncs and metadata commits take (recorded from worker
        #: threads).
        self.fsync_latency = ctx.fsync_latency
        self.commit_latency = ctx.commit_latency
        self.meta = metadata(ctx)
        self.objects = objects(ctx)
        # Checked once here rather than per chunk sent (a Protocol isinstance is not free).
        self._local: LocalObjects | None = (
            self.objects if isinstance(self.objects, LocalObjects) else None
        )
        #: The object store's blocking ``stage_piece`` (``ThreadStaging``), if it has one.
        self.stage_sync: StageSync | None = (
            self.objects.stage_piece_sync if isinstance(self.objects, ThreadStaging) else None
        )
        self.pins = ChunkPins()
        self.chunk_locks: LockTable[bytes] = LockTable(timeout=lock_timeout)
        self.upload_buffers = BufferPool(upload_buffer, max_idle=max_idle_buffers)
        # How many more upload buffers beyond each upload's first may be in use (see upload.py).
        self._extra_upload_buffers = upload_extra_buffers
        self._read_buffers = BufferPool(chunk_size, max_idle=max_idle_buffers)
        self._nursery: trio.Nursery | None = None
        self._jobs_running = 0
        self._jobs_idle = trio.Event()
        self._read_only: str | None = None
        #: When the store turned read-only (seconds since the epoch), if it has.
        self.read_only_since: float | None = None
        self._closed = False
        self._lock_fd: int | None = None

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run (or opening failed)."""
        return self._closed

    def on_fatal_io(self, exc: BaseException) -> None:
        """An fsync or a metadata commit failed (``exc``): its outcome on disk is unknown, so
        the store turns read-only until reopened. Safe from any thread; never raises."""
        # Called from worker threads: a plain attribute store is atomic.
        if self._read_only is None:
            self.read_only_since = time.time()
            self._read_only = f"an fsync or metadata commit failed ({exc!r})"
            log.error("store turned read-only: %s", self._read_only)

    @property
    def read_only(self) -> bool:
        """Whether writes are refused (after an fsync failure; reopen to clear)."""
        return self._read_only is not None

    @property
    def read_only_reason(self) -> str | None:
        """Why writes are refused (the failure that turned the store read-only), if they are."""
        return self._read_only

    def check_writable(self) -> None:
        """Refuse a write if the store is closed or read-only.

        Raises:
            ReadOnlyError: It is.
        """
        if self._closed:
            msg = "the store is closed"
            raise ReadOnlyError(msg)
        if self._read_only is not None:
            msg = f"the store is read-only: {self._read_only}"
            raise ReadOnlyError(msg)

    async def check_space(self, what: str) -> None:
        """Admit a request that adds data, or refuse it below the free-space floor (see
        ``space.py``).

        Raises:
            NoSpaceError: Below the floor.
            StoreIOError: statvfs failed.
        """
        await self.in_thread(self.space.check_data_sync, what)

    def take_extra_buffer(self) -> bool:
        """Whether an upload may use one more buffer than its first (it then holds it until
        it finishes, and gives it back with :meth:`give_extra_buffers`)."""
        if self._extra_upload_buffers <= 0:
            return False
        self._extra_upload_buffers -= 1
        return True

    def give_extra_buffers(self, count: int) -> None:
        """Give back ``count`` buffers taken with :meth:`take_extra_buffer`."""
        self._extra_upload_buffers += count

    def get_read_buffer(self, size: int) -> mmap.mmap:
        """A read buffer of at least ``size`` bytes (a reader's whole chunk)."""
        pool = self._read_buffers
        return pool.get() if size <= pool.size else new_buffer(size)

    def put_read_buffer(self, buf: mmap.mmap) -> None:
        """Give back a buffer of :meth:`get_read_buffer` (kept for reuse, or dropped)."""
        self._read_buffers.put(buf)

    async def in_thread(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args)`` in a worker thread, within the I/O thread limit.

        Cancellation: only while waiting for a thread; once started, ``fn`` runs to
        completion and its outcome is returned.

        Raises:
            Whatever ``fn`` raises.
        """
        assert not kwargs
        with waiting(Wait.DISK):
            return await trio.to_thread.run_sync(fn, *args, limiter=self.io_limiter)

    def start_job(self, fn: Callable[[T], Awaitable[None]], job: T) -> None:
        """Start ``fn(job)`` in the background (it must not raise: it records its outcome in
        ``job``); at close, jobs in flight are waited for (bounded), then cancelled.

        Raises:
            ReadOnlyError: The store is closed (no job started).
        """
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

    async def wait_jobs(self) -> None:
        """Let chunk jobs in flight finish (so that an attached resumable upload keeps
        everything it had stored). The caller bounds the wait."""
        while self._jobs_running:
            await self._jobs_idle.wait()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Run the jobs of :meth:`start_job` in a nursery for the duration of the block; on
        exit the jobs still running are cancelled (wait for them first with
        :meth:`wait_jobs`, bounded).

        Raises:
            BaseExceptionGroup: Whatever the block raises, grouped by the nursery (jobs never
                raise).
        """
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                yield
            finally:
                nursery.cancel_scope.cancel()

    async def publish(self, staged: Sequence[Staged]) -> None:
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
            async with self.chunk_locks.hold(digests):
                known = await self.meta.read(
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
                self.check_writable()
                if new:
                    await self.meta.write(lambda t: t.add_pending(new))
                publishing, remaining = remaining, []  # publish_many owns them now
                await self.objects.publish_many(publishing)
                if healed:
                    await self._heal(healed)
        finally:
            if remaining:
                with trio.CancelScope(shield=True):
                    await self.objects.discard_many(remaining)

    async def after_commit(self, released: Sequence[bytes]) -> None:
        """After a metadata commit that released ``released`` chunks: a bounded collection
        step, shielded (never raises)."""
        if released:
            with trio.CancelScope(shield=True):
                await self.collect_step()

    async def open_verified(self, digest: bytes, length: int) -> int:
        """Open chunk ``digest`` and verify its first ``length`` bytes, in a worker thread,
        for ``os.sendfile`` (the caller closes the descriptor).

        Cancellation: runs to completion in its worker thread once started.

        Raises:
            CorruptChunkError: Missing, short, or not matching its digest.
            StoreIOError: The open or read failed, or the object store keeps no local files.
        """
        local = self._local
        if local is None:
            msg = "the object store keeps no local files to send from"
            raise StoreIOError(msg)
        return await self.in_thread(local.open_verified, digest, length, digest)

    # --- quarantine -----------------------------------------------------------------------------

    async def on_corrupt(self, exc: CorruptDataError, size: int, where: str) -> None:
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
        elif self._read_only is not None:
            # Not quarantined because the store cannot write: the damage must still be seen.
            log.error(
                "chunk %s failed verification (%s); the store is read-only, so it stays where "
                "it is and the files using it cannot be read",
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
        async with self.chunk_locks.hold([digest]):
            if not await self.objects.is_current(digest, identity):
                return False
            row = QuarantineRow(digest=digest, size=size, found_ns=time.time_ns(), reason=reason)
            await self.meta.write(lambda t: t.add_quarantine(row), use_reserve=True)
            return await self.objects.quarantine(digest, identity)

    async def _heal(self, digests: Sequence[bytes]) -> None:
        """Quarantined chunks were published afresh (under their locks): drop their records,
        then their quarantined copies."""
        await self.meta.write(lambda t: t.remove_quarantine(digests), use_reserve=True)
        for digest in digests:
            log.warning("chunk %s healed: a fresh copy replaced the quarantined one", digest.hex())
        await self.objects.drop_quarantined(digests)

    # --- garbage collection ---------------------------------------------------------------------

    async def collect_step(self) -> tuple[int, int]:
        """Handle up to ``gc_batch`` journal entries that no pin protects: delete the chunk
        files nothing references (then fsync their shards), and drop the entries.

        Never raises: on failure the entries stay journalled and a later step retries.

        Returns:
            (entries handled, chunk files deleted).
        """
        if self._read_only is not None or self._closed:
            return (0, 0)
        try:
            batch = await self.meta.read(lambda t: t.pending(self.gc_batch + len(self.pins)))
            candidates = [d for d in batch if not self.pins.pinned(d)][: self.gc_batch]
            if not candidates:
                return (0, 0)
            async with self.chunk_locks.hold(candidates):
                candidates = [d for d in candidates if not self.pins.pinned(d)]
                refs = await self.meta.read(
                    lambda t: [(t.refs(d), t.is_quarantined(d)) for d in candidates]
                )
                dead = [d for d, (r, _) in zip(candidates, refs, strict=True) if r == 0]
                # A quarantined chunk that nothing references any more needs no healing.
                unquarantined = [
                    d for d, (r, q) in zip(candidates, refs, strict=True) if not r and q
                ]
                if dead:
                    await self.objects.delete(dead)

                def drop(t: MetaTxn) -> None:
                    t.remove_pending(candidates)
                    t.remove_quarantine(unquarantined)

                await self.meta.write(drop, use_reserve=True)
                if unquarantined:
                    await self.objects.drop_quarantined(unquarantined)
            if dead and not self.space.reserve_held:
                # Space came back: to the reserve first (new data is refused until it holds
                # its space again), once the journal no longer needs any.
                await self.in_thread(self.space.restore_sync)
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
            handled, deleted = await self.collect_step()
            total += deleted
            if not handled:
                return total

    # --- lifecycle ------------------------------------------------------------------------------

    async def open(self) -> None:
        """Take the data directory's lock and open both backends.

        Raises:
            BusyError: Another process has the store open.
            StoreIOError, CorruptDataError, NoSpaceError: A backend cannot be opened.
        """
        await trio.to_thread.run_sync(self._open_sync)
        self.meta.open_reader()

    def _open_sync(self) -> None:
        with translating("open data directory"):
            os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
            fd = os.open(self.data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
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
            self.objects.init_sync()
            self.space.load_sync()
            self.meta.open_sync()
        except BaseException:
            self._unlock()
            raise

    async def abort_open(self) -> None:
        """After a failed :meth:`open` (or recovery): close what was opened, shielded."""
        with trio.CancelScope(shield=True):
            self._closed = True
            self.meta.close_reader()
            await trio.to_thread.run_sync(self.meta.close_writer)
            self._unlock()

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def close(self) -> None:
        """A last collection step, then close both backends and release the lock
        (shielded; the metadata close may checkpoint)."""
        with trio.CancelScope(shield=True):
            try:
                await self.collect_step()
            finally:
                self._closed = True
                self.meta.close_reader()
                await trio.to_thread.run_sync(self.meta.close_writer)
                self._unlock()
