"""The reliability campaign's figures: each campaign test records what it measured, and the
test session writes them to ``figures.json`` and prints them as a short table.

A figure is a name (``area.what``, e.g. ``crash.sigkill``) and a flat mapping of values
(numbers, short strings, booleans). The file is merged, not replaced: running one test
updates its own figures and keeps the others, and each figure carries the commit it was
measured at, so a stale figure is recognisable. ``LIBRORUM_FIGURES`` names another file.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Final

#: The repository root (figures.json lives there unless LIBRORUM_FIGURES says otherwise).
ROOT: Final = Path(__file__).resolve().parent.parent

Value = int | float | str | bool | None


def figures_path() -> Path:
    """Where the figures go: ``$LIBRORUM_FIGURES``, else ``figures.json`` at the root."""
    return Path(os.environ.get("LIBRORUM_FIGURES") or ROOT / "figures.json")


def _commit() -> str:
    try:
        result = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return result.stdout.strip() or "unknown"


class FigureBook:
    """The figures recorded during one test session."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Value]] = {}

    def record(self, name: str, values: Mapping[str, Value]) -> None:
        """Record (or replace) the figure ``name``."""
        for key, value in values.items():
            if not isinstance(value, int | float | str | bool | type(None)):
                msg = f"figure {name}.{key} must be a number, a string or a boolean"
                raise TypeError(msg)
        self.entries[name] = dict(values)

    def write(self, path: Path | None = None) -> Path:
        """Merge this session's figures into the figures file; returns its path."""
        path = path or figures_path()
        try:
            existing = json.loads(path.read_text())
            if not isinstance(existing, dict):
                existing = {}
        except (OSError, ValueError):
            existing = {}
        commit = _commit()
        when = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        for name, values in self.entries.items():
            existing[name] = {**values, "commit": commit, "measured": when}
        path.write_text(json.dumps(dict(sorted(existing.items())), indent=2) + "\n")
        return path

    def table(self) -> str:
        """The session's figures, one line each."""
        width = max((len(name) for name in self.entries), default=0)
        lines = []
        for name, values in sorted(self.entries.items()):
            text = ", ".join(f"{key}={_show(value)}" for key, value in values.items())
            lines.append(f"{name.ljust(width)}  {text}")
        return "\n".join(lines)


def _show(value: Value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


#: The session's book (one per pytest process).
BOOK: Final = FigureBook()
