"""Shared test configuration: Hypothesis profiles chosen by ``HYPOTHESIS_PROFILE``."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

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
