"""Chunk storage: the object-store boundary and its embedded implementation.

:class:`ObjectStore` is the pluggable interface (stage / publish in batches / discard /
ranged get / delete / list; keys are chunk digests); :class:`LocalObjects` is the optional capability of stores that keep objects
in local files, which lets the transport ``os.sendfile`` straight from them and lets the store
ingest a client's file with ``os.copy_file_range``. :class:`LocalChunkStore` has both.

Layout of :class:`LocalChunkStore` under the data directory::

    chunks/00 .. chunks/ff/<64 hex digits>   one file per chunk, sharded by the first byte
    tmp/<random>.tmp                         chunk writes in progress (removed on open)

One level of 256 shards, all created when the store is created, so that no directory is ever
created on the write path: at 4 MiB chunks a 40 TB store has ~40k files per shard, which ext4's
hashed directories handle without trouble.

Durability of a new chunk: write a temp file, fsync it, rename it to its final name, fsync the
shard directory. Uploads stage chunks (write the temp file and start its writeback, no fsync)
and publish them in batches (:meth:`LocalChunkStore.publish_many`: fsync every staged file,
rename each, then fsync every touched shard once), so one upload pays for a few fsyncs per
batch, mostly of writes the device has already done, instead of three waits per chunk. A chunk file therefore never exists under its final name with content other
than what was fsynced under it. A chunk the store holds already is published all the same,
over the existing file (the rename replaces it atomically): the fresh bytes were hashed as
they were written, while the existing file may have rotted since (see
``Store._publish_chunks``). An fsync failure is reported through ``on_fsync_failure``
before the error propagates (the store turns read-only: the data's state on disk is unknown
and must not be acknowledged by a retry).
"""

from __future__ import annotations

import errno
import mmap
import os
import secrets
import threading
from collections.abc import Callable, Sequence
from typing import Final, Protocol

import attrs
import blake3
import trio

from librorum.errors import CorruptDataError, InvalidArgumentError
from librorum.store._translate import translating
from librorum.store.fs import FS

#: Shard directories: one per value of the digest's first byte.
SHARDS: Final = tuple(f"{i:02x}" for i in range(256))
#: Suffix of temp files.
TEMP_SUFFIX: Final = ".tmp"
#: O_DIRECT needs buffers, offsets and sizes aligned to the logical block size; 4096 covers
#: every common device.
_DIRECT_ALIGN: Final = 4096
#: Chunk data goes to O_DIRECT files through one aligned buffer of this size per thread.
_DIRECT_BUFFER: Final = 1 << 20

# copy_file_range cannot copy between these (cross-device, e.g. a memfd on tmpfs; or the file
# system does not support it): fall back to read and write.
_COPY_FALLBACK_ERRNOS: Final = frozenset(
    {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF}
)

Verify = Callable[[memoryview], None]


def hash_chunk(view: memoryview | mmap.mmap, hasher: blake3.blake3) -> bytes:
    """The chunk's digest; also feeds the chunk to the whole-file ``hasher`` (worker thread)."""
    digest: bytes = blake3.blake3(view).digest()
    hasher.update(view)
    return digest


@attrs.define
class Staged:
    """A chunk copied into a temp file and hashed, not yet published under its digest."""

    temp: str
    fd: int
    digest: bytes
    length: int


class ObjectStore(Protocol):
    """Where chunk data lives. Keys are 32-byte digests; objects are immutable."""

    async def stage(self, key: bytes, data: memoryview) -> Staged:
        """Write ``data`` for ``key`` somewhere not yet visible under the key."""
        ...

    async def publish_many(self, staged: Sequence[Staged]) -> None:
        """Make staged objects durable and visible under their keys, as one batch."""
        ...

    async def discard_many(self, staged: Sequence[Staged]) -> None:
        """Drop staged objects (best effort, never raises)."""
        ...

    async def get(self, key: bytes, into: memoryview, offset: int, verify: Verify) -> None:
        """Fill ``into`` with the object's bytes from ``offset`` and call ``verify`` on them
        (in the same worker thread), raising CorruptDataError if the object is missing or
        short."""
        ...

    async def delete(self, keys: Sequence[bytes]) -> None:
        """Delete objects (missing ones are ignored), durably by the time this returns."""
        ...

    async def list_all(self) -> dict[str, list[str]]:
        """The names found in each shard (``SHARDS``): digests in hex, and anything else."""
        ...


