"""LBRU over WebSocket, the listener: :func:`serve_websocket`.

Our own TCP (or TLS) listeners, because the connection caps must apply *before* the HTTP
upgrade is read (a peer that connects and sends nothing costs a slot), and authentication
happens before the upgrade is accepted. A connection over a cap gets a canned HTTP 503 (its
request is not even read); the request head is capped (431); the bearer token is compared with
:func:`hmac.compare_digest`, and an address that keeps presenting wrong ones backs off (429).
Tokens in the URL query are never looked at (they end up in logs and browser history).
Each accepted connection becomes a :class:`~librorum.transport.websocket.WsTransport`.
"""

from __future__ import annotations

import contextlib
import http
import logging
import math
import ssl
from collections.abc import Collection, Sequence
from functools import partial
from typing import NoReturn

import attrs
import trio
import wsproto
import wsproto.utilities
from wsproto.events import (
    AcceptConnection,
    RejectConnection,
    Request,
)
from wsproto.frame_protocol import CloseReason as WsCloseCode

from librorum.config import ConfigError
from librorum.errors import (
    ConnectionClosed,
    ConnectionLimitError,
    ErrorCode,
)
from librorum.limits import (
    AUTH_BACKOFF_MAX,
    AUTH_FAILURES_ALLOWED,
    CLOSE_GRACE,
    FD_RESERVE,
    FRAME_TIMEOUT,
    HANDSHAKE_TIMEOUT,
    LISTEN_BACKLOG,
    MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_IP,
    MAX_UNAUTHENTICATED,
    WS_BUSY_RETRY_AFTER,
    WS_MAX_REQUEST_HEAD,
    WS_PING_INTERVAL,
    WS_PONG_TIMEOUT,
    WS_RECEIVE_BUFFER,
    WS_REFUSAL_DRAIN,
    WS_REFUSAL_LINGER,
)
from librorum.protocol.constants import WS_HANDSHAKE_MESSAGE_SIZE, WS_MAX_MESSAGE_SIZE
from librorum.transport._throttle import AuthBackoff, LogLimiter, address_key
from librorum.transport.base import (
    Handler,
    PeerInfo,
    Reclaim,
    bearer_token_matches,
    connection_guard,
    fd_headroom,
    logger,
    refusal_frame,
    run_handler,
)
from librorum.transport.websocket import (
    WS_PEER_ERRORS,
    WebSocketConnection,
    WsClosed,
    WsTransport,
    as_bytes,
    socket_of,
)


@attrs.define
class _Gate:
    """Connection accounting. The pre-handshake caps apply at TCP accept, before a byte is
    read; the total cap applies once the peer is authenticated, when it can be told why."""

    max_connections: int
    max_per_ip: int
    max_unauthenticated: int
    fd_reserve: int
    reclaim: Reclaim | None = None
    handshaking: int = 0
    established: int = 0
    # Connections over a cap being answered with 503: each holds a descriptor for up to the
    # refusal linger, so they are capped too (at max_unauthenticated); past that, a connection
    # is closed unanswered.
    refusing: int = 0
    # Every connection of an address, handshaking or established.
    per_ip: dict[str, int] = attrs.Factory(dict)

    def enter(self, ip: str, fd: int) -> str | None:
        """Count a new TCP connection in, or say why it is refused. No await: atomic.

        At a full per-IP cap, a connection is still let in to its handshake when one of that
        address's connections has stalled (see :class:`~librorum.transport.base.Reclaim`):
        only once it has authenticated is the stalled one closed for it (:meth:`establish`),
        so a peer that cannot log in never closes anybody's connection.
        """
        if self.handshaking >= self.max_unauthenticated:
            return f"{self.handshaking} connections are already in their handshake"
        if self.per_ip.get(ip, 0) >= self.max_per_ip and not self._reclaim(ip, evict=False):
            return f"{ip} already has {self.max_per_ip} connections"
        if not fd_headroom(fd, self.fd_reserve):
            return "the descriptor reserve is reached"
        self.handshaking += 1
        self.per_ip[ip] = self.per_ip.get(ip, 0) + 1
        return None

    def establish(self, ip: str) -> bool:
        """Count an authenticated connection in (False: refused for the caps). Over a full
        per-IP or total cap, a stalled connection (of that address, or any) is closed for it;
        the cap is exceeded only until that one has closed (the close grace at most)."""
        if self.per_ip.get(ip, 0) > self.max_per_ip:
            # The connection closed for it frees its seat under the total cap as well.
            if not self._reclaim(ip, evict=True):
                return False
        elif self.established >= self.max_connections and not self._reclaim(None, evict=True):
            return False
        self.established += 1
        return True

    def _reclaim(self, ip: str | None, *, evict: bool) -> bool:
        return self.reclaim is not None and self.reclaim("websocket", ip, evict=evict)

    def leave(self, ip: str) -> None:
        left = self.per_ip[ip] - 1
        if left:
            self.per_ip[ip] = left
        else:
            del self.per_ip[ip]


