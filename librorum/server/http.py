"""A minimal HTTP/1.1 endpoint on Trio over h11, for the metrics: GET of one path.

Sans-I/O like the rest of the daemon: h11 parses and frames, this module moves bytes. It is
deliberately small: one request per connection (every answer says ``Connection: close``),
no request body read, GET only (405 otherwise), one path (404 elsewhere), and with a token
``Authorization: Bearer <token>`` (401 otherwise). Everything is bounded: the request head
(``MAX_REQUEST_BYTES``, beyond it 431), the time its head may take to arrive after the
accept, TLS handshake included (``HEAD_TIMEOUT``), the time a connection may take from accept
to its answer sent (``request_timeout``), and the connections open at once, in all
(``max_connections``) and from one address (``MAX_PER_ADDRESS``; beyond either a new one is
closed at once), so a scraper, or anyone who can reach the port, cannot grow the daemon, and
a few idle connections cannot keep the scrapes out for long: they are gone after
``HEAD_TIMEOUT``, and one address holds at most a quarter of the places.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Final

import attrs
import h11
import trio

from librorum.transport.base import bearer_token_matches

log = logging.getLogger("librorum.server.http")

#: The request line and headers, at most (h11 answers 431 beyond).
MAX_REQUEST_BYTES: Final = 16 * 1024
#: Seconds from accept to the answer sent.
REQUEST_TIMEOUT: Final = 10.0
#: Seconds from accept to the request head received (the TLS handshake included): a
#: scraper sends its request at once, so a connection that says nothing gives its place back
#: soon.
HEAD_TIMEOUT: Final = 2.0
#: Connections open at once, in all and from one address.
MAX_CONNECTIONS: Final = 16
MAX_PER_ADDRESS: Final = 4
#: What a refused request may still send, and for how long, before the connection is closed.
LINGER_BYTES: Final = 1 << 20
LINGER_SECONDS: Final = 1.0


@attrs.frozen
class Page:
    """What the endpoint serves: its body and content type."""

    body: bytes
    content_type: str


#: Produces the page for a request (awaited once per authorized GET).
Render = Callable[[], Awaitable[Page]]


class HttpEndpoint:
    """Serve ``render`` at ``path``.

    Args:
        render: Produces the page; an exception from it answers 500 (and is logged).
        path: The one path served (a query string is ignored).
        token: When set, requests must carry ``Authorization: Bearer <token>``.
        ssl_context: When set, connections speak TLS.
        max_connections, request_timeout: The bounds above.
    """

    def __init__(
        self,
        render: Render,
        *,
        path: str,
        token: str | None,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = MAX_CONNECTIONS,
        request_timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        self._render = render
        self._path = path.encode()
        self._token = None if token is None else token.encode()
        self._ssl_context = ssl_context
        self._max_connections = max_connections
        self._timeout = request_timeout
        self.open_connections = 0
        # Open connections by peer address (only addresses with some open: bounded by the
        # connection cap).
        self._per_address: dict[str, int] = {}

    async def serve(
        self,
        host: str,
        port: int,
        *,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host``:``port`` until cancelled; report the address bound.

        Cancellation: stops listening and ends the connections open.

        Raises:
            OSError: The address cannot be bound.
        """
        listeners = await trio.open_tcp_listeners(port, host=host)
        sockname = listeners[0].socket.getsockname()
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._handle, listeners)
            task_status.started((str(sockname[0]), int(sockname[1])))

    async def _handle(self, stream: trio.SocketStream) -> None:
        try:
            address = str(stream.socket.getpeername()[0])
        except OSError:
            address = ""  # already gone: counted under one name, closed below or soon
        per_address = self._per_address.get(address, 0)
        if self.open_connections >= self._max_connections or per_address >= MAX_PER_ADDRESS:
            # At a cap: closed at once, before anything is read or allocated for it.
            await trio.aclose_forcefully(stream)
            return
        self.open_connections += 1
        self._per_address[address] = per_address + 1
        try:
            with trio.move_on_after(self._timeout):
                if self._ssl_context is not None:
                    tls = trio.SSLStream(stream, self._ssl_context, server_side=True)
                    await self._answer(tls)
                else:
                    await self._answer(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away: nothing to answer
        except Exception:
            log.exception("metrics endpoint: a connection failed")
        finally:
            self.open_connections -= 1
            left = self._per_address[address] - 1
            if left:
                self._per_address[address] = left
            else:
                del self._per_address[address]
            await trio.aclose_forcefully(stream)

    async def _answer(self, stream: trio.abc.Stream) -> None:
        connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
        request = None
        try:
            with trio.move_on_after(HEAD_TIMEOUT):
                request = await _next_request(connection, stream)
        except h11.RemoteProtocolError as exc:
            await _send(connection, stream, exc.error_status_hint, f"bad request: {exc}\n")
            await _linger(stream)
            return
        if request is None:
            return
        target = request.target.split(b"?", 1)[0]
        if target != self._path:
            await _send(
                connection, stream, 404, f"not found; metrics are at {self._path.decode()}\n"
            )
        elif request.method != b"GET":
            await _send(connection, stream, 405, "only GET is allowed\n", [(b"allow", b"GET")])
            await _linger(stream)
        elif not self._authorized(request):
            await _send(
                connection,
                stream,
                401,
                "a bearer token is required (Authorization: Bearer <token>)\n",
                [(b"www-authenticate", b'Bearer realm="librorum"')],
            )
        else:
            try:
                page = await self._render()
            except Exception:
                log.exception("metrics endpoint: rendering the page failed")
                await _send(connection, stream, 500, "internal error; see the daemon's log\n")
                return
            await _send(
                connection,
                stream,
                200,
                page.body,
                [(b"content-type", page.content_type.encode())],
            )

    def _authorized(self, request: h11.Request) -> bool:
        # As the WebSocket listener checks its token (one header, the scheme in any case).
        return self._token is None or bearer_token_matches(request.headers, self._token)


async def _linger(stream: trio.abc.Stream) -> None:
    """After an answer given before the request was read whole: say we are done sending and
    read what the client still sends (bounded in bytes and time), so that closing with unread
    data does not reset the connection and destroy the answer before the client reads it."""
    with trio.move_on_after(LINGER_SECONDS):
        if isinstance(stream, trio.SocketStream):
            await stream.send_eof()
        drained = 0
        while drained < LINGER_BYTES:
            chunk = await stream.receive_some(MAX_REQUEST_BYTES)
            if not chunk:
                return
            drained += len(chunk)


async def _next_request(connection: h11.Connection, stream: trio.abc.Stream) -> h11.Request | None:
    """The request head, or ``None`` if the client closed first.

    Raises:
        h11.RemoteProtocolError: Not HTTP/1.1, or a head over ``MAX_REQUEST_BYTES``.
    """
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            connection.receive_data(bytes(await stream.receive_some(MAX_REQUEST_BYTES)))
            continue
        if isinstance(event, h11.Request):
            return event
        return None  # ConnectionClosed (h11 raises for anything else before a request)


async def _send(
    connection: h11.Connection,
    stream: trio.abc.Stream,
    status: int,
    body: bytes | str,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    data = body.encode() if isinstance(body, str) else body
    all_headers = [
        (b"content-length", str(len(data)).encode()),
        (b"connection", b"close"),
        *(headers or [(b"content-type", b"text/plain; charset=utf-8")]),
    ]
    if headers and not any(name == b"content-type" for name, _ in headers):
        all_headers.append((b"content-type", b"text/plain; charset=utf-8"))
    try:
        out = connection.send(h11.Response(status_code=status, headers=all_headers))
        out += connection.send(h11.Data(data=data))
        out += connection.send(h11.EndOfMessage())
    except h11.LocalProtocolError:
        return  # h11 cannot answer in this state (the request was unreadable): just close
    await stream.send_all(out)
