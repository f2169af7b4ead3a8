"""The blocking client: the same requests as the async client, one at a time, on plain
sockets (no event loop, no thread per call).

Use::

    with connect() as client:
        client.write("/notes/a.txt", b"hello")
        data = client.read("/notes/a.txt")

It drives the same sans-I/O :class:`~librorum.protocol.session.ClientSession` as the async
client over a blocking Unix socket (vectored ``sendmsg``, ``recv_into`` a reused 1 MiB
buffer) or a WebSocket spoken with wsproto over a blocking TCP (or TLS) socket, one binary
message per frame.

Not thread-safe: use one :class:`SyncClient` per thread. Requests are sequential; while a
read stream is open, no other request may start on the same client.

Every socket operation is bounded by ``timeout`` (default 30 s). A receive that times out
raises :class:`~librorum.errors.ConnectionTimeoutError` and cancels the request on the server;
a send that times out (or is interrupted, e.g. by KeyboardInterrupt) may have cut a frame in
half, so the connection is closed and the next request opens a new one.
"""

from __future__ import annotations

import array
import contextlib
import os
import secrets
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import TracebackType
from typing import Final, Self
from urllib.parse import urlsplit

import wsproto
import wsproto.utilities
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping as WsPing,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

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
    SOCKET_BUFFER_SIZE,
    Chunk,
    M,
    ProgressCallback,
    RequestState,
    backoff_delays,
    copy_error,
    ending_error,
    expect,
    lost,
    route_event,
)
from librorum.client._endpoints import (
    Endpoint,
    LocalEndpoint,
    RemoteEndpoint,
    TransportChoice,
    resolve_endpoints,
)
from librorum.client._sources import SyncSource, SyncWriteData, open_sync_source
from librorum.errors import (
    ConflictError,
    ConnectionClosed,
    ConnectionLimitError,
    ConnectionTimeoutError,
    LibrorumError,
    NotFoundError,
    RemoteProtocolError,
    ServerError,
    TransportError,
    UnauthorizedError,
    UnavailableError,
)
from librorum.limits import WS_MAX_REJECT_BODY
from librorum.protocol.constants import (
    DEFAULT_LIST_LIMIT,
    DEFAULT_MAX_PAYLOAD,
    WS_MAX_MESSAGE_SIZE,
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
from librorum.protocol.session import ClientSession, ConnectionEnded, HelloAccepted, State
from librorum.transport._wsframes import FastFrameDecoder, accelerate

__all__ = ["SyncClient", "SyncReadStream", "connect"]

#: Free text naming this client in HELLO.
CLIENT_NAME: Final = "librorum-python-sync"
#: Linux rejects a sendmsg with more buffers than this.
IOV_MAX: Final = 1024
#: Times a request is re-sent on a new connection after a GOAWAY refused it.
ROUTE_ATTEMPTS: Final = 3
#: struct ucred: pid, uid, gid (SO_PEERCRED).
_UCRED: Final = struct.Struct("3i")


# --- Blocking transports -----------------------------------------------------------------------


@contextmanager
def _socket_errors(what: str, timeout: float) -> Iterator[None]:
    """The translation boundary for blocking socket calls."""
    try:
        yield
    except TimeoutError as exc:
        msg = f"{what}: nothing for {timeout:g} s"
        raise ConnectionTimeoutError(msg) from exc
    except ssl.SSLError as exc:
        msg = f"{what}: TLS failed ({exc})"
        raise ConnectionClosed(msg) from exc
    except OSError as exc:
        msg = f"{what}: {exc.strerror or exc}"
        raise ConnectionClosed(msg) from exc


class _UdsSocket:
    """A blocking Unix socket carrying LBRU byte streams."""

    def __init__(
        self,
        path: Path,
        *,
        timeout: float,
        buffer_size: int = SOCKET_BUFFER_SIZE,
        receive_size: int = RECEIVE_SIZE,
    ) -> None:
        self._timeout = timeout
        self._where = f"unix:{path}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer_size)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_size)
            sock.settimeout(timeout)
            try:
                sock.connect(os.fspath(path))
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                msg = f"no daemon at {path}: start it with `librorum serve`"
                raise ConnectionClosed(msg) from exc
            except PermissionError as exc:
                msg = f"permission denied connecting to {path}: the daemon belongs to another user"
                raise UnauthorizedError(msg) from exc
            with _socket_errors(f"cannot connect to {self._where}", timeout):
                _pid, uid, _gid = _UCRED.unpack(
                    sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
                )
            # As the async transport does: a socket someone else created (in /tmp, say) is
            # never talked to.
            if uid not in (os.geteuid(), 0):
                msg = f"the socket {path} is served by uid {uid}, which is not trusted"
                raise UnauthorizedError(msg)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._buffer = memoryview(bytearray(receive_size))

    def send_frames(self, frames: Sequence[Sequence[Payload]]) -> None:
        parts: list[Payload] = [part for frame in frames for part in frame if len(part)]
        with _socket_errors(f"send to {self._where} failed", self._timeout):
            while parts:
                batch = parts[:IOV_MAX]
                sent = self._sock.sendmsg(batch, (), socket.MSG_NOSIGNAL)
                # Drop what went out; a partial send leaves the tail of one part.
                done = 0
                while done < len(batch) and sent >= len(batch[done]):
                    sent -= len(batch[done])
                    done += 1
                del parts[:done]
                if sent:
                    parts[0] = memoryview(parts[0]).cast("B")[sent:]

    def send_fd_frame(self, frame: Sequence[Payload], fd: int) -> None:
        """Send one frame with ``fd`` attached to its first byte (SCM_RIGHTS, spec 8.1);
        the caller keeps ``fd``."""
        parts: list[Payload] = [part for part in frame if len(part)]
        fds = array.array("i", (fd,)).tobytes()
        with _socket_errors(f"send to {self._where} failed", self._timeout):
            sent = self._sock.sendmsg(
                parts, [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)], socket.MSG_NOSIGNAL
            )
        rest = b"".join(parts)[sent:]  # a control frame: small
        if rest:
            self.send_frames([[rest]])

    def set_timeout(self, timeout: float) -> None:
        self._timeout = timeout
        self._sock.settimeout(timeout)

    def receive_some(self) -> Payload:
        with _socket_errors(f"receive from {self._where} failed", self._timeout):
            n = self._sock.recv_into(self._buffer)
        return self._buffer[:n]

    def close(self) -> None:
        self._sock.close()


