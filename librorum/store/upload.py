"""Uploads: a stream of pieces of any size, cut into chunks, committed atomically at the end.

Pipeline (per upload). ``write`` copies pieces into a chunk-sized buffer on the Trio thread
(a memoryview copy, ~9 GB/s). A full buffer becomes a *chunk job* run in the store's nursery:

1. hash, in a worker thread: the chunk's BLAKE3 (its name) and the running whole-file BLAKE3
   (the content hash). Jobs take this step in order (the whole-file hash is sequential);
2. pin the digest and, in chunk order, *stage* it (unless the batch has it already): write
   it to a temp file and start its writeback, without waiting (the buffer is then free). A
   chunk the store holds already is staged too, and published over the stored file (see
   ``Store._publish_chunks``);
3. every ``upload_batch`` chunks (and at commit), *publish* the batch in a publish job:
   under the chunks' locks, journal them as pending in one transaction, fsync every staged
   file, rename each to its name, fsync each touched shard directory once
   (``Store._publish_chunks``); resumable uploads then record the batch's full chunks in the
   metadata, which advances the committed offset.

Up to ``upload_pipeline`` chunk jobs run at once per upload (default 2), so hashing the next
chunk overlaps staging the previous one and receiving; one publish job runs at a time per
upload, overlapping the staging of the next batch. Publishing per batch instead of per chunk
turns three waits per chunk (file fsync, shard fsync, journal commit) into a few per batch,
most of them for writes the device has already done: on the development machine the pattern
alone went from ~0.2-0.36 GB/s (one chunk at a time) to ~0.45-0.65 GB/s (batches of 16),
against ~0.55-0.8 GB/s for a plain file and one fsync.

Durability is unchanged: every chunk file is fsynced before its name appears, its pending
entry is committed before that, and its directory entry is durable before the commit (or the
upload record) that references it. A crash loses at most the batches not yet published,
which nothing references. Bounds per upload: ``upload_pipeline + 1`` chunk buffers of memory;
at most ``2 * upload_batch`` staged temp files (open descriptors, dirty page cache).

Same-file writers: *last commit wins, atomically*. Uploads to one path proceed independently
and never wait for each other; each commit replaces the file in one metadata transaction
(under the path's lock), so readers see one complete version or the other. With
``WriteMode.EXCLUSIVE`` the first commit wins and later ones fail with AlreadyExistsError.
"""

from __future__ import annotations

import logging
from collections import deque
from types import TracebackType
from typing import TYPE_CHECKING, Self

import attrs
import blake3
import trio

from librorum.errors import ConflictError, InvalidArgumentError, TooLargeError
from librorum.protocol.constants import WriteMode
from librorum.store.objects import Staged, hash_chunk
from librorum.store.types import FileInfo

if TYPE_CHECKING:
    from librorum.store.meta import MetaTxn
    from librorum.store.store import Store

log = logging.getLogger("librorum.store")


@attrs.define(eq=False)
class ChunkJob:
    """One chunk on its way to disk."""

    index: int
    buf: bytearray
    length: int
    #: Record the chunk in the upload's metadata once durable (resumable uploads, full chunks).
    record: bool
    prev: ChunkJob | None
    hashed: trio.Event = attrs.field(factory=trio.Event)
    done: trio.Event = attrs.field(factory=trio.Event)
    digest: bytes = b""
    error: Exception | None = None


@attrs.define(eq=False)
class _Batch:
    """Chunks staged since the last publish: published, then recorded, together."""

    staged: list[Staged] = attrs.field(factory=list)
    digests: set[bytes] = attrs.field(factory=set)
    #: Chunks of the upload in this batch, staged or deduplicated.
    count: int = 0
    #: (index, digest, length) of the chunks to record once published (resumable uploads).
    records: list[tuple[int, bytes, int]] = attrs.field(factory=list)
    done: trio.Event = attrs.field(factory=trio.Event)
    error: Exception | None = None


_OPEN = "open"
_FAILED = "failed"
_COMMITTED = "committed"
_ABORTED = "aborted"
_DETACHED = "detached"


