"""The service core over a real store in a temporary directory: each operation, its answers
and its errors, and what cancelling it does."""

from __future__ import annotations

import fcntl
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from librorum.errors import (
    AlreadyExistsError,
    BadRequestError,
    ConflictError,
    InvalidArgumentError,
    InvalidPathError,
    IsADirectoryError_,
    NotADirectoryError_,
    NotEmptyError,
    NotFoundError,
    TooLargeError,
)
from librorum.service import (
    DescriptorKind,
    EntryKind,
    Service,
    Stats,
    WriteMode,
    descriptor_kind,
)
from librorum.store import open_store

CHUNK = 4096
MAX_FILE_SIZE = 1 << 20
#: A well-formed resumable upload id (spec 5.10).
UPLOAD_ID = "resumable-upload-0001"
SEALS = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW


class Gauge:
    used = 123
    peak = 456


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    async with open_store(
        tmp_path / "store", chunk_size=CHUNK, max_file_size=MAX_FILE_SIZE
    ) as store:
        yield Service(store, inflight=Gauge())


async def put(service: Service, path: str, data: bytes, **options: object) -> None:
    async with service.open_upload(path, size=len(data), **options) as upload:  # type: ignore[arg-type]
        await upload.write(data)
        await service.commit(upload)


async def get(service: Service, path: str, *, offset: int = 0, length: int | None = None) -> bytes:
    async with service.open_read(path, offset=offset, length=length) as reader:
        return b"".join([bytes(piece) async for piece in reader])


def memfd(data: bytes, seals: int) -> int:
    fd = os.memfd_create("content", os.MFD_ALLOW_SEALING)
    os.write(fd, data)
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


# --- Namespace ---------------------------------------------------------------------------------


async def test_stat_describes_an_entry(service: Service) -> None:
    await put(service, "/a.txt", b"hello")
    info = await service.stat("/a.txt")
    assert (info.path, info.kind, info.size) == ("/a.txt", EntryKind.FILE, 5)
    assert info.content_hash is not None
    assert (await service.stat("/")).kind is EntryKind.DIRECTORY


async def test_stat_errors(service: Service) -> None:
    await put(service, "/f", b"x")
    with pytest.raises(NotFoundError):
        await service.stat("/missing")
    with pytest.raises(NotADirectoryError_):
        await service.stat("/f/below")
    with pytest.raises(InvalidPathError):
        await service.stat("/a/../b")


async def test_list_pages_after_the_cursor(service: Service) -> None:
    await service.mkdir("/d")
    for name in ("c", "a", "b"):
        await put(service, f"/d/{name}", name.encode())
    first = await service.list("/d", cursor=None, limit=2)
    assert [e.name for e in first.entries] == ["a", "b"]
    assert first.next_cursor == "b"
    rest = await service.list("/d", cursor=first.next_cursor, limit=2)
    assert [e.name for e in rest.entries] == ["c"]
    assert rest.next_cursor is None


async def test_list_errors(service: Service) -> None:
    await put(service, "/f", b"x")
    with pytest.raises(NotADirectoryError_):
        await service.list("/f", cursor=None, limit=10)
    with pytest.raises(NotFoundError):
        await service.list("/nothing", cursor=None, limit=10)


async def test_mkdir(service: Service) -> None:
    info = await service.mkdir("/x/y", parents=True)
    assert (info.path, info.kind) == ("/x/y", EntryKind.DIRECTORY)
    assert (await service.mkdir("/x/y", parents=True)).path == "/x/y"
    with pytest.raises(AlreadyExistsError):
        await service.mkdir("/x/y")
    with pytest.raises(NotFoundError):
        await service.mkdir("/no/parent")


async def test_delete(service: Service) -> None:
    await service.mkdir("/t")
    await put(service, "/t/one", b"1")
    await put(service, "/t/two", b"2")
    with pytest.raises(NotEmptyError):
        await service.delete("/t")
    assert await service.delete("/t", recursive=True) == 3
    with pytest.raises(NotFoundError):
        await service.delete("/t")
    with pytest.raises(InvalidArgumentError):
        await service.delete("/", recursive=True)


async def test_rename(service: Service) -> None:
    await put(service, "/src", b"content")
    await put(service, "/dst", b"old")
    with pytest.raises(AlreadyExistsError):
        await service.rename("/src", "/dst")
    info = await service.rename("/src", "/dst", overwrite=True)
    assert (info.path, info.size) == ("/dst", 7)
    assert await get(service, "/dst") == b"content"
    with pytest.raises(NotFoundError):
        await service.stat("/src")
    await service.mkdir("/dir")
    with pytest.raises(InvalidArgumentError):
        await service.rename("/dir", "/dir/inside")


