"""Where the daemon's time goes: the UDS upload, the UDS download and sequential STATs, each
sampled with py-spy (a sampling profiler attached to the daemon's process by pid).

    python -m bench.profile [--size MIB] [--repeat N] [--seconds S] [--only upload,...]
                            [--native] [--gil]

py-spy is not a dependency of the project: install it into the environment first
(``pip install py-spy``). Raw stacks go to ``bench/results/profile/NAME.txt`` (collapsed
format, one line per stack with its sample count; ``flamegraph.pl`` or speedscope read it);
the summary printed (and written to ``NAME-summary.txt``) gives, per thread role (the Trio
thread, the worker threads), how busy it was, the functions with the most samples of their
own (self) and the Librorum functions that include the most samples (total).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import attrs
import trio

from bench.common import GIB, MIB, make_source, stamp
from bench.daemon import Daemon, run_daemon
from librorum.client.aio import open_client
from librorum.client.sync import connect

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "profile"
PATH = "/profile/file.bin"


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        sys.exit("py-spy is not installed: pip install py-spy (it is not a project dependency)")
    return found


# --- Workloads ---------------------------------------------------------------------------------------


def upload(daemon: Daemon, source: Path, repeat: int) -> str:
    async def run() -> float:
        moved = 0
        async with open_client(transport="local", socket_path=daemon.socket_path) as client:
            start = time.perf_counter()
            for _ in range(repeat):
                stamp(source)
                info = await client.write("/profile/upload.bin", source)
                moved += info.size
            return moved / (time.perf_counter() - start)

    rate = trio.run(run)
    return f"{repeat} uploads of {source.stat().st_size // MIB} MiB: {rate / 1e9:.2f} GB/s"


def download(daemon: Daemon, source: Path, repeat: int) -> str:
    async def run() -> float:
        moved = 0
        async with open_client(transport="local", socket_path=daemon.socket_path) as client:
            start = time.perf_counter()
            for _ in range(repeat):
                async with client.open_read(PATH) as stream:
                    async for chunk in stream:
                        moved += len(chunk)
            return moved / (time.perf_counter() - start)

    rate = trio.run(run)
    return f"{repeat} downloads of {source.stat().st_size // MIB} MiB: {rate / 1e9:.2f} GB/s"


def stat(daemon: Daemon, seconds: float) -> str:
    with connect(transport="local", socket_path=daemon.socket_path) as client:
        count = 0
        start = time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline:
            for _ in range(20):
                client.stat(PATH)
            count += 20
        rate = count / (time.perf_counter() - start)
    return f"sequential STAT, sync client: {rate:,.0f} ops/s for {seconds:.0f} s"


# --- Summaries ---------------------------------------------------------------------------------------


@attrs.define
class Profile:
    #: Samples per thread (the thread's label: its name; Trio's workers share one role).
    threads: collections.Counter[str] = attrs.field(factory=collections.Counter)
    self_time: dict[str, collections.Counter[str]] = attrs.field(factory=dict)
    total_time: dict[str, collections.Counter[str]] = attrs.field(factory=dict)
    per_thread_id: collections.Counter[str] = attrs.field(factory=collections.Counter)
    samples: int = 0


def _role(thread: str) -> str:
    name = thread.split(": ", 1)[1] if ": " in thread else thread
    if name == "MainThread":
        return "Trio thread (MainThread)"
    if name.startswith(("Trio thread", "Thread-")) or "_thread_cache" in name:
        return "worker threads"
    return name


def parse(path: Path) -> Profile:
    profile = Profile()
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = frames[0]
        role = _role(thread)
        if any("_thread_cache" in frame for frame in frames[1:4]):
            role = "worker threads"
        profile.samples += count
        profile.threads[role] += count
        profile.per_thread_id[thread.split(":", 1)[0]] += count
        frames = frames[1:] or ["(no Python frame)"]
        profile.self_time.setdefault(role, collections.Counter())[frames[-1]] += count
        totals = profile.total_time.setdefault(role, collections.Counter())
        for frame in set(frames):
            totals[frame] += count
    return profile


def summary(profile: Profile, seconds: float, rate: int, top: int = 15) -> str:
    lines = [
        (
            f"{profile.samples} samples of busy threads over {seconds:.1f} s at {rate} Hz "
            f"(100 % = one thread busy all the time)"
        )
    ]
    possible = max(seconds * rate, 1)
    for role, count in profile.threads.most_common():
        lines.append("")
        lines.append(
            f"-- {role}: {count} samples, {100 * count / profile.samples:.1f} % of all; busy "
            f"{100 * count / possible:.0f} % of the wall time (summed over its threads)"
        )
        lines.append("   self (the function itself was on top of the stack):")
        for frame, n in profile.self_time[role].most_common(top):
            lines.append(f"   {100 * n / profile.samples:5.1f} %  {frame}")
        lines.append("   total, Librorum and transport functions (it or its callees):")
        shown = 0
        for frame, n in profile.total_time[role].most_common():
            if "librorum" not in frame and "trio/_socket" not in frame:
                continue
            lines.append(f"   {100 * n / profile.samples:5.1f} %  {frame}")
            shown += 1
            if shown >= top:
                break
    return "\n".join(lines)


# --- Main ----------------------------------------------------------------------------------------------


def record(
    daemon: Daemon, name: str, work: Callable[[], str], rate: int, extra: list[str]
) -> tuple[str, Path, float]:
    OUT.mkdir(parents=True, exist_ok=True)
    raw = OUT / f"{name}.txt"
    spy = subprocess.Popen(
        [
            py_spy(),
            "record",
            "--pid",
            str(daemon.pid),
            "--format",
            "raw",
            "--output",
            str(raw),
            "--rate",
            str(rate),
            "--threads",
            "--nolineno",
            # Native stacks need the process paused while sampled.
            *([] if "--native" in extra else ["--nonblocking"]),
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    time.sleep(1.5)  # py-spy attaches
    if spy.poll() is not None:
        assert spy.stderr is not None
        sys.exit(f"py-spy failed: {spy.stderr.read().decode(errors='replace')[:2000]}")
    start = time.perf_counter()
    result = work()
    seconds = time.perf_counter() - start
    spy.send_signal(signal.SIGINT)
    try:
        spy.wait(60)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait(5)
    return result, raw, seconds + 1.5


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--size", type=int, default=1024, help="MiB per transfer (1024)")
    parser.add_argument("--repeat", type=int, default=3, help="transfers per profile (3)")
    parser.add_argument("--seconds", type=float, default=8.0, help="STAT loop duration (8)")
    parser.add_argument("--rate", type=int, default=200, help="samples per second (200)")
    parser.add_argument("--only", default="", help="comma-separated: upload,download,stat")
    parser.add_argument("--native", action="store_true", help="include C frames (py-spy -n)")
    parser.add_argument("--gil", action="store_true", help="only threads holding the GIL")
    args = parser.parse_args()
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    extra = (["--native"] if args.native else []) + (["--gil"] if args.gil else [])
    py_spy()
    with tempfile.TemporaryDirectory(prefix="librorum-profile-") as tmp:
        work = Path(tmp)
        source = make_source(work / "source.bin", args.size * MIB)
        with run_daemon(work / "daemon") as daemon:
            with connect(transport="local", socket_path=daemon.socket_path) as client:
                client.mkdir("/profile", parents=True)
                client.write(PATH, source)
                client.read(PATH, length=64 * MIB)
            scenarios: dict[str, Callable[[], str]] = {
                "upload": lambda: upload(daemon, source, args.repeat),
                "download": lambda: download(daemon, source, args.repeat),
                "stat": lambda: stat(daemon, args.seconds),
            }
            for name, work_fn in scenarios.items():
                if only and name not in only:
                    continue
                # Warm up: the same work, briefly, right before.
                if name == "stat":
                    stat(daemon, 0.5)
                else:
                    download(daemon, source, 1)
                result, raw, seconds = record(daemon, name, work_fn, args.rate, extra)
                text = f"== {name}: {result}\n{summary(parse(raw), seconds, args.rate)}\n"
                (OUT / f"{name}-summary.txt").write_text(text)
                print(text, flush=True)
    print(
        f"raw stacks and summaries in {OUT}; sizes: {args.size} MiB ({args.size * MIB / GIB:.1f} GiB)"
    )


if __name__ == "__main__":
    main()
