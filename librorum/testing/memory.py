"""An in-memory transport pair: a real server connection without sockets, threads or real
time, with the backpressure of a socket buffer and, on request, descriptor passing."""

from __future__ import annotations

import fcntl
import os
from collections import deque
from typing import TYPE_CHECKING, Final

import attrs
import trio

from librorum.errors import ConnectionClosed, LibrorumError, LocalProtocolError
from librorum.limits import RECEIVE_SIZE
from librorum.protocol.framing import FileRegion
from librorum.transport.base import Buffer, FileFrameParts, FrameParts, PeerInfo

if TYPE_CHECKING:
    from collections.abc import Sequence

#: Bytes each direction of a :func:`memory_transport_pair` holds by default before a send
#: waits for the peer to read: a small socket buffer's worth, so that a test sees
#: backpressure after a few dozen replies rather than after megabytes.
MEMORY_CAPACITY: Final = 64 << 10


@attrs.frozen
class DirectionStatistics:
    """One direction of a memory transport pair, as :meth:`MemoryTransport.statistics`
    reports it.

    Attributes:
        frames: frames sent this way (each one whole: a frame is never split).
        bytes: their bytes.
        unread: of those, the bytes the receiving end has not received yet: what a socket
            buffer would hold.
        peak_unread: the most ``unread`` has been.
    """

    frames: int
    bytes: int
    unread: int
    peak_unread: int


@attrs.frozen
class MemoryTransportStatistics:
    """What :meth:`MemoryTransport.statistics` reports: ``sent`` is what this end sent to
    its peer, ``received`` what its peer sent to it."""

    sent: DirectionStatistics
    received: DirectionStatistics


@attrs.define(eq=False)
class _Pipe:
    """One direction of a memory transport pair: whole frames in order, each with the
    descriptors that ride on it, holding at most ``capacity`` bytes (and always one frame,
    however large, so that any frame can pass)."""

    capacity: int
    frames: deque[tuple[bytes, list[int]]] = attrs.field(factory=deque)
    #: Bytes of the first frame already received (a receive took only part of it).
    offset: int = 0
    unread: int = 0
    peak_unread: int = 0
    frames_sent: int = 0
    bytes_sent: int = 0
    #: The sending end closed: the receiver gets what is buffered, then EOF.
    eof: bool = False
    #: The receiving end closed: sends fail, and what was buffered is gone.
    broken: bool = False
    readable: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot)
    writable: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot)

    def statistics(self) -> DirectionStatistics:
        return DirectionStatistics(self.frames_sent, self.bytes_sent, self.unread, self.peak_unread)

    def has_room(self, size: int) -> bool:
        return self.unread == 0 or self.unread + size <= self.capacity

    def put(self, data: bytes, fds: list[int]) -> None:
        self.frames.append((data, fds))
        self.unread += len(data)
        self.peak_unread = max(self.peak_unread, self.unread)
        self.frames_sent += 1
        self.bytes_sent += len(data)
        self.readable.unpark_all()

    def take(self, max_bytes: int, *, whole: bool) -> tuple[bytes, list[int]]:
        """Up to ``max_bytes`` from the front (one whole frame with ``whole``), and the
        descriptors that came with them. As a Unix stream socket does, a receive may join
        frames, hands a frame's descriptor over with that frame's first bytes, and ends at
        the end of the first frame that carried one (spec 8.1)."""
        if whole:
            data, fds = self.frames.popleft()
            self.unread -= len(data)
            self.writable.unpark_all()
            return data, fds
        parts: list[bytes] = []
        fds = []
        room = max_bytes
        while self.frames and room and not fds:
            frame, frame_fds = self.frames[0]
            piece = frame[self.offset : self.offset + room]
            parts.append(piece)
            room -= len(piece)
            fds += frame_fds
            frame_fds.clear()
            self.offset += len(piece)
            if self.offset == len(frame):
                self.frames.popleft()
                self.offset = 0
        data = b"".join(parts)
        self.unread -= len(data)
        self.writable.unpark_all()
        return data, fds

    def discard(self) -> None:
        """Drop what is buffered, closing the descriptors in it (a closed socket's)."""
        for _, fds in self.frames:
            _close_descriptors(fds)
        self.frames.clear()
        self.offset = self.unread = 0


