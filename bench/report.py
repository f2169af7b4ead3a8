"""The results of a run: the table (medians, spreads, ratios), the targets (MET / NOT MET /
n/a, evaluated by :mod:`bench.targets` from this run's medians), the JSON file and the chart."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import labels as lb, workloads as w
from bench.targets import MET, NA, NOT_MET, TargetResult, evaluate, figures, fmt_value
from bench.workloads import Item, Workload

# --- Lookups -----------------------------------------------------------------------------------------


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
    if errors is not None and math.fsum(errors):
        parts.append(f"errors {math.fsum(errors):.0f}")
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


def targets(workloads: Sequence[Workload], quick: bool) -> list[TargetResult]:
    """The issue's targets from this run's medians (see :mod:`bench.targets`)."""
    return evaluate(figures(workloads), quick=quick)


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
    w.RCLONE: "#b07aa1",
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
        [
            "limit (no protocol)",
            "gRPC peer",
            "Librorum UDS",
            "Librorum fd passing",
            "Librorum WS",
            "rclone webdav",
        ],
        loc="upper center",
        bbox_to_anchor=(0.5, 0.965),
        ncol=6,
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
        ("rclone serve webdav", "rclone"),
        ("Python http.client", "http.client"),
        ("CLI: librorum ", "CLI "),
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
    echo = next((i for i in items if i.label == lb.crowd_echo(lb.PACED)), None)
    if echo is not None:
        # The target compares within rounds; the line shows it on the medians.
        goal = 1.5 * echo.stats.median
        ax.axvline(goal, color="#c00000", linestyle="--", linewidth=1)
        ax.text(
            goal,
            len(items) - 0.4,
            " target: 1.5x the paced echo's p99",
            color="#c00000",
            fontsize=7,
        )
    ax.set_yticks(range(len(items)))
    ax.set_yticklabels([_short(i.label) for i in items], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("ms (log): solid p50, light p99")
    ax.grid(axis="x", alpha=0.3)


def _targets_panel(ax: Any, results: Sequence[TargetResult]) -> None:
    """One line per target: status, target, and the first clause of what was measured (the
    table has it all)."""
    ax.axis("off")
    ax.set_title("Targets (medians of this run)", fontsize=10)
    colours = {MET: "#2e7d32", NOT_MET: "#c62828", NA: "#757575"}
    step = min(0.06, 1.0 / max(1, len(results)))
    for index, result in enumerate(results):
        y = 1.0 - index * step
        ax.text(
            0.0,
            y,
            result.status,
            color=colours.get(result.status, "black"),
            fontsize=6,
            fontweight="bold",
            transform=ax.transAxes,
            va="top",
        )
        line = f"{result.text}: {result.measured.split(';')[0]}"
        ax.text(
            0.08,
            y,
            line if len(line) <= 125 else line[:124] + "…",
            fontsize=6,
            transform=ax.transAxes,
            va="top",
        )
