"""Protocols shared between the store's modules, kept apart so that neither side of an
interface imports the other."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from librorum.domain import WriteMode
from librorum.store.types import FileInfo


class UploadHost(Protocol):
    """What an upload needs from the registry that owns it (``uploads.UploadRegistry``)."""

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
        """Make published chunks the content of the file at ``path``, atomically (the
        mode's conditions checked again), and forget the upload ``upload_id`` if given.

        Raises:
            AlreadyExistsError, NotFoundError, NotADirectoryError_, IsADirectoryError_: The
                mode's conditions do not hold.
            ReadOnlyError, StoreIOError, TimeoutError_: The commit could not be made.
        """
        ...

    def release(self, upload_id: str) -> None:
        """The resumable upload ``upload_id`` is finished with (committed, aborted or
        detached): it may be resumed or aborted elsewhere."""
        ...
