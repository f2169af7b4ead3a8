"""WebSocket framing without wsproto's copies: frame building, (un)masking, and a faster frame
decoder installed into an established :class:`wsproto.WSConnection`.

wsproto parses and builds frames correctly but copies each payload four to five times
(buffer slice, ``bytearray`` in the masker, strided mask passes into new objects,
``bytes(payload)``, header concatenation). At 1 MiB messages those copies, not the socket,
bound the WebSocket transport. This module keeps wsproto for everything it does well
(the HTTP upgrade, control frames, close codes, UTF-8 of text messages, every protocol
check) and replaces only the two payload paths:

* receiving: :class:`FastFrameDecoder` takes the payload out of wsproto's receive buffer
  without copying when the buffer holds nothing else, unmasks it in one pass (a masked one),
  and hands it on as it is (wsproto would copy it into ``bytes``);
* sending: :func:`encode_frame` builds header, key and payload parts into one buffer, each
  part masked on its way in.

The decoder is also where a connection's message limits live, since it is the first to see
each frame's header: a data message larger than :attr:`FastFrameDecoder.max_message_size` is
refused at the header that takes it over the limit, before any of that payload is buffered, and
:attr:`FastFrameDecoder.at_message_boundary` tells a reader whether part of a message (or of a
control frame) has arrived, which is when a message deadline runs.

Masking (RFC 6455 5.3) is XOR with a 4-byte key, every byte of every client frame on both
ends. Pure Python has no vectorised XOR, so :func:`apply_mask` uses the C routine of the
``websockets`` package (``websockets.speedups.apply_mask``, about 20 GB/s on the development
machine, where the stdlib paths reach 0.5-0.9 GB/s and masking took a fifth of the daemon's
time on WebSocket uploads). It is imported when the first connection is accelerated, not with
this module: a local client never needs it. Where the package or its compiled part is missing
(it installs without it where it cannot build), the same bytes come from the fastest stdlib
path measured, four ``translate`` passes over the strided lanes (``int.from_bytes`` around one
big integer XOR measured 0.2-0.25 GB/s: the conversions are bytewise).

:func:`accelerate` installs the decoder by switching the classes of wsproto's frame objects
of one connection (state-preserving subclasses, no global patching). It reaches into private
attributes of wsproto (``_proto``, ``_frame_decoder``, the masker's ``_masking_key``), so it
only does so for the wsproto versions whose internals were checked
(:data:`_SUPPORTED_WSPROTO`) and when no extension was negotiated; otherwise the connection
keeps plain wsproto, which is correct, only slower (and limits a message as its parts arrive
rather than at its header).
"""

from __future__ import annotations

import functools
import os
import struct
from collections.abc import Callable, Sequence
from typing import Final, TypeAlias, cast

import wsproto
from wsproto.connection import Connection
from wsproto.frame_protocol import (
    CloseReason,
    Frame,
    FrameDecoder,
    FrameProtocol,
    Header,
    Opcode,
    ParseFailed,
)

from librorum.protocol.framing import FileRegion

#: wsproto major.minor versions whose FrameDecoder/FrameProtocol internals this module
#: relies on (attribute names and the process_buffer contract).
_SUPPORTED_WSPROTO: Final = frozenset({(1, 2), (1, 3)})

#: _XOR_TABLES[k] maps each byte b to b ^ k, for bytes.translate.
_XOR_TABLES: Final = tuple(bytes(b ^ k for b in range(256)) for k in range(256))
_HEADER_16: Final = struct.Struct("!BBH")
_HEADER_64: Final = struct.Struct("!BBQ")
_FIN: Final = 0x80
_MASK_BIT: Final = 0x80
#: The longest frame header: 2 bytes, a 64-bit extended length, a 4-byte masking key.
_MAX_HEADER: Final = 14
#: The longest payload of a control frame (RFC 6455 5.5).
_MAX_CONTROL_PAYLOAD: Final = 125
#: Payload parts smaller than this are joined with what precedes them in a frame's buffers:
#: copying a small part costs less than a separate buffer in a vectored write.
_COALESCE_BELOW: Final = 16 << 10
#: Binary frames smaller than this, wholly buffered, are read without wsproto's per-frame
#: machinery (FastFrameDecoder.take_small_message); larger ones are worth its cost.
_SMALL_MESSAGE: Final = 64 << 10


