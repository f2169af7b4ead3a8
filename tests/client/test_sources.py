"""What a WRITE reads its content from (both clients' sources): buffers, local files and
iterables, in chunks of at most the size asked for, and the arguments they refuse."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from librorum.client._sources import PASS_FD_MIN_SIZE, FileSource, IterableSource, open_source
from librorum.client._sync_sources import SyncFileSource, SyncIterableSource, open_sync_source
from librorum.protocol.constants import Feature


async def test_async_sources_read_in_chunks_and_rewind(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(bytes(range(256)) * 40)  # 10,240 bytes
    buffer = await open_source(path.read_bytes(), None)
    file = await open_source(path, 10_240)
    for source in (buffer, file):
        assert source.seekable
        assert source.size == 10_240
        first = bytes(await source.read(4096))
        assert first == bytes(range(256)) * 16
        await source.seek(10_000)
        assert bytes(await source.read(4096)) == (bytes(range(256)) * 40)[10_000:]
        assert bytes(await source.read(4096)) == b""
        await source.aclose()


async def test_a_large_file_goes_as_its_descriptor_when_the_connection_allows(
    tmp_path: Path,
) -> None:
    small, large = tmp_path / "small", tmp_path / "large"
    small.write_bytes(b"x" * (PASS_FD_MIN_SIZE - 1))
    large.write_bytes(b"x" * PASS_FD_MIN_SIZE)
    for source_path, wanted in ((small, False), (large, True)):
        async_source = await FileSource.open(source_path)
        sync_source = SyncFileSource.open(source_path)
        try:
            assert await async_source.descriptor(0) is None
            assert sync_source.descriptor(0) is None
            fds = (
                await async_source.descriptor(Feature.FD_PASSING),
                sync_source.descriptor(Feature.FD_PASSING),
            )
            for fd in fds:
                assert (fd is not None) is wanted
                if fd is not None:
                    assert os.fstat(fd).st_size == PASS_FD_MIN_SIZE
        finally:
            await async_source.aclose()
            sync_source.close()
    # Bytes in memory are streamed however large.
    buffer = await open_source(b"x" * PASS_FD_MIN_SIZE, None)
    assert await buffer.descriptor(Feature.FD_PASSING) is None
    assert open_sync_source(b"x" * PASS_FD_MIN_SIZE, None).descriptor(Feature.FD_PASSING) is None


async def test_iterables_are_split_to_fit_and_cannot_rewind() -> None:
    items = [b"abcde", b"", b"fg", b"hijklmnop"]

    class Parts:
        """An async iterable whose iterator has no aclose()."""

        def __aiter__(self) -> Parts:
            self.rest = iter(items)
            return self

        async def __anext__(self) -> bytes:
            try:
                return next(self.rest)
            except StopIteration:
                raise StopAsyncIteration from None

    async def generated() -> AsyncIterator[bytes]:
        for item in items:
            yield item

    def sync_generated() -> Iterator[bytes]:
        yield from items

    for data in (Parts(), generated()):
        source = await open_source(data, 16)
        assert isinstance(source, IterableSource)
        assert (source.size, source.seekable) == (16, False)
        assert await source.descriptor(Feature.FD_PASSING) is None
        chunks = []
        while chunk := await source.read(4):
            chunks.append(bytes(chunk))
        assert chunks == [b"abcd", b"e", b"fg", b"hijk", b"lmno", b"p"]
        with pytest.raises(ValueError, match="cannot be rewound"):
            await source.seek(0)
        await source.aclose()

    for sync_data in (iter(items), sync_generated()):
        sync_source = open_sync_source(sync_data, None)
        assert isinstance(sync_source, SyncIterableSource)
        assert (sync_source.size, sync_source.seekable) == (None, False)
        assert sync_source.descriptor(Feature.FD_PASSING) is None
        sync_chunks = []
        while sync_chunk := sync_source.read(4):
            sync_chunks.append(bytes(sync_chunk))
        assert sync_chunks == [b"abcd", b"e", b"fg", b"hijk", b"lmno", b"p"]
        with pytest.raises(ValueError, match="cannot be rewound"):
            sync_source.seek(0)
        sync_source.close()


def test_sync_sources_read_in_chunks_and_rewind(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"0123456789")
    for source in (open_sync_source(b"0123456789", 10), open_sync_source(path, None)):
        assert source.seekable
        assert bytes(source.read(4)) == b"0123"
        source.seek(8)
        assert bytes(source.read(4)) == b"89"
        assert bytes(source.read(4)) == b""
        source.close()


async def test_what_write_refuses(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"12345")
    with pytest.raises(TypeError, match="encode text, or use Path"):
        await open_source("/a/path/as/str", None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="encode text, or use Path"):
        open_sync_source("/a/path/as/str", None)  # type: ignore[arg-type]
    for data in (b"12345", path):
        with pytest.raises(ValueError, match="size=4 but the content has 5 bytes"):
            await open_source(data, 4)
        with pytest.raises(ValueError, match="size=4 but the content has 5 bytes"):
            open_sync_source(data, 4)
    with pytest.raises(FileNotFoundError):
        await open_source(tmp_path / "missing", None)
    with pytest.raises(FileNotFoundError):
        open_sync_source(tmp_path / "missing", None)
