"""The WebSocket transport and listener, over real sockets on 127.0.0.1."""

from __future__ import annotations

import hmac
import inspect
import logging
import os
import socket
import ssl
import struct
from pathlib import Path
from typing import Any, cast

import pytest
import trio
import trio.testing
import trio_websocket
import wsproto
from wsproto.events import AcceptConnection, Request

from librorum.config import ConfigError
from librorum.errors import (
    ConnectionClosed,
    ConnectionLimitError,
    ConnectionTimeoutError,
    ErrorCode,
    FrameTooLargeError,
    LocalProtocolError,
    RemoteProtocolError,
    UnauthorizedError,
)
from librorum.limits import WS_MAX_REQUEST_HEAD, WS_RECEIVE_BUFFER
from librorum.protocol import Command
from librorum.protocol.constants import DEFAULT_MAX_PAYLOAD, HEADER_SIZE, WS_MAX_MESSAGE_SIZE
from librorum.protocol.framing import FileRegion, encode_frame, encode_frame_parts
from librorum.transport import (
    FrameTransport,
    base as transport_base,
    connect_websocket,
    serve_websocket,
    websocket as ws_module,
    ws_server as ws_server_module,
)

from ..rawws import (
    BINARY,
    CONTINUATION,
    PING,
    PONG,
    UPGRADE,
    RawWebSocket,
    http_exchange,
    request_cases,
    status_of,
    trickle,
    ws_frame,
)
from .conftest import (
    DEADLINE,
    TOKEN,
    data_frame,
    echo,
    error_of,
    receive_frames,
    running,
    start_fails,
    ws_server,
    ws_url,
)


async def connect(address: tuple[str, int], path: str = "/", token: str | None = TOKEN) -> Any:
    return await connect_websocket(ws_url(address, path), token=token)


BEARER = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"


def raw_ws(address: tuple[str, int], headers: list[tuple[bytes, bytes]] | None = None) -> Any:
    """A plain trio-websocket client, to send what our client never would."""
    return trio_websocket.open_websocket_url(
        ws_url(address),
        extra_headers=headers
        if headers is not None
        else [(b"Authorization", b"Bearer " + TOKEN.encode())],
    )


# --- Frames ------------------------------------------------------------------------------------


async def test_small_frames_one_message_each() -> None:
    with trio.fail_after(DEADLINE):
        async with ws_server(echo) as address:
            client = await connect(address)
            assert client.kind == "websocket"
            assert client.message_framed
            frames = [data_frame(i.to_bytes(2, "big"), session_id=i + 1) for i in range(200)]
            await client.send_frames(frames)
            got = await receive_frames(client, 200)  # checks one frame per message
            assert [f.payload for f in got] == [i.to_bytes(2, "big") for i in range(200)]
            await client.aclose()


async def test_large_payload_in_maximal_frames() -> None:
    payload = os.urandom(4 * DEFAULT_MAX_PAYLOAD)
    view = memoryview(payload)
    frames = [
        data_frame(view[i : i + DEFAULT_MAX_PAYLOAD])
        for i in range(0, len(payload), DEFAULT_MAX_PAYLOAD)
    ]
    with trio.fail_after(DEADLINE):
        async with ws_server(echo) as address:
            client = await connect(address)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.send_frames, frames)
                got = await receive_frames(client, 4)
            assert b"".join(bytes(f.payload) for f in got) == payload
            await client.aclose()


async def test_server_sees_one_frame_per_message() -> None:
    sizes: list[int] = []
    done = trio.Event()

    async def record(transport: FrameTransport) -> None:
        for _ in range(3):
            message = await transport.receive_some()
            sizes.append(len(message))
        done.set()

    with trio.fail_after(DEADLINE):
        async with ws_server(record) as address:
            client = await connect(address)
            await client.send_frames([data_frame(b""), data_frame(b"ab"), data_frame(bytes(70000))])
            await done.wait()
            await client.aclose()
    assert sizes == [HEADER_SIZE, HEADER_SIZE + 2, HEADER_SIZE + 70000]


