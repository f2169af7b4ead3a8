"""Requests to store calls: the one place where protocol messages meet the store.

The store knows nothing of frames; the protocol knows nothing of the store. This module
translates a request message into a store call and the store's records into reply messages.
Store errors are already ``LibrorumError`` subclasses carrying their wire codes, so they pass
through unchanged.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import stat as stat_module
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Final

import trio

from librorum import __version__
from librorum.errors import BadRequestError, ConflictError, NotFoundError
from librorum.protocol.constants import MAX_CONTROL_PAYLOAD, Feature
from librorum.protocol.messages import (
    Delete,
    DeleteReply,
    DirEntry,
    FileInfo,
    FileList,
    FileListReply,
    FileRead,
    FileStat,
    FileStatReply,
    FileWrite,
    MakeDirectory,
    MakeDirectoryReply,
    Message,
    NodeStatus,
    NodeStatusReply,
    Ping,
    PingReply,
    Rename,
    RenameReply,
    StoreFigures,
    UploadStatus,
    UploadStatusReply,
)
from librorum.store import types as store_types

if TYPE_CHECKING:
    from librorum.server.app import Server
    from librorum.store import Reader, Store, Upload

#: Budget for the entries of one LIST reply: the control-frame limit less room for the map
#: header and the cursor (spec 5.4: a page is at most one control frame).
_LIST_BUDGET: Final = MAX_CONTROL_PAYLOAD - 6 * 1024
#: Spec 5.10: what a client-chosen upload id may look like.
_UPLOAD_ID: Final = re.compile(r"[A-Za-z0-9_-]{16,64}")
#: Bytes an entry costs beyond its name, at most: keys, kind, and four 9-byte integers.
_ENTRY_OVERHEAD: Final = 96
#: Spec 8.2: the seals that make a memfd's content immutable.
_MEMFD_SEALS: Final = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW


def wire_info(info: store_types.FileInfo) -> FileInfo:
    """The reply record for a store record."""
    return FileInfo(info.path, info.kind, info.size, info.mtime_ns, info.version, info.content_hash)


def _entry(info: store_types.FileInfo) -> DirEntry:
    return DirEntry(info.name, info.kind, info.size, info.mtime_ns, info.version)


async def unary(server: Server, message: Message) -> Message:
    """Carry out a one-frame request and return its reply.

    Mutations (MKDIR, DELETE, RENAME) are shielded from cancellation once they begin, so a
    CANCEL that arrives during one gets the definite answer COMMITTED (spec 5.14).

    Raises:
        LibrorumError: the store's answer (NotFoundError, AlreadyExistsError, ...).
    """
    store = server.store
    if isinstance(message, FileStat):
        return FileStatReply(wire_info(await store.stat(message.path)))
    if isinstance(message, FileList):
        return await _list(store, message)
    if isinstance(message, Ping):
        return PingReply(message.data)
    if isinstance(message, NodeStatus):
        return await _node_status(server)
    if isinstance(message, UploadStatus):
        status = await store.upload_status(message.upload_id)
        return UploadStatusReply(message.upload_id, status.path, status.offset, status.size)
    with trio.CancelScope(shield=True):
        if isinstance(message, MakeDirectory):
            info = await store.mkdir(message.path, parents=message.parents)
            return MakeDirectoryReply(wire_info(info))
        if isinstance(message, Delete):
            return DeleteReply(await store.delete(message.path, recursive=message.recursive))
        if isinstance(message, Rename):
            info = await store.rename(message.src, message.dst, overwrite=message.overwrite)
            return RenameReply(wire_info(info))
    msg = f"{type(message).__name__} is not a request this server handles"
    raise BadRequestError(msg)


async def _list(store: Store, message: FileList) -> FileListReply:
    page = await store.list(message.path, cursor=message.cursor, limit=message.limit)
    entries: list[DirEntry] = []
    budget = _LIST_BUDGET
    for info in page.entries:
        cost = len(info.name.encode()) + _ENTRY_OVERHEAD
        if cost > budget:
            # The page would not fit one control frame: end it here, continue after it.
            return FileListReply(tuple(entries), entries[-1].name if entries else None)
        budget -= cost
        entries.append(_entry(info))
    return FileListReply(tuple(entries), page.next_cursor)


async def _node_status(server: Server) -> NodeStatusReply:
    figures = await server.store.status()
    stats = server.stats
    return NodeStatusReply(
        version=__version__,
        node_id=server.node_id,
        uptime_ms=int((time.monotonic() - server.started_at) * 1000),
        connections=dict(stats.connections),
        requests=stats.requests,
        bytes_in=stats.bytes_in,
        bytes_out=stats.bytes_out,
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
        inflight_bytes=server.budget.used,
        inflight_peak_bytes=server.budget.peak,
    )


@contextlib.asynccontextmanager
async def open_upload(server: Server, message: FileWrite) -> AsyncIterator[Upload]:
    """The store upload a WRITE streams into: a new one, or a resumed one (spec 5.10).

    The upload is aborted when the block exits without a commit (a resumable one keeps its
    committed prefix: that is the store's rule for uploads with an id).

    Raises:
        ConflictError: the resume offset is not the upload's committed offset.
        NotFoundError: ``offset`` > 0 for an upload id the server does not know.
        LibrorumError: the store's answer to beginning the upload.
    """
    store = server.store
    upload: Upload | None = None
    if message.upload_id is not None and not _UPLOAD_ID.fullmatch(message.upload_id):
        msg = "an upload_id is 16 to 64 characters of A-Z, a-z, 0-9, '_' and '-' (spec 5.10)"
        raise BadRequestError(msg)
    if message.upload_id is not None:
        try:
            upload = await store.resume_upload(message.upload_id)
        except NotFoundError:
            if message.offset:
                raise
        if upload is not None and upload.offset != message.offset:
            offset = upload.offset
            await upload.detach()
            msg = f"upload {message.upload_id} is committed up to {offset}, not {message.offset}"
            raise ConflictError(msg)
    elif message.offset:
        msg = "a WRITE with an offset must name the upload_id it resumes"
        raise BadRequestError(msg)
    if upload is None:
        upload = await store.begin_upload(
            message.path, mode=message.mode, size=message.size, upload_id=message.upload_id
        )
    async with upload:
        yield upload


async def ingest(
    server: Server, message: FileWrite, fd: int, features: int
) -> store_types.FileInfo:
    """Store the content of a descriptor passed with a WRITE (spec 8): a regular file
    (FD_PASSING) or a sealed memfd (MEMFD). The caller keeps and closes ``fd``.

    Cancellation: before the commit, a cancelled ingest has no visible effect; the commit
    itself is shielded, so once it starts the file is stored (the outcome is never unknown).

    Raises:
        BadRequestError: the WRITE lacks ``size`` or has an ``upload_id`` or ``offset``; the
            descriptor is not a readable regular file, does not hold ``size`` bytes, is a
            memfd without its seals, or is of a kind the connection did not negotiate.
        TooLargeError: ``size`` exceeds the maximum file size.
        LibrorumError: the store's answer (EXISTS, NO_SPACE, IO_ERROR, ...).
    """
    if message.size is None:
        msg = "a WRITE passing a descriptor must declare its size (spec 8.1)"
        raise BadRequestError(msg)
    if message.upload_id is not None or message.offset:
        msg = "a WRITE passing a descriptor cannot be resumable or resume (spec 8.1)"
        raise BadRequestError(msg)
    kind = descriptor_kind(fd)
    if not features & kind:
        msg = (
            "the descriptor is not a sealed memfd, and only MEMFD was negotiated"
            if kind is Feature.FD_PASSING
            else "MEMFD was not negotiated on this connection"
        )
        raise BadRequestError(msg)
    return await server.store.ingest_fd(message.path, fd, message.size, mode=message.mode)


def descriptor_kind(fd: int) -> Feature:
    """What a passed descriptor is (spec 8.2): MEMFD when it carries the three content
    seals, FD_PASSING for any other readable regular file.

    A file that cannot be sealed (most file systems; tmpfs files and memfds created without
    MFD_ALLOW_SEALING report only F_SEAL_SEAL) is an ordinary file: the store copies and
    hashes the copy, so a change under it cannot corrupt what is stored. A sealable memfd
    missing a content seal is refused: its sender meant MEMFD and forgot to seal.

    Raises:
        BadRequestError: not a regular file, not open for reading, or a memfd that is
            sealable but not sealed.
    """
    try:
        st = os.fstat(fd)
        access = fcntl.fcntl(fd, fcntl.F_GETFL)
    except OSError as exc:
        msg = f"the descriptor cannot be inspected: {exc.strerror}"
        raise BadRequestError(msg) from None
    if not stat_module.S_ISREG(st.st_mode):
        msg = "the descriptor is not a regular file"
        raise BadRequestError(msg)
    if access & os.O_PATH or access & os.O_ACCMODE == os.O_WRONLY:
        msg = "the descriptor is not open for reading"
        raise BadRequestError(msg)
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:
        return Feature.FD_PASSING  # a file system without sealing
    if seals & _MEMFD_SEALS == _MEMFD_SEALS:
        return Feature.MEMFD
    if seals == fcntl.F_SEAL_SEAL:
        return Feature.FD_PASSING  # never sealable: an ordinary file
    msg = "the memfd is not sealed (F_SEAL_WRITE, F_SEAL_SHRINK and F_SEAL_GROW are required)"
    raise BadRequestError(msg)


@contextlib.asynccontextmanager
async def open_read(server: Server, message: FileRead) -> AsyncIterator[Reader]:
    """The store reader for a READ (a consistent snapshot of one committed version).

    Raises:
        LibrorumError: NotFoundError, IsADirectoryError_, BadRequestError (offset past the
            end), CorruptDataError (while iterating).
    """
    async with server.store.open_read(
        message.path, offset=message.offset, length=message.length
    ) as reader:
        # The store clips a range to the file; the protocol calls a start past the end an
        # error (spec 5.11), judged on the same snapshot the data would come from.
        if message.offset > reader.info.size:
            msg = f"offset {message.offset} is past the end of {message.path} ({reader.info.size} bytes)"
            raise BadRequestError(msg)
        yield reader
