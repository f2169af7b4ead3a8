"""Downloads: a snapshot of a file's chunks, streamed in order and verified chunk by chunk.

Memory per reader: iterated as pieces, ``read_ahead + 1`` chunk buffers (the chunks read and
verified ahead, and the one whose piece the consumer holds: 12 MiB at the defaults), since a
chunk is verified whole before any of it is handed out; iterated as segments, none (each
chunk is verified by reading it through a small per-thread buffer, and only descriptors are
held).
"""

from __future__ import annotations

import mmap
from collections import deque
from collections.abc import Callable

import attrs
import blake3
import trio

from librorum.errors import CorruptDataError
from librorum.store.engine import ChunkEngine
from librorum.store.types import FileInfo, Segment


@attrs.frozen
class Span:
    """The part of one chunk that a read covers."""

    digest: bytes
    chunk_length: int
    start: int
    end: int


def make_verifier(digest: bytes) -> Callable[[memoryview], None]:
    """A function that checks a chunk's bytes against its digest (run in the read's thread)."""

    def verify(data: memoryview) -> None:
        if blake3.blake3(data).digest() != digest:
            msg = f"chunk {digest.hex()} failed verification"
            raise CorruptDataError(msg)

    return verify


@attrs.define(eq=False)
class _ReadJob:
    span: Span
    buf: mmap.mmap
    done: trio.Event = attrs.field(factory=trio.Event)
    error: Exception | None = None


@attrs.define(eq=False)
class _OpenJob:
    """One chunk being opened and verified ahead of the segment iterator."""

    span: Span
    done: trio.Event = attrs.field(factory=trio.Event)
    fd: int | None = None
    error: Exception | None = None


