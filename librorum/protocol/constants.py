"""Wire constants of LBRU v1: magic, header size, commands, flags, error codes and limits.

Every number here is normative; ``protocol_spec/lbru-v1.md`` is the prose for it and cites
these names. Nothing in this module may import anything outside the standard library but the modules
below the protocol (errors, domain).
"""

from __future__ import annotations

import enum
from typing import Final

# The file service's vocabulary (entry kinds, write modes, path and listing limits) is carried
# on the wire but shared with the store, so it lives below both; re-exported here likewise.
from librorum.domain import (
    DEFAULT_LIST_LIMIT as DEFAULT_LIST_LIMIT,
    DEFAULT_MAX_FILE_SIZE as DEFAULT_MAX_FILE_SIZE,
    MAX_NAME_BYTES as MAX_NAME_BYTES,
    MAX_PATH_BYTES as MAX_PATH_BYTES,
    EntryKind as EntryKind,
    WriteMode as WriteMode,
)

# The error codes are wire constants too, but they live with the exception tree (which sits
# below the protocol package); re-exported here so that every wire number is reachable from
# this module.
from librorum.errors import (
    ErrorClass as ErrorClass,
    ErrorCode as ErrorCode,
    error_class as error_class,
)

#: The four ASCII bytes every frame starts with (spec 3.1).
MAGIC: Final = b"LBRU"
#: Size of the fixed frame header in bytes: magic(4) version(1) command(1) flags(2)
#: payload_size(4) session_id(8), big-endian, no padding.
HEADER_SIZE: Final = 20

#: The protocol version this implementation speaks.
VERSION: Final = 1
#: Every version this implementation can negotiate, newest first (spec 4.2).
SUPPORTED_VERSIONS: Final = (1,)
#: HELLO, its reply and any ERROR sent before negotiation completes always carry this version
#: in the header, so that any two implementations can at least negotiate (spec 4.2).
HANDSHAKE_VERSION: Final = 1

#: session_id 0 addresses the connection itself, never a request (spec 3.3).
CONNECTION_SESSION: Final = 0
MAX_SESSION_ID: Final = 2**64 - 1
MAX_PAYLOAD_SIZE_FIELD: Final = 2**32 - 1


class Command(enum.IntEnum):
    """The command byte of the header (spec section 5).

    Requests and replies share the command byte; a reply carries :attr:`Flags.REPLY`.
    The first four keep the numbers of the original Librorum protocol design.
    """

    WRITE = 0x01
    READ = 0x02
    LIST = 0x03
    NODE_STATUS = 0x04
    STAT = 0x05
    MKDIR = 0x06
    DELETE = 0x07
    RENAME = 0x08
    UPLOAD_STATUS = 0x09
    #: The daemon's log (spec 5.19): a page of records, follow it, its figures.
    LOG_GET = 0x0A
    LOG_STREAM = 0x0B
    LOG_STATS = 0x0C

    HELLO = 0x10
    PING = 0x11
    DATA = 0x12
    WINDOW = 0x13
    CANCEL = 0x14
    GOAWAY = 0x15
    ERROR = 0x16
    #: The requests in flight across the daemon, for the live view (spec 5.21; admin only).
    REQUESTS = 0x0E
    SHUTDOWN = 0x0F

    FSCK = 0x0D


#: Commands indexed by their byte; ``None`` where the byte is not a command. The decoder looks
#: the byte up here at header time, which is cheaper than ``Command(b)`` in a try block.
COMMAND_TABLE: Final[tuple[Command | None, ...]] = tuple(
    Command(b) if b in Command._value2member_map_ else None for b in range(256)
)


#: Commands that open a request; every other command travels on an existing session or 0.
REQUEST_COMMANDS: Final = frozenset(
    {
        Command.WRITE,
        Command.READ,
        Command.LIST,
        Command.NODE_STATUS,
        Command.STAT,
        Command.MKDIR,
        Command.DELETE,
        Command.RENAME,
        Command.UPLOAD_STATUS,
        Command.PING,
        Command.CANCEL,
        Command.REQUESTS,
        Command.SHUTDOWN,
        Command.FSCK,
        Command.LOG_GET,
        Command.LOG_STREAM,
        Command.LOG_STATS,
    }
)

#: Requests whose reply streams DATA to the client under the client's credit (spec 6): the
#: first reply, then DATA|REPLY frames.
STREAMED_REPLY_COMMANDS: Final = frozenset({Command.READ, Command.LOG_STREAM})


