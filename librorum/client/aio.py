"""The async (trio) client: many requests multiplexed on one LBRU connection.

Use::

    async with open_client() as client:
        info = await client.write("/notes/a.txt", b"hello")
        data = await client.read("/notes/a.txt")

Design:

* **One reader task per connection** (in the nursery of :func:`open_client`) feeds received
  bytes to the sans-I/O :class:`~librorum.protocol.session.ClientSession` and routes each
  event to the request it belongs to: a small state object per session in flight
  (:class:`~librorum.client._common.RequestState`) whose owner parks on a
  :class:`trio.lowlevel.ParkingLot` until something arrives. The reader never blocks on a
  slow consumer: what a READ may queue is bounded by the window the client granted.
* **One send lock.** A task queues its frames in the session, then flushes everything
  queued under the lock, so frames from many tasks leave in one vectored write. Sends are
  shielded from cancellation (a frame cut in half would corrupt the connection for every
  request) and bounded by ``timeout`` instead.
* **Limits from the HELLO reply**: a semaphore of ``max_streams - 1`` requests (one stream
  is kept for CANCEL), one of ``max_uploads`` WRITEs, DATA frames of ``max_payload`` bytes
  within the server's window.
* **Cancellation**: when a task is cancelled (or fails) while its request is in flight, the
  request is forgotten at once and a background task sends CANCEL{target}; the request's
  slots are freed when the CANCEL reply shows the server finished with it.
* **Reconnect**: a dropped connection fails the requests in flight with
  :class:`~librorum.errors.ConnectionClosed` (outcome unknown). The next request opens a new
  connection, retrying with exponential backoff (immediately, then 0.05 s doubling to 2 s,
  at most 8 attempts in 15 s). After GOAWAY new requests go to a new connection while the
  old one drains. A resumable upload interrupted by a disconnect resumes from the offset
  the server committed.
"""

from __future__ import annotations

import os
import secrets
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Final, Self

import trio

from librorum.client._common import (
    CLOSE_TIMEOUT,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_READ_WINDOW,
    DEFAULT_RESUME_ATTEMPTS,
    DEFAULT_TIMEOUT,
    GOAWAY,
    RECEIVE_SIZE,
    RECONNECT_ATTEMPTS,
    RECONNECT_DEADLINE,
    RECONNECT_INITIAL_DELAY,
    Chunk,
    M,
    ProgressCallback,
    RequestState,
    backoff_delays,
    copy_error,
    expect,
    lost,
    route_event,
)
from librorum.client._endpoints import (
    Endpoint,
    LocalEndpoint,
    TransportChoice,
    resolve_endpoints,
)
from librorum.client._sources import Source, WriteData, open_source
from librorum.errors import (
    ConflictError,
    ConnectionClosed,
    ConnectionTimeoutError,
    LibrorumError,
    NotFoundError,
    RemoteProtocolError,
    ServerError,
    TransportError,
    UnauthorizedError,
    UnavailableError,
)
from librorum.limits import SMALL_RECEIVE_SIZE, next_receive_size
from librorum.protocol.constants import (
    DEFAULT_LIST_LIMIT,
    DEFAULT_MAX_PAYLOAD,
    Command,
    Feature,
    WriteMode,
)
from librorum.protocol.converter import command_of
from librorum.protocol.framing import Payload
from librorum.protocol.messages import (
    Cancel,
    Delete,
    DeleteReply,
    DirEntry,
    FileInfo,
    FileList,
    FileListReply,
    FileRead,
    FileReadReply,
    FileStat,
    FileStatReply,
    FileWrite,
    FileWriteReply,
    HelloReply,
    MakeDirectory,
    MakeDirectoryReply,
    Message,
    NodeStatus,
    NodeStatusReply,
    Ping,
    PingReply,
    Rename,
    RenameReply,
    UploadStatus,
    UploadStatusReply,
)
from librorum.protocol.session import (
    ClientSession,
    ConnectionEnded,
    HelloAccepted,
    State,
)
from librorum.transport import FrameTransport, acquire_lock, connect_uds, connect_websocket

__all__ = ["Client", "ListIterator", "ReadStream", "open_client"]

#: Free text naming this client in HELLO, for the server's log.
CLIENT_NAME: Final = "librorum-python"
#: Abandoned requests waiting for their CANCEL to be sent; beyond this, a request is
#: abandoned without CANCEL (the server finishes it and the client discards the result).
MAX_QUEUED_CANCELS: Final = 64
#: Streams kept out of the request semaphore so that a CANCEL always finds one.
CANCEL_RESERVE: Final = 1
#: Times a new request is re-routed when the connection it waited for became unusable.
ROUTE_ATTEMPTS: Final = 3


# --- One request in flight ---------------------------------------------------------------------


