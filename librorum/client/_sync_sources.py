# GENERATED FILE: do not edit. Generated from librorum/client/_sources.py by
# scripts/unasync.py; edit the source and run `python scripts/unasync.py`.
"""What a WRITE reads its content from: a buffer, a local file, or an iterable.

Each source hands out chunks of at most ``max_bytes`` that stay valid until the next call,
which is all the write loop needs: it sends (and waits for the send of) every chunk before it
asks for the next, so a file is read into one reused buffer instead of a new ``bytes`` per
chunk.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Final, Protocol, TypeAlias

from librorum.client._sync_primitives import checkpoint, run_sync
from librorum.protocol.constants import DEFAULT_MAX_PAYLOAD, Feature
from librorum.protocol.framing import Payload

#: Spec 8: below this size streaming DATA is as fast as passing a descriptor.
PASS_FD_MIN_SIZE: Final = 1 << 20


def _file_descriptor(file: io.FileIO, size: int | None, features: int) -> int | None:
    if not features & Feature.FD_PASSING or size is None or size < PASS_FD_MIN_SIZE:
        return None
    return file.fileno()


#: What ``write`` accepts as content.
SyncWriteData: TypeAlias = bytes | bytearray | memoryview | Iterable[bytes] | os.PathLike[str]


class SyncSource(Protocol):
    #: Total bytes, when known up front.
    size: int | None
    #: Whether :meth:`seek` works (a resumable upload can only resume such a source).
    seekable: bool

    def descriptor(self, features: int) -> int | None:
        """A descriptor holding the whole content, to pass (spec 8) if ``features`` (the
        connection's) allow it for this kind of source and it is worth it; else ``None``:
        stream it. The source keeps the descriptor (the caller does not close it)."""
        ...

    def read(self, max_bytes: int) -> Payload:
        """Up to ``max_bytes`` (at least 1) bytes, ``b""`` at the end; valid until the next
        call."""
        ...

    def seek(self, offset: int) -> None:
        """Continue from byte ``offset`` of the content."""
        ...

    def close(self) -> None: ...


class SyncBufferSource:
    """Bytes in memory: chunks are views, never copies."""

    seekable = True

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self._view = memoryview(data).cast("B")
        self.size: int | None = len(self._view)
        self._position = 0

    def descriptor(self, features: int) -> int | None:
        # Streamed, not copied into a memfd first: that copy fills fresh shared-memory pages
        # and measured slower than the socket path (spec 8.3). A memfd the caller already
        # has goes as a file (pass its /proc/self/fd path).
        checkpoint()
        return None

    def read(self, max_bytes: int) -> Payload:
        checkpoint()
        start = self._position
        self._position = min(start + max_bytes, len(self._view))
        return self._view[start : self._position]

    def seek(self, offset: int) -> None:
        checkpoint()
        self._position = min(offset, len(self._view))

    def close(self) -> None:
        self._view.release()
        checkpoint()


class SyncFileSource:
    """A local file, read into one reused buffer (off the event loop: a file system may block)."""

    seekable = True

    def __init__(self, file: io.FileIO, size: int, *, buffer_size: int) -> None:
        self._file = file
        self.size: int | None = size
        self._buffer = memoryview(bytearray(buffer_size))

    @classmethod
    def open(cls, path: Path, *, buffer_size: int = DEFAULT_MAX_PAYLOAD) -> SyncFileSource:
        """Open ``path`` for reading (off the event loop, as the reads are).

        Raises:
            OSError: the file cannot be opened.
        """

        def open_and_stat() -> tuple[io.FileIO, int]:
            file = io.FileIO(path, "rb")
            try:
                return file, os.fstat(file.fileno()).st_size
            except BaseException:
                file.close()
                raise

        file, size = run_sync(open_and_stat)
        return cls(file, size, buffer_size=buffer_size)

    def descriptor(self, features: int) -> int | None:
        checkpoint()
        return _file_descriptor(self._file, self.size, features)

    def read(self, max_bytes: int) -> Payload:
        view = self._buffer[: min(max_bytes, len(self._buffer))]
        n = run_sync(self._file.readinto, view)
        return view[: n or 0]

    def seek(self, offset: int) -> None:
        run_sync(self._file.seek, offset)

    def close(self) -> None:
        self._file.close()
        checkpoint()


class SyncIterableSource:
    """An iterable of byte strings; split or passed through to fit each frame. Not
    seekable: an interrupted upload from it cannot resume."""

    seekable = False

    def __init__(self, iterable: Iterable[bytes], size: int | None) -> None:
        self._iterator: Iterator[bytes] = iter(iterable)
        self.size = size
        self._rest = memoryview(b"")

    def descriptor(self, features: int) -> int | None:
        checkpoint()
        return None

    def read(self, max_bytes: int) -> Payload:
        while not self._rest:
            try:
                item = next(self._iterator)
            except StopIteration:
                return b""
            self._rest = memoryview(item).cast("B")
        chunk = self._rest[:max_bytes]
        self._rest = self._rest[max_bytes:]
        return chunk

    def seek(self, offset: int) -> None:
        msg = "an iterable cannot be rewound"
        raise ValueError(msg)

    def close(self) -> None:
        close = getattr(self._iterator, "close", None)
        if close is not None:
            close()


def open_sync_source(data: SyncWriteData, size: int | None) -> SyncSource:
    """The source for ``write(data, size=size)``.

    Raises:
        TypeError: ``data`` is a ``str`` (pass bytes, or a ``pathlib.Path`` for a file).
        ValueError: ``size`` contradicts the size of a buffer or a file.
        OSError: a file cannot be opened.
    """
    if isinstance(data, str):
        msg = "write() takes bytes or a pathlib.Path, not str (encode text, or use Path(...))"
        raise TypeError(msg)
    source: SyncSource
    if isinstance(data, bytes | bytearray | memoryview):
        source = SyncBufferSource(data)
    elif isinstance(data, os.PathLike):
        source = SyncFileSource.open(Path(data))
    else:
        return SyncIterableSource(data, size)
    if size is not None and size != source.size:
        source.close()
        msg = f"size={size} but the content has {source.size} bytes"
        raise ValueError(msg)
    return source
