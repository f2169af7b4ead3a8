"""File-system shims for the store's tests: count operations, inject faults, model crashes.

All shims wrap :class:`OsFS` (the real file system) and are thread-safe: the store calls them
from worker threads.
"""

from __future__ import annotations

import errno as errno_module
import os
import sqlite3
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import blake3

from librorum.store.fs import OsFS

#: Operations that change what is on disk: the crash points.
MUTATING = frozenset({"create", "write", "fsync", "rename", "unlink", "mkdir", "commit"})
#: Files of the data directory the crash model leaves to SQLite (its own durability), and
#: the space reserve (space, not data: the store allocates it again when it is missing).
_DB_FILES = frozenset({"meta.db", "meta.db-wal", "meta.db-shm", "LOCK", "reserve"})


class RecordingFS(OsFS):
    """Records every operation as (name, detail); subclasses hook :meth:`_before`."""

    def __init__(self) -> None:
        self.trace: list[tuple[str, str]] = []
        self._lock = threading.RLock()
        self._fd_paths: dict[int, str] = {}

    def _before(self, op: str, detail: str) -> None:
        """Called before each operation, under the lock."""

    def _op(self, op: str, detail: str = "") -> None:
        with self._lock:
            self.trace.append((op, detail))
            self._before(op, detail)

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        creates = bool(flags & os.O_CREAT) and not os.path.exists(path)
        self._op("create" if creates else "open", path)
        fd = super().open(path, flags, mode)
        with self._lock:
            self._fd_paths[fd] = path
            if creates:
                self._created(path)
        return fd

    def _created(self, path: str) -> None:
        """A file was created at ``path`` (under the lock)."""

    def close(self, fd: int) -> None:
        # close releases the descriptor even when it reports an error: fail after it.
        with self._lock:
            path = self._fd_paths.pop(fd, "?")
        super().close(fd)
        self._op("close", path)

    def pread_into(self, fd: int, buf: memoryview, offset: int) -> int:
        self._op("read", self._fd_paths.get(fd, "?"))
        return super().pread_into(fd, buf, offset)

    def write(self, fd: int, data: memoryview) -> int:
        self._op("write", self._fd_paths.get(fd, "?"))
        return super().write(fd, data)

    def map_read(self, fd: int, length: int):  # type: ignore[no-untyped-def]
        self._op("map_read", self._fd_paths.get(fd, "?"))
        return super().map_read(fd, length)

    def allocate(self, fd: int, length: int) -> None:
        self._op("allocate", self._fd_paths.get(fd, "?"))
        super().allocate(fd, length)

    def fsync(self, fd: int) -> None:
        path = self._fd_paths.get(fd, "?")
        self._op("fsync", path)
        super().fsync(fd)
        with self._lock:
            self._synced(fd, path)

    def start_writeback(self, fd: int) -> None:
        # A hint with no effect on what survives a crash: traced, never a crash point.
        self._op("writeback", self._fd_paths.get(fd, "?"))
        super().start_writeback(fd)

    def _synced(self, fd: int, path: str) -> None:
        """``fd`` (at ``path``) was fsynced (under the lock)."""

    def rename(self, src: str, dst: str) -> None:
        self._op("rename", f"{src} -> {dst}")
        super().rename(src, dst)

    def unlink(self, path: str) -> None:
        self._op("unlink", path)
        super().unlink(path)

    def mkdir(self, path: str) -> None:
        self._op("mkdir", path)
        super().mkdir(path)
        with self._lock:
            self._made_dir(path)

    def _made_dir(self, path: str) -> None:
        """A directory was created (under the lock)."""

    def listdir(self, path: str) -> list[str]:
        self._op("listdir", path)
        return super().listdir(path)

    def fstat(self, fd: int) -> os.stat_result:
        self._op("fstat", self._fd_paths.get(fd, "?"))
        return super().fstat(fd)

    def statvfs(self, path: str) -> os.statvfs_result:
        self._op("statvfs", path)
        return super().statvfs(path)

    def commit_metadata(self, commit: Callable[[], None]) -> None:
        self._op("commit")
        commit()
        with self._lock:
            self._committed()

    def _committed(self) -> None:
        """A metadata transaction committed (under the lock)."""


