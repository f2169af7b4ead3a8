"""The performance issue's targets, evaluated from the figures of one run: one row per part
of a target (a throughput and its server CPU are two rows), each MET, NOT MET or n/a, with
what was measured.

Pure: the evaluation reads a mapping from (workload key, item label) to that item's
:class:`Figures` (medians, per-round values) and does no I/O, so that it can be tested on
figures made up for the purpose; :func:`figures` builds the mapping from a run's workloads.
A target whose items were not measured (a partial run, a contender missing) is n/a, and says
why.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Final, Protocol

import attrs

from bench import labels as lb
from bench.common import Stats

MET: Final = "MET"
NOT_MET: Final = "NOT MET"
NA: Final = "n/a"
NOT_MEASURED: Final = "not measured in this run"
NEEDS_GRPC_LISTENER: Final = "needs the gRPC compatibility listener"


@attrs.frozen
class Figures:
    """What the targets read of one item: medians over the rounds of one run."""

    median: float
    unit: str
    #: Medians of the secondary figures ("server_cpu", "moved_gib", ...).
    extra: Mapping[str, float] = attrs.field(factory=dict)
    #: The item's value in each round (by round index): for comparisons within a round.
    by_round: Mapping[int, float] = attrs.field(factory=dict)
    #: Errors over all rounds.
    errors: float = 0.0
    #: Samples that failed (raised) over all rounds.
    failed: float = 0.0


Key = tuple[str, str]
Measured = Mapping[Key, Figures]


@attrs.frozen
class TargetResult:
    """One row of the Targets table."""

    #: The issue's workload ("sequential STAT, sync client, UDS").
    workload: str
    #: The part of its target this row checks (">= 0.5x the raw ping-pong limit").
    target: str
    status: str
    measured: str

    @property
    def text(self) -> str:
        return f"{self.workload}: {self.target}"

    def as_dict(self) -> dict[str, str]:
        return {
            "workload": self.workload,
            "target": self.target,
            "status": self.status,
            "measured": self.measured,
        }


class _ItemLike(Protocol):
    @property
    def label(self) -> str: ...
    @property
    def unit(self) -> str: ...
    @property
    def stats(self) -> Stats: ...


class _WorkloadLike(Protocol):
    @property
    def key(self) -> str: ...
    @property
    def items(self) -> Sequence[_ItemLike]: ...


def figures(workloads: Iterable[_WorkloadLike]) -> dict[Key, Figures]:
    """What the targets read of every measured item of a run: medians, the value of each
    round (from the "round" figure the runner records with each sample), and the errors and
    failed samples over all rounds."""
    out: dict[Key, Figures] = {}
    for workload in workloads:
        for item in workload.items:
            s = item.stats
            if not s.samples:
                continue
            rounds = s.extra.get("round", [])
            by_round = (
                {int(r): v for r, v in zip(rounds, s.samples, strict=True)}
                if len(rounds) == len(s.samples)
                else {}
            )
            out[(workload.key, item.label)] = Figures(
                median=s.median,
                unit=item.unit,
                extra={key: s.extra_median(key) for key in s.extra},
                by_round=by_round,
                errors=math.fsum(s.extra.get("errors", [])),
                failed=math.fsum(s.extra.get("failed", [])),
            )
    return out


# --- Formatting ------------------------------------------------------------------------------


def fmt_value(value: float | None, unit: str) -> str:
    """A figure as the tables print it: '0.42' GB/s, '13.8k' ops/s, '9.89' ms."""
    if value is None or math.isnan(value):
        return "-"
    if unit == "GB/s":
        return f"{value:.2f}" if value < 10 else f"{value:.1f}"
    if unit == "ops/s":
        return f"{value / 1e3:.1f}k" if value >= 1e3 else f"{value:.0f}"
    if unit.startswith("ms"):
        return f"{value:.2f}" if value < 100 else f"{value:.0f}"
    return f"{value:.1f}"


def _fmt_cpu(value: float, unit: str) -> str:
    return f"{value:.2f} {unit}" if unit == "s/GiB" else f"{value:.0f} {unit}"


def _status(ok: bool) -> str:
    return MET if ok else NOT_MET


def _usable(value: float | None) -> bool:
    return value is not None and not math.isnan(value) and value > 0


# --- Row kinds ------------------------------------------------------------------------------------


class _Rows:
    """Builds the rows from one run's figures."""

    def __init__(self, measured: Measured) -> None:
        self.measured = measured
        self.rows: list[TargetResult] = []

    def get(self, key: Key) -> Figures | None:
        figures = self.measured.get(key)
        if figures is None or not _usable(figures.median):
            return None
        return figures

    def add(self, workload: str, target: str, status: str, measured: str) -> None:
        self.rows.append(TargetResult(workload, target, status, measured))

    def missing(self, workload: str, target: str, why: str = NOT_MEASURED) -> None:
        self.add(workload, target, NA, why)

    def ratio(self, key: Key, ref: Key) -> float | None:
        """How many times ``key``'s median is ``ref``'s (both higher-is-better figures)."""
        a, b = self.get(key), self.get(ref)
        if a is None or b is None:
            return None
        return a.median / b.median

    def context(self, key: Key, ref: Key, name: str) -> str:
        """'; NAME: 0.42x' when both were measured, else nothing."""
        r = self.ratio(key, ref)
        return "" if r is None else f"; {name}: {r:.2f}x"

    def at_least_ratio(
        self, workload: str, target: str, key: Key, ref: Key, goal: float, context: str = ""
    ) -> None:
        """``key``'s median >= ``goal`` x ``ref``'s median."""
        a, b = self.get(key), self.get(ref)
        if a is None or b is None:
            self.missing(workload, target)
            return
        r = a.median / b.median
        unit = a.unit
        self.add(
            workload,
            target,
            _status(r >= goal),
            f"{r:.2f}x ({fmt_value(a.median, unit)} vs {fmt_value(b.median, unit)} {unit})"
            + context,
        )

    def at_least(
        self, workload: str, target: str, key: Key, goal: float, context: str = ""
    ) -> None:
        """``key``'s median >= ``goal`` (in the item's unit)."""
        a = self.get(key)
        if a is None:
            self.missing(workload, target)
            return
        self.add(
            workload,
            target,
            _status(a.median >= goal),
            f"{a.median:,.0f} {a.unit}" + context,
        )

    def server_cpu(
        self, workload: str, target: str, key: Key, goal: float, unit: str, context: str = ""
    ) -> None:
        """The median server CPU of ``key`` <= ``goal`` (s/GiB or us/op, as measured)."""
        a = self.get(key)
        cpu = float("nan") if a is None else a.extra.get("server_cpu", float("nan"))
        if not _usable(cpu):
            self.missing(workload, target)
            return
        self.add(workload, target, _status(cpu <= goal), _fmt_cpu(cpu, unit) + context)

    def cpu_context(self, key: Key, name: str, unit: str) -> str:
        a = self.get(key)
        cpu = float("nan") if a is None else a.extra.get("server_cpu", float("nan"))
        return f"; {name}: {_fmt_cpu(cpu, unit)}" if _usable(cpu) else ""

    def faster(self, *keys: Key) -> Key | None:
        """The key with the highest median among those measured."""
        found = [(figures.median, key) for key in keys if (figures := self.get(key)) is not None]
        return max(found)[1] if found else None