@attrs.frozen
class _Settings:
    handler: Handler
    token: bytes | None
    allowed_origins: frozenset[str]
    handshake_timeout: float
    close_grace: float
    ping_interval: float | None
    pong_timeout: float
    message_timeout: float | None
    max_message_size: int
    first_message_size: int | None
    receive_buffer_size: int
    max_request_head: int
    refusal_linger: float
    check_frames: bool


@attrs.define
class _Guards:
    """The listener's memory of addresses: failed authentications, and log lines held back."""

    backoff: AuthBackoff
    log: LogLimiter = attrs.Factory(LogLimiter)

    def log_refusal(self, what: str, ip: str, level: int, message: str, *args: object) -> None:
        """Log a refused connection, at most once per address and kind per interval."""
        held_back = self.log.allow(f"{what} {address_key(ip)}", trio.current_time())
        if held_back is None:
            return
        if held_back:
            message += " (and %d more like it from there since the last report)"
            args = (*args, held_back)
        logger.log(level, message, *args)


@attrs.frozen
class _Refusal:
    """An HTTP answer that refuses a handshake."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...] = ()


async def serve_websocket(
    handler: Handler,
    host: str,
    port: int,
    *,
    token: str | None,
    ssl_context: ssl.SSLContext | None = None,
    max_connections: int = MAX_CONNECTIONS,
    max_per_ip: int = MAX_CONNECTIONS_PER_IP,
    max_unauthenticated: int = MAX_UNAUTHENTICATED,
    allowed_origins: Collection[str] = (),
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    close_grace: float = CLOSE_GRACE,
    ping_interval: float | None = WS_PING_INTERVAL,
    pong_timeout: float = WS_PONG_TIMEOUT,
    message_timeout: float | None = FRAME_TIMEOUT,
    max_message_size: int = WS_MAX_MESSAGE_SIZE,
    first_message_size: int | None = WS_HANDSHAKE_MESSAGE_SIZE,
    check_frames: bool = True,
    receive_buffer_size: int = WS_RECEIVE_BUFFER,
    max_request_head: int = WS_MAX_REQUEST_HEAD,
    refusal_linger: float = WS_REFUSAL_LINGER,
    auth_failures_allowed: int = AUTH_FAILURES_ALLOWED,
    auth_backoff_max: float = AUTH_BACKOFF_MAX,
    fd_reserve: int = FD_RESERVE,
    backlog: int = LISTEN_BACKLOG,
    reclaim: Reclaim | None = None,
    handler_nursery: trio.Nursery | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Listen for WebSocket clients on ``host``:``port`` and run ``handler`` for each
    authenticated connection.

    Start it with ``await nursery.start(serve_websocket, handler, host, port, token=...)``; the
    start returns the actual ``(host, port)`` (``port=0`` picks a free port; when ``host``
    resolves to several addresses, only the first is served then, so there is one port).

    Admission, in order:

    1. at TCP accept: connections still in their handshake are capped at
       ``max_unauthenticated``, and an address's connections (any stage) at ``max_per_ip``;
       over either (or when the descriptor reserve is reached), the connection is answered
       with HTTP 503 and a Retry-After without its request being read, then drained for at
       most ``refusal_linger`` seconds and closed. At most ``max_unauthenticated`` such
       answers are under way; past that, a connection is closed unanswered: a flood costs
       little;
    2. the TLS handshake (with ``ssl_context``) and the HTTP upgrade request must complete
       within ``handshake_timeout``; a request head over ``max_request_head`` bytes gets 431,
       a request that is not a WebSocket upgrade 400 (or 426 for another WebSocket version),
       and any refused connection is drained for at most ``refusal_linger`` seconds after its
       answer before it is closed;
    3. an address that failed authentication ``auth_failures_allowed`` times in a row backs
       off: its handshakes get 429 with a Retry-After, without their token being looked at,
       for 1 s after the next failure, doubling with each further one up to
       ``auth_backoff_max`` (:class:`~librorum.transport._throttle.AuthBackoff`);
    4. with a ``token``, the request must carry ``Authorization: Bearer <token>`` (compared
       with :func:`hmac.compare_digest`); otherwise it is rejected with HTTP 401 before any
       WebSocket exists. A token in the URL is ignored. A request with an ``Origin`` header
       (a browser) is rejected with 403 unless the origin is in ``allowed_origins``: a web
       page must not reach a local daemon through the visitor's browser;
    5. past ``max_connections`` established connections, the connection is accepted, sent an
       LBRU ERROR frame (CONNECTION_LIMIT) and closed (1013), so the client learns why.

    At a full per-IP or total cap, ``reclaim`` may make room by closing a stalled connection
    (of that address, for the per-IP cap); a newcomer over the per-IP cap goes through its
    handshake first, and the stalled connection is closed only once it has authenticated.

    Refusals are logged at most once per address and kind per minute, with a count of those
    held back.

    Once established, a message larger than ``first_message_size`` (until the handler sends
    its first frame: spec 2.2's pre-HELLO budget; ``None`` for no such limit) or
    ``max_message_size`` (after), or not complete within ``message_timeout`` of its first
    byte, or breaking RFC 6455, makes the transport's ``receive_some`` raise (see
    :class:`WsTransport`). The server pings every ``ping_interval`` seconds and closes the
    connection when a pong takes longer than ``pong_timeout``. When the handler returns (or
    fails: see :func:`~librorum.transport.base.run_handler`) the connection is closed, with at
    most ``close_grace`` for the close handshake.

    Args:
        handler: called with each authenticated connection's :class:`WsTransport`.
        host, port: where to listen.
        token: the bearer token clients must present; ``None`` disables authentication
            (loopback only; the configuration enforces it).
        ssl_context: serve ``wss://`` with this server context.
        check_frames: as for :class:`WsTransport`: False when the handler checks that each
            message is one frame itself (the daemon's connection does, after the header
            checks).
        receive_buffer_size: bytes asked for per read.
        fd_reserve, backlog, reclaim, handler_nursery, task_status: as for
            :func:`~librorum.transport.uds.serve_uds` (``reclaim`` is called with
            ("websocket", ip) for the per-IP cap and ("websocket", None) for the total).

    Cancellation: stops accepting and closes the listeners; connections in our own nursery
    are cancelled (each gets ``close_grace`` to close), those in ``handler_nursery`` are not.

    Raises:
        ConfigError: the address cannot be bound (in use, not local, no permission, unknown
            host name); the OS error is the ``__cause__``.
        ValueError: ``token`` is an empty string.
    """
    if token is not None and not token:
        msg = "token must be None (no authentication) or a non-empty string"
        raise ValueError(msg)
    settings = _Settings(
        handler=handler,
        token=None if token is None else token.encode(),
        allowed_origins=frozenset(allowed_origins),
        handshake_timeout=handshake_timeout,
        close_grace=close_grace,
        ping_interval=ping_interval,
        pong_timeout=pong_timeout,
        message_timeout=message_timeout,
        max_message_size=max_message_size,
        first_message_size=first_message_size,
        receive_buffer_size=receive_buffer_size,
        max_request_head=max_request_head,
        refusal_linger=refusal_linger,
        check_frames=check_frames,
    )
    gate = _Gate(max_connections, max_per_ip, max_unauthenticated, fd_reserve, reclaim)
    guards = _Guards(AuthBackoff(allowed=auth_failures_allowed, longest=auth_backoff_max))
    try:
        tcp_listeners = await trio.open_tcp_listeners(port, host=host, backlog=backlog)
    except OSError as exc:
        msg = f"cannot listen on {host}:{port}: {exc.strerror or exc}"
        raise ConfigError(msg) from exc
    if port == 0 and len(tcp_listeners) > 1:
        # Each address would get its own random port; serve one so that there is one answer.
        for extra in tcp_listeners[1:]:
            await extra.aclose()
        tcp_listeners = tcp_listeners[:1]
    bound_host, bound_port = tcp_listeners[0].socket.getsockname()[:2]
    listeners: list[trio.abc.Listener[trio.abc.Stream]]
    if ssl_context is None:
        listeners = list(tcp_listeners)
    else:
        listeners = [
            trio.SSLListener(listener, ssl_context, https_compatible=True)
            for listener in tcp_listeners
        ]
    serve_one = partial(_serve_connection, settings=settings, gate=gate, guards=guards)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            partial(trio.serve_listeners, serve_one, listeners, handler_nursery=handler_nursery)
        )
        scheme = "ws" if ssl_context is None else "wss"
        logger.info("listening on %s://%s:%d", scheme, bound_host, bound_port)
        task_status.started((bound_host, bound_port))
        await trio.sleep_forever()


