"""A WebSocket client that sends whatever it is told, for the tests that play a hostile peer:
hand-built frames (unmasked, reserved bits, bad opcodes, half frames), hand-built HTTP
requests, and LBRU frames that break the one-frame-per-message rule.

It parses what the server sends back with wsproto (the server is the side under test, not
this parser), and reports the LBRU frames received and how the connection ended: the close
code of the server's close frame, or ``None`` when the TCP connection ended without one.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Final

import attrs
import trio
import wsproto
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

from librorum.errors import ErrorCode
from librorum.protocol.constants import (
    DEFAULT_MAX_PAYLOAD,
    HEADER_SIZE,
    MAX_CONTROL_PAYLOAD,
    VERSION,
    Command,
    Flags,
)
from librorum.protocol.converter import decode_message, encode_message
from librorum.protocol.framing import Frame, FrameDecoder, encode_frame
from librorum.protocol.messages import ErrorMessage, Ping as PingRequest
from librorum.protocol.session import ClientSession

#: WebSocket opcodes (RFC 6455 5.2).
CONTINUATION: Final = 0x0
TEXT: Final = 0x1
BINARY: Final = 0x2
CLOSE: Final = 0x8
PING: Final = 0x9
PONG: Final = 0xA

UPGRADE: Final = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


def ws_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    masked: bool = True,
    rsv: int = 0,
    declared: int | None = None,
) -> bytes:
    """One WebSocket frame, as malformed as asked: any opcode, reserved bits (``rsv``, 0-7),
    no mask, or a length field (``declared``) that differs from the payload."""
    size = len(payload) if declared is None else declared
    first = (0x80 if fin else 0) | (rsv & 7) << 4 | opcode & 0x0F
    mask_bit = 0x80 if masked else 0
    if size <= 125:
        header = bytes((first, mask_bit | size))
    elif size <= 0xFFFF:
        header = struct.pack("!BBH", first, mask_bit | 126, size)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, size)
    if not masked:
        return header + payload
    key = os.urandom(4)
    return header + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


@attrs.define
class Outcome:
    """What the server sent until it closed: its LBRU frames and its close code (``None``:
    no close frame came before the TCP connection ended)."""

    frames: list[Frame]
    close_code: int | None
    close_reason: str = ""

    @property
    def errors(self) -> list[int]:
        """The error codes of the ERROR frames received."""
        codes = []
        for frame in self.frames:
            message = decode_message(frame.command, frame.flags, frame.payload)
            if isinstance(message, ErrorMessage):
                codes.append(message.code)
        return codes


class RawWebSocket:
    """One connection to a server under test. Use :meth:`open` for an upgraded one."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self.status = 0
        self.body = b""
        self.headers: list[tuple[bytes, bytes]] = []
        # One sender at a time: a trickling task and the pong answers may both send.
        self._send_lock = trio.Lock()

    @classmethod
    async def connect(
        cls, address: tuple[str, int], *, local_address: str | None = None
    ) -> RawWebSocket:
        """A TCP connection, from ``local_address`` if given (any of 127.0.0.0/8 reaches a
        server on 127.0.0.1, as another client address)."""
        return cls(await trio.open_tcp_stream(*address, local_address=local_address))

    @classmethod
    async def open(
        cls,
        address: tuple[str, int],
        token: str | None,
        *,
        headers: Sequence[tuple[bytes, bytes]] = (),
        local_address: str | None = None,
    ) -> RawWebSocket:
        """Connect and send the upgrade request; :attr:`status` is 101 when accepted, else the
        refusal's status (and :attr:`body` its body), 0 when the server closed unanswered."""
        self = await cls.connect(address, local_address=local_address)
        extra = list(headers)
        if token is not None:
            extra.append((b"authorization", b"Bearer " + token.encode()))
        await self.stream.send_all(
            self.ws.send(Request(host="127.0.0.1", target="/", extra_headers=extra))
        )
        while not self.status:
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                break
            if not data:
                break
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, AcceptConnection):
                    self.status = 101
                elif isinstance(event, RejectConnection):
                    self.status = event.status_code
                    self.headers = list(event.headers)
                    if event.has_body:
                        await self._read_body()
        return self

    def header(self, name: bytes) -> bytes | None:
        """A header of the refusal, if it has it."""
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    async def _read_body(self) -> None:
        while True:
            for event in self.ws.events():
                if isinstance(event, RejectData):
                    self.body += event.data
                    if event.body_finished:
                        return
            data = await self.stream.receive_some(65536)
            if not data:
                return
            self.ws.receive_data(data)

    async def send(self, data: bytes) -> None:
        """Raw bytes onto the wire (frames built with :func:`ws_frame`, or anything)."""
        async with self._send_lock:
            await self.stream.send_all(data)

    async def send_message(self, payload: bytes) -> None:
        """One well-formed binary message."""
        await self.send(ws_frame(BINARY, payload))

    async def hello(self) -> None:
        """Send HELLO and wait for its reply (the LBRU handshake)."""
        session = ClientSession()
        session.hello()
        [(header, payload)] = session.frames_to_send()
        await self.send_message(header + bytes(payload))
        frame = await self.next_frame()
        assert frame is not None, "the server closed instead of answering HELLO"

    async def next_frame(self) -> Frame | None:
        """The next LBRU frame (one binary message), answering pings on the way; ``None``
        once the server closed."""
        while True:
            for event in self.ws.events():
                if isinstance(event, BytesMessage):
                    return _one_frame(bytes(event.data))
                if isinstance(event, Ping):
                    await self.send(ws_frame(PONG, bytes(event.payload)))
                elif isinstance(event, CloseConnection):
                    self._close = event
                    return None
                elif isinstance(event, TextMessage):
                    msg = "the server sent a text message"
                    raise AssertionError(msg)
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                data = b""
            if not data:
                return None
            self.ws.receive_data(data)

    _close: CloseConnection | None = None

    async def outcome(self) -> Outcome:
        """Read until the server closes; answer its close frame, close the TCP connection."""
        frames = []
        while (frame := await self.next_frame()) is not None:
            frames.append(frame)
        close = self._close
        if close is not None:
            await _ignore_errors(self.send(ws_frame(CLOSE, close_payload(close.code))))
        await self.stream.aclose()
        if close is None:
            return Outcome(frames, None)
        return Outcome(frames, int(close.code), close.reason or "")

    async def aclose(self) -> None:
        await self.stream.aclose()


