"""Frames: the incremental decoder (bytes in, frames out) and the encoders (spec section 3).

The decoder follows h11's vocabulary: feed it with :meth:`FrameDecoder.receive_data` (``b""``
means the peer closed its sending side) and pull with :meth:`FrameDecoder.next_frame`, which
returns a :class:`Frame`, :data:`NEED_DATA` until a whole frame is buffered, or :data:`CLOSED`
once the peer closed cleanly between frames.

Contract (also the fuzz invariant): for any input, the decoder returns frames or raises
:class:`~librorum.errors.RemoteProtocolError`; any other exception is a bug. After raising, the
decoder stays failed and raises the same error again.

Memory: the header is validated as soon as its 20 bytes are in, so a frame declaring a payload
over the limit is rejected before any of it is buffered, and nothing is ever allocated from a
declared ``payload_size`` (a slow sender costs only the bytes it actually sent). Buffering is a
``bytearray`` with a read offset (wsproto's ``Buffer``), so decoding stays O(n) however the
input is split.

Copies: a small frame's payload is copied out of the shared buffer once. A large payload
(>= :data:`LARGE_PAYLOAD`) is collected in a buffer of its own as it arrives, and that buffer
*is* the frame's payload (a ``bytearray`` the caller now owns), so each payload byte is copied
exactly once, from the caller's read buffer into the decoder. A large frame that arrives whole
in one feed (a WebSocket message) and ends what is buffered takes the shared buffer itself as
its payload, so it too is copied once.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Final, Literal, NamedTuple, TypeAlias

import attrs

from librorum.errors import LocalProtocolError, RemoteProtocolError
from librorum.protocol.constants import (
    HANDSHAKE_VERSION,
    HEADER_SIZE,
    MAX_HANDSHAKE_PAYLOAD,
    VERSION,
    Command,
)
from librorum.protocol.header import HEADER, check_header, pack_header

#: What a payload may be when encoding: anything exposing contiguous bytes.
Payload: TypeAlias = bytes | bytearray | memoryview


@attrs.frozen
class FileRegion:
    """A payload that lives in a file: ``length`` bytes of descriptor ``fd`` from ``offset``.

    Only its length matters to the sans-I/O core (the header is built from it); the transport
    that sends the frame moves the bytes itself (``os.sendfile`` on a Unix socket), so they
    never pass through user space. The descriptor belongs to whoever queued the frame and must
    stay open, its bytes unchanged, until the frame has been sent.
    """

    fd: int
    offset: int
    length: int

    def __len__(self) -> int:
        return self.length


class Frame(NamedTuple):
    """One LBRU frame. ``flags`` is a plain int (test with ``frame.flags & Flags.END``): building
    an ``enum.IntFlag`` per frame would cost more than decoding the frame."""

    command: Command
    flags: int
    session_id: int
    payload: Payload = b""
    version: int = VERSION


class _Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"
    CLOSED = "CLOSED"

    def __repr__(self) -> str:
        return self.value


#: :meth:`FrameDecoder.next_frame` needs more bytes before it can return a frame.
NEED_DATA: Final = _Sentinel.NEED_DATA
#: The peer closed its side cleanly, between frames; no frame will follow.
CLOSED: Final = _Sentinel.CLOSED

NeedData: TypeAlias = Literal[_Sentinel.NEED_DATA]
Closed: TypeAlias = Literal[_Sentinel.CLOSED]

_unpack_header_from: Final = HEADER.unpack_from

#: Payloads at least this large get a buffer of their own (see the module docstring). Below
#: it, one slice copy out of the shared buffer is cheaper than managing a second buffer.
LARGE_PAYLOAD: Final = 64 << 10


class FrameDecoder:
    """Incremental LBRU frame decoder.

    Args:
        expected_version: the header version every frame must carry. Starts at the handshake
            version; the session switches it to the negotiated version after HELLO.
        max_payload: the largest payload a DATA frame may declare.
        max_control_payload: the largest payload any other frame may declare.
        large_payload: payloads of at least this many bytes get a buffer of their own.

    The limits start at the pre-handshake budget (spec 9: 4 KiB) and are raised by the
    session after HELLO with :meth:`set_limits`.
    """

    __slots__ = (
        "_body",
        "_buf",
        "_closed",
        "_error",
        "_expected_version",
        "_large_payload",
        "_max_control_payload",
        "_max_payload",
        "_pending",
        "_start",
    )

    def __init__(
        self,
        *,
        expected_version: int = HANDSHAKE_VERSION,
        max_payload: int = MAX_HANDSHAKE_PAYLOAD,
        max_control_payload: int = MAX_HANDSHAKE_PAYLOAD,
        large_payload: int = LARGE_PAYLOAD,
    ) -> None:
        self._large_payload = large_payload
        self._buf = bytearray()
        # Offset of the first unconsumed byte in _buf; bytes before it are dead and reclaimed
        # in bulk, so consuming a frame never moves the rest of the buffer.
        self._start = 0
        self._closed = False
        self._error: RemoteProtocolError | None = None
        # (command, flags, session_id, payload_size, version) of a frame whose header is
        # validated but whose payload is incomplete: validated once, not once per feed.
        self._pending: tuple[Command, int, int, int, int] | None = None
        # The payload of the pending frame when it is large: filled by receive_data directly.
        self._body: bytearray | None = None
        self._expected_version = expected_version
        self._max_payload = max_payload
        self._max_control_payload = max_control_payload

    def set_limits(
        self, *, expected_version: int, max_payload: int, max_control_payload: int
    ) -> None:
        """Apply negotiated values. Takes effect from the next header decoded."""
        self._expected_version = expected_version
        self._max_payload = max_payload
        self._max_control_payload = max_control_payload

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames (header bytes of a pending frame
        included)."""
        body = self._body
        return len(self._buf) - self._start + (HEADER_SIZE + len(body) if body is not None else 0)

    def bytes_desired(self) -> int:
        """Bytes still missing to complete the frame being received: the rest of a header, or
        the rest of the payload once the header is in; 0 when a whole header is buffered but
        not yet parsed (call :meth:`next_frame`). A transport that must not read past a frame
        boundary (fd passing) reads at most this much."""
        if self._pending is None:
            have = len(self._buf) - self._start
            return HEADER_SIZE - have if have < HEADER_SIZE else 0
        return HEADER_SIZE + self._pending[3] - self.buffered

    def receive_data(self, data: Payload) -> None:
        """Append bytes from the peer; ``b""`` means the peer closed its sending side.

        Raises:
            LocalProtocolError: data after the end-of-stream mark.
        """
        if not data:
            self._closed = True
            return
        if self._closed:
            msg = "received data after end of stream"
            raise LocalProtocolError(msg)
        body = self._body
        if body is not None:
            missing = self._pending[3] - len(body)  # type: ignore[index]  # set with _body
            if len(data) <= missing:
                body += data
                return
            with memoryview(data) as view:
                body += view[:missing]
                self._append(view[missing:])
            return
        self._append(data)

    def _append(self, data: Payload) -> None:
        buf = self._buf
        if self._start and self._start == len(buf):
            # Everything so far was consumed: restart at offset 0 rather than grow.
            del buf[:]
            self._start = 0
        elif self._start > (len(buf) >> 1):
            # Reclaim the dead prefix once it is the larger half: amortised O(1) per byte.
            del buf[: self._start]
            self._start = 0
        buf += data

    def next_frame(self) -> Frame | NeedData | Closed:
        """Return the next whole frame, :data:`NEED_DATA`, or :data:`CLOSED`.

        Raises:
            RemoteProtocolError: the bytes break the protocol (a subclass names the rule), or
                the stream ended in the middle of a frame. The decoder stays failed.
        """
        if self._error is not None:
            raise self._error
        body = self._body
        if body is not None:
            command, flags, session_id, size, version = self._pending  # type: ignore[misc]
            if len(body) < size:
                return self._end_of_input(self.buffered)
            self._body = None
            self._pending = None
            return Frame(command, flags, session_id, body, version)
        buf = self._buf
        start = self._start
        have = len(buf) - start
        pending = self._pending
        if pending is None:
            if have < HEADER_SIZE:
                return self._end_of_input(have)
            magic, version, command_byte, flags, size, session_id = _unpack_header_from(buf, start)
            try:
                command = check_header(
                    magic,
                    version,
                    command_byte,
                    flags,
                    size,
                    expected_version=self._expected_version,
                    max_payload=self._max_payload,
                    max_control_payload=self._max_control_payload,
                )
            except RemoteProtocolError as exc:
                self._error = exc
                raise
            pending = (command, flags, session_id, size, version)
        else:
            command, flags, session_id, size, version = pending
        end = start + HEADER_SIZE + size
        if len(buf) < end:
            self._pending = pending
            if size >= self._large_payload:
                # Move what has arrived of the payload into its own buffer; the rest will be
                # appended there by receive_data, never passing through the shared buffer.
                self._body = buf[start + HEADER_SIZE :]
                del buf[start:]
            return self._end_of_input(have)
        self._pending = None
        if size >= self._large_payload and end == len(buf):
            # A large frame that arrived whole (a WebSocket message) and ends the buffer: the
            # buffer itself becomes its payload, and the decoder starts a new one. Deleting
            # a bytearray's head only moves its start: nothing is copied (slicing would copy
            # the payload a second time).
            del buf[: start + HEADER_SIZE]
            self._buf = bytearray()
            self._start = 0
            return Frame(command, flags, session_id, buf, version)
        self._start = end
        return Frame(
            command, flags, session_id, buf[start + HEADER_SIZE : end] if size else b"", version
        )

    def _end_of_input(self, have: int) -> NeedData | Closed:
        if not self._closed:
            return NEED_DATA
        if have == 0:
            return CLOSED
        msg = f"connection closed in the middle of a frame ({have} bytes buffered)"
        self._error = RemoteProtocolError(msg)
        raise self._error

    def __iter__(self) -> FrameDecoder:
        return self

    def __next__(self) -> Frame:
        """Iterate over the frames buffered now (stops at NEED_DATA or CLOSED)."""
        frame = self.next_frame()
        if frame is NEED_DATA or frame is CLOSED:
            raise StopIteration
        return frame