class _Request(RequestState):
    """A request in flight on a connection: the shared state plus a wake-up for its owner,
    and the semaphore slots it holds."""

    __slots__ = ("_lot", "conn", "holds_stream", "holds_upload")

    def __init__(
        self,
        conn: _Connection,
        session_id: int,
        command: Command,
        *,
        holds_stream: bool,
        holds_upload: bool,
    ) -> None:
        super().__init__(session_id, command)
        self.conn = conn
        self.holds_stream = holds_stream
        self.holds_upload = holds_upload
        self._lot = trio.lowlevel.ParkingLot()

    def changed(self) -> None:
        self._lot.unpark_all()

    async def wait_until(self, ready: Callable[[], bool], what: str) -> None:
        """Return once ``ready()`` holds or the request finished.

        Raises:
            ConnectionTimeoutError: nothing of the kind arrived within the connection's
                ``timeout``.
        """
        if ready() or self.finished:
            await trio.lowlevel.checkpoint()
            return
        timeout = self.conn.timeout
        with trio.move_on_after(timeout):
            while not (ready() or self.finished):
                await self._lot.park()
            return
        msg = f"no {what} from {self.conn.endpoint} within {timeout:g} s"
        raise ConnectionTimeoutError(msg)

    async def wait_finished(self, what: str) -> None:
        await self.wait_until(lambda: self.finished, what)

    async def wait_reply(self, what: str) -> None:
        await self.wait_until(lambda: self.reply is not None, what)

    def result(self, cls: type[M]) -> M:
        """The reply, narrowed to ``cls``.

        Raises:
            LibrorumError: the request's error (the exception class of the ERROR's code, or
                ConnectionClosed / the connection error when the connection ended).
        """
        if self.error is not None:
            raise self.error
        return expect(self.reply, cls)

    def release_slots(self) -> None:
        """Give the request's semaphore slots back (once)."""
        if self.holds_upload:
            self.holds_upload = False
            self.conn.uploads.release()
        if self.holds_stream:
            self.holds_stream = False
            self.conn.streams.release()


def _refused_by_goaway(request: _Request) -> bool:
    """Whether the server refused ``request`` because it is draining (GOAWAY): such a request
    had no effect and may be sent again on a new connection (spec 5.15)."""
    return isinstance(request.error, UnavailableError) and request.conn.draining


class _RefusedByGoAway(Exception):  # noqa: N818 - an internal signal, never escapes
    def __init__(self, error: LibrorumError) -> None:
        super().__init__(str(error))
        self.error = error


# --- One connection ----------------------------------------------------------------------------


