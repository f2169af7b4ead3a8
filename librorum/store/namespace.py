"""The namespace's rules, as functions over one metadata transaction (:class:`MetaTxn`).

Each function either completes inside the transaction it is given or raises a
:class:`StoreError` before changing anything the caller would keep (the caller rolls the
transaction back). Error precedence, for every operation: the path rules first
(``InvalidPathError``, checked by the caller through ``paths.normalize``), then resolution of
the path's parent directories (``NotFoundError`` for a missing one, ``NotADirectoryError_``
for a file in the way), then the target itself.
"""

from __future__ import annotations

from collections.abc import Sequence

from librorum.domain import EntryKind, WriteMode
from librorum.errors import (
    AlreadyExistsError,
    CorruptDataError,
    InvalidArgumentError,
    IsADirectoryError_,
    NotADirectoryError_,
    NotEmptyError,
    NotFoundError,
)
from librorum.store import paths
from librorum.store.meta import DIGEST_SIZE, KIND_DIR, KIND_FILE, ROOT_ID, EntryRow, MetaTxn
from librorum.store.types import FileInfo


def to_info(path: str, row: EntryRow) -> FileInfo:
    """The public snapshot of a row at ``path``."""
    if row.kind == KIND_FILE:
        return FileInfo(
            path=path,
            kind=EntryKind.FILE,
            size=row.size,
            mtime_ns=row.mtime_ns,
            version=row.version,
            content_hash=row.content_hash,
        )
    return FileInfo(
        path=path, kind=EntryKind.DIRECTORY, size=0, mtime_ns=row.mtime_ns, version=row.version
    )


def digests(row: EntryRow) -> list[bytes]:
    """The chunk digests of a file row, in order."""
    blob = row.chunks or b""
    return [blob[i : i + DIGEST_SIZE] for i in range(0, len(blob), DIGEST_SIZE)]


def chunk_lengths(size: int, chunk_size: int) -> list[int]:
    """The lengths of the chunks of a file of ``size`` bytes (all full but the last)."""
    full, rest = divmod(size, chunk_size)
    return [chunk_size] * full + ([rest] if rest else [])


def resolve(txn: MetaTxn, path: str) -> EntryRow:
    """The entry at normalised ``path``.

    Raises:
        NotFoundError: A component does not exist.
        NotADirectoryError_: A component before the last is a file.
    """
    row = txn.entry(ROOT_ID)
    assert row is not None, "the root row is missing"
    for name in paths.components(path):
        if row.kind != KIND_DIR:
            msg = f"not a directory on the way to {path}"
            raise NotADirectoryError_(msg)
        child = txn.child(row.id, name)
        if child is None:
            msg = f"no such file or directory: {path}"
            raise NotFoundError(msg)
        row = child
    return row


def resolve_parent(txn: MetaTxn, path: str) -> tuple[EntryRow, str]:
    """The directory that holds (or would hold) non-root ``path``, and the last component.

    Raises:
        NotFoundError: The parent does not exist.
        NotADirectoryError_: The parent, or a component on the way, is a file.
    """
    parent_path, name = paths.split(path)
    parent = resolve(txn, parent_path)
    if parent.kind != KIND_DIR:
        msg = f"parent of {path} is not a directory"
        raise NotADirectoryError_(msg)
    return parent, name


def stat(txn: MetaTxn, path: str) -> FileInfo:
    """STAT."""
    return to_info(path, resolve(txn, path))


