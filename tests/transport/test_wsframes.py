"""The WebSocket fast payload paths against wsproto's own behaviour (RFC 6455 framing)."""

from __future__ import annotations

import itertools
import os
import socket
from typing import Any

import pytest
import trio
import wsproto
from hypothesis import given, strategies as st
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    Request,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import Opcode

from librorum.protocol import Command
from librorum.protocol.constants import DEFAULT_MAX_PAYLOAD
from librorum.protocol.framing import encode_frame as encode_lbru_frame
from librorum.transport import connect_websocket
from librorum.transport._wsframes import (
    accelerate,
    apply_mask,
    encode_frame,
    frame_buffers,
    mask_python,
    native_masker,
)
from librorum.transport.websocket import _batch, _send_vectored

from .conftest import DEADLINE, TOKEN, echo, ws_server, ws_url


def open_pair(
    *, fast: bool, whole_frames_up_to: int = 0
) -> tuple[wsproto.WSConnection, wsproto.WSConnection]:
    """A client and a server connection after the handshake, accelerated or plain wsproto."""
    client = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    server = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
    server.receive_data(client.send(Request(host="example", target="/")))
    assert [type(e) for e in server.events()] == [Request]
    client.receive_data(server.send(AcceptConnection()))
    assert [type(e) for e in client.events()] == [AcceptConnection]
    if fast:
        assert accelerate(client, whole_frames_up_to=whole_frames_up_to)
        assert accelerate(server, whole_frames_up_to=whole_frames_up_to)
    return client, server


def feed(conn: wsproto.WSConnection, wire: bytes, cuts: list[int]) -> list[tuple[Any, ...]]:
    """Feed ``wire`` in pieces cut at ``cuts``; the events, as comparable tuples, with each
    message's parts joined (how they were split depends on the cuts and the mode only)."""
    out: list[tuple[Any, ...]] = []
    parts: list[bytes] = []
    text: list[str] = []
    bounds = [0, *sorted(c % (len(wire) + 1) for c in cuts), len(wire)]
    for start, end in itertools.pairwise(bounds):
        conn.receive_data(wire[start:end])
        for event in conn.events():
            if isinstance(event, BytesMessage):
                parts.append(bytes(event.data))
                if event.message_finished:
                    out.append(("bytes", b"".join(parts)))
                    parts = []
            elif isinstance(event, TextMessage):
                text.append(event.data)
                if event.message_finished:
                    out.append(("text", "".join(text)))
                    text = []
            elif isinstance(event, Ping | Pong):
                out.append((type(event).__name__, bytes(event.payload)))
            elif isinstance(event, CloseConnection):
                out.append(("close", event.code, event.reason))
            else:
                out.append((type(event).__name__,))
    return out


# One step of a peer's sending: a binary message (maybe in fragments), a text message, a ping
# or a pong, possibly in the middle of a fragmented binary message (RFC 6455 5.4 allows it).
payloads = st.one_of(
    st.binary(max_size=300),
    st.sampled_from([0, 125, 126, 127, 65535, 65536, 70_001]).map(lambda n: os.urandom(n)),
)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("bytes"), st.lists(payloads, min_size=1, max_size=4)),
        st.tuples(st.just("text"), st.text(max_size=50)),
        st.tuples(st.just("ping"), st.binary(max_size=125)),
        st.tuples(st.just("pong"), st.binary(max_size=125)),
    ),
    max_size=6,
)


def wire_of(sender: wsproto.WSConnection, script: list[tuple[str, Any]], close: bool) -> bytes:
    wire = bytearray()
    for kind, value in script:
        if kind == "bytes":
            for i, fragment in enumerate(value):
                last = i == len(value) - 1
                wire += sender.send(BytesMessage(fragment, message_finished=last))
                if not last and len(fragment) % 3 == 0:
                    wire += sender.send(Ping(b"between fragments"))
        elif kind == "text":
            wire += sender.send(TextMessage(value))
        elif kind == "ping":
            wire += sender.send(Ping(value))
        else:
            wire += sender.send(Pong(value))
    if close:
        wire += sender.send(CloseConnection(code=1000, reason="bye"))
    return bytes(wire)


