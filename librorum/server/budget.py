"""The global budget of upload bytes in flight (spec 9.2), shared by every connection of a
daemon, whatever its transport.

What it counts: for each upload, the credit the server has granted and the client has not
used yet, plus the DATA received and not yet taken by the store. Every byte of upload data
the daemon can be made to hold is therefore counted before it can arrive: a client cannot
send beyond its credit (spec 6.2). When the budget is used up the server grants no more
credit, so uploads are slowed, never dropped; the connections keep being read, and their
other requests keep being answered.

The one exception is the WRITE window of the HELLO reply, which every upload has from its
first frame: it cannot wait for the budget, so it is taken even when that overdraws it
(:meth:`InflightBudget.force`). It is kept small (``limits.INITIAL_UPLOAD_WINDOW``), so the
overdraft is at most that much per upload in flight.
"""

from __future__ import annotations

import trio


class InflightBudget:
    """A counter of bytes with a limit, and the uploads waiting for it to have room.

    All methods run on the Trio thread; none of them checkpoints except :meth:`wait`.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            msg = f"the in-flight budget must be at least 1 byte, got {limit}"
            raise ValueError(msg)
        self.limit = limit
        self.used = 0
        #: The most ever used at once (for NODE_STATUS and the campaign's figures).
        self.peak = 0
        self._waiters: set[trio.Event] = set()

    @property
    def free(self) -> int:
        """Bytes that can be taken now."""
        return max(0, self.limit - self.used)

    def take(self, wanted: int) -> int:
        """Take up to ``wanted`` bytes; returns how many were taken (0 when full)."""
        taken = min(wanted, self.free)
        if taken > 0:
            self._add(taken)
        return max(taken, 0)

    def force(self, size: int) -> None:
        """Take ``size`` bytes even past the limit: credit the client already has."""
        self._add(size)

    def give(self, size: int) -> None:
        """Return ``size`` bytes and wake whoever waits for room."""
        assert 0 <= size <= self.used, f"giving back {size} of {self.used} bytes"
        self.used -= size
        if size and self._waiters and self.free:
            for event in self._waiters:
                event.set()
            self._waiters.clear()

    def waiter(self) -> trio.Event:
        """An event set when the budget next has room (or at once if it has). The caller
        may also set it itself, to stop waiting for another reason."""
        event = trio.Event()
        if self.free:
            event.set()
        else:
            self._waiters.add(event)
        return event

    def forget(self, event: trio.Event) -> None:
        """Stop tracking a waiter that gave up (cancelled, or woken by something else)."""
        self._waiters.discard(event)

    def _add(self, size: int) -> None:
        self.used += size
        if self.used > self.peak:
            self.peak = self.used
