"""Typed LBRU messages: one ``attrs.frozen`` class per command and direction (spec section 5).

The classes carry no serialisation code: ``converter.py`` owns the payload format. The header's
command byte and its REPLY flag select the class (:func:`message_type`), so payloads carry no
type tag. DATA frames carry raw bytes and have no message class.

Validators here check only what the wire format itself bounds (integer widths, non-negative
sizes, collection lengths); the path rules and every other semantic check belong to the server
and the store (spec 5.1), which answer with a request error rather than a malformed payload.

Schema evolution (spec 5.17): fields are only appended, each new field has a default, a
field's type never changes, and a sender uses a new field only with a peer that negotiated the
version or feature that defines it (receivers reject unknown keys).
"""

from __future__ import annotations

from typing import Final, TypeAlias

import attrs

from librorum.protocol.constants import (
    DEFAULT_LIST_LIMIT,
    MAX_LOG_FILTER_BYTES,
    MAX_LOG_RECORDS,
    MAX_PAYLOAD_SIZE_FIELD,
    MAX_PING_BYTES,
    MAX_REQUESTS_LISTED,
    MAX_SESSION_ID,
    MAX_WINDOW,
    CancelOutcome,
    Command,
    EntryKind,
    WriteMode,
)

_U64_MAX: Final = 2**64 - 1


