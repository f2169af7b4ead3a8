"""The blocking client's WebSocket transport against a scripted server on loopback: HTTP
refusals, peers that are not WebSocket servers, and what a server may send besides one binary
message per frame (pings, fragments, a text message, a close, an oversized message).

The server is wsproto over a trio TCP stream, with the real sans-I/O server session for LBRU;
each test scripts what it does after the handshake. The client runs in a worker thread."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

import pytest
import trio
import wsproto
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping as WsPing,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from librorum.client import SyncClient, connect
from librorum.errors import (
    ConnectionClosed,
    ConnectionLimitError,
    RemoteProtocolError,
    UnauthorizedError,
)
from librorum.protocol.constants import WS_MAX_MESSAGE_SIZE
from librorum.protocol.messages import FileStat, Ping, PingReply
from librorum.protocol.session import HelloReceived, RequestReceived, ServerSession

from .conftest import TEST_TIMEOUT


class Peer:
    """The server side of one connection: wsproto and an LBRU server session."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
        self.session = ServerSession()

    async def send(self, event: Event) -> None:
        await self.stream.send_all(self.ws.send(event))

    async def next_event(self) -> Event:
        """The next WebSocket event from the client (a close event once it hung up)."""
        while True:
            for event in self.ws.events():
                return event
            data = await self.stream.receive_some(1 << 20)
            self.ws.receive_data(data or None)

    async def handshake(self) -> Request:
        event = await self.next_event()
        assert isinstance(event, Request)
        return event

    async def accept(self) -> None:
        await self.handshake()
        await self.send(AcceptConnection())

    async def next_lbru_event(self) -> object:
        """The next LBRU event, answering HELLO on the way."""
        while True:
            for event in self.session.events():
                if isinstance(event, HelloReceived):
                    self.session.accept_hello(event.hello)
                    await self.flush()
                    continue
                return event
            message = await self.next_event()
            assert isinstance(message, BytesMessage), message
            self.session.receive_data(bytes(message.data))

    async def until_closed(self) -> None:
        """Take what the client sends until it closes (answering HELLO)."""
        while True:
            event = await self.next_event()
            if isinstance(event, CloseConnection):
                return
            if isinstance(event, BytesMessage):
                self.session.receive_data(bytes(event.data))
                for lbru in self.session.events():
                    if isinstance(lbru, HelloReceived):
                        self.session.accept_hello(lbru.hello)
                await self.flush()

    async def request(self) -> RequestReceived:
        event = await self.next_lbru_event()
        assert isinstance(event, RequestReceived), event
        return event

    def frame(self) -> bytes:
        """The one frame the session queued, as bytes."""
        frames = self.session.frames_to_send()
        assert len(frames) == 1
        header, payload = frames[0]
        assert isinstance(payload, bytes | bytearray | memoryview)
        return header + bytes(payload)

    async def flush(self) -> None:
        for header, payload in self.session.frames_to_send():
            assert isinstance(payload, bytes | bytearray | memoryview)
            await self.send(BytesMessage(header + bytes(payload)))


Script = Callable[[Peer], Awaitable[None]]