async def _serve_connection(
    stream: trio.abc.Stream,
    *,
    settings: _Settings,
    gate: _Gate,
    guards: _Guards,
) -> None:
    try:
        ip, port = socket_of(stream).getpeername()[:2]
    except OSError:
        await trio.aclose_forcefully(stream)
        return
    address = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
    refusal = gate.enter(ip, socket_of(stream).fileno())
    if refusal is not None:
        await _refuse_busy(stream, settings, gate, guards, ip, address, refusal)
        return
    handshaking = True
    try:
        with connection_guard(address, WS_PEER_ERRORS):
            try:
                ws = await _handshake(stream, settings, guards, ip, address)
            finally:
                gate.handshaking -= 1
                handshaking = False
            if ws is not None:
                await _run_established(ws, settings, gate, ip, address)
    finally:
        if handshaking:
            gate.handshaking -= 1
        gate.leave(ip)
        await trio.aclose_forcefully(stream)


async def _refuse_busy(
    stream: trio.abc.Stream,
    settings: _Settings,
    gate: _Gate,
    guards: _Guards,
    ip: str,
    address: str,
    why: str,
) -> None:
    """Answer a connection over a cap with 503 and close it; the request is not read, only
    drained. Past ``max_unauthenticated`` answers under way, close it unanswered."""
    answer = gate.refusing < gate.max_unauthenticated
    guards.log_refusal(
        "busy",
        ip,
        logging.WARNING,
        "refusing WebSocket connection from %s%s: %s",
        address,
        "" if answer else " unanswered",
        why,
    )
    try:
        if answer:
            gate.refusing += 1
            try:
                retry = (("Retry-After", str(WS_BUSY_RETRY_AFTER)),)
                busy = _Refusal(503, "too many connections; try again later", retry)
                await _answer(stream, busy, settings.refusal_linger)
            finally:
                gate.refusing -= 1
    finally:
        await trio.aclose_forcefully(stream)


