"""Uploads: a stream of pieces of any size, cut into chunks, committed atomically at the end.

Pipeline (per upload). ``write`` copies the caller's bytes into one of the upload's
page-aligned buffers (``upload_buffer`` bytes each, default 1 MiB) on the Trio thread (a
memoryview copy, ~9 GB/s) and returns. A full buffer, or the end of a chunk, becomes a *piece
job* run in the store's nursery, which, in one worker thread call (``_piece_sync``; object
stores that stage from the Trio thread, like the in-memory one, take one call per step):

1. feeds the piece to the chunk's BLAKE3 (its name) and to the running whole-file BLAKE3 (the
   content hash), after the previous piece was hashed;
2. appends it to the chunk's temp file (created by the chunk's first piece), with O_DIRECT
   straight from the buffer where the file system allows it, after the previous piece was
   written; the buffer is then free.

Two chains, so hashing one piece overlaps writing the one before: a piece's thread waits for
the previous piece's hash, then for its write (``threading.Event``), and a piece takes its
thread only once the previous piece holds one, so that a waiting thread never waits for a
piece still queued behind it for a thread.

The last piece of a chunk yields its digest; in chunk order, the chunk is then pinned and
added to the current *batch* (a repeat of a digest already in the batch is dropped). Every
``upload_batch`` chunks (and at commit) the batch goes to a *publish job*: under the chunks'
locks, journal the new digests as pending in one transaction, fsync every staged file, rename
each to its name, fsync each touched shard directory once (``ChunkEngine.publish``);
resumable uploads then record the batch's full chunks in the metadata, which advances the
committed offset. ``ingest_fd`` runs the same pipeline with pieces read from the client's file
into the buffers in the piece jobs' threads (each read in the thread call that hashes it; the
reads of two pieces may overlap, their hashes and writes keep their order).

Memory. An upload holds at most ``upload_pipeline`` buffers (default 2: one filling while the
other is hashed and written), whatever the chunk size: 2 MiB by default, allocated on first
use and given back (to the store's small pool of idle buffers, or to the system) when the
upload finishes. Only the first is the upload's own: the others come from an allowance the
store shares among its uploads (``upload_extra_buffers``, 16 by default), so a few uploads
pipeline fully, and many at once (which keep the disk busy anyway) hold one buffer each. A chunk is never held in memory whole: its digest is learned piece by piece,
so every chunk is written to a temp file, including one the store holds already (see
``ChunkEngine.publish`` for why that copy is published too). ``write`` returns once the
caller's bytes are in a buffer, so the bytes an upload has taken and not yet written are
bounded by its buffers.

Pipelining. With two buffers, receiving (filling one buffer) overlaps hashing and writing the
other; one publish job runs at a time per upload, overlapping the staging of the next batch.
Publishing per batch instead of per chunk turns three waits per chunk (file fsync, shard fsync,
journal commit) into a few per batch, most of them for writes the device has already done.

Durability is unchanged: every chunk file is fsynced before its name appears, its pending
entry is committed before that, and its directory entry is durable before the commit (or the
upload record) that references it. A crash loses at most the batches not yet published,
which nothing references. Bounds per upload: ``upload_pipeline`` buffers of memory; at most
``2 * upload_batch + 1`` staged temp files (open descriptors; with O_DIRECT no dirty page
cache but a chunk's unaligned tail).

Same-file writers: *last commit wins, atomically*. Uploads to one path proceed independently
and never wait for each other; each commit replaces the file in one metadata transaction
(under the path's lock), so readers see one complete version or the other. With
``WriteMode.EXCLUSIVE`` the first commit wins and later ones fail with AlreadyExistsError.
"""

from __future__ import annotations

import logging
import mmap
import threading
from collections import deque
from types import TracebackType
from typing import TYPE_CHECKING, Self

import attrs
import blake3
import trio