def _wsproto_version() -> tuple[int, int]:
    major, minor = wsproto.__version__.split(".")[:2]
    return int(major), int(minor)


#: Whether :func:`accelerate` can be used with the installed wsproto.
SUPPORTED: Final = _wsproto_version() in _SUPPORTED_WSPROTO


#: What a frame payload may be handed in as (one part of it).
Buffer: TypeAlias = bytes | bytearray | memoryview
#: A masking routine: ``data`` XOR the 4-byte ``key`` repeated, as a new buffer.
Masker: TypeAlias = Callable[[Buffer, bytes], bytes | bytearray]


def mask_python(data: Buffer, key: bytes) -> bytearray:
    """``data`` XOR ``key`` repeated (RFC 6455 5.3), in pure Python: the fallback of
    :func:`apply_mask`, and its reference in the tests."""
    if isinstance(data, memoryview):
        data = data.tobytes()  # a strided slice of a memoryview has no translate()
    out = bytearray(len(data))
    for lane in range(4):
        out[lane::4] = data[lane::4].translate(_XOR_TABLES[key[lane]])
    return out


@functools.cache
def native_masker() -> Masker | None:
    """The compiled masking routine, or None where it is not installed. Imported on the first
    call (the import costs about 40 ms) and remembered."""
    try:
        from websockets.speedups import apply_mask
    except ImportError:
        return None
    return apply_mask


def apply_mask(data: Buffer, key: bytes, offset: int = 0) -> bytes | bytearray:
    """``data`` XOR the 4-byte ``key`` repeated, as if ``data`` started ``offset`` bytes into
    a frame's payload (RFC 6455 5.3), as a new buffer. Masking and unmasking are the same
    operation. Raises nothing for a 4-byte key."""
    shift = offset & 3
    if shift:
        key = key[shift:] + key[:shift]
    native = native_masker()
    if native is None:
        return mask_python(data, key)
    return native(data, key)


def frame_buffers(
    opcode: Opcode,
    payload: Buffer | Sequence[Buffer | FileRegion],
    *,
    fin: bool = True,
    masked: bool,
) -> list[Buffer | FileRegion]:
    """One complete WebSocket frame (RFC 6455 5.2) carrying ``payload`` (one buffer, or the
    parts that joined make it), no RSV bits, as the buffers to write in order: the frame
    header joined with the small parts that follow it, each large part as it is (unmasked)
    or masked into a buffer of its own. A vectored write (``sendmsg``) sends them without
    joining them first; :func:`encode_frame` joins them. A part that is a file region
    (unmasked frames only) stays one, for ``os.sendfile``.

    ``masked`` (client frames): XOR with a fresh key from the OS's CSPRNG, as 5.3 requires.

    Raises:
        ValueError: a control frame with a payload over 125 bytes, or a fragmented one; a
            file region in a masked frame (its bytes must be read and masked first).
    """
    parts: Sequence[Buffer | FileRegion] = (
        (payload,) if isinstance(payload, bytes | bytearray | memoryview) else payload
    )
    if masked and any(isinstance(part, FileRegion) for part in parts):
        msg = "a masked frame cannot carry a file region"
        raise ValueError(msg)
    sizes = [part.nbytes if isinstance(part, memoryview) else len(part) for part in parts]
    size = sum(sizes)
    first = (_FIN if fin else 0) | int(opcode)
    mask_bit = _MASK_BIT if masked else 0
    if opcode.iscontrol() and (size > _MAX_CONTROL_PAYLOAD or not fin):
        msg = "payload too long for control frame" if fin else "control frames cannot be fragmented"
        raise ValueError(msg)
    if size <= _MAX_CONTROL_PAYLOAD:
        header = bytes((first, mask_bit | size))
    elif size <= 0xFFFF:
        header = _HEADER_16.pack(first, mask_bit | 126, size)
    else:
        header = _HEADER_64.pack(first, mask_bit | 127, size)
    run: list[Buffer] = [header]
    key = b""
    if masked:
        key = os.urandom(4)
        run.append(key)
    buffers: list[Buffer | FileRegion] = []
    offset = 0
    for part, part_size in zip(parts, sizes, strict=True):
        if isinstance(part, FileRegion):
            pass  # (never masked: refused above)
        elif masked and part_size:
            # Masked straight from where it is, at its offset in the payload: one pass.
            part = apply_mask(part, key, offset)
        offset += part_size
        if part_size < _COALESCE_BELOW and not isinstance(part, FileRegion):
            run.append(part)
            continue
        if run:
            buffers.append(b"".join(run) if len(run) > 1 else run[0])
            run = []
        buffers.append(part)
    if run:
        buffers.append(b"".join(run) if len(run) > 1 else run[0])
    return buffers