async def test_text_message_is_not_lbru() -> None:
    errors: list[BaseException] = []
    done = trio.Event()

    async def expect_binary(transport: FrameTransport) -> None:
        try:
            await transport.receive_some()
        except RemoteProtocolError as exc:
            errors.append(exc)
        done.set()

    with trio.fail_after(DEADLINE):
        async with ws_server(expect_binary) as address, raw_ws(address) as ws:
            await ws.send_message("hello")
            await done.wait()
    assert "text messages are not LBRU" in str(errors[0])


async def test_client_rejects_text_from_the_server() -> None:
    async def send_text(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.send_message("not a frame")
        await ws.get_message()  # wait for the client to go away

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                trio_websocket.serve_websocket, send_text, "127.0.0.1", 0, None
            )
            client = await connect(("127.0.0.1", server.port))
            with pytest.raises(RemoteProtocolError, match="text messages"):
                await client.receive_some()
            await client.aclose()
            nursery.cancel_scope.cancel()


async def test_message_with_two_frames_is_refused() -> None:
    errors: list[BaseException] = []
    done = trio.Event()

    async def one_frame_only(transport: FrameTransport) -> None:
        try:
            await transport.receive_some()
        except RemoteProtocolError as exc:
            errors.append(exc)
        done.set()

    two = encode_frame(Command.DATA, b"a")
    with trio.fail_after(DEADLINE):
        async with ws_server(one_frame_only) as address, raw_ws(address) as ws:
            await ws.send_message(two + two)
            await done.wait()
    assert "exactly one LBRU frame" in str(errors[0])


async def test_oversized_message_closes_with_frame_too_large() -> None:
    errors: list[BaseException] = []
    done = trio.Event()

    async def receive(transport: FrameTransport) -> None:
        try:
            await transport.receive_some()
        except FrameTooLargeError as exc:
            errors.append(exc)
        done.set()

    with trio.fail_after(DEADLINE):
        async with ws_server(receive, max_message_size=1000) as address:
            client = await connect(address)
            await client.send_frames([data_frame(bytes(2000))])
            await done.wait()
            await client.aclose()
    assert errors


async def test_default_max_message_is_one_maximal_frame() -> None:
    assert WS_MAX_MESSAGE_SIZE == HEADER_SIZE + DEFAULT_MAX_PAYLOAD
    assert WS_RECEIVE_BUFFER >= 1 << 20


async def test_clean_close_reads_as_eof_both_ways() -> None:
    got: list[bytes] = []
    done = trio.Event()

    async def wait_for_eof(transport: FrameTransport) -> None:
        got.append(bytes(await transport.receive_some()))
        done.set()

    with trio.fail_after(DEADLINE):
        async with ws_server(wait_for_eof) as address:
            client = await connect(address)
            await client.aclose()
            await done.wait()
            assert got == [b""]
            with pytest.raises(ConnectionClosed, match="closed"):
                await client.receive_some()
        async with ws_server(lambda t: t.aclose()) as address:
            client = await connect(address)
            assert await client.receive_some() == b""
            await client.aclose()


async def test_no_descriptors_over_websocket() -> None:
    with trio.fail_after(DEADLINE):
        async with ws_server(echo) as address:
            client = await connect(address)
            with pytest.raises(LocalProtocolError):
                await client.send_fd_frame(data_frame(b"x"), 0)
            with pytest.raises(LocalProtocolError):
                await client.receive_with_fds(100)
            await client.aclose()


# --- Authentication ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "token"),
    [
        ("/", None),
        ("/", "wrong-token"),
        ("/", TOKEN[:-1]),
        (f"/?token={TOKEN}", None),
        (f"/?access_token={TOKEN}&token={TOKEN}", None),
    ],
    ids=["no-token", "wrong-token", "prefix-of-token", "token-in-query", "tokens-in-query"],
)
async def test_bad_credentials_get_401(path: str, token: str | None) -> None:
    with trio.fail_after(DEADLINE):
        async with ws_server(echo) as address:
            with pytest.raises(UnauthorizedError, match="HTTP 401"):
                await connect(address, path, token=token)


