"""The transports: LBRU frames over a Unix domain socket (local) and over WebSocket (remote).

The server and the clients are written against :class:`FrameTransport`; the listeners hand
each accepted, authenticated connection to a handler as one, and the ``connect_*`` functions
return one. The helpers for the daemon's guard files (token, instance lock, private
directory) live here too, since the listeners depend on them.
"""

from __future__ import annotations

from librorum.transport.base import (
    AlreadyRunningError as AlreadyRunningError,
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
from librorum.transport.uds import (
    UdsTransport as UdsTransport,
    connect_uds as connect_uds,
    serve_uds as serve_uds,
)
from librorum.transport.websocket import (
    WsTransport as WsTransport,
    connect_websocket as connect_websocket,
    serve_websocket as serve_websocket,
)
