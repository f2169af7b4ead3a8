"""The implementations the conformance suite runs on, and what it needs from each.

To add an implementation (PostgreSQL + S3, say): write a :class:`Backend` subclass that
starts or reaches the service, returns factories for ``open_store`` and can damage a stored
object, and add it to :data:`BACKENDS`. Every test of the suite then runs on it.
"""

from __future__ import annotations

import abc
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import ClassVar

import attrs
import trio

from librorum.store.backend import (
    BackendContext,
    MetadataFactory,
    ObjectFactory,
    local_chunk_files,
    sqlite_metadata,
)
from librorum.store.fs import FS, OsFS
from librorum.store.memory import MemoryMetadata, MemoryObjects, memory_backend
from librorum.store.meta import MetadataStore
from librorum.store.objects import ObjectStore
from tests.store.fsshim import CrashFS


class Backend(abc.ABC):
    """One metadata store and one object store under test, over durable state that
    outlives each open (a directory, a server, or in-memory state)."""

    #: The name tests are parametrized with.
    name: ClassVar[str]

    def __init__(self, root: Path) -> None:
        self.root = root
        #: What the store would report through ``on_fatal_io``.
        self.fatal: list[BaseException] = []

    @abc.abstractmethod
    def factories(self) -> tuple[MetadataFactory, ObjectFactory]:
        """The factories ``open_store`` takes."""

    @property
    def fs(self) -> FS:
        """The file-system interface the backend is opened with."""
        return OsFS()

    @abc.abstractmethod
    def damage(self, key: bytes) -> None:
        """Change the bytes stored under ``key`` in place, as bit rot would."""

    @abc.abstractmethod
    def crashed(self) -> Backend:
        """A backend over what a power loss right now would leave of the durable state
        (the backend itself is not used again)."""

    def context(self) -> BackendContext:
        return BackendContext(
            data_dir=self.root,
            fs=self.fs,
            io_limiter=trio.CapacityLimiter(4),
            lock_timeout=5.0,
            on_fatal_io=self.fatal.append,
            release_reserve=lambda: False,
            check_space=lambda what: None,
        )


class LocalBackend(Backend):
    """The embedded defaults: SQLite and chunk files in a directory. With ``crash_model``,
    every file-system call goes through :class:`CrashFS`, and :meth:`crashed` is the
    directory a power loss would leave (unsynced data and directory entries dropped)."""

    name = "sqlite+files"

    def __init__(self, root: Path, *, crash_model: bool = False) -> None:
        super().__init__(root)
        root.mkdir(parents=True, exist_ok=True)
        self._fs: FS = OsFS()
        if crash_model:
            self._fs = CrashFS(root, root.parent / f"{root.name}-crashes")

    @property
    def fs(self) -> FS:
        return self._fs

    def factories(self) -> tuple[MetadataFactory, ObjectFactory]:
        return sqlite_metadata, local_chunk_files

    def damage(self, key: bytes) -> None:
        name = key.hex()
        path = self.root / "chunks" / name[:2] / name
        data = bytearray(path.read_bytes())
        data[0] ^= 0xFF
        path.write_bytes(bytes(data))

    def crashed(self) -> Backend:
        fs = self._fs
        assert isinstance(fs, CrashFS), "crashed() needs crash_model=True"
        fs.finish()
        assert not fs.audit_failures, fs.audit_failures
        return LocalBackend(fs.snapshots[-1])


class MemoryBackend(Backend):
    """The in-memory pair. Everything committed or published is durable; a crash loses
    only staged objects (``clear_temp_sync`` drops them at the next open)."""

    name = "memory"

    def __init__(
        self,
        root: Path,
        *,
        crash_model: bool = False,
        metadata: MemoryMetadata | None = None,
        objects: MemoryObjects | None = None,
    ) -> None:
        super().__init__(root)
        root.mkdir(parents=True, exist_ok=True)
        self.metadata = metadata if metadata is not None else MemoryMetadata()
        self.objects = objects if objects is not None else MemoryObjects()

    def factories(self) -> tuple[MetadataFactory, ObjectFactory]:
        return memory_backend(self.metadata, self.objects)

    def damage(self, key: bytes) -> None:
        generation, data = self.objects.objects[key]
        self.objects.objects[key] = (generation, bytes([data[0] ^ 0xFF]) + data[1:])

    def crashed(self) -> Backend:
        return MemoryBackend(self.root, metadata=self.metadata, objects=self.objects)


#: Every implementation the suite runs on, by name.
BACKENDS: dict[str, type[LocalBackend | MemoryBackend]] = {
    LocalBackend.name: LocalBackend,
    MemoryBackend.name: MemoryBackend,
}


@attrs.frozen
class Opened:
    """A backend's two stores, opened as the store opens them."""

    meta: MetadataStore
    objects: ObjectStore
    context: BackendContext


@asynccontextmanager
async def opened(backend: Backend, *, close: bool = True) -> AsyncIterator[Opened]:
    """Open both stores as ``open_store`` does, and close them on exit (unless ``close`` is
    false: the process "dies" with them open)."""
    ctx = backend.context()
    metadata, objects = backend.factories()
    meta, obj = metadata(ctx), objects(ctx)
    await trio.to_thread.run_sync(obj.init_sync)
    await trio.to_thread.run_sync(meta.open_sync)
    meta.open_reader()
    try:
        yield Opened(meta=meta, objects=obj, context=ctx)
    finally:
        if close:
            meta.close_reader()
            await trio.to_thread.run_sync(meta.close_writer)


def random_bytes(size: int) -> bytes:
    return os.urandom(size)
