"""Fixtures of the store tests, and the figures they report at the end of the run."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from librorum.store import Store, open_store

#: Small chunks so that small test files span several chunks.
TEST_CHUNK_SIZE = 4096
#: A small metadata reserve for tests that copy or snapshot data directories by the hundred.
TEST_RESERVE = 64 << 10

#: Figures the tests record (crash points, fault sites, ...), printed after the run and
#: written to figures.json in the current directory when LIBRORUM_FIGURES is set.
FIGURES: dict[str, Any] = {}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with open_store(tmp_path / "store", chunk_size=TEST_CHUNK_SIZE) as s:
        yield s


def open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.section("store figures")
    text = json.dumps(FIGURES, indent=2, sort_keys=True)
    terminalreporter.write_line(text)
    target = os.environ.get("LIBRORUM_FIGURES")
    if target:
        Path(target).write_text(text + "\n")
