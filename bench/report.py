"""The results of a run: the table (medians, spreads, ratios), the targets (MET / NOT MET),
the JSON file and the chart."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from bench import workloads as w
from bench.workloads import Item, Workload

# --- Lookups -----------------------------------------------------------------------------------------


def find(workloads: Sequence[Workload], key: str, label: str) -> Item | None:
    for workload in workloads:
        if workload.key == key:
            for item in workload.items:
                if item.label == label:
                    return item
    return None


def median(workloads: Sequence[Workload], key: str, label: str) -> float | None:
    item = find(workloads, key, label)
    if item is None or not item.stats.samples:
        return None
    return item.stats.median


def ratio(item: Item, ref: Item | None) -> float | None:
    """How many times better ``item`` is than ``ref`` (> 1: better), by their medians."""
    if ref is None or not item.stats.samples or not ref.stats.samples:
        return None
    a, b = item.stats.median, ref.stats.median
    if not a or not b or math.isnan(a) or math.isnan(b):
        return None
    return a / b if item.higher_is_better else b / a


def _ref(workload: Workload, label: str | None) -> Item | None:
    if label is None:
        return None
    return next((i for i in workload.items if i.label == label), None)


# --- Formatting ---------------------------------------------------------------------------------------


def fmt_value(value: float, unit: str) -> str:
    if value is None or math.isnan(value):
        return "-"
    if unit == "GB/s":
        return f"{value:.2f}" if value < 10 else f"{value:.1f}"
    if unit == "ops/s":
        return f"{value / 1e3:.1f}k" if value >= 1e3 else f"{value:.0f}"
    if unit.startswith("ms"):
        return f"{value:.2f}" if value < 100 else f"{value:.0f}"
    return f"{value:.1f}"


def fmt_ratio(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.2f}x" if value < 10 else f"{value:.1f}x"


def _cpu(item: Item, unit: str) -> str:
    value = item.stats.extra_median("server_cpu")
    if math.isnan(value):
        return "-"
    return f"{value:.2f} {unit}" if unit == "s/GiB" else f"{value:.0f} {unit}"


def _extra(item: Item) -> str:
    stats = item.stats
    parts = []
    if "p50_ms" in stats.extra:
        parts.append(f"p50 {stats.extra_median('p50_ms'):.2f} ms")
        parts.append(f"{stats.extra_median('ops_per_s'):,.0f} ops/s")
    others = stats.extra_median("others_cpu")
    if not math.isnan(others):
        parts.append(f"others {others:.0%}")
    errors = stats.extra.get("errors")
    if errors is not None and sum(errors):
        parts.append(f"errors {sum(errors):.0f}")
    elif errors is not None and "p50_ms" in stats.extra:
        parts.append("no errors")
    return ", ".join(parts)


def table(workloads: Sequence[Workload]) -> str:
    """Every workload as a block of aligned rows."""
    lines: list[str] = []
    for workload in workloads:
        lines.append("")
        how = f"{workload.rounds} rounds, interleaved" if workload.rounds > 1 else "one run"
        lines.append(f"== {workload.title} ({how}) ==")
        if workload.note:
            lines.append(f"   {workload.note}")
        header = [
            "contender",
            "median",
            "unit",
            "min..max",
            "spread",
            "vs gRPC",
            "vs limit",
            "server CPU",
            "",
        ]
        rows = [header]
        for item in workload.items:
            unit = item.unit
            if not item.available:
                rows.append([item.label, "n/a", unit, "", "", "", "", "", item.note])
                continue
            s = item.stats
            spread = "-" if math.isnan(s.spread) else f"{s.spread * 100:.0f}%"
            rows.append(
                [
                    item.label,
                    fmt_value(s.median, unit),
                    unit,
                    f"{fmt_value(s.low, unit)}..{fmt_value(s.high, unit)}",
                    spread,
                    fmt_ratio(ratio(item, _ref(workload, item.grpc_ref))),
                    fmt_ratio(ratio(item, _ref(workload, item.limit_ref))),
                    _cpu(item, workload.cpu_unit) if workload.cpu_unit else "-",
                    _extra(item),
                ]
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        right = {1, 4, 5, 6, 7}
        for row in rows:
            cells = [
                cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
                for i, cell in enumerate(row)
            ]
            lines.append("  " + "  ".join(cells).rstrip())
    lines.append("")
    lines.append(
        "vs gRPC / vs limit: times better than the reference of the same transport, by medians "
        "(> 1: better; for latency, the reference's p99 over this one's). spread: "
        "(max - min) / median. server CPU: CPU time of the server process (all threads) per "
        "GiB moved or per op, median. others: share of the machine's CPUs that processes "
        "outside this run took during the samples (median): the noise to expect."
    )
    return "\n".join(lines)


# --- Targets ------------------------------------------------------------------------------------------


@attrs.define
class TargetResult:
    text: str
    measured: str
    status: str  # MET, NOT MET, N/A

    def as_dict(self) -> dict[str, str]:
        return {"target": self.text, "measured": self.measured, "status": self.status}


def _status(ok: bool | None) -> str:
    if ok is None:
        return "N/A"
    return "MET" if ok else "NOT MET"


def _rel(
    workloads: Sequence[Workload], key: str, label: str, ref: str, higher: bool = True
) -> float | None:
    a, b = median(workloads, key, label), median(workloads, key, ref)
    if a is None or b is None or not a or not b:
        return None
    return a / b if higher else b / a


def targets(workloads: Sequence[Workload], quick: bool) -> list[TargetResult]:
    out: list[TargetResult] = []

    def ratio_target(
        text: str, key: str, label: str, ref: str, goal: float, also: str | None = None
    ) -> None:
        r = _rel(workloads, key, label, ref)
        unit = "GB/s" if key in ("upload", "download") else "ops/s"
        a = median(workloads, key, label)
        b = median(workloads, key, ref)
        measured = "-"
        if r is not None and a is not None and b is not None:
            measured = f"{r:.2f}x ({fmt_value(a, unit)} vs {fmt_value(b, unit)} {unit})"
        if also is not None:
            r2 = _rel(workloads, key, also, ref)
            if r2 is not None:
                measured += f"; {also}: {r2:.2f}x"
        out.append(TargetResult(text, measured, _status(None if r is None else r >= goal)))

    ratio_target(
        "local upload 1 GiB >= 2x gRPC upload over the same UDS",
        "upload",
        w.LIB_UDS_TRIO,
        w.GRPC_UDS,
        2.0,
        also=w.LIB_UDS_SYNC,
    )
    pattern = median(workloads, "upload", w.STORE_PATTERN)
    if pattern is not None:
        out[-1].measured += f"; the store's disk-write pattern alone: {pattern:.2f} GB/s"
    ratio_target(
        "local download >= 4x gRPC download (UDS)",
        "download",
        w.LIB_UDS_TRIO,
        w.GRPC_UDS,
        4.0,
        also=w.LIB_UDS_SYNC,
    )
    fd_vs_grpc = _rel(workloads, "upload", w.LIB_FD, w.GRPC_UDS)
    fd_vs_copy = _rel(workloads, "upload", w.LIB_FD, w.FILE_COPY)
    out.append(
        TargetResult(
            "fd-passing upload >= 3x gRPC and >= 60 % of the file-copy limit",
            "-"
            if fd_vs_grpc is None or fd_vs_copy is None
            else f"{fd_vs_grpc:.2f}x gRPC, {fd_vs_copy:.0%} of the file copy",
            _status(
                None
                if fd_vs_grpc is None or fd_vs_copy is None
                else fd_vs_grpc >= 3 and fd_vs_copy >= 0.6
            ),
        )
    )
    sync = median(workloads, "stat", w.LIB_UDS_SYNC)
    r = _rel(workloads, "stat", w.LIB_UDS_SYNC, w.GRPC_UDS)
    ok = None if r is None or sync is None else (r >= 10 and sync >= 20_000)
    out.append(
        TargetResult(
            "sequential stat, sync client over UDS >= 10x gRPC unary (>= ~20k ops/s)",
            "-" if r is None or sync is None else f"{r:.2f}x, {sync:,.0f} ops/s",
            _status(ok),
        )
    )
    r = _rel(workloads, "stat", w.LIB_UDS_TRIO, w.GRPC_UDS)
    trio_ops = median(workloads, "stat", w.LIB_UDS_TRIO)
    out.append(
        TargetResult(
            "sequential stat, Trio client >= 6x gRPC unary",
            "-" if r is None or trio_ops is None else f"{r:.2f}x, {trio_ops:,.0f} ops/s",
            _status(None if r is None else r >= 6),
        )
    )
    raw_label = f"{w.LIB_RAW}, {w.RAW_PIPELINE_DEPTH} in flight"
    trio_label = f"{w.LIB_UDS_TRIO}, {w.PIPELINE_DEPTH} tasks"
    raw = median(workloads, "pipelined", raw_label)
    via_trio = median(workloads, "pipelined", trio_label)
    out.append(
        TargetResult(
            "pipelined small ops on one connection >= 300k ops/s",
            "-"
            if raw is None
            else f"{raw:,.0f} ops/s (lean driver); Trio client: {via_trio or 0:,.0f} ops/s",
            _status(None if raw is None else raw >= 300_000),
        )
    )
    crowd = next(
        (
            item
            for workload in workloads
            if workload.key == "crowd"
            for item in workload.items
            if item.group == w.LIBRORUM and "closed loop" not in item.label
        ),
        None,
    )
    closed = next(
        (
            item
            for workload in workloads
            if workload.key == "crowd"
            for item in workload.items
            if item.group == w.LIBRORUM and "closed loop" in item.label
        ),
        None,
    )
    if crowd is not None and crowd.stats.samples:
        p99 = max(crowd.stats.samples)  # the worst round
        errors = sum(crowd.stats.extra.get("errors", [0.0]))
        measured = f"p99 {p99:.2f} ms (worst round), errors {errors:.0f} (paced)"
        if closed is not None and closed.stats.samples:
            measured += (
                f"; closed loop: p99 {closed.stats.median:.1f} ms, "
                f"{closed.stats.extra_median('ops_per_s'):,.0f} ops/s, "
                f"errors {sum(closed.stats.extra.get('errors', [0.0])):.0f}"
            )
        out.append(
            TargetResult(
                "100 concurrent clients p99 <= 5 ms, no errors",
                measured,
                _status(p99 <= 5.0 and errors == 0),
            )
        )
    else:
        out.append(TargetResult("100 concurrent clients p99 <= 5 ms, no errors", "-", "N/A"))
    ratio_target("WebSocket upload >= 0.8x gRPC over TCP", "upload", w.LIB_WS_TRIO, w.GRPC_TCP, 0.8)
    ratio_target(
        "WebSocket download >= 0.8x gRPC over TCP", "download", w.LIB_WS_TRIO, w.GRPC_TCP, 0.8
    )
    rss = next((wl for wl in workloads if wl.key == "rss"), None)
    fresh = rss.items[0] if rss is not None and rss.items else None
    if fresh is not None and fresh.stats.samples:
        peak = fresh.stats.median
        moved = fresh.stats.extra_median("moved_gib")
        out.append(
            TargetResult(
                "daemon peak RSS moving 10 GiB <= 100 MiB",
                f"{peak:.1f} MiB VmHWM after moving {moved:.1f} GiB"
                + (" (quick run: less than 10 GiB)" if quick else ""),
                _status(peak <= 100),
            )
        )
    else:
        out.append(TargetResult("daemon peak RSS moving 10 GiB <= 100 MiB", "-", "N/A"))
    return out


def targets_text(results: Sequence[TargetResult]) -> str:
    rows = [["target (from the issue)", "status", "measured"]]
    rows += [[r.text, r.status, r.measured] for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    lines = ["", "== Targets =="]
    lines += [f"  {row[0].ljust(widths[0])}  {row[1].ljust(widths[1])}  {row[2]}" for row in rows]
    return "\n".join(lines)


# --- JSON -----------------------------------------------------------------------------------------------


def _clean(value: float) -> float | None:
    return None if value is None or math.isnan(value) else value


def as_json(
    workloads: Sequence[Workload], target_results: Sequence[TargetResult], meta: dict[str, Any]
) -> dict[str, Any]:
    out: dict[str, Any] = {"meta": meta, "workloads": [], "targets": []}
    for workload in workloads:
        items = []
        for item in workload.items:
            s = item.stats
            items.append(
                {
                    "label": item.label,
                    "group": item.group,
                    "unit": item.unit,
                    "higher_is_better": item.higher_is_better,
                    "available": item.available,
                    "note": item.note,
                    "samples": s.samples,
                    "median": _clean(s.median),
                    "min": _clean(s.low),
                    "max": _clean(s.high),
                    "spread": _clean(s.spread),
                    "extra": s.extra,
                    "extra_median": {k: _clean(s.extra_median(k)) for k in s.extra},
                    "grpc_ref": item.grpc_ref,
                    "limit_ref": item.limit_ref,
                    "vs_grpc": ratio(item, _ref(workload, item.grpc_ref)),
                    "vs_limit": ratio(item, _ref(workload, item.limit_ref)),
                }
            )
        out["workloads"].append(
            {
                "key": workload.key,
                "title": workload.title,
                "note": workload.note,
                "rounds": workload.rounds,
                "items": items,
            }
        )
    out["targets"] = [t.as_dict() for t in target_results]
    return out


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n")


# --- Chart ----------------------------------------------------------------------------------------------

_COLOURS = {
    w.LIMIT: "#9e9e9e",
    w.GRPC: "#f28e2b",
    w.LIBRORUM: "#4e79a7",
    w.FD: "#76b7b2",
    w.WS: "#59a14f",
}


def chart(
    workloads: Sequence[Workload],
    target_results: Sequence[TargetResult],
    path: Path,
    subtitle: str,
) -> None:
    """Four panels: bulk throughput, small-op rates, the 100-client latencies, the targets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(16, 12))
    by_key = {wl.key: wl for wl in workloads}

    def bars(ax: Any, keys: Sequence[str], title: str, ylabel: str, log: bool) -> None:
        x = 0.0
        ticks, tick_labels = [], []
        for key in keys:
            workload = by_key.get(key)
            if workload is None:
                continue
            items = [i for i in workload.items if i.stats.samples]
            start = x
            for item in items:
                s = item.stats
                ax.bar(
                    x,
                    s.median,
                    width=0.8,
                    color=_COLOURS.get(item.group, "#333333"),
                    yerr=[[s.median - s.low], [s.high - s.median]],
                    capsize=2,
                    error_kw={"elinewidth": 0.8},
                )
                ax.text(
                    x,
                    s.high * (1.15 if log else 1.02),
                    fmt_value(s.median, item.unit),
                    ha="center",
                    va="bottom",
                    fontsize=6,
                    rotation=90,
                )
                ticks.append(x)
                tick_labels.append(_short(item.label))
                x += 1
            ax.axvline(x - 0.5, color="#dddddd", linewidth=0.8)
            ax.text(
                (start + x - 1) / 2,
                1.0,
                workload.short or workload.title,
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="bottom",
                fontsize=8,
                fontweight="bold",
            )
            x += 0.6
        if log:
            ax.set_yscale("log")
            low, high = ax.get_ylim()
            ax.set_ylim(low, high * 4)  # room for the value labels
        ax.set_xticks(ticks)
        ax.set_xticklabels(tick_labels, rotation=60, ha="right", fontsize=6.5)
        ax.set_ylabel(ylabel)
        ax.set_title(title, pad=18, fontsize=10)
        ax.grid(axis="y", alpha=0.3)

    bars(axes[0][0], ["upload", "download", "parallel"], "Bulk throughput", "GB/s (log)", True)
    bars(axes[0][1], ["stat", "pipelined"], "Small ops", "ops/s (log)", True)
    _crowd_panel(axes[1][0], by_key.get("crowd"))
    _targets_panel(axes[1][1], target_results)
    handles = [
        plt.Rectangle((0, 0), 1, 1, color=colour)  # type: ignore[attr-defined]
        for colour in _COLOURS.values()
    ]
    fig.suptitle(f"Librorum side-by-side benchmark: {subtitle}", y=0.99, fontsize=12)
    fig.legend(
        handles,
        ["limit (no protocol)", "gRPC peer", "Librorum UDS", "Librorum fd passing", "Librorum WS"],
        loc="upper center",
        bbox_to_anchor=(0.5, 0.965),
        ncol=5,
        fontsize=9,
        frameon=False,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.94), h_pad=3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _short(label: str) -> str:
    replacements = [
        ("limit: ", ""),
        ("Librorum ", ""),
        (", Trio clients", " Trio"),
        (", Trio client", " Trio"),
        (", sync client", " sync"),
        ("WebSocket", "WS"),
        ("Unix socket", "UDS"),
        ("TCP loopback", "TCP"),
        ("lean pipelined driver", "lean driver"),
        (" (grpc.aio)", " aio"),
        ("raw echo", "echo"),
    ]
    for old, new in replacements:
        label = label.replace(old, new)
    label = re.sub(r"paced, 1 STAT / (\d+) ms each", r"paced \1 ms", label)
    return label if len(label) <= 40 else label[:39] + "…"


