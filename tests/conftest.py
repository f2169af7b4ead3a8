"""Shared test configuration: Hypothesis profiles chosen by ``HYPOTHESIS_PROFILE``, and the
reliability figures every campaign test records into (``tests/figures.py``)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

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


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for 127.0.0.1 (made once per run): its PEM
    certificate and key files."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make a test certificate")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return cert, key
