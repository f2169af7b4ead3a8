"""The blocking client's driver: one LBRU connection over a blocking socket, and the request
in flight on it. It has the interface of the async driver
(:mod:`librorum.client._async_driver`), so that the request logic generated from the async
client (:mod:`librorum.client._sync_client`) runs on it unchanged.

What is truly different lives here:

* **No reader task.** The owner of a request receives for it: :meth:`SyncRequest.wait_until`
  pumps the socket (one receive, then the events routed) until what it waits for arrived.
  Each receive is bounded by the socket timeout, which raises ConnectionTimeoutError.
* **One request at a time** per client: while one is in flight (a read stream is open, say),
  another raises RuntimeError instead of interleaving its frames with the unread ones.
* **No slots to wait for**: with one request in flight, the server's stream and upload
  limits are never reached.
* **Interruptions**: a send interrupted by something that is not an ``Exception``
  (KeyboardInterrupt) may have cut a frame in half, so the connection is closed and the next
  request opens a new one.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Final

from librorum.client._common import (
    CLOSE_TIMEOUT,
    GOAWAY,
    ConnectionState,
    RequestState,
    copy_error,
    ending_error,
    hello_outcome,
    route_event,
)
from librorum.client._endpoints import Endpoint, LocalEndpoint
from librorum.errors import ConnectionClosed, ConnectionTimeoutError, LibrorumError
from librorum.protocol.constants import DEFAULT_MAX_PAYLOAD, Command
from librorum.protocol.converter import command_of
from librorum.protocol.messages import Cancel, HelloReply, Message
from librorum.protocol.session import ClientSession, ConnectionEnded
from librorum.transport import BlockingFrameTransport, connect_uds_blocking, connect_ws_blocking

__all__ = ["SyncConnection", "SyncConnections", "SyncRequest"]

#: Free text naming this client in HELLO, for the server's log.
CLIENT_NAME: Final = "librorum-python-sync"


class _Turn:
    """Whether a request of the client is in flight (shared by its connections)."""

    __slots__ = ("busy",)

    def __init__(self) -> None:
        self.busy = False


class SyncRequest(RequestState):
    """A request in flight: the shared state, received by its owner."""

    __slots__ = ("conn",)

    def __init__(self, conn: SyncConnection, session_id: int, command: Command) -> None:
        super().__init__(session_id, command)
        self.conn = conn

    def wait_until(self, ready: Callable[[], bool], what: str | None = None) -> None:
        """Receive until ``ready()`` holds or the request finished. (``what``, which the
        async driver names in its timeout message, is not needed: the socket's message
        says where and how long.)

        Raises:
            ConnectionTimeoutError: nothing arrived within the socket timeout.
        """
        conn = self.conn
        while not (ready() or self.finished):
            conn.pump()

    def wait_finished(self, what: str | None = None) -> None:
        """Receive until the request finished (as :meth:`wait_until`)."""
        # The loop of wait_until without its callable: every request passes here.
        conn = self.conn
        while not self.finished:
            conn.pump()

    def wait_reply(self, what: str | None = None) -> None:
        """Receive until the (first) reply arrived or the request finished (as
        :meth:`wait_until`)."""
        conn = self.conn
        while self.reply is None and not self.finished:
            conn.pump()


class SyncConnection(ConnectionState[RequestState]):
    """One blocking transport, its session, and the request in flight on it."""

    def __init__(
        self,
        transport: BlockingFrameTransport,
        endpoint: Endpoint,
        *,
        read_window: int,
        features: int = 0,
        turn: _Turn | None = None,
    ) -> None:
        self.transport = transport
        self.endpoint: Endpoint = endpoint
        self.read_window = read_window
        #: Feature bits offered in HELLO (spec 4.3); the negotiated ones are the session's.
        self.features = features
        self.session = ClientSession()
        self.requests: dict[int, RequestState] = {}
        self.error: LibrorumError | None = None
        self.send_error: LibrorumError | None = None
        self.draining = False
        self.server: HelloReply | None = None
        self._turn = turn or _Turn()

    # Handshake ---------------------------------------------------------------------------------

    def handshake(self) -> HelloReply:
        """Send HELLO and wait for the reply (the transport's timeout bounds each step).

        Raises:
            LibrorumError: the server refused the connection (its ERROR's class), or
                ConnectionClosed, or ConnectionTimeoutError.
        """
        session = self.session
        session.hello(
            max_payload=DEFAULT_MAX_PAYLOAD,
            initial_window=self.read_window,
            features=self.features,
            client=CLIENT_NAME,
        )
        try:
            self.transport.send_frames(session.frames_to_send())
        except ConnectionClosed as exc:
            # As in the async client: a refusing server's reason may be waiting to be read.
            refusal = self._read_refusal()
            if refusal is None:
                raise
            raise refusal from exc
        endpoint = str(self.endpoint)
        while (reply := hello_outcome(session, endpoint)) is None:
            session.receive_data(self.transport.receive_some())
        self.server = reply
        return reply

    def _read_refusal(self) -> LibrorumError | None:
        """The error a server sent before closing the connection, if there is one to read
        (the transport's timeout bounds each read)."""
        session = self.session
        try:
            while True:
                data = self.transport.receive_some()
                session.receive_data(data)
                for event in session.events():
                    if isinstance(event, ConnectionEnded):
                        return event.error
                if not data:
                    return None
        except (ConnectionClosed, ConnectionTimeoutError):
            return None

    # Requests ----------------------------------------------------------------------------------

    def acquire(self, *, upload: bool) -> bool:
        """Whether a request may start here now (False: the connection is unusable).

        Raises:
            RuntimeError: a request of this client is in flight (a read stream is open).
        """
        if self._turn.busy:
            msg = "a read stream is open: SyncClient runs one request at a time"
            raise RuntimeError(msg)
        return self.usable

    def start(self, message: Message, *, end: bool, upload: bool, fd: bool = False) -> SyncRequest:
        """Queue a request; it holds the client's turn until :meth:`close_request`."""
        session_id = self.session.start_request(message, end=end, fd=fd)
        request = SyncRequest(self, session_id, command_of(message)[0])
        self.requests[session_id] = request
        self._turn.busy = True
        return request

    def start_passing_fd(self, message: Message, fd: int) -> SyncRequest:
        """Start a WRITE whose content is the descriptor ``fd`` (spec 8): its frame goes
        alone with ``fd`` attached. The caller keeps ``fd``.

        Raises:
            As :meth:`flush`.
        """
        request = self.start(message, end=True, upload=True, fd=True)
        try:
            self._flush(fd)
        except BaseException as exc:
            self.close_request(request, interrupted=not isinstance(exc, Exception))
            raise
        return request

    def close_request(self, request: SyncRequest, *, interrupted: bool = False) -> None:
        """The owner is done with ``request``: if it is still in flight, ask the server to
        cancel it (best effort, without waiting: its CANCEL reply is discarded). When the
        owner was ``interrupted`` (KeyboardInterrupt), a frame may have been cut in half:
        the connection is closed instead."""
        self._turn.busy = False
        if interrupted:
            self.die(ConnectionClosed("interrupted in the middle of a request"))
            return
        if self.requests.pop(request.session_id, None) is None or self.error is not None:
            return
        self.session.forget(request.session_id)
        if not self.usable:
            return
        with contextlib.suppress(LibrorumError):
            cancel_id = self.session.start_request(Cancel(request.session_id))
            self.session.forget(cancel_id)
            self.flush()

    def flush(self) -> None:
        """Send what the session queued. If the send fails, the connection ends: what the
        server sent before is routed first, then the request in flight gets the error.

        Raises:
            ConnectionClosed: the connection had already ended.
            ConnectionTimeoutError: the send took longer than the timeout (a frame may have
                been cut in half, so the connection is closed).
        """
        self._flush(None)

    def _flush(self, fd: int | None) -> None:
        frames = self.session.frames_to_send()
        if not frames or self.send_error is not None:
            return
        if self.error is not None:
            raise copy_error(self.error)
        try:
            if fd is None:
                self.transport.send_frames(frames)
            else:
                # With ``fd``, the last frame queued goes alone with it attached (spec 8.1).
                if len(frames) > 1:
                    self.transport.send_frames(frames[:-1])
                self.transport.send_fd_frame(frames[-1], fd)
        except ConnectionTimeoutError as exc:
            self.die(exc)
            raise copy_error(exc) from exc
        except LibrorumError as exc:
            # The server may have ended the request (an early ERROR, a refusal after GOAWAY)
            # and closed before our send: what it sent is still readable and decides the
            # outcome. Take it all, then the end of the stream fails what remains.
            self.send_error = exc
            # Bounded as a whole, like the async client: a server that keeps trickling data
            # without closing must not hold the caller forever.
            deadline = time.monotonic() + CLOSE_TIMEOUT
            while self.error is None:
                if time.monotonic() > deadline:
                    msg = f"the server did not close within {CLOSE_TIMEOUT} s after a failed send"
                    self.die(ConnectionTimeoutError(msg))
                    break
                try:
                    self.pump()
                except ConnectionTimeoutError as timeout:
                    self.die(timeout)

    def pump(self) -> None:
        """Receive once and route the events. A dead connection ends every request in
        flight (they get the error); a receive timeout is raised to the caller.

        Raises:
            ConnectionTimeoutError: nothing arrived within the timeout.
        """
        try:
            data = self.transport.receive_some()
        except ConnectionTimeoutError:
            raise
        except LibrorumError as exc:
            self.die(exc)
            return
        session = self.session
        session.receive_data(data)
        for event in session.events():
            outcome = route_event(event, self.requests)
            if outcome is GOAWAY:
                self.draining = True
            elif isinstance(outcome, ConnectionEnded):
                if data:
                    # A protocol failure queued an ERROR on session 0: tell the server why.
                    with contextlib.suppress(LibrorumError):
                        self.flush()
                self.die(ending_error(outcome, str(self.endpoint), eof=not data))
                return

    def retire(self) -> None:
        """A new connection replaces this draining one (GOAWAY). Nothing would read what
        the server still sends here, so it is closed at once."""
        self.close()

    def die(self, exc: LibrorumError) -> None:
        """The connection is over because of ``exc``: the request in flight ends with it and
        the socket is closed. Idempotent (the first reason wins)."""
        if not self.end_requests(exc):
            return
        self.transport.close()

    def close(self) -> None:
        self.die(ConnectionClosed("the client was closed"))


# --- The connections of one client -------------------------------------------------------------


class SyncConnections:
    """The connections of one client: opened here and closed together."""

    def __init__(self) -> None:
        self._turn = _Turn()
        self._latest: SyncConnection | None = None

    def open(
        self,
        endpoint: Endpoint,
        *,
        timeout: float,
        connect_timeout: float,
        read_window: int,
        features: int,
    ) -> SyncConnection:
        """Connect to ``endpoint`` and complete the HELLO exchange, each step bounded by
        ``connect_timeout``; from then on each socket operation gets ``timeout``.

        Raises:
            ConnectionTimeoutError: a step took longer than ``connect_timeout``.
            UnauthorizedError: the server refused the credentials (or the socket is not
                trusted).
            ConnectionClosed: no connection could be made, or it closed during HELLO.
            LibrorumError: the server refused the HELLO (its ERROR's class).
        """
        transport: BlockingFrameTransport
        if isinstance(endpoint, LocalEndpoint):
            transport = connect_uds_blocking(endpoint.path, timeout=connect_timeout)
        else:
            transport = connect_ws_blocking(
                endpoint.url,
                token=endpoint.token,
                ssl_context=endpoint.ssl_context,
                timeout=connect_timeout,
            )
        conn = SyncConnection(
            transport,
            endpoint,
            read_window=read_window,
            # Only a Unix socket can carry descriptors (spec 8).
            features=features if transport.carries_files else 0,
            turn=self._turn,
        )
        try:
            conn.handshake()
        except BaseException as exc:
            transport.close()
            if isinstance(exc, ConnectionClosed):
                # The transport's words ("send failed: ...") may not say where.
                msg = f"HELLO with {endpoint} failed: {exc}"
                raise ConnectionClosed(msg) from exc
            raise
        transport.set_timeout(timeout)
        self._latest = conn
        return conn

    def close(self) -> None:
        """Close the connection. Those replaced before were closed then."""
        if self._latest is not None:
            self._latest.close()