class _Connection:
    """One transport, its session, its reader and canceller tasks, and its requests."""

    def __init__(
        self,
        transport: FrameTransport,
        endpoint: Endpoint,
        *,
        timeout: float,
        read_window: int,
        features: int = 0,
    ) -> None:
        self.transport = transport
        self.endpoint = endpoint
        self.timeout = timeout
        self.read_window = read_window
        #: Feature bits offered in HELLO (spec 4.3); the negotiated ones are the session's.
        self.features = features
        self.session = ClientSession()
        self.requests: dict[int, _Request] = {}
        #: Why the connection ended (set once).
        self.error: LibrorumError | None = None
        #: GOAWAY received: requests in flight finish, new ones go elsewhere.
        self.draining = False
        #: A send failed: the connection is ending, once the reader has taken what the
        #: server sent before it closed.
        self.send_error: LibrorumError | None = None
        self.server: HelloReply | None = None
        # Replaced with the sizes from the HELLO reply before any request starts.
        self.streams = trio.Semaphore(1)
        self.uploads = trio.Semaphore(1)
        self._send_lock = trio.Lock()
        self._cancel_send, self._cancel_receive = trio.open_memory_channel[_Request](
            MAX_QUEUED_CANCELS
        )
        self._scope = trio.CancelScope()

    @property
    def usable(self) -> bool:
        """Whether a new request may start here."""
        return (
            self.error is None
            and self.send_error is None
            and not self.draining
            and self.session.state is State.OPEN
        )

    @property
    def max_payload(self) -> int:
        return self.session.max_payload

    # Handshake ---------------------------------------------------------------------------------

    async def handshake(self) -> HelloReply:
        """Send HELLO and wait for the reply (the caller bounds the wait).

        Raises:
            LibrorumError: the server refused the connection (its ERROR's class, e.g.
                UnauthorizedError or UnsupportedVersionError), or ConnectionClosed.
        """
        session = self.session
        session.hello(
            max_payload=DEFAULT_MAX_PAYLOAD,
            initial_window=self.read_window,
            features=self.features,
            client=CLIENT_NAME,
        )
        try:
            await self.transport.send_frames(session.frames_to_send())
        except ConnectionClosed as exc:
            # A server refusing the connection (a uid not allowed, a full cap) sends its
            # ERROR and closes without reading ours: the HELLO may fail (EPIPE) while the
            # reason is waiting to be read.
            refusal = await self._read_refusal()
            if refusal is None:
                raise
            raise refusal from exc
        while True:
            event = session.next_event()
            if event is None:
                session.receive_data(await self.transport.receive_some(RECEIVE_SIZE))
            elif isinstance(event, HelloAccepted):
                reply = event.reply
                break
            elif isinstance(event, ConnectionEnded):
                if event.error is not None:
                    raise event.error
                msg = f"{self.endpoint} closed the connection during the handshake"
                raise ConnectionClosed(msg)
        self.server = reply
        self.streams = trio.Semaphore(max(1, reply.max_streams - CANCEL_RESERVE))
        self.uploads = trio.Semaphore(max(1, reply.max_uploads))
        return reply

    async def _read_refusal(self) -> LibrorumError | None:
        """The error a server sent before closing the connection, if there is one to read
        (at most CLOSE_TIMEOUT of waiting)."""
        session = self.session
        with trio.move_on_after(CLOSE_TIMEOUT):
            try:
                while True:
                    data = await self.transport.receive_some(RECEIVE_SIZE)
                    session.receive_data(data)
                    for event in session.events():
                        if isinstance(event, ConnectionEnded):
                            return event.error
                    if not data:
                        break
            except (ConnectionClosed, ConnectionTimeoutError):
                pass
        return None

    # Background tasks --------------------------------------------------------------------------

    async def run(self) -> None:
        """The connection's background work: the reader and the canceller. Returns when the
        connection ended; never raises for a connection failure (requests get the error)."""
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._canceller)
                    await self._reader()
                    nursery.cancel_scope.cancel()
        finally:
            self.die(self.send_error or ConnectionClosed(f"connection to {self.endpoint} closed"))
            # Abandoned requests still queued for CANCEL: their slots go back now.
            while True:
                try:
                    self._cancel_receive.receive_nowait().release_slots()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
                try:
                    await self.transport.aclose()
                except (LibrorumError, OSError, trio.BrokenResourceError):
                    pass  # closing a broken connection: nothing left to tell anyone

    async def _reader(self) -> None:
        session = self.session
        requests = self.requests
        receive_size = SMALL_RECEIVE_SIZE
        while True:
            for event in session.events():
                outcome = route_event(event, requests)
                if outcome is GOAWAY:
                    self.draining = True
                elif isinstance(outcome, ConnectionEnded):
                    # A protocol failure queued an ERROR on session 0: tell the server why.
                    await self._send_last_words()
                    error = outcome.error
                    if error is None:
                        error = ConnectionClosed(f"{self.endpoint} closed the connection")
                    self.die(error)
                    return
            try:
                data = await self.transport.receive_some(receive_size)
            except LibrorumError as exc:
                self.die(exc)
                return
            receive_size = next_receive_size(len(data))
            session.receive_data(data)

    async def _send_last_words(self) -> None:
        frames = self.session.frames_to_send()
        if not frames:
            return
        with trio.move_on_after(CLOSE_TIMEOUT):
            async with self._send_lock:
                try:
                    await self.transport.send_frames(frames)
                except LibrorumError:
                    pass  # the connection is going down either way

    async def _canceller(self) -> None:
        async for target in self._cancel_receive:
            try:
                await self._cancel(target)
            finally:
                target.release_slots()

    async def _cancel(self, target: _Request) -> None:
        if not self.usable:
            return  # draining or dead: no new request may start, not even CANCEL
        try:
            session_id = self.session.start_request(Cancel(target.session_id))
        except LibrorumError:
            # No stream free for it (a server allowing a single stream): the server finishes
            # the target and its result is discarded.
            return
        request = _Request(self, session_id, Command.CANCEL, holds_stream=False, holds_upload=False)
        self.requests[session_id] = request
        try:
            await self.flush()
            # The target's own final frame comes first; the reply means the server is done.
            await request.wait_finished("CANCEL reply")
        except LibrorumError:
            pass  # timed out or the connection died: the target's slots go back either way
        finally:
            if self.requests.pop(session_id, None) is not None:
                self.session.forget(session_id)

    # Requests ----------------------------------------------------------------------------------

    async def acquire(self, *, upload: bool) -> bool:
        """Take a request slot (and an upload slot). Returns False, holding nothing, if the
        connection became unusable meanwhile.

        Cancellation: safe; nothing is held when cancelled.
        """
        # Upload slot first: writers queueing for one of the few upload slots must not sit on
        # stream slots that other requests could use meanwhile.
        if upload:
            await self.uploads.acquire()
        try:
            # A free slot is taken without a scheduler pass: the request checkpoints anyway
            # while it waits for its reply, and a pass per step is most of a small request.
            try:
                self.streams.acquire_nowait()
            except trio.WouldBlock:
                await self.streams.acquire()
        except BaseException:
            if upload:
                self.uploads.release()
            raise
        if not self.usable:
            self.streams.release()
            if upload:
                self.uploads.release()
            return False
        return True

    def start(self, message: Message, *, end: bool, upload: bool, fd: bool = False) -> _Request:
        """Queue a request (slots already held by the caller, now owned by the request)."""
        try:
            session_id = self.session.start_request(message, end=end, fd=fd)
        except BaseException:
            self.streams.release()
            if upload:
                self.uploads.release()
            raise
        request = _Request(
            self,
            session_id,
            command_of(message)[0],
            holds_stream=True,
            holds_upload=upload,
        )
        self.requests[session_id] = request
        return request

    def close_request(self, request: _Request) -> None:
        """The owner is done with ``request``. If it is still in flight (the owner was
        cancelled or failed), forget it and have CANCEL sent; its slots stay held until the
        CANCEL reply. Never blocks."""
        session_id = request.session_id
        if self.requests.get(session_id) is not request:
            request.release_slots()
            return
        del self.requests[session_id]
        self.session.forget(session_id)
        try:
            self._cancel_send.send_nowait(request)
        except (trio.WouldBlock, trio.ClosedResourceError):
            request.release_slots()

    async def flush(self) -> None:
        """Send every frame queued in the session (this task's and others').

        When this returns, every frame this task queued before the call has been handed to
        the transport (by this task or by the one that held the lock), or dropped because
        the connection is ending (the requests then end with its error).

        Cancellation: safe while waiting for the lock (the frames stay queued for the next
        flush); the send itself is shielded and bounded by ``timeout``.

        Raises:
            ConnectionClosed: the connection had already ended.
            ConnectionTimeoutError: the send took longer than ``timeout`` (the connection is
                closed: a frame may have been cut in half).
        """
        lock = self._send_lock
        await acquire_lock(lock)  # free: no scheduler pass (the send itself checkpoints)
        try:
            frames = self.session.frames_to_send()
            if frames:
                await self._send(frames)
        finally:
            lock.release()

    async def start_passing_fd(self, message: Message, fd: int) -> _Request:
        """Start a WRITE whose content is the descriptor ``fd`` (spec 8): its frame goes
        alone in one send with ``fd`` attached, after the frames queued before it. The caller
        holds an upload and a stream slot (now the request's) and keeps ``fd``: the server
        has its own reference once this returns.

        Cancellation: as for :meth:`flush`.

        Raises:
            As :meth:`flush`; LocalProtocolError when no fd feature was negotiated.
        """
        async with self._send_lock:
            request = self.start(message, end=True, upload=True, fd=True)
            try:
                *before, mine = self.session.frames_to_send()
                if before:
                    await self._send(before)
                await self._send([mine], fd=fd)
            except BaseException:
                self.close_request(request)
                raise
            return request

    async def _send(self, frames: Sequence[Sequence[Payload]], *, fd: int | None = None) -> None:
        if self.error is not None:
            raise self.closed_error()
        if self.send_error is not None:
            return  # the connection is ending; its requests learn how from the reader
        # A frame cut in half would corrupt the stream for every request on the connection:
        # shield the send from cancellation, and bound it instead.
        with trio.CancelScope(shield=True):
            with trio.move_on_after(self.timeout):
                try:
                    if fd is None:
                        await self.transport.send_frames(frames)
                    else:
                        await self.transport.send_fd_frame(frames[0], fd)
                except LibrorumError as exc:
                    self._send_failed(exc)
                return
            msg = f"sending to {self.endpoint} took more than {self.timeout:g} s"
            self.die(ConnectionTimeoutError(msg))
            raise self.closed_error()

    def _send_failed(self, exc: LibrorumError) -> None:
        """The server may have ended a request (an early ERROR, a refusal after GOAWAY) and
        closed the connection before our send: what it sent is still unread and decides the
        outcome. So the send does not fail the requests itself: the reader takes what
        arrived, then meets the end of the stream, which fails the rest. The deadline bounds
        that in case the end never comes."""
        if self.send_error is None:
            self.send_error = exc
            deadline = trio.current_time() + CLOSE_TIMEOUT
            self._scope.deadline = min(self._scope.deadline, deadline)

    def closed_error(self) -> LibrorumError:
        """A fresh exception saying why the connection is unusable."""
        error = self.error
        if error is None:
            msg = f"connection to {self.endpoint} is draining (GOAWAY)"
            return ConnectionClosed(msg)
        return copy_error(error)

    def die(self, exc: LibrorumError) -> None:
        """The connection is over because of ``exc``: every request in flight ends with it,
        the background tasks stop. Idempotent (the first reason wins)."""
        if self.error is not None:
            return
        self.error = exc
        endpoint = str(self.endpoint)
        for request in self.requests.values():
            request.on_error(lost(exc, request.command, endpoint))
        self.requests.clear()
        self._cancel_send.close()
        self._scope.cancel()