class Flags(enum.IntFlag):
    """The flags field of the header (spec section 3.2). All other bits are reserved and must
    be zero; a frame with a reserved bit set is a connection error (``BAD_FLAGS``)."""

    NONE = 0
    #: Last frame this sender will send on this session in this direction.
    END = 0x0001
    #: The frame travels from the server to the client (a reply, DATA of a READ, ...).
    REPLY = 0x0002
    #: One file descriptor rides with this frame as SCM_RIGHTS ancillary data (Unix sockets
    #: only, and only when FD_PASSING or MEMFD was negotiated; spec 8).
    FD = 0x0004


#: Bits a v1 frame may set; the rest are reserved.
KNOWN_FLAGS: Final = int(Flags.END | Flags.REPLY | Flags.FD)
#: The flag bits as plain integers, for the per-frame paths: IntFlag arithmetic costs an
#: enum construction per operation.
FLAG_END: Final = int(Flags.END)
FLAG_REPLY: Final = int(Flags.REPLY)
FLAG_FD: Final = int(Flags.FD)


class Feature(enum.IntFlag):
    """Feature bits exchanged in HELLO (spec 4.3). The reply carries the intersection."""

    NONE = 0
    #: WRITE of a regular file by passing its descriptor over a Unix socket (spec 8.1).
    FD_PASSING = 0x0001
    #: WRITE of in-memory data by passing a sealed memfd over a Unix socket (spec 8.2).
    MEMFD = 0x0002


class CancelOutcome(enum.Enum):
    """The definite answer to CANCEL (spec 5.14)."""

    #: The request was queued and never began; it had no effect.
    NOT_STARTED = "not_started"
    #: The request was running and was rolled back; it had no effect.
    ABORTED = "aborted"
    #: Too late: the request had already taken effect; its own reply says how.
    COMMITTED = "committed"
    #: No request with that session_id is in flight on this connection.
    UNKNOWN = "unknown"


# --- Limits (spec section 9). Each is the default of a negotiable or configurable value. -----

#: Largest payload of any frame after negotiation: one DATA frame carries up to 1 MiB.
DEFAULT_MAX_PAYLOAD: Final = 1 << 20
#: Smallest max_payload a peer may announce in HELLO; below it, frames could not carry a
#: maximal control message.
MIN_MAX_PAYLOAD: Final = 64 << 10
#: Largest payload a control frame (every command but DATA) may carry.
MAX_CONTROL_PAYLOAD: Final = 64 << 10
#: Largest payload accepted before HELLO has completed (pre-authentication budget).
MAX_HANDSHAKE_PAYLOAD: Final = 4 << 10
#: Requests a client may have in flight on one connection.
DEFAULT_MAX_STREAMS: Final = 128
#: Of those, uploads (WRITE streams) in flight on one connection.
DEFAULT_MAX_UPLOADS: Final = 4
#: Bytes of DATA a sender may send on a new stream before the receiver grants more (spec 6.2).
DEFAULT_INITIAL_WINDOW: Final = 4 << 20
#: Largest increment one WINDOW frame may grant; receivers SHOULD keep at most this much
#: granted and unconsumed on a stream, which bounds what they buffer (spec 6.2).
MAX_WINDOW: Final = 64 << 20
#: Longest free-text string (error messages, client/server names) a peer must accept.
MAX_TEXT_BYTES: Final = 1024
#: Records one LOG_GET reply carries at most, and one LOG_STREAM asks to replay at most
#: (spec 5.19); each page also fits a control frame.
MAX_LOG_RECORDS: Final = 1000
#: Longest logger prefix or text filter of a log request (spec 5.19).
MAX_LOG_FILTER_BYTES: Final = 256
#: Longest PING payload.
MAX_PING_BYTES: Final = 256
#: Largest WebSocket message a side accepts with the default limits: one maximal frame, since
#: every message carries exactly one (spec 2.2); anything larger is FRAME_TOO_LARGE.
WS_MAX_MESSAGE_SIZE: Final = HEADER_SIZE + DEFAULT_MAX_PAYLOAD
#: Largest WebSocket message a receiver takes before HELLO completes (spec 2.2): one frame with
#: the pre-handshake budget, so that an unintroduced peer cannot make it buffer 1 MiB.
WS_HANDSHAKE_MESSAGE_SIZE: Final = HEADER_SIZE + MAX_HANDSHAKE_PAYLOAD

assert HEADER_SIZE == 4 + 1 + 1 + 2 + 4 + 8
assert MIN_MAX_PAYLOAD <= MAX_CONTROL_PAYLOAD <= DEFAULT_MAX_PAYLOAD
assert MAX_HANDSHAKE_PAYLOAD < MAX_CONTROL_PAYLOAD

#: Most requests one REQUESTS reply lists (spec 5.21); the reply also stays within one control
#: frame, and says how many there are in all.
MAX_REQUESTS_LISTED: Final = 1000
