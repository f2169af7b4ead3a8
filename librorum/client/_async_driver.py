"""The async client's driver: one LBRU connection over a trio transport, with its reader
and canceller tasks, and the requests in flight on it. The request logic above it
(:mod:`librorum.client._async_client`) is shared with the blocking client, whose driver
(:mod:`librorum.client._sync_driver`) has the same interface.

* **One reader task per connection** (in the nursery of :func:`~librorum.client.open_client`)
  feeds received bytes to the sans-I/O :class:`~librorum.protocol.session.ClientSession` and
  routes each event to the request it belongs to: a small state object per session in
  flight (:class:`AsyncRequest`) whose owner parks on a :class:`trio.lowlevel.ParkingLot`
  until something arrives. The reader never blocks on a slow consumer: what a READ may
  queue is bounded by the window the client granted.
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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

import trio

from librorum.client._common import (
    CLOSE_TIMEOUT,
    GOAWAY,
    RECEIVE_SIZE,
    ConnectionState,
    RequestState,
    copy_error,
    ending_error,
    hello_outcome,
    route_event,
)
from librorum.client._endpoints import Endpoint, LocalEndpoint
from librorum.errors import (
    ConnectionClosed,
    ConnectionTimeoutError,
    LibrorumError,
)
from librorum.limits import SMALL_RECEIVE_SIZE, next_receive_size
from librorum.protocol.constants import DEFAULT_MAX_PAYLOAD, Command
from librorum.protocol.converter import command_of
from librorum.protocol.framing import Payload
from librorum.protocol.messages import Cancel, HelloReply, Message
from librorum.protocol.session import ClientSession, ConnectionEnded
from librorum.transport import FrameTransport, acquire_lock, connect_uds, connect_websocket

__all__ = ["AsyncConnection", "AsyncConnections", "AsyncRequest"]

#: Free text naming this client in HELLO, for the server's log.
CLIENT_NAME: Final = "librorum-python"
#: Abandoned requests waiting for their CANCEL to be sent; beyond this, a request is
#: abandoned without CANCEL (the server finishes it and the client discards the result).
MAX_QUEUED_CANCELS: Final = 64
#: Streams kept out of the request semaphore so that a CANCEL always finds one.
CANCEL_RESERVE: Final = 1


# --- One request in flight ---------------------------------------------------------------------


class AsyncRequest(RequestState):
    """A request in flight on a connection: the shared state plus a wake-up for its owner,
    and the semaphore slots it holds."""

    __slots__ = ("_lot", "conn", "holds_stream", "holds_upload")

    def __init__(
        self,
        conn: AsyncConnection,
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

    async def wait_until(self, ready: Callable[[], bool], what: str | None = None) -> None:
        """Return once ``ready()`` holds or the request finished. ``what`` names what is
        awaited in the timeout's message (default: the command's reply; built only then,
        as every request passes here).

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
        what = what or f"{self.command.name} reply"
        msg = f"no {what} from {self.conn.endpoint} within {timeout:g} s"
        raise ConnectionTimeoutError(msg)

    async def wait_finished(self, what: str | None = None) -> None:
        """Return once the request finished (as :meth:`wait_until`)."""
        await self.wait_until(lambda: self.finished, what)

    async def wait_reply(self, what: str | None = None) -> None:
        """Return once the (first) reply arrived or the request finished (as
        :meth:`wait_until`)."""
        await self.wait_until(lambda: self.reply is not None, what)

    def release_slots(self) -> None:
        """Give the request's semaphore slots back (once)."""
        if self.holds_upload:
            self.holds_upload = False
            self.conn.uploads.release()
        if self.holds_stream:
            self.holds_stream = False
            self.conn.streams.release()


# --- One connection ----------------------------------------------------------------------------