class LocalObjects(Protocol):
    """Optional capability: objects are local files."""

    def open_verified(self, key: bytes, length: int, digest: bytes) -> int:
        """Open the object read-only, check its first ``length`` bytes against ``digest``,
        and return the descriptor (blocking; the caller closes it)."""
        ...

    async def stage_from_fd(
        self, src: int, offset: int, length: int, hasher: blake3.blake3, buf: bytearray
    ) -> Staged:
        """Copy ``length`` bytes of ``src`` from ``offset`` into a temp file and hash them."""
        ...


class LocalChunkStore:
    """Chunks as files in sharded directories (see the module docstring)."""

    def __init__(
        self,
        root: str,
        fs: FS,
        *,
        limiter: trio.CapacityLimiter,
        on_fsync_failure: Callable[[BaseException], None],
    ) -> None:
        self.root = root
        self.chunk_dir = os.path.join(root, "chunks")
        self.temp_dir = os.path.join(root, "tmp")
        self._fs = fs
        self._limiter = limiter
        self._on_fsync_failure = on_fsync_failure
        # Chunk files are written with O_DIRECT until the file system refuses it (tmpfs
        # before Linux 6.6): see _write_temp.
        self._direct = True
        self._aligned = threading.local()

    def path(self, key: bytes) -> str:
        """The file of chunk ``key``."""
        name = key.hex()
        return f"{self.chunk_dir}/{name[:2]}/{name}"

    # --- setup --------------------------------------------------------------------------------

    def init_sync(self) -> None:
        """Create the directory layout if missing (blocking). Each directory created is made
        durable (its parent fsynced)."""
        with translating("create store directories"):
            self._ensure_dir(self.root, None)
            self._ensure_dir(self.chunk_dir, self.root)
            self._ensure_dir(self.temp_dir, self.root)
            created = False
            existing = set(self._fs.listdir(self.chunk_dir))
            for shard in SHARDS:
                if shard not in existing:
                    self._fs.mkdir(f"{self.chunk_dir}/{shard}")
                    created = True
            if created:
                self._fsync_dir(self.chunk_dir)

    def _ensure_dir(self, path: str, parent: str | None) -> None:
        try:
            self._fs.mkdir(path)
        except FileExistsError:
            return
        if parent is not None:
            self._fsync_dir(parent)

    def clear_temp_sync(self) -> int:
        """Remove every temp file (blocking; only at open, when no write is in progress).
        Temp entries need no durability, so the directory is not fsynced."""
        with translating("clear temp files"):
            names = self._fs.listdir(self.temp_dir)
            for name in names:
                try:
                    self._fs.unlink(f"{self.temp_dir}/{name}")
                except FileNotFoundError:
                    pass
            return len(names)

    def count_temp_sync(self) -> int:
        """Number of temp files (blocking)."""
        with translating("list temp files"):
            return len(self._fs.listdir(self.temp_dir))

    # --- helpers (worker threads) -------------------------------------------------------------

    def _fsync(self, fd: int) -> None:
        try:
            self._fs.fsync(fd)
        except OSError as exc:
            self._on_fsync_failure(exc)
            raise

    def _fsync_dir(self, path: str) -> None:
        fd = self._fs.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            self._fsync(fd)
        finally:
            self._fs.close(fd)

    def _new_temp(self, *, direct: bool = False) -> tuple[str, int, bool]:
        """Create a temp file; with ``direct``, opened with O_DIRECT where the file system
        allows it (after an EINVAL it is not asked again). Returns its name, descriptor and
        whether it is O_DIRECT."""
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL
        temp = f"{self.temp_dir}/{secrets.token_hex(12)}{TEMP_SUFFIX}"
        if direct and self._direct:
            try:
                return temp, self._fs.open(temp, flags | os.O_DIRECT, 0o600), True
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self._direct = False
                self._drop_temp(temp, None)  # it may have been created before the refusal
        return temp, self._fs.open(temp, flags, 0o600), False

    def _drop_temp(self, temp: str, fd: int | None) -> None:
        # Best effort on an error path: the original error is what the caller reports, and
        # a leftover temp file is removed at the next open.
        if fd is not None:
            try:
                self._fs.close(fd)
            except OSError:
                pass
        try:
            self._fs.unlink(temp)
        except OSError:
            pass

    def _write_all(self, fd: int, data: memoryview) -> None:
        while data:
            written = self._fs.write(fd, data)
            data = data[written:]

    def _write_temp(self, data: memoryview) -> tuple[str, int]:
        """A new temp file holding ``data``, written with O_DIRECT where the file system
        allows it (else through the page cache). Returns its name and open descriptor.

        Why O_DIRECT: new data would otherwise need fresh page-cache pages, and where memory
        is expensive to come by (a VM that hands idle memory back to its host) filling them
        costs 4-5 CPU-seconds per GiB and caps writes near 0.25 GB/s, while direct writes to
        the same disk run at ~1 GB/s. Durability is unchanged: the file is still fsynced
        (which also flushes the device's cache) before its name appears. Chunks written
        this way are not left in the page cache; their first read comes from the disk.
        """
        temp, fd, direct = self._new_temp(direct=len(data) >= _DIRECT_ALIGN)
        try:
            if direct:
                self._write_direct(fd, data)
            else:
                self._write_all(fd, data)
        except BaseException:
            self._drop_temp(temp, fd)
            raise
        return temp, fd

    def _write_direct(self, fd: int, data: memoryview) -> None:
        buf = getattr(self._aligned, "buf", None)
        if buf is None:
            buf = self._aligned.buf = mmap.mmap(-1, _DIRECT_BUFFER)  # page-aligned
        aligned = len(data) - len(data) % _DIRECT_ALIGN
        done = 0
        with memoryview(buf) as view:
            while done < aligned:
                n = min(_DIRECT_BUFFER, aligned - done)
                view[:n] = data[done : done + n]
                self._write_all(fd, view[:n])
                done += n
        if done < len(data):
            # The unaligned tail goes through the page cache.
            self._fs.clear_direct(fd)
            self._write_all(fd, data[done:])

    def _stage_data_sync(self, key: bytes, data: memoryview) -> Staged:
        with translating("write chunk"):
            temp, fd = self._write_temp(data)
            try:
                self._fs.start_writeback(fd)
            except BaseException:
                self._drop_temp(temp, fd)
                raise
            return Staged(temp=temp, fd=fd, digest=key, length=len(data))

    def _publish_many_sync(self, staged: Sequence[Staged]) -> None:
        with translating("write chunk"):
            closed = 0  # staged[:closed] have their fd closed (fsynced or failed)
            renamed = 0  # staged[:renamed] are under their final names
            try:
                for item in staged:
                    try:
                        self._fsync(item.fd)
                    finally:
                        closed += 1
                        self._fs.close(item.fd)
                shards: set[str] = set()
                for item in staged:
                    final = self.path(item.digest)
                    self._fs.rename(item.temp, final)
                    renamed += 1
                    shards.add(os.path.dirname(final))
                for shard in sorted(shards):
                    self._fsync_dir(shard)
            except BaseException:
                for i, item in enumerate(staged[renamed:], start=renamed):
                    self._drop_temp(item.temp, item.fd if i >= closed else None)
                raise

    def _get_sync(self, key: bytes, into: memoryview, offset: int, verify: Verify) -> None:
        with translating("read chunk"):
            try:
                fd = self._fs.open(self.path(key), os.O_RDONLY)
            except FileNotFoundError as exc:
                msg = f"chunk {key.hex()} is missing"
                raise CorruptDataError(msg) from exc
            try:
                done = 0
                while done < len(into):
                    got = self._fs.pread_into(fd, into[done:], offset + done)
                    if got == 0:
                        msg = f"chunk {key.hex()} is truncated"
                        raise CorruptDataError(msg)
                    done += got
            finally:
                self._fs.close(fd)
            verify(into)

    def _delete_sync(self, keys: Sequence[bytes]) -> None:
        with translating("delete chunks"):
            shards: set[str] = set()
            for key in keys:
                path = self.path(key)
                try:
                    self._fs.unlink(path)
                except FileNotFoundError:
                    continue
                shards.add(os.path.dirname(path))
            for shard in sorted(shards):
                self._fsync_dir(shard)

    # --- ObjectStore ----------------------------------------------------------------------------

    async def stage(self, key: bytes, data: memoryview) -> Staged:
        """Write ``data`` to a temp file and start its writeback, without waiting for it:
        the chunk ``key`` is not durable until :meth:`publish_many` (or :meth:`discard`).

        Cancellation: runs to completion in its worker thread once started.

        Raises:
            NoSpaceError, StoreIOError: The write failed; no temp file is left behind.
        """
        return await trio.to_thread.run_sync(
            self._stage_data_sync, key, data, limiter=self._limiter
        )

    async def publish_many(self, staged: Sequence[Staged]) -> None:
        """Make staged chunks durable under their digests, in one batch: fsync every temp
        file, rename each to its final name (replacing a file already there), then fsync each
        shard directory touched, once.
        Every chunk file is thus fsynced before its name appears, and every name is durable
        when this returns. Takes ownership of ``staged``: on error, what was not renamed is
        removed (renamed files stay, journalled as pending by the caller).

        Cancellation: runs to completion in its worker thread once started.

        Raises:
            NoSpaceError, StoreIOError: An fsync or rename failed (an fsync failure is
                reported through ``on_fsync_failure`` first).
        """
        await trio.to_thread.run_sync(self._publish_many_sync, staged, limiter=self._limiter)

    async def discard_many(self, staged: Sequence[Staged]) -> None:
        """Remove staged chunks (best effort, never raises)."""

        def run() -> None:
            for item in staged:
                self._drop_temp(item.temp, item.fd)

        await trio.to_thread.run_sync(run, limiter=self._limiter)

    async def get(self, key: bytes, into: memoryview, offset: int, verify: Verify) -> None:
        """Read a chunk range into ``into`` and verify it (see :class:`ObjectStore`).

        Raises:
            CorruptDataError: The chunk is missing, short, or ``verify`` rejects it.
            StoreIOError: The read failed.
        """
        await trio.to_thread.run_sync(
            self._get_sync, key, into, offset, verify, limiter=self._limiter
        )

    async def delete(self, keys: Sequence[bytes]) -> None:
        """Unlink chunk files and fsync their shards.

        Raises:
            StoreIOError: An unlink or fsync failed (some files may be gone).
        """
        await trio.to_thread.run_sync(self._delete_sync, keys, limiter=self._limiter)

    async def list_all(self) -> dict[str, list[str]]:
        """The names in each shard directory (one worker thread call)."""

        def run() -> dict[str, list[str]]:
            with translating("list chunks"):
                return {s: self._fs.listdir(f"{self.chunk_dir}/{s}") for s in SHARDS}

        return await trio.to_thread.run_sync(run, limiter=self._limiter)

    # --- LocalObjects ---------------------------------------------------------------------------

    def open_verified(self, key: bytes, length: int, digest: bytes) -> int:
        """Open a chunk and verify it by hashing a read-only mapping of it (no copy into
        user space), so that the caller can ``sendfile`` verified bytes (blocking).

        Raises:
            CorruptDataError: Missing, short, or not matching ``digest``.
            StoreIOError: The open or read failed.
        """
        with translating("open chunk"):
            try:
                fd = self._fs.open(self.path(key), os.O_RDONLY)
            except FileNotFoundError as exc:
                msg = f"chunk {key.hex()} is missing"
                raise CorruptDataError(msg) from exc
            try:
                if self._fs.fstat(fd).st_size < length:
                    msg = f"chunk {key.hex()} is truncated"
                    raise CorruptDataError(msg)
                if length:
                    with self._fs.map_read(fd, length) as mapped:
                        actual = blake3.blake3(mapped).digest()
                else:
                    actual = blake3.blake3(b"").digest()
                if actual != digest:
                    msg = f"chunk {key.hex()} failed verification"
                    raise CorruptDataError(msg)
            except BaseException:
                self._fs.close(fd)
                raise
            return fd

    def _stage_sync(
        self, src: int, offset: int, length: int, hasher: blake3.blake3, buf: bytearray
    ) -> Staged:
        with translating("copy from client file"):
            # As for streamed chunks (see _write_temp): reading the client's cached file and
            # writing directly beats a kernel copy into fresh page-cache pages.
            temp, fd, direct = self._new_temp(direct=length >= _DIRECT_ALIGN)
            try:
                copied = (
                    self._read_write_range(src, fd, offset, length, hasher, buf, direct=True)
                    if direct
                    else self._copy_range(src, fd, offset, length, hasher, buf)
                )
                if copied is None:
                    # Copied in the kernel: hash what landed in the temp file, not the source,
                    # so that a client changing its file meanwhile cannot make the chunk's
                    # content differ from its name.
                    with self._fs.map_read(fd, length) as mapped:
                        digest = hash_chunk(mapped, hasher)
                else:
                    digest = copied
            except BaseException:
                self._drop_temp(temp, fd)
                raise
            return Staged(temp=temp, fd=fd, digest=digest, length=length)

    def _copy_range(
        self, src: int, dst: int, offset: int, length: int, hasher: blake3.blake3, buf: bytearray
    ) -> bytes | None:
        """Copy with copy_file_range (returns None) or, where the kernel cannot, with
        pread/write through ``buf``, hashing on the way (returns the chunk digest)."""
        done = 0
        while done < length:
            try:
                got = self._fs.copy_file_range(src, dst, length - done, offset + done, done)
            except OSError as exc:
                if done == 0 and exc.errno in _COPY_FALLBACK_ERRNOS:
                    return self._read_write_range(src, dst, offset, length, hasher, buf)
                raise
            if got == 0:
                msg = f"client file ended {length - done} bytes early (it shrank)"
                raise InvalidArgumentError(msg)
            done += got
        return None

    def _read_write_range(
        self,
        src: int,
        dst: int,
        offset: int,
        length: int,
        hasher: blake3.blake3,
        buf: bytearray,
        *,
        direct: bool = False,
    ) -> bytes:
        view = memoryview(buf)[:length]
        done = 0
        while done < length:
            got = self._fs.pread_into(src, view[done:], offset + done)
            if got == 0:
                msg = f"client file ended {length - done} bytes early (it shrank)"
                raise InvalidArgumentError(msg)
            done += got
        digest = hash_chunk(view, hasher)
        if direct:
            self._write_direct(dst, view)
        else:
            self._write_all(dst, view)
        return digest

    async def stage_from_fd(
        self, src: int, offset: int, length: int, hasher: blake3.blake3, buf: bytearray
    ) -> Staged:
        """Copy a range of a client's file into a temp file and hash it (see
        :class:`LocalObjects`); ``hasher`` is updated with the same bytes.

        Raises:
            InvalidArgumentError: The client's file is shorter than declared.
            NoSpaceError, StoreIOError: The copy failed.
        """
        return await trio.to_thread.run_sync(
            self._stage_sync, src, offset, length, hasher, buf, limiter=self._limiter
        )