async def test_right_token_works_and_compare_digest_is_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    seen: list[Any] = []

    async def record(transport: FrameTransport) -> None:
        seen.append(transport.peer)
        await echo(transport)

    with trio.fail_after(DEADLINE):
        async with ws_server(record) as address:
            client = await connect(address)
            await client.send_frames([data_frame(b"authorized")])
            assert (await receive_frames(client, 1))[0].payload == b"authorized"
            await client.aclose()
            with pytest.raises(UnauthorizedError):
                await connect(address, token="nope")
    assert calls == [(TOKEN.encode(), TOKEN.encode()), (b"nope", TOKEN.encode())]
    (peer,) = seen
    assert peer.kind == "websocket"
    assert peer.authenticated
    assert peer.address.startswith("127.0.0.1:")
    # The check both listeners share (the metrics endpoint's too).
    assert "compare_digest" in inspect.getsource(transport_base.bearer_token_matches)


async def raw_upgrade(address: tuple[str, int], headers: list[bytes]) -> bytes:
    """Send an upgrade request by hand; return the response's status line."""
    request = b"\r\n".join(
        [
            b"GET / HTTP/1.1",
            b"Host: 127.0.0.1",
            b"Upgrade: websocket",
            b"Connection: Upgrade",
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            b"Sec-WebSocket-Version: 13",
            *headers,
            b"",
            b"",
        ]
    )
    with trio.socket.socket() as sock:
        await sock.connect(address)
        await sock.send(request)
        response = b""
        while b"\r\n" not in response:
            chunk = await sock.recv(4096)
            if not chunk:
                break
            response += chunk
    return response.split(b"\r\n", 1)[0]


async def test_browser_origin_gets_403() -> None:
    bearer = b"Authorization: Bearer " + TOKEN.encode()
    with trio.fail_after(DEADLINE):
        async with ws_server(echo) as address:
            status = await raw_upgrade(address, [bearer, b"Origin: https://evil.example"])
            assert status.startswith(b"HTTP/1.1 403")
            # The same request without the token is refused for the token first.
            status = await raw_upgrade(address, [b"Origin: https://evil.example"])
            assert status.startswith(b"HTTP/1.1 401")
        async with ws_server(echo, allowed_origins={"https://app.example"}) as address:
            headers = [(b"Authorization", b"Bearer " + TOKEN.encode())]
            headers.append((b"Origin", b"https://app.example"))
            async with raw_ws(address, headers) as ws:
                await ws.send_message(encode_frame(Command.PING))
                assert len(await ws.get_message()) == HEADER_SIZE


async def test_no_token_means_no_authentication() -> None:
    with trio.fail_after(DEADLINE):
        async with ws_server(echo, token=None) as address:
            client = await connect(address, token=None)
            await client.send_frames([data_frame(b"open")])
            assert (await receive_frames(client, 1))[0].payload == b"open"
            await client.aclose()


# --- The upgrade request ---------------------------------------------------------------------


def padded_request(head_size: int) -> bytes:
    """An upgrade request with the token whose head (request line and headers, up to the blank
    line) is exactly ``head_size`` bytes, padded with one filler header."""
    base = UPGRADE + BEARER + b"X-Pad: \r\n\r\n"
    assert head_size >= len(base)
    return base.replace(b"X-Pad: ", b"X-Pad: " + b"a" * (head_size - len(base)))


@pytest.mark.parametrize(
    ("head_size", "status"),
    [
        (WS_MAX_REQUEST_HEAD, 101),
        (WS_MAX_REQUEST_HEAD + 1, 431),
        (64 << 10, 431),
    ],
    ids=["at-the-cap", "a-byte-over", "64-KiB"],
)
async def test_the_request_head_is_capped_at_16_kib(head_size: int, status: int) -> None:
    # The whole head arrives in one read: h11's cap (incomplete heads only) never applied,
    # so 64 KiB of headers used to be accepted.
    with trio.fail_after(DEADLINE):
        async with ws_server(echo) as address:
            response = await http_exchange(address, padded_request(head_size))
            assert status_of(response) == status
            if status == 431:
                assert response.endswith(b"the request head is over 16384 bytes\n")


