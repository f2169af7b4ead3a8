"""The uploads registry: starts, resumes, lists and forgets uploads, and owns the attached
ones (a resumable upload is *attached* while a stream writes to it; it can be resumed or
aborted elsewhere only once detached).

Each upload (``upload.py``) writes its chunks through the chunk engine and, at the end,
commits through this registry (:meth:`UploadRegistry.commit_file`, under the path's lock,
which the namespace's own operations share), and tells it when it lets go
(:meth:`UploadRegistry.release`).
"""

from __future__ import annotations

import logging
import os
import stat as stat_module
import time
from collections.abc import Sequence
from typing import Final

import blake3
import trio

from librorum.domain import MAX_NAME_BYTES, WriteMode
from librorum.errors import (
    ConflictError,
    CorruptDataError,
    InvalidArgumentError,
    InvalidPathError,
    LibrorumError,
    NotFoundError,
    TooLargeError,
)
from librorum.store import namespace as ns
from librorum.store._translate import translating
from librorum.store.engine import ChunkEngine
from librorum.store.locks import LockTable
from librorum.store.meta import MetaTxn, UploadRow
from librorum.store.paths import normalize
from librorum.store.types import FileInfo, UploadStatus
from librorum.store.upload import Upload

log = logging.getLogger("librorum.store")

#: Upload ids follow the rule of a path component: 1 to 255 bytes of UTF-8, no NUL, no "/".
MAX_UPLOAD_ID_BYTES: Final = MAX_NAME_BYTES


def _check_upload_id(upload_id: str) -> None:
    try:
        size = len(upload_id.encode("utf-8"))
    except UnicodeEncodeError as exc:
        msg = "an upload id must be valid Unicode"
        raise InvalidPathError(msg) from exc
    if not 0 < size <= MAX_UPLOAD_ID_BYTES or "\x00" in upload_id or "/" in upload_id:
        msg = f"an upload id must be 1 to {MAX_UPLOAD_ID_BYTES} bytes without NUL or '/'"
        raise InvalidPathError(msg)