async def trickle(
    send: Callable[[bytes], Awaitable[None]], pieces: Iterable[bytes], interval: float
) -> None:
    """Send each piece ``interval`` seconds after the last, until done or until the server
    hangs up: its hanging up is what the trickling tests wait for, not an error."""
    try:
        for piece in pieces:
            await trio.sleep(interval)
            await send(piece)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def _ignore_errors(send: object) -> None:
    try:
        await send  # type: ignore[misc]
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


def _one_frame(message: bytes) -> Frame:
    decoder = FrameDecoder(
        expected_version=VERSION,
        max_payload=DEFAULT_MAX_PAYLOAD,
        max_control_payload=MAX_CONTROL_PAYLOAD,
    )
    decoder.receive_data(message)
    frames = list(decoder)
    assert len(frames) == 1, "the server sent a message that is not exactly one frame"
    assert decoder.buffered == 0
    return frames[0]


async def http_exchange(
    address: tuple[str, int],
    request: bytes,
    *,
    limit: int = 65536,
    local_address: str | None = None,
) -> bytes:
    """Send ``request`` as is; return what the server answers before it closes (at most
    ``limit`` bytes), or the head of a 101 response."""
    stream = await trio.open_tcp_stream(*address, local_address=local_address)
    async with stream:
        try:
            await stream.send_all(request)
        except trio.BrokenResourceError:
            pass  # refused before all was sent: the answer may still be there
        response = bytearray()
        while len(response) < limit:
            try:
                data = await stream.receive_some(limit - len(response))
            except trio.BrokenResourceError:
                break
            if not data:
                break
            response += data
            if response.startswith(b"HTTP/1.1 101 ") and b"\r\n\r\n" in response:
                break  # upgraded: the server will not close
        return bytes(response)


def status_of(response: bytes) -> int:
    """The status code of an HTTP response (0 when there is none)."""
    line = response.split(b"\r\n", 1)[0].split()
    return int(line[1]) if len(line) >= 2 and line[1].isdigit() else 0


# --- The bad-input classes ---------------------------------------------------------------------

MIB = 1 << 20
END = int(Flags.END)


def header(command: Command, size: int, *, flags: int = END, session_id: int = 1) -> bytes:
    """An LBRU header declaring ``size`` payload bytes, whatever follows it."""
    return struct.pack("!4sBBHIQ", b"LBRU", 1, int(command), flags, size, session_id)


def data_message(size: int) -> bytes:
    """One binary message of ``size`` bytes holding a DATA frame for a stream that does not
    exist (so a message that gets through the transport fails in the session instead)."""
    return ws_frame(BINARY, header(Command.DATA, size - HEADER_SIZE) + bytes(size - HEADER_SIZE))


@attrs.frozen
class Case:
    """What a peer sends (after HELLO unless ``hello`` is False) and what it must get back."""

    wire: bytes
    error: ErrorCode
    close_code: int
    hello: bool = True