def list_dir(
    txn: MetaTxn, path: str, cursor: str | None, limit: int
) -> tuple[list[FileInfo], str | None]:
    """One page of LIST.

    Raises:
        NotADirectoryError_: ``path`` is a file.
    """
    row = resolve(txn, path)
    if row.kind != KIND_DIR:
        msg = f"not a directory: {path}"
        raise NotADirectoryError_(msg)
    rows = txn.children(row.id, cursor, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    entries = [to_info(paths.join(path, r.name), r) for r in rows]
    return entries, (rows[-1].name if more and rows else None)


def check_write_target(txn: MetaTxn, path: str, mode: WriteMode) -> EntryRow | None:
    """Check that a file may be written at ``path`` in ``mode``; return the file it replaces.

    Raises:
        NotFoundError: The parent is missing, or ``mode`` is OVERWRITE and nothing is there.
        NotADirectoryError_: The parent is a file.
        AlreadyExistsError: ``mode`` is EXCLUSIVE and something is there.
        IsADirectoryError_: A directory is there (CREATE, OVERWRITE).
    """
    if path == paths.ROOT:
        existing: EntryRow | None = resolve(txn, path)
    else:
        parent, name = resolve_parent(txn, path)
        existing = txn.child(parent.id, name)
    if existing is None:
        if mode is WriteMode.OVERWRITE:
            msg = f"no such file to overwrite: {path}"
            raise NotFoundError(msg)
        return None
    if mode is WriteMode.EXCLUSIVE:
        msg = f"already exists: {path}"
        raise AlreadyExistsError(msg)
    if existing.kind == KIND_DIR:
        msg = f"is a directory: {path}"
        raise IsADirectoryError_(msg)
    return existing


def commit_file(
    txn: MetaTxn,
    path: str,
    mode: WriteMode,
    *,
    size: int,
    content_hash: bytes,
    chunk_size: int,
    chunks: Sequence[tuple[bytes, int]],
    mtime_ns: int,
    upload_id: str | None = None,
) -> tuple[FileInfo, list[bytes]]:
    """Make ``chunks`` the content of the file at ``path``.

    The new content takes its references before the old content and the upload drop theirs,
    so a chunk shared by both is never released in between.

    Returns:
        The new FileInfo and the digests whose last reference was dropped.

    Raises:
        CorruptDataError: A chunk is quarantined: found corrupt since the upload verified or
            wrote it (only a resumed upload's earlier chunks can be; an upload's own chunks
            are published afresh, which heals them). A file is never committed over chunks
            that are not known to be good.
    """
    existing = check_write_target(txn, path, mode)
    if txn.any_quarantined():
        bad = next((d for d, _ in chunks if txn.is_quarantined(d)), None)
        if bad is not None:
            msg = f"chunk {bad.hex()} of the upload to {path} was found corrupt since it was stored"
            raise CorruptDataError(msg)
    version = txn.next_version()
    blob = b"".join(d for d, _ in chunks)
    txn.add_refs(chunks)
    released: list[bytes] = []
    if upload_id is not None:
        released += txn.delete_upload(upload_id)
    if existing is None:
        parent, name = resolve_parent(txn, path)
        row = txn.insert(
            parent.id,
            name,
            KIND_FILE,
            size=size,
            mtime_ns=mtime_ns,
            version=version,
            content_hash=content_hash,
            chunk_size=chunk_size,
            chunks=blob,
        )
    else:
        released += txn.drop_refs(digests(existing))
        row = txn.set_content(
            existing,
            size=size,
            mtime_ns=mtime_ns,
            version=version,
            content_hash=content_hash,
            chunk_size=chunk_size,
            chunks=blob,
        )
    return to_info(path, row), released


def mkdir(txn: MetaTxn, path: str, *, parents: bool, mtime_ns: int) -> FileInfo:
    """MKDIR.

    Raises:
        AlreadyExistsError: Something is at ``path`` (unless ``parents`` and it is a
            directory).
        NotFoundError: The parent is missing and ``parents`` is false.
        NotADirectoryError_: A file is in the way.
    """
    if path == paths.ROOT:
        if parents:
            return stat(txn, path)
        msg = "the root already exists"
        raise AlreadyExistsError(msg)
    row = txn.entry(ROOT_ID)
    assert row is not None
    names = paths.components(path)
    current = paths.ROOT
    for i, name in enumerate(names):
        last = i == len(names) - 1
        current = paths.join(current, name)
        child = txn.child(row.id, name)
        if child is None:
            if not (last or parents):
                msg = f"no such directory: {current}"
                raise NotFoundError(msg)
            child = txn.insert(
                row.id,
                name,
                KIND_DIR,
                size=0,
                mtime_ns=mtime_ns,
                version=txn.next_version(),
                content_hash=None,
                chunk_size=None,
                chunks=None,
            )
        elif last:
            if parents and child.kind == KIND_DIR:
                return to_info(path, child)
            msg = f"already exists: {path}"
            raise AlreadyExistsError(msg)
        elif child.kind != KIND_DIR:
            msg = f"not a directory: {current}"
            raise NotADirectoryError_(msg)
        row = child
    return to_info(path, row)


def delete(txn: MetaTxn, path: str, *, recursive: bool) -> tuple[int, list[bytes]]:
    """DELETE.

    Returns:
        The number of entries removed and the digests whose last reference was dropped.

    Raises:
        InvalidArgumentError: ``path`` is the root (BAD_REQUEST, spec 5.7).
        NotFoundError: Nothing is at ``path``.
        NotEmptyError: A non-empty directory and ``recursive`` is false.
    """
    if path == paths.ROOT:
        msg = "the root cannot be deleted"
        raise InvalidArgumentError(msg)
    row = resolve(txn, path)
    rows = [row]
    if row.kind == KIND_DIR:
        if recursive:
            rows += txn.subtree(row.id)
        elif txn.has_children(row.id):
            msg = f"directory not empty: {path}"
            raise NotEmptyError(msg)
    dropped = [d for r in rows if r.kind == KIND_FILE for d in digests(r)]
    txn.remove(rows)
    released = txn.drop_refs(dropped)
    return len(rows), released


def rename(txn: MetaTxn, src: str, dst: str, *, overwrite: bool) -> tuple[FileInfo, list[bytes]]:
    """RENAME: move the entry at ``src`` to ``dst`` atomically.

    Rules: ``src == dst`` is a no-op that returns the entry. An existing ``dst`` is replaced
    only if ``overwrite`` is true, ``dst`` is a file and ``src`` is a file.

    Returns:
        The moved entry's FileInfo and the digests whose last reference was dropped.

    Raises:
        InvalidArgumentError: ``src`` or ``dst`` is the root, or ``dst`` lies inside ``src``
            (BAD_REQUEST, spec 5.8).
        NotFoundError: ``src`` or ``dst``'s parent is missing.
        NotADirectoryError_: A file is on the way, or ``src`` is a directory and would
            replace a file.
        AlreadyExistsError: ``dst`` exists and ``overwrite`` is false.
        IsADirectoryError_: ``dst`` is a directory (directories are never replaced).
    """
    if paths.ROOT in (src, dst):
        msg = "the root cannot be renamed or replaced"
        raise InvalidArgumentError(msg)
    row = resolve(txn, src)
    if src == dst:
        return to_info(dst, row), []
    parent, name = resolve_parent(txn, dst)
    if row.kind == KIND_DIR and paths.is_within(dst, src):
        msg = f"cannot move {src} inside itself ({dst})"
        raise InvalidArgumentError(msg)
    existing = txn.child(parent.id, name)
    released: list[bytes] = []
    if existing is not None:
        if not overwrite:
            msg = f"already exists: {dst}"
            raise AlreadyExistsError(msg)
        if existing.kind == KIND_DIR:
            msg = f"is a directory (never replaced): {dst}"
            raise IsADirectoryError_(msg)
        if row.kind == KIND_DIR:
            msg = f"cannot replace file {dst} with directory {src}"
            raise NotADirectoryError_(msg)
        txn.remove([existing])
        released = txn.drop_refs(digests(existing))
    moved = txn.move(row, parent.id, name, txn.next_version())
    return to_info(dst, moved), released