@given(
    script=steps,
    cuts=st.lists(st.integers(min_value=0), max_size=8),
    close=st.booleans(),
    whole=st.sampled_from([0, 1, 125, 65536, 1 << 20]),
)
def test_received_events_match_wsproto_both_directions(
    script: list[tuple[str, Any]], cuts: list[int], close: bool, whole: int
) -> None:
    # Client to server: masked frames (the sender is plain wsproto, a fresh key per frame).
    plain_client, plain_server = open_pair(fast=False)
    _, fast_server = open_pair(fast=True, whole_frames_up_to=whole)
    upstream = wire_of(plain_client, script, close)
    assert feed(fast_server, upstream, cuts) == feed(plain_server, upstream, cuts)
    # Server to client: unmasked frames, built by the accelerated server this time.
    plain_client, plain_server = open_pair(fast=False)
    fast_client, fast_server = open_pair(fast=True, whole_frames_up_to=whole)
    downstream = wire_of(fast_server, script, close)
    assert downstream == wire_of(plain_server, script, close), "server frames differ"
    assert feed(fast_client, downstream, cuts) == feed(plain_client, downstream, cuts)


def feed_taking_small(
    conn: wsproto.WSConnection, wire: bytes, cuts: list[int]
) -> list[tuple[Any, ...]]:
    """As :func:`feed`, reading as the connection does: a small whole binary message by
    take_small_message while one is there, wsproto's events otherwise, one event at a time."""
    decoder = accelerate(conn, whole_frames_up_to=1 << 20)
    assert decoder is not None
    out: list[tuple[Any, ...]] = []
    parts: list[bytes] = []
    text: list[str] = []
    bounds = [0, *sorted(c % (len(wire) + 1) for c in cuts), len(wire)]
    for start, end in itertools.pairwise(bounds):
        conn.receive_data(wire[start:end])
        while True:
            if not parts and conn.state is ConnectionState.OPEN:
                small = decoder.take_small_message()
                if small is not None:
                    out.append(("bytes", small))
                    continue
            event = next(iter(conn.events()), None)
            if event is None:
                break
            if isinstance(event, BytesMessage):
                parts.append(bytes(event.data))
                if event.message_finished:
                    out.append(("bytes", b"".join(parts)))
                    parts = []
            elif isinstance(event, TextMessage):
                text.append(event.data)
                if event.message_finished:
                    out.append(("text", "".join(text)))
                    text = []
            elif isinstance(event, Ping | Pong):
                out.append((type(event).__name__, bytes(event.payload)))
            elif isinstance(event, CloseConnection):
                out.append(("close", event.code, event.reason))
                if conn.state is not ConnectionState.CLOSED:
                    break  # refused bytes: wsproto parses nothing more
            else:
                out.append((type(event).__name__,))
    return out


@given(script=steps, cuts=st.lists(st.integers(min_value=0), max_size=8), close=st.booleans())
def test_small_messages_taken_directly_match_wsproto_both_directions(
    script: list[tuple[str, Any]], cuts: list[int], close: bool
) -> None:
    plain_client, plain_server = open_pair(fast=False)
    _, server = open_pair(fast=False)
    upstream = wire_of(plain_client, script, close)
    assert feed_taking_small(server, upstream, cuts) == feed(plain_server, upstream, cuts)
    plain_client, plain_server = open_pair(fast=False)
    client, _ = open_pair(fast=False)
    downstream = wire_of(plain_server, script, close)
    assert feed_taking_small(client, downstream, cuts) == feed(plain_client, downstream, cuts)