PING_PAYLOAD = encode_message(PingRequest(b"are you there"))
PING_FRAME = encode_frame(Command.PING, PING_PAYLOAD, session_id=1, flags=END)
LBRU_CASES = {
    "empty message": Case(ws_frame(BINARY), ErrorCode.PROTOCOL_ERROR, 1002),
    "10 bytes of a header": Case(ws_frame(BINARY, PING_FRAME[:10]), ErrorCode.PROTOCOL_ERROR, 1002),
    "two frames in one message": Case(
        ws_frame(BINARY, PING_FRAME * 2), ErrorCode.PROTOCOL_ERROR, 1002
    ),
    "a frame and trailing bytes": Case(
        ws_frame(BINARY, PING_FRAME + b"xyz"), ErrorCode.PROTOCOL_ERROR, 1002
    ),
    "header declaring 2**32-1": Case(
        ws_frame(BINARY, header(Command.STAT, 2**32 - 1)), ErrorCode.FRAME_TOO_LARGE, 1009
    ),
    "header declaring 64 KiB + 1": Case(
        ws_frame(BINARY, header(Command.STAT, MAX_CONTROL_PAYLOAD + 1)),
        ErrorCode.FRAME_TOO_LARGE,
        1009,
    ),
    "text message": Case(ws_frame(TEXT, b"hello"), ErrorCode.PROTOCOL_ERROR, 1002),
    "8 KiB before HELLO": Case(
        ws_frame(BINARY, header(Command.HELLO, 8192) + bytes(8192)),
        ErrorCode.FRAME_TOO_LARGE,
        1009,
        hello=False,
    ),
    "message over 1 MiB": Case(
        data_message(HEADER_SIZE + MIB + 1), ErrorCode.FRAME_TOO_LARGE, 1009
    ),
    "fragments adding up to over 1 MiB": Case(
        ws_frame(BINARY, header(Command.DATA, MIB) + bytes(MIB // 2), fin=False)
        + ws_frame(CONTINUATION, bytes(MIB // 2 + 1)),
        ErrorCode.FRAME_TOO_LARGE,
        1009,
    ),
}
WEBSOCKET_CASES = {
    "unmasked frame": Case(
        ws_frame(BINARY, PING_FRAME, masked=False), ErrorCode.PROTOCOL_ERROR, 1002
    ),
    "reserved bits": Case(ws_frame(BINARY, PING_FRAME, rsv=4), ErrorCode.PROTOCOL_ERROR, 1002),
    "reserved opcode": Case(ws_frame(0x3, PING_FRAME), ErrorCode.PROTOCOL_ERROR, 1002),
    "reserved control opcode": Case(ws_frame(0xB), ErrorCode.PROTOCOL_ERROR, 1002),
    "stray continuation": Case(ws_frame(CONTINUATION, b"x"), ErrorCode.PROTOCOL_ERROR, 1002),
    "fragmented control frame": Case(ws_frame(PING, fin=False), ErrorCode.PROTOCOL_ERROR, 1002),
    "ping over 125 bytes": Case(ws_frame(PING, bytes(126)), ErrorCode.PROTOCOL_ERROR, 1002),
    "close code 999": Case(ws_frame(CLOSE, close_payload(999)), ErrorCode.PROTOCOL_ERROR, 1002),
    "close code 1005 (local only)": Case(
        ws_frame(CLOSE, close_payload(1005)), ErrorCode.PROTOCOL_ERROR, 1002
    ),
    "1-byte close payload": Case(ws_frame(CLOSE, b"\x03"), ErrorCode.PROTOCOL_ERROR, 1002),
    "invalid UTF-8 in a text frame": Case(
        ws_frame(TEXT, b"\xff\xfe"), ErrorCode.PROTOCOL_ERROR, 1007
    ),
    "invalid UTF-8 in a close reason": Case(
        ws_frame(CLOSE, close_payload(1000, b"\xff")), ErrorCode.PROTOCOL_ERROR, 1007
    ),
    "new message inside a fragmented one": Case(
        ws_frame(BINARY, PING_FRAME[:4], fin=False) + ws_frame(BINARY, PING_FRAME),
        ErrorCode.PROTOCOL_ERROR,
        1002,
    ),
}


async def attack(address: tuple[str, int], token: str, case: Case) -> Outcome:
    ws = await RawWebSocket.open(address, token)
    assert ws.status == 101
    if case.hello:
        await ws.hello()
    await ws.send(case.wire)
    return await ws.outcome()


def request_cases(token: str) -> dict[str, tuple[bytes, int]]:
    """Upgrade requests a server must refuse, and the HTTP status it must refuse them with
    (the others carry ``token``, so that only what is wrong with them is refused)."""
    bearer = b"Authorization: Bearer " + token.encode() + b"\r\n"
    key = b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    return {
        "not HTTP": (b"GARBAGE\r\n\r\n", 400),
        "not GET": (UPGRADE.replace(b"GET", b"POST") + bearer + b"\r\n", 400),
        "no Sec-WebSocket-Key": (UPGRADE.replace(key, b"") + bearer + b"\r\n", 400),
        "two Sec-WebSocket-Keys": (
            UPGRADE + b"Sec-WebSocket-Key: c2Vjb25kIGtleSBoZXJlIQ==\r\n" + bearer + b"\r\n",
            400,
        ),
        "another WebSocket version": (
            UPGRADE.replace(b"Version: 13", b"Version: 8") + bearer + b"\r\n",
            426,
        ),
        "non-ASCII Host": (
            UPGRADE.replace(b"Host: 127.0.0.1", b"Host: \xff\xfe") + bearer + b"\r\n",
            400,
        ),
        "no Upgrade header": (
            UPGRADE.replace(b"Upgrade: websocket\r\n", b"") + bearer + b"\r\n",
            400,
        ),
        "64 KiB of headers": (
            UPGRADE + bearer + b"X-Flood: " + b"a" * (64 << 10) + b"\r\n\r\n",
            431,
        ),
    }