def encode_frame(
    opcode: Opcode, payload: Buffer | Sequence[Buffer], *, fin: bool = True, masked: bool
) -> bytes:
    """:func:`frame_buffers` joined into one buffer (the parts of ``payload`` are joined
    into the frame, not before).

    Raises:
        ValueError: as :func:`frame_buffers`.
    """
    # (No file regions among the parts: the type says so.)
    buffers = frame_buffers(opcode, payload, fin=fin, masked=masked)
    return b"".join(cast("list[Buffer]", buffers))


class FastFrameDecoder(FrameDecoder):
    """wsproto's FrameDecoder with a payload path that copies less (only installed when no
    extension is active: extensions see payloads as wsproto gives them).

    Data frames with a payload up to :attr:`whole_frames_up_to` bytes are emitted whole, once
    all of it arrived (a reader that asks for :meth:`missing` bytes then gets each message as
    one buffer, with no reassembly copy); larger ones are emitted in parts as they arrive,
    as wsproto does. So the buffer holds at most that much plus one read.

    A data message whose declared size (the payload lengths of its frames so far) exceeds
    :attr:`max_message_size` fails to parse at the header that takes it over, with close code
    1009 (wsproto reports it like any other parse failure: a ``CloseConnection`` event).
    """

    whole_frames_up_to: int = 0
    #: The largest data message accepted (all its fragments); None: no limit.
    max_message_size: int | None = None
    #: Declared payload bytes of the data message being received, up to the current frame.
    _message_bytes: int = 0
    #: A data message has begun and its last frame (FIN) has not been seen yet.
    _in_message: bool = False
    #: The payload of the frame being received in whole mode (its header arrived at the start
    #: of a read), filled straight from the reads that follow (one copy per byte), and the
    #: size it will have. It grows as the bytes arrive rather than being allocated at the
    #: size the header declares: a peer announcing a large frame and sending it slowly must
    #: cost what it sent, not what it announced (large bytearrays grow by mremap, in place).
    _pending: bytearray | None = None
    _pending_size: int = 0
    #: The masking key of the frame being received (None: unmasked), read from its header
    #: here: wsproto keeps it only inside its masker, which this decoder never calls.
    _masking_key: bytes | None = None

    def limit_messages(self, size: int) -> None:
        """Accept data messages of at most ``size`` bytes from the next frame header on, and
        receive frames up to that size whole (when whole frames were asked for)."""
        self.max_message_size = size
        if self.whole_frames_up_to:
            self.whole_frames_up_to = size

    @property
    def at_message_boundary(self) -> bool:
        """True when no part of a message or frame is buffered or awaited: the last byte
        received ended a whole message or control frame (a deadline on messages runs
        whenever this is False)."""
        return (
            self.header is None
            and not len(self.buffer)
            and self._pending is None
            and not self._in_message
        )

    def missing(self) -> int:
        """How many more bytes the frame being received needs before it can be emitted whole;
        0 when no such frame is pending (read as much as is convenient)."""
        if self._pending is not None:
            return self._pending_size - len(self._pending)
        header = self.header
        if header is None or header.payload_len > self.whole_frames_up_to:
            return 0
        buffered = len(self.buffer) - self.buffer.bytes_used
        return max(0, header.payload_len - self.payload_consumed - buffered)

    def take_small_message(self) -> bytes | None:
        """The next message, when it is one small binary frame wholly buffered (FIN, no RSV
        bits, masked as the peer's role requires, its length in the shortest encoding,
        within the message limit), between messages; None otherwise, leaving everything for
        wsproto's parser (which refuses what breaks RFC 6455, with its close code).

        A burst of small messages (pipelined requests, their replies) costs wsproto's
        generators and event objects per message; this reads such a frame in place of them
        with the same checks, and leaves wsproto's parser state as its own parse would (at a
        frame boundary, no message in progress). The caller must only call it while the
        connection is open and no fragmented message is being collected.
        """
        if self.header is not None or self._pending is not None or self._in_message:
            return None
        buffer = self.buffer
        data = buffer.buffer
        start = buffer.bytes_used
        available = len(data) - start
        if available < 2 or data[start] != _FIN | Opcode.BINARY:
            return None
        second = data[start + 1]
        masked = bool(second & _MASK_BIT)
        if masked == self.client:
            return None  # wsproto refuses it (RFC 6455 5.1)
        size = second & 0x7F
        head = 2
        if size == 126:
            if available < 4:
                return None
            size = int.from_bytes(data[start + 2 : start + 4], "big")
            head = 4
            if size <= _MAX_CONTROL_PAYLOAD:
                return None  # not the shortest encoding: wsproto refuses it
        elif size == 127:
            return None  # 64-bit lengths are for large frames
        if size >= _SMALL_MESSAGE:
            return None
        limit = self.max_message_size
        if limit is not None and size > limit:
            return None  # refused (1009) by the regular path
        key_at = start + head
        payload_at = key_at + (4 if masked else 0)
        end = payload_at + size
        if len(data) < end:
            return None
        payload = bytes(data[payload_at:end])
        if masked and size:
            payload = bytes(apply_mask(payload, bytes(data[key_at:payload_at])))
        buffer.bytes_used = end
        buffer.commit()
        return payload

    def receive_bytes(self, data: bytes) -> None:
        pending = self._pending
        if pending is not None:
            count = min(self._pending_size - len(pending), len(data))
            pending += memoryview(data)[:count]
            data = data[count:]
        elif self.header is None and not len(self.buffer) and self.whole_frames_up_to:
            # At a frame boundary: a data frame that fits the limit but not this read gets
            # its payload buffer now, and only its header goes through wsproto's buffer.
            # parse_header() still validates that header before the payload is used.
            split, size = _payload_start(data, self.whole_frames_up_to)
            if split:
                self._pending = bytearray(memoryview(data)[split:])
                self._pending_size = size
                data = data[:split]
        if data:
            self.buffer.feed(data)

    def process_buffer(self) -> Frame | None:
        if self.extensions:
            return super().process_buffer()
        if not self.header:
            buffer = self.buffer
            # The header starts at bytes_used (the buffer is committed after each one).
            head = bytes(buffer.buffer[buffer.bytes_used : buffer.bytes_used + _MAX_HEADER])
            if not self.parse_header():
                return None
            self._masking_key = _masking_key(head)
            self._check_message()
        header = self.header
        assert header is not None  # parse_header() sets it, as in wsproto
        assert self.effective_opcode is not None
        buffer = self.buffer
        payload: bytearray
        if self._pending is not None:
            # This frame's payload goes to the pending buffer (its header was all that went
            # into wsproto's buffer, and parse_header() accepted it).
            if len(self._pending) < self._pending_size:
                return None
            payload = self._pending
            self._pending = None
            return self._emit(header, payload)
        if len(buffer) < self.payload_required:
            return None
        # parse_header() committed the header, so the payload starts at bytes_used.
        data = buffer.buffer
        start = buffer.bytes_used
        available = len(data) - start
        remaining = header.payload_len - self.payload_consumed
        if available <= 0 and remaining > 0:
            return None
        if available < remaining and header.payload_len <= self.whole_frames_up_to:
            return None  # emitted whole, once the rest arrived
        if available <= remaining:
            # The buffer holds nothing past this payload: take the buffer itself. Deleting a
            # bytearray's head only moves its start, so this copies nothing.
            payload = data
            del payload[:start]
            buffer.buffer = bytearray()
            buffer.bytes_used = 0
        else:
            payload = data[start : start + remaining]
            buffer.bytes_used = start + remaining
            buffer.commit()
        return self._emit(header, payload)

    def _check_message(self) -> None:
        """Account for the header just parsed in its message; refuse a data message once it
        declares more than the limit.

        Raises:
            ParseFailed: with code 1009 (message too big).
        """
        header = self.header
        assert header is not None  # parse_header() set it, as in wsproto
        if header.opcode.iscontrol():
            return
        declared = header.payload_len
        if header.opcode is Opcode.CONTINUATION:
            declared += self._message_bytes
        limit = self.max_message_size
        if limit is not None and declared > limit:
            msg = f"message of {declared} bytes or more, over the limit of {limit}"
            raise ParseFailed(msg, CloseReason.MESSAGE_TOO_BIG)
        # A misplaced CONTINUATION or a new message inside one is wsproto's to refuse (its
        # message decoder sees the frame next); the count only has to stay bounded meanwhile.
        self._in_message = not header.fin
        self._message_bytes = declared if self._in_message else 0

    def _emit(self, header: Header, received: bytearray) -> Frame:
        assert self.effective_opcode is not None
        offset = self.payload_consumed
        self.payload_consumed += len(received)
        finished = self.payload_consumed == header.payload_len
        key = self._masking_key
        payload: bytes | bytearray = received
        if key is not None and received:
            # One pass into a new buffer (the compiled masker has no in-place form); the
            # received one is dropped.
            payload = apply_mask(received, key, offset)
        frame = Frame(
            self.effective_opcode,
            # Control payloads are small and wsproto's close parsing expects bytes; data
            # payloads may stay bytearrays (wsproto's stub says bytes, but only reads them).
            bytes(payload) if header.opcode.iscontrol() else cast("bytes", payload),
            finished,
            header.fin,
        )
        if finished:
            self.header = None
            self.effective_opcode = None
            self.masker = None
        else:
            self.effective_opcode = Opcode.CONTINUATION
        return frame