@pytest.mark.parametrize(
    ("frame", "why"),
    [
        (b"\x82\x7e\x00\x05abcde", "length not in its shortest encoding"),
        (b"\xc2\x05abcde", "reserved bit"),
        (b"\x82\x05abcde", "unmasked frame to a server"),
        (b"\x8f\x85\x00\x00\x00\x00abcde", "unknown opcode"),
    ],
)
def test_small_frames_that_break_the_rfc_are_left_to_wsproto(frame: bytes, why: str) -> None:
    _, server = open_pair(fast=False)
    decoder = accelerate(server, whole_frames_up_to=1 << 20)
    assert decoder is not None
    server.receive_data(frame)
    assert decoder.take_small_message() is None, why
    [event] = list(server.events())
    assert isinstance(event, CloseConnection)
    assert event.code == 1002


def test_a_small_message_over_the_limit_is_refused_by_the_regular_path() -> None:
    client, server, decoder = fast_server(max_message_size=10, whole_frames_up_to=10)
    server.receive_data(client.send(BytesMessage(bytes(11))))
    assert decoder.take_small_message() is None
    [event] = list(server.events())
    assert isinstance(event, CloseConnection)
    assert event.code == 1009


@given(script=steps)
def test_accelerated_client_frames_parse_in_plain_wsproto(script: list[tuple[str, Any]]) -> None:
    fast_client, _ = open_pair(fast=True)
    plain_client, plain_server = open_pair(fast=False)
    _, reference_server = open_pair(fast=False)
    wire = wire_of(fast_client, script, close=True)
    reference = wire_of(plain_client, script, close=True)
    # The keys differ, so the bytes do; what a plain server makes of them must not.
    assert feed(plain_server, wire, []) == feed(reference_server, reference, [])


#: Message sizes around the length encodings (7-bit, 16-bit, 64-bit) and the limit below.
MESSAGE_SIZES = [0, 1, 125, 126, 5000, 65536, 70_000]
#: Reads of a few bytes split headers and trickle payloads in; over a large message they add
#: nothing that reads of a page do not, except tens of thousands of steps.
SMALL_READS = [1, 7, 4096, 1 << 20]
LARGE_READS = [4096, 1 << 20]


def message_and_read_size(size: int) -> st.SearchStrategy[tuple[int, int]]:
    reads = SMALL_READS if size <= 5000 else LARGE_READS
    return st.tuples(st.just(size), st.sampled_from(reads))


@given(
    messages=st.lists(
        st.sampled_from(MESSAGE_SIZES).flatmap(message_and_read_size), min_size=1, max_size=5
    ),
    masked=st.booleans(),
)
def test_reading_what_is_missing_gives_whole_messages(
    messages: list[tuple[int, int]], masked: bool
) -> None:
    # A reader that never asks for more than missing() (when it says something is missing)
    # gets every message up to the limit as exactly one event, in one buffer. Each message is
    # read in reads of its own size (a read may run on into the next message).
    limit = 65536
    client, server = open_pair(fast=False)
    sender, receiver = (client, server) if masked else (server, client)
    decoder = accelerate(receiver, whole_frames_up_to=limit)
    assert decoder is not None
    payloads = [os.urandom(size) for size, _ in messages]
    frames = [sender.send(BytesMessage(p)) for p in payloads]
    ends = list(itertools.accumulate(len(frame) for frame in frames))
    wire = b"".join(frames)
    largest_read = max(read_size for _, read_size in messages)
    position = 0
    events: list[BytesMessage] = []
    while position < len(wire):
        read_size = next(r for (_, r), end in zip(messages, ends, strict=True) if position < end)
        size = min(read_size, decoder.missing() or read_size)
        receiver.receive_data(wire[position : position + size])
        position += size
        events += [e for e in receiver.events() if isinstance(e, BytesMessage)]
        assert len(decoder.buffer) <= limit + largest_read + 14, "bounded by the limit and a read"
    small = [p for p in payloads if len(p) <= limit]
    whole = [bytes(e.data) for e in events if e.message_finished and e.frame_finished]
    assert b"".join(bytes(e.data) for e in events) == b"".join(payloads)
    for payload in small:
        assert payload in whole


@given(
    data=st.binary(max_size=1000),
    key=st.binary(min_size=4, max_size=4),
    offset=st.integers(min_value=0, max_value=7),
)
def test_mask_is_xor_with_the_rotated_key(data: bytes, key: bytes, offset: int) -> None:
    masked = apply_mask(data, key, offset)
    assert masked == bytes(b ^ key[(offset + i) % 4] for i, b in enumerate(data))
    assert apply_mask(masked, key, offset) == data