def _crowd_panel(ax: Any, workload: Workload | None) -> None:
    ax.set_title("100 concurrent clients: STAT latency (median of rounds)", fontsize=10)
    if workload is None:
        ax.axis("off")
        return
    items = [i for i in workload.items if i.stats.samples]
    for index, item in enumerate(items):
        colour = _COLOURS.get(item.group, "#333333")
        p50 = item.stats.extra_median("p50_ms")
        p99 = item.stats.median
        ax.barh(index, p99, color=colour, alpha=0.45)
        ax.barh(index, p50, color=colour)
        ax.text(p99 * 1.05, index, f"p50 {p50:.2f} / p99 {p99:.2f} ms", va="center", fontsize=7)
    ax.axvline(5.0, color="#c00000", linestyle="--", linewidth=1)
    ax.text(5.0, len(items) - 0.4, " target: p99 5 ms", color="#c00000", fontsize=7)
    ax.set_yticks(range(len(items)))
    ax.set_yticklabels([_short(i.label) for i in items], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("ms (log): solid p50, light p99")
    ax.grid(axis="x", alpha=0.3)


def _targets_panel(ax: Any, results: Sequence[TargetResult]) -> None:
    ax.axis("off")
    ax.set_title("Targets", fontsize=10)
    colours = {"MET": "#2e7d32", "NOT MET": "#c62828", "N/A": "#757575"}
    y = 0.97
    for result in results:
        ax.text(
            0.0,
            y,
            result.status,
            color=colours.get(result.status, "black"),
            fontsize=8,
            fontweight="bold",
            transform=ax.transAxes,
            va="top",
        )
        ax.text(0.13, y, result.text, fontsize=8, transform=ax.transAxes, va="top")
        ax.text(
            0.13,
            y - 0.04,
            _wrap(result.measured, 80),
            fontsize=7,
            color="#444444",
            transform=ax.transAxes,
            va="top",
        )
        y -= 0.085 + 0.03 * _wrap(result.measured, 80).count("\n")


def _wrap(text: str, width: int) -> str:
    words = text.split()
    lines: list[str] = []
    line = ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    if line:
        lines.append(line)
    return "\n".join(lines)