@pytest.mark.parametrize("operation", ["mkdir", "delete", "rename"])
async def test_a_mutation_completes_even_when_its_caller_is_cancelled(
    service: Service, operation: str
) -> None:
    """Spec 5.14: once called, a mutation's outcome is never unknown to its caller."""
    await put(service, "/file", b"x")
    with trio.CancelScope() as scope:
        scope.cancel()
        if operation == "mkdir":
            answer: object = await service.mkdir("/made")
        elif operation == "delete":
            answer = await service.delete("/file")
        else:
            answer = await service.rename("/file", "/moved")
    # The answer came back (no Cancelled was raised before it), and the effect is there.
    assert not scope.cancelled_caught
    assert answer is not None
    if operation == "mkdir":
        assert (await service.stat("/made")).kind is EntryKind.DIRECTORY
    else:
        with pytest.raises(NotFoundError):
            await service.stat("/file")


# --- Reading -----------------------------------------------------------------------------------


async def test_open_read_gives_a_range(service: Service) -> None:
    data = bytes(range(256)) * 40  # spans three chunks
    await put(service, "/f", data)
    assert await get(service, "/f") == data
    assert await get(service, "/f", offset=4000, length=200) == data[4000:4200]
    # A range past the end is clipped; a start at the very end is an empty range.
    assert await get(service, "/f", offset=len(data) - 10, length=100) == data[-10:]
    async with service.open_read("/f", offset=len(data)) as reader:
        assert reader.length == 0
        assert reader.info.size == len(data)


async def test_open_read_errors(service: Service) -> None:
    await put(service, "/f", b"12345")
    with pytest.raises(BadRequestError, match="past the end"):
        await get(service, "/f", offset=6)
    await service.mkdir("/d")
    with pytest.raises(IsADirectoryError_):
        await get(service, "/d")
    with pytest.raises(NotFoundError):
        await get(service, "/missing")


# --- Writing -----------------------------------------------------------------------------------


async def test_an_upload_commits_a_file(service: Service) -> None:
    await put(service, "/new", b"first")
    assert await get(service, "/new") == b"first"
    with pytest.raises(AlreadyExistsError):
        await put(service, "/new", b"again", mode=WriteMode.EXCLUSIVE)
    with pytest.raises(NotFoundError):
        await put(service, "/absent", b"x", mode=WriteMode.OVERWRITE)


async def test_an_upload_left_without_a_commit_has_no_effect(service: Service) -> None:
    async with service.open_upload("/never", size=3) as upload:
        await upload.write(b"abc")
    with pytest.raises(NotFoundError):
        await service.stat("/never")


async def test_a_resumable_upload_resumes_from_its_committed_offset(service: Service) -> None:
    data = os.urandom(5 * CHUNK + 100)
    async with service.open_upload("/big", size=len(data), upload_id=UPLOAD_ID) as upload:
        await upload.write(data[: 3 * CHUNK + 7])
    # Left without a commit: kept, resumable from what is durably stored.
    status = await service.upload_status(UPLOAD_ID)
    assert status.path == "/big"
    assert status.size == len(data)
    assert 0 < status.offset <= 3 * CHUNK + 7
    with pytest.raises(ConflictError, match="committed up to"):
        async with service.open_upload("/big", upload_id=UPLOAD_ID, offset=status.offset + 1):
            pass
    # The refused resume left the upload resumable.
    async with service.open_upload("/big", upload_id=UPLOAD_ID, offset=status.offset) as upload:
        await upload.write(data[status.offset :])
        info = await service.commit(upload)
    assert info.size == len(data)
    assert await get(service, "/big") == data
    with pytest.raises(NotFoundError):
        await service.upload_status(UPLOAD_ID)