from librorum.activity import Wait, waiting
from librorum.domain import WriteMode
from librorum.errors import ConflictError, InvalidArgumentError, TooLargeError
from librorum.store._translate import translating
from librorum.store.engine import ChunkEngine
from librorum.store.fs import FS
from librorum.store.interfaces import UploadHost
from librorum.store.objects import Staged, StageSync
from librorum.store.types import FileInfo

if TYPE_CHECKING:
    from librorum.store.meta import MetaTxn

log = logging.getLogger("librorum.store")


@attrs.define(eq=False)
class _Chunk:
    """One chunk on its way to disk: its temp file and its running hash."""

    index: int
    staged: Staged = attrs.field(factory=Staged)
    hasher: blake3.blake3 = attrs.field(factory=blake3.blake3)
    #: Bytes of the chunk taken into buffers so far.
    filled: int = 0


@attrs.define(eq=False)
class _Piece:
    """Part of one chunk in one buffer, on its way to the chunk's temp file."""

    chunk: _Chunk
    buf: mmap.mmap
    length: int
    #: The chunk's last piece (its digest is known after it).
    last: bool
    prev: _Piece | None
    #: Where to read the piece from first (``ingest_fd``): the client's fd and an offset.
    source: tuple[int, int] | None = None
    #: Set once the piece holds a worker thread (or failed before): the next piece may take
    #: one then (see :meth:`Upload._run_piece_in_thread`).
    slotted: trio.Event = attrs.field(factory=trio.Event)
    #: Set once the piece is hashed (or failed before); the next piece may be hashed then.
    hashed: trio.Event = attrs.field(factory=trio.Event)
    #: Set once the piece is written and, if last, its chunk handed on (or failed).
    done: trio.Event = attrs.field(factory=trio.Event)
    error: Exception | None = None
    #: The same two steps seen from worker threads (the single-call pipeline): set once the
    #: piece is hashed, written (or failed, or will never run); ``*_ok`` say which.
    hashed_in_thread: threading.Event = attrs.field(factory=threading.Event)
    written_in_thread: threading.Event = attrs.field(factory=threading.Event)
    hash_ok: bool = False
    write_ok: bool = False


@attrs.define(eq=False)
class _Batch:
    """Chunks staged since the last publish: published, then recorded, together."""

    staged: list[Staged] = attrs.field(factory=list)
    digests: set[bytes] = attrs.field(factory=set)
    #: Chunks of the upload in this batch, staged or repeated.
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