def encode_frame(
    command: Command,
    payload: Payload = b"",
    *,
    session_id: int = 0,
    flags: int = 0,
    version: int = VERSION,
) -> bytes:
    """Encode one frame into a single ``bytes`` (header + payload).

    For large payloads prefer :func:`encode_frame_parts` and a vectored send, which does not
    copy the payload.

    Raises:
        LocalProtocolError: a field does not fit its width, or reserved flag bits are set.
    """
    return pack_header(command, flags, len(payload), session_id, version) + payload


def encode_frame_parts(
    command: Command,
    payload: Payload = b"",
    *,
    session_id: int = 0,
    flags: int = 0,
    version: int = VERSION,
) -> tuple[bytes, Payload]:
    """Encode one frame as ``(header, payload)`` for ``sendmsg``-style vectored writes, so
    that a large payload is never copied to prepend its header.

    Raises:
        LocalProtocolError: as :func:`encode_frame`.
    """
    return pack_header(command, flags, len(payload), session_id, version), payload


def encode_frames(frames: Iterable[Frame]) -> bytes:
    """Encode many frames into one buffer, for one write: coalescing small frames matters
    (one send per small frame costs over 10x in throughput).

    Raises:
        LocalProtocolError: as :func:`encode_frame`.
    """
    parts: list[Payload] = []
    for command, flags, session_id, payload, version in frames:
        parts.append(pack_header(command, flags, len(payload), session_id, version))
        parts.append(payload)
    return b"".join(parts)