async def test_a_trickled_request_is_dropped_at_the_handshake_deadline() -> None:
    # Slowloris on the HTTP request: a header byte every 20 ms, never the end of the head.
    request = UPGRADE + b"X-Slow: " + b"a" * 10_000
    with trio.fail_after(DEADLINE):
        async with ws_server(echo, handshake_timeout=0.3) as address:
            stream = await trio.open_tcp_stream(*address)
            start = trio.current_time()
            async with stream, trio.open_nursery() as nursery:
                pieces = [bytes([byte]) for byte in request]
                nursery.start_soon(trickle, stream.send_all, pieces, 0.02)
                assert await stream.receive_some(4096) == b"", "closed, unanswered"
                nursery.cancel_scope.cancel()
            assert 0.3 <= trio.current_time() - start < 3


@pytest.mark.parametrize(
    ("request_head", "status"), list(request_cases(TOKEN).values()), ids=list(request_cases(TOKEN))
)
async def test_malformed_upgrade_requests_get_a_4xx_and_no_traceback(
    request_head: bytes, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(DEADLINE), caplog.at_level(logging.DEBUG, "librorum"):
        async with ws_server(echo) as address:
            response = await http_exchange(address, request_head)
            assert status_of(response) == status
            if status == 426:
                assert b"\r\nSec-WebSocket-Version: 13\r\n" in response
            client = await connect(address)  # the listener is fine
            await client.aclose()
    assert [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR] == []


# --- Authentication back-off ---------------------------------------------------------------


async def test_repeated_wrong_tokens_back_off_with_429_and_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with trio.fail_after(DEADLINE), caplog.at_level(logging.INFO, "librorum.transport"):
        async with ws_server(echo, auth_failures_allowed=3, auth_backoff_max=0.2) as address:
            statuses = []
            retry_after = []
            for attempt in range(6):
                token = TOKEN if attempt == 5 else f"guess-{attempt}"
                ws = await RawWebSocket.open(address, token)
                statuses.append(ws.status)
                retry_after.append(ws.header(b"retry-after"))
                await ws.aclose()
            # Three free failures; the fourth earns a wait (said on its 401); during it even
            # the right token gets 429, without being looked at.
            assert statuses == [401, 401, 401, 401, 429, 429]
            assert retry_after == [None, None, None, b"1", b"1", b"1"]
            # Another address is not held back.
            other = await RawWebSocket.open(address, TOKEN, local_address="127.0.0.2")
            assert other.status == 101
            await other.aclose()
            # Once the wait is over the right token is accepted and the failures forgotten.
            await trio.sleep(0.25)
            for token in [TOKEN, "wrong", "wrong", "wrong"]:
                ws = await RawWebSocket.open(address, token)
                assert ws.status == (101 if token == TOKEN else 401)
                assert ws.header(b"retry-after") is None
                await ws.aclose()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings if "127.0.0.1:" in r.getMessage()] == [
        warnings[0].getMessage()
    ], "one WARNING per address per interval"
    assert "invalid token" in warnings[0].getMessage()


# --- Limits ------------------------------------------------------------------------------------


async def test_connection_cap() -> None:
    with trio.fail_after(DEADLINE):
        async with ws_server(echo, max_connections=2) as address:
            first, second = await connect(address), await connect(address)
            for client in (first, second):
                await client.send_frames([data_frame(b"in")])
                await receive_frames(client, 1)
            third = await connect(address)
            frames = await receive_frames(third, 1)
            assert [error_of(f).code for f in frames] == [ErrorCode.CONNECTION_LIMIT]
            with pytest.raises(ConnectionClosed, match="1013 TRY_AGAIN_LATER"):
                await third.receive_some()
            for client in (first, second):
                await client.send_frames([data_frame(b"still")])
                assert (await receive_frames(client, 1))[0].payload == b"still"
            for client in (first, second, third):
                await client.aclose()