def test_the_compiled_masker_is_installed() -> None:
    # The package is a dependency: without its masker, uploads over WebSocket silently drop
    # to a twentieth of the speed. (The fallback is what the tests below compare it with.)
    assert native_masker() is not None


@given(
    data=st.binary(max_size=5000),
    key=st.binary(min_size=4, max_size=4),
    offset=st.integers(min_value=0, max_value=1 << 40),
    start=st.integers(min_value=0, max_value=7),
    kind=st.sampled_from([bytes, bytearray, memoryview]),
)
def test_compiled_and_fallback_masks_give_identical_bytes(
    data: bytes, key: bytes, offset: int, start: int, kind: type[Any]
) -> None:
    native = native_masker()
    assert native is not None
    # Any buffer, also a view that does not start at the beginning of its object.
    view = memoryview(kind(data) if kind is not memoryview else data)[start % (len(data) + 1) :]
    shift = offset & 3
    rotated = key[shift:] + key[:shift]
    expected = bytes(mask_python(view, rotated))
    assert bytes(native(view, rotated)) == expected
    assert bytes(apply_mask(view, key, offset)) == expected


@given(
    parts=st.lists(st.binary(max_size=300), max_size=5),
    masked=st.booleans(),
    opcode=st.sampled_from([Opcode.BINARY, Opcode.CONTINUATION]),
    fin=st.booleans(),
)
def test_a_frame_from_parts_is_the_frame_of_their_join(
    parts: list[bytes], masked: bool, opcode: Opcode, fin: bool
) -> None:
    payload = b"".join(parts)
    frame = encode_frame(opcode, [memoryview(p) for p in parts], fin=fin, masked=masked)
    whole = encode_frame(opcode, payload, fin=fin, masked=masked)
    header = len(whole) - len(payload)
    assert len(frame) == len(whole)
    if not masked:
        assert frame == whole
        return
    # Masked: the same header, a fresh key each, and each payload unmasks to the join.
    assert frame[: header - 4] == whole[: header - 4]
    key = frame[header - 4 : header]
    assert apply_mask(frame[header:], key) == payload


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 125, 126, 127, 65535, 65536, 1 << 20])
def test_masked_frames_parse_in_wsproto(size: int) -> None:
    payload = os.urandom(size)
    server = wsproto.connection.Connection(wsproto.connection.ConnectionType.SERVER)
    frame = encode_frame(Opcode.BINARY, payload, masked=True)
    assert frame[1] & 0x80, "client frames are masked"
    server.receive_data(bytes(frame))
    events = list(server.events())
    assert all(isinstance(e, BytesMessage) for e in events)
    assert b"".join(e.data for e in events) == payload
    assert events[-1].message_finished


@given(
    sizes=st.lists(
        st.sampled_from([0, 1, 20, 125, 126, (16 << 10) - 1, 16 << 10, 70_000]), max_size=5
    ),
    masked=st.booleans(),
)
def test_frame_buffers_are_the_frame_with_large_parts_apart(sizes: list[int], masked: bool) -> None:
    parts = [os.urandom(size) for size in sizes]
    buffers = frame_buffers(Opcode.BINARY, parts, masked=masked)
    large = [p for p in parts if len(p) >= 16 << 10]
    # Each large part is a buffer of its own; what lies between them is joined.
    assert len(buffers) <= 2 * len(large) + 1
    if not masked:
        assert all(any(b is p for b in buffers) for p in large), "unmasked parts are not copied"
    server = wsproto.connection.Connection(wsproto.connection.ConnectionType.SERVER)
    client = wsproto.connection.Connection(wsproto.connection.ConnectionType.CLIENT)
    receiver = server if masked else client
    receiver.receive_data(b"".join(buffers))
    events = list(receiver.events())
    assert all(isinstance(e, BytesMessage) for e in events)
    assert b"".join(e.data for e in events) == b"".join(parts)
    assert events[-1].message_finished


