"""A small in-memory LBRU server for the client tests, built on the real sans-I/O
:class:`~librorum.protocol.session.ServerSession` (not a mock), over a real Unix socket or a
real trio-websocket server on loopback.

It keeps files in a dict and answers every request the clients make. Knobs
(:class:`Behaviour`) make it misbehave on purpose: answer unary requests in reverse order,
hold requests unanswered, drop the connection at a chosen point, fail the connection with a
connection-level ERROR, send GOAWAY. It records what it received so tests can wait for a
request to arrive (no sleeps).
"""

from __future__ import annotations

import socket as stdlib_socket
from collections import Counter
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import attrs
import trio
import trio_websocket

from librorum.errors import (
    AlreadyExistsError,
    BadRequestError,
    CancelledError,
    ConflictError,
    CorruptDataError,
    ErrorCode,
    IsADirectoryError_,
    LibrorumError,
    NotADirectoryError_,
    NotEmptyError,
    NotFoundError,
    UnavailableError,
)
from librorum.protocol.constants import (
    DEFAULT_MAX_PAYLOAD,
    HEADER_SIZE,
    CancelOutcome,
    Command,
    EntryKind,
    WriteMode,
)
from librorum.protocol.messages import (
    Cancel,
    CancelReply,
    Delete,
    DeleteReply,
    DirEntry,
    FileInfo,
    FileList,
    FileListReply,
    FileRead,
    FileReadReply,
    FileStat,
    FileStatReply,
    FileWrite,
    FileWriteReply,
    MakeDirectory,
    MakeDirectoryReply,
    Message,
    NodeStatusReply,
    Ping,
    PingReply,
    Rename,
    RenameReply,
    StoreFigures,
    UploadStatus,
    UploadStatusReply,
)
from librorum.protocol.session import (
    ConnectionEnded,
    DataReceived,
    FrameParts,
    HelloReceived,
    RequestReceived,
    ServerLimits,
    ServerSession,
    WindowGranted,
)
from librorum.transport import refusal_frame

#: Largest DATA frame the fake sends on a READ (smaller than max_payload on purpose, so that
#: the client sees several frames per window).
READ_CHUNK = 256 << 10


@attrs.define
class Behaviour:
    """Ways to misbehave. Each ``*_once`` knob fires on the first match only."""

    #: Hold unary replies until this many are pending, then send them newest first.
    reverse_after: int = 0
    #: Never answer these commands (a CANCEL still ends them).
    hold: frozenset[Command] = frozenset()
    #: Close the connection as soon as a request of this command arrives.
    drop_on_once: Command | None = None
    #: Close the connection once a WRITE has received this many bytes in total.
    drop_after_write_bytes_once: int | None = None
    #: Fail the connection with this connection-level error when a request arrives.
    fail_connection_once: LibrorumError | None = None
    #: Send GOAWAY after answering this many requests on a connection.
    goaway_after: int | None = None
    #: Answer this command with GOAWAY then ERROR UNAVAILABLE, as a server does for a request
    #: that crossed its GOAWAY (spec 5.15).
    goaway_refuse_once: Command | None = None
    #: End a READ with ERROR CORRUPT once this many bytes of it were sent.
    corrupt_read_after: int | None = None
    #: Close this many new Unix connections at once, before HELLO (a daemon restarting).
    close_first_connections: int = 0
    #: Refuse every Unix connection with ERROR UNAUTHORIZED on session 0 (spec 2.4).
    unauthorized: bool = False
    #: Expected bearer token on the WebSocket (None: no check).
    token: str | None = None
    #: Answer the n-th request of a command (counted from 1 over all connections) with this
    #: error instead of serving it.
    fail_nth: dict[tuple[Command, int], LibrorumError] = attrs.field(factory=dict)
    #: Answer PING with other data than it carried.
    wrong_ping_data: bool = False
    #: Every LIST page says more follows, at the same cursor.
    stuck_list_cursor: bool = False
    #: READ replies announce more bytes than follow.
    short_reads: bool = False


@attrs.define
class _Upload:
    path: str
    mode: WriteMode
    size: int | None
    data: bytearray = attrs.field(factory=bytearray)


@attrs.define
class _Write:
    message: FileWrite
    upload: _Upload


