"""The conformance suite's fixture: a factory of fresh backends, once per implementation."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.store.conformance.backends import BACKENDS, Backend

#: Makes a fresh backend; ``crash_model=True`` asks for one whose ``crashed()`` works.
NewBackend = Callable[..., Backend]


@pytest.fixture(params=sorted(BACKENDS))
def new_backend(request: pytest.FixtureRequest, tmp_path: Path) -> NewBackend:
    """A factory of fresh, empty backends of one implementation (the test runs once per
    implementation in ``BACKENDS``)."""
    cls = BACKENDS[request.param]
    numbers = itertools.count()

    def make(*, crash_model: bool = False) -> Backend:
        return cls(tmp_path / f"backend-{next(numbers)}", crash_model=crash_model)

    return make
