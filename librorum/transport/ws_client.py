"""LBRU over WebSocket, the connectors: :func:`connect_websocket` (trio) and
:func:`connect_ws_blocking` (a blocking socket), both driving one sans-I/O handshake,
:class:`WsClientHandshake`, so that both report a refusal alike.

:func:`connect_websocket` is a plain ``await`` that raises
:class:`~librorum.errors.UnauthorizedError` on a 401 (trio-websocket's client needs a
background reader task in a caller's nursery, and reports a refused handshake by crashing it).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import urllib.parse
from collections.abc import Iterator, Sequence
from typing import Final, NoReturn

import attrs
import trio
import wsproto
import wsproto.utilities
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from librorum.config import ConfigError
from librorum.errors import (
    ConnectionClosed,
    ConnectionLimitError,
    ConnectionTimeoutError,
    LibrorumError,
    LocalProtocolError,
    RemoteProtocolError,
    UnauthorizedError,
)
from librorum.limits import (
    CLOSE_GRACE,
    HANDSHAKE_TIMEOUT,
    RECEIVE_SIZE,
    WS_MAX_REJECT_BODY,
    WS_RECEIVE_BUFFER,
)
from librorum.protocol.constants import WS_MAX_MESSAGE_SIZE
from librorum.transport._wsframes import accelerate
from librorum.transport.base import (
    Buffer,
    FrameParts,
    PeerInfo,
    blocking_socket_errors,
)
from librorum.transport.websocket import WebSocketConnection, WsTransport, as_bytes, socket_of


@attrs.frozen
class WsTarget:
    """Where a ``ws://`` or ``wss://`` URL points."""

    url: str
    secure: bool
    host: str
    port: int
    #: The Host header: the host (bracketed if IPv6), with the port unless it is the default.
    host_header: str
    #: The request target: the path and the query.
    resource: str