class AsyncConnection(ConnectionState[AsyncRequest]):
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
        self.endpoint: Endpoint = endpoint
        self.timeout = timeout
        self.read_window = read_window
        #: Feature bits offered in HELLO (spec 4.3); the negotiated ones are the session's.
        self.features = features
        self.session = ClientSession()
        self.requests: dict[int, AsyncRequest] = {}
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
        self._cancel_send, self._cancel_receive = trio.open_memory_channel[AsyncRequest](
            MAX_QUEUED_CANCELS
        )
        self._scope = trio.CancelScope()

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
        endpoint = str(self.endpoint)
        while (reply := hello_outcome(session, endpoint)) is None:
            session.receive_data(await self.transport.receive_some(RECEIVE_SIZE))
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
        eof = False
        while True:
            for event in session.events():
                outcome = route_event(event, requests)
                if outcome is GOAWAY:
                    self.draining = True
                elif isinstance(outcome, ConnectionEnded):
                    if not eof:
                        # A protocol failure queued an ERROR on session 0: tell the server why.
                        await self._send_last_words()
                    self.die(ending_error(outcome, str(self.endpoint), eof=eof))
                    return
            try:
                data = await self.transport.receive_some(receive_size)
            except LibrorumError as exc:
                self.die(exc)
                return
            eof = not data
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

    async def _cancel(self, target: AsyncRequest) -> None:
        if not self.usable:
            return  # draining or dead: no new request may start, not even CANCEL
        try:
            session_id = self.session.start_request(Cancel(target.session_id))
        except LibrorumError:
            # No stream free for it (a server allowing a single stream): the server finishes
            # the target and its result is discarded.
            return
        request = AsyncRequest(
            self, session_id, Command.CANCEL, holds_stream=False, holds_upload=False
        )
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

    def start(self, message: Message, *, end: bool, upload: bool, fd: bool = False) -> AsyncRequest:
        """Queue a request (slots already held by the caller, now owned by the request)."""
        try:
            session_id = self.session.start_request(message, end=end, fd=fd)
        except BaseException:
            self.streams.release()
            if upload:
                self.uploads.release()
            raise
        request = AsyncRequest(
            self,
            session_id,
            command_of(message)[0],
            holds_stream=True,
            holds_upload=upload,
        )
        self.requests[session_id] = request
        return request

    def close_request(self, request: AsyncRequest, *, interrupted: bool = False) -> None:
        """The owner is done with ``request``. If it is still in flight (the owner was
        cancelled or failed), forget it and have CANCEL sent; its slots stay held until the
        CANCEL reply. Never blocks.

        ``interrupted`` (the owner left by a BaseException that is no Exception, such as
        trio.Cancelled) changes nothing here: sends are shielded, so no frame was cut.
        """
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

    async def start_passing_fd(self, message: Message, fd: int) -> AsyncRequest:
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

    def retire(self) -> None:
        """A new connection replaces this draining one (GOAWAY): its requests in flight
        finish here, its reader ends it when the server closes."""

    def die(self, exc: LibrorumError) -> None:
        """The connection is over because of ``exc``: every request in flight ends with it,
        the background tasks stop. Idempotent (the first reason wins)."""
        if not self.end_requests(exc):
            return
        self._cancel_send.close()
        self._scope.cancel()


# --- The connections of one client -------------------------------------------------------------


class AsyncConnections:
    """The connections of one client: opened here, run in the client's nursery, and closed
    together."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._connections: set[AsyncConnection] = set()

    async def open(
        self,
        endpoint: Endpoint,
        *,
        # The connection's per-request progress deadline, not a deadline for this call
        # (which connect_timeout bounds).
        timeout: float,  # noqa: ASYNC109
        connect_timeout: float,
        read_window: int,
        features: int,
    ) -> AsyncConnection:
        """Connect to ``endpoint``, complete the HELLO exchange and start the connection's
        tasks.

        Cancellation: nothing is left open.

        Raises:
            ConnectionTimeoutError: it took longer than ``connect_timeout``.
            UnauthorizedError: the server refused the credentials (or the socket is not
                trusted).
            ConnectionClosed: no connection could be made, or it closed during HELLO.
            LibrorumError: the server refused the HELLO (its ERROR's class).
        """
        with trio.move_on_after(connect_timeout):
            transport: FrameTransport
            if isinstance(endpoint, LocalEndpoint):
                transport = await connect_uds(endpoint.path)
            else:
                transport = await connect_websocket(
                    endpoint.url,
                    token=endpoint.token,
                    ssl_context=endpoint.ssl_context,
                    handshake_timeout=connect_timeout,
                )
            conn = AsyncConnection(
                transport,
                endpoint,
                timeout=timeout,
                read_window=read_window,
                # Only a Unix socket can carry descriptors (spec 8).
                features=features if transport.carries_files else 0,
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
            self._nursery.start_soon(self._run, conn)
            return conn
        msg = f"connecting to {endpoint} took more than {connect_timeout:g} s"
        raise ConnectionTimeoutError(msg)

    async def _run(self, conn: AsyncConnection) -> None:
        try:
            await conn.run()
        finally:
            self._connections.discard(conn)

    def close(self) -> None:
        """End every connection: requests in flight end with ConnectionClosed. Never
        blocks; each connection closes its transport in its own task."""
        for conn in list(self._connections):
            conn.die(ConnectionClosed("the client was closed"))