# --- Streams -----------------------------------------------------------------------------------


class ReadStream:
    """The content of a file, streamed: an async context manager and, once entered, an async
    iterator of chunks (buffers the caller owns). Memory stays bounded by the read window:
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
        client: Client,
        path: str,
        *,
        offset: int,
        length: int | None,
        progress: ProgressCallback | None,
    ) -> None:
        self._client = client
        self._message = FileRead(path, offset, length)
        self._progress = progress
        self._stack: AsyncExitStack | None = None
        self._request: _Request | None = None
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
                request = await stack.enter_async_context(self._client._request(self._message))
                await request.wait_reply("READ reply")
                if attempt < ROUTE_ATTEMPTS and _refused_by_goaway(request):
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

    def __aiter__(self) -> ReadStream:
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
    """Entries of a directory, fetched page by page."""

    def __init__(self, client: Client, path: str, page_size: int) -> None:
        self._client = client
        self._path = path
        self._page_size = page_size
        self._cursor: str | None = None
        self._entries: deque[DirEntry] = deque()
        self._done = False

    def __aiter__(self) -> ListIterator:
        return self

    async def __anext__(self) -> DirEntry:
        while not self._entries:
            if self._done:
                raise StopAsyncIteration
            page = await self._client._unary(
                FileList(self._path, self._cursor, self._page_size), FileListReply
            )
            if page.next_cursor is not None and page.next_cursor == self._cursor:
                msg = f"LIST of {self._path} returned the same cursor twice"
                raise RemoteProtocolError(msg)
            self._entries.extend(page.entries)
            self._cursor = page.next_cursor
            self._done = page.next_cursor is None
        return self._entries.popleft()


# --- The client --------------------------------------------------------------------------------


class Client:
    """A connection (or, across reconnects and GOAWAY, a series of them) to a Librorum
    daemon. Safe to share between tasks: their requests are multiplexed. Get one from
    :func:`open_client`.

    Every method may raise, besides what it lists:

    * the exception class of the server's ERROR code (a
      :class:`~librorum.errors.LibrorumError` subclass carrying ``.code`` and the message);
    * :class:`~librorum.errors.ConnectionClosed` when the connection dropped with the request
      in flight (its outcome is unknown) or no connection could be made;
    * :class:`~librorum.errors.ConnectionTimeoutError` when the server made no progress on
      the request within ``timeout`` seconds (the request is then cancelled).

    Cancellation: every method can be cancelled; a request in flight is then cancelled on the
    server (CANCEL is sent in the background; the caller does not wait for it).
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        endpoints: Sequence[Endpoint],
        *,
        reconnect: bool,
        timeout: float,
        connect_timeout: float,
        read_window: int,
        resume_attempts: int,
        reconnect_attempts: int = RECONNECT_ATTEMPTS,
        reconnect_deadline: float = RECONNECT_DEADLINE,
        pass_fds: bool = True,
    ) -> None:
        self._nursery = nursery
        self._features = int(Feature.FD_PASSING | Feature.MEMFD) if pass_fds else 0
        self._reconnect_attempts = reconnect_attempts
        self._reconnect_deadline = reconnect_deadline
        self._endpoints = tuple(endpoints)
        self._reconnect = reconnect
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._read_window = read_window
        self._resume_attempts = resume_attempts
        self._conn: _Connection | None = None
        self._connections: set[_Connection] = set()
        self._connect_lock = trio.Lock()
        self._closed = False

    # Connections -------------------------------------------------------------------------------

    @property
    def endpoint(self) -> Endpoint | None:
        """Where the current connection goes (``None`` before the first one)."""
        return None if self._conn is None else self._conn.endpoint

    @property
    def server(self) -> HelloReply | None:
        """The HELLO reply of the current connection: negotiated limits and features."""
        return None if self._conn is None else self._conn.server

    async def _connection(self) -> _Connection:
        conn = self._conn
        if conn is not None and conn.usable:
            return conn
        async with self._connect_lock:
            conn = self._conn
            if conn is not None and conn.usable:
                return conn
            if self._closed:
                msg = "the client is closed"
                raise ConnectionClosed(msg)
            if conn is not None and conn.error is None:
                self._conn = await self._replace_draining(conn)
                return self._conn
            if conn is not None and not self._reconnect:
                msg = f"connection to {conn.endpoint} is closed ({conn.error}) and reconnect is off"
                raise ConnectionClosed(msg)
            self._conn = await self._connect(
                attempts=1 if conn is None else self._reconnect_attempts
            )
            return self._conn

    async def _replace_draining(self, conn: _Connection) -> _Connection:
        """A new connection in place of one the server is retiring (GOAWAY). One immediate
        attempt, no backoff: the server said it is going away, so a failure is reported at
        once rather than retried for seconds.

        Raises:
            UnavailableError: no new connection could be made (or reconnect is off).
        """
        goaway = conn.session.goaway_received
        reason = f": {goaway.reason}" if goaway is not None and goaway.reason else ""
        if not self._reconnect:
            msg = f"{conn.endpoint} is going away{reason}, and reconnect is off"
            raise UnavailableError(msg)
        try:
            return await self._connect(attempts=1)
        except ConnectionClosed as exc:
            msg = f"{conn.endpoint} is going away{reason}, and no new connection could be made"
            raise UnavailableError(msg) from exc

    async def _connect(self, *, attempts: int) -> _Connection:
        """Connect, retrying with backoff.

        Raises:
            UnauthorizedError: the server refused the credentials (never retried).
            ConnectionClosed: every attempt failed (the last failure is the cause).
        """
        last: LibrorumError | None = None
        with trio.move_on_after(self._reconnect_deadline):
            for delay in backoff_delays(attempts=attempts):
                await trio.sleep(delay)
                try:
                    return await self._connect_once()
                except UnauthorizedError:
                    raise
                except (TransportError, ServerError) as exc:
                    last = exc
        where = ", ".join(map(str, self._endpoints))
        # The last error names its endpoint already; only a deadline needs saying where.
        msg = str(last) if last is not None else f"cannot connect to {where}: deadline passed"
        raise ConnectionClosed(msg) from last

    async def _connect_once(self) -> _Connection:
        """One attempt at each endpoint in order (``auto``: local first)."""
        failures: list[str] = []
        last: LibrorumError | None = None
        refused: UnauthorizedError | None = None
        for endpoint in self._endpoints:
            try:
                return await self._open_connection(endpoint)
            except UnauthorizedError as exc:
                # In auto mode a local socket we may not use is no reason not to try the
                # remote one; if nothing works, the refusal is the error worth reporting.
                refused = refused or exc
                failures.append(str(exc))  # names its endpoint already
            except (TransportError, ServerError) as exc:
                failures.append(str(exc))  # names its endpoint already
                last = exc
        if refused is not None:
            raise refused
        msg = "; ".join(failures)
        raise ConnectionClosed(msg) from last

    async def _open_connection(self, endpoint: Endpoint) -> _Connection:
        with trio.move_on_after(self._connect_timeout):
            transport: FrameTransport
            if isinstance(endpoint, LocalEndpoint):
                transport = await connect_uds(endpoint.path)
            else:
                transport = await connect_websocket(
                    endpoint.url,
                    token=endpoint.token,
                    ssl_context=endpoint.ssl_context,
                    handshake_timeout=self._connect_timeout,
                )
            conn = _Connection(
                transport,
                endpoint,
                timeout=self._timeout,
                read_window=self._read_window,
                # Only a Unix socket can carry descriptors (spec 8).
                features=self._features if isinstance(endpoint, LocalEndpoint) else 0,
            )
            try:
                await conn.handshake()
            except BaseException as exc:
                with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
                    await transport.aclose()
                if isinstance(exc, ConnectionClosed):
                    # The transport's words ("cannot send: ...") do not say where.
                    msg = f"HELLO with {endpoint} failed: {exc}"
                    raise ConnectionClosed(msg) from exc
                raise
            self._connections.add(conn)
            self._nursery.start_soon(self._run_connection, conn)
            return conn
        msg = f"connecting to {endpoint} took more than {self._connect_timeout:g} s"
        raise ConnectionTimeoutError(msg)

    async def _run_connection(self, conn: _Connection) -> None:
        try:
            await conn.run()
        finally:
            self._connections.discard(conn)

    async def aclose(self) -> None:
        """Close every connection; requests in flight end with ConnectionClosed. Idempotent.
        :func:`open_client` does this on exit."""
        self._close()
        await trio.lowlevel.checkpoint()

    def _close(self) -> None:
        self._closed = True
        for conn in list(self._connections):
            conn.die(ConnectionClosed("the client was closed"))

    # Request plumbing --------------------------------------------------------------------------

    async def _start(self, message: Message, *, end: bool, upload: bool) -> _Request:
        for _ in range(ROUTE_ATTEMPTS):
            conn = await self._connection()
            if not await conn.acquire(upload=upload):
                continue  # it died or got GOAWAY while we queued: the next one is new
            request = conn.start(message, end=end, upload=upload)
            try:
                await conn.flush()
            except BaseException:
                conn.close_request(request)
                raise
            return request
        msg = "no usable connection: each one ended while the request waited for it"
        raise ConnectionClosed(msg)

    @asynccontextmanager
    async def _request(
        self, message: Message, *, end: bool = True, upload: bool = False
    ) -> AsyncIterator[_Request]:
        """A request in flight for the duration of the block; abandoned (and cancelled on
        the server) if the block exits before the request finished."""
        request = await self._start(message, end=end, upload=upload)
        try:
            yield request
        finally:
            request.conn.close_request(request)

    async def _unary(self, message: Message, reply_type: type[M]) -> M:
        for attempt in range(1, ROUTE_ATTEMPTS + 1):
            async with self._request(message) as request:
                await request.wait_finished(f"{request.command.name} reply")
                if attempt < ROUTE_ATTEMPTS and _refused_by_goaway(request):
                    continue  # it had no effect: send it again on a new connection
                return request.result(reply_type)
        raise AssertionError("unreachable: the last attempt returns or raises")

    # Namespace ---------------------------------------------------------------------------------

    async def ping(self) -> float:
        """Round trip to the server.

        Returns:
            The round-trip time in seconds.
        """
        data = secrets.token_bytes(8)
        start = trio.current_time()
        reply = await self._unary(Ping(data), PingReply)
        elapsed = trio.current_time() - start
        if reply.data != data:
            msg = "PING reply does not echo the PING's data"
            raise RemoteProtocolError(msg)
        return elapsed

    async def stat(self, path: str) -> FileInfo:
        """Describe the file or directory at ``path``.

        Raises:
            NotFoundError: nothing is there.
            InvalidPathError: the path breaks the path rules.
        """
        return (await self._unary(FileStat(path), FileStatReply)).info

    def iter_list(self, path: str, *, page_size: int = DEFAULT_LIST_LIMIT) -> ListIterator:
        """The entries of directory ``path``, sorted by name, as an async iterator that
        fetches pages of ``page_size`` entries as needed.

        Raises (while iterating):
            NotFoundError, NotADirectoryError_: ``path`` is missing or not a directory.
        """
        return ListIterator(self, path, page_size)

    async def list(self, path: str, *, page_size: int = DEFAULT_LIST_LIMIT) -> list[DirEntry]:
        """Every entry of directory ``path``, sorted by name (all pages).

        Raises:
            NotFoundError, NotADirectoryError_: ``path`` is missing or not a directory.
        """
        return [entry async for entry in self.iter_list(path, page_size=page_size)]

    async def mkdir(self, path: str, *, parents: bool = False) -> FileInfo:
        """Create directory ``path``; with ``parents``, also missing parents, and succeed if
        it exists.

        Raises:
            AlreadyExistsError: something is at ``path`` (without ``parents``).
            NotFoundError: the parent is missing (without ``parents``).
        """
        return (await self._unary(MakeDirectory(path, parents), MakeDirectoryReply)).info

    async def delete(self, path: str, *, recursive: bool = False) -> int:
        """Delete a file, an empty directory, or with ``recursive`` a tree.

        Returns:
            The number of entries removed.

        Raises:
            NotFoundError: nothing is at ``path``.
            NotEmptyError: a non-empty directory without ``recursive``.
        """
        return (await self._unary(Delete(path, recursive), DeleteReply)).removed

    async def rename(self, src: str, dst: str, *, overwrite: bool = False) -> FileInfo:
        """Move ``src`` to ``dst`` atomically.

        Returns:
            The entry at its new path.

        Raises:
            NotFoundError: ``src`` is missing.
            AlreadyExistsError: ``dst`` exists and ``overwrite`` is false (a directory at
                ``dst`` is never replaced).
        """
        return (await self._unary(Rename(src, dst, overwrite), RenameReply)).info

    async def status(self) -> NodeStatusReply:
        """The node's health and figures."""
        return await self._unary(NodeStatus(), NodeStatusReply)

    async def upload_status(self, upload_id: str) -> UploadStatusReply:
        """How much of resumable upload ``upload_id`` the server has committed.

        Raises:
            NotFoundError: no such upload (it never started, completed, or expired).
        """
        return await self._unary(UploadStatus(upload_id), UploadStatusReply)

    # Writing -----------------------------------------------------------------------------------

    async def write(
        self,
        path: str,
        data: WriteData,
        *,
        mode: WriteMode = WriteMode.CREATE,
        size: int | None = None,
        resumable: bool = False,
        progress: ProgressCallback | None = None,
    ) -> FileInfo:
        """Store ``data`` as the file at ``path``.

        Args:
            path: where in the store.
            data: bytes-like content; a :class:`pathlib.Path` (any ``os.PathLike``) of a local
                file to upload; or an async iterable of byte strings (not rewindable: a
                disconnect cannot be resumed; do not mutate an item after yielding it).
            mode: create-or-replace, exclusive create, or overwrite only.
            size: the total size, for an async iterable (sent up front so the server can
                refuse an oversized file at once); exactly this many bytes are sent.
            resumable: give the upload an id (``secrets.token_urlsafe(16)``) so that a
                disconnect resumes from what the server committed instead of failing
                (a buffer or a file only; ``resume_attempts`` times at most).
            progress: ``progress(done, total)`` after each chunk is sent.

        Returns:
            The stored file's :class:`FileInfo`.

        Raises:
            AlreadyExistsError, NotFoundError: per ``mode``.
            TooLargeError: the file exceeds the server's maximum file size.
            ConnectionClosed: the connection dropped and the upload could not resume; its
                outcome is unknown.
            TypeError, ValueError: ``data`` is a ``str``, or ``size`` contradicts the data.
            OSError: the local file cannot be read.

        Cancellation: the upload is cancelled on the server (nothing is committed unless the
        final reply was already on its way).
        """
        source = await open_source(data, size)
        upload_id = secrets.token_urlsafe(16) if resumable else None
        try:
            offset = 0
            resumes = 0
            reroutes = 0
            conflict_delays = backoff_delays()
            while True:
                try:
                    return await self._write_once(
                        path, source, mode=mode, upload_id=upload_id, offset=offset,
                        progress=progress,
                    )  # fmt: skip
                except _RefusedByGoAway as refused:
                    # Refused before it started (spec 5.15): it had no effect, so the same
                    # WRITE may go to a new connection if the content can be read again.
                    reroutes += 1
                    if not source.seekable or reroutes >= ROUTE_ATTEMPTS:
                        raise refused.error from None
                except ConnectionClosed:
                    resumes += 1
                    if upload_id is None or not source.seekable:
                        raise
                    if resumes > self._resume_attempts:
                        raise
                    offset = await self._committed(upload_id)
                except ConflictError:
                    # A resumed WRITE may find the upload still attached to the stream that
                    # broke, until the server notices the disconnect (spec 5.10): ask again
                    # after a pause, as the committed offset may also have moved.
                    if upload_id is None or resumes == 0:
                        raise
                    delay = next(conflict_delays, None)
                    if delay is None:
                        raise
                    await trio.sleep(delay or RECONNECT_INITIAL_DELAY)
                    offset = await self._committed(upload_id)
                await source.seek(offset)
        finally:
            with trio.CancelScope(shield=True):
                await source.aclose()

    async def _committed(self, upload_id: str) -> int:
        """Where an interrupted upload resumes: the committed offset, or 0 if the server
        never saw it. Retries (with backoff) while the server still has the upload in flight
        on the old stream (CONFLICT), which it may until it notices the disconnect."""
        delays = backoff_delays()
        while True:
            try:
                return (await self.upload_status(upload_id)).offset
            except NotFoundError:
                return 0
            except ConflictError:
                delay = next(delays, None)
                if delay is None:
                    raise
                await trio.sleep(delay or RECONNECT_INITIAL_DELAY)

    async def _write_once(
        self,
        path: str,
        source: Source,
        *,
        mode: WriteMode,
        upload_id: str | None,
        offset: int,
        progress: ProgressCallback | None,
    ) -> FileInfo:
        total = source.size
        no_data = total is not None and offset >= total
        message = FileWrite(path, mode, total, upload_id, offset)
        if upload_id is None and not no_data:
            info = await self._write_passing_fd(message, source, progress)
            if info is not None:
                return info
        async with self._request(message, end=no_data, upload=True) as request:
            if not no_data:
                await self._send_content(request, source, offset, total, progress)
            await request.wait_finished("WRITE reply")
            if _refused_by_goaway(request):
                assert request.error is not None
                raise _RefusedByGoAway(request.error)
            return request.result(FileWriteReply).info

    async def _write_passing_fd(
        self, message: FileWrite, source: Source, progress: ProgressCallback | None
    ) -> FileInfo | None:
        """The WRITE with the content as a local file's descriptor (spec 8), when the
        connection negotiated it and the source is worth it; ``None`` to stream it instead.
        A sealed memfd given as a file (its /proc/self/fd path) is stored as MEMFD."""
        conn = await self._connection()
        features = conn.session.features
        fd = await source.descriptor(features) if features else None
        if fd is None:
            return None
        if not await conn.acquire(upload=True):
            return None  # the connection ended meanwhile: stream on the next one
        request = await conn.start_passing_fd(message, fd)
        try:
            await request.wait_finished("WRITE reply")
            if _refused_by_goaway(request):
                assert request.error is not None
                raise _RefusedByGoAway(request.error)
            info = request.result(FileWriteReply).info
        finally:
            conn.close_request(request)
        if progress is not None:
            progress(info.size, info.size)
        return info

    async def _send_content(
        self,
        request: _Request,
        source: Source,
        done: int,
        total: int | None,
        progress: ProgressCallback | None,
    ) -> None:
        """DATA frames of at most ``max_payload`` bytes within the server's window; the last
        carries END. Stops early if the request finishes (the server's early ERROR)."""
        conn = request.conn
        session = conn.session
        session_id = request.session_id
        while True:
            # After a failed send nothing more goes out: wait for the request's end instead.
            await request.wait_until(
                lambda: session.send_window(session_id) > 0 and conn.send_error is None,
                "WRITE window",
            )
            if request.finished:
                return  # an early ERROR (or the connection died): stop sending
            room = min(session.send_window(session_id), conn.max_payload)
            if total is not None:
                room = min(room, total - done)
            chunk = await source.read(room)
            done += len(chunk)
            last = not chunk or (total is not None and done >= total)
            session.send_data(session_id, chunk, end=last)
            await conn.flush()
            if progress is not None:
                progress(done, total)
            if last:
                return

    # Reading -----------------------------------------------------------------------------------

    def open_read(
        self,
        path: str,
        *,
        offset: int = 0,
        length: int | None = None,
        progress: ProgressCallback | None = None,
    ) -> ReadStream:
        """Stream the content of ``path`` from ``offset``, ``length`` bytes or to the end::

            async with client.open_read("/big") as stream:
                async for chunk in stream:
                    ...

        Memory stays bounded by the read window whatever the file size.

        Raises (on entering):
            NotFoundError, IsADirectoryError_: ``path`` is missing or a directory.
        """
        return ReadStream(self, path, offset=offset, length=length, progress=progress)

    async def read(self, path: str, *, offset: int = 0, length: int | None = None) -> bytes:
        """The content of ``path`` from ``offset``, ``length`` bytes or to the end.

        Raises:
            NotFoundError, IsADirectoryError_: ``path`` is missing or a directory.
        """
        async with self.open_read(path, offset=offset, length=length) as stream:
            chunks = [chunk async for chunk in stream]
        return b"".join(chunks)

    async def read_to_file(
        self,
        path: str,
        local_path: str | os.PathLike[str],
        *,
        progress: ProgressCallback | None = None,
    ) -> FileInfo:
        """Download ``path`` into ``local_path``. The content goes to a temporary file next
        to it that replaces ``local_path`` only once complete, so an interrupted download
        never leaves a torn file.

        Returns:
            The :class:`FileInfo` of what was read.

        Raises:
            NotFoundError, IsADirectoryError_: ``path`` is missing or a directory.
            OSError: the local file cannot be written.
        """
        target = trio.Path(local_path)
        partial_path = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
        try:
            async with self.open_read(path, progress=progress) as stream:
                async with await trio.open_file(partial_path, "wb") as out:
                    async for chunk in stream:
                        await out.write(chunk)
                info = stream.info
            await partial_path.replace(target)
        except BaseException:
            with trio.CancelScope(shield=True):
                await partial_path.unlink(missing_ok=True)
            raise
        assert info is not None  # set on entering the stream
        return info


