"""The client's streams: a READ's content, a directory's entries page by page, and the
daemon's log as it is written.

Written once, for the async client: ``scripts/unasync.py`` generates the blocking client's
streams from this module.
"""

from __future__ import annotations

from collections import deque
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from types import TracebackType
from typing import Protocol, Self

from librorum.client._async_driver import AsyncRequest
from librorum.client._common import (
    ROUTE_ATTEMPTS,
    Chunk,
    ProgressCallback,
    refused_by_goaway,
)
from librorum.errors import ConnectionTimeoutError, RemoteProtocolError
from librorum.protocol.converter import decode_log_batches
from librorum.protocol.messages import (
    DirEntry,
    FileInfo,
    FileList,
    FileListReply,
    FileRead,
    FileReadReply,
    LogBatch,
    LogStream,
    LogStreamReply,
    Message,
)


class RequestOpener(Protocol):
    """Starts a request, in flight for the duration of the block (the client's)."""

    def __call__(self, message: Message) -> AbstractAsyncContextManager[AsyncRequest]: ...


class PageFetcher(Protocol):
    """Sends one LIST and returns its reply (the client's)."""

    async def __call__(self, message: FileList) -> FileListReply: ...


class ReadStream:
    """The content of a file, streamed: an async context manager and, once entered,
    an async iterator of chunks (buffers the caller owns). Memory stays bounded by the read window:
    credit goes back to the server as chunks are taken.

    Attributes (once entered):
        info: the file's :class:`FileInfo` at the time of the read.
        offset: where the content starts.
        length: how many bytes will follow.

    Leaving the block before the end (break, an exception, cancellation) cancels the READ on
    the server without waiting for it.
    """

    def __init__(
        self,
        open_request: RequestOpener,
        path: str,
        *,
        offset: int,
        length: int | None,
        progress: ProgressCallback | None,
    ) -> None:
        self._open_request = open_request
        self._message = FileRead(path, offset, length)
        self._progress = progress
        self._stack: AsyncExitStack | None = None
        self._request: AsyncRequest | None = None
        self._received = 0
        self._ungranted = 0
        self.info: FileInfo | None = None
        self.offset = offset
        self.length = 0

    async def __aenter__(self) -> Self:
        """Start the READ and wait for its first reply.

        Raises:
            LibrorumError: the server's error (NotFoundError, IsADirectoryError_, ...),
                ConnectionClosed, or ConnectionTimeoutError.
        """
        for attempt in range(1, ROUTE_ATTEMPTS + 1):
            async with AsyncExitStack() as stack:
                request = await stack.enter_async_context(self._open_request(self._message))
                await request.wait_reply("READ reply")
                if attempt < ROUTE_ATTEMPTS and refused_by_goaway(
                    request.error, draining=request.conn.draining
                ):
                    continue  # it had no effect: send it again on a new connection
                reply = request.result(FileReadReply)
                self.info, self.offset, self.length = reply.info, reply.offset, reply.length
                self._request = request
                self._stack = stack.pop_all()
                return self
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        stack, self._stack = self._stack, None
        if stack is None:
            return None
        return await stack.__aexit__(exc_type, exc, tb)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Chunk:
        chunk = await self.receive_some()
        if not chunk:
            raise StopAsyncIteration
        return chunk

    async def receive_some(self) -> Chunk:
        """The next chunk, or ``b""`` once all ``length`` bytes were returned.

        Raises:
            LibrorumError: the server's error in mid-stream (e.g. CorruptDataError),
                ConnectionClosed, ConnectionTimeoutError (no data within ``timeout``). The
                chunks returned before it are then incomplete and must be discarded.
            RemoteProtocolError: the stream ended short of ``length``.
            RuntimeError: the stream is used outside its block.
        """
        request = self._request
        if request is None:
            msg = "use the read stream inside `async with`"
            raise RuntimeError(msg)
        await request.wait_until(lambda: bool(request.chunks), "READ data")
        if request.error is not None:
            # Spec 5.11: data of a READ that ended in an error must be discarded, so what is
            # still queued is dropped rather than handed out before the error.
            request.chunks.clear()
            raise request.error
        chunk = request.take_chunk()
        if chunk is None:  # finished and drained
            if self._received != self.length:
                msg = f"READ announced {self.length} bytes but {self._received} arrived"
                raise RemoteProtocolError(msg)
            return b""
        self._received += len(chunk)
        self._ungranted += len(chunk)
        conn = request.conn
        # Grant in halves of the window: the server always has credit to send the next half
        # while this one is consumed, and WINDOW frames stay rare.
        if self._ungranted >= max(1, conn.read_window // 2) and not request.data_ended:
            conn.session.grant(request.session_id, self._ungranted)
            self._ungranted = 0
            await conn.flush()
        if self._progress is not None:
            self._progress(self._received, self.length)
        return chunk


class ListIterator:
    """Entries of a directory, sorted by name, fetched page by page as needed.

    Raises (while iterating):
        NotFoundError, NotADirectoryError_: the path is missing or not a directory.
        RemoteProtocolError: the server returned the same cursor twice.
    """

    def __init__(self, fetch: PageFetcher, path: str, page_size: int) -> None:
        self._fetch = fetch
        self._path = path
        self._page_size = page_size
        self._cursor: str | None = None
        self._entries: deque[DirEntry] = deque()
        self._done = False

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> DirEntry:
        while not self._entries:
            if self._done:
                raise StopAsyncIteration
            page = await self._fetch(FileList(self._path, self._cursor, self._page_size))
            if page.next_cursor is not None and page.next_cursor == self._cursor:
                msg = f"LIST of {self._path} returned the same cursor twice"
                raise RemoteProtocolError(msg)
            self._entries.extend(page.entries)
            self._cursor = page.next_cursor
            self._done = page.next_cursor is None
        return self._entries.popleft()


class LogFollower:
    """The daemon's log as it is written (LOG_STREAM, spec 5.19): an async context manager
    and, once entered, an async iterator of :class:`LogBatch` (records, and how many the
    daemon overwrote before this client took them). Memory stays bounded by the read window:
    credit goes back to the daemon as batches are taken, and a client that stops taking them
    makes the daemon skip records (``missed``) rather than hold them.

    Attributes (once entered):
        cursor: Where the stream stands: the cursor after the last batch taken.

    The iteration ends when the daemon stops (it ends the stream). Leaving the block (break,
    an exception, cancellation) cancels the stream on the daemon without waiting.
    """

    def __init__(self, open_request: RequestOpener, message: LogStream) -> None:
        self._open_request = open_request
        self._message = message
        self._stack: AsyncExitStack | None = None
        self._request: AsyncRequest | None = None
        self._batches: deque[LogBatch] = deque()
        self._ungranted = 0
        self.cursor = 0

    async def __aenter__(self) -> Self:
        """Start the stream and wait for its first reply.

        Raises:
            ForbiddenError: the caller is not one of the daemon's administrators.
            LibrorumError: ConnectionClosed, ConnectionTimeoutError, or another error of
                the daemon.
        """
        async with AsyncExitStack() as stack:
            request = await stack.enter_async_context(self._open_request(self._message))
            await request.wait_reply("LOG_STREAM reply")
            self.cursor = request.result(LogStreamReply).cursor
            self._request = request
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        stack, self._stack = self._stack, None
        if stack is None:
            return None
        return await stack.__aexit__(exc_type, exc, tb)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> LogBatch:
        batch = await self.receive()
        if batch is None:
            raise StopAsyncIteration
        return batch

    async def receive(self) -> LogBatch | None:
        """The next batch, waiting as long as the log is quiet; ``None`` once the daemon
        ended the stream (it is stopping).

        Raises:
            LibrorumError: the daemon's error (TimeoutError_ if this client granted no credit
                for its stream deadline), ConnectionClosed (the daemon went away).
            MalformedPayloadError: a batch is not one.
            RuntimeError: the stream is used outside its block.
        """
        request = self._request
        if request is None:
            msg = "use the log follower inside `async with`"
            raise RuntimeError(msg)
        while not self._batches:
            try:
                await request.wait_until(lambda: bool(request.chunks), "log records")
            except ConnectionTimeoutError:
                # A quiet log: wait on. (Had the request finished meanwhile, the next wait
                # returns at once and its outcome is handled below.)
                continue
            if request.error is not None:
                raise request.error
            chunk = request.take_chunk()
            if chunk is None:  # the final reply: the daemon ended the stream
                if isinstance(request.reply, LogStreamReply):
                    # Where to resume: past records it skipped for the filters, too (5.19).
                    self.cursor = request.reply.cursor
                return None
            self._batches.extend(decode_log_batches(chunk))
            self._ungranted += len(chunk)
            conn = request.conn
            # As for a READ: credit goes back in halves of the window.
            if self._ungranted >= max(1, conn.read_window // 2) and not request.finished:
                conn.session.grant(request.session_id, self._ungranted)
                self._ungranted = 0
                await conn.flush()
        batch = self._batches.popleft()
        self.cursor = batch.cursor
        return batch
