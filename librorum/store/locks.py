"""In-memory coordination of the store's tasks: keyed locks, chunk pins, buffer pools.

Everything here is used from the Trio thread only (never from worker threads), so plain
dictionaries need no locking of their own.
"""

from __future__ import annotations

import mmap
from collections.abc import AsyncIterator, Hashable, Iterable
from contextlib import asynccontextmanager
from typing import Generic, TypeVar

import trio

from librorum.activity import Wait, waiting
from librorum.errors import TimeoutError_
from librorum.store.objects import new_buffer

K = TypeVar("K", bound=Hashable)


class _Entry:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = trio.Lock()
        self.users = 0


class LockTable(Generic[K]):
    """One lock per key, created on demand and dropped when nobody holds or waits for it.

    This is a lock table sharded all the way down: every key gets its own lock, so two
    different keys never contend (no false sharing, which a fixed number of shards would
    cause), and the table holds only the keys of operations in flight, so it is bounded by
    them. On a single-threaded event loop the dictionary itself needs no further sharding.
    Locks are FIFO-fair (``trio.Lock``). A request waiting for a lock shows it in the live
    view as ``wait`` (:mod:`librorum.activity`).
    """

    def __init__(self, *, timeout: float, wait: Wait = Wait.DISK) -> None:
        self._entries: dict[K, _Entry] = {}
        self._timeout = timeout
        # What a request waiting here waits on, for the live view (spec 5.21): a path lock,
        # or (chunk locks) another request's chunk I/O.
        self._wait = wait

    def __len__(self) -> int:
        return len(self._entries)

    def locked(self, key: K) -> bool:
        """Whether someone holds the lock of ``key``."""
        entry = self._entries.get(key)
        return entry is not None and entry.lock.locked()

    @asynccontextmanager
    async def hold(self, keys: Iterable[K]) -> AsyncIterator[None]:
        """Hold the locks of ``keys`` (deduplicated, taken in sorted order so that two holders
        of overlapping sets cannot deadlock).

        Cancellation: a cancelled wait takes no lock.

        Raises:
            TimeoutError_: A lock was not obtained within the table's timeout.
        """
        ordered = sorted(set(keys), key=repr)
        entries: list[_Entry] = []
        for key in ordered:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Entry()
            entry.users += 1
            entries.append(entry)
        acquired: list[_Entry] = []
        try:
            with waiting(self._wait), trio.move_on_after(self._timeout) as scope:
                for entry in entries:
                    await entry.lock.acquire()
                    acquired.append(entry)
            if scope.cancelled_caught:
                msg = f"lock wait exceeded {self._timeout} s"
                raise TimeoutError_(msg)
            yield
        finally:
            for entry in acquired:
                entry.lock.release()
            for key, entry in zip(ordered, entries, strict=True):
                entry.users -= 1
                if entry.users == 0:
                    del self._entries[key]


class ChunkPins:
    """Reference counts of chunks in use by operations in flight (uploads not yet committed,
    readers streaming a snapshot). The collector never deletes a pinned chunk.

    Pins are taken synchronously on the Trio thread, inside the same step that read the
    metadata naming the chunks, so no collector decision can fall between the two.
    """

    def __init__(self) -> None:
        self._pins: dict[bytes, int] = {}

    def __len__(self) -> int:
        return len(self._pins)

    def pin(self, digests: Iterable[bytes]) -> None:
        """Pin each digest once per occurrence."""
        for digest in digests:
            self._pins[digest] = self._pins.get(digest, 0) + 1

    def unpin(self, digests: Iterable[bytes]) -> None:
        """Undo :meth:`pin` for each digest."""
        for digest in digests:
            count = self._pins[digest] - 1
            if count:
                self._pins[digest] = count
            else:
                del self._pins[digest]

    def pinned(self, digest: bytes) -> bool:
        """Whether ``digest`` is pinned."""
        return digest in self._pins


class BufferPool:
    """Reusable page-aligned buffers of one size (see ``objects.new_buffer``).

    A few idle buffers are kept so that back-to-back requests do not pay for fresh pages (every
    page of a new buffer faults in, and on a VM that hands idle memory back to its host that
    costs up to 10x). The bound is small on purpose: idle buffers are memory held for
    nothing, and one dropped is given back to the system at once. Buffers in use are bounded
    by their users (uploads and readers, each of which holds a fixed number).
    """

    def __init__(self, size: int, *, max_idle: int) -> None:
        self.size = size
        self._idle: list[mmap.mmap] = []
        self._max_idle = max_idle

    @property
    def idle(self) -> int:
        """Buffers kept for reuse now."""
        return len(self._idle)

    def get(self) -> mmap.mmap:
        """Take a buffer of :attr:`size` bytes (contents undefined)."""
        if self._idle:
            return self._idle.pop()
        return new_buffer(self.size)

    def put(self, buf: mmap.mmap) -> None:
        """Give a buffer back (kept if there is room, else dropped: its pages go back to the
        system once nothing refers to it)."""
        if len(buf) == self.size and len(self._idle) < self._max_idle:
            self._idle.append(buf)