async def test_handshake_flood_is_answered_503() -> None:
    # A connection over a pre-handshake cap used to be dropped unanswered: now it learns why,
    # without its request being read.
    with trio.fail_after(DEADLINE):
        async with ws_server(echo, max_unauthenticated=1) as address:
            with trio.socket.socket() as silent:
                await silent.connect(address)  # connects, never sends the upgrade request
                await trio.testing.wait_all_tasks_blocked()  # the server accepted it, waits
                response = await http_exchange(address, UPGRADE + BEARER + b"\r\n")
                assert status_of(response) == 503
                assert b"\r\nRetry-After: 5\r\n" in response
                assert response.endswith(b"\r\n\r\ntoo many connections; try again later\n")
                with pytest.raises(ConnectionLimitError, match="HTTP 503"):
                    await connect(address)


async def test_per_ip_cap_counts_handshakes_and_answers_503() -> None:
    with trio.fail_after(DEADLINE):
        async with ws_server(echo, max_per_ip=2) as address:
            first = await connect(address)
            with trio.socket.socket() as silent:
                await silent.connect(address)
                await trio.testing.wait_all_tasks_blocked()
                with pytest.raises(ConnectionLimitError, match=r"HTTP 503.*try again later"):
                    await connect(address)
                # Another address is not affected (127.0.0.0/8 is all loopback).
                other = await RawWebSocket.open(address, TOKEN, local_address="127.0.0.2")
                assert other.status == 101
                await other.aclose()
            await first.aclose()


async def test_refusals_under_way_are_capped_then_unanswered() -> None:
    # Answering costs a descriptor for up to the linger; past max_unauthenticated answers
    # under way, a connection is closed unanswered, as before. A client that never reads or
    # closes keeps its answer under way for the whole linger.
    with trio.fail_after(DEADLINE):
        async with ws_server(
            echo, max_per_ip=1, max_unauthenticated=2, refusal_linger=DEADLINE
        ) as address:
            first = await connect(address)
            lingering = [await trio.open_tcp_stream(*address) for _ in range(2)]
            await trio.testing.wait_all_tasks_blocked()
            assert await http_exchange(address, UPGRADE + BEARER + b"\r\n") == b""
            for stream in lingering:
                assert status_of(await stream.receive_some(4096)) == 503
                await stream.aclose()
            await first.aclose()


async def test_handshake_timeout_frees_the_slot() -> None:
    with trio.fail_after(DEADLINE):
        async with ws_server(echo, max_unauthenticated=1, handshake_timeout=0.05) as address:
            with trio.socket.socket() as silent:
                await silent.connect(address)
                assert await silent.recv(10) == b"", "the server hangs up after the deadline"
            client = await connect(address)  # the slot is free again
            await client.aclose()


async def test_keepalive_closes_a_peer_that_never_answers() -> None:
    errors: list[BaseException] = []
    done = trio.Event()

    async def wait(transport: FrameTransport) -> None:
        try:
            await transport.receive_some()
        except ConnectionClosed as exc:
            errors.append(exc)
        done.set()

    with trio.fail_after(DEADLINE):
        async with ws_server(wait, ping_interval=0.01, pong_timeout=0.05) as address:
            client = await connect(address)  # never reads, so never answers a ping
            await done.wait()
            await client.aclose()
    assert "did not answer a ping" in str(errors[0])


