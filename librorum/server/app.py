"""The daemon: ``serve(config, *, task_status)`` runs the store and both listeners.

Nesting (hypercorn's): the store outlives the connection handlers, which outlive the listeners.
Shutdown (SIGINT/SIGTERM, or :meth:`RunningServer.shutdown`): every connection gets GOAWAY and
drains its requests in flight; after ``grace`` seconds what still runs is cancelled (a commit in
progress is shielded and completes, nothing partial becomes visible); then the listeners stop
and the store closes.

    trio.run(librorum.serve)                       # a daemon on the defaults
    running = await nursery.start(librorum.serve, config)   # embedded; returns once both
                                                            # listeners accept connections
"""

from __future__ import annotations

import contextlib
import functools
import logging
import resource
import signal
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import trio

from librorum import limits
from librorum.config import Config, ConfigError, load_config, split_host_port
from librorum.protocol.constants import DEFAULT_MAX_FILE_SIZE, Feature
from librorum.protocol.session import ServerLimits
from librorum.server.budget import InflightBudget, give_memory_back
from librorum.server.connection import Connection
from librorum.server.context import ServerContext, Timeouts
from librorum.server.http import HttpEndpoint
from librorum.server.logsetup import log_ring
from librorum.server.metrics import Metrics
from librorum.server.node_id import load_or_create_node_id
from librorum.server.sd_notify import Notifier
from librorum.service import Admins, ScrubSettings, Service, Stats
from librorum.service.logring import LogRing
from librorum.store import open_store
from librorum.transport import (
    load_or_create_token,
    serve_uds,
    serve_websocket,
    single_instance_lock,
)
from librorum.version import __version__

if TYPE_CHECKING:
    from librorum.store import Store
    from librorum.transport import FrameTransport

log = logging.getLogger("librorum.server")

#: Where the background scrub keeps its position in the data directory (see
#: ``service/checks.py``): a restart resumes the pass there.
SCRUB_STATE_FILE = "scrub.json"


