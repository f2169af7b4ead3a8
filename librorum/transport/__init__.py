"""The transports: LBRU frames over a Unix domain socket (local) and over WebSocket (remote).

Split by role: the adapters (:mod:`~librorum.transport.uds`,
:mod:`~librorum.transport.websocket`: a :class:`FrameTransport` over a socket or a WebSocket
connection), the listeners (``uds_server``, ``ws_server``) and the connectors (``uds_client``,
``ws_client``: trio ones returning a :class:`FrameTransport`, blocking ones returning a
:class:`BlockingFrameTransport`). The server and the async client are written against
:class:`FrameTransport`; the listeners hand each accepted, authenticated connection to a
handler as one. The helpers for the daemon's guard files (token, instance lock, private
directory) live here too, since the listeners depend on them.
"""

from __future__ import annotations

from librorum.transport._throttle import LogLimiter as LogLimiter
from librorum.transport.base import (
    AlreadyRunningError as AlreadyRunningError,
    BlockingFrameTransport as BlockingFrameTransport,
    FrameParts as FrameParts,
    FrameTransport as FrameTransport,
    Handler as Handler,
    PeerInfo as PeerInfo,
    acquire_lock as acquire_lock,
    refusal_frame as refusal_frame,
    run_handler as run_handler,
)
from librorum.transport.files import (
    ensure_private_dir as ensure_private_dir,
    load_or_create_token as load_or_create_token,
    single_instance_lock as single_instance_lock,
)
from librorum.transport.uds import UdsTransport as UdsTransport
from librorum.transport.uds_client import (
    BlockingUdsTransport as BlockingUdsTransport,
    connect_uds as connect_uds,
    connect_uds_blocking as connect_uds_blocking,
)
from librorum.transport.uds_server import serve_uds as serve_uds
from librorum.transport.websocket import WsTransport as WsTransport
from librorum.transport.ws_client import (
    BlockingWsTransport as BlockingWsTransport,
    connect_websocket as connect_websocket,
    connect_ws_blocking as connect_ws_blocking,
)
from librorum.transport.ws_server import serve_websocket as serve_websocket
