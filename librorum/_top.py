"""``librorum top``: the requests in flight across the daemon, refreshed once a second.

Each refresh is one REQUESTS request (spec 5.21, administrators only). On a terminal the view
is a full-screen table redrawn in place (the terminal's alternate screen, restored on exit);
otherwise each refresh prints a plain snapshot. ``--json`` prints one JSON document per
refresh, one per line (with ``--once``: one document). Ctrl-C ends it with exit status 0.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, TextIO

import attrs

if TYPE_CHECKING:
    from librorum.protocol.messages import RequestEntry, RequestsReply

#: Seconds between refreshes.
REFRESH: Final = 1.0

#: Terminal control: the alternate screen (the shell's screen comes back on exit), cursor
#: hidden meanwhile, home and clear before each frame.
_ENTER: Final = "\x1b[?1049h\x1b[?25l"
_LEAVE: Final = "\x1b[?25h\x1b[?1049l"
_HOME_CLEAR: Final = "\x1b[H\x1b[2J"
_BOLD: Final = "\x1b[1m"
_RESET: Final = "\x1b[0m"

_COLUMNS: Final = ("CONN", "PEER", "SID", "COMMAND", "AGE", "MOVED", "WAITING", "PATH")
#: Right-aligned columns (numbers).
_RIGHT: Final = (0, 2, 4, 5)


def peer_text(entry: RequestEntry) -> str:
    """``uid 1000 pid 42`` on a Unix socket, the address on WebSocket."""
    if entry.address is not None:
        return entry.address
    parts = []
    if entry.uid is not None:
        parts.append(f"uid {entry.uid}")
    if entry.pid is not None:
        parts.append(f"pid {entry.pid}")
    return " ".join(parts) or entry.transport


def age_text(age_ms: int) -> str:
    """``850ms``, ``12.5s``, ``4m05s``, ``2h03m``."""
    if age_ms < 1000:
        return f"{age_ms}ms"
    seconds = age_ms / 1000
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def rows(reply: RequestsReply, size: Callable[[int], str]) -> list[list[str]]:
    """The table's rows (header first), oldest request first."""
    out = [list(_COLUMNS)]
    out.extend(
        [
            str(entry.connection),
            peer_text(entry),
            str(entry.session),
            entry.command,
            age_text(entry.age_ms),
            size(entry.moved),
            entry.waiting,
            entry.path or "-",
        ]
        for entry in sorted(reply.requests, key=lambda e: -e.age_ms)
    )
    return out


def summary(reply: RequestsReply) -> str:
    """The first line of a view."""
    listed = len(reply.requests)
    shown = "" if listed == reply.total else f" (the oldest {listed} shown)"
    return (
        f"librorum top - {time.strftime('%H:%M:%S')} - {reply.total} requests in flight "
        f"on {reply.connections} connections{shown}"
    )


def as_json(reply: RequestsReply) -> str:
    """One JSON document (one line) of a snapshot."""
    document = {
        "time": round(time.time(), 3),
        "total": reply.total,
        "connections": reply.connections,
        "requests": [attrs.asdict(entry) for entry in reply.requests],
    }
    return json.dumps(document, separators=(",", ":"))


@attrs.frozen
class Formats:
    """How the command line writes sizes and tables (``librorum.__main__``'s helpers)."""

    size: Callable[[int], str]
    table: Callable[[list[list[str]], tuple[int, ...]], str]


def render(reply: RequestsReply, formats: Formats, *, height: int | None) -> str:
    """A plain-text view: the summary, then the table, cut to ``height`` lines if given."""
    lines = [summary(reply), "", *formats.table(rows(reply, formats.size), _RIGHT).split("\n")]
    if height is not None and len(lines) > height:
        hidden = len(lines) - height + 1
        lines = [*lines[: height - 1], f"... {hidden} more"]
    return "\n".join(lines)


def run(
    fetch: Callable[[], RequestsReply],
    formats: Formats,
    *,
    once: bool,
    as_json_lines: bool,
    out: TextIO = sys.stdout,
    refresh: float = REFRESH,
) -> int:
    """Show snapshots from ``fetch`` until Ctrl-C (or one, with ``once``).

    Returns:
        The exit status: 0 (Ctrl-C included).

    Raises:
        LibrorumError: from ``fetch`` (FORBIDDEN for a caller who is not an administrator,
            the connection lost, ...), after the terminal is restored.
    """
    full_screen = out.isatty() and not once and not as_json_lines
    if full_screen:
        out.write(_ENTER)
    try:
        while True:
            started = time.monotonic()
            reply = fetch()
            if as_json_lines:
                out.write(as_json(reply) + "\n")
            elif full_screen:
                width, height = shutil.get_terminal_size()
                # Lines cut to the screen's width: a wrapped line would scroll the view.
                head, *rest = (
                    line[:width] for line in render(reply, formats, height=height - 1).split("\n")
                )
                body = "\n".join(rest)
                out.write(f"{_HOME_CLEAR}{_BOLD}{head}{_RESET}\n{body}")
            else:
                out.write(render(reply, formats, height=None) + "\n")
                if not once:
                    out.write("\n")
            out.flush()
            if once:
                return 0
            time.sleep(max(0.0, refresh - (time.monotonic() - started)))
    except KeyboardInterrupt:
        return 0
    finally:
        if full_screen:
            out.write(_LEAVE)
            out.flush()