# --- The targets ------------------------------------------------------------------------------------


def evaluate(measured: Measured, *, quick: bool = False) -> list[TargetResult]:
    """The issue's targets, in its order, from one run's figures.

    ``quick`` notes where a quick run moves less than a target names (the RSS targets).
    """
    rows = _Rows(measured)
    _small_ops(rows)
    _bulk(rows)
    _crowd(rows)
    _grpc(rows)
    _rss(rows, quick)
    _rclone(rows)
    return rows.rows


def _small_ops(rows: _Rows) -> None:
    stat, pipe = lb.STAT, lb.PIPELINED
    sync, trio_client, ping = (stat, lb.LIB_UDS_SYNC), (stat, lb.LIB_UDS_TRIO), (stat, lb.PING_UDS)
    name = "sequential STAT, sync client, UDS"
    rows.at_least_ratio(name, ">= 0.5x the raw ping-pong limit", sync, ping, 0.5)
    rows.server_cpu(name, "server CPU <= 60 us/op", sync, 60.0, "us/op")
    rows.at_least_ratio(
        "sequential STAT, Trio client", ">= 0.35x the raw ping-pong limit", trio_client, ping, 0.35
    )
    name = "pipelined STAT, one connection"
    lean, via_trio = (pipe, lb.LIB_RAW_PIPELINED), (pipe, lb.LIB_TRIO_PIPELINED)
    rows.at_least(name, ">= 100k ops/s (lean driver)", lean, 100_000)
    rows.at_least(name, ">= 50k ops/s (Trio client)", via_trio, 50_000)
    rows.server_cpu(
        name,
        "server CPU <= 10 us/op (lean driver)",
        lean,
        10.0,
        "us/op",
        rows.cpu_context(via_trio, "with the Trio client", "us/op"),
    )