class Server:
    """One daemon's LBRU front door: the connections it serves over the service core, what
    they share (:class:`~librorum.server.context.ServerContext`), and the live connections
    that shutdown drains.

    Args:
        config: The daemon's configuration (deadlines, the in-flight budget, the grace).
        store: The open store the service runs over.
        max_file_size: What HELLO announces; ``None`` (the default) for what the service
            enforces, which is the store's limit.
        node_id: The node's identity (default: a random one; the daemon keeps one in its
            data directory).
        logs: The ring of the daemon's log records the log commands read (``serve``
            installs one; default: an empty one).
    """

    def __init__(
        self,
        config: Config,
        store: Store,
        *,
        max_file_size: int | None = None,
        node_id: str | None = None,
        logs: LogRing | None = None,
    ) -> None:
        self.config = config
        self.shutdown_requested = trio.Event()
        #: The daemon's figures (the connections count into them; NODE_STATUS reports them).
        self.stats = Stats()
        #: Upload bytes in flight, across every connection (spec 9.2).
        self.budget = InflightBudget(config.max_inflight_bytes)
        self.service = Service(
            store,
            stats=self.stats,
            inflight=self.budget,
            admins=Admins(config.admin_uids),
            node_id=node_id,
            on_shutdown=self.shutdown_requested.set,
            logs=logs,
        )
        offer = ServerLimits(
            max_file_size=self.service.max_file_size if max_file_size is None else max_file_size,
            initial_window=limits.INITIAL_UPLOAD_WINDOW,
            # Offered on Unix sockets only (ServerContext.features_for): spec 8.
            features=int(Feature.FD_PASSING | Feature.MEMFD),
            server=f"librorum/{__version__}",
        )
        timeouts = Timeouts(
            handshake=config.handshake_timeout,
            frame=config.frame_timeout,
            idle_uds=config.idle_timeout_uds,
            idle_ws=config.idle_timeout_ws,
            stream=config.stream_timeout,
            reclaim=config.reclaim_after,
        )
        #: What each connection is given.
        self.context = ServerContext(
            service=self.service,
            limits=offer,
            timeouts=timeouts,
            stats=self.stats,
            budget=self.budget,
            grace=config.shutdown_grace,
        )
        self.connections: set[Connection] = set()
        self._idle = trio.Event()
        self._idle.set()

    @property
    def shutting_down(self) -> bool:
        """The daemon is draining (new connections get GOAWAY after their HELLO)."""
        return self.context.shutting_down

    async def handle(self, transport: FrameTransport) -> None:
        """Serve one connection (the listeners' handler)."""
        connection = Connection(self.context, transport)
        self.connections.add(connection)
        self._idle = trio.Event()
        try:
            # During a drain, a new connection gets GOAWAY right after its HELLO (see
            # the connection's HELLO handling): before the handshake there is nothing to say it
            # with.
            await connection.run()
        finally:
            self.connections.discard(connection)
            if not self.connections:
                self._idle.set()

    def reclaim(self, kind: str, key: int | str | None, *, evict: bool = True) -> bool:
        """Make room under a full connection cap (the listeners' callback, see
        :class:`~librorum.transport.base.Reclaim`): close the connection of transport
        ``kind`` (and peer ``key``: a uid or an IP address; ``None`` for any) that has waited
        longest on its client, if that is at least the reclaim threshold. It gets ERROR
        CONNECTION_LIMIT and ends within the close grace; its requests end as on any
        disconnect (nothing partial is committed). With ``evict=False``, nothing is closed.

        Returns:
            Whether there is such a connection (the caller may admit one more meanwhile).
        """
        now = trio.current_time()
        chosen: Connection | None = None
        longest = self.context.timeouts.reclaim
        for connection in self.connections:
            if connection.evicted or connection.transport.kind != kind:
                continue
            if key is not None and connection.transport.peer.key != key:
                continue
            waited = connection.waiting_on_client(now)
            if waited >= longest:
                chosen, longest = connection, waited
        if chosen is None or not evict:
            return chosen is not None
        chosen.evict(
            f"closed to admit a new connection: the connection limit was reached and this "
            f"one had waited {longest:.0f} s on its client"
        )
        return True

    async def wait_idle(self) -> None:
        """Wait until no connection is open (each one closed and cleaned up).

        Cancellation: safe.
        """
        await self._idle.wait()

    async def drain(self) -> None:
        """Shut down gracefully: GOAWAY everywhere, wait up to ``grace`` for requests in flight,
        cancel the rest, and wait (briefly) for the connections to say goodbye."""
        self.context.stopping.set()
        for connection in list(self.connections):
            connection.goaway()
        with trio.move_on_after(self.context.grace):
            await self._idle.wait()
        for connection in list(self.connections):
            connection.cancel_requests()
        with trio.move_on_after(self.context.timeouts.close):
            await self._idle.wait()

    def traffic(self) -> tuple[int, int]:
        """(requests running in a task now, requests received since the start): what the
        background scrub yields to (requests answered inline take no time to yield to)."""
        return sum(len(c.requests) for c in self.connections), self.stats.requests


@attrs.frozen
class RunningServer:
    """What ``nursery.start(serve, config)`` returns: where the daemon listens, and how to
    stop it."""

    socket_path: Path
    #: (host, port) of the WebSocket listener, or ``None`` when remote access is off.
    websocket: tuple[str, int] | None
    server: Server = attrs.field(repr=False)
    #: (host, port) of the metrics endpoint, or ``None`` when it is off.
    metrics: tuple[str, int] | None = None

    @property
    def url(self) -> str | None:
        if self.websocket is None:
            return None
        host, port = self.websocket
        scheme = "wss" if self.server.config.tls_enabled else "ws"
        return f"{scheme}://{host}:{port}"

    def shutdown(self) -> None:
        """Ask the daemon to shut down gracefully; ``serve`` returns when it is done."""
        self.server.shutdown_requested.set()