async def test_a_vectored_send_resumes_after_partial_writes() -> None:
    # A small send buffer makes the kernel take each sendmsg in pieces, cut inside buffers.
    left, right = trio.socket.socketpair()
    left.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    buffers: list[Any] = [b"head", os.urandom(300_000), bytearray(b"mid"), os.urandom(70_001)]
    buffers.append(memoryview(os.urandom(1000))[10:])
    expected = b"".join(buffers)
    received = bytearray()

    async def read() -> None:
        while len(received) < len(expected):
            data = await right.recv(7001)
            assert data
            received.extend(data)

    with trio.fail_after(DEADLINE), left, right:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            sent = [0]
            await _send_vectored(left, buffers, sent)
    assert received == expected
    assert sent == [len(expected)]


def test_a_batch_joins_small_buffers_across_frames_and_knows_where_each_ends() -> None:
    big = os.urandom(70_000)
    frames: list[list[Any]] = [[b"a", b"bc"], [b"hdr", big, b"tail"], [b"x"], [b"y" * 20]]
    items, ends = _batch(frames)
    assert items == [b"abchdr", big, b"tailx" + b"y" * 20]
    assert items[1] is big, "large buffers are not copied"
    assert ends == list(itertools.accumulate(sum(len(b) for b in f) for f in frames))


def test_masked_frames_use_fresh_keys() -> None:
    keys = {bytes(encode_frame(Opcode.BINARY, b"x" * 10, masked=True)[2:6]) for _ in range(50)}
    assert len(keys) > 40


def test_control_frames_keep_their_limits() -> None:
    with pytest.raises(ValueError, match="too long"):
        encode_frame(Opcode.PING, bytes(126), masked=True)
    with pytest.raises(ValueError, match="fragmented"):
        encode_frame(Opcode.PING, b"", fin=False, masked=False)


@pytest.mark.parametrize("whole", [0, 1 << 20])
@pytest.mark.parametrize("violation", ["wrong masking", "reserved bit"])
@pytest.mark.parametrize("to_server", [True, False])
def test_protocol_violations_still_close_with_1002(
    to_server: bool, violation: str, whole: int
) -> None:
    # A server must refuse an unmasked frame, a client a masked one (RFC 6455 5.1); RSV bits
    # need a negotiated extension (5.2). Fed as a header and part of the payload, so that
    # the whole-frame mode has already set a payload buffer aside when the header is judged.
    client, server = open_pair(fast=True, whole_frames_up_to=whole)
    receiver = server if to_server else client
    masked = to_server == (violation == "reserved bit")
    frame = bytearray(encode_frame(Opcode.BINARY, bytes(1000), masked=masked))
    if violation == "reserved bit":
        frame[0] |= 0x40
    receiver.receive_data(bytes(frame[:100]))
    events = list(receiver.events())
    assert isinstance(events[-1], CloseConnection)
    assert events[-1].code == 1002


def test_accelerate_only_once_and_only_when_established() -> None:
    fresh = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    assert not accelerate(fresh)
    client, server = open_pair(fast=True)
    assert not accelerate(client)
    assert not accelerate(server)


def test_no_acceleration_with_an_extension() -> None:
    client = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    server = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
    server.receive_data(
        client.send(Request(host="example", target="/", extensions=[PerMessageDeflate()]))
    )
    list(server.events())
    client.receive_data(server.send(AcceptConnection(extensions=[PerMessageDeflate()])))
    assert [type(e) for e in client.events()] == [AcceptConnection]
    assert not accelerate(client)
    assert not accelerate(server)
    # And compressed messages still work, through wsproto's own path.
    server.receive_data(client.send(BytesMessage(b"z" * 5000)))
    assert b"".join(e.data for e in server.events() if isinstance(e, BytesMessage)) == b"z" * 5000