def _bulk(rows: _Rows) -> None:
    up, down, par = lb.UPLOAD, lb.DOWNLOAD, lb.PARALLEL
    copy = (up, lb.FILE_COPY_FSYNC)
    streamed, streamed_sync, fd = (up, lb.LIB_UDS_TRIO), (up, lb.LIB_UDS_SYNC), (up, lb.LIB_FD)
    name = "upload, streamed over UDS (Trio client)"
    rows.at_least_ratio(
        name,
        '>= 0.8x the "file copy + fsync" limit',
        streamed,
        copy,
        0.8,
        rows.context(streamed_sync, copy, "sync client"),
    )
    rows.server_cpu(
        name,
        "server CPU <= 0.8 s/GiB",
        streamed,
        0.8,
        "s/GiB",
        rows.cpu_context(streamed_sync, "sync client", "s/GiB"),
    )
    name = "upload by descriptor passing"
    rows.at_least_ratio(
        name,
        '>= 0.9x "file copy + fsync"',
        fd,
        copy,
        0.9,
        rows.context((up, lb.LIB_MEMFD), copy, "sealed memfd"),
    )
    rows.server_cpu(name, "server CPU <= 0.5 s/GiB", fd, 0.5, "s/GiB")
    # The file copy measured in the parallel workload's own rounds, else the upload's.
    par_copy = (par, lb.FILE_COPY_FSYNC) if rows.get((par, lb.FILE_COPY_FSYNC)) else copy
    rows.at_least_ratio(
        "16 parallel uploads (fd passing)",
        '>= 0.8x "file copy + fsync" (one file of the same total size)',
        (par, lb.LIB_FD),
        par_copy,
        0.8,
        rows.context((par, lb.LIB_UDS_TRIO), par_copy, "streamed")
        + ("" if par_copy[0] == par else "; the file copy of the upload workload's rounds"),
    )
    name = "download over UDS (Trio client)"
    rows.at_least_ratio(
        name,
        ">= 0.7x the plain-socket limit",
        (down, lb.LIB_UDS_TRIO),
        (down, lb.LIMIT_UDS),
        0.7,
        rows.context((down, lb.LIB_UDS_SYNC), (down, lb.LIMIT_UDS), "sync client"),
    )
    rows.server_cpu(
        name,
        "server CPU <= 0.4 s/GiB",
        (down, lb.LIB_UDS_TRIO),
        0.4,
        "s/GiB",
        rows.cpu_context((down, lb.LIB_UDS_SYNC), "sync client", "s/GiB"),
    )
    name = "WebSocket upload and download (Trio client)"
    for key, what in ((up, "upload"), (down, "download")):
        rows.at_least_ratio(
            name,
            f"{what} >= 0.8x Librorum over UDS (streamed, Trio client)",
            (key, lb.LIB_WS_TRIO),
            (key, lb.LIB_UDS_TRIO),
            0.8,
        )


def _crowd(rows: _Rows) -> None:
    name = "100 clients, paced (UDS, Trio clients)"
    target = "p99 <= 1.5x the raw echo's p99 in the same rounds"
    lib = rows.get((lb.CROWD, lb.crowd_uds(lb.PACED)))
    echo = rows.get((lb.CROWD, lb.crowd_echo(lb.PACED)))
    if lib is None or echo is None:
        rows.missing(name, target)
        rows.missing(name, "no errors")
        return
    shared = sorted(set(lib.by_round) & set(echo.by_round))
    ratios = [lib.by_round[r] / echo.by_round[r] for r in shared if _usable(echo.by_round[r])]
    if not ratios:
        rows.missing(name, target, "no round measured both")
    else:
        middle = statistics.median(ratios)
        each = ", ".join(f"{r:.2f}x" for r in ratios)
        rows.add(
            name,
            target,
            _status(middle <= 1.5),
            f"{middle:.2f}x, median of {len(ratios)} rounds ({each}); p99 medians "
            f"{lib.median:.2f} ms vs the echo's {echo.median:.2f} ms",
        )
    errors = lib.errors + lib.failed
    rows.add(name, "no errors", _status(errors == 0), f"{errors:.0f} errors over all rounds")


