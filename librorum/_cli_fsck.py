"""What ``librorum fsck [--repair] [--json]`` prints of the store's check (spec 5.20).

Exit status: 0 when the store is clean (after a repair: nothing left to do), 1 when problems
remain (after a repair: files to upload again, which it names), as for any failed command.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Final

import attrs

from librorum.protocol.messages import FsckReply

EXIT_OK: Final = 0
EXIT_PROBLEMS: Final = 1


def exit_status(report: FsckReply) -> int:
    """0 when nothing is left to do, 1 when problems remain."""
    return EXIT_OK if report.ok else EXIT_PROBLEMS


def as_json(report: FsckReply) -> str:
    """The report for scripts: every field, and ``ok``."""
    document = attrs.asdict(report)
    document["ok"] = report.ok
    return json.dumps(document, indent=2)


def describe(report: FsckReply, human_size: Callable[[int], str]) -> str:
    """The report for a person: the figures, each kind of defect found with its items, the
    files affected, what a repair did, and what to do next."""
    lines = [
        (
            f"checked {report.files:,} files in {report.directories:,} directories: "
            f"{report.chunks_done:,} chunks, {human_size(report.bytes_done)} rehashed"
        )
    ]

    def section(title: str, count: int, items: tuple[str, ...]) -> None:
        if not count:
            return
        lines.append(f"{title}: {count:,}")
        lines.extend(f"  {item}" for item in items)
        if count > len(items):
            lines.append(f"  ... and {count - len(items):,} more")

    section("corrupt chunks (now quarantined)", report.corrupt_count, report.corrupt)
    section("missing chunks", report.missing_count, report.missing)
    section("orphan chunks", report.orphan_count, report.orphans)
    section("wrong reference counts", report.refcount_error_count, report.refcount_errors)
    section("namespace errors", len(report.namespace_errors), report.namespace_errors)
    section("quarantined chunks", report.quarantined_count, report.quarantined)
    section("files affected", report.affected_count, report.affected)
    if report.repaired:
        lines.append(
            f"repair: {report.orphans_removed:,} orphan chunk files removed, "
            f"{report.refcounts_fixed:,} reference counts fixed"
        )
        section("not repaired", len(report.unrepaired), report.unrepaired)
        section("files to upload again", report.reupload_count, report.reupload)
        if report.reupload_count:
            lines.append(
                "store: the files above use damaged data: upload their content again "
                "(`librorum put LOCAL REMOTE` heals them)"
            )
        elif report.ok:
            lines.append("store: repaired, nothing left to do")
    elif report.ok:
        lines.append("store: clean")
    else:
        lines.append(
            "store: problems found; `librorum fsck --repair` fixes what it can and lists "
            "the files to upload again"
        )
    return "\n".join(lines)
