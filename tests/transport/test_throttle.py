"""The listener's per-address memory: authentication back-off and the refusal log limiter,
driven with explicit times (they take ``now`` as an argument)."""

from __future__ import annotations

import pytest

from librorum.limits import AUTH_BACKOFF_MAX, AUTH_FAILURES_ALLOWED
from librorum.transport._throttle import AuthBackoff, LogLimiter, address_key


@pytest.mark.parametrize(
    ("ip", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
        ("not an address", "not an address"),
    ],
)
def test_addresses_are_keyed_by_host_ipv6_by_its_64(ip: str, key: str) -> None:
    assert address_key(ip) == key


def test_backoff_doubles_after_the_allowed_failures_up_to_the_longest() -> None:
    backoff = AuthBackoff(allowed=3, base=1.0, longest=8.0)
    waits = [backoff.failed("a", now=0.0)[1] for _ in range(9)]
    assert waits == [0, 0, 0, 1, 2, 4, 8, 8, 8]
    assert backoff.wait("a", 0.0) == 8
    assert backoff.wait("a", 5.0) == 3
    assert backoff.wait("a", 9.0) == 0
    assert backoff.wait("b", 0.0) == 0


def test_a_success_or_a_quiet_spell_forgets_the_failures() -> None:
    backoff = AuthBackoff(allowed=1, base=1.0, longest=2.0, memory=100.0)
    backoff.failed("a", 0.0)
    backoff.succeeded("a")
    assert backoff.failed("a", 1.0) == (1, 0)
    assert backoff.failed("a", 2.0) == (2, 1)
    # A failure elsewhere, 100 s after a's last: a is forgotten.
    backoff.failed("b", 102.0)
    assert len(backoff) == 1
    assert backoff.failed("a", 103.0) == (1, 0)


def test_the_table_is_bounded_least_recently_failing_out() -> None:
    backoff = AuthBackoff(allowed=1, max_addresses=3)
    for key in "abcd":
        backoff.failed(key, 0.0)
    assert len(backoff) == 3
    assert backoff.failed("a", 0.0) == (1, 0)  # forgotten to make room for d
    assert backoff.failed("d", 0.0)[0] == 2


def test_a_huge_failure_count_waits_the_longest() -> None:
    backoff = AuthBackoff(allowed=1, base=1.0, longest=60.0)
    for _ in range(2000):
        _count, wait = backoff.failed("a", 0.0)
    assert wait == 60.0


def attempts_in(backoff: AuthBackoff, seconds: float) -> int:
    """Token checks a guesser gets in ``seconds``, retrying the moment it may (a refused
    attempt is not checked, and earns nothing)."""
    now = 0.0
    checked = 0
    while now < seconds:
        wait = backoff.wait("guesser", now)
        if wait:
            now += wait
            continue
        backoff.failed("guesser", now)
        checked += 1
    return checked


def test_a_guesser_gets_a_dozen_tries_in_the_first_minute_then_one_a_minute() -> None:
    backoff = AuthBackoff()
    assert (AUTH_FAILURES_ALLOWED, AUTH_BACKOFF_MAX) == (5, 60.0)
    first_minute = attempts_in(backoff, 60.0)
    assert first_minute == 11  # 5 free, then at 0, 1, 3, 7, 15 and 31 s
    assert attempts_in(backoff, 600.0) - first_minute <= 10


def test_log_limiter_one_line_per_key_per_interval_counting_the_rest() -> None:
    limiter = LogLimiter(interval=60.0)
    assert limiter.allow("a", 0.0) == 0
    assert [limiter.allow("a", t) for t in (1.0, 2.0, 59.0)] == [None, None, None]
    assert limiter.allow("b", 3.0) == 0
    assert limiter.allow("a", 60.0) == 3
    assert limiter.allow("a", 61.0) is None
    assert limiter.allow("a", 120.0) == 1


def test_log_limiter_with_a_burst_allows_that_many_then_one_per_interval() -> None:
    limiter = LogLimiter(interval=1.0, burst=3)
    assert [limiter.allow("a", 0.0) for _ in range(5)] == [0, 0, 0, None, None]
    assert limiter.allow("a", 0.5) is None
    assert limiter.allow("a", 1.0) == 3  # one more earned after an interval
    assert limiter.allow("a", 1.2) is None
    # A quiet spell refills the burst, not more.
    assert [limiter.allow("a", 100.0) for _ in range(4)] == [1, 0, 0, None]


def test_log_limiter_survives_a_clock_that_goes_back() -> None:
    limiter = LogLimiter(interval=60.0)
    assert limiter.allow("a", 100.0) == 0
    assert limiter.allow("a", 50.0) is None  # another clock, behind the first: no debt
    assert limiter.allow("a", 110.0) == 1


def test_log_limiter_is_bounded() -> None:
    limiter = LogLimiter(interval=60.0, max_keys=2)
    for key in "abc":
        assert limiter.allow(key, 0.0) == 0
    assert len(limiter) == 2
    assert limiter.allow("a", 1.0) == 0  # forgotten, so it logs again
