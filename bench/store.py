"""Benchmark of the storage engine through its public API.

    python -m bench.store [--quick] [--dir DIR] [--json PATH]

Measures, on a store in a temp directory (or ``--dir``):

* write and read throughput of a 1 GiB file (upload API in 1 MiB pieces; reader iteration;
  verified sendfile segments; ``ingest_fd`` from a regular file), each warmed up, then run
  interleaved for several rounds, median and spread reported;
* the same write with a one-buffer pipeline (no overlap of receiving and writing), in the
  same rounds (the default is 2);
* memory: 64 concurrent 16 MiB uploads in a child process, its peak resident memory over the
  baseline, and what it still holds once they are committed;
* stat and list rates with 100,000 files in one directory; stat inline on the event loop
  against the same query through ``trio.to_thread`` (the choice ``librorum/store/sqlite.py`` rests on);
* recovery: a child process is killed (SIGKILL) in the middle of concurrent uploads, then
  ``open_store`` is timed, next to a clean open of the same store.

``--quick`` shrinks every size so that the whole run takes well under a minute. The machine is
shared and its page-cache and fsync costs vary a lot from second to second: read the spread. Results go to
a table on stdout and to ``bench/results/store.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from librorum.store import Store, open_store

MIB = 1 << 20
GIB = 1 << 30
PIECE = MIB


def stamp(base: bytearray, run: int, chunk_size: int) -> None:
    """Make every chunk of ``base`` unique to this run (so nothing deduplicates)."""
    tag = run.to_bytes(8, "little")
    view = memoryview(base)
    for offset in range(0, len(base), chunk_size):
        view[offset : offset + 8] = tag


async def write_file(store: Store, path: str, base: bytearray) -> float:
    view = memoryview(base)
    start = time.perf_counter()
    async with await store.begin_upload(path, size=len(base)) as up:
        for offset in range(0, len(base), PIECE):
            await up.write(view[offset : offset + PIECE])
        await up.commit()
    return time.perf_counter() - start


async def read_file(store: Store, path: str) -> float:
    start = time.perf_counter()
    total = 0
    async with store.open_read(path) as reader:
        async for piece in reader:
            total += len(piece)
    assert total == reader.length
    return time.perf_counter() - start


async def sendfile_file(store: Store, path: str) -> float:
    start = time.perf_counter()
    out = os.open(os.devnull, os.O_WRONLY)
    try:
        async with store.open_read(path) as reader:
            async for seg in reader.segments():
                sent = 0
                while sent < seg.length:
                    sent += os.sendfile(out, seg.fd, seg.offset + sent, seg.length - sent)
    finally:
        os.close(out)
    return time.perf_counter() - start


async def ingest_file(store: Store, path: str, source: Path, size: int) -> float:
    fd = os.open(source, os.O_RDONLY)
    try:
        start = time.perf_counter()
        await store.ingest_fd(path, fd, size)
        return time.perf_counter() - start
    finally:
        os.close(fd)


def summarize(samples: list[float], scale: float, unit: str) -> dict[str, Any]:
    rates = sorted(scale / s for s in samples)
    return {
        "median": statistics.median(rates),
        "min": rates[0],
        "max": rates[-1],
        "unit": unit,
        "runs": len(rates),
    }


async def bench_throughput(root: Path, size: int, rounds: int) -> dict[str, Any]:
    base = bytearray(os.urandom(size))
    source = root / "ingest-source"
    results: dict[str, list[float]] = {
        "write": [],
        "write (pipeline=1)": [],
        "read (iterate, verified)": [],
        "read (sendfile segments, verified)": [],
        "ingest_fd": [],
    }
    async with open_store(root / "tp") as store:
        chunk = store.chunk_size
        pipeline = store.upload_pipeline
        # Warm-up: page cache, buffer pool, threads, the host's memory (the VM hands idle
        # memory back to the host, and fresh pages cost up to 10x).
        for w in range(2):
            stamp(base, 10_000 + w, chunk)
            await write_file(store, f"/warm{w}", base)
            await read_file(store, f"/warm{w}")
        for r in range(rounds):
            stamp(base, r, chunk)
            results["write"].append(await write_file(store, f"/f{r}", base))
            results["read (iterate, verified)"].append(await read_file(store, f"/f{r}"))
            results["read (sendfile segments, verified)"].append(
                await sendfile_file(store, f"/f{r}")
            )
            await store.delete(f"/f{r}")
            await store.collect_garbage()
            stamp(base, 1000 + r, chunk)
            source.write_bytes(base)
            results["ingest_fd"].append(await ingest_file(store, f"/i{r}", source, size))
            await store.delete(f"/i{r}")
            await store.collect_garbage()
            stamp(base, 2000 + r, chunk)
            store.upload_pipeline = 1
            results["write (pipeline=1)"].append(await write_file(store, f"/p{r}", base))
            store.upload_pipeline = pipeline
            await store.delete(f"/p{r}")
            await store.collect_garbage()
    source.unlink()
    scale = size / 1e9
    return {name: summarize(samples, scale, "GB/s") for name, samples in results.items()}


async def create_files(store: Store, count: int, tasks: int = 16) -> float:
    await store.mkdir("/many")
    content = b"x" * 100
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < count:
            i = next_index
            next_index += 1
            await store.write_bytes(f"/many/f{i:07d}", content)

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(tasks):
            nursery.start_soon(worker)
    return time.perf_counter() - start


async def timed(n: int, fn: Callable[[int], Awaitable[object]]) -> float:
    start = time.perf_counter()
    for i in range(n):
        await fn(i)
    return time.perf_counter() - start


async def bench_namespace(root: Path, count: int, rounds: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with open_store(root / "ns") as store:
        created = await create_files(store, count)
        out["create (16 tasks)"] = {"median": count / created, "unit": "files/s", "runs": 1}
        rng = random.Random(1)
        names = [f"/many/f{rng.randrange(count):07d}" for _ in range(20_000)]
        n_stat = min(len(names), count)

        # The same point query, through a worker thread on its own connection: what the
        # metadata store would pay if reads were not inline.
        conn = sqlite3.connect(root / "ns" / "meta.db", check_same_thread=False)

        def stat_sync(name: str) -> object:
            parent = conn.execute(
                "SELECT id FROM entries WHERE parent = 1 AND name = 'many'"
            ).fetchone()
            return conn.execute(
                "SELECT * FROM entries WHERE parent = ? AND name = ?",
                (parent[0], name.rpartition("/")[2]),
            ).fetchone()

        samples: dict[str, list[float]] = {"stat (inline)": [], "stat (thread)": []}
        pages: list[float] = []
        await timed(1000, lambda i: store.stat(names[i]))  # warm-up
        for _ in range(rounds):
            samples["stat (inline)"].append(await timed(n_stat, lambda i: store.stat(names[i])))
            samples["stat (thread)"].append(
                await timed(n_stat, lambda i: trio.to_thread.run_sync(stat_sync, names[i]))
            )
            start = time.perf_counter()
            cursor = None
            listed = 0
            while True:
                page = await store.list("/many", cursor=cursor, limit=1000)
                listed += len(page.entries)
                cursor = page.next_cursor
                if cursor is None:
                    break
            pages.append(time.perf_counter() - start)
            assert listed == count
        conn.close()
        for name, values in samples.items():
            out[name] = summarize(values, n_stat, "ops/s")
        out["list (1000 per page)"] = summarize(pages, count, "entries/s")
        out["list pages"] = summarize(pages, count / 1000, "pages/s")
    return out


MEMORY_UPLOADS = 64
MEMORY_UPLOAD_SIZE = 16 * MIB


def _proc_status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    msg = f"no {field} in /proc/self/status"
    raise LookupError(msg)


def _reset_peak() -> None:
    """Make the peak resident memory (VmHWM) what is resident now."""
    Path("/proc/self/clear_refs").write_text("5")


async def memory_child(data_dir: Path, uploads: int, size: int) -> None:
    """Started as a subprocess: concurrent uploads, then print the memory figures (JSON)."""
    async with open_store(data_dir) as store:
        # One source, each upload a different window of it: distinct content, no copies.
        source = memoryview(os.urandom(size + uploads * 4096))
        _reset_peak()  # the peak from here on
        base = _proc_status("VmRSS")

        async def upload(i: int) -> None:
            async with await store.begin_upload(f"/m{i}", size=size) as up:
                for start in range(i * 4096, i * 4096 + size, PIECE):
                    await up.write(source[start : start + PIECE])
                await up.commit()

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for i in range(uploads):
                nursery.start_soon(upload, i)
        elapsed = time.perf_counter() - start
        peak, held = _proc_status("VmHWM") - base, _proc_status("VmRSS") - base
    figures = {
        "uploads": uploads,
        "upload MiB": size / MIB,
        "peak over baseline MiB": peak / MIB,
        "per upload MiB": peak / MIB / uploads,
        "held after MiB": held / MIB,
        "GB/s": uploads * size / elapsed / 1e9,
    }
    print(json.dumps(figures), flush=True)


async def bench_memory(root: Path, uploads: int, size: int) -> dict[str, Any]:
    result = await trio.run_process(
        [
            sys.executable,
            "-m",
            "bench.store",
            "--memory-child",
            str(root / "mem"),
            str(uploads),
            str(size),
        ],
        capture_stdout=True,
    )
    shutil.rmtree(root / "mem", ignore_errors=True)
    figures: dict[str, Any] = json.loads(result.stdout)
    return figures


CHILD_UPLOADS = 8


async def child_main(data_dir: Path, upload_size: int) -> None:
    """Started as a subprocess: keep uploads in flight until killed."""
    async with open_store(data_dir) as store:
        started = 0

        async def uploader(i: int) -> None:
            nonlocal started
            piece = bytearray(os.urandom(PIECE))
            upload_id = f"resumable-{i}" if i % 2 else None
            async with await store.begin_upload(f"/crash/u{i}", upload_id=upload_id) as up:
                written = 0
                while True:
                    # Every piece different, so that no chunk deduplicates.
                    piece[:8] = written.to_bytes(8, "little")
                    await up.write(piece)
                    written += len(piece)
                    if written == upload_size // 2:
                        started += 1
                        if started == CHILD_UPLOADS:
                            print("ready", flush=True)

        await store.mkdir("/crash", parents=True)
        async with trio.open_nursery() as nursery:
            for i in range(CHILD_UPLOADS):
                nursery.start_soon(uploader, i)


async def bench_recovery(root: Path, upload_size: int) -> dict[str, Any]:
    data_dir = root / "ns"
    start = time.perf_counter()
    async with open_store(data_dir) as store:
        clean = time.perf_counter() - start
        files = (await store.status()).files
    child = await trio.lowlevel.open_process(
        [sys.executable, "-m", "bench.store", "--child", str(data_dir), str(upload_size)],
        stdout=subprocess.PIPE,
    )
    assert child.stdout is not None
    said = b""
    with trio.fail_after(120):
        while b"\n" not in said:
            chunk = await child.stdout.receive_some(64)
            if not chunk:
                break
            said += chunk
    assert said.strip() == b"ready", f"child said {said!r}"
    child.send_signal(signal.SIGKILL)
    await child.wait()
    await child.stdout.aclose()
    start = time.perf_counter()
    async with open_store(data_dir) as store:
        elapsed = time.perf_counter() - start
        report = store.recovery
        assert report is not None
        fsck = await store.fsck()
    return {
        "store files": files,
        "clean open s": clean,
        "open after kill s": elapsed,
        "temp files removed": report.temp_files_removed,
        "journal entries handled": report.pending_checked,
        "chunks collected": report.chunks_collected,
        "resumable uploads kept": report.uploads_kept,
        "fsck ok": fsck.ok,
        "fsck chunks rehashed": fsck.chunks_checked,
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench-store-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        size = 256 * MIB if args.quick else GIB
        rounds = 2 if args.quick else 5
        files = 10_000 if args.quick else 100_000
        results: dict[str, Any] = {
            "config": {"file_size": size, "rounds": rounds, "files": files, "cpus": os.cpu_count()}
        }
        results["throughput"] = await bench_throughput(root, size, rounds)
        results["memory"] = await bench_memory(
            root, MEMORY_UPLOADS // 4 if args.quick else MEMORY_UPLOADS, MEMORY_UPLOAD_SIZE
        )
        results["namespace"] = await bench_namespace(root, files, rounds)
        results["recovery"] = await bench_recovery(root, (32 if args.quick else 128) * MIB)
        return results
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)


def print_table(results: dict[str, Any]) -> None:
    print(f"config: {results['config']}")
    print(f"{'case':40} {'median':>12} {'min..max':>22}  unit")
    for section in ("throughput", "namespace"):
        for name, r in results[section].items():
            spread = f"{r['min']:.3g}..{r['max']:.3g}" if "min" in r else ""
            print(f"{name:40} {r['median']:12.4g} {spread:>22}  {r['unit']}")
    print("memory:")
    for name, value in results["memory"].items():
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        print(f"  {name:38} {shown}")
    print("recovery:")
    for name, value in results["recovery"].items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        print(f"  {name:38} {shown}")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, < 1 minute")
    parser.add_argument("--dir", help="where to put the stores (default: a temp directory)")
    parser.add_argument("--json", type=Path, default=Path("bench/results/store.json"))
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--memory-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        where, count, size = args.memory_child
        trio.run(memory_child, Path(where), int(count), int(size))
        return
    if args.child:
        trio.run(child_main, Path(args.child[0]), int(args.child[1]))
        return
    results = trio.run(main, args)
    print_table(results)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {args.json}")


if __name__ == "__main__":
    cli()