def _u64(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not 0 <= value <= _U64_MAX:
        msg = f"{attribute.name} must be in 0..2**64-1, got {value}"
        raise ValueError(msg)


def _opt_u64(_inst: object, attribute: attrs.Attribute[int | None], value: int | None) -> None:
    if value is not None and not 0 <= value <= _U64_MAX:
        msg = f"{attribute.name} must be absent or in 0..2**64-1, got {value}"
        raise ValueError(msg)


def _i64(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not -(2**63) <= value < 2**63:
        msg = f"{attribute.name} must fit in a signed 64-bit integer, got {value}"
        raise ValueError(msg)


def _u32(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not 0 <= value <= MAX_PAYLOAD_SIZE_FIELD:
        msg = f"{attribute.name} must be in 0..2**32-1, got {value}"
        raise ValueError(msg)


def _version(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not 1 <= value <= 255:
        msg = f"{attribute.name} must be a protocol version in 1..255, got {value}"
        raise ValueError(msg)


def _u64_values(
    _inst: object, attribute: attrs.Attribute[dict[str, int]], value: dict[str, int]
) -> None:
    if not all(0 <= v <= _U64_MAX for v in value.values()):
        msg = f"{attribute.name} values must be in 0..2**64-1"
        raise ValueError(msg)


def _versions(
    _inst: object, _attribute: attrs.Attribute[tuple[int, ...]], value: tuple[int, ...]
) -> None:
    if not 1 <= len(value) <= 16 or not all(1 <= v <= 255 for v in value):
        msg = f"versions must list 1 to 16 versions in 1..255, got {value!r}"
        raise ValueError(msg)


def _ping_data(_inst: object, _attribute: attrs.Attribute[bytes], value: bytes) -> None:
    if len(value) > MAX_PING_BYTES:
        msg = f"ping data is limited to {MAX_PING_BYTES} bytes, got {len(value)}"
        raise ValueError(msg)


def _window(_inst: object, _attribute: attrs.Attribute[int], value: int) -> None:
    if not 1 <= value <= MAX_WINDOW:
        msg = f"window increment must be in 1..{MAX_WINDOW}, got {value}"
        raise ValueError(msg)


def _list_limit(_inst: object, _attribute: attrs.Attribute[int], value: int) -> None:
    if not 1 <= value <= DEFAULT_LIST_LIMIT:
        msg = f"limit must be in 1..{DEFAULT_LIST_LIMIT}, got {value}"
        raise ValueError(msg)


def _session(_inst: object, _attribute: attrs.Attribute[int], value: int) -> None:
    if not 1 <= value <= MAX_SESSION_ID:
        msg = f"target must be a request session_id (1..2**64-1), got {value}"
        raise ValueError(msg)


def _error_code(_inst: object, _attribute: attrs.Attribute[int], value: int) -> None:
    if not 0 <= value <= 0xFFFF:
        msg = f"error code must be a u16, got {value}"
        raise ValueError(msg)


# --- Shared records ----------------------------------------------------------------------------


@attrs.frozen
class FileInfo:
    """What STAT returns for a file or directory (spec 5.3)."""

    path: str
    kind: EntryKind
    size: int = attrs.field(validator=_u64)
    mtime_ns: int = attrs.field(validator=_i64)
    #: Increases by at least one with every committed change of this entry.
    version: int = attrs.field(validator=_u64)
    #: BLAKE3 of the file's content (32 bytes); absent for directories.
    content_hash: bytes | None = None


@attrs.frozen
class DirEntry:
    """One entry of a LIST reply: a FileInfo without the path prefix and the hash (spec 5.4)."""

    name: str
    kind: EntryKind
    size: int = attrs.field(validator=_u64)
    mtime_ns: int = attrs.field(validator=_i64)
    version: int = attrs.field(validator=_u64)


@attrs.frozen
class StoreFigures:
    """The store's part of NODE_STATUS (spec 5.5)."""

    files: int = attrs.field(validator=_u64)
    directories: int = attrs.field(validator=_u64)
    #: Sum of file sizes.
    logical_bytes: int = attrs.field(validator=_u64)
    #: Bytes of chunk data on disk after deduplication.
    stored_bytes: int = attrs.field(validator=_u64)
    chunks: int = attrs.field(validator=_u64)
    free_bytes: int = attrs.field(validator=_u64)
    #: Chunks found corrupt and set aside until an upload of their content heals them: the
    #: files that use them cannot be read meanwhile.
    quarantined: int = attrs.field(default=0, validator=_u64)
    #: The store refuses writes (an fsync or a metadata commit failed; reopen to clear).
    read_only: bool = False


# --- Connection: HELLO, PING, WINDOW, CANCEL, GOAWAY, ERROR ------------------------------------


@attrs.frozen
class Hello:
    """Client → server, first frame of a connection, session 0 (spec 4)."""

    #: Protocol versions the client speaks.
    versions: tuple[int, ...] = attrs.field(validator=_versions)
    #: Largest payload the client accepts in one frame.
    max_payload: int = attrs.field(validator=_u32)
    #: Bytes of DATA the server may send on a READ stream before the client grants more.
    initial_window: int = attrs.field(validator=_u32)
    #: Feature bits the client supports (:class:`~librorum.protocol.constants.Feature`).
    features: int = attrs.field(default=0, validator=_u32)
    #: Free text naming the client software, for the server's log.
    client: str = ""


@attrs.frozen
class HelloReply:
    """Server → client answer to HELLO: the negotiated connection parameters (spec 4.2)."""

    version: int = attrs.field(validator=_version)
    #: Largest payload either side may send from now on: min(client's, server's).
    max_payload: int = attrs.field(validator=_u32)
    #: Bytes of DATA the client may send on a WRITE stream before the server grants more.
    initial_window: int = attrs.field(validator=_u32)
    #: Requests the client may have in flight at once.
    max_streams: int = attrs.field(validator=_u32)
    #: Of those, WRITE streams.
    max_uploads: int = attrs.field(validator=_u32)
    #: Largest file a WRITE may create.
    max_file_size: int = attrs.field(validator=_u64)
    #: Features both sides support and this connection may use.
    features: int = attrs.field(default=0, validator=_u32)
    server: str = ""


@attrs.frozen
class Ping:
    """Liveness and latency probe: a request on its own session (spec 5.12)."""

    data: bytes = attrs.field(default=b"", validator=_ping_data)


@attrs.frozen
class PingReply:
    """Echoes the PING's data."""

    data: bytes = attrs.field(default=b"", validator=_ping_data)


@attrs.frozen
class WindowUpdate:
    """Grants the peer ``increment`` more bytes of DATA on the frame's session (spec 6.2)."""

    increment: int = attrs.field(validator=_window)


@attrs.frozen
class Cancel:
    """Asks the server to stop the request in flight on session ``target`` (spec 5.14)."""

    target: int = attrs.field(validator=_session)


@attrs.frozen
class CancelReply:
    """The definite outcome of a CANCEL, sent after the target's own final frame."""

    outcome: CancelOutcome


@attrs.frozen
class GoAway:
    """Server → client, session 0: no new requests will be accepted on this connection;
    requests in flight finish within ``grace_ms`` (spec 5.15)."""

    reason: str = ""
    grace_ms: int = attrs.field(default=0, validator=_u32)


@attrs.frozen
class ErrorMessage:
    """Ends a request (on its session) or the connection (session 0) with an error code from
    spec section 7 and a one-line human-readable message."""

    code: int = attrs.field(validator=_error_code)
    message: str = ""


# --- Namespace ---------------------------------------------------------------------------------


@attrs.frozen
class FileStat:
    """STAT: describe the entry at ``path`` (spec 5.3)."""

    path: str


@attrs.frozen
class FileStatReply:
    info: FileInfo


@attrs.frozen
class FileList:
    """LIST: one page of a directory's entries, sorted by name (spec 5.4)."""

    path: str
    #: Return entries whose names sort after this one (the previous page's ``next_cursor``).
    cursor: str | None = None
    limit: int = attrs.field(default=DEFAULT_LIST_LIMIT, validator=_list_limit)


@attrs.frozen
class FileListReply:
    entries: tuple[DirEntry, ...]
    #: Pass as ``cursor`` to get the next page; absent on the last page.
    next_cursor: str | None = None


@attrs.frozen
class MakeDirectory:
    """MKDIR (spec 5.6)."""

    path: str
    #: Create missing parents too, and succeed if the directory already exists.
    parents: bool = False


@attrs.frozen
class MakeDirectoryReply:
    info: FileInfo


@attrs.frozen
class Delete:
    """DELETE a file, an empty directory, or a tree when ``recursive`` (spec 5.7)."""

    path: str
    recursive: bool = False


@attrs.frozen
class DeleteReply:
    #: Entries removed (files and directories).
    removed: int = attrs.field(validator=_u64)


@attrs.frozen
class Rename:
    """RENAME: atomically move a file or a directory (spec 5.8)."""

    src: str
    dst: str
    #: Replace an existing file at ``dst``; a directory at ``dst`` is never replaced.
    overwrite: bool = False


@attrs.frozen
class RenameReply:
    info: FileInfo


@attrs.frozen
class NodeStatus:
    """NODE_STATUS: the node's health and figures (spec 5.5)."""


@attrs.frozen
class NodeStatusReply:
    version: str
    node_id: str
    uptime_ms: int = attrs.field(validator=_u64)
    #: Open connections per transport name ("uds", "websocket").
    connections: dict[str, int] = attrs.field(validator=_u64_values)
    requests: int = attrs.field(validator=_u64)
    bytes_in: int = attrs.field(validator=_u64)
    bytes_out: int = attrs.field(validator=_u64)
    store: StoreFigures
    protocol_version: int = attrs.field(default=1, validator=_u32)
    #: Upload bytes held against the global in-flight budget now, and at most (spec 9.2).
    inflight_bytes: int = attrs.field(default=0, validator=_u64)
    inflight_peak_bytes: int = attrs.field(default=0, validator=_u64)
    #: Why the store refuses writes (null when it does not), and since when (milliseconds
    #: since the Unix epoch).
    read_only_reason: str | None = None
    read_only_since_ms: int | None = attrs.field(default=None, validator=_opt_u64)
    #: Why the node is degraded, one line each; empty when it is healthy (spec 5.5).
    degraded: tuple[str, ...] = ()
    #: Requests ended by a request error (0x02xx) and by a server error (0x03xx) since the
    #: start (spec 7.1).
    client_errors: int = attrs.field(default=0, validator=_u64)
    server_errors: int = attrs.field(default=0, validator=_u64)
    #: What the daemon runs on.
    python_version: str = ""
    sqlite_version: str = ""
    #: The check running now (spec 5.20): its phase ("" when none runs) and chunks.
    fsck_phase: str = ""
    fsck_chunks_done: int = attrs.field(default=0, validator=_u64)
    fsck_chunks_total: int = attrs.field(default=0, validator=_u64)
    #: The last check or repair: when it finished (ms since the epoch, 0: none), whether it
    #: left nothing to do, the defects found and the files affected.
    last_fsck_ms: int = attrs.field(default=0, validator=_u64)
    last_fsck_ok: bool = True
    last_fsck_problems: int = attrs.field(default=0, validator=_u64)
    last_fsck_affected: int = attrs.field(default=0, validator=_u64)
    #: The background scrub: when it last finished a pass (ms since the epoch, 0: never),
    #: chunks verified and damaged chunks found since the start.
    last_scrub_ms: int = attrs.field(default=0, validator=_u64)
    scrub_chunks_verified: int = attrs.field(default=0, validator=_u64)
    scrub_corrupt_found: int = attrs.field(default=0, validator=_u64)


# --- Data streams ------------------------------------------------------------------------------


@attrs.frozen
class FileWrite:
    """WRITE: store a file (spec 5.9). The content follows in DATA frames on the same session
    (the last with END), or rides as a file descriptor (FD flag, spec 8); a frame with END
    and no FD writes an empty file."""

    path: str
    mode: WriteMode = WriteMode.CREATE
    #: Total size, when known up front; the server checks it against the limit at once and
    #: against the data received at the end.
    size: int | None = attrs.field(default=None, validator=_opt_u64)
    #: Client-chosen id that makes the upload resumable (spec 5.10).
    upload_id: str | None = None
    #: Where this stream's data starts: 0, or the committed offset of the resumed upload.
    offset: int = attrs.field(default=0, validator=_u64)


@attrs.frozen
class FileWriteReply:
    info: FileInfo


@attrs.frozen
class FileRead:
    """READ: stream a file's content from ``offset``, ``length`` bytes or to the end
    (spec 5.11)."""

    path: str
    offset: int = attrs.field(default=0, validator=_u64)
    length: int | None = attrs.field(default=None, validator=_opt_u64)


@attrs.frozen
class FileReadReply:
    """First reply frame of a READ: what will follow. ``length`` bytes follow in DATA frames
    unless the frame has END (then ``length`` is 0)."""

    info: FileInfo
    offset: int = attrs.field(validator=_u64)
    length: int = attrs.field(validator=_u64)


@attrs.frozen
class UploadStatus:
    """UPLOAD_STATUS: how much of a resumable upload the server has durably committed."""

    upload_id: str


@attrs.frozen
class UploadStatusReply:
    upload_id: str
    path: str
    #: Bytes durably committed: resume by sending WRITE with this ``offset``.
    offset: int = attrs.field(validator=_u64)
    size: int | None = attrs.field(default=None, validator=_opt_u64)


def _requests_limit(_inst: object, _attribute: attrs.Attribute[int], value: int) -> None:
    if not 1 <= value <= MAX_REQUESTS_LISTED:
        msg = f"limit must be in 1..{MAX_REQUESTS_LISTED}, got {value}"
        raise ValueError(msg)


@attrs.frozen
class Requests:
    """REQUESTS: the requests in flight across every connection of the daemon, for the live
    view (spec 5.21). Administrators only (spec 2.5)."""

    #: The most entries to list, the oldest first.
    limit: int = attrs.field(default=MAX_REQUESTS_LISTED, validator=_requests_limit)


@attrs.frozen
class RequestEntry:
    """One request in flight, in a :class:`RequestsReply` (spec 5.21)."""

    #: The daemon's number for the connection (unique while the daemon runs).
    connection: int = attrs.field(validator=_u64)
    #: "uds" or "websocket".
    transport: str
    session: int = attrs.field(validator=_u32)
    #: The command's name, e.g. "WRITE".
    command: str
    #: Milliseconds since the request arrived.
    age_ms: int = attrs.field(validator=_u64)
    #: Content bytes moved so far: DATA received and stored (WRITE), or sent (READ).
    moved: int = attrs.field(validator=_u64)
    #: What it waits on now: "disk", "path lock", "peer credit", "peer", "budget", or
    #: "running".
    waiting: str
    path: str | None = None
    #: The peer's credentials (Unix socket) or address (WebSocket).
    uid: int | None = attrs.field(default=None, validator=_opt_u64)
    pid: int | None = attrs.field(default=None, validator=_opt_u64)
    address: str | None = None


@attrs.frozen
class RequestsReply:
    #: How many requests are in flight in all (the entries may be fewer).
    total: int = attrs.field(validator=_u64)
    #: The oldest ``limit`` of them at most, oldest first, as many as fit one control frame.
    requests: tuple[RequestEntry, ...] = ()
    #: Open connections.
    connections: int = attrs.field(default=0, validator=_u64)


# --- Administration ------------------------------------------------------------------------------


@attrs.frozen
class Shutdown:
    """SHUTDOWN: stop the daemon gracefully, as on SIGTERM (spec 5.22; administrators only)."""


@attrs.frozen
class ShutdownReply:
    #: Milliseconds the requests in flight are given to finish before they are cancelled.
    grace_ms: int = attrs.field(validator=_u64)
    #: The daemon's process id (a local client waits for it to exit).
    pid: int = attrs.field(default=0, validator=_u32)


@attrs.frozen
class Fsck:
    """FSCK: check the whole store, or with ``repair`` check and repair it (spec 5.20).
    Administrators only."""

    repair: bool = False


@attrs.frozen
class FsckReply:
    """An FSCK reply: progress (replies without END, at most about one a second), then the
    report (the reply with END, ``phase`` "done"). Lists are capped (to 100 items, and to fit
    one control frame); the ``*_count`` figures are exact."""

    #: "metadata", "chunks", "files", "repair", or "done" in the final reply.
    phase: str
    chunks_done: int = attrs.field(default=0, validator=_u64)
    chunks_total: int = attrs.field(default=0, validator=_u64)
    bytes_done: int = attrs.field(default=0, validator=_u64)
    bytes_total: int = attrs.field(default=0, validator=_u64)
    # The report (final reply only).
    files: int = attrs.field(default=0, validator=_u64)
    directories: int = attrs.field(default=0, validator=_u64)
    corrupt: tuple[str, ...] = ()
    corrupt_count: int = attrs.field(default=0, validator=_u64)
    missing: tuple[str, ...] = ()
    missing_count: int = attrs.field(default=0, validator=_u64)
    orphans: tuple[str, ...] = ()
    orphan_count: int = attrs.field(default=0, validator=_u64)
    refcount_errors: tuple[str, ...] = ()
    refcount_error_count: int = attrs.field(default=0, validator=_u64)
    namespace_errors: tuple[str, ...] = ()
    quarantined: tuple[str, ...] = ()
    quarantined_count: int = attrs.field(default=0, validator=_u64)
    #: Files using a corrupt, missing or quarantined chunk, as the check found them.
    affected: tuple[str, ...] = ()
    affected_count: int = attrs.field(default=0, validator=_u64)
    #: A repair ran (the fields below are its outcome).
    repaired: bool = False
    orphans_removed: int = attrs.field(default=0, validator=_u64)
    refcounts_fixed: int = attrs.field(default=0, validator=_u64)
    #: Files that still use damaged data: upload their content again.
    reupload: tuple[str, ...] = ()
    reupload_count: int = attrs.field(default=0, validator=_u64)
    unrepaired: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Nothing left to do: a clean store, or after a repair, nothing to upload again
        and nothing unrepaired."""
        if self.repaired:
            return not (self.reupload_count or self.unrepaired)
        return not (
            self.corrupt_count
            or self.missing_count
            or self.orphan_count
            or self.quarantined_count
            or self.refcount_error_count
            or self.namespace_errors
        )


# --- The daemon's log (spec 5.19) -----------------------------------------------------------


def _log_limit(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not 0 <= value <= MAX_LOG_RECORDS:
        msg = f"{attribute.name} must be in 0..{MAX_LOG_RECORDS}, got {value}"
        raise ValueError(msg)


def _filter_text(_inst: object, attribute: attrs.Attribute[str | None], value: str | None) -> None:
    if value is not None and len(value.encode()) > MAX_LOG_FILTER_BYTES:
        msg = f"{attribute.name} must be at most {MAX_LOG_FILTER_BYTES} bytes"
        raise ValueError(msg)


def _opt_i64(_inst: object, attribute: attrs.Attribute[int | None], value: int | None) -> None:
    if value is not None and not -(2**63) <= value < 2**63:
        msg = f"{attribute.name} must be absent or fit in a signed 64-bit integer, got {value}"
        raise ValueError(msg)


@attrs.frozen
class LogRecord:
    """One record of the daemon's log."""

    #: Its sequence number: the cursor that designates it (grows by one per record).
    seq: int = attrs.field(validator=_u64)
    #: When it was logged, milliseconds since the epoch (UTC).
    time_ms: int = attrs.field(validator=_i64)
    #: The numeric level: 10 DEBUG, 20 INFO, 30 WARNING, 40 ERROR, 50 CRITICAL.
    level: int = attrs.field(validator=_u32)
    logger: str
    message: str
    #: The traceback, when the record carries one.
    exc: str | None = None


@attrs.frozen
class LogGet:
    """LOG_GET: a page of the daemon's log records that pass every filter given."""

    #: The least level.
    min_level: int = attrs.field(default=0, validator=_u32)
    #: A logger name prefix ("librorum.store" keeps it and the loggers below it).
    logger: str | None = attrs.field(default=None, validator=_filter_text)
    #: A substring of the message (case-sensitive).
    grep: str | None = attrs.field(default=None, validator=_filter_text)
    #: The time range, milliseconds since the epoch: since inclusive, until exclusive.
    since_ms: int | None = attrs.field(default=None, validator=_opt_i64)
    until_ms: int | None = attrs.field(default=None, validator=_opt_i64)
    #: Records in the reply at most (1..1000; the reply may hold fewer, to fit a frame).
    limit: int = attrs.field(default=100, validator=_log_limit)
    #: Newest first, going back in time; else oldest first.
    newest_first: bool = False
    #: Where to continue: the ``cursor`` of a previous reply.
    cursor: int | None = attrs.field(default=None, validator=_opt_u64)


@attrs.frozen
class LogGetReply:
    records: tuple[LogRecord, ...]
    #: Where the next page starts (oldest first: after the records looked at, also when
    #: there are none yet; newest first: before them), None when the oldest record held
    #: was reached going back.
    cursor: int | None = attrs.field(default=None, validator=_opt_u64)
    #: Records from the cursor asked for on that the daemon no longer holds.
    missed: int = attrs.field(default=0, validator=_u64)


@attrs.frozen
class LogStream:
    """LOG_STREAM: the last ``last`` records that pass the filters, then every new one as it
    is logged, as DATA frames under the client's credit, until the client cancels."""

    last: int = attrs.field(default=0, validator=_log_limit)
    min_level: int = attrs.field(default=0, validator=_u32)
    logger: str | None = attrs.field(default=None, validator=_filter_text)
    grep: str | None = attrs.field(default=None, validator=_filter_text)


@attrs.frozen
class LogStreamReply:
    """First reply of a LOG_STREAM: where the stream starts. DATA frames follow, each one
    :class:`LogBatch`."""

    cursor: int = attrs.field(validator=_u64)


@attrs.frozen
class LogBatch:
    """The payload of one DATA frame of a LOG_STREAM (MessagePack, like a control message;
    not a message of its own command)."""

    records: tuple[LogRecord, ...]
    #: The cursor after this batch.
    cursor: int = attrs.field(validator=_u64)
    #: Records the daemon overwrote before this stream could send them (its reader was
    #: slower than the log), just before the records of this batch.
    missed: int = attrs.field(default=0, validator=_u64)


@attrs.frozen
class LogStats:
    """LOG_STATS: the figures of the daemon's log."""


@attrs.frozen
class LogMinute:
    #: The minute's start, milliseconds since the epoch.
    start_ms: int = attrs.field(validator=_i64)
    #: Records of that minute, by level name.
    counts: dict[str, int] = attrs.field(validator=_u64_values)


@attrs.frozen
class LogStatsReply:
    #: Records since the daemon started, by level name and by logger name.
    levels: dict[str, int] = attrs.field(validator=_u64_values)
    loggers: dict[str, int] = attrs.field(validator=_u64_values)
    #: Records per minute, the last 60 minutes, oldest first, minutes without any left out.
    trend: tuple[LogMinute, ...]
    #: Records the daemon keeps at most, and keeps now; the oldest one's cursor, the next.
    capacity: int = attrs.field(validator=_u64)
    held: int = attrs.field(validator=_u64)
    first_cursor: int = attrs.field(validator=_u64)
    next_cursor: int = attrs.field(validator=_u64)


#: Every control message class.
Message: TypeAlias = (
    Hello
    | HelloReply
    | Ping
    | PingReply
    | WindowUpdate
    | Cancel
    | CancelReply
    | GoAway
    | ErrorMessage
    | FileStat
    | FileStatReply
    | FileList
    | FileListReply
    | MakeDirectory
    | MakeDirectoryReply
    | Delete
    | DeleteReply
    | Rename
    | RenameReply
    | NodeStatus
    | NodeStatusReply
    | FileWrite
    | FileWriteReply
    | FileRead
    | FileReadReply
    | UploadStatus
    | UploadStatusReply
    | Requests
    | RequestsReply
    | Shutdown
    | ShutdownReply
    | Fsck
    | FsckReply
    | LogGet
    | LogGetReply
    | LogStream
    | LogStreamReply
    | LogStats
    | LogStatsReply
)

#: The class of a request payload (no REPLY flag), by command. DATA has none: raw bytes.
REQUEST_TYPES: Final[dict[Command, type[Message]]] = {
    Command.HELLO: Hello,
    Command.PING: Ping,
    Command.WINDOW: WindowUpdate,
    Command.CANCEL: Cancel,
    Command.ERROR: ErrorMessage,
    Command.STAT: FileStat,
    Command.LIST: FileList,
    Command.MKDIR: MakeDirectory,
    Command.DELETE: Delete,
    Command.RENAME: Rename,
    Command.NODE_STATUS: NodeStatus,
    Command.WRITE: FileWrite,
    Command.READ: FileRead,
    Command.UPLOAD_STATUS: UploadStatus,
    Command.REQUESTS: Requests,
    Command.SHUTDOWN: Shutdown,
    Command.FSCK: Fsck,
    Command.LOG_GET: LogGet,
    Command.LOG_STREAM: LogStream,
    Command.LOG_STATS: LogStats,
}

#: The class of a reply payload (REPLY flag set), by command. DATA has none: raw bytes.
REPLY_TYPES: Final[dict[Command, type[Message]]] = {
    Command.HELLO: HelloReply,
    Command.PING: PingReply,
    Command.WINDOW: WindowUpdate,
    Command.CANCEL: CancelReply,
    Command.GOAWAY: GoAway,
    Command.ERROR: ErrorMessage,
    Command.STAT: FileStatReply,
    Command.LIST: FileListReply,
    Command.MKDIR: MakeDirectoryReply,
    Command.DELETE: DeleteReply,
    Command.RENAME: RenameReply,
    Command.NODE_STATUS: NodeStatusReply,
    Command.WRITE: FileWriteReply,
    Command.READ: FileReadReply,
    Command.UPLOAD_STATUS: UploadStatusReply,
    Command.REQUESTS: RequestsReply,
    Command.SHUTDOWN: ShutdownReply,
    Command.FSCK: FsckReply,
    Command.LOG_GET: LogGetReply,
    Command.LOG_STREAM: LogStreamReply,
    Command.LOG_STATS: LogStatsReply,
}

#: The command of each message class, and whether it travels with the REPLY flag. WINDOW and
#: ERROR travel both ways; their entry says REPLY=False and senders set the flag by direction.
COMMAND_OF: Final[dict[type[Message], tuple[Command, bool]]] = {
    **{cls: (cmd, False) for cmd, cls in REQUEST_TYPES.items()},
    **{cls: (cmd, True) for cmd, cls in REPLY_TYPES.items() if cls not in REQUEST_TYPES.values()},
}

#: Requests that open a session the server answers with exactly one final reply or ERROR.
UNARY_REQUESTS: Final = frozenset(
    {
        Command.PING,
        Command.STAT,
        Command.LIST,
        Command.MKDIR,
        Command.DELETE,
        Command.RENAME,
        Command.NODE_STATUS,
        Command.UPLOAD_STATUS,
        Command.CANCEL,
        Command.REQUESTS,
        Command.SHUTDOWN,
        Command.LOG_GET,
        Command.LOG_STATS,
    }
)

#: Requests answered by any number of progress replies (without END), then one final reply
#: or ERROR (spec 5.20).
PROGRESS_REQUESTS: Final = frozenset({Command.FSCK})
