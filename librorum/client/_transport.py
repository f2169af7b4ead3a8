"""The client's frame transports on trio: a Unix socket and a WebSocket.

XX TODO(#4): a private stand-in for ``librorum.transport`` (``connect_uds``,
``connect_websocket``), written against the same interface so that switching is one import:
``send_frames`` takes exactly what ``ClientSession.frames_to_send()`` returns,
``receive_some`` returns received bytes (``b""`` at end of stream; one message per call on a
WebSocket). Delete this module when the shared transports land.

Errors: every failure of the connection below LBRU surfaces as
:class:`~librorum.errors.ConnectionClosed` with the trio or OS exception as ``__cause__``; a
WebSocket handshake answered with 401/403 is :class:`~librorum.errors.UnauthorizedError`.
"""

from __future__ import annotations

import socket as stdlib_socket
import ssl
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Final, Protocol

import trio
import trio_websocket

from librorum.client._common import RECEIVE_SIZE, SOCKET_BUFFER_SIZE
from librorum.errors import ConnectionClosed, RemoteProtocolError, UnauthorizedError
from librorum.protocol.constants import DEFAULT_MAX_PAYLOAD, HEADER_SIZE
from librorum.protocol.framing import Payload

#: Buffers per sendmsg call: Linux's IOV_MAX.
IOV_MAX: Final = 1024
#: Largest WebSocket message accepted: one maximal frame.
WS_MAX_MESSAGE: Final = HEADER_SIZE + DEFAULT_MAX_PAYLOAD
#: Messages trio-websocket may queue ahead of the reader: one is being handled, one waits.
WS_MESSAGE_QUEUE: Final = 1
#: HTTP statuses that mean the token was refused.
_UNAUTHORIZED: Final = frozenset({401, 403})


class FrameTransport(Protocol):
    """What the async client needs from a connection."""

    @property
    def message_framed(self) -> bool:
        """True when each received message is exactly one frame (WebSocket)."""
        ...

    async def send_frames(self, frames: Sequence[Sequence[Payload]]) -> None:
        """Send whole frames, in order. Not safe to cancel: the caller shields it."""
        ...

    async def receive_some(self, max_bytes: int = RECEIVE_SIZE) -> Payload:
        """Bytes from the peer, ``b""`` at end of stream. The result is valid until the next
        call (it may be a view of a reused buffer)."""
        ...

    async def aclose(self) -> None:
        """Close the connection; idempotent."""
        ...


@contextmanager
def _translate(what: str) -> Iterator[None]:
    try:
        yield
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        msg = f"{what}: {exc or type(exc).__name__}"
        raise ConnectionClosed(msg) from exc
    except trio_websocket.ConnectionClosed as exc:
        msg = f"{what}: WebSocket closed ({exc.reason})"
        raise ConnectionClosed(msg) from exc


class UdsTransport:
    """LBRU over a connected Unix stream socket: vectored sends, receives into one reused
    buffer."""

    message_framed = False

    def __init__(self, sock: trio.socket.SocketType, *, receive_size: int = RECEIVE_SIZE) -> None:
        self._sock = sock
        self._buffer = memoryview(bytearray(receive_size))

    async def send_frames(self, frames: Sequence[Sequence[Payload]]) -> None:
        parts = [part for frame in frames for part in frame if len(part)]
        with _translate("send on the Unix socket failed"):
            while parts:
                batch = parts[:IOV_MAX]
                sent = await self._sock.sendmsg(batch)
                # Drop what went out; a partial send leaves the tail of one part.
                done = 0
                while done < len(batch) and sent >= len(batch[done]):
                    sent -= len(batch[done])
                    done += 1
                del parts[:done]
                if sent:
                    parts[0] = memoryview(parts[0])[sent:]

    async def receive_some(self, max_bytes: int = RECEIVE_SIZE) -> Payload:
        view = self._buffer[: min(max_bytes, len(self._buffer))]
        with _translate("receive on the Unix socket failed"):
            n = await self._sock.recv_into(view)
        return view[:n]

    async def aclose(self) -> None:
        self._sock.close()
        await trio.lowlevel.checkpoint()


class WebSocketTransport:
    """LBRU over trio-websocket: one binary message per frame."""

    message_framed = True

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self._ws = ws

    async def send_frames(self, frames: Sequence[Sequence[Payload]]) -> None:
        with _translate("send on the WebSocket failed"):
            for frame in frames:
                await self._ws.send_message(b"".join(frame))

    async def receive_some(self, max_bytes: int = RECEIVE_SIZE) -> Payload:
        del max_bytes  # one message per call, whatever its size (bounded by WS_MAX_MESSAGE)
        try:
            with _translate("receive on the WebSocket failed"):
                message = await self._ws.get_message()
        except ConnectionClosed as exc:
            if isinstance(exc.__cause__, trio_websocket.ConnectionClosed):
                reason = exc.__cause__.reason
                if reason is not None and reason.code == 1000:
                    return b""  # a clean close is the end of the stream
            raise
        if isinstance(message, str):
            msg = "the server sent a text message; LBRU travels in binary messages"
            raise RemoteProtocolError(msg)
        return message

    async def aclose(self) -> None:
        await self._ws.aclose()


async def connect_uds(
    path: Path, *, buffer_size: int = SOCKET_BUFFER_SIZE, receive_size: int = RECEIVE_SIZE
) -> UdsTransport:
    """Connect to the daemon's Unix socket.

    Raises:
        ConnectionClosed: nothing listens there (the OS error is the cause).
    """
    sock = trio.socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    try:
        sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_SNDBUF, buffer_size)
        sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_RCVBUF, buffer_size)
        with _translate(f"cannot connect to unix:{path}"):
            await sock.connect(str(path))
    except BaseException:
        sock.close()
        raise
    return UdsTransport(sock, receive_size=receive_size)


async def connect_websocket(
    nursery: trio.Nursery,
    url: str,
    *,
    token: str | None,
    ssl_context: ssl.SSLContext | None = None,
    max_message_size: int = WS_MAX_MESSAGE,
    receive_size: int = RECEIVE_SIZE,
) -> WebSocketTransport:
    """Open a WebSocket to ``url``, sending ``Authorization: Bearer <token>``. The
    connection's background task runs in ``nursery``.

    Raises:
        UnauthorizedError: the server refused the token (HTTP 401 or 403).
        ConnectionClosed: the connection or the handshake failed.
    """
    headers = [(b"authorization", b"Bearer " + token.encode())] if token else []
    try:
        with _translate(f"cannot connect to {url}"):
            ws = await trio_websocket.connect_websocket_url(
                nursery,
                url,
                ssl_context,
                extra_headers=headers,
                message_queue_size=WS_MESSAGE_QUEUE,
                max_message_size=max_message_size,
                # trio-websocket's 4 KiB default halves download throughput.
                receive_buffer_size=receive_size,
            )
    except trio_websocket.ConnectionRejected as exc:
        if exc.status_code in _UNAUTHORIZED:
            msg = f"{url} refused the token (HTTP {exc.status_code})"
            raise UnauthorizedError(msg) from exc
        msg = f"{url} refused the WebSocket handshake (HTTP {exc.status_code})"
        raise ConnectionClosed(msg) from exc
    except trio_websocket.HandshakeError as exc:
        msg = f"WebSocket handshake with {url} failed: {exc!r}"
        raise ConnectionClosed(msg) from exc
    return WebSocketTransport(ws)