def parse_ws_url(url: str) -> WsTarget:
    """Parse ``url`` (``ws://host:port[/path]`` or ``wss://...``).

    Raises:
        ConfigError: it is not a ws:// or wss:// URL with a host, or its port is invalid.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        msg = f"not a WebSocket URL: {url!r} (expected ws://HOST:PORT or wss://HOST:PORT)"
        raise ConfigError(msg)
    secure = parts.scheme == "wss"
    host = parts.hostname
    default_port = 443 if secure else 80
    try:
        port = parts.port or default_port
    except ValueError as exc:
        msg = f"invalid port in {url!r}"
        raise ConfigError(msg) from exc
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = f"[{host}]" if ":" in host else host
    if port != default_port:
        host_header = f"{host_header}:{port}"
    return WsTarget(url, secure, host, port, host_header, resource)


class WsClientHandshake:
    """The client's side of the HTTP upgrade, sans I/O: :meth:`request` gives the bytes to
    send, :meth:`receive_data` takes what the server answers until it accepts or refuses.
    Both connectors drive this one, so a refusal means the same error in both.

    The token travels in an ``Authorization: Bearer`` header, never in the URL.
    """

    def __init__(self, target: WsTarget, *, token: str | None) -> None:
        self.target = target
        self._token = token
        #: The connection, which carries the messages once the server accepted.
        self.connection = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self._status = 0
        self._body = bytearray()

    def request(self) -> bytes:
        """The upgrade request to send first."""
        token = self._token
        headers = [] if token is None else [(b"authorization", b"Bearer " + token.encode())]
        target = self.target
        return self.connection.send(
            Request(host=target.host_header, target=target.resource, extra_headers=headers)
        )

    def receive_data(self, data: bytes) -> bool:
        """Take bytes from the server (``b""``: it closed). True once it accepted; frames
        that came with its answer stay queued in :attr:`connection`.

        Raises:
            UnauthorizedError: the server refused the token (401) or the origin (403), or
                makes this address wait after too many failed attempts (429).
            ConnectionLimitError: the server refused for load (503).
            ConnectionClosed: the server refused otherwise, closed before answering, or is
                not a WebSocket server.
        """
        url = self.target.url
        if not data:
            # Checked before wsproto sees the EOF: h11 would call it a "Bad HTTP message",
            # when the server simply hung up (a connection cap, a dropped handshake), or
            # ended a refusal's body by closing.
            if self._status:
                self._refused()
            msg = f"{url} closed the connection during the WebSocket handshake"
            raise ConnectionClosed(msg)
        try:
            self.connection.receive_data(data)
            events = list(self.connection.events())
        except wsproto.utilities.RemoteProtocolError as exc:
            msg = f"{url} is not a WebSocket server: {exc}"
            raise ConnectionClosed(msg) from exc
        for event in events:
            if isinstance(event, AcceptConnection):
                return True
            if isinstance(event, RejectConnection):
                self._status = event.status_code
                if not event.has_body:
                    self._refused()
            elif isinstance(event, RejectData):
                body = self._body
                body += event.data[: WS_MAX_REJECT_BODY - len(body)]
                if event.body_finished or len(body) >= WS_MAX_REJECT_BODY:
                    self._refused()
        return False

    def _refused(self) -> NoReturn:
        status = self._status
        reason = self._body.decode("utf-8", "replace").strip() or "no reason given"
        msg = f"{self.target.url} refused the connection (HTTP {status}): {reason}"
        # 429: this address failed authentication too often and must wait (Retry-After).
        if status in (401, 403, 429):
            raise UnauthorizedError(msg)
        if status == 503:
            raise ConnectionLimitError(msg)
        raise ConnectionClosed(msg)


# --- The trio connector ------------------------------------------------------------------------


async def connect_websocket(
    url: str,
    *,
    token: str | None,
    ssl_context: ssl.SSLContext | None = None,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    close_grace: float = CLOSE_GRACE,
    max_message_size: int = WS_MAX_MESSAGE_SIZE,
    receive_size: int = WS_RECEIVE_BUFFER,
) -> WsTransport:
    """Connect to a daemon at ``url`` (``ws://host:port[/path]`` or ``wss://...``).

    The token travels in an ``Authorization: Bearer`` header, never in the URL. ``wss://``
    without ``ssl_context`` verifies the server against the system's CA store.

    No background task is started: the returned transport reads from the network only inside
    :meth:`WsTransport.receive_some`, which also answers the server's pings. Keep a task
    receiving, or the server's keepalive closes the connection.

    Cancellation: nothing is left open.

    Raises:
        UnauthorizedError: the server refused the token (401) or the origin (403), or makes
            this address wait after too many failed attempts (429).
        ConnectionLimitError: the server refused for load (503).
        ConnectionTimeoutError: the handshake took longer than ``handshake_timeout``.
        ConnectionClosed: the server cannot be reached, refused otherwise, or is not a
            WebSocket server; the underlying error is the ``__cause__``.
        ConfigError: ``url`` is not a ws:// or wss:// URL.
    """
    target = parse_ws_url(url)
    if not target.secure and ssl_context is not None:
        msg = f"an SSL context was given for the unencrypted URL {url!r}; use wss://"
        raise ConfigError(msg)
    if target.secure and ssl_context is None:
        ssl_context = ssl.create_default_context()
    handshake = WsClientHandshake(target, token=token)
    host, port = target.host, target.port
    with _connect_errors(url, handshake_timeout):
        with trio.fail_after(handshake_timeout):
            stream: trio.SocketStream | trio.SSLStream[trio.SocketStream]
            if ssl_context is None:
                stream = await trio.open_tcp_stream(host, port)
            else:
                stream = await trio.open_ssl_over_tcp_stream(
                    host, port, ssl_context=ssl_context, https_compatible=True
                )
            try:
                ws = await _client_handshake(stream, handshake, receive_size)
                peer_ip, peer_port = socket_of(stream).getpeername()[:2]
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
    address = f"[{peer_ip}]:{peer_port}" if ":" in peer_ip else f"{peer_ip}:{peer_port}"
    verified = ssl_context is not None and ssl_context.verify_mode == ssl.CERT_REQUIRED
    connection = WebSocketConnection(
        stream,
        ws,
        max_message_size=max_message_size,
        receive_size=receive_size,
        close_grace=close_grace,
    )
    peer = PeerInfo("websocket", address=address, authenticated=verified)
    return WsTransport(connection, peer, close_grace=close_grace)


async def _client_handshake(
    stream: trio.abc.Stream, handshake: WsClientHandshake, receive_size: int
) -> wsproto.WSConnection:
    await stream.send_all(handshake.request())
    while not handshake.receive_data(as_bytes(await stream.receive_some(receive_size))):
        pass
    return handshake.connection


@contextlib.contextmanager
def _connect_errors(url: str, timeout: float) -> Iterator[None]:
    """The translation boundary for connection setup."""
    try:
        yield
    except trio.TooSlowError as exc:
        msg = f"the WebSocket handshake with {url} took longer than {timeout:g} s"
        raise ConnectionTimeoutError(msg) from exc
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc
        msg = f"cannot connect to {url}: {cause or type(exc).__name__}"
        raise ConnectionClosed(msg) from exc


# --- The blocking connector --------------------------------------------------------------------


class BlockingWsTransport:
    """A :class:`~librorum.transport.base.BlockingFrameTransport` over a blocking WebSocket
    client connection (wsproto over a TCP or TLS socket): one binary message per LBRU frame.
    Each call is bounded by the socket's timeout."""

    carries_files: Final = False

    def __init__(
        self,
        sock: socket.socket,
        ws: wsproto.WSConnection,
        url: str,
        *,
        timeout: float,
        max_message_size: int,
        receive_size: int,
    ) -> None:
        self._sock = sock
        self._ws = ws
        self._url = url
        self._timeout = timeout
        self._max_message_size = max_message_size
        self._receive_size = receive_size
        self._parts: list[bytes | bytearray] = []
        self._size = 0
        # Faster payload paths from here on (frames already received are kept): whole
        # messages in one buffer, each read stopping at the end of the frame it is in; None
        # on an unchecked wsproto version (plain wsproto then).
        self._decoder = accelerate(ws, whole_frames_up_to=max_message_size)

    def _sendall(self, data: bytes) -> None:
        with blocking_socket_errors(f"send to {self._url} failed", self._timeout):
            self._sock.sendall(data)

    def _recv(self) -> bytes:
        size = self._receive_size
        if self._decoder is not None:
            size = min(size, self._decoder.missing() or size)
        with blocking_socket_errors(f"receive from {self._url} failed", self._timeout):
            return self._sock.recv(size)

    def set_timeout(self, timeout: float) -> None:
        self._timeout = timeout
        self._sock.settimeout(timeout)

    def send_frames(self, frames: Sequence[FrameParts]) -> None:
        """Send whole frames, one message each.

        Raises:
            ConnectionTimeoutError: a send took longer than the timeout.
            ConnectionClosed: the send failed.
        """
        for frame in frames:
            self._sendall(self._ws.send(BytesMessage(b"".join(frame))))

    def send_fd_frame(self, frame: FrameParts, fd: int) -> None:
        """A WebSocket carries no descriptors (``carries_files`` is False).

        Raises:
            LocalProtocolError: always.
        """
        msg = "a WebSocket cannot carry file descriptors"
        raise LocalProtocolError(msg)

    def receive_some(self) -> Buffer:
        """The next message (one LBRU frame), or ``b""`` once the server closed. Answers
        the server's pings on the way.

        Raises:
            RemoteProtocolError: a text message, or a message over the size limit.
            ConnectionTimeoutError: nothing arrived within the timeout.
            ConnectionClosed: the receive failed, or the server broke the WebSocket protocol.
        """
        while True:
            for event in self._ws.events():
                if isinstance(event, BytesMessage):
                    message = self._collect(event)
                    if message is not None:
                        return message
                elif isinstance(event, TextMessage):
                    msg = "the server sent a text message; LBRU travels in binary messages"
                    raise RemoteProtocolError(msg)
                elif isinstance(event, Ping):
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
        """Send a close frame (if the connection is open) and close the socket."""
        try:
            if self._ws.state is ConnectionState.OPEN:
                self._sock.settimeout(min(self._timeout, 1.0))
                self._sock.sendall(self._ws.send(CloseConnection(code=1000)))
        except (OSError, wsproto.utilities.LocalProtocolError):
            pass  # closing anyway
        finally:
            self._sock.close()


def connect_ws_blocking(
    url: str,
    *,
    token: str | None,
    ssl_context: ssl.SSLContext | None = None,
    timeout: float,
    max_message_size: int = WS_MAX_MESSAGE_SIZE,
    receive_size: int = RECEIVE_SIZE,
) -> BlockingWsTransport:
    """Connect to a daemon at ``url`` with a blocking socket whose every call is bounded by
    ``timeout``, as :func:`connect_websocket` does.

    Raises:
        As :func:`connect_websocket` (a connect or handshake step that takes longer than
        ``timeout`` raises ConnectionTimeoutError).
    """
    target = parse_ws_url(url)
    if not target.secure and ssl_context is not None:
        msg = f"an SSL context was given for the unencrypted URL {url!r}; use wss://"
        raise ConfigError(msg)
    what = f"cannot connect to {url}"
    with blocking_socket_errors(what, timeout):
        sock = socket.create_connection((target.host, target.port), timeout=timeout)
    try:
        if target.secure:
            context = ssl_context or ssl.create_default_context()
            with blocking_socket_errors(what, timeout):
                sock = context.wrap_socket(sock, server_hostname=target.host)
        handshake = WsClientHandshake(target, token=token)
        with blocking_socket_errors(what, timeout):
            sock.sendall(handshake.request())
        while True:
            with blocking_socket_errors(f"receive from {url} failed", timeout):
                data = sock.recv(receive_size)
            if handshake.receive_data(data):
                break
    except BaseException:
        sock.close()
        raise
    return BlockingWsTransport(
        sock,
        handshake.connection,
        url,
        timeout=timeout,
        max_message_size=max_message_size,
        receive_size=receive_size,
    )
