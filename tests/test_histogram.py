"""Fixed-bucket histograms: Prometheus ``le`` buckets, and the locked twin across threads."""

from __future__ import annotations

import threading

from librorum.histogram import Histogram, LockedHistogram


def test_a_value_on_a_bound_counts_in_that_bucket() -> None:
    histogram = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 1.0, 7.0):
        histogram.observe(value)
    snapshot = histogram.snapshot()
    assert snapshot.counts == (2, 2, 1)  # <= 0.1, <= 1.0, +Inf
    assert snapshot.count == 5
    assert snapshot.total == 8.65


def test_the_locked_histogram_loses_nothing_across_threads() -> None:
    histogram = LockedHistogram((0.5,))

    def observe() -> None:
        for _ in range(10_000):
            histogram.observe(1.0)

    threads = [threading.Thread(target=observe) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    snapshot = histogram.snapshot()
    assert snapshot.counts == (0, 40_000)
    assert snapshot.total == 40_000.0
