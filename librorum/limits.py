"""Server-side policy limits: timeouts, connection caps, buffer sizes, the free-space floor.

The wire limits (payload sizes, windows, stream counts) are part of the protocol and live in
:mod:`librorum.protocol.constants`; the values here are this implementation's policies. Every
one is the default of a keyword argument somewhere (the transport, the server, the
configuration), so a deployment or a test can change it without touching this module.

Times are in seconds, sizes in bytes.
"""

from __future__ import annotations

from typing import Final

from librorum.protocol.constants import DEFAULT_MAX_PAYLOAD, HEADER_SIZE

# --- Deadlines -------------------------------------------------------------------------------

#: A new connection must finish the WebSocket upgrade (TLS included) and the LBRU HELLO within
#: this: a peer that connects and says nothing holds a slot only this long.
HANDSHAKE_TIMEOUT: Final = 10.0
#: Once a frame's first byte is in, the rest must follow within this: a stalled half frame
#: pins a buffer, so it ends the connection.
FRAME_TIMEOUT: Final = 30.0
#: A local connection with no request in flight is closed after this; local clients are cheap
#: to reconnect, but an abandoned one still holds a descriptor and a slot.
IDLE_TIMEOUT_UDS: Final = 300.0
#: Shorter for remote connections: NAT boxes and proxies drop idle TCP flows silently.
IDLE_TIMEOUT_WS: Final = 120.0
#: The server pings an established WebSocket this often, to find dead TCP peers that would
#: otherwise be noticed only when a send finally fails.
WS_PING_INTERVAL: Final = 30.0
#: A ping unanswered for this long means the peer is gone: the connection is closed.
WS_PONG_TIMEOUT: Final = 30.0
#: How long a WebSocket close handshake may take (trio-websocket's disconnect_timeout) before
#: the TCP connection is simply closed.
CLOSE_GRACE: Final = 5.0
#: On shutdown, requests in flight get this long to finish before they are cancelled.
SHUTDOWN_GRACE: Final = 10.0

# --- Connections -----------------------------------------------------------------------------

#: Established connections per listener beyond which new ones get CONNECTION_LIMIT: each
#: costs a descriptor, buffers and a task. (FD_RESERVE guards the process as a whole.)
MAX_CONNECTIONS: Final = 512
#: Connections still in their handshake (TCP accepted, WebSocket upgrade not yet
#: authenticated): the flood guard, since these cost resources before we know who they are.
MAX_UNAUTHENTICATED: Final = 64
#: Local connections one uid may hold: one runaway local client must not starve the others.
MAX_CONNECTIONS_PER_UID: Final = 64
#: WebSocket connections one IP address may hold, handshakes included, for the same reason.
MAX_CONNECTIONS_PER_IP: Final = 32
#: Descriptors kept free for the store (files, the database): a connection is refused once
#: accepting it would leave fewer than this many under RLIMIT_NOFILE.
FD_RESERVE: Final = 64
#: Pending connections the kernel queues on a listening socket before refusing new ones;
#: larger only hides an accept loop that is not keeping up.
LISTEN_BACKLOG: Final = 128

# --- I/O sizes -------------------------------------------------------------------------------

#: Bytes asked of the kernel per read: one maximal DATA frame. Trio's default (64 KiB) costs
#: 20-33 % of bulk throughput here, in per-read overhead and decoder calls.
RECEIVE_SIZE: Final = 1 << 20
#: Bytes asked per read while the traffic is small messages. recv() allocates the size asked
#: for, and 128 KiB or more is a fresh mmap (glibc's threshold): a 1 MiB read of a 150-byte
#: reply costs ~14 us more than a 64 KiB one. A receive loop asks for this much until a read
#: fills it (bulk data is flowing), then for RECEIVE_SIZE (see :func:`next_receive_size`).
SMALL_RECEIVE_SIZE: Final = 64 << 10
#: SO_SNDBUF and SO_RCVBUF of Unix sockets, both sides: room for a few maximal frames in the
#: kernel so a writer rarely blocks mid-frame (Linux caps it at net.core.wmem_max/rmem_max).
UDS_SOCKET_BUFFER: Final = 4 << 20
#: trio-websocket's message_queue_size: messages its reader task may hold that nobody has
#: asked for yet. One keeps flow control in the LBRU layer, where the windows are.
WS_MESSAGE_QUEUE: Final = 1
#: trio-websocket's receive_buffer_size, the bytes its reader asks for per read. Its default
#: (4 KiB) halves WebSocket throughput: wsproto then parses and unmasks in tiny pieces.
WS_RECEIVE_BUFFER: Final = 1 << 20
#: Largest WebSocket message accepted: exactly one maximal LBRU frame, since every message
#: carries one frame. Anything larger closes the connection with code 1009.
WS_MAX_MESSAGE_SIZE: Final = HEADER_SIZE + DEFAULT_MAX_PAYLOAD
#: Largest HTTP body read from a refused WebSocket handshake (the client side): the reason
#: text is for a log line, not a download.
WS_MAX_REJECT_BODY: Final = 4 << 10

# --- Store -----------------------------------------------------------------------------------

#: Free space below which the store refuses new data (uploads, new files, new directories)
#: with NO_SPACE, while deletes, renames and reads go on (``librorum.store.space``). It leaves
#: room for the metadata database to grow and checkpoint, for the store's metadata reserve to
#: be allocated again after a full disk, and for the chunks of uploads already under way; and
#: it keeps a little of the disk for the rest of the system. Small against any disk a store
#: lives on (0.1 % of 256 GB); the ``min_free_space`` setting changes it.
MIN_FREE_SPACE: Final = 256 << 20


def next_receive_size(received: int) -> int:
    """Bytes to ask for in the next read, given how many the last read returned: the full
    :data:`RECEIVE_SIZE` while reads come back at least :data:`SMALL_RECEIVE_SIZE` long (bulk
    data), :data:`SMALL_RECEIVE_SIZE` otherwise."""
    return RECEIVE_SIZE if received >= SMALL_RECEIVE_SIZE else SMALL_RECEIVE_SIZE