def _masking_key(head: bytes) -> bytes | None:
    """The masking key in ``head``, the start of a frame header that wsproto's
    parse_header() accepted (so it is complete), or None when the frame is not masked."""
    if not head[1] & _MASK_BIT:
        return None
    length = head[1] & 0x7F
    start = 2 + (2 if length == 126 else 8 if length == 127 else 0)
    return head[start : start + 4]


def _payload_start(data: bytes, limit: int) -> tuple[int, int]:
    """(header length, payload length) when ``data`` starts with the complete header of a
    data frame (text, binary, continuation) whose payload is at most ``limit`` bytes and does
    not all fit in ``data``; (0, 0) otherwise. Reads the length fields only: validating the
    header is wsproto's parse_header()."""
    if len(data) < 2 or data[0] & 0x0F > 2:
        return 0, 0
    size = data[1] & 0x7F
    split = 2
    if size == 126:
        split = 4
        size = int.from_bytes(data[2:4], "big")
    elif size == 127:
        split = 10
        size = int.from_bytes(data[2:10], "big")
    if data[1] & _MASK_BIT:
        split += 4
    if len(data) < split or size > limit or len(data) - split >= size:
        return 0, 0
    return split, size


class _FastFrameProtocol(FrameProtocol):
    """wsproto's FrameProtocol building frames with :func:`encode_frame` (one buffer)."""

    def _serialize_frame(
        self, opcode: Opcode, payload: bytes | bytearray = b"", fin: bool = True
    ) -> bytearray:
        if self.extensions:
            return super()._serialize_frame(opcode, payload, fin)
        # wsproto's callers only concatenate the result; bytes does as well as bytearray.
        return encode_frame(opcode, payload, fin=fin, masked=self.client)  # type: ignore[return-value]


