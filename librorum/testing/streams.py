"""A frame transport over any trio byte stream (see :mod:`librorum.testing`)."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import trio

from librorum.errors import ConnectionClosed, LibrorumError, LocalProtocolError
from librorum.limits import RECEIVE_SIZE
from librorum.transport.base import Buffer, FrameParts, PeerInfo

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence


class StreamTransport:
    """A :class:`~librorum.transport.base.FrameTransport` over any :class:`trio.abc.Stream`
    (``trio.testing.memory_stream_pair()``, ``lockstep_stream_pair()``, a socket stream): the
    LBRU byte stream of a Unix socket without the socket, so a real server connection
    (``Server.handle``) or a client session can run in memory, under a mock clock.

    Like a Unix socket it is a byte stream, cut anywhere (``message_framed`` is false); unlike
    one it carries no descriptors, so a server offers it no fd features (spec 8) and reads
    with :meth:`receive_some`. Downloads are sent from buffers (the server's ``sendfile`` path
    is for Unix sockets only).

    Args:
        stream: the stream; the transport owns it from now on (closing it closes the stream).
        kind: the transport kind the server sees. ``"memory"`` by default, which the server
            treats as a remote connection for its limits (the WebSocket idle deadline); pass
            ``"uds"`` to get the Unix socket's deadlines (still without descriptors).
        peer: who the server is told is at the other end; an authenticated peer of ``kind``
            by default.

    Attributes:
        bytes_sent: bytes handed to :meth:`send_frames` so far, counted when the call starts
            (whether or not the stream has taken them yet); with the bytes the other end has
            read, this says how much the sender has queued for a peer that reads slowly.
        bytes_received: bytes returned by :meth:`receive_some` so far.
    """

    message_framed = False
    carries_files = False
    sends_file_regions = False

    def __init__(
        self, stream: trio.abc.Stream, *, kind: str = "memory", peer: PeerInfo | None = None
    ) -> None:
        self._stream = stream
        self._kind = kind
        self._peer = peer if peer is not None else PeerInfo(kind, authenticated=True)
        self._send_lock = trio.StrictFIFOLock()
        self._closed = False
        # Set when a send was interrupted: part of a frame may be on the stream.
        self._broken: str | None = None
        self.bytes_sent = 0
        self.bytes_received = 0

    @property
    def kind(self) -> str:
        return self._kind

    @property
    def peer(self) -> PeerInfo:
        return self._peer

    async def send_frames(self, frames: Sequence[FrameParts]) -> None:
        """Send whole frames, in order, as one write.

        The parts are copied before the first checkpoint, so the caller may reuse its
        buffers as soon as this returns (or is cancelled).

        Cancellation: a cancelled write may have put part of a frame on the stream
        (``Stream.send_all`` does not say how much); the transport is then broken and every
        later send raises ConnectionClosed.

        Raises:
            ConnectionClosed: the peer is gone, the transport is closed, or an earlier send
                was interrupted.
        """
        data = b"".join(part for frame in frames for part in frame)
        self.bytes_sent += len(data)
        async with self._send_lock:
            if self._broken is not None or self._closed:
                msg = f"cannot send: {self._broken or 'the connection was closed'}"
                raise ConnectionClosed(msg)
            if not data:
                await trio.lowlevel.checkpoint()
                return
            completed = False
            try:
                with self._errors("send"):
                    await self._stream.send_all(data)
                completed = True
            finally:
                if not completed:
                    self._broken = "an earlier send was interrupted"

    async def receive_some(self, max_bytes: int = RECEIVE_SIZE) -> Buffer:
        """Up to ``max_bytes`` of the stream; ``b""`` once the peer closed its side.

        Cancellation: nothing is lost.

        Raises:
            ConnectionClosed: the stream broke or was closed locally.
            trio.BusyResourceError: another task is receiving.
        """
        with self._errors("receive"):
            data = await self._stream.receive_some(max_bytes)
        self.bytes_received += len(data)
        return data

    async def send_fd_frame(self, parts: FrameParts, fd: int) -> None:
        """Not supported: the stream carries no descriptors.

        Raises:
            LocalProtocolError: always.
        """
        msg = "a stream transport cannot pass descriptors"
        raise LocalProtocolError(msg)

    async def receive_with_fds(self, max_bytes: int, max_fds: int = 1) -> tuple[bytes, list[int]]:
        """Not supported: the stream carries no descriptors.

        Raises:
            LocalProtocolError: always.
        """
        msg = "a stream transport cannot receive descriptors"
        raise LocalProtocolError(msg)

    async def aclose(self, *, error: LibrorumError | None = None) -> None:
        """Close the stream; idempotent. Other tasks' pending calls fail with
        ConnectionClosed. ``error`` (why the connection ends) has nowhere to go on a plain
        byte stream: the ERROR frame before it said it.

        Cancellation: the stream is closed all the same (``aclose`` semantics).
        """
        self._closed = True
        await self._stream.aclose()

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """The one translation boundary: trio's stream errors to ConnectionClosed."""
        try:
            yield
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            why = "the connection was closed" if self._closed else "connection lost"
            msg = f"cannot {action}: {why}"
            raise ConnectionClosed(msg) from exc


if TYPE_CHECKING:
    from librorum.transport.base import FrameTransport

    # mypy checks here that StreamTransport keeps to the protocol the server takes.
    _CONFORMS: type[FrameTransport] = StreamTransport
