"""Fixed-bucket latency histograms, cheap enough to update on every request.

The daemon keeps its figures as plain numbers and arrays and turns them into metrics only when
they are read (``librorum/server/metrics.py``): a metrics library's own histogram takes a lock
per observation, which would cost the hot path more than a small request's reply does. A
:class:`Histogram` is one list of counts and a sum; an observation is one bisect and two
additions. It is used on the Trio thread without a lock; :class:`LockedHistogram` is the same
for worker threads (the store measures its fsyncs there, where one lock costs nothing next to
the fsync it times).

Nothing in this module may import anything of the project (the store and the service both
use it).
"""

from __future__ import annotations

import bisect
import threading
from typing import Final

import attrs

#: Upper bounds (seconds) of the latency buckets: 50 µs to 60 s, about three per decade.
LATENCY_BUCKETS: Final = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


@attrs.frozen
class HistogramSnapshot:
    """A histogram's figures at one moment.

    Attributes:
        bounds: The buckets' upper bounds, ascending (the last bucket, +Inf, is implied).
        counts: Observations per bucket (not cumulative), ``len(bounds) + 1`` of them.
        total: The sum of all observations.
    """

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    total: float

    @property
    def count(self) -> int:
        """How many observations."""
        return sum(self.counts)


class Histogram:
    """Observations counted into fixed buckets (Prometheus ``le`` semantics: a value equal to
    a bound counts in that bound's bucket). Not thread-safe: one thread updates it."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def snapshot(self) -> HistogramSnapshot:
        return HistogramSnapshot(self.bounds, tuple(self.counts), self.total)


class LockedHistogram(Histogram):
    """A :class:`Histogram` that any thread may update and read."""

    __slots__ = ("_lock",)

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        super().__init__(bounds)
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            super().observe(value)

    def snapshot(self) -> HistogramSnapshot:
        with self._lock:
            return super().snapshot()