def _http_response(refusal: _Refusal) -> bytes:
    """A complete HTTP response for ``refusal``, with its reason as a text body."""
    body = refusal.reason.encode() + b"\n"
    lines = [
        f"HTTP/1.1 {refusal.status} {http.HTTPStatus(refusal.status).phrase}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in refusal.headers),
    ]
    return "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body


async def _answer(stream: trio.abc.Stream, refusal: _Refusal, linger: float) -> None:
    """Send the refusal, then read and discard what the client still sends (up to
    ``WS_REFUSAL_DRAIN`` bytes, until it closes, for at most ``linger`` seconds): closing a
    socket with unread input resets the connection, which can destroy the answer in flight.
    The peer's errors are ignored: it is being turned away."""
    with trio.move_on_after(linger):
        try:
            await stream.send_all(_http_response(refusal))
            if isinstance(stream, trio.abc.HalfCloseableStream):
                await stream.send_eof()
            drained = 0
            while drained < WS_REFUSAL_DRAIN:
                data = await stream.receive_some(WS_REFUSAL_DRAIN - drained)
                if not data:
                    break
                drained += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


async def _handshake(
    stream: trio.abc.Stream,
    settings: _Settings,
    guards: _Guards,
    ip: str,
    address: str,
) -> WebSocketConnection | None:
    """Read the upgrade request, check it, accept it or answer why not. None: refused, timed
    out or abandoned (logged)."""
    ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
    refusal: _Refusal | None = None
    with trio.move_on_after(settings.handshake_timeout):
        request = await _read_request(stream, ws, settings.max_request_head)
        if request is None:
            return None  # the client left before finishing its request
        if isinstance(request, Request):
            refusal = _admit(request, settings, guards, ip, address)
            if refusal is None:
                await stream.send_all(ws.send(AcceptConnection()))
                return WebSocketConnection(
                    stream,
                    ws,
                    max_message_size=settings.max_message_size,
                    receive_size=settings.receive_buffer_size,
                    close_grace=settings.close_grace,
                    message_timeout=settings.message_timeout,
                )
        else:
            refusal = request
            guards.log_refusal(
                "request",
                ip,
                logging.WARNING,
                "refusing WebSocket handshake from %s: %d %s",
                address,
                refusal.status,
                refusal.reason,
            )
    if refusal is None:
        guards.log_refusal(
            "request", ip, logging.INFO, "WebSocket handshake from %s timed out", address
        )
        return None
    await _answer(stream, refusal, settings.refusal_linger)
    return None