class _WebSocket:
    """A blocking WebSocket client (wsproto over a TCP or TLS socket): one binary message
    per LBRU frame."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None,
        ssl_context: ssl.SSLContext | None,
        timeout: float,
        max_message_size: int = WS_MAX_MESSAGE_SIZE,
        receive_size: int = RECEIVE_SIZE,
    ) -> None:
        parts = urlsplit(url)
        secure = parts.scheme == "wss"
        host = parts.hostname
        if parts.scheme not in ("ws", "wss") or not host:
            msg = f"not a WebSocket URL: {url!r}"
            raise ValueError(msg)
        port = parts.port or (443 if secure else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host_header = f"[{host}]" if ":" in host else host
        if port != (443 if secure else 80):
            host_header = f"{host_header}:{port}"
        self._url = url
        self._timeout = timeout
        self._max_message_size = max_message_size
        self._receive_size = receive_size
        self._parts: list[bytes | bytearray] = []
        self._size = 0
        self._decoder: FastFrameDecoder | None = None
        with _socket_errors(f"cannot connect to {url}", timeout):
            sock = socket.create_connection((host, port), timeout=timeout)
        try:
            if secure:
                context = ssl_context or ssl.create_default_context()
                with _socket_errors(f"cannot connect to {url}", timeout):
                    sock = context.wrap_socket(sock, server_hostname=host)
            self._sock = sock
            self._ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
            headers = [] if token is None else [(b"authorization", b"Bearer " + token.encode())]
            self._sendall(self._ws.send(Request(host_header, target, extra_headers=headers)))
            self._handshake()
        except BaseException:
            sock.close()
            raise

    def _handshake(self) -> None:
        status = 0
        body = bytearray()
        while True:
            data = self._recv()
            if not data:
                msg = f"{self._url} closed the connection during the WebSocket handshake"
                raise ConnectionClosed(msg)
            try:
                self._ws.receive_data(data)
                events = list(self._ws.events())
            except wsproto.utilities.RemoteProtocolError as exc:
                msg = f"{self._url} is not a WebSocket server: {exc}"
                raise ConnectionClosed(msg) from exc
            for event in events:
                if isinstance(event, AcceptConnection):
                    # Faster payload paths from here on (frames already received are kept):
                    # whole messages in one buffer, each read stopping at the end of the frame
                    # it is in; None on an unchecked wsproto version (plain wsproto then).
                    self._decoder = accelerate(self._ws, whole_frames_up_to=self._max_message_size)
                    return
                if isinstance(event, RejectConnection):
                    status = event.status_code
                    if not event.has_body:
                        self._rejected(status, b"")
                elif isinstance(event, RejectData):
                    body += event.data[: WS_MAX_REJECT_BODY - len(body)]
                    if event.body_finished or len(body) >= WS_MAX_REJECT_BODY:
                        self._rejected(status, bytes(body))

    def _rejected(self, status: int, body: bytes) -> None:
        reason = body.decode("utf-8", "replace").strip() or "no reason given"
        msg = f"{self._url} refused the connection (HTTP {status}): {reason}"
        if status in (401, 403):
            raise UnauthorizedError(msg)
        if status == 503:
            raise ConnectionLimitError(msg)
        raise ConnectionClosed(msg)

    def _sendall(self, data: bytes) -> None:
        with _socket_errors(f"send to {self._url} failed", self._timeout):
            self._sock.sendall(data)

    def _recv(self) -> bytes:
        size = self._receive_size
        if self._decoder is not None:
            size = min(size, self._decoder.missing() or size)
        with _socket_errors(f"receive from {self._url} failed", self._timeout):
            return self._sock.recv(size)

    def set_timeout(self, timeout: float) -> None:
        self._timeout = timeout
        self._sock.settimeout(timeout)

    def send_frames(self, frames: Sequence[Sequence[Payload]]) -> None:
        for frame in frames:
            self._sendall(self._ws.send(BytesMessage(b"".join(frame))))

    def receive_some(self) -> Payload:
        """The next message (one LBRU frame), or ``b""`` once the server closed."""
        while True:
            for event in self._ws.events():
                if isinstance(event, BytesMessage):
                    message = self._collect(event)
                    if message is not None:
                        return message
                elif isinstance(event, TextMessage):
                    msg = "the server sent a text message; LBRU travels in binary messages"
                    raise RemoteProtocolError(msg)
                elif isinstance(event, WsPing):
                    self._sendall(self._ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    if self._ws.state is ConnectionState.REMOTE_CLOSING:
                        with contextlib.suppress(LibrorumError):
                            self._sendall(self._ws.send(event.response()))
                    return b""
            data = self._recv()
            if not data:
                return b""  # closed without a close frame: the session reports the end
            try:
                self._ws.receive_data(data)
            except wsproto.utilities.RemoteProtocolError as exc:
                msg = f"{self._url} broke the WebSocket protocol: {exc}"
                raise ConnectionClosed(msg) from exc

    def _collect(self, event: BytesMessage) -> bytes | bytearray | None:
        self._size += len(event.data)
        if self._size > self._max_message_size:
            msg = f"{self._url} sent a message over {self._max_message_size} bytes"
            raise RemoteProtocolError(msg)
        if not event.message_finished:
            self._parts.append(event.data)
            return None
        data: bytes | bytearray = event.data
        if self._parts:
            self._parts.append(data)
            data = b"".join(self._parts)
            self._parts = []
        self._size = 0
        return data

    def close(self) -> None:
        try:
            if self._ws.state is ConnectionState.OPEN:
                self._sock.settimeout(min(self._timeout, 1.0))
                self._sock.sendall(self._ws.send(CloseConnection(code=1000)))
        except (OSError, wsproto.utilities.LocalProtocolError):
            pass  # closing anyway
        finally:
            self._sock.close()


_Transport = _UdsSocket | _WebSocket


# --- One connection ----------------------------------------------------------------------------


class _SyncConnection:
    def __init__(
        self, transport: _Transport, endpoint: Endpoint, *, read_window: int, features: int = 0
    ) -> None:
        self.transport = transport
        self.endpoint = endpoint
        self.read_window = read_window
        #: Feature bits offered in HELLO (spec 4.3); the negotiated ones are the session's.
        self.features = features
        self.session = ClientSession()
        self.requests: dict[int, RequestState] = {}
        self.error: LibrorumError | None = None
        self.send_error: LibrorumError | None = None
        self.draining = False
        self.server: HelloReply | None = None

    @property
    def usable(self) -> bool:
        return (
            self.error is None
            and self.send_error is None
            and not self.draining
            and self.session.state is State.OPEN
        )

    def handshake(self) -> None:
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
        while True:
            event = session.next_event()
            if event is None:
                session.receive_data(self.transport.receive_some())
            elif isinstance(event, HelloAccepted):
                self.server = event.reply
                return
            elif isinstance(event, ConnectionEnded):
                if event.error is not None:
                    raise event.error
                msg = f"{self.endpoint} closed the connection during the handshake"
                raise ConnectionClosed(msg)

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

    def flush(self, fd: int | None = None) -> None:
        """Send what the session queued; with ``fd``, the last frame queued goes alone with
        that descriptor attached (spec 8.1). If the send fails, the connection ends: what the
        server sent before is routed first, then the requests still in flight get the error.

        Raises:
            ConnectionClosed: the connection had already ended.
            ConnectionTimeoutError: the send took longer than the timeout (a frame may have
                been cut in half, so the connection is closed).
        """
        frames = self.session.frames_to_send()
        if not frames or self.send_error is not None:
            return
        if self.error is not None:
            raise copy_error(self.error)
        try:
            if fd is None:
                self.transport.send_frames(frames)
            else:
                if len(frames) > 1:
                    self.transport.send_frames(frames[:-1])
                # Features are negotiated on Unix sockets only, so this is one.
                assert isinstance(self.transport, _UdsSocket)
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

    def wait(self, request: RequestState, ready: Callable[[], bool]) -> None:
        """Receive until ``ready()`` or the request finished."""
        while not (ready() or request.finished):
            self.pump()

    def abandon(self, request: RequestState) -> None:
        """Stop tracking a request still in flight and ask the server to cancel it (best
        effort, without waiting: its CANCEL reply is discarded like the rest)."""
        if self.requests.pop(request.session_id, None) is None or self.error is not None:
            return
        self.session.forget(request.session_id)
        if not self.usable:
            return
        with contextlib.suppress(LibrorumError):
            cancel_id = self.session.start_request(Cancel(request.session_id))
            self.session.forget(cancel_id)
            self.flush()

    def die(self, exc: LibrorumError) -> None:
        if self.error is not None:
            return
        self.error = exc
        endpoint = str(self.endpoint)
        for request in self.requests.values():
            request.on_error(lost(exc, request.command, endpoint))
        self.requests.clear()
        self.transport.close()

    def close(self) -> None:
        self.die(ConnectionClosed("the client was closed"))


def _refused_by_goaway(request: RequestState, conn: _SyncConnection) -> bool:
    """Whether the server refused ``request`` because it is draining: it had no effect and
    may be sent again on a new connection (spec 5.15)."""
    return isinstance(request.error, UnavailableError) and conn.draining


class _RefusedByGoAway(Exception):  # noqa: N818 - an internal signal, never escapes
    def __init__(self, error: LibrorumError) -> None:
        super().__init__(str(error))
        self.error = error


# --- Streams -----------------------------------------------------------------------------------


class SyncReadStream:
    """The content of a file, streamed: a context manager and, once entered, an iterator of
    chunks (buffers the caller owns). Leaving the block early cancels the READ on the server.

    Attributes (once entered):
        info: the file's :class:`FileInfo`.
        offset: where the content starts.
        length: how many bytes follow.
    """

    def __init__(
        self,
        client: SyncClient,
        path: str,
        *,
        offset: int,
        length: int | None,
        progress: ProgressCallback | None,
    ) -> None:
        self._client = client
        self._message = FileRead(path, offset, length)
        self._progress = progress
        self._stack: ExitStack | None = None
        self._request: RequestState | None = None
        self._conn: _SyncConnection | None = None
        self._received = 0
        self._ungranted = 0
        self.info: FileInfo | None = None
        self.offset = offset
        self.length = 0

    def __enter__(self) -> Self:
        """Start the READ and wait for its first reply.

        Raises:
            LibrorumError: the server's error, ConnectionClosed, ConnectionTimeoutError.
        """
        for attempt in range(1, ROUTE_ATTEMPTS + 1):
            with ExitStack() as stack:
                conn, request = stack.enter_context(self._client._request(self._message))
                conn.wait(request, lambda: request.reply is not None)  # noqa: B023 - used at once
                if attempt < ROUTE_ATTEMPTS and _refused_by_goaway(request, conn):
                    continue
                reply = request.result_of(FileReadReply)
                self.info, self.offset, self.length = reply.info, reply.offset, reply.length
                self._conn, self._request = conn, request
                self._stack = stack.pop_all()
                return self
        raise AssertionError("unreachable: the last attempt returns or raises")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        stack, self._stack = self._stack, None
        if stack is None:
            return None
        return stack.__exit__(exc_type, exc, tb)

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> Chunk:
        chunk = self.receive_some()
        if not chunk:
            raise StopIteration
        return chunk

    def receive_some(self) -> Chunk:
        """The next chunk, or ``b""`` once all ``length`` bytes were returned.

        Raises:
            LibrorumError: the server's error in mid-stream (the chunks returned before it
                are incomplete and must be discarded), ConnectionClosed,
                ConnectionTimeoutError.
            RemoteProtocolError: the stream ended short of ``length``.
        """
        request, conn = self._request, self._conn
        if request is None or conn is None:
            msg = "use the read stream inside `with`"
            raise RuntimeError(msg)
        conn.wait(request, lambda: bool(request.chunks))
        if request.error is not None:
            request.chunks.clear()  # spec 5.11: a failed READ's data is discarded
            raise request.error
        chunk = request.take_chunk()
        if chunk is None:
            if self._received != self.length:
                msg = f"READ announced {self.length} bytes but {self._received} arrived"
                raise RemoteProtocolError(msg)
            return b""
        self._received += len(chunk)
        self._ungranted += len(chunk)
        if self._ungranted >= max(1, conn.read_window // 2) and not request.data_ended:
            conn.session.grant(request.session_id, self._ungranted)
            self._ungranted = 0
            conn.flush()
        if self._progress is not None:
            self._progress(self._received, self.length)
        return chunk


# --- The client --------------------------------------------------------------------------------


class _SyncRequest(RequestState):
    __slots__ = ()

    def result_of(self, cls: type[M]) -> M:
        if self.error is not None:
            raise self.error
        return expect(self.reply, cls)


class SyncClient:
    """A blocking connection (or, across reconnects, a series of them) to a Librorum daemon.
    Get one from :func:`connect`. Not thread-safe; requests are sequential.

    Every method may raise, besides what it lists: the exception class of the server's ERROR
    code; :class:`~librorum.errors.ConnectionClosed` when the connection dropped with the
    request in flight (its outcome is unknown) or no connection could be made;
    :class:`~librorum.errors.ConnectionTimeoutError` when nothing arrived within ``timeout``
    (the request is then cancelled on the server).
    """

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        reconnect: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        read_window: int = DEFAULT_READ_WINDOW,
        resume_attempts: int = DEFAULT_RESUME_ATTEMPTS,
        reconnect_attempts: int = RECONNECT_ATTEMPTS,
        reconnect_deadline: float = RECONNECT_DEADLINE,
        pass_fds: bool = True,
    ) -> None:
        self._endpoints = tuple(endpoints)
        self._features = int(Feature.FD_PASSING | Feature.MEMFD) if pass_fds else 0
        self._reconnect_attempts = reconnect_attempts
        self._reconnect_deadline = reconnect_deadline
        self._reconnect = reconnect
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._read_window = read_window
        self._resume_attempts = resume_attempts
        self._conn: _SyncConnection | None = None
        self._busy = False
        self._closed = False

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection. Idempotent."""
        self._closed = True
        if self._conn is not None:
            self._conn.close()

    @property
    def endpoint(self) -> Endpoint | None:
        """Where the current connection goes."""
        return None if self._conn is None else self._conn.endpoint

    @property
    def server(self) -> HelloReply | None:
        """The HELLO reply of the current connection."""
        return None if self._conn is None else self._conn.server

    # Connections -------------------------------------------------------------------------------

    def _connection(self) -> _SyncConnection:
        conn = self._conn
        if conn is not None and conn.usable:
            return conn
        if self._closed:
            msg = "the client is closed"
            raise ConnectionClosed(msg)
        if conn is not None and conn.error is None:
            # GOAWAY: one immediate attempt, no backoff (the server said it is going away).
            conn.close()
            if not self._reconnect:
                msg = f"{conn.endpoint} is going away, and reconnect is off"
                raise UnavailableError(msg)
            try:
                self._conn = self._connect(attempts=1)
            except ConnectionClosed as exc:
                msg = f"{conn.endpoint} is going away, and no new connection could be made"
                raise UnavailableError(msg) from exc
            return self._conn
        if conn is not None and not self._reconnect:
            msg = f"connection to {conn.endpoint} is closed ({conn.error}) and reconnect is off"
            raise ConnectionClosed(msg)
        self._conn = self._connect(attempts=1 if conn is None else self._reconnect_attempts)
        return self._conn

    def _connect(self, *, attempts: int) -> _SyncConnection:
        """Connect, retrying with backoff (``time.sleep`` between attempts).

        Raises:
            UnauthorizedError: the server refused the credentials (never retried).
            ConnectionClosed: every attempt failed.
        """
        deadline = time.monotonic() + self._reconnect_deadline
        last: LibrorumError | None = None
        for delay in backoff_delays(attempts=attempts):
            if time.monotonic() + delay > deadline:
                break
            time.sleep(delay)
            try:
                return self._connect_once()
            except UnauthorizedError:
                raise
            except (TransportError, ServerError) as exc:
                last = exc
        where = ", ".join(map(str, self._endpoints))
        # The last error names its endpoint already; only a deadline needs saying where.
        msg = str(last) if last is not None else f"cannot connect to {where}: deadline passed"
        raise ConnectionClosed(msg) from last

    def _connect_once(self) -> _SyncConnection:
        failures: list[str] = []
        last: LibrorumError | None = None
        refused: UnauthorizedError | None = None
        for endpoint in self._endpoints:
            try:
                return self._open_connection(endpoint)
            except UnauthorizedError as exc:
                refused = refused or exc
                failures.append(str(exc))  # names its endpoint already
            except (TransportError, ServerError) as exc:
                failures.append(str(exc))  # names its endpoint already
                last = exc
        if refused is not None:
            raise refused
        raise ConnectionClosed("; ".join(failures)) from last

    def _open_connection(self, endpoint: Endpoint) -> _SyncConnection:
        transport: _Transport
        if isinstance(endpoint, LocalEndpoint):
            transport = _UdsSocket(endpoint.path, timeout=self._connect_timeout)
        else:
            assert isinstance(endpoint, RemoteEndpoint)
            transport = _WebSocket(
                endpoint.url,
                token=endpoint.token,
                ssl_context=endpoint.ssl_context,
                timeout=self._connect_timeout,
            )
        conn = _SyncConnection(
            transport,
            endpoint,
            read_window=self._read_window,
            # Only a Unix socket can carry descriptors (spec 8).
            features=self._features if isinstance(transport, _UdsSocket) else 0,
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
        # Each handshake step was bounded by the connect timeout; from now on each operation
        # gets `timeout`.
        transport.set_timeout(self._timeout)
        return conn

    # Request plumbing --------------------------------------------------------------------------

    @contextmanager
    def _request(
        self, message: Message, *, end: bool = True, fd: int | None = None
    ) -> Iterator[tuple[_SyncConnection, _SyncRequest]]:
        """A request in flight for the duration of the block. Leaving the block before it
        finished cancels it on the server; an interruption that is not an ``Exception``
        (KeyboardInterrupt) closes the connection instead, since it may have cut a frame."""
        if self._busy:
            msg = "a read stream is open: SyncClient runs one request at a time"
            raise RuntimeError(msg)
        conn = self._connection()
        session_id = conn.session.start_request(message, end=end, fd=fd is not None)
        request = _SyncRequest(session_id, command_of(message)[0])
        conn.requests[session_id] = request
        self._busy = True
        try:
            conn.flush(fd)
            yield conn, request
        except Exception:
            conn.abandon(request)
            raise
        except BaseException:
            conn.die(ConnectionClosed("interrupted in the middle of a request"))
            raise
        finally:
            self._busy = False
            conn.abandon(request)  # a no-op once the request finished

    def _unary(self, message: Message, reply_type: type[M]) -> M:
        for attempt in range(1, ROUTE_ATTEMPTS + 1):
            with self._request(message) as (conn, request):
                conn.wait(request, lambda: request.finished)
                if attempt < ROUTE_ATTEMPTS and _refused_by_goaway(request, conn):
                    continue
                return request.result_of(reply_type)
        raise AssertionError("unreachable: the last attempt returns or raises")

    # Namespace ---------------------------------------------------------------------------------

    def ping(self) -> float:
        """Round trip to the server, in seconds."""
        data = secrets.token_bytes(8)
        start = time.monotonic()
        reply = self._unary(Ping(data), PingReply)
        elapsed = time.monotonic() - start
        if reply.data != data:
            msg = "PING reply does not echo the PING's data"
            raise RemoteProtocolError(msg)
        return elapsed

    def stat(self, path: str) -> FileInfo:
        """Describe the file or directory at ``path``.

        Raises:
            NotFoundError: nothing is there.
        """
        return self._unary(FileStat(path), FileStatReply).info

    def iter_list(self, path: str, *, page_size: int = DEFAULT_LIST_LIMIT) -> Iterator[DirEntry]:
        """The entries of directory ``path``, sorted by name, fetched page by page.

        Raises (while iterating):
            NotFoundError, NotADirectoryError_: ``path`` is missing or not a directory.
        """
        cursor: str | None = None
        while True:
            page = self._unary(FileList(path, cursor, page_size), FileListReply)
            if page.next_cursor is not None and page.next_cursor == cursor:
                msg = f"LIST of {path} returned the same cursor twice"
                raise RemoteProtocolError(msg)
            yield from page.entries
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def list(self, path: str, *, page_size: int = DEFAULT_LIST_LIMIT) -> list[DirEntry]:
        """Every entry of directory ``path``, sorted by name (all pages)."""
        return list(self.iter_list(path, page_size=page_size))

    def mkdir(self, path: str, *, parents: bool = False) -> FileInfo:
        """Create directory ``path`` (and missing parents, with ``parents``).

        Raises:
            AlreadyExistsError, NotFoundError: see the async client.
        """
        return self._unary(MakeDirectory(path, parents), MakeDirectoryReply).info

    def delete(self, path: str, *, recursive: bool = False) -> int:
        """Delete a file, an empty directory, or with ``recursive`` a tree; returns the
        number of entries removed.

        Raises:
            NotFoundError, NotEmptyError.
        """
        return self._unary(Delete(path, recursive), DeleteReply).removed

    def rename(self, src: str, dst: str, *, overwrite: bool = False) -> FileInfo:
        """Move ``src`` to ``dst`` atomically; returns the entry at its new path.

        Raises:
            NotFoundError, AlreadyExistsError.
        """
        return self._unary(Rename(src, dst, overwrite), RenameReply).info

    def status(self) -> NodeStatusReply:
        """The node's health and figures."""
        return self._unary(NodeStatus(), NodeStatusReply)

    def upload_status(self, upload_id: str) -> UploadStatusReply:
        """How much of resumable upload ``upload_id`` the server has committed.

        Raises:
            NotFoundError: no such upload.
        """
        return self._unary(UploadStatus(upload_id), UploadStatusReply)

    # Writing -----------------------------------------------------------------------------------

    def write(
        self,
        path: str,
        data: SyncWriteData,
        *,
        mode: WriteMode = WriteMode.CREATE,
        size: int | None = None,
        resumable: bool = False,
        progress: ProgressCallback | None = None,
    ) -> FileInfo:
        """Store ``data`` (bytes-like, a :class:`pathlib.Path` of a local file, or an
        iterable of byte strings) as the file at ``path``. The arguments and errors are
        those of :meth:`librorum.client.Client.write`.
        """
        source = open_sync_source(data, size)
        upload_id = secrets.token_urlsafe(16) if resumable else None
        try:
            offset = 0
            resumes = 0
            reroutes = 0
            conflict_delays = backoff_delays()
            while True:
                try:
                    return self._write_once(path, source, mode, upload_id, offset, progress)
                except _RefusedByGoAway as refused:
                    reroutes += 1
                    if not source.seekable or reroutes >= ROUTE_ATTEMPTS:
                        raise refused.error from None
                except ConnectionClosed:
                    resumes += 1
                    if upload_id is None or not source.seekable:
                        raise
                    if resumes > self._resume_attempts:
                        raise
                    offset = self._committed(upload_id)
                except ConflictError:
                    # The upload may still be attached to the stream that broke, until the
                    # server notices the disconnect (spec 5.10): ask again after a pause.
                    if upload_id is None or resumes == 0:
                        raise
                    delay = next(conflict_delays, None)
                    if delay is None:
                        raise
                    time.sleep(delay or RECONNECT_INITIAL_DELAY)
                    offset = self._committed(upload_id)
                source.seek(offset)
        finally:
            source.close()

    def _committed(self, upload_id: str) -> int:
        delays = backoff_delays()
        while True:
            try:
                return self.upload_status(upload_id).offset
            except NotFoundError:
                return 0
            except ConflictError:
                delay = next(delays, None)
                if delay is None:
                    raise
                time.sleep(delay or RECONNECT_INITIAL_DELAY)

    def _write_once(
        self,
        path: str,
        source: SyncSource,
        mode: WriteMode,
        upload_id: str | None,
        offset: int,
        progress: ProgressCallback | None,
    ) -> FileInfo:
        total = source.size
        no_data = total is not None and offset >= total
        message = FileWrite(path, mode, total, upload_id, offset)
        fd = None
        if upload_id is None and not no_data:
            # Spec 8: a local file's descriptor, when the connection negotiated it and the
            # file is large enough to be worth it.
            fd = source.descriptor(self._connection().session.features)
        info = self._write_request(message, source, fd, offset, progress)
        if fd is not None and progress is not None:
            progress(info.size, info.size)
        return info

    def _write_request(
        self,
        message: FileWrite,
        source: SyncSource,
        fd: int | None,
        offset: int,
        progress: ProgressCallback | None,
    ) -> FileInfo:
        total = message.size
        no_data = fd is not None or (total is not None and offset >= total)
        with self._request(message, end=no_data, fd=fd) as (conn, request):
            if not no_data:
                self._send_content(conn, request, source, offset, total, progress)
            conn.wait(request, lambda: request.finished)
            if _refused_by_goaway(request, conn):
                assert request.error is not None
                raise _RefusedByGoAway(request.error)
            return request.result_of(FileWriteReply).info

    @staticmethod
    def _send_content(
        conn: _SyncConnection,
        request: RequestState,
        source: SyncSource,
        done: int,
        total: int | None,
        progress: ProgressCallback | None,
    ) -> None:
        session = conn.session
        session_id = request.session_id
        while True:
            conn.wait(request, lambda: session.send_window(session_id) > 0)
            if request.finished:
                return  # an early ERROR: stop sending
            room = min(session.send_window(session_id), session.max_payload)
            if total is not None:
                room = min(room, total - done)
            chunk = source.read(room)
            done += len(chunk)
            last = not chunk or (total is not None and done >= total)
            session.send_data(session_id, chunk, end=last)
            conn.flush()
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
    ) -> SyncReadStream:
        """Stream the content of ``path``::

            with client.open_read("/big") as stream:
                for chunk in stream:
                    ...

        No other request may start on this client while the stream is open.
        """
        return SyncReadStream(self, path, offset=offset, length=length, progress=progress)

    def read(self, path: str, *, offset: int = 0, length: int | None = None) -> bytes:
        """The content of ``path`` from ``offset``, ``length`` bytes or to the end."""
        with self.open_read(path, offset=offset, length=length) as stream:
            chunks = list(stream)
        return b"".join(chunks)

    def read_to_file(
        self,
        path: str,
        local_path: str | os.PathLike[str],
        *,
        progress: ProgressCallback | None = None,
    ) -> FileInfo:
        """Download ``path`` into ``local_path`` through a temporary file that replaces it
        only once complete.

        Raises:
            OSError: the local file cannot be written.
        """
        target = Path(local_path)
        partial = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
        try:
            with self.open_read(path, progress=progress) as stream, open(partial, "wb") as out:
                for chunk in stream:
                    out.write(chunk)
                info = stream.info
            os.replace(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        assert info is not None
        return info


def connect(
    target: str | Path | None = None,
    *,
    transport: TransportChoice = "auto",
    socket_path: str | os.PathLike[str] | None = None,
    url: str | None = None,
    token: str | None = None,
    token_file: str | os.PathLike[str] | None = None,
    reconnect: bool = True,
    ssl_context: ssl.SSLContext | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    read_window: int = DEFAULT_READ_WINDOW,
    resume_attempts: int = DEFAULT_RESUME_ATTEMPTS,
    reconnect_attempts: int = RECONNECT_ATTEMPTS,
    reconnect_deadline: float = RECONNECT_DEADLINE,
    pass_fds: bool = True,
) -> SyncClient:
    """Connect to a Librorum daemon with a blocking client (a context manager; or call
    :meth:`SyncClient.close`). The arguments are those of :func:`librorum.client.open_client`.

    Raises:
        ConnectionClosed: no daemon answered at any endpoint.
        UnauthorizedError: the daemon refused the token, or the local socket is not ours.
        ValueError: contradictory arguments.
    """
    endpoints = resolve_endpoints(
        target,
        transport=transport,
        socket_path=socket_path,
        url=url,
        token=token,
        token_file=token_file,
        ssl_context=ssl_context,
    )
    client = SyncClient(
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
        client._connection()
    except BaseException:
        client.close()
        raise
    return client