async def test_an_unknown_upload_id_begins_a_new_upload(service: Service) -> None:
    await put(service, "/fresh", b"data", upload_id=UPLOAD_ID)
    assert await get(service, "/fresh") == b"data"


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"upload_id": "short"}, BadRequestError, "16 to 64"),
        ({"upload_id": "no spaces allowed here!"}, BadRequestError, "16 to 64"),
        ({"offset": 10}, BadRequestError, "must name the upload_id"),
        ({"upload_id": UPLOAD_ID, "offset": 10}, NotFoundError, UPLOAD_ID),
        ({"size": MAX_FILE_SIZE + 1}, TooLargeError, "maximum"),
    ],
)
async def test_open_upload_errors(
    service: Service, options: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        async with service.open_upload("/f", **options):  # type: ignore[arg-type]
            pass
    with pytest.raises(NotFoundError):
        await service.stat("/f")


async def test_a_commit_completes_even_when_its_caller_is_cancelled(service: Service) -> None:
    async with service.open_upload("/kept", size=4) as upload:
        await upload.write(b"data")
        with trio.CancelScope() as scope:
            scope.cancel()
            info = await service.commit(upload)
        assert not scope.cancelled_caught
    assert info.size == 4
    assert await get(service, "/kept") == b"data"


async def test_upload_status_errors(service: Service) -> None:
    with pytest.raises(NotFoundError):
        await service.upload_status(UPLOAD_ID)
    with pytest.raises(InvalidPathError):
        await service.upload_status("bad/id")


async def test_max_file_size_is_the_stores(service: Service) -> None:
    assert service.max_file_size == MAX_FILE_SIZE


# --- Descriptors -------------------------------------------------------------------------------


async def test_ingest_stores_a_regular_file(service: Service, tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    data = os.urandom(3 * CHUNK + 1)
    source.write_bytes(data)
    fd = os.open(source, os.O_RDONLY)
    try:
        assert descriptor_kind(fd) is DescriptorKind.FILE
        info = await service.ingest("/in", fd, size=len(data))
    finally:
        os.close(fd)
    assert info.size == len(data)
    assert await get(service, "/in") == data


async def test_ingest_stores_a_sealed_memfd(service: Service) -> None:
    fd = memfd(b"sealed content", SEALS)
    try:
        assert descriptor_kind(fd) is DescriptorKind.MEMFD
        await service.ingest("/m", fd, size=14, accept=DescriptorKind.MEMFD)
    finally:
        os.close(fd)
    assert await get(service, "/m") == b"sealed content"


async def test_ingest_refuses_bad_descriptors(service: Service, tmp_path: Path) -> None:
    regular = tmp_path / "regular"
    regular.write_bytes(b"12345")
    cases: list[tuple[int, dict[str, object], type[Exception], str]] = []
    read_end, write_end = os.pipe()
    cases.append((read_end, {}, BadRequestError, "not a regular file"))
    cases.append((os.open(regular, os.O_WRONLY), {}, BadRequestError, "not open for reading"))
    cases.append((memfd(b"12345", 0), {}, BadRequestError, "not sealed"))
    only_memfd = {"accept": DescriptorKind.MEMFD}
    cases.append((os.open(regular, os.O_RDONLY), only_memfd, BadRequestError, "only MEMFD"))
    only_files = {"accept": DescriptorKind.FILE}
    cases.append((memfd(b"12345", SEALS), only_files, BadRequestError, "MEMFD was not"))
    cases.append((os.open(regular, os.O_RDONLY), {"size": 4}, BadRequestError, "not the declared"))
    too_big = {"size": MAX_FILE_SIZE + 1}
    cases.append((os.open(regular, os.O_RDONLY), too_big, TooLargeError, "maximum"))
    try:
        for fd, options, error, match in cases:
            arguments: dict[str, object] = {"size": 5, **options}
            with pytest.raises(error, match=match):
                await service.ingest("/target", fd, **arguments)  # type: ignore[arg-type]
    finally:
        for fd, *_ in cases:
            os.close(fd)
        os.close(write_end)
    with pytest.raises(NotFoundError):
        await service.stat("/target")


# --- The node ----------------------------------------------------------------------------------


async def test_node_status_reports_the_store_and_the_front_doors(service: Service) -> None:
    await put(service, "/f", b"abc")
    stats = service.stats
    stats.connection_opened("uds")
    stats.requests += 7
    stats.bytes_in += 100
    stats.bytes_out += 200
    report = await service.node_status()
    assert report.node_id == service.node_id
    assert report.connections == {"uds": 1}
    assert (report.requests, report.bytes_in, report.bytes_out) == (7, 100, 200)
    assert (report.inflight_bytes, report.inflight_peak_bytes) == (123, 456)
    assert (report.store.files, report.store.logical_bytes) == (1, 3)
    assert report.uptime_ms >= 0
    assert report.version


async def test_a_service_without_a_budget_reports_none_in_flight(tmp_path: Path) -> None:
    stats = Stats()
    async with open_store(tmp_path / "store") as store:
        service = Service(store, stats=stats)
        report = await service.node_status()
    assert service.stats is stats
    assert (report.inflight_bytes, report.inflight_peak_bytes) == (0, 0)
