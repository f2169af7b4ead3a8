"""The LBRU command table: each request command, its handler, and how the connection runs it.

LBRU is a front door of the service core: a handler turns a request message into one call of
:class:`~librorum.service.Service` and its result into the reply message, and nothing else
(the rules and limits of an operation are the service's; credit, deadlines and writing are
the connection's, see ``connection.py``). A row says, besides the handler:

- whether the connection's reader answers the request itself, with no task (``inline``): only
  for what the service answers without a checkpoint, where a task would add nothing but
  scheduler passes (STAT, PING, UPLOAD_STATUS, a small LIST page, a CANCEL whose target is not
  running); a request served inline has finished before the next frame is read;
- what cancelling it does (:class:`Cancellation`, spec 5.14).

A new command is one message class (``protocol/messages.py``), one service method, one row in
:data:`ROWS` and its handler here.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, Generic, TypeVar

import attrs

from librorum.errors import BadRequestError
from librorum.protocol.constants import MAX_CONTROL_PAYLOAD, CancelOutcome, Feature
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
    Fsck,
    LogGet,
    LogStats,
    LogStream,
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
)
from librorum.server import fsck
from librorum.server.logcommands import log_get, log_stats, log_stream
from librorum.server.requests import Driver, RequestState
from librorum.server.streams import receive_content, send_content
from librorum.service import INLINE_LIST_LIMIT, DescriptorKind, FileInfo as StoredInfo

M = TypeVar("M")

#: Budget for the entries of one LIST reply: the control-frame limit less room for the map
#: header and the cursor (spec 5.4: a page is at most one control frame).
_LIST_BUDGET: Final = MAX_CONTROL_PAYLOAD - 6 * 1024
#: Bytes an entry costs beyond its name, at most: keys, kind, and four 9-byte integers.
_ENTRY_OVERHEAD: Final = 96


class Cancellation(enum.Enum):
    """What a CANCEL of a running request of a command does, and answers (spec 5.14)."""

    #: It only reads: cancelled at any point, it has no effect (ABORTED).
    ABORTS = "aborts"
    #: A mutation the service completes once begun (it is shielded): the CANCEL waits for it
    #: and answers COMMITTED (ABORTED if it failed).
    COMPLETES = "completes"
    #: A stream: aborted with no effect up to its commit, which completes (COMMITTED); the
    #: handler marks when it has begun (NOT_STARTED before).
    STREAM = "stream"
    #: Nothing to undo (CANCEL itself): a CANCEL of it answers NOT_STARTED.
    NOTHING = "nothing"


@attrs.frozen
class Unary(Generic[M]):
    """A request answered with one reply (or ERROR).

    Attributes:
        message: The request's message class.
        handler: Calls the service and returns the reply.
        cancellation: ABORTS, COMPLETES or NOTHING.
        inline: True, or a test of the request, when the reader answers it itself; only for
            handlers that complete without a checkpoint.
    """

    message: type[M]
    handler: Callable[[Driver, M], Awaitable[Message]]
    cancellation: Cancellation = Cancellation.ABORTS
    inline: bool | Callable[[Driver, M], bool] = False
    receives_data: bool = attrs.field(default=False, init=False)

    async def run(self, driver: Driver, state: RequestState, message: M) -> Message | None:
        """Run the request in its task."""
        # Everything but CANCEL reaches the service at once.
        state.started = self.cancellation is not Cancellation.NOTHING
        return await self.handler(driver, message)


@attrs.frozen
class Streamed(Generic[M]):
    """A request whose content streams: DATA out under the client's credit (READ), or in
    under the server's (WRITE, ``receives_data``). Always in a task of its own; cancellation
    is :attr:`Cancellation.STREAM`.

    Attributes:
        message: The request's message class.
        handler: Calls the service, streams through the :class:`Driver`, and returns the
            final reply (``None`` when the stream's last DATA frame ended the request).
        receives_data: The client sends DATA after the request (unless it carries END).
    """

    message: type[M]
    handler: Callable[[Driver, RequestState, M], Awaitable[Message | None]]
    receives_data: bool = False
    cancellation: Cancellation = attrs.field(default=Cancellation.STREAM, init=False)
    inline: bool = attrs.field(default=False, init=False)

    async def run(self, driver: Driver, state: RequestState, message: M) -> Message | None:
        """Run the request in its task."""
        return await self.handler(driver, state, message)


Row = Unary[Any] | Streamed[Any]


def wire_info(info: StoredInfo) -> FileInfo:
    """The reply record for a store record."""
    return FileInfo(info.path, info.kind, info.size, info.mtime_ns, info.version, info.content_hash)


# --- Handlers ------------------------------------------------------------------------------------


async def stat(driver: Driver, message: FileStat) -> FileStatReply:
    return FileStatReply(wire_info(await driver.service.stat(message.path)))


async def list_page(driver: Driver, message: FileList) -> FileListReply:
    page = await driver.service.list(message.path, cursor=message.cursor, limit=message.limit)
    entries: list[DirEntry] = []
    budget = _LIST_BUDGET
    for info in page.entries:
        name = info.name
        cost = len(name.encode()) + _ENTRY_OVERHEAD
        if cost > budget:
            # The page would not fit one control frame: end it here, continue after it.
            return FileListReply(tuple(entries), entries[-1].name if entries else None)
        budget -= cost
        entries.append(DirEntry(name, info.kind, info.size, info.mtime_ns, info.version))
    return FileListReply(tuple(entries), page.next_cursor)


def _small_page(driver: Driver, message: FileList) -> bool:
    return message.limit <= INLINE_LIST_LIMIT


async def ping(driver: Driver, message: Ping) -> PingReply:
    return PingReply(message.data)


async def node_status(driver: Driver, message: NodeStatus) -> NodeStatusReply:
    report = await driver.service.node_status()
    figures = report.store
    return NodeStatusReply(
        version=report.version,
        node_id=report.node_id,
        uptime_ms=report.uptime_ms,
        connections=report.connections,
        requests=report.requests,
        bytes_in=report.bytes_in,
        bytes_out=report.bytes_out,
        store=StoreFigures(
            files=figures.files,
            directories=figures.directories,
            logical_bytes=figures.logical_bytes,
            stored_bytes=figures.stored_bytes,
            chunks=figures.chunks,
            free_bytes=figures.free_bytes,
            quarantined=figures.quarantined,
            read_only=figures.read_only,
        ),
        inflight_bytes=report.inflight_bytes,
        inflight_peak_bytes=report.inflight_peak_bytes,
        read_only_reason=report.read_only_reason,
        read_only_since_ms=(
            None if report.read_only_since is None else int(report.read_only_since * 1000)
        ),
        degraded=report.degraded,
        client_errors=report.client_errors,
        server_errors=report.server_errors,
        python_version=report.python_version,
        sqlite_version=report.sqlite_version,
        **fsck.status_fields(report.checks),
    )


async def upload_status(driver: Driver, message: UploadStatus) -> UploadStatusReply:
    status = await driver.service.upload_status(message.upload_id)
    return UploadStatusReply(message.upload_id, status.path, status.offset, status.size)


async def mkdir(driver: Driver, message: MakeDirectory) -> MakeDirectoryReply:
    return MakeDirectoryReply(
        wire_info(await driver.service.mkdir(message.path, parents=message.parents))
    )


async def delete(driver: Driver, message: Delete) -> DeleteReply:
    return DeleteReply(await driver.service.delete(message.path, recursive=message.recursive))


async def rename(driver: Driver, message: Rename) -> RenameReply:
    info = await driver.service.rename(message.src, message.dst, overwrite=message.overwrite)
    return RenameReply(wire_info(info))


async def cancel(driver: Driver, message: Cancel) -> CancelReply:
    """CANCEL (spec 5.14): cancel the target's task, wait for its end, and say what became
    of it. Its final frame is queued by then, so the CANCEL reply goes out after it."""
    target = driver.requests.get(message.target)
    if target is None:
        # Nothing to wait for: the target finished (its final frame is already queued,
        # before this reply) or never existed.
        return CancelReply(CancelOutcome.UNKNOWN)
    target.cancel_scope.cancel()
    await target.done.wait()
    if target.reply is not None:
        return CancelReply(CancelOutcome.COMMITTED)
    return CancelReply(CancelOutcome.ABORTED if target.started else CancelOutcome.NOT_STARTED)


def _target_idle(driver: Driver, message: Cancel) -> bool:
    return message.target not in driver.requests


async def read(driver: Driver, state: RequestState, message: FileRead) -> None:
    """READ (spec 5.11): the first reply says what follows; the DATA frames end the request."""
    async with driver.service.open_read(
        message.path, offset=message.offset, length=message.length
    ) as reader:
        state.started = True
        reply = FileReadReply(wire_info(reader.info), message.offset, reader.length)
        await send_content(driver, state, reply, reader)


async def write(driver: Driver, state: RequestState, message: FileWrite) -> FileWriteReply:
    """WRITE (spec 5.9, 5.10): the content in DATA frames, or as a descriptor (spec 8).

    Cancellation: before the commit, the upload is aborted (a resumable one keeps its
    recorded prefix); the commit completes once it starts.
    """
    service = driver.service
    if state.fd is not None:
        return await _ingest(driver, state, message, state.fd)
    async with service.open_upload(
        message.path,
        mode=message.mode,
        size=message.size,
        upload_id=message.upload_id,
        offset=message.offset,
    ) as upload:
        state.started = True
        await receive_content(driver, state, upload.write)
        info = await service.commit(upload)
        # No checkpoint between the (shielded) commit and recording its outcome.
        reply = FileWriteReply(wire_info(info))
        state.reply = reply
    return reply


async def _ingest(
    driver: Driver, state: RequestState, message: FileWrite, fd: int
) -> FileWriteReply:
    state.started = True
    if message.size is None:
        msg = "a WRITE passing a descriptor must declare its size (spec 8.1)"
        raise BadRequestError(msg)
    if message.upload_id is not None or message.offset:
        msg = "a WRITE passing a descriptor cannot be resumable or resume (spec 8.1)"
        raise BadRequestError(msg)
    info = await driver.service.ingest(
        message.path,
        fd,
        size=message.size,
        mode=message.mode,
        accept=_descriptor_kinds(driver.session.features),
    )
    # No checkpoint between the (shielded) commit and recording its outcome.
    reply = FileWriteReply(wire_info(info))
    state.reply = reply
    return reply


def _descriptor_kinds(features: int) -> DescriptorKind:
    """The kinds of descriptor the negotiated features let a client pass (spec 8)."""
    kinds = DescriptorKind.NONE
    if features & Feature.FD_PASSING:
        kinds |= DescriptorKind.FILE
    if features & Feature.MEMFD:
        kinds |= DescriptorKind.MEMFD
    return kinds


#: Budget for the entries of one REQUESTS reply: the control-frame limit less room for the
#: map header and the counts (spec 5.21: the reply is one control frame).
_REQUESTS_BUDGET: Final = MAX_CONTROL_PAYLOAD - 1024
#: Bytes an entry costs beyond its strings, at most: eleven keys (68 bytes and their
#: headers), four 9-byte and two 5-byte integers, the strings' headers.
_REQUEST_OVERHEAD: Final = 160


async def requests(driver: Driver, message: Requests) -> RequestsReply:
    """REQUESTS (spec 5.21): the oldest requests in flight across the daemon, as many as
    ``limit`` and one control frame allow, and how many there are in all."""
    snapshot = await driver.service.requests_in_flight(driver.caller, limit=message.limit)
    entries: list[RequestEntry] = []
    budget = _REQUESTS_BUDGET
    for live in snapshot.requests:
        peer = live.peer
        cost = _REQUEST_OVERHEAD + sum(
            len(text.encode())
            for text in (live.command, live.waiting, peer.transport, live.path, peer.address)
            if text is not None
        )
        if cost > budget:
            break  # the oldest that fit; ``total`` says how many there are
        budget -= cost
        entries.append(
            RequestEntry(
                connection=live.connection,
                transport=peer.transport,
                session=live.session,
                command=live.command,
                age_ms=int(live.age * 1000),
                moved=live.moved,
                waiting=live.waiting,
                path=live.path,
                uid=peer.uid,
                pid=peer.pid,
                address=peer.address,
            )
        )
    return RequestsReply(
        total=snapshot.total, requests=tuple(entries), connections=snapshot.connections
    )


async def shutdown(driver: Driver, message: Shutdown) -> ShutdownReply:
    # The reply is queued before the drain starts (no checkpoint in between): the client
    # learns the daemon is stopping, then gets GOAWAY like every other connection.
    driver.service.shutdown(driver.caller)
    return ShutdownReply(grace_ms=driver.context.grace_ms, pid=os.getpid())


# --- The table -----------------------------------------------------------------------------------

#: Every request command LBRU serves: one row each.
ROWS: Final[tuple[Row, ...]] = (
    Unary(FileStat, stat, inline=True),
    Unary(FileList, list_page, inline=_small_page),
    Unary(Ping, ping, inline=True),
    Unary(UploadStatus, upload_status, inline=True),
    Unary(NodeStatus, node_status),
    Unary(MakeDirectory, mkdir, Cancellation.COMPLETES),
    Unary(Delete, delete, Cancellation.COMPLETES),
    Unary(Rename, rename, Cancellation.COMPLETES),
    Unary(Cancel, cancel, Cancellation.NOTHING, inline=_target_idle),
    Streamed(FileRead, read),
    Streamed(FileWrite, write, receives_data=True),
    # A snapshot of plain dictionaries, no checkpoint: answered by the reader.
    Unary(Requests, requests, inline=True),
    Unary(Shutdown, shutdown, inline=True),
    Streamed(Fsck, fsck.fsck),
    Unary(LogGet, log_get),
    Streamed(LogStream, log_stream),
    Unary(LogStats, log_stats),
)

#: The rows by request message class: how the connection finds a request's row.
COMMANDS: Final[Mapping[type[Message], Row]] = {row.message: row for row in ROWS}