async def _read_request(
    stream: trio.abc.Stream, ws: wsproto.WSConnection, max_head: int
) -> Request | _Refusal | None:
    """The upgrade request, read up to ``max_head`` bytes; a refusal when it is too long or
    not an upgrade request; None when the client closed first."""
    received = 0
    while True:
        for event in ws.events():
            if isinstance(event, Request):
                return event
        data = await stream.receive_some(max_head + 1 - received)
        if not data:
            return None
        received += len(data)
        if received > max_head:
            return _Refusal(431, f"the request head is over {max_head} bytes")
        try:
            ws.receive_data(as_bytes(data))
        except wsproto.utilities.RemoteProtocolError as exc:
            hint = exc.event_hint
            if isinstance(hint, RejectConnection):
                headers = tuple(
                    (name.decode("latin-1"), value.decode("latin-1"))
                    for name, value in hint.headers
                )
                return _Refusal(hint.status_code, f"not a WebSocket upgrade: {exc}", headers)
            return _Refusal(400, f"not a WebSocket upgrade: {exc}")
        except UnicodeError:
            # wsproto decodes the Host header as IDNA, and lets a bad one through like this.
            return _Refusal(400, "not a WebSocket upgrade: the Host header is no host name")


def _admit(
    request: Request, settings: _Settings, guards: _Guards, ip: str, address: str
) -> _Refusal | None:
    """None to accept the upgrade request, else the answer that refuses it (logged)."""
    key = address_key(ip)
    now = trio.current_time()
    wait = guards.backoff.wait(key, now)
    if wait > 0:
        guards.log_refusal(
            "auth",
            ip,
            logging.WARNING,
            "refusing WebSocket handshake from %s: too many failed authentications "
            "(%.3g s of back-off left)",
            address,
            wait,
        )
        retry = (("Retry-After", str(math.ceil(wait))),)
        return _Refusal(429, "too many failed authentications; try again later", retry)
    keys = sum(1 for name, _ in request.extra_headers if name == b"sec-websocket-key")
    if keys != 1:
        refusal = _Refusal(400, "not a WebSocket upgrade: more than one Sec-WebSocket-Key")
        guards.log_refusal(
            "request",
            ip,
            logging.WARNING,
            "refusing WebSocket handshake from %s: %s",
            address,
            refusal.reason,
        )
        return refusal
    verdict = _authorize(request.extra_headers, settings)
    if verdict is None:
        guards.backoff.succeeded(key)
        return None
    status, reason = verdict
    headers: tuple[tuple[str, str], ...] = ()
    detail = ""
    if status == 401:
        headers = (("WWW-Authenticate", 'Bearer realm="librorum"'),)
        failures, wait = guards.backoff.failed(key, now)
        if wait:
            headers = (*headers, ("Retry-After", str(math.ceil(wait))))
            detail = f" ({failures} failures in a row: backing off for {wait:g} s)"
    guards.log_refusal(
        "auth",
        ip,
        logging.WARNING,
        "rejecting WebSocket handshake from %s: %s%s",
        address,
        reason,
        detail,
    )
    return _Refusal(status, reason, headers)


