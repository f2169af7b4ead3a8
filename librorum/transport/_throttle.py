"""Per-address bookkeeping for the WebSocket listener, with bounded memory: the back-off of
addresses that keep failing authentication, and the rate limit of the log lines that refused
connections produce.

Both take the time as an argument (``now``, from :func:`trio.current_time` in the listener)
and keep at most a fixed number of addresses, least recently active first out: a flood from
many addresses costs a bounded table, at worst forgetting some addresses early.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from typing import Final

import attrs

from librorum.limits import (
    AUTH_BACKOFF_BASE,
    AUTH_BACKOFF_MAX,
    AUTH_FAILURE_MEMORY,
    AUTH_FAILURES_ALLOWED,
    AUTH_TRACKED_ADDRESSES,
    REFUSAL_LOG_INTERVAL,
)

#: IPv6 addresses are grouped by this prefix: one host usually owns a whole /64, so keying
#: by the full address would give it 2**64 fresh starts.
_IPV6_PREFIX: Final = 64


def address_key(ip: str) -> str:
    """The key an address is tracked by: the IPv4 address itself (also when IPv4-mapped), the
    /64 network of an IPv6 address; anything unparsable as is."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, _IPV6_PREFIX), strict=False))
    return str(address)


@attrs.define
class _Failures:
    count: int = 0
    last: float = 0.0
    blocked_until: float = 0.0


class AuthBackoff:
    """Which addresses must wait before their next authentication attempt.

    An address may fail ``allowed`` times in a row; each further failure makes it wait
    ``base`` seconds, doubling per failure up to ``longest``. A success forgets the address;
    so does ``memory`` seconds without a failure.

    Args:
        allowed: failures before the first wait.
        base, longest: the first wait, and the longest.
        memory: seconds after its last failure that an address is forgotten.
        max_addresses: addresses remembered at most.
    """

    def __init__(
        self,
        *,
        allowed: int = AUTH_FAILURES_ALLOWED,
        base: float = AUTH_BACKOFF_BASE,
        longest: float = AUTH_BACKOFF_MAX,
        memory: float = AUTH_FAILURE_MEMORY,
        max_addresses: int = AUTH_TRACKED_ADDRESSES,
    ) -> None:
        self.allowed = allowed
        self.base = base
        self.longest = longest
        self.memory = max(memory, longest)
        self.max_addresses = max_addresses
        # Least recently failing first.
        self._table: OrderedDict[str, _Failures] = OrderedDict()

    def __len__(self) -> int:
        return len(self._table)

    def wait(self, key: str, now: float) -> float:
        """Seconds ``key`` must still wait before an attempt is looked at (0: none)."""
        entry = self._table.get(key)
        if entry is None:
            return 0.0
        return max(0.0, entry.blocked_until - now)

    def failed(self, key: str, now: float) -> tuple[int, float]:
        """Record a failed attempt by ``key``; return its failures in a row and the wait it
        has earned (0 while it is within ``allowed``)."""
        self._forget_old(now)
        entry = self._table.pop(key, None)
        if entry is None:
            entry = _Failures()
            if len(self._table) >= self.max_addresses:
                self._table.popitem(last=False)
        self._table[key] = entry
        entry.count += 1
        entry.last = now
        wait = 0.0
        beyond = entry.count - self.allowed
        if beyond > 0:
            # min() before the power would not do: 2.0**beyond overflows a float past ~1000.
            wait = (
                self.longest if beyond > 32 else min(self.longest, self.base * 2.0 ** (beyond - 1))
            )
            entry.blocked_until = now + wait
        return entry.count, wait

    def succeeded(self, key: str) -> None:
        """An attempt by ``key`` succeeded: forget its failures."""
        self._table.pop(key, None)

    def _forget_old(self, now: float) -> None:
        table = self._table
        while table:
            entry = next(iter(table.values()))
            if entry.last + self.memory > now:
                break
            table.popitem(last=False)


@attrs.define
class _Logged:
    #: When ``tokens`` was last brought up to date.
    at: float
    #: Lines the key may log now (a token bucket: +1 per interval, at most ``burst``).
    tokens: float
    held_back: int = 0


class LogLimiter:
    """At most ``burst`` log lines per key at once, then one per ``interval`` (a token
    bucket; with the default burst of 1, one line per key per interval); counts the lines it
    held back.

    Args:
        interval: seconds it takes a key to earn one more line.
        burst: lines a key may log at once after a quiet spell.
        max_keys: keys remembered at most (a forgotten key may log again early).
    """

    def __init__(
        self,
        *,
        interval: float = REFUSAL_LOG_INTERVAL,
        burst: int = 1,
        max_keys: int = AUTH_TRACKED_ADDRESSES,
    ) -> None:
        self.interval = interval
        self.burst = burst
        self.max_keys = max_keys
        # Least recently logged first. Keys are only dropped for room (not by age), so that a
        # key's next line can still say how many were held back.
        self._table: OrderedDict[str, _Logged] = OrderedDict()

    def __len__(self) -> int:
        return len(self._table)

    def allow(self, key: str, now: float) -> int | None:
        """None: hold this line back. Otherwise log it, saying that the returned number of
        lines were held back since the last one."""
        table = self._table
        entry = table.get(key)
        if entry is None:
            if len(table) >= self.max_keys:
                table.popitem(last=False)
            table[key] = _Logged(now, self.burst - 1)
            return 0
        # (A clock that went back earns nothing rather than a debt.)
        tokens = min(float(self.burst), entry.tokens + max(0.0, now - entry.at) / self.interval)
        entry.at = now
        if tokens < 1 - 1e-9:  # (the sum of the fractions earned may round just below 1)
            entry.tokens = tokens
            entry.held_back += 1
            return None
        entry.tokens = tokens - 1
        held_back = entry.held_back
        entry.held_back = 0
        table.move_to_end(key)
        return held_back