async def test_keepalive_keeps_a_reading_peer(autojump_clock: trio.testing.MockClock) -> None:
    # The server's pings matched to the peer's pongs: ten rounds pass, nothing is closed.
    frame = encode_frame(Command.PING)
    with trio.fail_after(1000):
        peer, ws = server_socket(message_timeout=30)
        transport = ws_module.WsTransport(ws, ws_module.PeerInfo("websocket"))
        pongs = 0

        async def answer_pings() -> None:
            nonlocal pongs
            # The peer's side of the wire, parsed by hand (small unmasked server frames).
            buffer = bytearray()
            while True:
                buffer += await peer.receive_some(4096)
                while len(buffer) >= 2 and len(buffer) >= 2 + buffer[1]:
                    opcode, size = buffer[0] & 0x0F, buffer[1] & 0x7F
                    payload = bytes(buffer[2 : 2 + size])
                    del buffer[: 2 + size]
                    if opcode == PING:
                        pongs += 1
                        await peer.send_all(ws_frame(PONG, payload))

        async def send_late() -> None:
            await trio.sleep(101)
            await peer.send_all(ws_frame(BINARY, frame))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(answer_pings)
            nursery.start_soon(ws_server_module._keepalive, ws, transport, 10.0, 5.0)
            nursery.start_soon(send_late)
            assert await transport.receive_some() == frame
            nursery.cancel_scope.cancel()
        assert pongs == 10


async def test_client_answers_pings_while_reading() -> None:
    async def ping_then_send(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        with trio.fail_after(DEADLINE):
            await ws.ping(b"are you there")
        await ws.send_message(encode_frame(Command.PING))
        await ws.get_message()

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                trio_websocket.serve_websocket, ping_then_send, "127.0.0.1", 0, None
            )
            client = await connect(("127.0.0.1", server.port))
            message = await client.receive_some()  # answers the ping on the way
            assert len(message) == HEADER_SIZE
            await client.aclose()
            nursery.cancel_scope.cancel()


async def test_connect_to_nothing() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: connections are refused
        with trio.fail_after(DEADLINE), pytest.raises(ConnectionClosed, match="cannot connect"):
            await connect_websocket(f"ws://127.0.0.1:{port}/", token=TOKEN)


# --- Robustness --------------------------------------------------------------------------------


