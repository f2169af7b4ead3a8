"""What the store gives a storage backend when it opens one, and the embedded defaults.

A backend is chosen by passing :func:`~librorum.store.store.open_store` a factory for each
half: ``metadata`` (a :class:`~librorum.store.meta.MetadataStore`) and ``objects`` (an
:class:`~librorum.store.objects.ObjectStore`). The store calls each factory once per open
with a :class:`BackendContext`, which carries what a backend needs from the store: where the
data directory is, the file-system interface, the worker-thread limiter, and the hooks
through which it reports a failed fsync or commit (the store then turns read-only), asks for
the space reserve, or checks the free-space floor. The factories default to
:func:`sqlite_metadata` and :func:`local_chunk_files`, which need nothing but the data
directory.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Final

import attrs
import trio

from librorum.histogram import LockedHistogram
from librorum.store.fs import FS
from librorum.store.meta import MetadataStore
from librorum.store.objects import LocalChunkStore, ObjectStore
from librorum.store.sqlite import SqliteMetadataStore

#: The SQLite database's name in the data directory.
DB_NAME: Final = "meta.db"


@attrs.frozen
class BackendContext:
    """What a backend is given at open.

    Attributes:
        data_dir: The store's data directory (it exists, and the store holds its lock).
        fs: The file-system interface every file-system call goes through (tests pass
            shims that count calls, inject faults or model crashes).
        io_limiter: Bounds the worker threads of chunk I/O and hashing.
        lock_timeout: Longest wait for a lock (seconds) before TimeoutError_.
        on_fatal_io: Call (from any thread) when an fsync or a commit failed and its outcome
            on disk is unknown: the store stops acknowledging writes.
        release_reserve: Call (from a worker thread) when a write that may use the space
            reserve failed for lack of space; returns whether space was given back.
        check_space: Call (from a worker thread) before storing new data; raises
            NoSpaceError below the free-space floor.
        fsync_latency: Where a backend records how long each of its fsyncs took (seconds,
            from any thread): the store's public figures (``Store.fsync_latency``).
        commit_latency: The same for each metadata commit (which makes its log durable:
            SQLite's COMMIT fsyncs the WAL); ``Store.commit_latency``.
    """

    data_dir: Path
    fs: FS
    io_limiter: trio.CapacityLimiter
    lock_timeout: float
    on_fatal_io: Callable[[BaseException], None]
    release_reserve: Callable[[], bool]
    check_space: Callable[[str], None]
    fsync_latency: LockedHistogram = attrs.field(factory=LockedHistogram)
    commit_latency: LockedHistogram = attrs.field(factory=LockedHistogram)


#: Opens the metadata store for one open of the store.
MetadataFactory = Callable[[BackendContext], MetadataStore]
#: Opens the object store for one open of the store.
ObjectFactory = Callable[[BackendContext], ObjectStore]


def sqlite_metadata(ctx: BackendContext) -> SqliteMetadataStore:
    """The embedded metadata store: ``meta.db`` in the data directory."""
    return SqliteMetadataStore(
        str(ctx.data_dir / DB_NAME),
        ctx.fs,
        on_commit_failure=ctx.on_fatal_io,
        release_reserve=ctx.release_reserve,
        lock_timeout=ctx.lock_timeout,
        commit_latency=ctx.commit_latency,
    )


def local_chunk_files(ctx: BackendContext) -> LocalChunkStore:
    """The embedded object store: chunk files under the data directory."""
    return LocalChunkStore(
        str(ctx.data_dir),
        ctx.fs,
        limiter=ctx.io_limiter,
        on_fsync_failure=ctx.on_fatal_io,
        check_space=ctx.check_space,
        fsync_latency=ctx.fsync_latency,
    )