@asynccontextmanager
async def open_client(
    target: str | Path | None = None,
    *,
    transport: TransportChoice = "auto",
    socket_path: str | os.PathLike[str] | None = None,
    url: str | None = None,
    token: str | None = None,
    token_file: str | os.PathLike[str] | None = None,
    reconnect: bool = True,
    ssl_context: ssl.SSLContext | None = None,
    # A per-request progress deadline kept for the client's lifetime, not a deadline for
    # this call (which callers bound with trio.fail_after as usual).
    timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    read_window: int = DEFAULT_READ_WINDOW,
    resume_attempts: int = DEFAULT_RESUME_ATTEMPTS,
    reconnect_attempts: int = RECONNECT_ATTEMPTS,
    reconnect_deadline: float = RECONNECT_DEADLINE,
    pass_fds: bool = True,
) -> AsyncIterator[Client]:
    """Connect to a Librorum daemon for the duration of the block.

    Args:
        target: a socket path or a ``ws://`` / ``wss://`` URL.
        transport: ``auto`` uses the local Unix socket when a daemon answers there and the
            remote URL otherwise; ``local`` / ``remote`` use only one.
        socket_path: the Unix socket; default ``$LIBRORUM_SOCKET``, else
            ``$XDG_RUNTIME_DIR/librorum/librorum.sock``, else
            ``/tmp/librorum-<uid>/librorum.sock``.
        url: the WebSocket URL; default ``$LIBRORUM_URL``.
        token: the bearer token for a remote daemon; default: read from ``token_file`` or
            ``$LIBRORUM_TOKEN_FILE``.
        reconnect: open a new connection (with backoff) for requests made after the
            connection dropped; otherwise they raise ConnectionClosed.
        ssl_context: for ``wss://`` URLs.
        timeout: seconds a request may wait for the server's progress (and a send may take).
        connect_timeout: seconds to connect and complete the handshake.
        read_window: bytes the server may send ahead on each READ.
        resume_attempts: times a resumable upload resumes after disconnects.
        reconnect_attempts: connection attempts when a request finds the connection
            dropped (immediately, then with backoff from 0.05 s doubling to 2 s).
        reconnect_deadline: seconds those attempts may take in all.
        pass_fds: over the Unix socket, write a local file of 1 MiB or more by passing its
            descriptor instead of streaming the bytes (when the daemon offers it; spec 8).
            The file must not change until the write returns. A sealed memfd goes the same
            way (write its /proc/self/fd path); buffers in memory are streamed. The daemon
            copies the content into its chunk files and hashes the copy.

    Raises:
        ConnectionClosed: no daemon answered at any endpoint.
        UnauthorizedError: the remote daemon refused the token.
        ValueError: contradictory arguments (e.g. ``transport="remote"`` without a URL).

    Cancellation: leaving the block (normally, by an exception, or cancelled) closes the
    connections; requests still in flight in other tasks end with ConnectionClosed.
    """
    endpoints = await trio.to_thread.run_sync(
        partial(
            resolve_endpoints,
            target,
            transport=transport,
            socket_path=socket_path,
            url=url,
            token=token,
            token_file=token_file,
            ssl_context=ssl_context,
        )
    )
    body_error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        client = Client(
            nursery,
            endpoints,
            reconnect=reconnect,
            timeout=timeout,
            connect_timeout=connect_timeout,
            read_window=read_window,
            resume_attempts=resume_attempts,
            reconnect_attempts=reconnect_attempts,
            reconnect_deadline=reconnect_deadline,
            pass_fds=pass_fds,
        )
        try:
            await client._connection()
            yield client
        except BaseException as exc:
            # Re-raised below, outside the nursery: the caller sees its own exception, not an
            # ExceptionGroup wrapping it (the connection tasks never raise).
            body_error = exc
        finally:
            client._close()
            # Each connection closes itself within CLOSE_TIMEOUT; this bounds the rest.
            nursery.cancel_scope.deadline = trio.current_time() + 2 * CLOSE_TIMEOUT
    if body_error is not None:
        raise body_error