# --- Over real sockets -------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65536, DEFAULT_MAX_PAYLOAD])
async def test_large_frames_round_trip_through_the_server(size: int) -> None:
    frame = encode_lbru_frame(Command.DATA, os.urandom(size), session_id=9)
    with trio.fail_after(DEADLINE):
        async with ws_server(echo) as address:
            client = await connect_websocket(ws_url(address), token=TOKEN)
            for _ in range(3):
                await client.send_frames([(frame,)])
                assert await client.receive_some() == frame
            await client.aclose()


async def test_many_messages_in_one_send_arrive_one_by_one_in_order() -> None:
    # One send_frames call: small frames (one write between them) around large ones.
    frames = [
        encode_lbru_frame(Command.DATA, os.urandom(size), session_id=i + 1)
        for i, size in enumerate([0, 10, 3000, DEFAULT_MAX_PAYLOAD, 5, 70_000] + [1] * 300)
    ]
    with trio.fail_after(DEADLINE):
        async with ws_server(echo) as address:
            client = await connect_websocket(ws_url(address), token=TOKEN)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.send_frames, [(f,) for f in frames])
                for frame in frames:
                    assert await client.receive_some() == frame
            await client.aclose()


async def test_fragmented_masked_messages_with_pings_between_reach_the_handler() -> None:
    # A hand-driven client: one LBRU frame as three WebSocket fragments with a ping between
    # them, written in uneven pieces; the server must answer the ping and reassemble.
    frame = encode_lbru_frame(Command.DATA, os.urandom(200_000), session_id=3)
    with trio.fail_after(DEADLINE):
        async with ws_server(echo) as address:
            sock = trio.socket.socket()
            await sock.connect(address)
            ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
            auth = [(b"authorization", b"Bearer " + TOKEN.encode())]
            await sock.send(ws.send(Request(host="localhost", target="/", extra_headers=auth)))
            events: list[Event] = []
            message = bytearray()
            wire = bytearray()
            while not any(isinstance(e, AcceptConnection) for e in events):
                ws.receive_data(await sock.recv(65536))
                events += ws.events()
            accelerate(ws)
            thirds = [frame[:70_000], frame[70_000:70_001], frame[70_001:]]
            for i, part in enumerate(thirds):
                wire += ws.send(BytesMessage(part, message_finished=i == 2))
                wire += ws.send(Ping(b"p%d" % i))
            for start in range(0, len(wire), 50_001):
                await sock.send(bytes(wire[start : start + 50_001]))
            pongs = []
            while len(message) < len(frame) or len(pongs) < 3:
                data = await sock.recv(1 << 20)
                assert data
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, BytesMessage):
                        message += event.data
                    elif isinstance(event, Pong):
                        pongs.append(bytes(event.payload))
            assert message == frame
            assert pongs == [b"p0", b"p1", b"p2"]
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()


async def test_both_ends_of_a_connection_are_accelerated() -> None:
    # If acceleration stops working (another wsproto), both ends silently fall back to plain
    # wsproto, whose limits apply as the message arrives rather than at its header: say so.
    already: list[bool] = []

    async def check(transport: Any) -> None:
        already.append(not accelerate(transport._ws._ws))
        await echo(transport)

    with trio.fail_after(DEADLINE):
        async with ws_server(check) as address:
            client = await connect_websocket(ws_url(address), token=TOKEN)
            frame = encode_lbru_frame(Command.DATA, b"x")
            await client.send_frames([(frame,)])
            assert await client.receive_some() == frame
            assert not accelerate(client._ws._ws)  # type: ignore[attr-defined]
            await client.aclose()
    assert already == [True]


# --- Message limits and boundaries -----------------------------------------------------------


def fast_server(**kwargs: Any) -> tuple[wsproto.WSConnection, wsproto.WSConnection, Any]:
    """A plain client and an accelerated server, and the server's decoder."""
    client, server = open_pair(fast=False)
    decoder = accelerate(server, **kwargs)
    assert decoder is not None
    return client, server, decoder


