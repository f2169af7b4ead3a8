"""The file-system interface every I/O operation of the store goes through.

The store never calls ``os`` directly for its data files: it calls an :class:`FS`. The real one,
:class:`OsFS`, is a thin veneer over ``os``; tests substitute shims that count operations, inject
faults (ENOSPC, EIO) at any of them, or model what a crash would leave on disk. The metadata
commit is one operation of this interface too (:meth:`FS.commit_metadata`), so a shim sees the
whole durable order: chunk data written and fsynced, directory entries fsynced, then the commit
that references them.

All methods are blocking and raise :class:`OSError`; the store calls them from worker threads
(except where noted) and translates errors at one boundary (``_translate.translating``).
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
from collections.abc import Callable
from typing import Final, Protocol

#: sync_file_range(2) flag: start writeback of the range's dirty pages, do not wait.
_SYNC_FILE_RANGE_WRITE: Final = 2


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's ``sync_file_range`` (Linux), or ``None`` where there is none."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_sync_file_range: Final = _load_sync_file_range()


class FS(Protocol):
    """The operations the store performs on its data directory (and on ingested fds)."""

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        """``os.open``."""
        ...

    def close(self, fd: int) -> None:
        """``os.close``."""
        ...

    def pread_into(self, fd: int, buf: memoryview, offset: int) -> int:
        """Read up to ``len(buf)`` bytes at ``offset`` into ``buf``; returns the count."""
        ...

    def write(self, fd: int, data: memoryview) -> int:
        """``os.write``: may write less than ``len(data)``."""
        ...

    def map_read(self, fd: int, length: int) -> mmap.mmap:
        """Map the first ``length`` (> 0) bytes of ``fd`` read-only."""
        ...

    def fsync(self, fd: int) -> None:
        """``os.fsync`` of a file or a directory."""
        ...

    def allocate(self, fd: int, length: int) -> None:
        """``os.posix_fallocate(fd, 0, length)``: the blocks of the first ``length`` bytes
        are allocated (ENOSPC if they cannot all be)."""
        ...

    def clear_direct(self, fd: int) -> None:
        """Turn ``O_DIRECT`` off for ``fd`` (``fcntl(F_SETFL)``)."""
        ...

    def start_writeback(self, fd: int) -> None:
        """Ask the kernel to start writing ``fd``'s dirty pages to the device, without
        waiting (a hint: it never fails, and only :meth:`fsync` makes data durable)."""
        ...

    def rename(self, src: str, dst: str) -> None:
        """``os.rename`` (atomic replace of ``dst``)."""
        ...

    def unlink(self, path: str) -> None:
        """``os.unlink``."""
        ...

    def mkdir(self, path: str) -> None:
        """``os.mkdir`` with mode 0o700."""
        ...

    def listdir(self, path: str) -> list[str]:
        """``os.listdir``."""
        ...

    def fstat(self, fd: int) -> os.stat_result:
        """``os.fstat``."""
        ...

    def statvfs(self, path: str) -> os.statvfs_result:
        """``os.statvfs``."""
        ...

    def commit_metadata(self, commit: Callable[[], None]) -> None:
        """Run ``commit``, the metadata store's atomic, durable commit of one transaction."""
        ...


class OsFS:
    """The real file system."""

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        return os.open(path, flags | os.O_CLOEXEC, mode)

    def close(self, fd: int) -> None:
        os.close(fd)

    def pread_into(self, fd: int, buf: memoryview, offset: int) -> int:
        return os.preadv(fd, [buf], offset)

    def write(self, fd: int, data: memoryview) -> int:
        return os.write(fd, data)

    def map_read(self, fd: int, length: int) -> mmap.mmap:
        return mmap.mmap(fd, length, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def allocate(self, fd: int, length: int) -> None:
        os.posix_fallocate(fd, 0, length)

    def clear_direct(self, fd: int) -> None:
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)

    def start_writeback(self, fd: int) -> None:
        # A later fsync then mostly waits for writes already under way instead of starting
        # them all at once; errors surface there, so the result is ignored here.
        if _sync_file_range is not None:
            _sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def mkdir(self, path: str) -> None:
        os.mkdir(path, 0o700)

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def fstat(self, fd: int) -> os.stat_result:
        return os.fstat(fd)

    def statvfs(self, path: str) -> os.statvfs_result:
        return os.statvfs(path)

    def commit_metadata(self, commit: Callable[[], None]) -> None:
        commit()
