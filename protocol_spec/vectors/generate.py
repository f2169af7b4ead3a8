"""Generate the LBRU v1 golden test vectors from the reference codec.

    .venv/bin/python protocol_spec/vectors/generate.py           # rewrite the JSON files
    .venv/bin/python protocol_spec/vectors/generate.py --check   # exit 1 if they are stale

Writes ``frames.json`` (valid frames), ``malformed.json`` (inputs a receiver must reject) and
``lenient.json`` (valid but non-canonical payloads a receiver must accept) next to this script.
The output is deterministic: no clock, no randomness, sorted nothing, fixed indentation. The
format is described in ``README.md`` and in section 11 of ``../lbru-v1.md``.

The valid frames are built with the codec (``encode_message`` and ``encode_frame``); every
malformed input is built by hand from raw MessagePack or raw header bytes, because the codec
refuses to produce them.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from typing import Any

import attrs
import blake3
import msgpack

from librorum.protocol.constants import (
    DEFAULT_INITIAL_WINDOW,
    DEFAULT_MAX_FILE_SIZE,
    DEFAULT_MAX_PAYLOAD,
    DEFAULT_MAX_STREAMS,
    DEFAULT_MAX_UPLOADS,
    MAX_CONTROL_PAYLOAD,
    MAX_HANDSHAKE_PAYLOAD,
    MAX_WINDOW,
    CancelOutcome,
    Command,
    EntryKind,
    ErrorCode,
    Feature,
    Flags,
    WriteMode,
)
from librorum.protocol.converter import encode_log_batch, encode_message
from librorum.protocol.framing import encode_frame
from librorum.protocol.messages import (
    Cancel,
    CancelReply,
    Delete,
    DeleteReply,
    DirEntry,
    ErrorMessage,
    FileInfo,
    FileList,
    FileListReply,
    FileRead,
    FileReadReply,
    FileStat,
    FileStatReply,
    FileWrite,
    FileWriteReply,
    Fsck,
    FsckReply,
    GoAway,
    Hello,
    HelloReply,
    LogBatch,
    LogGet,
    LogGetReply,
    LogMinute,
    LogRecord,
    LogStats,
    LogStatsReply,
    LogStream,
    LogStreamReply,
    MakeDirectory,
    MakeDirectoryReply,
    Message,
    NodeStatus,
    NodeStatusReply,
    Ping,
    PingReply,
    Rename,
    RenameReply,
    RequestEntry,
    Requests,
    RequestsReply,
    Shutdown,
    ShutdownReply,
    StoreFigures,
    UploadStatus,
    UploadStatusReply,
    WindowUpdate,
)

HERE = Path(__file__).resolve().parent

#: The decoder limits every vector assumes unless it says otherwise: version 1 negotiated,
#: default max_payload, the control limit (spec 3.1, 9).
DEFAULT_LIMITS = {
    "expected_version": 1,
    "max_payload": DEFAULT_MAX_PAYLOAD,
    "max_control_payload": MAX_CONTROL_PAYLOAD,
}
#: The limits before HELLO completes (spec 3.1, 9).
HANDSHAKE_LIMITS = {
    "expected_version": 1,
    "max_payload": MAX_HANDSHAKE_PAYLOAD,
    "max_control_payload": MAX_HANDSHAKE_PAYLOAD,
}

C2S = "client-to-server"
S2C = "server-to-client"

# --- JSON form of messages -------------------------------------------------------------------


def to_json(value: Any) -> Any:
    """The JSON form of a message value: records as objects holding every field (defaults
    included), enums by their wire value, bytes as lowercase hex strings, tuples as lists."""
    if attrs.has(type(value)):
        return {f.name: to_json(getattr(value, f.name)) for f in attrs.fields(type(value))}
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, (tuple, list)):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)  # an IntEnum (an error code) becomes its number
    return value.value  # a str-valued enum


def flag_names(flags: int) -> list[str]:
    return [f.name for f in (Flags.END, Flags.REPLY, Flags.FD) if flags & f and f.name]


def header_json(raw: bytes) -> dict[str, Any]:
    _magic, version, command, flags, size, session = struct.unpack_from("!4sBBHIQ", raw)
    return {
        "version": version,
        "command": Command(command).name,
        "flags": flag_names(flags),
        "payload_size": size,
        "session_id": session,
    }


# --- Valid frames ----------------------------------------------------------------------------

HELLO_TXT = b"hello world"
HELLO_HASH = blake3.blake3(HELLO_TXT).digest()
MTIME = 1_700_000_000_123_456_789
UPLOAD_ID = "Vq3Nm0b5zK8tR2xYp7LwQA"  # 128 random bits, base64url, no padding

HELLO_INFO = FileInfo(
    path="/docs/hello.txt",
    kind=EntryKind.FILE,
    size=len(HELLO_TXT),
    mtime_ns=MTIME,
    version=1,
    content_hash=HELLO_HASH,
)


def _valid() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(
        name: str,
        description: str,
        command: Command,
        flags: int,
        session_id: int,
        body: Message | bytes,
    ) -> None:
        direction = S2C if flags & Flags.REPLY else C2S
        payload = body if isinstance(body, bytes) else encode_message(body)
        raw = encode_frame(command, payload, session_id=session_id, flags=flags)
        entry: dict[str, Any] = {
            "name": name,
            "description": description,
            "direction": direction,
            "hex": raw.hex(),
            "header": header_json(raw),
        }
        if isinstance(body, bytes):
            entry["data_hex"] = body.hex()
        else:
            entry["payload_hex"] = payload.hex()
            entry["message"] = {"type": type(body).__name__, "fields": to_json(body)}
        out.append(entry)

    end, reply, fd = int(Flags.END), int(Flags.REPLY), int(Flags.FD)
    rend = reply | end
    both = int(Feature.FD_PASSING | Feature.MEMFD)

    # Connection setup (session 0).
    add(
        "hello",
        "HELLO from a local client offering v1, 1 MiB payloads, a 4 MiB READ window and both "
        "fd features.",
        Command.HELLO,
        end,
        0,
        Hello(
            versions=(1,),
            max_payload=DEFAULT_MAX_PAYLOAD,
            initial_window=DEFAULT_INITIAL_WINDOW,
            features=both,
            client="lbru-cli/0.1",
        ),
    )
    add(
        "hello-future-client",
        "HELLO from a client that also speaks a future version 2, with the smallest allowed "
        "max_payload (64 KiB) and no features (a WebSocket client); defaults omitted.",
        Command.HELLO,
        end,
        0,
        Hello(versions=(1, 2), max_payload=64 << 10, initial_window=1 << 20),
    )
    add(
        "hello-reply",
        "The server's answer on a Unix socket: version 1, the default limits, both features.",
        Command.HELLO,
        rend,
        0,
        HelloReply(
            version=1,
            max_payload=DEFAULT_MAX_PAYLOAD,
            initial_window=DEFAULT_INITIAL_WINDOW,
            max_streams=DEFAULT_MAX_STREAMS,
            max_uploads=DEFAULT_MAX_UPLOADS,
            max_file_size=DEFAULT_MAX_FILE_SIZE,
            features=both,
            server="librorum/0.1.0",
        ),
    )
    add(
        "hello-reply-websocket",
        "The answer to hello-future-client over WebSocket: version 1 chosen, max_payload the "
        "client's 64 KiB, no features, no server text.",
        Command.HELLO,
        rend,
        0,
        HelloReply(
            version=1,
            max_payload=64 << 10,
            initial_window=DEFAULT_INITIAL_WINDOW,
            max_streams=DEFAULT_MAX_STREAMS,
            max_uploads=DEFAULT_MAX_UPLOADS,
            max_file_size=DEFAULT_MAX_FILE_SIZE,
        ),
    )

    # Unary requests.
    add(
        "ping",
        "PING with 8 bytes of data.",
        Command.PING,
        end,
        1,
        Ping(data=bytes(range(8))),
    )
    add("ping-reply", "The PING echoed.", Command.PING, rend, 1, PingReply(data=bytes(range(8))))
    add(
        "ping-empty-max-session",
        "PING without data (payload: the empty map) on the largest session_id, 2^64-1.",
        Command.PING,
        end,
        2**64 - 1,
        Ping(),
    )
    add(
        "ping-reply-empty-max-session",
        "Its reply.",
        Command.PING,
        rend,
        2**64 - 1,
        PingReply(),
    )
    add(
        "stat",
        "STAT of a file.",
        Command.STAT,
        end,
        2,
        FileStat(path="/docs/hello.txt"),
    )
    add(
        "stat-reply",
        "STAT reply for an 11-byte file, with its BLAKE3 content hash.",
        Command.STAT,
        rend,
        2,
        FileStatReply(info=HELLO_INFO),
    )
    add(
        "stat-reply-directory",
        "STAT reply for the root directory: no content_hash, size 0.",
        Command.STAT,
        rend,
        3,
        FileStatReply(
            info=FileInfo(path="/", kind=EntryKind.DIRECTORY, size=0, mtime_ns=MTIME, version=7)
        ),
    )
    add(
        "list",
        "LIST the first page of two entries of /docs.",
        Command.LIST,
        end,
        4,
        FileList(path="/docs", limit=2),
    )
    add(
        "list-reply",
        "A page of two entries and the cursor for the next page.",
        Command.LIST,
        rend,
        4,
        FileListReply(
            entries=(
                DirEntry(
                    name="archive", kind=EntryKind.DIRECTORY, size=0, mtime_ns=MTIME, version=2
                ),
                DirEntry(name="hello.txt", kind=EntryKind.FILE, size=11, mtime_ns=MTIME, version=1),
            ),
            next_cursor="hello.txt",
        ),
    )
    add(
        "list-next-page",
        "LIST the next page with the cursor; limit at its default (1000), so omitted.",
        Command.LIST,
        end,
        5,
        FileList(path="/docs", cursor="hello.txt"),
    )
    add(
        "list-reply-last-page",
        "The last page: no entries, no next_cursor.",
        Command.LIST,
        rend,
        5,
        FileListReply(entries=()),
    )
    add(
        "node-status",
        "NODE_STATUS: a message without fields; the payload is the empty map 0x80.",
        Command.NODE_STATUS,
        end,
        6,
        NodeStatus(),
    )
    add(
        "node-status-reply",
        "NODE_STATUS reply; protocol_version is at its default (1) and omitted.",
        Command.NODE_STATUS,
        rend,
        6,
        NodeStatusReply(
            version="0.1.0",
            node_id="node-7f3a",
            uptime_ms=86_400_000,
            connections={"uds": 3, "websocket": 1},
            requests=123_456,
            bytes_in=10_737_418_240,
            bytes_out=5_368_709_120,
            store=StoreFigures(
                files=1200,
                directories=35,
                logical_bytes=9_000_000_000,
                stored_bytes=6_500_000_000,
                chunks=1650,
                free_bytes=250_000_000_000,
            ),
        ),
    )
    add(
        "mkdir",
        "MKDIR with parents.",
        Command.MKDIR,
        end,
        7,
        MakeDirectory(path="/docs/archive/2024", parents=True),
    )
    add(
        "mkdir-reply",
        "MKDIR reply: the new directory.",
        Command.MKDIR,
        rend,
        7,
        MakeDirectoryReply(
            info=FileInfo(
                path="/docs/archive/2024",
                kind=EntryKind.DIRECTORY,
                size=0,
                mtime_ns=MTIME,
                version=1,
            )
        ),
    )
    add(
        "delete",
        "DELETE a tree.",
        Command.DELETE,
        end,
        8,
        Delete(path="/tmp/scratch", recursive=True),
    )
    add("delete-reply", "Three entries removed.", Command.DELETE, rend, 8, DeleteReply(removed=3))
    add(
        "rename",
        "RENAME replacing an existing file at the destination.",
        Command.RENAME,
        end,
        9,
        Rename(src="/docs/draft.txt", dst="/docs/final.txt", overwrite=True),
    )
    add(
        "rename-reply",
        "RENAME reply: the entry at its new path.",
        Command.RENAME,
        rend,
        9,
        RenameReply(
            info=FileInfo(
                path="/docs/final.txt",
                kind=EntryKind.FILE,
                size=0,
                mtime_ns=MTIME,
                version=4,
                content_hash=blake3.blake3(b"").digest(),
            )
        ),
    )

    # WRITE, streamed.
    add(
        "write",
        "WRITE opening a resumable upload of 11 bytes; no END: DATA follows.",
        Command.WRITE,
        0,
        10,
        FileWrite(path="/docs/hello.txt", mode=WriteMode.EXCLUSIVE, size=11, upload_id=UPLOAD_ID),
    )
    add(
        "data-write",
        "DATA of an upload (client to server, REPLY clear), not the last.",
        Command.DATA,
        0,
        10,
        b"hello ",
    )
    add(
        "window-reply",
        "WINDOW from the server granting 4 MiB more on the WRITE stream (REPLY set, no END).",
        Command.WINDOW,
        reply,
        10,
        WindowUpdate(increment=DEFAULT_INITIAL_WINDOW),
    )
    add(
        "data-write-end",
        "The last DATA of the upload (END).",
        Command.DATA,
        end,
        10,
        b"world",
    )
    add(
        "write-reply",
        "WRITE reply after the commit: the new FileInfo.",
        Command.WRITE,
        rend,
        10,
        FileWriteReply(info=HELLO_INFO),
    )
    add(
        "write-empty",
        "WRITE with END and no FD: creates or replaces an empty file; no DATA follows.",
        Command.WRITE,
        end,
        11,
        FileWrite(path="/docs/empty.txt"),
    )
    add(
        "write-fd",
        "WRITE of a 5 MiB regular file passed as a descriptor (FD|END, size required).",
        Command.WRITE,
        fd | end,
        12,
        FileWrite(path="/videos/clip.mp4", mode=WriteMode.OVERWRITE, size=5 << 20),
    )
    add(
        "write-streamed-start",
        "WRITE without size (unknown length); DATA follows.",
        Command.WRITE,
        0,
        13,
        FileWrite(path="/logs/today.log"),
    )
    add(
        "data-write-empty-end",
        "An empty DATA frame with END ends the upload stream.",
        Command.DATA,
        end,
        13,
        b"",
    )

    # Resumable upload.
    add(
        "upload-status",
        "UPLOAD_STATUS of an interrupted upload.",
        Command.UPLOAD_STATUS,
        end,
        14,
        UploadStatus(upload_id="u_Zk2Hf9Lq0Wc7Rb1Tn5Ye4g"),
    )
    add(
        "upload-status-reply",
        "4 MiB of 10 MiB durably committed.",
        Command.UPLOAD_STATUS,
        rend,
        14,
        UploadStatusReply(
            upload_id="u_Zk2Hf9Lq0Wc7Rb1Tn5Ye4g",
            path="/backups/db.dump",
            offset=4 << 20,
            size=10 << 20,
        ),
    )
    add(
        "write-resume",
        "WRITE resuming that upload at the committed offset; DATA from byte 4 MiB follows.",
        Command.WRITE,
        0,
        15,
        FileWrite(
            path="/backups/db.dump",
            size=10 << 20,
            upload_id="u_Zk2Hf9Lq0Wc7Rb1Tn5Ye4g",
            offset=4 << 20,
        ),
    )

    # READ.
    add(
        "read",
        "READ a whole file.",
        Command.READ,
        end,
        16,
        FileRead(path="/docs/hello.txt"),
    )
    add(
        "read-reply",
        "READ reply: 11 bytes follow in DATA frames (no END).",
        Command.READ,
        reply,
        16,
        FileReadReply(info=HELLO_INFO, offset=0, length=11),
    )
    add(
        "data-read",
        "DATA of a READ (server to client, REPLY set), not the last.",
        Command.DATA,
        reply,
        16,
        b"hello ",
    )
    add(
        "window",
        "WINDOW from the client granting 2 MiB more on the READ stream (REPLY clear, no END).",
        Command.WINDOW,
        0,
        16,
        WindowUpdate(increment=2 << 20),
    )
    add(
        "window-max",
        "WINDOW with the largest increment, 64 MiB.",
        Command.WINDOW,
        0,
        16,
        WindowUpdate(increment=MAX_WINDOW),
    )
    add(
        "data-read-end",
        "The last DATA of the READ (REPLY|END).",
        Command.DATA,
        rend,
        16,
        b"world",
    )
    add(
        "read-range",
        "READ of 4 bytes from offset 6.",
        Command.READ,
        end,
        17,
        FileRead(path="/docs/hello.txt", offset=6, length=4),
    )
    add(
        "read-reply-empty",
        "READ reply for offset == size: length 0, so the reply itself carries END.",
        Command.READ,
        rend,
        18,
        FileReadReply(info=HELLO_INFO, offset=11, length=0),
    )

    # CANCEL.
    add(
        "cancel",
        "CANCEL, on a session of its own (19), of the upload on session 15.",
        Command.CANCEL,
        end,
        19,
        Cancel(target=15),
    )
    add(
        "error-cancelled",
        "The target's final frame, sent before the CANCEL reply.",
        Command.ERROR,
        rend,
        15,
        ErrorMessage(code=ErrorCode.CANCELLED, message="cancelled by the client"),
    )
    add(
        "cancel-reply-aborted",
        "The CANCEL reply on session 19, after the target's ERROR: aborted, no effect.",
        Command.CANCEL,
        rend,
        19,
        CancelReply(outcome=CancelOutcome.ABORTED),
    )
    others = (CancelOutcome.NOT_STARTED, CancelOutcome.COMMITTED, CancelOutcome.UNKNOWN)
    for i, outcome in enumerate(others, start=20):
        add(
            f"cancel-reply-{outcome.value.replace('_', '-')}",
            f"A CANCEL reply (on session {i}) with outcome {outcome.value}.",
            Command.CANCEL,
            rend,
            i,
            CancelReply(outcome=outcome),
        )

    # Errors and GOAWAY.
    add(
        "error-request",
        "ERROR ending a request: NOT_FOUND on the request's session (REPLY|END).",
        Command.ERROR,
        rend,
        23,
        ErrorMessage(code=ErrorCode.NOT_FOUND, message="no such file: /docs/missing.txt"),
    )
    add(
        "error-connection-server",
        "Connection ERROR from the server on session 0: no common version; lists the "
        "server's versions.",
        Command.ERROR,
        rend,
        0,
        ErrorMessage(
            code=ErrorCode.UNSUPPORTED_VERSION, message="no common protocol version; versions=1"
        ),
    )
    add(
        "error-connection-client",
        "Connection ERROR from the client on session 0 (REPLY clear), before it closes.",
        Command.ERROR,
        end,
        0,
        ErrorMessage(code=ErrorCode.PROTOCOL_ERROR),
    )
    add(
        "error-unknown-code",
        "ERROR with a code this version does not define (0x03ff, server class): handled "
        "like the other codes of its class.",
        Command.ERROR,
        rend,
        24,
        ErrorMessage(code=0x03FF, message="some future condition"),
    )
    add(
        "goaway",
        "GOAWAY on session 0 (REPLY, no END): shutting down, 10 s grace.",
        Command.GOAWAY,
        reply,
        0,
        GoAway(reason="shutting down", grace_ms=10_000),
    )
    add(
        "goaway-empty",
        "GOAWAY with every field at its default: the empty map.",
        Command.GOAWAY,
        reply,
        0,
        GoAway(),
    )

    # REQUESTS: the live view (spec 5.21).
    add(
        "requests",
        "REQUESTS with every field at its default (at most 1000 entries): the empty map.",
        Command.REQUESTS,
        end,
        40,
        Requests(),
    )
    add(
        "requests-reply",
        "Two requests in flight: a local upload waiting for its client's DATA, and a remote "
        "READ waiting for credit.",
        Command.REQUESTS,
        rend,
        40,
        RequestsReply(
            total=2,
            requests=(
                RequestEntry(
                    connection=7,
                    transport="uds",
                    session=3,
                    command="WRITE",
                    age_ms=12_500,
                    moved=3 << 20,
                    waiting="peer",
                    path="/backups/db.dump",
                    uid=1000,
                    pid=4242,
                ),
                RequestEntry(
                    connection=9,
                    transport="websocket",
                    session=5,
                    command="READ",
                    age_ms=800,
                    moved=0,
                    waiting="peer credit",
                    path="/docs/report.pdf",
                    address="192.0.2.10:50412",
                ),
            ),
            connections=2,
        ),
    )
    add(
        "shutdown",
        "SHUTDOWN (administrators only): a message without fields, the empty map.",
        Command.SHUTDOWN,
        end,
        30,
        Shutdown(),
    )
    add(
        "shutdown-reply",
        "SHUTDOWN reply: the daemon drains for 10 s (GOAWAY follows), then exits.",
        Command.SHUTDOWN,
        rend,
        30,
        ShutdownReply(grace_ms=10_000, pid=4242),
    )
    # FSCK (spec 5.20): progress replies, then the report.
    add(
        "fsck",
        "FSCK: check the store and repair what can be repaired.",
        Command.FSCK,
        end,
        40,
        Fsck(repair=True),
    )
    add(
        "fsck-progress",
        "A progress reply (no END): half of the chunks rehashed.",
        Command.FSCK,
        reply,
        40,
        FsckReply(
            phase="chunks",
            chunks_done=512,
            chunks_total=1024,
            bytes_done=2 << 30,
            bytes_total=4 << 30,
        ),
    )
    add(
        "fsck-report",
        "The final reply: one corrupt chunk, quarantined; its file must be uploaded again.",
        Command.FSCK,
        rend,
        40,
        FsckReply(
            phase="done",
            chunks_done=1024,
            chunks_total=1024,
            bytes_done=4 << 30,
            bytes_total=4 << 30,
            files=300,
            directories=12,
            corrupt=("9f" * 32,),
            corrupt_count=1,
            quarantined=("9f" * 32,),
            quarantined_count=1,
            affected=("/photos/2024/beach.jpg",),
            affected_count=1,
            repaired=True,
            reupload=("/photos/2024/beach.jpg",),
            reupload_count=1,
        ),
    )
    # The daemon's log (spec 5.19).
    record = LogRecord(
        seq=41,
        time_ms=1_765_000_000_123,
        level=30,
        logger="librorum.store",
        message="chunk 3f2a healed: a fresh copy replaced the quarantined one",
    )
    add(
        "log-get",
        "LOG_GET: warnings and worse of the store's loggers, the newest 50 first.",
        Command.LOG_GET,
        end,
        40,
        LogGet(min_level=30, logger="librorum.store", limit=50, newest_first=True),
    )
    add(
        "log-get-reply",
        "LOG_GET reply: one record, and the cursor to go further back from.",
        Command.LOG_GET,
        rend,
        40,
        LogGetReply(records=(record,), cursor=41),
    )
    add(
        "log-get-range",
        "LOG_GET of the records containing 'uid' in a time range, oldest first, from a cursor.",
        Command.LOG_GET,
        end,
        41,
        LogGet(
            grep="uid",
            since_ms=1_765_000_000_000,
            until_ms=1_765_000_600_000,
            limit=1000,
            cursor=7,
        ),
    )
    add(
        "log-get-reply-missed",
        "LOG_GET reply: nothing new, 12 records from the cursor asked for were overwritten.",
        Command.LOG_GET,
        rend,
        41,
        LogGetReply(records=(), cursor=19, missed=12),
    )
    add(
        "log-stream",
        "LOG_STREAM: the last 10 records at INFO or worse, then follow.",
        Command.LOG_STREAM,
        end,
        42,
        LogStream(last=10, min_level=20),
    )
    add(
        "log-stream-reply",
        "LOG_STREAM first reply (no END): the stream starts at cursor 32; DATA follows.",
        Command.LOG_STREAM,
        reply,
        42,
        LogStreamReply(cursor=32),
    )
    add(
        "data-log-batch",
        "DATA of a LOG_STREAM (REPLY): a LogBatch map with one record, after 3 missed.",
        Command.DATA,
        reply,
        42,
        encode_log_batch(LogBatch(records=(record,), cursor=42, missed=3)),
    )
    add(
        "log-stream-final-reply",
        "LOG_STREAM final reply (REPLY|END): the daemon is stopping; the cursor to resume at.",
        Command.LOG_STREAM,
        rend,
        42,
        LogStreamReply(cursor=42),
    )
    add(
        "log-stats",
        "LOG_STATS: the empty map.",
        Command.LOG_STATS,
        end,
        43,
        LogStats(),
    )
    add(
        "log-stats-reply",
        "LOG_STATS reply: counts by level and logger, one minute of trend.",
        Command.LOG_STATS,
        rend,
        43,
        LogStatsReply(
            levels={"INFO": 40, "WARNING": 2},
            loggers={"librorum.server": 40, "librorum.store": 2},
            trend=(LogMinute(start_ms=1_764_999_960_000, counts={"INFO": 40, "WARNING": 2}),),
            capacity=10_000,
            held=42,
            first_cursor=0,
            next_cursor=42,
        ),
    )
    add(
        "error-forbidden",
        "ERROR ending a LOG_GET from a uid that is not an administrator (spec 2.5).",
        Command.ERROR,
        rend,
        44,
        ErrorMessage(
            code=ErrorCode.FORBIDDEN,
            message="reading the log is for administrators; uid 1001 is not one",
        ),
    )
    return out


# --- Malformed inputs ------------------------------------------------------------------------


def _hdr(
    command: int,
    flags: int = 0,
    size: int = 0,
    session: int = 1,
    *,
    magic: bytes = b"LBRU",
    version: int = 1,
) -> bytes:
    return struct.pack("!4sBBHIQ", magic, version, command, flags, size, session)


def _frame(command: Command, payload: bytes, flags: int = Flags.END, session: int = 1) -> bytes:
    return _hdr(command, flags, len(payload), session) + payload


def _mp(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _malformed() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(
        name: str,
        klass: str,
        description: str,
        raw: bytes,
        error: str,
        code: ErrorCode,
        stage: str,
        *,
        feed: str = "whole",
        limits: dict[str, int] | None = None,
    ) -> None:
        entry: dict[str, Any] = {
            "name": name,
            "class": klass,
            "description": description,
            "hex": raw.hex(),
            "feed": feed,
        }
        if limits is not None:
            entry["limits"] = limits
        entry.update({"error": error, "code": code.name, "stage": stage})
        out.append(entry)

    end = int(Flags.END)
    stat = Command.STAT

    # Header stage: rejected from the 20 header bytes alone, in the order of spec 3.1.
    add(
        "bad-magic",
        "bad-magic",
        "Magic 'LBRX'.",
        _hdr(stat, end, 0, magic=b"LBRX"),
        "BadMagicError",
        ErrorCode.BAD_MAGIC,
        "header",
    )
    add(
        "bad-magic-http",
        "bad-magic",
        "An HTTP request sent to the Unix socket.",
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "BadMagicError",
        ErrorCode.BAD_MAGIC,
        "header",
    )
    add(
        "bad-magic-lowercase",
        "bad-magic",
        "Magic 'lbru': the comparison is byte-exact.",
        _hdr(stat, end, 0, magic=b"lbru"),
        "BadMagicError",
        ErrorCode.BAD_MAGIC,
        "header",
    )
    add(
        "bad-version-0",
        "bad-version",
        "Version 0.",
        _hdr(stat, end, 0, version=0),
        "UnsupportedVersionError",
        ErrorCode.UNSUPPORTED_VERSION,
        "header",
    )
    add(
        "bad-version-2",
        "bad-version",
        "Version 2 on a connection that negotiated version 1.",
        _hdr(stat, end, 0, version=2),
        "UnsupportedVersionError",
        ErrorCode.UNSUPPORTED_VERSION,
        "header",
    )
    add(
        "bad-version-hello-v2",
        "bad-version",
        "A HELLO framed with version 2: HELLO is always framed with the handshake version 1.",
        _hdr(Command.HELLO, end, 0, session=0, version=2),
        "UnsupportedVersionError",
        ErrorCode.UNSUPPORTED_VERSION,
        "header",
        limits=HANDSHAKE_LIMITS,
    )
    add(
        "bad-version-after-v2",
        "bad-version",
        "A version-1 frame on a connection that negotiated version 2.",
        _hdr(stat, end, 0),
        "UnsupportedVersionError",
        ErrorCode.UNSUPPORTED_VERSION,
        "header",
        limits={**DEFAULT_LIMITS, "expected_version": 2},
    )
    for byte in (0x00, 0x17, 0x1F, 0x7F, 0xFF):
        add(
            f"unknown-command-{byte:02x}",
            "unknown-command",
            f"Command byte 0x{byte:02x}.",
            _hdr(byte, end, 0),
            "UnknownCommandError",
            ErrorCode.UNKNOWN_COMMAND,
            "header",
        )
    for bits in (0x0008, 0x0100, 0x8000, 0xFFFF):
        add(
            f"reserved-flags-{bits:04x}",
            "reserved-flags",
            f"Flags 0x{bits:04x}: reserved bits set.",
            _hdr(stat, bits, 0),
            "BadFlagsError",
            ErrorCode.BAD_FLAGS,
            "header",
        )
    add(
        "control-too-large",
        "control-too-large",
        "A STAT declaring 64 KiB + 1 bytes: over the control limit. Only the header is sent; "
        "the receiver must reject it without waiting for the payload.",
        _hdr(stat, end, MAX_CONTROL_PAYLOAD + 1),
        "FrameTooLargeError",
        ErrorCode.FRAME_TOO_LARGE,
        "header",
    )
    add(
        "control-too-large-window",
        "control-too-large",
        "A WINDOW declaring 1 MiB: control frames are limited to 64 KiB whatever max_payload is.",
        _hdr(Command.WINDOW, 0, DEFAULT_MAX_PAYLOAD),
        "FrameTooLargeError",
        ErrorCode.FRAME_TOO_LARGE,
        "header",
    )
    add(
        "data-too-large",
        "data-too-large",
        "A DATA frame declaring 1 MiB + 1 bytes: over max_payload.",
        _hdr(Command.DATA, 0, DEFAULT_MAX_PAYLOAD + 1),
        "FrameTooLargeError",
        ErrorCode.FRAME_TOO_LARGE,
        "header",
    )
    add(
        "payload-size-max",
        "payload-size-max",
        "A DATA frame declaring 2^32-1 payload bytes.",
        _hdr(Command.DATA, 0, 2**32 - 1),
        "FrameTooLargeError",
        ErrorCode.FRAME_TOO_LARGE,
        "header",
    )
    big_hello = _mp(
        {
            "versions": [1],
            "max_payload": DEFAULT_MAX_PAYLOAD,
            "initial_window": DEFAULT_INITIAL_WINDOW,
            "client": "x" * 5100,
        }
    )
    add(
        "pre-handshake-limit",
        "pre-handshake-limit",
        "A well-formed 5 KiB HELLO before the handshake completed: over the 4 KiB budget.",
        _frame(Command.HELLO, big_hello, session=0),
        "FrameTooLargeError",
        ErrorCode.FRAME_TOO_LARGE,
        "header",
        limits=HANDSHAKE_LIMITS,
    )
    add(
        "pre-handshake-limit-data",
        "pre-handshake-limit",
        "A DATA frame of 4 KiB + 1 before the handshake completed.",
        _hdr(Command.DATA, 0, MAX_HANDSHAKE_PAYLOAD + 1),
        "FrameTooLargeError",
        ErrorCode.FRAME_TOO_LARGE,
        "header",
        limits=HANDSHAKE_LIMITS,
    )
    # The order of the checks: the first failing check names the error.
    add(
        "order-magic-before-version",
        "check-order",
        "Bad magic and bad version: BAD_MAGIC.",
        _hdr(0xFF, 0xFFFF, 2**32 - 1, magic=b"XXXX", version=9),
        "BadMagicError",
        ErrorCode.BAD_MAGIC,
        "header",
    )
    add(
        "order-version-before-command",
        "check-order",
        "Bad version and unknown command: UNSUPPORTED_VERSION.",
        _hdr(0xFF, 0xFFFF, 2**32 - 1, version=9),
        "UnsupportedVersionError",
        ErrorCode.UNSUPPORTED_VERSION,
        "header",
    )
    add(
        "order-command-before-flags",
        "check-order",
        "Unknown command and reserved flags: UNKNOWN_COMMAND.",
        _hdr(0xFF, 0xFFFF, 2**32 - 1),
        "UnknownCommandError",
        ErrorCode.UNKNOWN_COMMAND,
        "header",
    )
    add(
        "order-flags-before-size",
        "check-order",
        "Reserved flags and an oversized payload: BAD_FLAGS.",
        _hdr(Command.DATA, 0xFFFF, 2**32 - 1),
        "BadFlagsError",
        ErrorCode.BAD_FLAGS,
        "header",
    )

    # Frame stage: the stream ends inside a frame.
    whole = _frame(stat, _mp({"path": "/docs/hello.txt"}))
    add(
        "truncated-header",
        "truncated-header",
        "10 bytes of a header, then EOF.",
        whole[:10],
        "RemoteProtocolError",
        ErrorCode.PROTOCOL_ERROR,
        "frame",
        feed="eof",
    )
    add(
        "truncated-header-19",
        "truncated-header",
        "19 bytes of a header, then EOF.",
        whole[:19],
        "RemoteProtocolError",
        ErrorCode.PROTOCOL_ERROR,
        "frame",
        feed="eof",
    )
    add(
        "truncated-payload",
        "truncated-payload",
        "A whole header and part of its payload, then EOF.",
        whole[:-3],
        "RemoteProtocolError",
        ErrorCode.PROTOCOL_ERROR,
        "frame",
        feed="eof",
    )
    add(
        "truncated-data-payload",
        "truncated-payload",
        "A DATA header declaring 100 bytes, 1 byte of payload, then EOF.",
        _hdr(Command.DATA, 0, 100) + b"x",
        "RemoteProtocolError",
        ErrorCode.PROTOCOL_ERROR,
        "frame",
        feed="eof",
    )

    # Payload stage: the frame is well formed; its payload does not decode to the message.
    def bad(name: str, klass: str, description: str, command: Command, payload: bytes) -> None:
        flags = end
        session = 0 if command is Command.HELLO else 1
        if command is Command.WINDOW:
            flags = 0
        add(
            name,
            klass,
            description,
            _frame(command, payload, flags, session),
            "MalformedPayloadError",
            ErrorCode.MALFORMED_PAYLOAD,
            "payload",
        )

    def bad_reply(name: str, klass: str, description: str, command: Command, obj: Any) -> None:
        add(
            name,
            klass,
            description,
            _frame(command, _mp(obj), Flags.REPLY | Flags.END, 1),
            "MalformedPayloadError",
            ErrorCode.MALFORMED_PAYLOAD,
            "payload",
        )

    info = {"path": "/a", "kind": "file", "size": 1, "mtime_ns": 0, "version": 1}

    bad("not-a-map-array", "not-a-map", "STAT payload is an array.", stat, _mp(["/a"]))
    bad("not-a-map-str", "not-a-map", "STAT payload is a string.", stat, _mp("/a"))
    bad("not-a-map-nil", "not-a-map", "STAT payload is nil.", stat, _mp(None))
    bad(
        "not-a-map-int",
        "not-a-map",
        "NODE_STATUS payload is the integer 0.",
        Command.NODE_STATUS,
        _mp(0),
    )
    bad(
        "empty-payload",
        "not-a-map",
        "NODE_STATUS with a zero-length payload: a control payload is always one map, even "
        "when empty (0x80).",
        Command.NODE_STATUS,
        b"",
    )
    bad(
        "truncated-msgpack",
        "truncated-msgpack",
        "A map announcing two entries that holds one.",
        stat,
        b"\x82\xa4path\xa2/a",
    )
    bad(
        "truncated-msgpack-str",
        "truncated-msgpack",
        "A str announcing 10 bytes that holds 2.",
        stat,
        b"\x81\xa4path\xaa/a",
    )
    bad(
        "trailing-byte",
        "trailing-bytes",
        "A whole map followed by one byte.",
        stat,
        _mp({"path": "/a"}) + b"\x00",
    )
    bad(
        "trailing-map",
        "trailing-bytes",
        "Two maps in one payload.",
        stat,
        _mp({"path": "/a"}) + _mp({"path": "/b"}),
    )
    bad("missing-path", "missing-field", "STAT without path.", stat, _mp({}))
    bad(
        "missing-hello-max-payload",
        "missing-field",
        "HELLO without max_payload.",
        Command.HELLO,
        _mp({"versions": [1], "initial_window": DEFAULT_INITIAL_WINDOW}),
    )
    bad("missing-increment", "missing-field", "WINDOW without increment.", Command.WINDOW, _mp({}))
    bad_reply(
        "missing-nested",
        "missing-field",
        "STAT reply whose info lacks version.",
        stat,
        {"info": {k: v for k, v in info.items() if k != "version"}},
    )
    bad(
        "repeated-key",
        "repeated-key",
        "STAT whose map holds 'path' twice: receivers must not pick one.",
        stat,
        b"\x82\xa4path\xa2/a\xa4path\xa2/b",
    )
    bad(
        "repeated-key-same-value",
        "repeated-key",
        "A key repeated with the same value is malformed too.",
        stat,
        b"\x82\xa4path\xa2/a\xa4path\xa2/a",
    )
    entries = [("path", "/a"), ("kind", "file"), ("size", 1), ("mtime_ns", 0), ("version", 1)]
    entries.append(("size", 2))
    nested = b"\x81" + _mp("info") + bytes([0x80 | len(entries)])
    nested += b"".join(_mp(k) + _mp(v) for k, v in entries)
    add(
        "repeated-key-nested",
        "repeated-key",
        "STAT reply whose FileInfo holds 'size' twice.",
        _frame(stat, nested, Flags.REPLY | Flags.END, 1),
        "MalformedPayloadError",
        ErrorCode.MALFORMED_PAYLOAD,
        "payload",
    )
    bad(
        "unknown-field",
        "unknown-field",
        "STAT with an extra key 'follow'.",
        stat,
        _mp({"path": "/a", "follow": True}),
    )
    bad(
        "unknown-field-empty-message",
        "unknown-field",
        "NODE_STATUS with a key: it has no fields.",
        Command.NODE_STATUS,
        _mp({"verbose": True}),
    )
    bad_reply(
        "unknown-field-nested",
        "unknown-field",
        "NODE_STATUS reply whose store figures carry an unknown key.",
        Command.NODE_STATUS,
        {
            "version": "0.1.0",
            "node_id": "n",
            "uptime_ms": 1,
            "connections": {},
            "requests": 0,
            "bytes_in": 0,
            "bytes_out": 0,
            "store": {
                "files": 0,
                "directories": 0,
                "logical_bytes": 0,
                "stored_bytes": 0,
                "chunks": 0,
                "free_bytes": 0,
                "inodes": 0,
            },
        },
    )
    bad(
        "non-str-key-int",
        "non-str-key",
        "A map key that is an integer.",
        stat,
        _mp({1: "/a"}),
    )
    bad(
        "non-str-key-bin",
        "non-str-key",
        "A map key that is bin, even one holding the bytes of a field name.",
        stat,
        b"\x82\xc4\x01x\xa2/a\xa4path\xa2/a",
    )
    bad(
        "non-str-key-bin-field-name",
        "non-str-key",
        "The field name 'path' as a bin key.",
        stat,
        b"\x81\xc4\x04path\xa2/a",
    )
    bad(
        "wrong-type-bool-for-int",
        "wrong-type",
        "WINDOW increment true.",
        Command.WINDOW,
        _mp({"increment": True}),
    )
    bad(
        "wrong-type-int-for-bool",
        "wrong-type",
        "DELETE recursive 1.",
        Command.DELETE,
        _mp({"path": "/a", "recursive": 1}),
    )
    bad(
        "wrong-type-nil-for-bool",
        "wrong-type",
        "DELETE recursive nil: only optional fields accept nil.",
        Command.DELETE,
        _mp({"path": "/a", "recursive": None}),
    )
    bad(
        "wrong-type-str-for-bin",
        "wrong-type",
        "PING data as a str.",
        Command.PING,
        _mp({"data": "abc"}),
    )
    bad(
        "wrong-type-bin-for-str",
        "wrong-type",
        "STAT path as bin.",
        stat,
        _mp({"path": b"/a"}),
    )
    bad("wrong-type-int-for-str", "wrong-type", "STAT path 5.", stat, _mp({"path": 5}))
    bad(
        "wrong-type-float-for-int",
        "wrong-type",
        "READ offset 1.5 (float64).",
        Command.READ,
        _mp({"path": "/a", "offset": 1.5}),
    )
    bad(
        "wrong-type-float-integral",
        "wrong-type",
        "READ offset 1.0: a float is never an integer, even when integral.",
        Command.READ,
        _mp({"path": "/a", "offset": 1.0}),
    )
    bad(
        "wrong-type-map-for-array",
        "wrong-type",
        "HELLO versions as a map.",
        Command.HELLO,
        _mp({"versions": {"1": 1}, "max_payload": 65536, "initial_window": 0}),
    )
    bad(
        "wrong-type-ext",
        "wrong-type",
        "STAT path as a MessagePack timestamp (ext -1).",
        stat,
        b"\x81\xa4path\xd6\xff\x00\x00\x00\x01",
    )
    bad_reply(
        "wrong-type-map-for-array-reply",
        "wrong-type",
        "LIST reply entries as a map.",
        Command.LIST,
        {"entries": {}},
    )
    bad_reply(
        "wrong-type-str-for-record",
        "wrong-type",
        "STAT reply whose info is a str instead of a FileInfo map.",
        stat,
        {"info": "/docs/hello.txt"},
    )
    bad_reply(
        "wrong-type-array-for-record",
        "wrong-type",
        "NODE_STATUS reply whose store is an array.",
        Command.NODE_STATUS,
        {
            "version": "0.1.0",
            "node_id": "n",
            "uptime_ms": 1,
            "connections": {},
            "requests": 0,
            "bytes_in": 0,
            "bytes_out": 0,
            "store": [0, 0, 0, 0, 0, 0],
        },
    )
    bad(
        "invalid-utf8-value",
        "invalid-utf8",
        "STAT path holding the bytes ff fe.",
        stat,
        b"\x81\xa4path\xa2\xff\xfe",
    )
    bad(
        "invalid-utf8-key",
        "invalid-utf8",
        "A key holding the byte ff.",
        stat,
        b"\x82\xa4path\xa2/a\xa1\xff\xc0",
    )
    bad(
        "invalid-utf8-overlong",
        "invalid-utf8",
        "STAT path with an overlong encoding of '/' (c0 af).",
        stat,
        b"\x81\xa4path\xa2\xc0\xaf",
    )
    bad(
        "out-of-range-negative-u64",
        "out-of-range",
        "WRITE size -1.",
        Command.WRITE,
        _mp({"path": "/a", "size": -1}),
    )
    bad(
        "out-of-range-u32",
        "out-of-range",
        "HELLO max_payload 2^32.",
        Command.HELLO,
        _mp({"versions": [1], "max_payload": 2**32, "initial_window": 0}),
    )
    bad_reply(
        "out-of-range-i64",
        "out-of-range",
        "STAT reply mtime_ns 2^63 (a uint64 outside the signed 64-bit range).",
        stat,
        {"info": {**info, "mtime_ns": 2**63}},
    )
    bad(
        "out-of-range-window-0",
        "out-of-range",
        "WINDOW increment 0.",
        Command.WINDOW,
        _mp({"increment": 0}),
    )
    bad(
        "out-of-range-window-big",
        "out-of-range",
        "WINDOW increment 64 MiB + 1.",
        Command.WINDOW,
        _mp({"increment": MAX_WINDOW + 1}),
    )
    bad(
        "out-of-range-cancel-0",
        "out-of-range",
        "CANCEL target 0.",
        Command.CANCEL,
        _mp({"target": 0}),
    )
    bad(
        "out-of-range-list-limit-0",
        "out-of-range",
        "LIST limit 0.",
        Command.LIST,
        _mp({"path": "/", "limit": 0}),
    )
    bad(
        "out-of-range-list-limit-1001",
        "out-of-range",
        "LIST limit 1001.",
        Command.LIST,
        _mp({"path": "/", "limit": 1001}),
    )
    bad(
        "out-of-range-ping-257",
        "out-of-range",
        "PING data of 257 bytes.",
        Command.PING,
        _mp({"data": b"\x00" * 257}),
    )
    bad(
        "out-of-range-versions-empty",
        "out-of-range",
        "HELLO versions empty.",
        Command.HELLO,
        _mp({"versions": [], "max_payload": 65536, "initial_window": 0}),
    )
    bad(
        "out-of-range-version-0",
        "out-of-range",
        "HELLO versions [0].",
        Command.HELLO,
        _mp({"versions": [0], "max_payload": 65536, "initial_window": 0}),
    )
    bad(
        "out-of-range-version-256",
        "out-of-range",
        "HELLO versions [256].",
        Command.HELLO,
        _mp({"versions": [256], "max_payload": 65536, "initial_window": 0}),
    )
    bad(
        "out-of-range-versions-17",
        "out-of-range",
        "HELLO listing 17 versions.",
        Command.HELLO,
        _mp({"versions": list(range(1, 18)), "max_payload": 65536, "initial_window": 0}),
    )
    add(
        "out-of-range-error-code",
        "out-of-range",
        "ERROR code 0x10000.",
        _frame(Command.ERROR, _mp({"code": 0x10000}), Flags.REPLY | Flags.END, 1),
        "MalformedPayloadError",
        ErrorCode.MALFORMED_PAYLOAD,
        "payload",
    )
    bad(
        "invalid-enum-mode",
        "invalid-enum",
        "WRITE mode 'append'.",
        Command.WRITE,
        _mp({"path": "/a", "mode": "append"}),
    )
    bad(
        "invalid-enum-mode-case",
        "invalid-enum",
        "WRITE mode 'CREATE': enum values are case-sensitive.",
        Command.WRITE,
        _mp({"path": "/a", "mode": "CREATE"}),
    )
    bad(
        "invalid-enum-int",
        "invalid-enum",
        "WRITE mode 1: enums travel as their string value.",
        Command.WRITE,
        _mp({"path": "/a", "mode": 1}),
    )
    bad_reply(
        "invalid-enum-outcome",
        "invalid-enum",
        "CANCEL reply outcome 'maybe'.",
        Command.CANCEL,
        {"outcome": "maybe"},
    )
    bad_reply(
        "invalid-enum-kind",
        "invalid-enum",
        "STAT reply kind 'symlink'.",
        stat,
        {"info": {**info, "kind": "symlink"}},
    )
    return out


# --- Lenient inputs: valid, not canonical ----------------------------------------------------


def _lenient() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(
        name: str, description: str, command: Command, payload: bytes, message: Message
    ) -> None:
        flags = int(Flags.END)
        raw = _frame(command, payload, flags, 1)
        canonical = encode_frame(command, encode_message(message), session_id=1, flags=flags)
        assert raw != canonical, name
        out.append(
            {
                "name": name,
                "description": description,
                "hex": raw.hex(),
                "message": {"type": type(message).__name__, "fields": to_json(message)},
                "canonical_hex": canonical.hex(),
            }
        )

    add(
        "keys-out-of-order",
        "Keys in another order than the field order.",
        Command.READ,
        b"\x82\xa6offset\x05\xa4path\xa2/a",
        FileRead(path="/a", offset=5),
    )
    add(
        "explicit-default",
        "A field present with its default value (mode 'create').",
        Command.WRITE,
        _mp({"path": "/a", "mode": "create"}),
        FileWrite(path="/a"),
    )
    add(
        "explicit-nil",
        "An optional field present as nil.",
        Command.LIST,
        _mp({"path": "/a", "cursor": None}),
        FileList(path="/a"),
    )
    add(
        "wide-int",
        "An integer in a wider encoding than needed (uint64 for 5).",
        Command.READ,
        b"\x82\xa4path\xa2/a\xa6offset\xcf" + (5).to_bytes(8, "big"),
        FileRead(path="/a", offset=5),
    )
    add(
        "wide-str",
        "A str in str8 form although fixstr would do.",
        Command.STAT,
        b"\x81\xa4path\xd9\x02/a",
        FileStat(path="/a"),
    )
    add(
        "wide-map",
        "A map in map16 form although fixmap would do.",
        Command.STAT,
        b"\xde\x00\x01\xa4path\xa2/a",
        FileStat(path="/a"),
    )
    add(
        "wide-bin",
        "A bin in bin16 form although bin8 would do.",
        Command.PING,
        b"\x81\xa4data\xc5\x00\x02\x01\x02",
        Ping(data=b"\x01\x02"),
    )
    add(
        "signed-int-for-unsigned",
        "A non-negative value in a signed encoding (int8 7).",
        Command.READ,
        b"\x82\xa4path\xa2/a\xa6offset\xd0\x07",
        FileRead(path="/a", offset=7),
    )
    return out


def build() -> dict[str, list[dict[str, Any]]]:
    """The three vector files, as JSON-ready lists, keyed by file name."""
    return {
        "frames.json": _valid(),
        "malformed.json": _malformed(),
        "lenient.json": _lenient(),
    }


def render(vectors: list[dict[str, Any]]) -> str:
    return json.dumps(vectors, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for name, vectors in build().items():
        path = HERE / name
        text = render(vectors)
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"{name}: {len(vectors)} vectors")
    if stale:
        print(f"stale: {', '.join(stale)}; rerun generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