def reset_on_close(sock: trio.socket.SocketType) -> None:
    """Make close() send a TCP RST instead of a FIN: the rudest way to leave."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def test_abrupt_peers_never_take_the_listener_down() -> None:
    upgrade_with_wrong_token = (
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Authorization: Bearer wrong\r\n\r\n"
    )
    with trio.fail_after(DEADLINE):
        # (Enough failures allowed that the wrong tokens do not make this address back off.)
        async with ws_server(echo, handshake_timeout=0.2, auth_failures_allowed=100) as address:
            for payload in [upgrade_with_wrong_token, b"\x16\x03\x01garbage\r\n\r\n", b""] * 10:
                with trio.socket.socket() as sock:
                    await sock.connect(address)
                    if payload:
                        await sock.send(payload)
                    reset_on_close(sock)
            client = await connect(address)
            await client.send_frames([data_frame(b"survived")])
            assert (await receive_frames(client, 1))[0].payload == b"survived"
            await client.aclose()


@pytest.mark.parametrize(
    ("error", "level"),
    [
        (ZeroDivisionError("a bug"), logging.ERROR),
        (ws_module.WsClosed(1006, "gone"), logging.DEBUG),
        (trio.BrokenResourceError("peer reset"), logging.DEBUG),
    ],
    ids=["bug", "peer-closed", "peer-reset"],
)
async def test_connection_errors_are_contained(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    error: Exception,
    level: int,
) -> None:
    real = ws_server_module._authorize
    calls = 0

    def failing_once(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise error
        return real(*args)

    monkeypatch.setattr(ws_server_module, "_authorize", failing_once)
    with trio.fail_after(DEADLINE), caplog.at_level(logging.DEBUG, "librorum.transport"):
        async with ws_server(echo) as address:
            with pytest.raises(ConnectionClosed):
                await connect(address)
            client = await connect(address)  # the listener is still there
            await client.aclose()
    records = [r for r in caplog.records if "connection 127.0.0.1" in r.getMessage()]
    assert [r.levelno for r in records] == [level]
    assert (records[0].exc_info is not None) == (level == logging.ERROR)


async def test_port_in_use_is_a_config_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with trio.fail_after(DEADLINE), start_fails(ConfigError, "cannot listen on 127.0.0.1"):
            async with running(serve_websocket, echo, "127.0.0.1", port, token=TOKEN):
                pass


# --- TLS ---------------------------------------------------------------------------------------


async def tls_echo(transport: FrameTransport) -> None:
    # Under TLS a file region's bytes cannot go by sendfile: the server sends pieces.
    assert not transport.sends_file_regions
    await echo(transport)


async def test_tls_round_trip(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=str(cert))
    with trio.fail_after(DEADLINE):
        async with ws_server(tls_echo, ssl_context=server_context) as (host, port):
            url = f"wss://{host}:{port}/"
            client = await connect_websocket(url, token=TOKEN, ssl_context=client_context)
            assert client.peer.authenticated, "TLS verified the server"
            payload = os.urandom(DEFAULT_MAX_PAYLOAD)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.send_frames, [data_frame(payload)])
                (frame,) = await receive_frames(client, 1)
            assert frame.payload == payload
            await client.aclose()
            # A client that does not trust the certificate never gets to send its token.
            with pytest.raises(ConnectionClosed, match="CERTIFICATE_VERIFY_FAILED"):
                await connect_websocket(url, token=TOKEN)
            with pytest.raises(UnauthorizedError):
                await connect_websocket(url, token="wrong", ssl_context=client_context)


# --- File regions ------------------------------------------------------------------------------


def region_file(tmp_path: Path, size: int) -> tuple[bytes, int]:
    """A file of ``size`` random bytes, open for reading: its content and descriptor."""
    content = os.urandom(size)
    path = tmp_path / "region.bin"
    path.write_bytes(content)
    return content, os.open(path, os.O_RDONLY)


def region_frame(fd: int, offset: int, length: int, session_id: int = 1) -> tuple[bytes, Any]:
    header, _ = encode_frame_parts(Command.DATA, bytes(length), session_id=session_id)
    return header, FileRegion(fd, offset, length)


@pytest.mark.parametrize("length", [0, 1, 5000, DEFAULT_MAX_PAYLOAD])
async def test_file_regions_are_sent_from_the_file_both_ways(tmp_path: Path, length: int) -> None:
    # The server's frames (unmasked, plain TCP) go by sendfile; the client's are read and
    # masked. Either way the peer gets the file's bytes in an ordinary message.
    content, fd = region_file(tmp_path, DEFAULT_MAX_PAYLOAD + 7)
    wanted = content[7 : 7 + length]

    async def serve_region(transport: FrameTransport) -> None:
        assert transport.sends_file_regions
        await cast("ws_module.WsTransport", transport).send_frames([region_frame(fd, 7, length)])
        await echo(transport)

    try:
        with trio.fail_after(DEADLINE):
            async with ws_server(serve_region) as address:
                client = await connect(address)
                (frame,) = await receive_frames(client, 1)
                assert frame.payload == wanted
                await client.send_frames([region_frame(fd, 7, length, session_id=3)])
                (echoed,) = await receive_frames(client, 1)
                assert echoed.session_id == 3
                assert echoed.payload == wanted
                await client.aclose()
    finally:
        os.close(fd)


async def test_file_regions_over_tls_are_read_and_sent(
    tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=str(cert))
    content, fd = region_file(tmp_path, 300_000)

    async def serve_region(transport: FrameTransport) -> None:
        await cast("ws_module.WsTransport", transport).send_frames([region_frame(fd, 0, 300_000)])
        await echo(transport)

    try:
        with trio.fail_after(DEADLINE):
            async with ws_server(serve_region, ssl_context=server_context) as (host, port):
                url = f"wss://{host}:{port}/"
                client = await connect_websocket(url, token=TOKEN, ssl_context=client_context)
                (frame,) = await receive_frames(client, 1)
                assert frame.payload == content
                await client.aclose()
    finally:
        os.close(fd)


async def test_a_file_shorter_than_its_region_breaks_the_connection(tmp_path: Path) -> None:
    # The header promised bytes the file does not have: the message cannot be completed,
    # so the sender's transport is broken and the peer sees the connection end.
    _, fd = region_file(tmp_path, 1000)
    outcome: list[BaseException] = []

    async def serve_region(transport: FrameTransport) -> None:
        ws = cast("ws_module.WsTransport", transport)
        try:
            await ws.send_frames([region_frame(fd, 0, 5000)])
        except ConnectionClosed as exc:
            outcome.append(exc)
        with pytest.raises(ConnectionClosed):
            await ws.send_frames([data_frame(b"after")])

    try:
        with trio.fail_after(DEADLINE):
            async with ws_server(serve_region) as address:
                client = await connect(address)
                messages = []
                try:
                    while data := await client.receive_some():
                        messages.append(data)
                except ConnectionClosed:
                    pass
                await client.aclose()
                assert messages == [], "no message: the one begun was never completed"
    finally:
        os.close(fd)
    assert outcome, "the short file was reported"


# --- The message deadline (virtual time, over memory streams) ------------------------------


def server_socket(message_timeout: float) -> tuple[trio.abc.Stream, Any]:
    """A server-side connection past its handshake over a memory stream; returns the client's
    end of the stream (to write frames by hand) and the server's connection."""
    client = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    server = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
    server.receive_data(client.send(Request(host="example", target="/")))
    list(server.events())
    client.receive_data(server.send(AcceptConnection()))
    left, right = trio.testing.memory_stream_pair()
    ws = ws_module.WebSocketConnection(
        right,
        server,
        max_message_size=WS_MAX_MESSAGE_SIZE,
        receive_size=WS_RECEIVE_BUFFER,
        close_grace=1.0,
        message_timeout=message_timeout,
    )
    return left, ws