@attrs.define
class _Read:
    view: memoryview
    position: int = 0


class _Drop(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Close the connection now, without a word."""


class FakeServer:
    def __init__(
        self, limits: ServerLimits | None = None, behaviour: Behaviour | None = None
    ) -> None:
        self.limits = limits or ServerLimits()
        self.behaviour = behaviour or Behaviour()
        self.files: dict[str, bytes] = {}
        self.versions: Counter[str] = Counter()
        self.dirs: set[str] = {"/"}
        self.uploads: dict[str, _Upload] = {}
        #: Every request received, in order, per connection number.
        self.received: list[tuple[int, int, Message]] = []
        self.counts: Counter[Command] = Counter()
        self.connections = 0
        #: Connections closed or refused before HELLO.
        self.refused = 0
        #: Highest number of requests in flight at once on one connection.
        self.max_in_flight = 0
        #: WINDOW frames received (credit the client granted on READs) and sent.
        self.windows_received = 0
        self.windows_sent = 0
        #: Outcome of each CANCEL answered.
        self.cancel_outcomes: list[CancelOutcome] = []
        #: Order in which unary replies went out (session ids).
        self.reply_order: list[int] = []
        self._lot = trio.lowlevel.ParkingLot()
        self.port = 0

    # Waiting -----------------------------------------------------------------------------------

    async def wait_for(self, command: Command, count: int = 1) -> None:
        """Return once ``count`` requests of ``command`` have arrived."""
        while self.counts[command] < count:
            await self._lot.park()

    def requests_of(self, cls: type[Message]) -> list[Message]:
        return [m for _, _, m in self.received if isinstance(m, cls)]

    # Serving -----------------------------------------------------------------------------------

    async def serve_uds(
        self, path: Path, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        sock = trio.socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
        await sock.bind(str(path))
        sock.listen(64)
        listener = trio.SocketListener(sock)
        async with listener, trio.open_nursery() as nursery:
            task_status.started()
            while True:
                stream = await listener.accept()
                nursery.start_soon(self._serve_stream, stream)

    async def serve_websocket(
        self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                partial(
                    trio_websocket.serve_websocket,
                    self._serve_ws_request,
                    "127.0.0.1",
                    0,
                    None,
                    # One maximal frame per message (spec 2.2); the default is 1 MiB.
                    max_message_size=HEADER_SIZE + DEFAULT_MAX_PAYLOAD,
                )
            )
            self.port = server.port
            task_status.started(server.port)

    async def _serve_stream(self, stream: trio.SocketStream) -> None:
        behaviour = self.behaviour
        if behaviour.close_first_connections:
            behaviour.close_first_connections -= 1
            self.refused += 1
            await stream.aclose()
            return
        if behaviour.unauthorized:
            self.refused += 1
            async with stream:
                await stream.send_all(refusal_frame(ErrorCode.UNAUTHORIZED, "uid not allowed"))
            return

        async def receive() -> bytes:
            return bytes(await stream.receive_some(1 << 20))

        async def send(frames: list[FrameParts]) -> None:
            await stream.send_all(b"".join(part for frame in frames for part in frame))

        async with stream:
            await self._serve(receive, send)

    async def _serve_ws_request(self, request: trio_websocket.WebSocketRequest) -> None:
        token = self.behaviour.token
        if token is not None:
            headers = dict(request.headers)
            if headers.get(b"authorization") != b"Bearer " + token.encode():
                await request.reject(401, body=b"bad token")
                return
        ws = await request.accept()

        async def receive() -> bytes:
            try:
                message = await ws.get_message()
            except trio_websocket.ConnectionClosed:
                return b""
            assert isinstance(message, bytes)
            return message

        async def send(frames: list[FrameParts]) -> None:
            for header, payload in frames:
                await ws.send_message(header + bytes(payload))

        try:
            await self._serve(receive, send)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await ws.aclose()

    # One connection ----------------------------------------------------------------------------

    async def _serve(
        self,
        receive: Callable[[], Awaitable[bytes]],
        send: Callable[[list[FrameParts]], Awaitable[None]],
    ) -> None:
        self.connections += 1
        conn = _ConnectionState(self, self.connections)
        try:
            while not conn.session.closed:
                data = await receive()
                conn.session.receive_data(data)
                try:
                    for event in conn.session.events():
                        conn.handle(event)
                    conn.pump_reads()
                finally:
                    frames = conn.session.frames_to_send()
                    if frames:
                        await send(frames)
                if not data:
                    return
        except _Drop:
            return
        except (
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            trio_websocket.ConnectionClosed,
        ):
            return


class _ConnectionState:
    def __init__(self, server: FakeServer, number: int) -> None:
        self.server = server
        self.number = number
        self.session = ServerSession(server.limits)
        self.reads: dict[int, _Read] = {}
        self.writes: dict[int, _Write] = {}
        self.held: set[int] = set()
        self.pending: list[tuple[int, Message | LibrorumError]] = []
        self.answered = 0

    # Events ------------------------------------------------------------------------------------

    def handle(self, event: object) -> None:
        server = self.server
        behaviour = server.behaviour
        if isinstance(event, HelloReceived):
            self.session.accept_hello(event.hello)
        elif isinstance(event, RequestReceived):
            server.received.append((self.number, event.session_id, event.message))
            server.counts[event.command] += 1
            server.max_in_flight = max(server.max_in_flight, self.session.in_flight())
            server._lot.unpark_all()
            if behaviour.drop_on_once is event.command:
                behaviour.drop_on_once = None
                raise _Drop
            if behaviour.fail_connection_once is not None:
                error, behaviour.fail_connection_once = behaviour.fail_connection_once, None
                self.session.fail(error)
                return
            self.request(event)
        elif isinstance(event, DataReceived):
            self.data(event)
        elif isinstance(event, WindowGranted):
            server.windows_received += 1
        elif isinstance(event, ConnectionEnded):
            pass

    def request(self, event: RequestReceived) -> None:
        sid, message = event.session_id, event.message
        behaviour = self.server.behaviour
        if behaviour.goaway_refuse_once is event.command:
            behaviour.goaway_refuse_once = None
            self.session.goaway("restarting", 1000)
            self.session.send_error(sid, UnavailableError("the server is shutting down"))
            return
        failure = behaviour.fail_nth.get((event.command, self.server.counts[event.command]))
        if failure is not None:
            self.session.send_error(sid, failure)
            return
        if event.command in self.server.behaviour.hold:
            self.held.add(sid)
            return
        if isinstance(message, Cancel):
            self.cancel(sid, message.target)
            return
        if isinstance(message, FileWrite):
            self.start_write(sid, message, event.end)
            return
        if isinstance(message, FileRead):
            self.start_read(sid, message)
            return
        try:
            reply = self.unary(message)
        except LibrorumError as exc:
            self.answer(sid, exc)
        else:
            self.answer(sid, reply)

    def answer(self, sid: int, reply: Message | LibrorumError) -> None:
        self.pending.append((sid, reply))
        if len(self.pending) < self.server.behaviour.reverse_after:
            return
        for pending_sid, pending_reply in reversed(self.pending):
            self.server.reply_order.append(pending_sid)
            if isinstance(pending_reply, LibrorumError):
                self.session.send_error(pending_sid, pending_reply)
            else:
                self.session.reply(pending_sid, pending_reply)
            self.answered += 1
        self.pending.clear()
        goaway_after = self.server.behaviour.goaway_after
        if goaway_after is not None and self.answered >= goaway_after:
            self.session.goaway("restarting", 1000)

    def cancel(self, sid: int, target: int) -> None:
        outcome = CancelOutcome.UNKNOWN
        if self.reads.pop(target, None) is not None or self.writes.pop(target, None) is not None:
            outcome = CancelOutcome.ABORTED
        elif target in self.held:
            self.held.discard(target)
            outcome = CancelOutcome.NOT_STARTED
        if outcome is not CancelOutcome.UNKNOWN:
            self.session.send_error(target, CancelledError("cancelled by the client"))
        self.server.cancel_outcomes.append(outcome)
        self.session.reply(sid, CancelReply(outcome))

    # Unary requests ----------------------------------------------------------------------------

    def unary(self, message: Message) -> Message:
        server = self.server
        if isinstance(message, Ping):
            return PingReply(b"other" if server.behaviour.wrong_ping_data else message.data)
        if isinstance(message, FileStat):
            return FileStatReply(self.info(message.path))
        if isinstance(message, FileList):
            return self.list(message)
        if isinstance(message, MakeDirectory):
            return MakeDirectoryReply(self.mkdir(message.path, message.parents))
        if isinstance(message, Delete):
            return DeleteReply(self.delete(message.path, message.recursive))
        if isinstance(message, Rename):
            return RenameReply(self.rename(message))
        if isinstance(message, UploadStatus):
            upload = server.uploads.get(message.upload_id)
            if upload is None:
                msg = f"no upload {message.upload_id}"
                raise NotFoundError(msg)
            return UploadStatusReply(message.upload_id, upload.path, len(upload.data), upload.size)
        return NodeStatusReply(
            version="fake",
            node_id="fake-node",
            uptime_ms=1,
            connections={"uds": 1},
            requests=len(server.received),
            bytes_in=0,
            bytes_out=0,
            store=StoreFigures(
                files=len(server.files),
                directories=len(server.dirs),
                logical_bytes=sum(map(len, server.files.values())),
                stored_bytes=0,
                chunks=0,
                free_bytes=1 << 40,
            ),
        )

    def info(self, path: str) -> FileInfo:
        server = self.server
        if path in server.files:
            return FileInfo(path, EntryKind.FILE, len(server.files[path]), 0, server.versions[path])
        if path in server.dirs:
            return FileInfo(path, EntryKind.DIRECTORY, 0, 0, 1)
        msg = f"{path} does not exist"
        raise NotFoundError(msg)

    def children(self, path: str) -> list[str]:
        prefix = path.rstrip("/") + "/"
        names = {
            p[len(prefix) :].split("/")[0]
            for p in (*self.server.files, *self.server.dirs)
            if p.startswith(prefix) and p != prefix
        }
        return sorted(names)

    def list(self, message: FileList) -> FileListReply:
        if message.path in self.server.files:
            raise NotADirectoryError_(message.path)
        self.info(message.path)
        names = [
            n for n in self.children(message.path) if message.cursor is None or n > message.cursor
        ]
        page = names[: message.limit]
        prefix = message.path.rstrip("/") + "/"
        entries = []
        for name in page:
            info = self.info(prefix + name)
            entries.append(DirEntry(name, info.kind, info.size, info.mtime_ns, info.version))
        more = len(names) > len(page)
        if self.server.behaviour.stuck_list_cursor:
            return FileListReply(tuple(entries), "stuck")
        return FileListReply(tuple(entries), page[-1] if more else None)

    def parent_dir(self, path: str) -> str:
        parent = path.rsplit("/", 1)[0] or "/"
        if parent in self.server.files:
            raise NotADirectoryError_(parent)
        if parent not in self.server.dirs:
            msg = f"{parent} does not exist"
            raise NotFoundError(msg)
        return parent

    def mkdir(self, path: str, parents: bool) -> FileInfo:
        server = self.server
        if path in server.files or (path in server.dirs and not parents):
            raise AlreadyExistsError(path)
        if parents:
            parts = path.strip("/").split("/")
            for i in range(1, len(parts) + 1):
                server.dirs.add("/" + "/".join(parts[:i]))
        else:
            self.parent_dir(path)
            server.dirs.add(path)
        return self.info(path)

    def delete(self, path: str, recursive: bool) -> int:
        server = self.server
        if path in server.files:
            del server.files[path]
            return 1
        if path not in server.dirs:
            raise NotFoundError(path)
        prefix = path.rstrip("/") + "/"
        inner = [p for p in (*server.files, *server.dirs) if p.startswith(prefix)]
        if inner and not recursive:
            raise NotEmptyError(path)
        for p in inner:
            server.files.pop(p, None)
            server.dirs.discard(p)
        server.dirs.discard(path)
        return len(inner) + 1

    def rename(self, message: Rename) -> FileInfo:
        server = self.server
        src, dst = message.src, message.dst
        self.info(src)
        self.parent_dir(dst)
        if dst in server.dirs or (dst in server.files and not message.overwrite):
            raise AlreadyExistsError(dst)
        if src in server.files:
            server.files[dst] = server.files.pop(src)
            server.versions[dst] += 1
        else:
            prefix = src.rstrip("/") + "/"
            for p in [p for p in server.files if p.startswith(prefix)]:
                server.files[dst + p[len(src) :]] = server.files.pop(p)
            for p in [p for p in server.dirs if p == src or p.startswith(prefix)]:
                server.dirs.discard(p)
                server.dirs.add(dst + p[len(src) :])
        return self.info(dst)

    # Writes ------------------------------------------------------------------------------------

    def start_write(self, sid: int, message: FileWrite, end: bool) -> None:
        server = self.server
        try:
            self.parent_dir(message.path)
            if message.path in server.dirs:
                raise IsADirectoryError_(message.path)
            exists = message.path in server.files
            if message.mode is WriteMode.EXCLUSIVE and exists and not message.offset:
                raise AlreadyExistsError(message.path)
            if message.mode is WriteMode.OVERWRITE and not exists:
                raise NotFoundError(message.path)
            upload = None
            if message.upload_id is not None:
                upload = server.uploads.get(message.upload_id)
            if message.offset:
                if upload is None or len(upload.data) != message.offset:
                    msg = f"cannot resume {message.upload_id} at {message.offset}"
                    raise ConflictError(msg)
            elif upload is None or message.upload_id is None:
                upload = _Upload(message.path, message.mode, message.size)
                if message.upload_id is not None:
                    server.uploads[message.upload_id] = upload
            else:
                upload.data.clear()
        except LibrorumError as exc:
            self.session.send_error(sid, exc)
            return
        assert upload is not None
        self.writes[sid] = _Write(message, upload)
        if end:
            self.finish_write(sid)

    def data(self, event: DataReceived) -> None:
        write = self.writes.get(event.session_id)
        if write is None:
            return  # a cancelled upload: its DATA is discarded
        write.upload.data += event.data
        limit = self.server.behaviour.drop_after_write_bytes_once
        if limit is not None and len(write.upload.data) >= limit:
            self.server.behaviour.drop_after_write_bytes_once = None
            raise _Drop
        if event.end:
            self.finish_write(event.session_id)
        else:
            # Credit back at once: with a small window every window's worth is a round trip.
            self.session.grant(event.session_id, len(event.data))
            self.server.windows_sent += 1

    def finish_write(self, sid: int) -> None:
        server = self.server
        write = self.writes.pop(sid)
        upload = write.upload
        if upload.size is not None and len(upload.data) != upload.size:
            msg = f"expected {upload.size} bytes, got {len(upload.data)}"
            self.session.send_error(sid, BadRequestError(msg))
            return
        server.files[upload.path] = bytes(upload.data)
        server.versions[upload.path] += 1
        if write.message.upload_id is not None:
            server.uploads.pop(write.message.upload_id, None)
        self.answered += 1
        self.session.reply(sid, FileWriteReply(self.info(upload.path)))

    # Reads -------------------------------------------------------------------------------------

    def start_read(self, sid: int, message: FileRead) -> None:
        try:
            info = self.info(message.path)
            if info.kind is EntryKind.DIRECTORY:
                raise IsADirectoryError_(message.path)
        except LibrorumError as exc:
            self.session.send_error(sid, exc)
            return
        content = self.server.files[message.path]
        start = min(message.offset, len(content))
        stop = len(content) if message.length is None else min(len(content), start + message.length)
        length = stop - start
        announced = length + 10 if self.server.behaviour.short_reads else length
        self.session.reply(sid, FileReadReply(info, start, announced), end=length == 0)
        if length:
            self.reads[sid] = _Read(memoryview(content)[start:stop])

    def pump_reads(self) -> None:
        session = self.session
        corrupt_after = self.server.behaviour.corrupt_read_after
        for sid, read in list(self.reads.items()):
            while True:
                if corrupt_after is not None and read.position >= corrupt_after:
                    session.send_error(sid, CorruptDataError("chunk failed verification"))
                    del self.reads[sid]
                    break
                left = len(read.view) - read.position
                window = session.send_window(sid)
                n = min(left, window, session.max_payload, READ_CHUNK)
                if n == 0:
                    break
                chunk = read.view[read.position : read.position + n]
                read.position += n
                end = read.position == len(read.view)
                session.send_data(sid, chunk, end=end)
                if end:
                    del self.reads[sid]
                    break