class Upload:
    """An upload in progress. Obtain one from :meth:`Store.begin_upload` or
    :meth:`Store.resume_upload`; finish it with :meth:`commit`, :meth:`abort` or (resumable
    uploads) :meth:`detach`. As an ``async with`` block it finishes itself on exit unless
    committed: a resumable upload is detached (kept, resumable from its committed offset), an
    anonymous one aborted.

    One task at a time may call ``write``/``commit`` (a second concurrent call raises
    ConflictError).
    """

    def __init__(
        self,
        store: Store,
        *,
        path: str,
        mode: WriteMode,
        size: int | None,
        upload_id: str | None,
        chunk_size: int,
        recorded: list[tuple[bytes, int]],
        hasher: blake3.blake3,
    ) -> None:
        self._store = store
        self.path = path
        self.mode = mode
        self.size = size
        self._upload_id = upload_id
        self._chunk_size = chunk_size
        self._chunks: list[tuple[bytes, int]] = list(recorded)
        self._pinned: list[bytes] = [d for d, _ in recorded]
        self._hasher = hasher
        self._offset = sum(n for _, n in recorded)
        self._committed = self._offset
        self._buf: bytearray | None = None
        self._fill = 0
        self._jobs: deque[ChunkJob] = deque()
        self._last_job: ChunkJob | None = None
        self._next_index = len(recorded)
        self._state = _OPEN
        self._busy = False
        self._batch = _Batch()
        self._publishing: _Batch | None = None
        # Set once a publish failed: no later batch is published or recorded, since a
        # resumable upload's record must stay a gapless prefix of its data.
        self._publish_failed: BaseException | None = None
        store._pins.pin(self._pinned)

    # --- properties ---------------------------------------------------------------------------

    @property
    def upload_id(self) -> str | None:
        """The resumable upload's id; ``None`` for an anonymous upload."""
        return self._upload_id

    @property
    def offset(self) -> int:
        """Bytes accepted so far (including the resumed prefix)."""
        return self._offset

    @property
    def committed_offset(self) -> int:
        """Bytes durably stored and recorded: where a resume would start (resumable uploads;
        0 for anonymous ones, which cannot be resumed)."""
        return self._committed

    @property
    def idle(self) -> bool:
        """No ``write`` or ``commit`` call is in progress."""
        return not self._busy

    @property
    def state(self) -> str:
        """``open``, ``failed``, ``committed``, ``aborted`` or ``detached``."""
        return self._state

    # --- writing --------------------------------------------------------------------------------

    def _enter(self) -> None:
        if self._state != _OPEN:
            msg = f"upload to {self.path} is {self._state}"
            raise ConflictError(msg)
        if self._busy:
            msg = f"upload to {self.path} is already being written by another task"
            raise ConflictError(msg)
        self._busy = True

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data`` (any size; copied before this returns, so the caller may reuse
        its buffer).

        Cancellation: a cancelled write leaves the upload failed (it may have consumed part
        of ``data``); abort or detach it.

        Raises:
            TooLargeError: The data would exceed the declared size or the store's maximum file
                size (nothing of ``data`` is taken; the upload stays usable).
            ConflictError: The upload is not open, or is busy in another task.
            NoSpaceError, StoreIOError, ReadOnlyError: Storing a chunk failed (the upload is
                failed).
        """
        self._enter()
        try:
            view = memoryview(data)
            if view.format != "B" or view.ndim != 1:
                view = view.cast("B")
            total = len(view)
            limit = self._store.max_file_size if self.size is None else self.size
            if self._offset + total > limit:
                what = "declared size" if self.size is not None else "maximum file size"
                msg = f"upload to {self.path} would exceed the {what} of {limit} bytes"
                raise TooLargeError(msg)
            await self._write(view)
        finally:
            self._busy = False

    async def _write(self, view: memoryview) -> None:
        try:
            pos, total, size = 0, len(view), self._chunk_size
            while pos < total:
                if self._buf is None:
                    self._buf = self._take_buffer()
                n = min(total - pos, size - self._fill)
                memoryview(self._buf)[self._fill : self._fill + n] = view[pos : pos + n]
                self._fill += n
                self._offset += n
                pos += n
                if self._fill == size:
                    await self._submit(final=False)
        except BaseException:
            self._state = _FAILED
            raise

    def _take_buffer(self) -> bytearray:
        return self._store._get_buffer(self._chunk_size)

    def _give_buffer(self, buf: bytearray) -> None:
        self._store._put_buffer(buf)

    async def _submit(self, *, final: bool) -> None:
        assert self._buf is not None
        job = ChunkJob(
            index=self._next_index,
            buf=self._buf,
            length=self._fill,
            record=self._upload_id is not None and not final,
            prev=self._last_job,
        )
        self._buf = None
        self._fill = 0
        # At most upload_pipeline jobs in flight, the new one included (with 1, chunk jobs run
        # strictly one after the other: the file-system operations come in a fixed order).
        try:
            while len(self._jobs) >= self._store.upload_pipeline:
                await self._reap()
        except BaseException:
            self._give_buffer(job.buf)
            raise
        self._next_index += 1
        self._last_job = job
        self._jobs.append(job)
        self._store._start_job(self._run_job, job)

    async def _run_job(self, job: ChunkJob) -> None:
        store = self._store
        try:
            if job.prev is not None:
                await job.prev.hashed.wait()
                if job.prev.error is not None:
                    msg = "an earlier chunk of this upload failed"
                    raise ConflictError(msg)
            view = memoryview(job.buf)[: job.length]
            job.digest = await store._in_thread(hash_chunk, view, self._hasher)
            job.hashed.set()
            store._pins.pin([job.digest])
            self._pinned.append(job.digest)
            # Staged in chunk order: a batch is a run of consecutive chunks, recorded in order.
            if job.prev is not None:
                await job.prev.done.wait()
                if job.prev.error is not None:
                    msg = "an earlier chunk of this upload failed"
                    raise ConflictError(msg)
            batch = self._batch
            # Staged even if the store holds the chunk: see Store._publish_chunks.
            if job.digest not in batch.digests:
                store._check_writable()
                batch.staged.append(await store._objects.stage(job.digest, view))
                batch.digests.add(job.digest)
            batch.count += 1
            if job.record:
                batch.records.append((job.index, job.digest, job.length))
            if batch.count >= store.upload_batch:
                await self._start_publish()
        except Exception as exc:
            job.error = exc
        except BaseException:
            job.error = ConflictError("chunk write interrupted: the store is closing")
            raise
        finally:
            job.prev = None  # the chain of jobs is not kept alive past the one in flight
            job.hashed.set()
            job.done.set()

    async def _start_publish(self) -> None:
        """Hand the current batch (if any) to a publish job, after the previous one finished:
        one publish in flight per upload.

        Raises:
            The previous publish's error (the upload then fails).
        """
        await self._wait_publish()
        if self._publish_failed is not None:
            raise self._publish_failed
        batch = self._batch
        if not batch.count:
            return
        self._batch = _Batch()
        self._publishing = batch
        try:
            self._store._start_job(self._run_publish, batch)
        except BaseException:
            self._publishing = None
            with trio.CancelScope(shield=True):
                await self._store._objects.discard_many(batch.staged)
            raise

    async def _wait_publish(self) -> None:
        """Wait for the publish in flight, if any; raise its error."""
        batch = self._publishing
        if batch is None:
            return
        await batch.done.wait()
        self._publishing = None
        if batch.error is not None:
            self._publish_failed = batch.error
            raise batch.error

    async def _run_publish(self, batch: _Batch) -> None:
        store = self._store
        try:
            await store._publish_chunks(batch.staged)
            if batch.records:
                upload_id = self._upload_id
                assert upload_id is not None
                records = batch.records

                def record(t: MetaTxn) -> None:
                    for index, digest, length in records:
                        t.append_upload_chunk(upload_id, index, digest, length)

                await store._meta.write(record)
                self._committed += sum(length for _, _, length in records)
        except Exception as exc:
            batch.error = exc
        except BaseException:
            batch.error = ConflictError("chunk write interrupted: the store is closing")
            raise
        finally:
            batch.done.set()

    async def _reap(self) -> None:
        """Wait for the oldest job; take its result or raise its error (upload failed)."""
        job = self._jobs[0]
        await job.done.wait()
        self._jobs.popleft()
        self._give_buffer(job.buf)
        if job.error is not None:
            self._state = _FAILED
            raise job.error
        self._chunks.append((job.digest, job.length))

    async def _drain_jobs(self) -> None:
        """Wait for every chunk job (errors ignored) and return every buffer. Shielded: the
        jobs own the buffers until their threads finish."""
        with trio.CancelScope(shield=True):
            while self._jobs:
                job = self._jobs.popleft()
                await job.done.wait()
                self._give_buffer(job.buf)
            if self._buf is not None:
                self._give_buffer(self._buf)
                self._buf = None
                self._fill = 0

    async def _drain(self) -> None:
        """:meth:`_drain_jobs`, then wait for the publish in flight and remove what is staged
        and not published (shielded)."""
        await self._drain_jobs()
        with trio.CancelScope(shield=True):
            if self._publishing is not None:
                await self._publishing.done.wait()
                self._publishing = None
            staged, self._batch = self._batch.staged, _Batch()
            if staged:
                await self._store._objects.discard_many(staged)

    def _release(self, state: str) -> None:
        self._state = state
        self._store._pins.unpin(self._pinned)
        self._pinned = []
        if self._upload_id is not None:
            self._store._attached.pop(self._upload_id, None)

    # --- finishing ------------------------------------------------------------------------------

    async def commit(self) -> FileInfo:
        """Make the uploaded data the file's content, atomically (mode rechecked).

        Cancellation: before the metadata commit, a cancelled commit leaves the upload failed
        and the file unchanged; the commit itself is not interruptible, and once it has
        happened this returns normally.

        Raises:
            InvalidArgumentError: The data ended short of the declared size (the upload stays
                open).
            ConflictError: The upload is not open (committed, aborted, failed or detached).
            AlreadyExistsError, NotFoundError, NotADirectoryError_, IsADirectoryError_: The
                mode's conditions no longer hold at commit time (the upload is failed).
            NoSpaceError, StoreIOError, ReadOnlyError: Storing failed (the upload is failed).
        """
        self._enter()
        try:
            if self.size is not None and self._offset != self.size:
                msg = f"upload to {self.path} ended at {self._offset} of {self.size} bytes"
                raise InvalidArgumentError(msg)
            try:
                if self._buf is not None:
                    if self._fill:
                        await self._submit(final=True)
                    else:
                        self._give_buffer(self._buf)
                        self._buf = None
                while self._jobs:
                    await self._reap()
                await self._start_publish()
                await self._wait_publish()
                content_hash: bytes = self._hasher.digest()
                info = await self._store._commit_file(
                    self.path,
                    self.mode,
                    size=self._offset,
                    content_hash=content_hash,
                    chunk_size=self._chunk_size,
                    chunks=self._chunks,
                    upload_id=self._upload_id,
                )
            except BaseException:
                self._state = _FAILED
                raise
            self._release(_COMMITTED)
            return info
        finally:
            self._busy = False

    async def abort(self) -> None:
        """Discard the upload: nothing becomes visible, and a resumable upload is forgotten.
        Idempotent; a no-op after commit.

        Cancellation: shielded (waits for chunk writes in flight, then cleans up).

        Raises:
            StoreIOError, ReadOnlyError: Forgetting a resumable upload failed; it is then
                detached instead and can be aborted again later.
        """
        if self._state in (_COMMITTED, _ABORTED, _DETACHED):
            return
        await self._drain()
        with trio.CancelScope(shield=True):
            if self._upload_id is not None:
                upload_id = self._upload_id
                try:
                    self._store._check_writable()
                    await self._store._meta.write(lambda t: t.delete_upload(upload_id))
                except BaseException:
                    self._release(_DETACHED)
                    raise
            self._release(_ABORTED)
            await self._store._collect_step()

    async def detach(self) -> None:
        """Stop using a resumable upload and keep it: :meth:`Store.resume_upload` continues
        from :attr:`committed_offset` (data past it is dropped). Aborts an anonymous upload.

        Cancellation: shielded (waits for chunk writes in flight).
        """
        if self._upload_id is None:
            await self.abort()
            return
        if self._state in (_COMMITTED, _ABORTED, _DETACHED):
            return
        await self._drain_jobs()
        with trio.CancelScope(shield=True):
            # Keep what the chunks received so far can keep: publish and record the staged
            # batch (the chunks are consecutive from the committed offset). If that fails,
            # the upload resumes from the last batch recorded.
            try:
                await self._start_publish()
                await self._wait_publish()
            except Exception as exc:
                log.info("upload %s: detached without its last batch: %s", self._upload_id, exc)
        await self._drain()
        self._release(_DETACHED)
        with trio.CancelScope(shield=True):
            await self._store._collect_step()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._state in (_OPEN, _FAILED):
            await self.detach()
