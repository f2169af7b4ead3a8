"""The client's side of the WebSocket upgrade, sans I/O (:class:`WsClientHandshake`) and the
URL parsing both connectors share: the bytes a server answers with, and what they mean."""

from __future__ import annotations

import re

import pytest
import wsproto
from wsproto.events import AcceptConnection, Request

from librorum.config import ConfigError
from librorum.errors import ConnectionClosed, ConnectionLimitError, UnauthorizedError
from librorum.transport.ws_client import WsClientHandshake, WsTarget, parse_ws_url

URL = "ws://127.0.0.1:7878/lbru?v=1"


def handshake(token: str | None = "secret") -> WsClientHandshake:
    return WsClientHandshake(parse_ws_url(URL), token=token)


def test_urls_are_parsed_into_host_port_and_request_target() -> None:
    assert parse_ws_url(URL) == WsTarget(
        URL, False, "127.0.0.1", 7878, "127.0.0.1:7878", "/lbru?v=1"
    )
    target = parse_ws_url("wss://[::1]/")
    assert (target.secure, target.host, target.port, target.host_header) == (
        True,
        "::1",
        443,
        "[::1]",
    )
    assert parse_ws_url("ws://example.org").resource == "/"


@pytest.mark.parametrize("url", ["http://example.org", "ws://:7878", "ws://host:port", "wss://"])
def test_urls_that_are_not_websocket_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigError, match=r"WebSocket URL|invalid port"):
        parse_ws_url(url)


def test_the_request_carries_the_token_in_a_header_and_an_accept_completes_it() -> None:
    client = handshake()
    server = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
    server.receive_data(client.request())
    (request,) = server.events()
    assert isinstance(request, Request)
    assert (request.host, request.target) == ("127.0.0.1:7878", "/lbru?v=1")
    assert (b"authorization", b"Bearer secret") in request.extra_headers
    assert client.receive_data(server.send(AcceptConnection())) is True


def answer(client: WsClientHandshake, *chunks: bytes) -> None:
    client.request()
    for chunk in chunks:
        assert client.receive_data(chunk) is False


@pytest.mark.parametrize(
    ("response", "error", "words"),
    [
        # The body ends when the server closes (no Content-Length).
        (b"HTTP/1.1 401 Unauthorized\r\n\r\nbad token", UnauthorizedError, "401): bad token"),
        (b"HTTP/1.1 403 Forbidden\r\n\r\n", UnauthorizedError, "403): no reason given"),
        (b"HTTP/1.1 429 Too Many Requests\r\n\r\nwait", UnauthorizedError, "429): wait"),
        (b"HTTP/1.1 503 Busy\r\n\r\nfull", ConnectionLimitError, "503): full"),
        (b"HTTP/1.1 500 Oops\r\n\r\n", ConnectionClosed, "500): no reason given"),
    ],
)
def test_a_refusal_whose_body_ends_at_eof_is_its_error_class(
    response: bytes, error: type[Exception], words: str
) -> None:
    client = handshake()
    # Byte by byte: a refusal is only reported once its body is complete.
    answer(client, *(response[i : i + 1] for i in range(len(response))))
    expected = f"{URL} refused the connection (HTTP {words}"
    with pytest.raises(error, match=re.escape(expected)):
        client.receive_data(b"")


def test_a_refusal_with_a_length_is_reported_when_its_body_is_complete() -> None:
    client = handshake()
    client.request()
    with pytest.raises(UnauthorizedError, match="bad token"):
        client.receive_data(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 9\r\n\r\nbad token")


def test_a_server_that_hangs_up_before_answering() -> None:
    client = handshake(token=None)
    client.request()
    with pytest.raises(ConnectionClosed, match="closed the connection during the WebSocket"):
        client.receive_data(b"")


def test_a_peer_that_is_not_a_websocket_server() -> None:
    client = handshake()
    client.request()
    with pytest.raises(ConnectionClosed, match="is not a WebSocket server"):
        client.receive_data(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
