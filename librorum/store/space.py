"""Free space: a floor under new data, and a reserve that keeps the metadata writable.

A disk full to the last byte must not wedge the store: deleting files is how space comes
back, and a delete is a metadata transaction, which needs a little space of its own (SQLite
appends it to its write-ahead log, and must create that log and its index when it opens).
Two mechanisms keep that space available:

* **The floor** (``min_free_space``). New data (an upload's chunks, a new file, a new
  directory, a new resumable upload) is refused with NoSpaceError once the space available
  to the store falls below it: at the start of the request and again at the start of every
  chunk, so an upload in flight stops there and its temp files go. Deletes, renames and
  reads are never refused for space; writes are admitted again as soon as deletes bring the
  free space back above the floor, without a restart.
* **The reserve** (``metadata_reserve``). A file of that many bytes, ``reserve`` in the data
  directory, allocated while there is room. Uploads in flight when the floor was crossed, or
  other programs, can still fill the disk to the last byte; then a metadata write that needs
  no new data (a delete, a rename, forgetting an upload, the collector's journal, a
  quarantine record) and fails for lack of space releases the reserve and is retried once,
  and opening the store does the same. While the reserve is released, its size is added to
  the floor, so that new data cannot take the space it gave back; it is allocated again as
  soon as the free space allows (after a collection, or at the next data write's check).

The floor is checked against ``statvfs``'s space available to unprivileged users; the
reserve is allocated with ``posix_fallocate`` (blocks really taken, not a sparse file).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Final

from librorum.errors import NoSpaceError, StoreError
from librorum.store._translate import translating
from librorum.store.fs import FS

log = logging.getLogger("librorum.store")

#: The reserve file's name in the data directory.
RESERVE_NAME: Final = "reserve"


class SpaceGuard:
    """The free-space policy of one store (see the module docstring). Thread-safe: the
    store, the object store and the metadata writer call it from their own threads.

    Args:
        data_dir: The store's directory (where the reserve lives, whose file system counts).
        fs: The file-system interface.
        min_free: The floor, in bytes.
        reserve: The reserve's size, in bytes (0: no reserve).
    """

    def __init__(self, data_dir: str, fs: FS, *, min_free: int, reserve: int) -> None:
        self.data_dir = data_dir
        self.path = os.path.join(data_dir, RESERVE_NAME)
        self.min_free = min_free
        self.reserve = reserve
        self._fs = fs
        self._lock = threading.Lock()
        # Whether the reserve file holds its space; unknown (False) until open.
        self._held = False

    @property
    def reserve_held(self) -> bool:
        """Whether the reserve currently holds its space."""
        return self._held

    def load_sync(self) -> None:
        """At open: whether the reserve file is there, holding its space (blocking)."""
        with self._lock:
            try:
                self._held = self._exists()
            except OSError:
                self._held = False

    def free_sync(self) -> int:
        """Bytes available to the store on its file system (blocking).

        Raises:
            StoreIOError: statvfs failed.
        """
        with translating("statvfs"):
            st = self._fs.statvfs(self.data_dir)
            return st.f_bavail * st.f_frsize

    def floor(self) -> int:
        """The free space new data must leave: the floor, plus the reserve while it is
        released (its space must come back to it first)."""
        return self.min_free + (0 if self._held else self.reserve)

    def check_data_sync(self, what: str) -> None:
        """Admit new data, or refuse it (blocking). Tries to allocate a released reserve
        again first, when there is room for it.

        Raises:
            NoSpaceError: The free space is below the floor.
            StoreIOError: statvfs failed.
        """
        free = self.free_sync()
        if not self._held and self.reserve and free >= self.min_free + self.reserve:
            self.restore_sync()
            free = self.free_sync()
        if free < self.floor():
            msg = (
                f"{what}: {free} bytes free, below the store's floor of {self.floor()} "
                "(free space by deleting files)"
            )
            raise NoSpaceError(msg)

    def restore_sync(self) -> bool:
        """Allocate the reserve if it is not held and the free space allows it without
        going below the floor; returns whether the reserve is held now (blocking; never
        raises)."""
        if not self.reserve:
            return True
        with self._lock:
            if self._held:
                return True
            try:
                if self.free_sync() < self.min_free + self.reserve and not self._exists():
                    return False
                self._allocate()
            except (OSError, StoreError) as exc:
                # No room yet (or statvfs failed): the next collection or data write tries
                # again.
                log.info("metadata reserve not allocated yet: %s", exc)
                return False
            self._held = True
            return True

    def release_sync(self) -> bool:
        """Give the reserve's space back to the file system, for a metadata write that
        found none (blocking). Returns whether there was anything to release."""
        with self._lock:
            if not self._held:
                return False
            self._held = False
            try:
                self._fs.unlink(self.path)
            except FileNotFoundError:
                return False
            except OSError as exc:
                log.error("metadata reserve could not be released: %s", exc)
                return False
        log.warning(
            "the disk is full: released the %d-byte metadata reserve so that deletes go on; "
            "new data is refused until space is freed",
            self.reserve,
        )
        return True

    def _exists(self) -> bool:
        try:
            fd = self._fs.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            return self._fs.fstat(fd).st_size >= self.reserve
        finally:
            self._fs.close(fd)

    def _allocate(self) -> None:
        """Create (or complete) the reserve file with all its blocks allocated."""
        fd = self._fs.open(self.path, os.O_RDWR | os.O_CREAT)
        try:
            try:
                self._fs.allocate(fd, self.reserve)
            except OSError:
                # Not all of it: give back what was taken, the disk has no room to spare.
                self._fs.close(fd)
                fd = -1
                self._fs.unlink(self.path)
                raise
        finally:
            if fd >= 0:
                self._fs.close(fd)