def _grpc(rows: _Rows) -> None:
    """Against gRPC on the same daemon and store: that needs a gRPC listener in the daemon.
    The gRPC peer (a separate process that only moves the bytes, or answers os.stat) is
    shown for context only."""
    name = "against gRPC (the same daemon and store)"
    for target, key, lib, peer in (
        (">= 2x gRPC upload", lb.UPLOAD, lb.LIB_FD, lb.GRPC_UDS),
        (">= 2x gRPC download", lb.DOWNLOAD, lb.LIB_UDS_TRIO, lb.GRPC_UDS),
        (">= 5x gRPC sequential small ops", lb.STAT, lb.LIB_UDS_SYNC, lb.GRPC_UDS),
        (">= 5x gRPC pipelined small ops", lb.PIPELINED, lb.LIB_RAW_PIPELINED, lb.GRPC_PIPELINED),
    ):
        r = rows.ratio((key, lib), (key, peer))
        context = "" if r is None else f" (context, vs the gRPC peer process: {r:.2f}x)"
        rows.missing(name, f"LBRU UDS {target}", NEEDS_GRPC_LISTENER + context)


def _rss(rows: _Rows, quick: bool) -> None:
    name = "daemon peak RSS (VmHWM)"
    moving = rows.get((lb.RSS, lb.RSS_MOVING))
    if moving is None:
        rows.missing(name, "<= 100 MiB moving 20 GiB")
    else:
        moved = moving.extra.get("moved_gib", float("nan"))
        short = quick or not moved >= 20 - 0.01
        rows.add(
            name,
            "<= 100 MiB moving 20 GiB",
            _status(moving.median <= 100),
            f"{moving.median:.1f} MiB after moving {moved:.1f} GiB"
            + (" (quick run: less than 20 GiB)" if short else ""),
        )
    concurrent = rows.get((lb.RSS, lb.RSS_CONCURRENT))
    if concurrent is None:
        rows.missing(name, "<= 300 MiB with 64 concurrent uploads")
    else:
        uploads = concurrent.extra.get("uploads", float("nan"))
        each = concurrent.extra.get("upload_mib", float("nan"))
        rows.add(
            name,
            "<= 300 MiB with 64 concurrent uploads",
            _status(concurrent.median <= 300 and uploads >= 64),
            f"{concurrent.median:.1f} MiB with {uploads:.0f} uploads of {each:.0f} MiB at once",
        )


def _rclone(rows: _Rows) -> None:
    """Librorum against rclone serve webdav, the faster of its two HTTP clients each way."""
    name = "against rclone serve webdav (Go)"
    ways: Sequence[tuple[str, Key, Key, Key, Key]] = (
        (
            "upload",
            (lb.UPLOAD, lb.RCLONE_CURL_PUT),
            (lb.UPLOAD, lb.RCLONE_PY_PUT),
            (lb.UPLOAD, lb.LIB_CLI_PUT),
            (lb.UPLOAD, lb.LIB_FD),
        ),
        (
            "download",
            (lb.DOWNLOAD, lb.RCLONE_CURL_GET),
            (lb.DOWNLOAD, lb.RCLONE_PY_GET),
            (lb.DOWNLOAD, lb.LIB_CLI_GET),
            (lb.DOWNLOAD, lb.LIB_UDS_TRIO),
        ),
    )
    for what, curl, python, cli, client in ways:
        ref = rows.faster(curl, python)
        client_name = "fd passing, Trio client" if what == "upload" else "Trio client"
        for how, lib in (("from the CLI", cli), (f"from the clients ({client_name})", client)):
            target = f"{what} >= 3x rclone, {how}"
            if ref is None:
                rows.missing(name, target, NOT_MEASURED + " (rclone)")
                continue
            which = "curl" if ref == curl else "http.client"
            context = f"; rclone with {which}, the faster"
            if what == "upload":
                context += " (it never fsyncs what it stores)"
            figures = rows.get(lib)
            startup = float("nan") if figures is None else figures.extra.get("startup_s", math.nan)
            if _usable(startup):
                context += f"; librorum ping alone (start-up, connect, exit): {startup:.2f} s"
            rows.at_least_ratio(name, target, lib, ref, 3.0, context)


def text_table(results: Sequence[TargetResult]) -> str:
    """The Targets table: the issue's workload once per group, then each part's row."""
    rows = [["target (the performance issue's)", "", "status", "measured"]]
    previous = None
    for r in results:
        rows.append([r.workload if r.workload != previous else "", r.target, r.status, r.measured])
        previous = r.workload
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["", "== Targets (medians of this run) =="]
    for row in rows:
        cells = [row[i].ljust(widths[i]) for i in range(3)]
        lines.append("  " + "  ".join([*cells, row[3]]).rstrip())
    counts = {s: sum(r.status == s for r in results) for s in (MET, NOT_MET, NA)}
    lines.append(f"  {counts[MET]} met, {counts[NOT_MET]} not met, {counts[NA]} n/a")
    return "\n".join(lines)