class FaultFS(RecordingFS):
    """Once armed, raises ``OSError(error)`` at operation number ``fail_at`` (0-based,
    counting every operation since arming), once."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_at: int | None = None
        self.error = errno_module.EIO
        self.fired: tuple[str, str] | None = None
        self.counted = 0
        self._armed = False
        self._only: frozenset[str] | None = None

    def arm(
        self, fail_at: int | None, error: int = errno_module.EIO, only: frozenset[str] | None = None
    ) -> None:
        """Fail the ``fail_at``-th operation from now (counting only operations named in
        ``only``, if given)."""
        with self._lock:
            self.fail_at, self.error, self.counted, self._armed = fail_at, error, 0, True
            self._only = only

    def disarm(self) -> None:
        with self._lock:
            self._armed = False
            self.fail_at = None

    def _before(self, op: str, detail: str) -> None:
        if not self._armed or (self._only is not None and op not in self._only):
            return
        index = self.counted
        self.counted += 1
        if index == self.fail_at:
            self.fail_at = None
            self.fired = (op, detail)
            raise OSError(self.error, os.strerror(self.error), detail)


class CrashFS(RecordingFS):
    """Models what a power loss would leave of the data directory, at every crash point.

    The model: a file's content is what it held at its last fsync (nothing if never
    fsynced); a directory's entries are what they were at its last fsync; the metadata is what
    SQLite had committed. Before every mutating operation (and at :meth:`finish`) the shim
    writes that state out as a new directory, ``crash-<n>``, under ``out``: what the store
    would find on restart had it crashed right there.

    It also audits the protocol as it goes: after each metadata commit, every chunk the
    metadata holds must be durable (a durable entry in its shard whose durable content hashes
    to its name); each rename's target directory must be fsynced before the next commit.
    """

    def __init__(self, root: Path, out: Path) -> None:
        super().__init__()
        self.root = str(root)
        self.out = out
        self.snapshots: list[Path] = []
        self.audit_failures: list[str] = []
        self.commits_audited = 0
        self.renames_audited = 0
        self._unsynced_renames: set[str] = set()
        self._next_node = 0
        self._node_of_ino: dict[int, int] = {}
        self._dir_nodes: dict[int, str] = {}
        self._content: dict[int, bytes] = {}
        self._entries: dict[str, dict[str, int]] = {}
        self._scan(self.root)

    # --- the durable model ---------------------------------------------------------------------

    def _rel(self, path: str) -> str:
        return os.path.relpath(path, self.root)

    def _node(self, ino: int, *, fresh: bool = False) -> int:
        if fresh or ino not in self._node_of_ino:
            self._next_node += 1
            self._node_of_ino[ino] = self._next_node
        return self._node_of_ino[ino]

    def _listing(self, path: str) -> dict[str, int]:
        names = os.listdir(path)
        if path == self.root:
            names = [n for n in names if n not in _DB_FILES]
        return {n: self._node(os.lstat(os.path.join(path, n)).st_ino) for n in names}

    def _scan(self, path: str) -> None:
        # At install, everything on disk counts as durable (the setup ran on the real FS).
        rel = self._rel(path)
        self._dir_nodes[self._node(os.lstat(path).st_ino)] = rel
        self._entries[rel] = self._listing(path)
        for name in self._entries[rel]:
            full = os.path.join(path, name)
            if stat.S_ISDIR(os.lstat(full).st_mode):
                self._scan(full)
            else:
                self._content[self._node(os.lstat(full).st_ino)] = Path(full).read_bytes()

    def _created(self, path: str) -> None:
        self._node(os.lstat(path).st_ino, fresh=True)

    def _made_dir(self, path: str) -> None:
        node = self._node(os.lstat(path).st_ino, fresh=True)
        rel = self._rel(path)
        self._dir_nodes[node] = rel
        self._entries[rel] = {}

    def _synced(self, fd: int, path: str) -> None:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            rel = self._rel(path)
            self._entries[rel] = self._listing(path)
            self._unsynced_renames.discard(os.path.normpath(path))
        else:
            # Through a descriptor of our own: the store's may be O_DIRECT, which refuses
            # unaligned reads.
            with open(f"/proc/self/fd/{fd}", "rb") as own:
                self._content[self._node(st.st_ino)] = own.read()

    def rename(self, src: str, dst: str) -> None:
        super().rename(src, dst)
        with self._lock:
            self._unsynced_renames.add(os.path.dirname(dst))
            self.renames_audited += 1

    def _before(self, op: str, detail: str) -> None:
        if op in MUTATING:
            self._snapshot()

    def _committed(self) -> None:
        self.commits_audited += 1
        if self._unsynced_renames:
            self.audit_failures.append(
                f"commit #{self.commits_audited} before fsync of {sorted(self._unsynced_renames)}"
            )
        db = sqlite3.connect(os.path.join(self.root, "meta.db"))
        try:
            digests = [bytes(r[0]) for r in db.execute("SELECT digest FROM chunks")]
        finally:
            db.close()
        for digest in digests:
            name = digest.hex()
            node = self._entries.get(f"chunks/{name[:2]}", {}).get(name)
            content = self._content.get(node) if node is not None else None
            if content is None or blake3.blake3(content).digest() != digest:
                self.audit_failures.append(
                    f"commit #{self.commits_audited} references non-durable chunk {name}"
                )

    # --- snapshots -------------------------------------------------------------------------------

    def _build(self, rel: str, dest: Path) -> None:
        for name, node in self._entries.get(rel, {}).items():
            if node in self._dir_nodes:
                (dest / name).mkdir()
                self._build(self._dir_nodes[node], dest / name)
            else:
                (dest / name).write_bytes(self._content.get(node, b""))

    def _snapshot(self) -> None:
        dest = self.out / f"crash-{len(self.snapshots)}"
        dest.mkdir(parents=True)
        self._build(".", dest)
        src = sqlite3.connect(os.path.join(self.root, "meta.db"))
        dst = sqlite3.connect(dest / "meta.db")
        try:
            src.backup(dst)
        finally:
            src.close()
            dst.close()
        self.snapshots.append(dest)

    def finish(self) -> None:
        """Take the last snapshot (a crash after the workload completed)."""
        with self._lock:
            self._snapshot()


class DiskFS(RecordingFS):
    """A disk of ``capacity`` bytes, modelled: bytes written to (or allocated for) files
    through the shim use space, removing or replacing a file gives its space back, a
    metadata commit needs ``commit_cost`` bytes free (SQLite appends to its log), and
    ``statvfs`` reports what is left. A write past the last byte writes what fits, then fails
    with ENOSPC, as a real file system does. :meth:`fill` takes every byte left, as another
    program filling the disk would; :meth:`free_up` gives bytes back.
    """

    BLOCK = 4096

    def __init__(self, capacity: int, commit_cost: int = 4096) -> None:
        super().__init__()
        self.capacity = capacity
        self.commit_cost = commit_cost
        self.used = 0
        self.others = 0  # bytes taken by "other programs" (fill)
        self._sizes: dict[str, int] = {}

    @property
    def free(self) -> int:
        return max(0, self.capacity - self.used - self.others)

    def fill(self) -> None:
        with self._lock:
            self.others += self.free

    def free_up(self, amount: int) -> None:
        with self._lock:
            self.others = max(0, self.others - amount)

    def _enospc(self, detail: str) -> OSError:
        return OSError(errno_module.ENOSPC, os.strerror(errno_module.ENOSPC), detail)

    def write(self, fd: int, data: memoryview) -> int:
        with self._lock:
            path = self._fd_paths.get(fd, "?")
            if len(data) > self.free:
                # What fits, in whole blocks (as O_DIRECT needs); nothing fits: ENOSPC.
                data = data[: self.free - self.free % self.BLOCK]
                if not data:
                    self.trace.append(("write", path))
                    raise self._enospc(path)
            written = super().write(fd, data)
            self.used += written
            self._sizes[path] = self._sizes.get(path, 0) + written
            return written

    def allocate(self, fd: int, length: int) -> None:
        with self._lock:
            path = self._fd_paths.get(fd, "?")
            need = length - self._sizes.get(path, 0)
            if need > self.free:
                self.trace.append(("allocate", path))
                raise self._enospc(path)
            super().allocate(fd, length)
            self.used += max(0, need)
            self._sizes[path] = max(length, self._sizes.get(path, 0))

    def unlink(self, path: str) -> None:
        with self._lock:
            super().unlink(path)
            self.used -= self._sizes.pop(path, 0)

    def rename(self, src: str, dst: str) -> None:
        with self._lock:
            super().rename(src, dst)
            self.used -= self._sizes.pop(dst, 0)
            if src in self._sizes:
                self._sizes[dst] = self._sizes.pop(src)

    def commit_metadata(self, commit: Callable[[], None]) -> None:
        with self._lock:
            if self.free < self.commit_cost:
                self.trace.append(("commit", ""))
                raise self._enospc("metadata commit")
        super().commit_metadata(commit)

    def statvfs(self, path: str) -> os.statvfs_result:
        real = super().statvfs(path)
        blocks = self.capacity // self.BLOCK
        free = self.free // self.BLOCK
        return os.statvfs_result(
            (
                self.BLOCK,
                self.BLOCK,
                blocks,
                free,
                free,
                real.f_files,
                real.f_ffree,
                real.f_favail,
                real.f_flag,
                real.f_namemax,
            )
        )