def _feed(view: memoryview, chunk_hasher: blake3.blake3, file_hasher: blake3.blake3) -> None:
    chunk_hasher.update(view)
    file_hasher.update(view)


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
        engine: ChunkEngine,
        host: UploadHost,
        *,
        path: str,
        mode: WriteMode,
        size: int | None,
        upload_id: str | None,
        chunk_size: int,
        recorded: list[tuple[bytes, int]],
        hasher: blake3.blake3,
    ) -> None:
        self._engine = engine
        self._host = host
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
        # The buffer being filled, and the buffers not in use (at most upload_pipeline in
        # all, counting those of the pieces in flight).
        self._buf: mmap.mmap | None = None
        self._fill = 0
        self._spare: list[mmap.mmap] = []
        self._buffers = 0
        self._chunk: _Chunk | None = None
        # Chunks whose temp file the upload still owns (not yet handed to a batch).
        self._unstaged: list[_Chunk] = []
        self._pieces: deque[_Piece] = deque()
        self._last_piece: _Piece | None = None
        self._next_index = len(recorded)
        self._state = _OPEN
        self._busy = False
        self._batch = _Batch()
        self._publishing: _Batch | None = None
        # Set once a publish failed: no later batch is published or recorded, since a
        # resumable upload's record must stay a gapless prefix of its data.
        self._publish_failed: BaseException | None = None
        engine.pins.pin(self._pinned)

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
        """Append ``data`` (any size). Returns once ``data`` is copied into the upload's
        buffers, so the caller may reuse it; waits while every buffer is busy being hashed and
        written (so the bytes taken and not yet written stay within ``upload_pipeline``
        buffers).

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
            limit = self._engine.max_file_size if self.size is None else self.size
            if self._offset + total > limit:
                what = "declared size" if self.size is not None else "maximum file size"
                msg = f"upload to {self.path} would exceed the {what} of {limit} bytes"
                raise TooLargeError(msg)
            await self._write(view)
        finally:
            self._busy = False

    async def _write(self, view: memoryview) -> None:
        try:
            pos, total = 0, len(view)
            while pos < total:
                buf, chunk = await self._room()
                n = min(total - pos, self._piece_room(chunk))
                buf[self._fill : self._fill + n] = view[pos : pos + n]
                self._fill += n
                chunk.filled += n
                self._offset += n
                pos += n
                self._piece_filled(chunk)
        except BaseException:
            self._state = _FAILED
            raise

    async def ingest(self, fd: int, size: int) -> None:
        """Take the ``size`` bytes of the client's file ``fd`` (from offset 0) and publish
        them, short of the metadata commit (``Store.ingest_fd``). Each piece is read into a
        buffer by its piece job, in a worker thread.

        Raises:
            InvalidArgumentError: The file shrank.
            NoSpaceError, StoreIOError, ReadOnlyError: Storing failed (the upload is failed).
        """
        self._enter()
        try:
            while self._offset < size:
                _buf, chunk = await self._room()
                n = min(size - self._offset, self._piece_room(chunk))
                source = (fd, self._offset)
                self._fill += n
                chunk.filled += n
                self._offset += n
                self._piece_filled(chunk, source=source, end=self._offset == size)
            await self._flush()
        except BaseException:
            self._state = _FAILED
            raise
        finally:
            self._busy = False

    def _piece_room(self, chunk: _Chunk) -> int:
        buf_room = self._engine.upload_buffer - self._fill
        return min(buf_room, self._chunk_size - chunk.filled)

    async def _room(self) -> tuple[mmap.mmap, _Chunk]:
        """The buffer being filled and the chunk it belongs to (taking or waiting for a
        buffer, starting a chunk, as needed)."""
        if self._buf is None:
            self._buf = await self._take_buffer()
            self._fill = 0
        if self._chunk is None:
            self._chunk = _Chunk(index=self._next_index)
            self._next_index += 1
            self._unstaged.append(self._chunk)
        return self._buf, self._chunk

    def _piece_filled(
        self, chunk: _Chunk, *, source: tuple[int, int] | None = None, end: bool = False
    ) -> None:
        """Submit the buffer if it is full or ends its chunk. With ``source`` (its bytes are
        still to be read from the client's file) it is submitted at once, and ``end`` says
        that the file ends with it."""
        if chunk.filled == self._chunk_size or end:
            self._chunk = None
            self._submit(chunk, last=True, source=source)
        elif self._fill == self._engine.upload_buffer or source is not None:
            self._submit(chunk, last=False, source=source)

    async def _take_buffer(self) -> mmap.mmap:
        """A free buffer: a spare one, a new one while the upload holds fewer than
        ``upload_pipeline`` (beyond the first, only while the store's allowance of extra
        buffers lasts), else the oldest piece's once it is done."""
        if self._spare:
            return self._spare.pop()
        if self._buffers == 0 or (
            self._buffers < self._engine.upload_pipeline and self._engine.take_extra_buffer()
        ):
            self._buffers += 1
            return self._engine.upload_buffers.get()
        await self._reap()
        return self._spare.pop()

    def _submit(self, chunk: _Chunk, *, last: bool, source: tuple[int, int] | None) -> None:
        assert self._buf is not None
        piece = _Piece(
            chunk=chunk,
            buf=self._buf,
            length=self._fill,
            last=last,
            prev=self._last_piece,
            source=source,
        )
        self._buf = None
        self._fill = 0
        try:
            self._engine.start_job(self._run_piece, piece)
        except BaseException:
            self._spare.append(piece.buf)
            raise
        self._last_piece = piece
        self._pieces.append(piece)

    async def _run_piece(self, piece: _Piece) -> None:
        stage = self._engine.stage_sync
        if stage is not None:
            await self._run_piece_in_thread(piece, stage)
        else:
            await self._run_piece_in_steps(piece)

    async def _run_piece_in_thread(self, piece: _Piece, stage: StageSync) -> None:
        """Read (``ingest_fd``), hash and write the piece in one worker thread call, for
        object stores that can write from a worker thread (``ThreadStaging``): a hand-off
        costs ~0.15 ms of CPU on the development VM, half of what hashing a MiB twice does.
        The two chains are kept in the threads (:meth:`_piece_sync`): a piece is hashed
        after the one before it was, and written after it was written, so hashing one piece
        still overlaps writing the one before.

        A piece takes its thread only once the piece before it holds one (or failed): a
        thread then only ever waits for a piece that runs, never for one still queued for a
        thread that the waiting pieces of every upload hold (which would never come).
        """
        engine = self._engine
        prev = piece.prev
        try:
            if prev is not None:
                await prev.slotted.wait()
            with waiting(Wait.DISK):
                async with engine.io_limiter:
                    piece.slotted.set()
                    await trio.to_thread.run_sync(
                        self._piece_sync, piece, stage, limiter=engine.held_limiter
                    )
            if prev is not None:
                await prev.done.wait()
                if prev.error is not None:
                    msg = "an earlier piece of this upload failed"
                    raise ConflictError(msg)
            if piece.last:
                await self._chunk_done(piece.chunk)
        except Exception as exc:
            piece.error = exc
        except BaseException:
            piece.error = ConflictError("chunk write interrupted: the store is closing")
            raise
        finally:
            piece.prev = None  # the chain of pieces is not kept alive past the one in flight
            # A piece that never ran its thread (cancelled on the way) still releases the
            # next one, which finds it failed.
            piece.slotted.set()
            piece.hashed_in_thread.set()
            piece.written_in_thread.set()
            piece.hashed.set()
            piece.done.set()

    def _piece_sync(self, piece: _Piece, stage: StageSync) -> None:
        """The piece's steps in its worker thread: read (``ingest_fd``; in any order),
        then hash after the previous piece is hashed, then write after it is written.

        Raises:
            ConflictError: The previous piece failed.
            InvalidArgumentError: The client's file shrank.
            NoSpaceError, StoreIOError: Reading or writing failed.
        """
        prev = piece.prev
        msg = "an earlier piece of this upload failed"
        try:
            if piece.source is not None:
                fd, offset = piece.source
                _read_exact(self._engine.fs, fd, offset, piece.buf, piece.length)
            if prev is not None:
                prev.hashed_in_thread.wait()
                if not prev.hash_ok:
                    raise ConflictError(msg)
            if piece.length:
                with memoryview(piece.buf) as whole:
                    _feed(whole[: piece.length], piece.chunk.hasher, self._hasher)
            piece.hash_ok = True
        finally:
            piece.hashed_in_thread.set()
        try:
            if prev is not None:
                prev.written_in_thread.wait()
                if not prev.write_ok:
                    raise ConflictError(msg)
            if piece.length or piece.last:
                stage(piece.chunk.staged, piece.buf, piece.length, piece.last)
            piece.write_ok = True
        finally:
            piece.written_in_thread.set()

    async def _run_piece_in_steps(self, piece: _Piece) -> None:
        """The piece's steps as separate calls (object stores that write from the Trio
        thread, like the in-memory one)."""
        engine = self._engine
        chunk = piece.chunk
        try:
            # Pieces are hashed in order (one hash runs through the whole file) and written
            # in order, in two chains: hashing a piece overlaps writing the one before.
            prev = piece.prev
            if prev is not None:
                await prev.hashed.wait()
                if prev.error is not None:
                    msg = "an earlier piece of this upload failed"
                    raise ConflictError(msg)
            if piece.source is not None:
                # Read and hashed in one worker thread call: a hand-off costs ~0.15 ms of
                # CPU here, more than reading a MiB from the page cache, so a third call
                # per piece to overlap the read with the previous piece's hashing cost more
                # than it saved (the write, the longest step, overlaps both either way).
                fd, offset = piece.source
                await engine.in_thread(
                    _read_and_feed,
                    engine.fs,
                    fd,
                    offset,
                    piece.buf,
                    piece.length,
                    (chunk.hasher, self._hasher),
                )
            elif piece.length:
                view = memoryview(piece.buf)[: piece.length]
                await engine.in_thread(_feed, view, chunk.hasher, self._hasher)
            piece.hashed.set()
            if prev is not None:
                await prev.done.wait()
                if prev.error is not None:
                    msg = "an earlier piece of this upload failed"
                    raise ConflictError(msg)
            if piece.length or piece.last:
                await engine.objects.stage_piece(
                    chunk.staged, piece.buf, piece.length, last=piece.last
                )
            if piece.last:
                await self._chunk_done(chunk)
        except Exception as exc:
            piece.error = exc
        except BaseException:
            piece.error = ConflictError("chunk write interrupted: the store is closing")
            raise
        finally:
            piece.prev = None  # the chain of pieces is not kept alive past the one in flight
            piece.hashed.set()
            piece.done.set()

    async def _chunk_done(self, chunk: _Chunk) -> None:
        """The chunk's last piece is written (runs in chunk order): pin it and hand it to the
        current batch, which publishes it when full."""
        engine = self._engine
        staged = chunk.staged
        staged.digest = chunk.hasher.digest()
        length = staged.length
        engine.pins.pin([staged.digest])
        self._pinned.append(staged.digest)
        self._chunks.append((staged.digest, length))
        batch = self._batch
        if staged.digest in batch.digests:
            # A repeat within the batch. Shielded: the temp file is the upload's until gone.
            with trio.CancelScope(shield=True):
                await engine.objects.discard_many([staged])
        else:
            batch.staged.append(staged)  # the batch owns it now
            batch.digests.add(staged.digest)
        self._unstaged.remove(chunk)
        batch.count += 1
        # Only full chunks are recorded: a resume continues from a chunk boundary.
        if self._upload_id is not None and length == self._chunk_size:
            batch.records.append((chunk.index, staged.digest, length))
        if batch.count >= engine.upload_batch:
            await self._start_publish()

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
            self._engine.start_job(self._run_publish, batch)
        except BaseException:
            self._publishing = None
            with trio.CancelScope(shield=True):
                await self._engine.objects.discard_many(batch.staged)
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
        engine = self._engine
        try:
            await engine.publish(batch.staged)
            if batch.records:
                upload_id = self._upload_id
                assert upload_id is not None
                records = batch.records

                def record(t: MetaTxn) -> None:
                    for index, digest, length in records:
                        t.append_upload_chunk(upload_id, index, digest, length)

                await engine.meta.write(record)
                self._committed += sum(length for _, _, length in records)
        except Exception as exc:
            batch.error = exc
        except BaseException:
            batch.error = ConflictError("chunk write interrupted: the store is closing")
            raise
        finally:
            batch.done.set()

    async def _reap(self) -> None:
        """Wait for the oldest piece; take back its buffer and raise its error (the upload
        is then failed)."""
        piece = self._pieces[0]
        await piece.done.wait()
        self._pieces.popleft()
        self._spare.append(piece.buf)
        if piece.error is not None:
            self._state = _FAILED
            raise piece.error

    async def _flush(self) -> None:
        """Submit what the buffer holds as the last piece of the last chunk, wait for every
        piece, then publish the last batch and wait for it.

        Raises:
            The first error of a piece or a publish (the upload is then failed).
        """
        if self._chunk is not None:
            chunk, self._chunk = self._chunk, None
            if self._buf is None:
                # The chunk's pieces so far were whole buffers: end it with an empty piece.
                self._buf = await self._take_buffer()
                self._fill = 0
            self._submit(chunk, last=True, source=None)
        while self._pieces:
            await self._reap()
        await self._start_publish()
        await self._wait_publish()

    async def _drain_pieces(self) -> None:
        """Wait for every piece (errors ignored) and take back every buffer. Shielded: the
        pieces own their buffers until their threads finish."""
        with trio.CancelScope(shield=True):
            while self._pieces:
                piece = self._pieces.popleft()
                await piece.done.wait()
                self._spare.append(piece.buf)
            if self._buf is not None:
                self._spare.append(self._buf)
                self._buf = None
                self._fill = 0

    async def _drain(self) -> None:
        """:meth:`_drain_pieces`, then wait for the publish in flight and remove what is
        staged and not published (shielded)."""
        await self._drain_pieces()
        with trio.CancelScope(shield=True):
            if self._publishing is not None:
                await self._publishing.done.wait()
                self._publishing = None
            staged, self._batch = self._batch.staged, _Batch()
            staged += [chunk.staged for chunk in self._unstaged]
            self._unstaged = []
            self._chunk = None
            if staged:
                await self._engine.objects.discard_many(staged)

    def _release(self, state: str) -> None:
        self._state = state
        self._engine.pins.unpin(self._pinned)
        self._pinned = []
        if self._upload_id is not None:
            self._host.release(self._upload_id)
        # Nothing is in flight any more: the buffers go back to the store (which keeps a few
        # for the next upload and lets the rest go).
        if self._buf is not None:
            self._spare.append(self._buf)
            self._buf = None
        for buf in self._spare:
            self._engine.upload_buffers.put(buf)
        self._spare = []
        self._engine.give_extra_buffers(max(0, self._buffers - 1))
        self._buffers = 0

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
                await self._flush()
                content_hash: bytes = self._hasher.digest()
                info = await self._host.commit_file(
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
                    self._engine.check_writable()
                    await self._engine.meta.write(lambda t: t.delete_upload(upload_id))
                except BaseException:
                    self._release(_DETACHED)
                    raise
            self._release(_ABORTED)
            await self._engine.collect_step()

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
        await self._drain_pieces()
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
            await self._engine.collect_step()

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


def _read_and_feed(
    fs: FS,
    fd: int,
    offset: int,
    buf: mmap.mmap,
    length: int,
    hashers: tuple[blake3.blake3, blake3.blake3],
) -> None:
    """Read ``length`` bytes of the client's file at ``offset`` into ``buf`` and feed them to
    the chunk's and the file's hashers (worker thread). What is hashed is the buffer, which
    is also what is written: a client changing its file meanwhile cannot make them differ.

    Raises:
        InvalidArgumentError: The file ended early (it shrank); nothing was hashed.
        StoreIOError: The read failed; nothing was hashed.
    """
    _read_exact(fs, fd, offset, buf, length)
    with memoryview(buf) as whole:
        _feed(whole[:length], *hashers)


def _read_exact(fs: FS, fd: int, offset: int, buf: mmap.mmap, length: int) -> None:
    """Read ``length`` bytes of the client's file at ``offset`` into ``buf`` (worker thread).

    Raises:
        InvalidArgumentError: The file ended early (it shrank).
        StoreIOError: The read failed.
    """
    with translating("read client file"), memoryview(buf) as whole:
        view = whole[:length]
        done = 0
        while done < length:
            got = fs.pread_into(fd, view[done:], offset + done)
            if got == 0:
                msg = f"client file ended {length - done} bytes early (it shrank)"
                raise InvalidArgumentError(msg)
            done += got
