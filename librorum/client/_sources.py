"""What a WRITE reads its content from: a buffer, a local file, or an async iterable.

Each source hands out chunks of at most ``max_bytes`` that stay valid until the next call,
which is all the write loop needs: it sends (and waits for the send of) every chunk before it
asks for the next, so a file is read into one reused buffer instead of a new ``bytes`` per
chunk.
"""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import Final, Protocol, TypeAlias

from librorum.client._async_primitives import checkpoint, run_sync
from librorum.protocol.constants import DEFAULT_MAX_PAYLOAD, Feature
from librorum.protocol.framing import Payload

#: Spec 8: below this size streaming DATA is as fast as passing a descriptor.
PASS_FD_MIN_SIZE: Final = 1 << 20


def _file_descriptor(file: io.FileIO, size: int | None, features: int) -> int | None:
    if not features & Feature.FD_PASSING or size is None or size < PASS_FD_MIN_SIZE:
        return None
    return file.fileno()


#: What ``write`` accepts as content.
WriteData: TypeAlias = bytes | bytearray | memoryview | AsyncIterable[bytes] | os.PathLike[str]


class Source(Protocol):
    #: Total bytes, when known up front.
    size: int | None
    #: Whether :meth:`seek` works (a resumable upload can only resume such a source).
    seekable: bool

    async def descriptor(self, features: int) -> int | None:
        """A descriptor holding the whole content, to pass (spec 8) if ``features`` (the
        connection's) allow it for this kind of source and it is worth it; else ``None``:
        stream it. The source keeps the descriptor (the caller does not close it)."""
        ...

    async def read(self, max_bytes: int) -> Payload:
        """Up to ``max_bytes`` (at least 1) bytes, ``b""`` at the end; valid until the next
        call."""
        ...

    async def seek(self, offset: int) -> None:
        """Continue from byte ``offset`` of the content."""
        ...

    async def aclose(self) -> None: ...


class BufferSource:
    """Bytes in memory: chunks are views, never copies."""

    seekable = True

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self._view = memoryview(data).cast("B")
        self.size: int | None = len(self._view)
        self._position = 0

    async def descriptor(self, features: int) -> int | None:
        # Streamed, not copied into a memfd first: that copy fills fresh shared-memory pages
        # and measured slower than the socket path (spec 8.3). A memfd the caller already
        # has goes as a file (pass its /proc/self/fd path).
        await checkpoint()
        return None

    async def read(self, max_bytes: int) -> Payload:
        await checkpoint()
        start = self._position
        self._position = min(start + max_bytes, len(self._view))
        return self._view[start : self._position]

    async def seek(self, offset: int) -> None:
        await checkpoint()
        self._position = min(offset, len(self._view))

    async def aclose(self) -> None:
        self._view.release()
        await checkpoint()


class FileSource:
    """A local file, read into one reused buffer (off the event loop: a file system may block)."""

    seekable = True

    def __init__(self, file: io.FileIO, size: int, *, buffer_size: int) -> None:
        self._file = file
        self.size: int | None = size
        self._buffer = memoryview(bytearray(buffer_size))

    @classmethod
    async def open(cls, path: Path, *, buffer_size: int = DEFAULT_MAX_PAYLOAD) -> FileSource:
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

        file, size = await run_sync(open_and_stat)
        return cls(file, size, buffer_size=buffer_size)

    async def descriptor(self, features: int) -> int | None:
        await checkpoint()
        return _file_descriptor(self._file, self.size, features)

    async def read(self, max_bytes: int) -> Payload:
        view = self._buffer[: min(max_bytes, len(self._buffer))]
        n = await run_sync(self._file.readinto, view)
        return view[: n or 0]

    async def seek(self, offset: int) -> None:
        await run_sync(self._file.seek, offset)

    async def aclose(self) -> None:
        self._file.close()
        await checkpoint()


class IterableSource:
    """An async iterable of byte strings; split or passed through to fit each frame. Not
    seekable: an interrupted upload from it cannot resume."""

    seekable = False

    def __init__(self, iterable: AsyncIterable[bytes], size: int | None) -> None:
        self._iterator: AsyncIterator[bytes] = aiter(iterable)
        self.size = size
        self._rest = memoryview(b"")

    async def descriptor(self, features: int) -> int | None:
        await checkpoint()
        return None

    async def read(self, max_bytes: int) -> Payload:
        while not self._rest:
            try:
                item = await anext(self._iterator)
            except StopAsyncIteration:
                return b""
            self._rest = memoryview(item).cast("B")
        chunk = self._rest[:max_bytes]
        self._rest = self._rest[max_bytes:]
        return chunk

    async def seek(self, offset: int) -> None:
        msg = "an async iterable cannot be rewound"
        raise ValueError(msg)

    async def aclose(self) -> None:
        aclose = getattr(self._iterator, "aclose", None)
        if aclose is not None:
            await aclose()


async def open_source(data: WriteData, size: int | None) -> Source:
    """The source for ``write(data, size=size)``.

    Raises:
        TypeError: ``data`` is a ``str`` (pass bytes, or a ``pathlib.Path`` for a file).
        ValueError: ``size`` contradicts the size of a buffer or a file.
        OSError: a file cannot be opened.
    """
    if isinstance(data, str):
        msg = "write() takes bytes or a pathlib.Path, not str (encode text, or use Path(...))"
        raise TypeError(msg)
    source: Source
    if isinstance(data, bytes | bytearray | memoryview):
        source = BufferSource(data)
    elif isinstance(data, os.PathLike):
        source = await FileSource.open(Path(data))
    else:
        return IterableSource(data, size)
    if size is not None and size != source.size:
        await source.aclose()
        msg = f"size={size} but the content has {source.size} bytes"
        raise ValueError(msg)
    return source