class Server:
    """A WebSocket server on loopback that runs ``script`` for each connection."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.url = ""
        #: Set when a script has run to its end.
        self.done = trio.Event()

    async def handler(self, stream: trio.SocketStream) -> None:
        async with stream:
            await self.script(Peer(stream))
        self.done.set()


async def serve(nursery: trio.Nursery, script: Script) -> Server:
    server = Server(script)
    listeners = await nursery.start(partial(trio.serve_tcp, server.handler, 0, host="127.0.0.1"))
    host, port = listeners[0].socket.getsockname()[:2]
    server.url = f"ws://{host}:{port}"
    return server


def remote(url: str) -> SyncClient:
    return connect(url, transport="remote", timeout=5, connect_timeout=5, reconnect=False)


async def in_thread(fn: Callable[[], object]) -> object:
    return await trio.to_thread.run_sync(fn)


def reject(status: int, body: bytes) -> Script:
    async def script(peer: Peer) -> None:
        await peer.handshake()
        headers = [(b"content-length", str(len(body)).encode())]
        await peer.send(RejectConnection(status_code=status, headers=headers, has_body=bool(body)))
        if body:
            await peer.send(RejectData(data=body, body_finished=True))

    return script


@pytest.mark.parametrize(
    ("status", "body", "error", "words"),
    [
        (401, b"bad token", UnauthorizedError, "HTTP 401): bad token"),
        (403, b"", UnauthorizedError, "HTTP 403): no reason given"),
        (503, b"too many connections\n", ConnectionLimitError, "HTTP 503): too many connections"),
        (500, b"x" * 10_000, ConnectionClosed, "HTTP 500): xxx"),
    ],
)
async def test_refusals_become_their_error_classes(
    nursery: trio.Nursery, status: int, body: bytes, error: type[Exception], words: str
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        url = (await serve(nursery, reject(status, body))).url
        with pytest.raises((UnauthorizedError, ConnectionClosed)) as raised:
            await in_thread(partial(remote, url))
    # A refusal other than 401/403 is a failed attempt: the client gives up with
    # ConnectionClosed, the refusal's own class in its chain of causes.
    exc = raised.value
    causes: list[BaseException] = [exc]
    while causes[-1].__cause__ is not None:
        causes.append(causes[-1].__cause__)
    assert error in [type(cause) for cause in causes]
    assert url in str(exc)
    assert words in str(exc)
    # The body in the message is bounded however long the server's is.
    assert len(str(exc)) < 5000


async def test_a_peer_that_speaks_no_http_is_not_a_websocket_server(
    nursery: trio.Nursery,
) -> None:
    async def script(peer: Peer) -> None:
        await peer.stream.receive_some(1 << 16)
        await peer.stream.send_all(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        await peer.stream.receive_some(1 << 16)  # until the client hangs up

    with trio.fail_after(TEST_TIMEOUT):
        url = (await serve(nursery, script)).url
        with pytest.raises(ConnectionClosed, match="is not a WebSocket server"):
            await in_thread(partial(remote, url))


async def test_a_peer_that_hangs_up_during_the_handshake(nursery: trio.Nursery) -> None:
    async def script(peer: Peer) -> None:
        await peer.handshake()  # and close without an answer

    with trio.fail_after(TEST_TIMEOUT):
        url = (await serve(nursery, script)).url
        with pytest.raises(ConnectionClosed, match="closed the connection during the WebSocket"):
            await in_thread(partial(remote, url))


async def test_pings_and_fragments_between_replies(nursery: trio.Nursery) -> None:
    """The server pings (the client answers while it waits for a reply) and sends a reply
    in fragments with a ping between them (RFC 6455 5.4): the client reassembles it."""
    pongs: list[bytes] = []

    async def script(peer: Peer) -> None:
        await peer.accept()
        request = await peer.request()
        assert isinstance(request.message, Ping)
        await peer.send(WsPing(b"are you there"))
        peer.session.reply(request.session_id, PingReply(request.message.data))
        frame = peer.frame()
        await peer.send(BytesMessage(frame[:3], message_finished=False))
        await peer.send(WsPing(b"between"))
        await peer.send(BytesMessage(frame[3:10], message_finished=False))
        await peer.send(BytesMessage(frame[10:], message_finished=True))
        # The client ends: its close handshake comes after both pongs.
        while not isinstance(event := await peer.next_event(), CloseConnection):
            if isinstance(event, Pong):
                pongs.append(bytes(event.payload))

    def body() -> None:
        with remote(url) as client:
            assert client.ping() >= 0

    with trio.fail_after(TEST_TIMEOUT):
        server = await serve(nursery, script)
        url = server.url
        await in_thread(body)
        await server.done.wait()
    assert pongs == [b"are you there", b"between"]


async def test_a_text_message_breaks_the_protocol(nursery: trio.Nursery) -> None:
    async def script(peer: Peer) -> None:
        await peer.accept()
        await peer.request()
        await peer.send(TextMessage("LBRU in text?"))
        await peer.until_closed()

    def body() -> None:
        with remote(url) as client, pytest.raises(RemoteProtocolError, match="text message"):
            client.stat("/x")

    with trio.fail_after(TEST_TIMEOUT):
        url = (await serve(nursery, script)).url
        await in_thread(body)


async def test_an_oversized_message_breaks_the_protocol(nursery: trio.Nursery) -> None:
    async def script(peer: Peer) -> None:
        await peer.accept()
        await peer.request()
        half = b"\0" * (WS_MAX_MESSAGE_SIZE // 2 + 1)
        await peer.send(BytesMessage(half, message_finished=False))
        await peer.send(BytesMessage(half, message_finished=True))
        await peer.until_closed()

    def body() -> None:
        with remote(url) as client, pytest.raises(RemoteProtocolError, match="message over"):
            client.stat("/x")

    with trio.fail_after(TEST_TIMEOUT):
        url = (await serve(nursery, script)).url
        await in_thread(body)


@pytest.mark.parametrize("close_frame", [True, False])
async def test_the_server_closing_fails_the_request_in_flight(
    nursery: trio.Nursery, close_frame: bool
) -> None:
    """With a close frame the client answers it (the close handshake); without one, the end
    of the TCP stream says the same. Either way the request's outcome is unknown."""
    answered = trio.Event()

    async def script(peer: Peer) -> None:
        await peer.accept()
        request = await peer.request()
        assert isinstance(request.message, FileStat)
        if close_frame:
            await peer.send(CloseConnection(code=1001, reason="going down"))
            event = await peer.next_event()
            assert isinstance(event, CloseConnection)
            answered.set()

    def body() -> None:
        with remote(url) as client, pytest.raises(ConnectionClosed, match="outcome is unknown"):
            client.stat("/x")

    with trio.fail_after(TEST_TIMEOUT):
        server = await serve(nursery, script)
        url = server.url
        await in_thread(body)
        await server.done.wait()
    assert answered.is_set() == close_frame


async def test_the_request_line_names_host_port_path_and_query(nursery: trio.Nursery) -> None:
    requests: list[Request] = []

    async def script(peer: Peer) -> None:
        requests.append(await peer.handshake())
        await peer.send(AcceptConnection())
        await peer.until_closed()

    with trio.fail_after(TEST_TIMEOUT):
        server = await serve(nursery, script)
        url = server.url
        client = await in_thread(partial(remote, url + "/lbru?v=1"))
        assert isinstance(client, SyncClient)
        client.close()
        await server.done.wait()
    (request,) = requests
    assert request.host == url.removeprefix("ws://")
    assert request.target == "/lbru?v=1"


def test_a_url_without_a_host_is_refused() -> None:
    with pytest.raises(ValueError, match="not a WebSocket URL"):
        connect("ws://:7878", transport="remote")
