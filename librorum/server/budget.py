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
(:meth:`InflightBudget.open_upload`). It is kept small (``limits.INITIAL_UPLOAD_WINDOW``), so
the overdraft is at most that much per upload in flight.

After a burst, the memory that held the data goes back to the system
(:func:`give_memory_back`): glibc keeps freed 1 MiB buffers in its heaps once it has raised
its mmap threshold (it does so by itself after the first free of one), so without a trim a
daemon that took 64 uploads at once would keep ~100 MiB it no longer uses.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from typing import Final

import trio

from librorum.limits import UPLOAD_WINDOW_MAX, UPLOAD_WINDOW_MIN


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
        #: Uploads streaming DATA now (they share the budget; see :meth:`share`).
        self.uploads = 0
        self._waiters: set[trio.Event] = set()
        # Set when the budget is back to zero after holding at least TRIM_AFTER bytes.
        self._drained = trio.Event()
        self._high_water = 0

    def share(self) -> int:
        """What one upload may hold now: an eighth of the limit divided among the uploads in
        flight, within ``UPLOAD_WINDOW_MIN`` .. ``UPLOAD_WINDOW_MAX``. An eighth: shares
        shrink as uploads start and credit granted is not revoked, so most of the budget
        stays free for that, and every byte held costs more than itself in the daemon (the
        read, the frame, the store's buffer)."""
        share = self.limit // (8 * max(1, self.uploads))
        return max(UPLOAD_WINDOW_MIN, min(UPLOAD_WINDOW_MAX, share))

    def open_upload(self, initial: int) -> None:
        """An upload starts with ``initial`` bytes of credit (the WRITE window of the HELLO
        reply, which the client already has: taken even past the limit)."""
        self.uploads += 1
        self._add(initial)

    def close_upload(self, held: int) -> None:
        """An upload ended holding ``held`` bytes (credit not used, DATA not stored)."""
        self.uploads -= 1
        self.give(held)

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

    def give(self, size: int) -> None:
        """Return ``size`` bytes and wake whoever waits for room."""
        assert 0 <= size <= self.used, f"giving back {size} of {self.used} bytes"
        self.used -= size
        if not self.used and self._high_water >= TRIM_AFTER:
            self._high_water = 0
            self._drained.set()
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

    async def wait_drained(self) -> None:
        """Wait until the budget is back to zero after a burst (``TRIM_AFTER`` bytes or more
        held at once).

        Cancellation: safe.
        """
        await self._drained.wait()
        self._drained = trio.Event()

    def _add(self, size: int) -> None:
        self.used += size
        self._high_water = max(self._high_water, self.used)
        if self.used > self.peak:
            self.peak = self.used


#: A burst that held this much makes the daemon give free memory back afterwards.
TRIM_AFTER: Final = 32 << 20
#: How long the budget must stay at zero before that (the burst is over, not paused).
TRIM_DELAY: Final = 1.0

log = logging.getLogger("librorum.server")


def _load_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or ``None`` where there is none (another libc)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_malloc_trim: Final = _load_malloc_trim()


async def give_memory_back(budget: InflightBudget) -> None:
    """Run for the daemon's life: after each burst of uploads, once the budget has stayed at
    zero for ``TRIM_DELAY``, give the allocator's free memory back to the system (in a worker
    thread: a trim walks every heap). Does nothing where the C library has no trim.

    Cancellation: safe (a trim under way finishes in its thread).
    """
    if _malloc_trim is None:
        return
    trim = _malloc_trim
    while True:
        await budget.wait_drained()
        await trio.sleep(TRIM_DELAY)
        if not budget.used:
            await trio.to_thread.run_sync(trim, 0)
            log.debug("gave free memory back after a burst of uploads")