class MemoryTransport:
    """One end of a :func:`memory_transport_pair`: a
    :class:`~librorum.transport.base.FrameTransport` whose frames cross in memory, with no
    socket, no thread and no real time, so that a real server connection runs under
    ``trio.testing.MockClock(autojump_threshold=0)``.

    It behaves as a Unix socket does where a test can tell: a byte stream (``receive_some``
    returns what has arrived, up to ``max_bytes``, joining or cutting frames), or with
    ``kind="websocket"`` one whole frame per receive (``message_framed``); sends wait while
    the peer's direction is full; the peer's close is EOF after what it sent; with
    ``carries_files``, descriptors and file regions pass as over a Unix socket (spec 8).
    Unlike a socket, a frame is never cut by a cancelled send: each one is sent whole or not
    at all, so a cancelled send leaves the transport usable.

    Attributes:
        close_error: the error this end was closed with (``aclose(error=...)``), which a
            WebSocket would turn into its close code: why the side that closed it gave up.
    """

    def __init__(
        self,
        outgoing: _Pipe,
        incoming: _Pipe,
        *,
        kind: str,
        carries_files: bool,
        peer: PeerInfo,
    ) -> None:
        self._outgoing = outgoing
        self._incoming = incoming
        self._kind = kind
        self._carries_files = carries_files
        self._peer = peer
        self._send_lock = trio.StrictFIFOLock()
        self._receiving = False
        self._closed = False
        # Set when a frame could not be built: its header promised bytes the file lacks.
        self._broken: str | None = None
        self.close_error: LibrorumError | None = None

    @property
    def kind(self) -> str:
        return self._kind

    @property
    def peer(self) -> PeerInfo:
        return self._peer

    @property
    def message_framed(self) -> bool:
        """True for ``kind="websocket"``: each receive is one whole frame."""
        return self._kind == "websocket"

    @property
    def carries_files(self) -> bool:
        return self._carries_files

    @property
    def sends_file_regions(self) -> bool:
        return self._carries_files

    def statistics(self) -> MemoryTransportStatistics:
        """What has crossed each way so far, and what waits to be received."""
        return MemoryTransportStatistics(
            sent=self._outgoing.statistics(), received=self._incoming.statistics()
        )

    # --- Sending ------------------------------------------------------------------------------

    async def send_frames(self, frames: Sequence[FileFrameParts]) -> None:
        """Send whole frames, in order, each waiting until the peer's direction has room
        for it. With ``carries_files``, a :class:`~librorum.protocol.framing.FileRegion`
        payload is read from its file when its frame is sent.

        Cancellation: the frames sent before the cancel stay sent, the others are not sent;
        no frame is cut, so the transport stays usable.

        Raises:
            ConnectionClosed: the transport or its peer is closed, or a file region ended
                before its length (the transport is then broken, as a Unix socket's).
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        async with self._send_lock:
            self._check_open("send")
            for parts in frames:
                data = self._frame_bytes(parts)
                if data:
                    await self._put(data, [])
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def send_fd_frame(self, parts: FrameParts, fd: int) -> None:
        """Send one frame with a duplicate of ``fd`` attached to its first byte (the caller
        keeps ``fd``). The duplicate is close-on-exec, as the receiver of SCM_RIGHTS gets it.

        Cancellation: as :meth:`send_frames`; a frame not sent closes its duplicate.

        Raises:
            LocalProtocolError: the transport does not carry files, ``fd`` is not open, or
                the frame is empty.
            ConnectionClosed: as :meth:`send_frames`.
        """
        if not self._carries_files:
            msg = "this memory transport does not carry descriptors (carries_files=False)"
            raise LocalProtocolError(msg)
        try:
            fcntl.fcntl(fd, fcntl.F_GETFD)
        except OSError as exc:
            msg = f"cannot pass descriptor {fd}: {exc.strerror}"
            raise LocalProtocolError(msg) from exc
        data = self._frame_bytes(parts)
        if not data:
            msg = "a descriptor must ride on at least one byte"
            raise LocalProtocolError(msg)
        await trio.lowlevel.checkpoint_if_cancelled()
        async with self._send_lock:
            self._check_open("send")
            duplicate = [os.dup(fd)]
            try:
                await self._put(data, duplicate)
            except BaseException:
                _close_descriptors(duplicate)
                raise
        await trio.lowlevel.cancel_shielded_checkpoint()

    def _frame_bytes(self, parts: FileFrameParts) -> bytes:
        pieces: list[Buffer] = []
        for part in parts:
            if isinstance(part, FileRegion):
                pieces.append(self._read_region(part))
            else:
                pieces.append(part)
        return b"".join(pieces)

    def _read_region(self, region: FileRegion) -> bytes:
        if not self._carries_files:
            msg = "a file region needs a transport that carries files"
            raise LocalProtocolError(msg)
        pieces: list[bytes] = []
        done = 0
        while done < region.length:
            piece = os.pread(region.fd, region.length - done, region.offset + done)
            if not piece:
                self._broken = f"a file region ended {region.length - done} bytes early"
                msg = f"cannot send: {self._broken}"
                raise ConnectionClosed(msg)
            pieces.append(piece)
            done += len(piece)
        return b"".join(pieces)

    async def _put(self, data: bytes, fds: list[int]) -> None:
        pipe = self._outgoing
        while not pipe.has_room(len(data)):
            await pipe.writable.park()
            self._check_open("send")
        pipe.put(data, fds)

    def _check_open(self, action: str) -> None:
        if self._closed:
            msg = f"cannot {action}: the connection was closed"
        elif action == "receive":
            return
        elif self._broken is not None:
            msg = f"cannot {action}: {self._broken}"
        elif self._outgoing.broken:
            msg = f"cannot {action}: connection lost (the peer closed it)"
        else:
            return
        raise ConnectionClosed(msg)

    # --- Receiving ----------------------------------------------------------------------------

    async def receive_some(self, max_bytes: int = RECEIVE_SIZE) -> Buffer:
        """Up to ``max_bytes`` of what has arrived (one whole frame, whatever ``max_bytes``,
        when ``message_framed``); ``b""`` once the peer closed and everything it sent was
        received. Descriptors that came with the bytes are closed, as the kernel closes
        those a plain ``recv`` meets.

        Cancellation: nothing is lost.

        Raises:
            ConnectionClosed: this end was closed.
            trio.BusyResourceError: another task is receiving.
        """
        data, fds = await self._receive(max_bytes)
        _close_descriptors(fds)
        return data

    async def receive_with_fds(self, max_bytes: int, max_fds: int = 1) -> tuple[bytes, list[int]]:
        """As :meth:`receive_some`, with the descriptors that came with the bytes (at most
        one: a receive ends with the frame that carried one). The caller owns them.

        Cancellation: nothing is lost.

        Raises:
            LocalProtocolError: the transport does not carry files.
            ConnectionClosed: this end was closed.
            trio.BusyResourceError: another task is receiving.
        """
        if not self._carries_files:
            msg = "this memory transport does not carry descriptors (carries_files=False)"
            raise LocalProtocolError(msg)
        if max_fds < 1:
            msg = f"max_fds must be at least 1, got {max_fds}"
            raise ValueError(msg)
        return await self._receive(max_bytes)

    async def _receive(self, max_bytes: int) -> tuple[bytes, list[int]]:
        if max_bytes < 1:
            msg = f"max_bytes must be at least 1, got {max_bytes}"
            raise ValueError(msg)
        if self._receiving:
            msg = "another task is already receiving on this connection"
            raise trio.BusyResourceError(msg)
        await trio.lowlevel.checkpoint_if_cancelled()
        self._receiving = True
        try:
            pipe = self._incoming
            while not pipe.frames:
                self._check_open("receive")
                if pipe.eof:
                    break
                await pipe.readable.park()
            self._check_open("receive")
            received = pipe.take(max_bytes, whole=self.message_framed) if pipe.frames else None
        finally:
            self._receiving = False
        await trio.lowlevel.cancel_shielded_checkpoint()
        return received if received is not None else (b"", [])

    # --- Closing ------------------------------------------------------------------------------

    async def aclose(self, *, error: LibrorumError | None = None) -> None:
        """Close this end; idempotent. The peer receives what this end sent, then EOF; its
        sends fail from now on, and what it sent that this end had not received is dropped
        (descriptors closed). This end's pending calls in other tasks fail with
        ConnectionClosed. ``error`` is kept as :attr:`close_error`.

        Cancellation: the transport is closed all the same.
        """
        if not self._closed:
            self._closed = True
            self.close_error = error
            outgoing, incoming = self._outgoing, self._incoming
            outgoing.eof = True
            incoming.broken = True
            incoming.discard()
            for pipe in (outgoing, incoming):
                pipe.readable.unpark_all()
                pipe.writable.unpark_all()
        await trio.lowlevel.checkpoint()


if TYPE_CHECKING:
    from librorum.transport.base import FileTransport

    # mypy checks that the pair keeps to the protocols the server takes.
    _MEMORY_CONFORMS: type[FileTransport] = MemoryTransport


def memory_transport_pair(
    *,
    kind: str = "uds",
    carries_files: bool = False,
    capacity_to_server: int = MEMORY_CAPACITY,
    capacity_to_client: int = MEMORY_CAPACITY,
    peer: PeerInfo | None = None,
) -> tuple[MemoryTransport, MemoryTransport]:
    """Two connected :class:`MemoryTransport` ends: (server side, client side).

    Args:
        kind: the transport kind both ends report. ``"uds"`` (a byte stream; the server
            applies its Unix socket limits) or ``"websocket"`` (one frame per receive; the
            server applies its WebSocket limits).
        carries_files: pass descriptors and file regions, as a Unix socket does (spec 8);
            the server then offers the fd features.
        capacity_to_server: bytes the client may have sent that the server has not
            received before the client's sends wait (one frame always fits).
        capacity_to_client: the same the other way.
        peer: who each end is told is at the other end; an authenticated peer of ``kind``
            by default (on ``"uds"``, of this process's uid, as the kernel would report it).
    """
    if peer is None:
        peer = PeerInfo(kind, uid=os.getuid() if kind == "uds" else None, authenticated=True)
    to_server, to_client = _Pipe(capacity_to_server), _Pipe(capacity_to_client)
    server_end = MemoryTransport(
        to_client, to_server, kind=kind, carries_files=carries_files, peer=peer
    )
    client_end = MemoryTransport(
        to_server, to_client, kind=kind, carries_files=carries_files, peer=peer
    )
    return server_end, client_end


def _close_descriptors(fds: list[int]) -> None:
    while fds:
        os.close(fds.pop())