def _authorize(
    headers: Sequence[tuple[bytes, bytes]], settings: _Settings
) -> tuple[int, str] | None:
    """(HTTP status, reason) to reject the upgrade request with, or None to accept it."""
    if settings.token is not None:
        if sum(name == b"authorization" for name, _ in headers) != 1:
            return 401, "a bearer token is required (Authorization: Bearer TOKEN)"
        if not bearer_token_matches(headers, settings.token):
            return 401, "invalid token"
    origins = [value for name, value in headers if name == b"origin"]
    if origins and not all(
        origin.decode("latin-1") in settings.allowed_origins for origin in origins
    ):
        return 403, "cross-origin (browser) connections are not allowed"
    return None


async def _run_established(
    ws: WebSocketConnection, settings: _Settings, gate: _Gate, ip: str, address: str
) -> None:
    peer = PeerInfo("websocket", address=address, authenticated=settings.token is not None)
    transport = WsTransport(
        ws,
        peer,
        close_grace=settings.close_grace,
        first_message_size=settings.first_message_size,
        check_frames=settings.check_frames,
    )
    if not gate.establish(ip):
        logger.warning("refusing WebSocket connection from %s: connection limit", address)
        error = ConnectionLimitError("too many connections; try later")
        with contextlib.suppress(ConnectionClosed):
            frame = refusal_frame(ErrorCode.CONNECTION_LIMIT, str(error))
            with trio.move_on_after(settings.close_grace):
                await transport.send_frames([(frame,)])
        await transport.aclose(error=error)
        return
    try:
        async with trio.open_nursery() as nursery:
            if settings.ping_interval is not None:
                nursery.start_soon(
                    _keepalive, ws, transport, settings.ping_interval, settings.pong_timeout
                )
            await run_handler(settings.handler, transport)
            nursery.cancel_scope.cancel()
    finally:
        gate.established -= 1
        # Shielded but bounded by close_grace (inside _close): even on shutdown the peer gets
        # a proper close frame when it answers promptly.
        with trio.CancelScope(shield=True):
            await transport.aclose()


async def _keepalive(
    ws: WebSocketConnection,
    transport: WsTransport,
    interval: float,
    pong_timeout: float,
) -> None:
    """Ping every ``interval``; close the connection when a pong is ``pong_timeout`` late."""
    while True:
        await trio.sleep(interval)
        with trio.move_on_after(pong_timeout) as scope:
            try:
                await ws.ping()
            except WsClosed:
                return
        if scope.cancelled_caught:
            why = f"the peer did not answer a ping within {pong_timeout:g} s"
            logger.info("closing WebSocket %s: %s", transport.peer.address, why)
            await transport.close_because(why, code=int(WsCloseCode.INTERNAL_ERROR))
            return
