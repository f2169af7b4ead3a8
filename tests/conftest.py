"""Shared test configuration: Hypothesis profiles chosen by ``HYPOTHESIS_PROFILE``, and the
reliability figures every campaign test records into (``tests/figures.py``)."""

from __future__ import annotations

import os

import pytest
from _pytest.terminal import TerminalReporter
from hypothesis import HealthCheck, settings

from tests.figures import BOOK, FigureBook, figures_path

# ci: reproducible (derandomized) and sized for the CI budget; dev: random, default sizes;
# fast: a quick local loop; soak: long exploration on demand.
settings.register_profile(
    "ci",
    max_examples=200,
    stateful_step_count=50,
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=100, deadline=None, print_blob=True)
settings.register_profile("fast", max_examples=20, deadline=None)
settings.register_profile(
    "soak", max_examples=5000, stateful_step_count=100, deadline=None, print_blob=True
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


# --- The reliability figures (tests/figures.py) ------------------------------------------------


@pytest.fixture
def figures() -> FigureBook:
    """Where a campaign test records what it measured (written to figures.json at the end)."""
    return BOOK


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if BOOK.entries:
        BOOK.write()


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    if BOOK.entries:
        terminalreporter.section("reliability figures")
        terminalreporter.write_line(BOOK.table())
        terminalreporter.write_line(f"(written to {figures_path()})")