class Reader:
    """A verified, in-order stream of one range of a file, as of :meth:`Store.open_read`.

    The reader sees the snapshot taken when it was opened: a concurrent overwrite or delete
    does not affect it (its chunks are pinned until it closes).

    ``async for piece in reader`` yields memoryviews of the range, chunk by chunk. **Each piece
    is valid only until the next iteration step** (its buffer is reused); copy it to keep it.
    Each chunk is read whole and checked against its digest before any of it is returned; a
    chunk that fails is quarantined (see ``ChunkEngine.on_corrupt``) before the error is raised.

    :meth:`segments` yields the same range as :class:`Segment` (fd, offset, length) triples for
    ``os.sendfile``; each chunk is verified before its segment is handed out, and the next
    ``read_ahead`` chunks are opened and verified in worker threads meanwhile.

    Attributes:
        info: The file's FileInfo at the snapshot.
        offset: Where the range starts.
        length: The range's length (clipped to the file's end).
    """

    def __init__(self, engine: ChunkEngine, info: FileInfo, offset: int, spans: list[Span]) -> None:
        self._engine = engine
        self.info = info
        self.offset = offset
        self.length = sum(s.end - s.start for s in spans)
        self._spans = spans
        self._next = 0
        self._jobs: deque[_ReadJob] = deque()
        self._held: _ReadJob | None = None
        self._open_jobs: deque[_OpenJob] = deque()
        self._segment_fd: int | None = None
        self._closed = False
        # The next span :meth:`next_segment` hands out.
        self._segment_next = 0

    def __aiter__(self) -> Reader:
        return self

    async def __anext__(self) -> memoryview:
        """The next piece.

        Raises:
            CorruptDataError: The chunk is missing or does not match its digest.
            StoreIOError: Reading failed.
        """
        if self._held is not None:
            self._engine.put_read_buffer(self._held.buf)
            self._held = None
        if self._closed or self._next >= len(self._spans):
            raise StopAsyncIteration
        ahead = self._engine.read_ahead
        queued = self._next + len(self._jobs)
        while len(self._jobs) < ahead and queued < len(self._spans):
            span = self._spans[queued]
            job = _ReadJob(span=span, buf=self._engine.get_read_buffer(span.chunk_length))
            try:
                # Started before it is queued (see SegmentIterator.__anext__).
                self._engine.start_job(self._run_job, job)
            except BaseException:
                self._engine.put_read_buffer(job.buf)
                raise
            self._jobs.append(job)
            queued += 1
        job = self._jobs[0]
        await job.done.wait()
        self._jobs.popleft()
        self._held = job
        if job.error is not None:
            self._next = len(self._spans)
            raise job.error
        self._next += 1
        return memoryview(job.buf)[job.span.start : job.span.end]

    async def _run_job(self, job: _ReadJob) -> None:
        span = job.span
        try:
            into = memoryview(job.buf)[: span.chunk_length]
            await self._engine.objects.get(span.digest, into, 0, make_verifier(span.digest))
        except CorruptDataError as exc:
            job.error = exc
            await self._engine.on_corrupt(exc, span.chunk_length, f"read of {self.info.path}")
        except Exception as exc:
            job.error = exc
        except BaseException:
            job.error = CorruptDataError("read interrupted: the store is closing")
            raise
        finally:
            job.done.set()

    def segments(self) -> SegmentIterator:
        """The range as verified (fd, offset, length) segments, for ``os.sendfile``.

        Each descriptor stays open until the iterator advances or the reader closes; do not
        close it yourself. Iterate a reader one way only (pieces or segments), once.
        """
        return SegmentIterator(self)

    async def _run_open(self, job: _OpenJob) -> None:
        try:
            job.fd = await self._engine.open_verified(job.span.digest, job.span.chunk_length)
        except CorruptDataError as exc:
            job.error = exc
            span = job.span
            await self._engine.on_corrupt(exc, span.chunk_length, f"read of {self.info.path}")
        except Exception as exc:
            job.error = exc
        except BaseException:
            job.error = CorruptDataError("read interrupted: the store is closing")
            raise
        finally:
            job.done.set()

    async def next_segment(self) -> Segment:
        """The next verified segment of :meth:`segments` (closes the previous one's
        descriptor).

        Cancellation: the chunks opened ahead stay with the reader, which closes them.

        Raises:
            StopAsyncIteration: The range is done (or the reader closed).
            CorruptDataError: The chunk is missing or does not match its digest.
            StoreIOError: Opening or reading it failed.
        """
        self._close_segment()
        spans = self._spans
        if self._closed or self._segment_next >= len(spans):
            raise StopAsyncIteration
        jobs = self._open_jobs
        # Open and verify up to read_ahead chunks ahead in worker threads, so the caller
        # sends one chunk while the next ones are hashed. Each holds only a descriptor (the
        # hashing reads the file through a small per-thread buffer), so this costs no memory
        # beyond the page cache.
        queued = self._segment_next + len(jobs)
        while len(jobs) < max(1, self._engine.read_ahead) and queued < len(spans):
            job = _OpenJob(span=spans[queued])
            # Started before it is queued: a job that never started would never be done,
            # and closing the reader waits for every queued one.
            self._engine.start_job(self._run_open, job)
            jobs.append(job)
            queued += 1
        job = jobs[0]
        await job.done.wait()
        jobs.popleft()
        if job.error is not None:
            self._segment_next = len(spans)
            raise job.error
        assert job.fd is not None
        span = job.span
        self._segment_fd = job.fd
        self._segment_next += 1
        return Segment(fd=job.fd, offset=span.start, length=span.end - span.start)

    def _close_segment(self) -> None:
        if self._segment_fd is not None:
            fd, self._segment_fd = self._segment_fd, None
            try:
                self._engine.fs.close(fd)
            except OSError:
                pass

    async def aclose(self) -> None:
        """Stop: wait for the chunk jobs in flight (shielded), close the descriptors opened
        ahead and give the buffers back. Idempotent; never raises."""
        self._closed = True
        self._close_segment()
        with trio.CancelScope(shield=True):
            while self._jobs:
                job = self._jobs.popleft()
                await job.done.wait()
                self._engine.put_read_buffer(job.buf)
            # Chunks opened ahead and never handed out: wait for each (it runs in a thread)
            # and close its descriptor.
            while self._open_jobs:
                opened = self._open_jobs.popleft()
                await opened.done.wait()
                if opened.fd is not None:
                    self._segment_fd = opened.fd
                    self._close_segment()
        if self._held is not None:
            self._engine.put_read_buffer(self._held.buf)
            self._held = None


class SegmentIterator:
    """Iterates a reader's range as :class:`Segment` items, verifying ahead."""

    def __init__(self, reader: Reader) -> None:
        self._reader = reader

    def __aiter__(self) -> SegmentIterator:
        return self

    async def __anext__(self) -> Segment:
        """The next verified segment (closes the previous one's descriptor).

        Cancellation: the chunks opened ahead stay with the reader, which closes them.

        Raises:
            CorruptDataError: The chunk is missing or does not match its digest.
            StoreIOError: Opening or reading it failed.
        """
        return await self._reader.next_segment()