async def serve(
    config: Config | None = None,
    *,
    handle_signals: bool = True,
    task_status: trio.TaskStatus[RunningServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the daemon until SIGINT/SIGTERM or :meth:`RunningServer.shutdown`.

    Args:
        config: the configuration; ``None`` loads it from the environment and the default
            config file (:func:`librorum.config.load_config`).
        handle_signals: shut down gracefully on SIGINT/SIGTERM (only possible in the main
            thread; an embedding program that handles signals itself passes ``False``).
        task_status: receives a :class:`RunningServer` once both listeners accept (and the
            metrics endpoint, when configured).

    Under a service manager (``NOTIFY_SOCKET`` set), the daemon says READY=1 at that point,
    STOPPING=1 when it begins to shut down, and WATCHDOG=1 every half ``WATCHDOG_USEC``
    (see :mod:`librorum.server.sd_notify`).

    Raises:
        AlreadyRunningError: another daemon holds the data directory or the socket.
        ConfigError: the configuration is unusable (e.g. a public address without a token),
            or the descriptor limit is too low (see :func:`fit_descriptors`).
        LibrorumError: the store could not be opened.

    Cancellation: cancelling ``serve`` stops everything at once (no drain); prefer
    :meth:`RunningServer.shutdown` for a graceful stop.
    """
    if config is None:
        config = load_config()
    max_connections = fit_descriptors(config)
    config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    # One value for what the store enforces and what HELLO announces.
    max_file_size = DEFAULT_MAX_FILE_SIZE
    notifier = Notifier()
    with (
        single_instance_lock(config.data_dir),
        contextlib.closing(notifier),
        log_ring(config.log_ring_size, config.log_level) as ring,
    ):
        node_id = load_or_create_node_id(config.data_dir)
        async with (
            open_store(
                config.data_dir / "store",
                max_file_size=max_file_size,
                min_free_space=config.min_free_space,
            ) as store,
            trio.open_nursery() as handlers,
        ):
            server = Server(config, store, max_file_size=max_file_size, node_id=node_id, logs=ring)
            async with trio.open_nursery() as listeners:
                # Connections run in the outer nursery, so stopping the listeners does not
                # cut the requests in flight: shutdown drains them first.
                socket_path = await listeners.start(
                    functools.partial(
                        serve_uds,
                        server.handle,
                        config.socket_path,
                        allowed_uids=config.allowed_uids,
                        max_connections=max_connections,
                        max_per_uid=min(config.max_connections_per_uid, max_connections),
                        reclaim=server.reclaim,
                        handler_nursery=handlers,
                    )
                )
                websocket = None
                # One TLS context for the listeners that speak TLS (the certificate is read
                # once).
                ssl_context = _server_ssl_context(config)
                if config.remote_enabled:
                    token = None
                    if config.token_file is not None:
                        token = load_or_create_token(config.token_file)
                    websocket = await listeners.start(
                        functools.partial(
                            serve_websocket,
                            server.handle,
                            config.listen_host,
                            config.listen_port,
                            token=token,
                            ssl_context=ssl_context,
                            max_connections=max_connections,
                            max_per_ip=min(config.max_connections_per_ip, max_connections),
                            max_unauthenticated=min(config.max_unauthenticated, max_connections),
                            handshake_timeout=config.handshake_timeout,
                            # One deadline for frames and for the messages that carry them.
                            message_timeout=server.context.timeouts.frame,
                            # Each connection checks that a message is one frame itself,
                            # after the header checks, so a bad header is reported first.
                            check_frames=False,
                            auth_failures_allowed=config.auth_failures_allowed,
                            auth_backoff_max=config.auth_backoff_max,
                            reclaim=server.reclaim,
                            handler_nursery=handlers,
                        )
                    )
                metrics = None
                if config.metrics_listen is not None:
                    host, port = split_host_port(config.metrics_listen)
                    # A token of its own: the WebSocket token makes its holder an
                    # administrator (spec 2.5), which a scraper must not be.
                    scrape_token = None
                    if config.metrics_token_file is not None:
                        scrape_token = load_or_create_token(config.metrics_token_file)
                    endpoint = HttpEndpoint(
                        Metrics(server).render,
                        path="/metrics",
                        token=scrape_token,
                        ssl_context=ssl_context,
                    )
                    metrics = await listeners.start(endpoint.serve, host, port)
                running = RunningServer(socket_path, websocket, server, metrics)
                where = f"{socket_path}{f' and {running.url}' if running.url else ''}"
                if metrics is not None:
                    where += f", metrics at {_http_url(config, metrics)}/metrics"
                log.info("librorum %s serving %s on %s", __version__, config.data_dir, where)
                notifier.notify(READY="1", STATUS=f"serving on {where}")
                # In the outer nursery: the watchdog goes on through the drain.
                handlers.start_soon(notifier.watchdog)
                if handle_signals:
                    listeners.start_soon(_watch_signals, server)
                listeners.start_soon(give_memory_back, server.budget)
                # The scrub stops with the listeners: at shutdown, before the drain.
                listeners.start_soon(
                    server.service.checks.run_scrub,
                    ScrubSettings(
                        rate=config.scrub_rate,
                        interval=config.scrub_interval,
                        state_file=config.data_dir / SCRUB_STATE_FILE,
                    ),
                    server.traffic,
                )
                task_status.started(running)
                await server.shutdown_requested.wait()
                listeners.cancel_scope.cancel()  # stop accepting
            log.info("shutting down: draining %d connections", len(server.connections))
            notifier.notify(
                STOPPING="1",
                STATUS=f"shutting down: draining {len(server.connections)} connections",
            )
            await server.drain()
            handlers.cancel_scope.cancel()
    log.info("stopped")


def fit_descriptors(config: Config) -> int:
    """The connection cap per listener that the descriptor limit (RLIMIT_NOFILE) allows.

    Each connection is a descriptor, and the store needs its own (``limits.FD_RESERVE``,
    ``limits.FD_BASE``). The soft limit is raised towards the hard one as far as the
    configured caps need; if that is not enough, the caps are lowered to fit, with one
    WARNING saying so, and if not even ``limits.MIN_CONNECTIONS`` per listener fit, the
    daemon refuses to start. (A daemon that started regardless would refuse every
    connection at the descriptor reserve, forever.)

    Returns:
        ``config.max_connections``, or the lower cap that fits.

    Raises:
        ConfigError: too few descriptors for even ``MIN_CONNECTIONS`` per listener; the
            message names the limit needed.
    """
    listeners = 2 if config.remote_enabled else 1
    fixed = limits.FD_BASE + limits.FD_RESERVE
    wanted = fixed + listeners * config.max_connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted and hard != soft:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return config.max_connections
    fits = (soft - fixed) // listeners
    if fits < limits.MIN_CONNECTIONS:
        least = fixed + listeners * limits.MIN_CONNECTIONS
        msg = (
            f"too few file descriptors: the limit is {soft}, and the daemon needs at least "
            f"{least} ({wanted} for max_connections = {config.max_connections}); raise it "
            f"with `ulimit -n {wanted}`"
        )
        raise ConfigError(msg)
    log.warning(
        "the file descriptor limit is %d: serving at most %d connections per listener "
        "instead of %d; raise it to %d (ulimit -n %d) to lift this",
        soft,
        fits,
        config.max_connections,
        wanted,
        wanted,
    )
    return fits


def _http_url(config: Config, address: tuple[str, int]) -> str:
    host, port = address
    host = f"[{host}]" if ":" in host else host
    return f"{'https' if config.tls_enabled else 'http'}://{host}:{port}"


def _server_ssl_context(config: Config) -> ssl.SSLContext | None:
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.tls_cert, config.tls_key)
    return context


async def _watch_signals(server: Server) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("%s received", signal.Signals(signum).name)
            server.shutdown_requested.set()
            return
