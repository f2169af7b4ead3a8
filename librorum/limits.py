"""Server-side policy limits: timeouts, connection caps, buffer sizes, the free-space floor.

The wire limits (payload sizes, windows, stream counts) are part of the protocol and live in
:mod:`librorum.protocol.constants`; the values here are this implementation's policies. Every
one is the default of a keyword argument somewhere (the transport, the server, the
configuration), so a deployment or a test can change it without touching this module.

Times are in seconds, sizes in bytes.
"""

from __future__ import annotations

from typing import Final

# This module imports nothing of the project, so that every layer can use it (the store
# included, which knows nothing of the protocol). The WebSocket message sizes derived from the
# frame format are wire facts (spec 2.2) and live in librorum.protocol.constants.

# --- Deadlines -------------------------------------------------------------------------------

#: A new connection must finish the WebSocket upgrade (TLS included) and the LBRU HELLO within
#: this: a peer that connects and says nothing holds a slot only this long.
HANDSHAKE_TIMEOUT: Final = 10.0
#: Once a frame's first byte is in, the rest must follow within this: a stalled half frame
#: pins a buffer, so it ends the connection. On WebSocket the same deadline applies to each
#: message, from its first byte to its last fragment (the transport only hands on whole
#: messages, so the LBRU layer never sees a half frame there).
FRAME_TIMEOUT: Final = 30.0
#: A request stream that makes no progress for this long is aborted with TIMEOUT: an upload
#: whose client sent no DATA although it had credit, a download whose client granted no credit
#: or read nothing. Nothing partial is committed; the connection stays up. (nginx's
#: client_body_timeout and send_timeout have the same default.) Waits the server imposes, such
#: as an upload held back by the global in-flight budget, do not count.
STREAM_TIMEOUT: Final = 60.0
#: When a connection cap is reached, a connection that has been waiting on its client this long
#: (no bytes from it, nothing of ours being worked on) may be closed, with CONNECTION_LIMIT, to
#: admit the newcomer: stalled connections cannot hold the cap against active clients.
RECLAIM_AFTER: Final = 10.0
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
#: How long a WebSocket close handshake may take before the TCP connection is simply closed
#: (trio-websocket's disconnect_timeout is 60 s).
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
#: Descriptors the daemon needs besides its connections and FD_RESERVE: standard streams, the
#: event loop's, the listening sockets, the metadata database (and its journal), lock files.
FD_BASE: Final = 32
#: The fewest connections per listener worth starting for: with a descriptor limit that
#: leaves less, the daemon refuses to start rather than serve almost nobody.
MIN_CONNECTIONS: Final = 8
#: Pending connections the kernel queues on a listening socket before refusing new ones;
#: larger only hides an accept loop that is not keeping up.
LISTEN_BACKLOG: Final = 128

# --- Memory ---------------------------------------------------------------------------------

#: Upload data the daemon holds at once, over all connections and transports: DATA received and
#: not yet taken by the store, plus the credit granted for DATA still to come (spec 9.2). When it
#: is used up the server grants no more credit, so uploads are slowed, never dropped. Ceph caps
#: client message bytes in flight at 500 MB; half of that leaves a small machine room to spare.
MAX_INFLIGHT_BYTES: Final = 256 << 20
#: What one upload may hold of that budget (its credit plus what it has received and the store
#: has not taken yet) is its share: an eighth of the budget divided among the uploads in
#: flight, between these bounds. Up to four uploads get 8 MiB each (a round trip of 40 ms at
#: 200 MB/s, for remote clients); 64 at once get 512 KiB each, 32 MiB in all, so a burst of
#: uploads holds far less than the budget allows.
UPLOAD_WINDOW_MIN: Final = 256 << 10
UPLOAD_WINDOW_MAX: Final = 8 << 20
#: The WRITE window announced in the HELLO reply: what every upload may send before the server
#: grants credit. Granted implicitly (it cannot wait for the budget), so it is kept small; small
#: files still go without a round trip, and the server grants more as the data is taken.
INITIAL_UPLOAD_WINDOW: Final = 256 << 10

# --- WebSocket admission ---------------------------------------------------------------------

#: Largest HTTP upgrade request head (request line and headers) read; a longer one is refused
#: with 431. h11's own cap only applies to a head still incomplete, not to one that arrives
#: whole in a single read.
WS_MAX_REQUEST_HEAD: Final = 16 << 10
#: How long a refused connection (an HTTP 4xx or 503 answer) is kept after its answer, reading
#: and discarding what the client still sends: closing a socket with unread input makes the
#: kernel reset the connection, which can destroy the answer before the client reads it.
WS_REFUSAL_LINGER: Final = 1.0
#: ...and at most this many bytes are read and discarded meanwhile.
WS_REFUSAL_DRAIN: Final = 64 << 10
#: The Retry-After of a 503 (a connection cap is full), in whole seconds.
WS_BUSY_RETRY_AFTER: Final = 5
#: Failed authentications (HTTP 401) from one address before the back-off starts: enough for
#: a client whose token just changed, not for guessing.
AUTH_FAILURES_ALLOWED: Final = 5
#: The first back-off after those; it doubles with each further failure...
AUTH_BACKOFF_BASE: Final = 1.0
#: ...up to this. While an address backs off, its handshakes get 429 without their token
#: being looked at, so a guesser gets about one try per AUTH_BACKOFF_MAX.
AUTH_BACKOFF_MAX: Final = 60.0
#: An address's failures are forgotten this long after its last one.
AUTH_FAILURE_MEMORY: Final = 600.0
#: Addresses whose failures are remembered; past this the least recently failing is
#: forgotten, so a flood from many addresses costs bounded memory.
AUTH_TRACKED_ADDRESSES: Final = 4096
#: At most one WARNING per address per this many seconds for refused handshakes; the next
#: line says how many were held back.
REFUSAL_LOG_INTERVAL: Final = 60.0

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
#: Bytes a WebSocket connection asks for per read, both sides. 4 KiB reads (trio-websocket's
#: default) halve WebSocket throughput: wsproto then parses and unmasks in tiny pieces.
WS_RECEIVE_BUFFER: Final = 1 << 20
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