class UploadRegistry:
    """The uploads of one open store (an ``upload.UploadHost``).

    Args:
        engine: The chunk engine uploads write through.
        path_locks: The namespace's per-path locks (a commit holds its path's).
    """

    def __init__(self, engine: ChunkEngine, path_locks: LockTable[str]) -> None:
        self._engine = engine
        self._path_locks = path_locks
        # Attached resumable uploads by id; None while one is being started or resumed.
        self._attached: dict[str, Upload | None] = {}

    def __len__(self) -> int:
        """The number of attached resumable uploads."""
        return len(self._attached)

    def release(self, upload_id: str) -> None:
        """The upload ``upload_id`` let go: it may be resumed or aborted elsewhere."""
        self._attached.pop(upload_id, None)

    async def detach_idle(self) -> None:
        """At close: detach the resumable uploads still attached and not in a call, so that
        each keeps what it received (its staged batch is published and recorded). One in a
        call keeps what its published batches recorded."""
        for upload in [u for u in self._attached.values() if u is not None]:
            if upload.idle:
                try:
                    await upload.detach()
                except LibrorumError as exc:
                    log.warning("upload %s not detached at close: %s", upload.upload_id, exc)

    async def commit_file(
        self,
        path: str,
        mode: WriteMode,
        *,
        size: int,
        content_hash: bytes,
        chunk_size: int,
        chunks: Sequence[tuple[bytes, int]],
        upload_id: str | None,
    ) -> FileInfo:
        """Make an upload's published chunks the file's content (see ``UploadHost``).

        Cancellation: cancelled before the metadata commit, it has no effect; the commit is
        not interruptible, and once made the result is returned.

        Raises:
            AlreadyExistsError, NotFoundError, NotADirectoryError_, IsADirectoryError_: The
                mode's conditions do not hold.
            ReadOnlyError, StoreIOError, TimeoutError_: The commit could not be made.
        """
        self._engine.check_writable()
        mtime_ns = time.time_ns()
        async with self._path_locks.hold([path]):
            info, released = await self._engine.meta.write(
                lambda t: ns.commit_file(
                    t,
                    path,
                    mode,
                    size=size,
                    content_hash=content_hash,
                    chunk_size=chunk_size,
                    chunks=chunks,
                    mtime_ns=mtime_ns,
                    upload_id=upload_id,
                )
            )
        await self._engine.after_commit(released)
        return info

    async def begin_upload(
        self,
        path: str,
        *,
        mode: WriteMode = WriteMode.CREATE,
        size: int | None = None,
        upload_id: str | None = None,
    ) -> Upload:
        """Start writing a file. The mode's conditions are checked now (fail fast) and again,
        atomically, at commit.

        Args:
            path: Where the file will be.
            mode: CREATE (create or replace), EXCLUSIVE (fail if anything is there) or
                OVERWRITE (fail if no file is there).
            size: The total size, if known: checked against the maximum now, and against
                the data at each write (TooLargeError) and at commit (ConflictError).
            upload_id: Makes the upload resumable: its progress is recorded chunk by chunk
                and survives disconnects and restarts (see :meth:`resume_upload`).

        Cancellation: a cancelled call starts nothing.

        Raises:
            InvalidPathError: ``path`` or ``upload_id`` breaks the rules.
            TooLargeError: ``size`` exceeds the maximum file size.
            AlreadyExistsError, NotFoundError, NotADirectoryError_, IsADirectoryError_: The
                mode's conditions do not hold.
            ConflictError: An upload with this id exists already.
            ReadOnlyError, NoSpaceError, StoreIOError: The store cannot write.
        """
        normal = normalize(path)
        self._engine.check_writable()
        if size is not None:
            if size < 0:
                msg = f"size must not be negative, got {size}"
                raise ValueError(msg)
            if size > self._engine.max_file_size:
                msg = f"{size} bytes exceeds the maximum file size of {self._engine.max_file_size}"
                raise TooLargeError(msg)
        await self._engine.check_space("upload")
        if upload_id is None:
            return await self._anonymous_upload(normal, mode, size)
        _check_upload_id(upload_id)
        if upload_id in self._attached:
            msg = f"upload {upload_id!r} is in progress on another stream"
            raise ConflictError(msg)
        row = UploadRow(
            id=upload_id,
            path=normal,
            mode=mode.value,
            size=size,
            chunk_size=self._engine.chunk_size,
            created_ns=time.time_ns(),
        )

        def create(t: MetaTxn) -> None:
            ns.check_write_target(t, normal, mode)
            if t.upload(upload_id) is not None:
                msg = f"upload {upload_id!r} exists already (resume it or abort it)"
                raise ConflictError(msg)
            t.create_upload(row)

        self._attached[upload_id] = None
        try:
            await self._engine.meta.write(create)
            upload = self._new_upload(normal, mode, size, upload_id)
        except BaseException:
            del self._attached[upload_id]
            raise
        self._attached[upload_id] = upload
        return upload

    async def _anonymous_upload(self, normal: str, mode: WriteMode, size: int | None) -> Upload:
        """A new upload without an id to ``normal`` (a normalised path), once the mode's
        conditions hold now (they are checked again at commit).

        Raises:
            AlreadyExistsError, NotFoundError, NotADirectoryError_, IsADirectoryError_: The
                mode's conditions do not hold.
        """
        await self._engine.meta.read(lambda t: ns.check_write_target(t, normal, mode))
        return self._new_upload(normal, mode, size, None)

    def _new_upload(
        self, normal: str, mode: WriteMode, size: int | None, upload_id: str | None
    ) -> Upload:
        """An upload with nothing written yet, at the store's chunk size."""
        return Upload(
            self._engine,
            self,
            path=normal,
            mode=mode,
            size=size,
            upload_id=upload_id,
            chunk_size=self._engine.chunk_size,
            recorded=[],
            hasher=blake3.blake3(),
        )

    async def resume_upload(self, upload_id: str, *, offset: int | None = None) -> Upload:
        """Continue a resumable upload from its committed offset.

        The chunks stored so far are read back and verified to rebuild the content hash
        (the cost is proportional to the committed offset).

        Args:
            upload_id: The id given to :meth:`begin_upload`.
            offset: If given, the offset the client will resume from; it must equal the
                committed offset.

        Cancellation: a cancelled resume leaves the upload detached, as it was.

        Raises:
            NotFoundError: No such upload.
            ConflictError: The upload is attached to another stream, or ``offset`` differs
                from the committed offset.
            CorruptDataError: A stored chunk fails verification (it is quarantined; abort the
                upload and start again).
            ReadOnlyError: The store cannot write.
        """
        _check_upload_id(upload_id)
        self._engine.check_writable()
        if upload_id in self._attached:
            msg = f"upload {upload_id!r} is in progress on another stream"
            raise ConflictError(msg)
        await self._engine.check_space("upload")

        def load(t: MetaTxn) -> tuple[UploadRow | None, list[tuple[bytes, int]]]:
            row = t.upload(upload_id)
            chunks = t.upload_chunks(upload_id) if row is not None else []
            # Pinned in the same step as read: protected until the upload lets go.
            self._engine.pins.pin(d for d, _ in chunks)
            return row, chunks

        row, chunks = await self._engine.meta.read(load)
        try:
            if row is None:
                msg = f"no upload {upload_id!r}"
                raise NotFoundError(msg)
            committed = sum(n for _, n in chunks)
            if offset is not None and offset != committed:
                msg = f"upload {upload_id!r} is committed up to {committed}, not {offset}"
                raise ConflictError(msg)
            self._attached[upload_id] = None
            try:
                hasher = blake3.blake3()
                for digest, length in chunks:
                    # Verified and hashed from a mapping of the file: no buffer.
                    try:
                        await self._engine.objects.check(digest, length, also=hasher)
                    except CorruptDataError as exc:
                        await self._engine.on_corrupt(
                            exc, length, f"resume of upload {upload_id!r}"
                        )
                        raise
                upload = Upload(
                    self._engine,
                    self,
                    path=row.path,
                    mode=WriteMode(row.mode),
                    size=row.size,
                    upload_id=upload_id,
                    chunk_size=row.chunk_size,
                    recorded=chunks,
                    hasher=hasher,
                )
            except BaseException:
                del self._attached[upload_id]
                raise
        finally:
            self._engine.pins.unpin(d for d, _ in chunks)
        self._attached[upload_id] = upload
        return upload

    async def upload_status(self, upload_id: str) -> UploadStatus:
        """Where a resumable upload stands.

        Cancellation: not interruptible (an inline read).

        Raises:
            InvalidPathError: Malformed id.
            NotFoundError: No such upload.
        """
        _check_upload_id(upload_id)

        def load(t: MetaTxn) -> UploadStatus | None:
            row = t.upload(upload_id)
            if row is None:
                return None
            offset = sum(n for _, n in t.upload_chunks(upload_id))
            return UploadStatus(path=row.path, offset=offset, size=row.size)

        status = await self._engine.meta.read(load)
        if status is None:
            msg = f"no upload {upload_id!r}"
            raise NotFoundError(msg)
        return status

    async def abort_upload(self, upload_id: str) -> None:
        """Forget a detached resumable upload (and release its chunks).

        Cancellation: cancelled before its metadata commit, it has no effect; the commit is
        not interruptible, and once made the result is returned.

        Raises:
            InvalidPathError: Malformed id.
            NotFoundError: No such upload.
            ConflictError: It is attached to a stream (abort it there).
            ReadOnlyError, NoSpaceError, StoreIOError: The store cannot write.
        """
        _check_upload_id(upload_id)
        self._engine.check_writable()
        if upload_id in self._attached:
            msg = f"upload {upload_id!r} is in progress on another stream"
            raise ConflictError(msg)

        def forget(t: MetaTxn) -> list[bytes]:
            if t.upload(upload_id) is None:
                msg = f"no upload {upload_id!r}"
                raise NotFoundError(msg)
            return t.delete_upload(upload_id)

        released = await self._engine.meta.write(forget, use_reserve=True)
        await self._engine.after_commit(released)

    async def expire_uploads(self, max_age: float) -> int:
        """Forget the detached resumable uploads started more than ``max_age`` seconds ago
        (the daemon calls this periodically; the store keeps uploads until told otherwise).

        Cancellation: uploads already forgotten stay forgotten; the rest are kept.

        Returns:
            The number of uploads forgotten.

        Raises:
            ReadOnlyError, NoSpaceError, StoreIOError: The store cannot write.
        """
        self._engine.check_writable()
        cutoff = time.time_ns() - int(max_age * 1e9)
        forgotten = 0
        while True:
            ids = await self._engine.meta.read(
                lambda t: t.uploads_created_before(
                    cutoff, self._engine.gc_batch + len(self._attached)
                )
            )
            ids = [i for i in ids if i not in self._attached][: self._engine.gc_batch]
            if not ids:
                return forgotten

            def forget(t: MetaTxn, ids: list[str] = ids) -> list[bytes]:
                return [d for i in ids for d in t.delete_upload(i)]

            released = await self._engine.meta.write(forget, use_reserve=True)
            forgotten += len(ids)
            await self._engine.after_commit(released)

    async def write_bytes(
        self, path: str, data: bytes | bytearray | memoryview, *, mode: WriteMode = WriteMode.CREATE
    ) -> FileInfo:
        """Write a whole file from memory (a convenience over :meth:`begin_upload`).

        Cancellation: cancelled before its metadata commit, it has no effect; the commit is
        not interruptible, and once made the result is returned.

        Raises:
            The errors of :meth:`begin_upload`, :meth:`Upload.write` and :meth:`Upload.commit`.
        """
        size = memoryview(data).nbytes
        async with await self.begin_upload(path, mode=mode, size=size) as up:
            await up.write(data)
            return await up.commit()

    async def ingest_fd(
        self, path: str, fd: int, size: int, *, mode: WriteMode = WriteMode.CREATE
    ) -> FileInfo:
        """Store a client's regular file, given as a descriptor, as the file at ``path``.

        The file goes through the pipeline of a streamed upload (see ``upload.py``), its
        pieces read into the upload's buffers in worker threads: each piece is hashed there
        and written from there (with O_DIRECT where the file system allows it), so a client
        that modifies its file meanwhile gets *some* content, never a chunk that does not
        match its name. Memory: the upload's ``upload_pipeline`` buffers. The descriptor is
        not closed and its file position is not moved.

        Cancellation: before the commit, a cancelled ingest has no visible effect; the
        commit is shielded (once it starts, the file is stored and returned).

        Raises:
            InvalidArgumentError: ``fd`` is not a regular file, or its size is not ``size``.
            TooLargeError: ``size`` exceeds the maximum file size.
            The mode errors of :meth:`begin_upload`; NoSpaceError, StoreIOError,
            ReadOnlyError.
        """
        normal = normalize(path)
        self._engine.check_writable()
        if size < 0:
            msg = f"size must not be negative, got {size}"
            raise ValueError(msg)
        if size > self._engine.max_file_size:
            msg = f"{size} bytes exceeds the maximum file size of {self._engine.max_file_size}"
            raise TooLargeError(msg)
        await self._engine.check_space("upload")

        def check() -> os.stat_result:
            with translating("stat client file"):
                return self._engine.fs.fstat(fd)

        st = await self._engine.in_thread(check)
        if not stat_module.S_ISREG(st.st_mode):
            msg = "the descriptor is not a regular file"
            raise InvalidArgumentError(msg)
        if st.st_size != size:
            msg = f"the file has {st.st_size} bytes, not the declared {size}"
            raise InvalidArgumentError(msg)
        upload = await self._anonymous_upload(normal, mode, size)
        async with upload:
            await upload.ingest(fd, size)
            # Once the commit starts it completes: a cancelled caller must not be left not
            # knowing whether the file was stored.
            with trio.CancelScope(shield=True):
                info = await upload.commit()
        # Returned after the blocks: a cancel scope may swallow exceptions, as type checkers
        # see it.
        return info