def test_a_message_over_the_limit_is_refused_at_its_header() -> None:
    client, server, _ = fast_server(max_message_size=100)
    wire = client.send(BytesMessage(bytes(101)))
    server.receive_data(wire[:6])  # the header and masking key: no payload byte yet
    [event] = server.events()
    assert isinstance(event, CloseConnection)
    assert event.code == 1009
    assert "101 bytes" in event.reason


@pytest.mark.parametrize(
    ("fragments", "refused"),
    [
        ([100], False),
        ([60, 40], False),
        ([60, 41], True),
        ([0, 0, 101], True),
        ([101], True),
    ],
)
def test_the_limit_counts_every_fragment_of_a_message(fragments: list[int], refused: bool) -> None:
    client, server, _ = fast_server(max_message_size=100, whole_frames_up_to=100)
    wire = b"".join(
        client.send(BytesMessage(bytes(size), message_finished=i == len(fragments) - 1))
        for i, size in enumerate(fragments)
    )
    wire += client.send(BytesMessage(bytes(100)))  # the next message starts from zero
    server.receive_data(wire)
    events = list(server.events())
    if refused:
        assert isinstance(events[-1], CloseConnection)
        assert events[-1].code == 1009
        assert not any(isinstance(e, BytesMessage) and e.message_finished for e in events)
    else:
        finished = [e for e in events if isinstance(e, BytesMessage) and e.message_finished]
        assert len(finished) == 2


def test_limit_messages_applies_from_the_next_header() -> None:
    client, server, decoder = fast_server(max_message_size=10, whole_frames_up_to=10)
    decoder.limit_messages(1000)
    server.receive_data(client.send(BytesMessage(bytes(1000))))
    [event] = server.events()
    assert isinstance(event, BytesMessage)
    assert len(event.data) == 1000
    assert decoder.whole_frames_up_to == 1000


def script_and_boundaries(
    sender: wsproto.WSConnection, script: list[tuple[str, Any]]
) -> tuple[bytes, set[int]]:
    """The wire of ``script`` and the offsets in it that end a whole message or control frame
    outside a message (a ping between fragments is inside one)."""
    wire = bytearray()
    boundaries = {0}
    for kind, value in script:
        if kind == "bytes":
            for i, fragment in enumerate(value):
                last = i == len(value) - 1
                wire += sender.send(BytesMessage(fragment, message_finished=last))
                if not last and len(fragment) % 3 == 0:
                    wire += sender.send(Ping(b"between fragments"))
        elif kind == "text":
            wire += sender.send(TextMessage(value))
        elif kind == "ping":
            wire += sender.send(Ping(value))
        else:
            wire += sender.send(Pong(value))
        boundaries.add(len(wire))
    return bytes(wire), boundaries


@given(script=steps, cuts=st.lists(st.integers(min_value=0), max_size=6))
def test_at_message_boundary_exactly_between_messages_and_control_frames(
    script: list[tuple[str, Any]], cuts: list[int]
) -> None:
    client, _ = open_pair(fast=False)
    wire, boundaries = script_and_boundaries(client, script)
    for cut in {c % (len(wire) + 1) for c in cuts} | {len(wire)}:
        _, server, decoder = fast_server(whole_frames_up_to=1 << 20)
        server.receive_data(wire[:cut])
        list(server.events())
        assert decoder.at_message_boundary == (cut in boundaries), cut


def test_a_frame_announced_large_costs_what_arrived() -> None:
    # A peer announcing a maximal frame and sending it a byte at a time must not make the
    # receiver allocate the announced size up front (slowloris over WebSocket).
    import tracemalloc

    size = 1 << 20
    client, server = open_pair(fast=True, whole_frames_up_to=size)
    payload = os.urandom(size)
    wire = client.send(BytesMessage(payload))
    header = len(wire) - size
    tracemalloc.start()
    try:
        server.receive_data(wire[: header + 10])
        for index in range(header + 10, header + 1000):
            server.receive_data(wire[index : index + 1])
        assert list(server.events()) == []
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 64 << 10
    # The rest arrives: the message comes whole and intact.
    server.receive_data(wire[header + 1000 :])
    [message] = list(server.events())
    assert isinstance(message, BytesMessage)
    assert message.data == payload