def accelerate(
    ws: wsproto.WSConnection,
    *,
    whole_frames_up_to: int = 0,
    max_message_size: int | None = None,
) -> FastFrameDecoder | None:
    """Switch an established connection's frame handling to this module's faster paths, and
    return its decoder (see :class:`FastFrameDecoder` for ``whole_frames_up_to``: pass the
    largest message accepted, or 0 to receive payloads in parts as they arrive; and for
    ``max_message_size``, the limit checked at each frame's header).

    Call it once the handshake is complete (before or after frames arrived: the switch keeps
    all parser state). Returns None, changing nothing, when the wsproto version is not one
    this module was checked against, when an extension (e.g. permessage-deflate) is active,
    or when the connection is not established or already switched.

    Raises nothing.
    """
    if not SUPPORTED:
        return None
    connection = ws.connection
    if not isinstance(connection, Connection):
        return None
    proto = getattr(connection, "_proto", None)
    decoder = getattr(proto, "_frame_decoder", None)
    if type(proto) is not FrameProtocol or type(decoder) is not FrameDecoder:
        return None
    if proto.extensions or decoder.extensions:
        return None
    proto.__class__ = _FastFrameProtocol
    decoder.__class__ = FastFrameDecoder
    assert isinstance(decoder, FastFrameDecoder)
    decoder.whole_frames_up_to = whole_frames_up_to
    decoder.max_message_size = max_message_size
    return decoder