async def test_a_message_must_be_whole_within_the_deadline_whatever_trickles(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(1000):
        peer, ws = server_socket(message_timeout=30)
        frame = encode_frame(Command.STAT, bytes(100), session_id=1)
        start = trio.current_time()
        await peer.send_all(ws_frame(BINARY, frame[:20], fin=False))

        async def trickle() -> None:
            # A byte every 2 s, a ping between bytes: the pre-fix server waited for ever.
            for byte in frame[20:]:
                await trio.sleep(2)
                await peer.send_all(ws_frame(CONTINUATION, bytes([byte]), fin=False))
                await peer.send_all(ws_frame(PING, b"alive"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle)
            with pytest.raises(ConnectionTimeoutError, match="not complete within 30 s"):
                await ws.get_message()
            nursery.cancel_scope.cancel()
        assert trio.current_time() - start == 30
        assert ws_module.close_code_for(ws.failure) == 1008


async def test_half_a_frame_header_starts_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(1000):
        peer, ws = server_socket(message_timeout=30)
        start = trio.current_time()
        await peer.send_all(ws_frame(BINARY, bytes(200))[:1])
        with pytest.raises(ConnectionTimeoutError):
            await ws.get_message()
        assert trio.current_time() - start == 30


async def test_control_frames_alone_never_start_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(1000):
        peer, ws = server_socket(message_timeout=30)

        async def pings_then_a_message() -> None:
            for _ in range(12):
                await trio.sleep(10)
                await peer.send_all(ws_frame(PING, b"idle but alive"))
            await peer.send_all(ws_frame(BINARY, b"late but whole"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pings_then_a_message)
            assert await ws.get_message() == b"late but whole"
        assert trio.current_time() >= 120


async def test_each_message_gets_its_own_deadline(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(1000):
        peer, ws = server_socket(message_timeout=30)
        for _ in range(3):
            # 29 s for each message: in time, three times over (90 s in all).
            await peer.send_all(ws_frame(BINARY, b"slow", fin=False))
            async with trio.open_nursery() as nursery:

                async def finish() -> None:
                    await trio.sleep(29)
                    await peer.send_all(ws_frame(CONTINUATION, b" but in time"))

                nursery.start_soon(finish)
                assert await ws.get_message() == b"slow but in time"
