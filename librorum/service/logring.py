"""The daemon's recent log, in memory: a :class:`logging.Handler` that keeps the last records
in a bounded ring, for the log commands (spec 5.19) to read.

Every record the daemon logs, whatever its level and whichever thread logs it, is kept as a
compact :class:`LogEntry` numbered by a sequence number that only grows. The sequence number is
the cursor of the log commands: "the records from cursor N on" stays meaningful while the ring
overwrites its oldest entries, and a reader that fell behind learns how many it missed (the
records between its cursor and the oldest one still held) instead of the ring holding them for
it. Beside the records the ring counts records by level and by logger since the start, and
keeps a per-minute count for the last hour.

Memory is bounded: ``capacity`` entries, each with its message and exception text clipped
(:data:`MAX_MESSAGE_CHARS`, :data:`MAX_EXC_CHARS`), at most :data:`MAX_LOGGERS` logger names
counted, and 60 minutes of trend.

Thread-safe: :meth:`LogRing.emit` and the readers take one lock, held for a copy or a scan of
the ring only (no I/O under it). Listeners (:meth:`LogRing.add_listener`) are called after each
record, outside the lock, in the thread that logged it. Pure Python: no trio.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Final

import attrs

#: The default number of records held (config ``log_ring_size``).
DEFAULT_RING_SIZE: Final = 10_000
#: A record's message is clipped to this many characters in the ring.
MAX_MESSAGE_CHARS: Final = 2048
#: A record's exception text (traceback) is clipped to this many characters in the ring.
MAX_EXC_CHARS: Final = 8192
#: Distinct logger names counted; records of further names count under :data:`OTHER_LOGGERS`.
MAX_LOGGERS: Final = 256
OTHER_LOGGERS: Final = "(other)"
#: Minutes of per-minute trend kept.
TREND_MINUTES: Final = 60


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@attrs.frozen(slots=True)
class LogEntry:
    """One record as the ring keeps it.

    Attributes:
        seq: Its sequence number (the cursor that designates it).
        time: When it was logged, in seconds since the epoch.
        level: The numeric level (``logging.INFO``...).
        logger: The logger's name.
        message: The formatted message, clipped to :data:`MAX_MESSAGE_CHARS`.
        exc_text: The exception's traceback, when there was one, clipped.
    """

    seq: int
    time: float
    level: int
    logger: str
    message: str
    exc_text: str | None = None


@attrs.frozen
class LogFilter:
    """Which records a reader wants; every field set must match.

    Attributes:
        min_level: The least level (``logging.WARNING`` keeps warnings and worse).
        logger: A logger name prefix ("librorum.store" keeps "librorum.store" and below).
        grep: A substring of the message (case-sensitive).
        since: The earliest time, seconds since the epoch, inclusive.
        until: The latest time, exclusive.
    """

    min_level: int = 0
    logger: str | None = None
    grep: str | None = None
    since: float | None = None
    until: float | None = None

    def matches(self, entry: LogEntry) -> bool:
        """Whether ``entry`` passes every filter set."""
        if entry.level < self.min_level:
            return False
        if self.logger is not None and not _under(entry.logger, self.logger):
            return False
        if self.grep is not None and self.grep not in entry.message:
            return False
        if self.since is not None and entry.time < self.since:
            return False
        return self.until is None or entry.time < self.until


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix if prefix.endswith(".") else prefix + ".")


@attrs.frozen
class LogPage:
    """What one read of the ring found.

    Attributes:
        entries: The records, in the order asked for.
        cursor: Where to continue: oldest first, the sequence number after the last record
            looked at (a later read from it returns only newer records); newest first, the
            sequence number of the last record looked at (a later read returns older ones),
            or None when the oldest record held was reached.
        missed: Records from the cursor asked for on that the ring had overwritten (oldest
            first only).
    """

    entries: tuple[LogEntry, ...]
    cursor: int | None
    missed: int = 0


@attrs.frozen
class LogMinute:
    """The records of one minute, by level name. ``start``: the minute, seconds since the
    epoch (a multiple of 60)."""

    start: int
    counts: dict[str, int]


@attrs.frozen
class LogCounts:
    """The ring's figures.

    Attributes:
        levels: Records logged since the start, by level name.
        loggers: Records logged since the start, by logger name.
        trend: Records per minute over the last :data:`TREND_MINUTES` minutes, oldest first;
            minutes without a record are left out.
        capacity: Records the ring holds at most.
        held: Records it holds now.
        first: The sequence number of the oldest record held (``next`` when none is).
        next: The sequence number the next record will get.
    """

    levels: dict[str, int]
    loggers: dict[str, int]
    trend: tuple[LogMinute, ...]
    capacity: int
    held: int
    first: int
    next: int


class LogRing(logging.Handler):
    """A logging handler that keeps the last ``capacity`` records (see the module).

    Args:
        capacity: Records held at most (>= 1).
        clock: The wall clock for the trend's minutes (tests pass their own).

    Raises:
        ValueError: ``capacity`` < 1.
    """

    def __init__(
        self, capacity: int = DEFAULT_RING_SIZE, *, clock: Callable[[], float] = time.time
    ) -> None:
        if capacity < 1:
            msg = f"the log ring holds at least one record, not {capacity}"
            raise ValueError(msg)
        super().__init__(logging.NOTSET)
        self.capacity = capacity
        self._clock = clock
        # logging.Handler has its own RLock for emit(); the ring's own plain lock also covers
        # the readers, and is not held while listeners run.
        self._ring_lock = threading.Lock()
        self._entries: deque[LogEntry] = deque(maxlen=capacity)
        self._next = 0
        self._levels: dict[str, int] = {}
        self._loggers: dict[str, int] = {}
        self._trend: deque[tuple[int, dict[str, int]]] = deque(maxlen=TREND_MINUTES)
        self._listeners: list[Callable[[], None]] = []
        self._formatter = logging.Formatter()

    # --- writing -------------------------------------------------------------------------

    def handle(self, record: logging.LogRecord) -> bool:
        # Handler.handle() takes the handler's RLock around emit(); the ring has its own.
        if not self.filter(record):
            return False
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        """Keep ``record`` (and tell the listeners, which must not raise). A record that
        cannot be formatted is kept with the formatting error as its message."""
        try:
            message = record.getMessage()
        except Exception as exc:  # a bad format string in a log call must not lose the record
            message = f"{record.msg!r} (unformattable: {exc})"
        exc_text: str | None = None
        if record.exc_info:
            exc_text = _clip(self._formatter.formatException(record.exc_info), MAX_EXC_CHARS)
        elif record.exc_text:
            exc_text = _clip(record.exc_text, MAX_EXC_CHARS)
        name = logging.getLevelName(record.levelno)  # "LEVEL 15" between named ones
        with self._ring_lock:
            entry = LogEntry(
                self._next,
                record.created,
                record.levelno,
                record.name,
                _clip(message, MAX_MESSAGE_CHARS),
                exc_text,
            )
            self._next += 1
            self._entries.append(entry)
            self._levels[name] = self._levels.get(name, 0) + 1
            logger = record.name
            if logger not in self._loggers and len(self._loggers) >= MAX_LOGGERS:
                logger = OTHER_LOGGERS
            self._loggers[logger] = self._loggers.get(logger, 0) + 1
            minute = int(self._clock()) // 60 * 60
            trend = self._trend
            if not trend or trend[-1][0] != minute:
                trend.append((minute, {}))
            counts = trend[-1][1]
            counts[name] = counts.get(name, 0) + 1
            listeners = tuple(self._listeners)
        for listener in listeners:
            listener()

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every record from now on, in the thread that logged it
        (it must be quick, thread-safe and must not log)."""
        with self._ring_lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[], None]) -> None:
        """Stop calling ``listener`` (nothing if it is not registered)."""
        with self._ring_lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    # --- reading -------------------------------------------------------------------------

    @property
    def next_seq(self) -> int:
        """The sequence number the next record will get."""
        return self._next

    def read(
        self,
        log_filter: LogFilter = LogFilter(),
        *,
        cursor: int | None = None,
        limit: int = 100,
        newest_first: bool = False,
        budget: Callable[[LogEntry], bool] | None = None,
    ) -> LogPage:
        """Up to ``limit`` records that pass ``log_filter``, from ``cursor`` on.

        Args:
            log_filter: Which records.
            cursor: Oldest first: the first sequence number to look at (None: the oldest
                held). Newest first: look at records before it (None: from the newest).
            limit: Records returned at most (>= 1).
            newest_first: The newest records first, going back.
            budget: Called with each record about to be taken; False ends the page before
                it (the caller's size budget).

        Raises:
            ValueError: ``limit`` < 1 or a negative cursor (a caller bug).
        """
        if limit < 1 or (cursor is not None and cursor < 0):
            msg = f"a read of the log takes limit >= 1 and cursor >= 0, not {limit}, {cursor}"
            raise ValueError(msg)
        with self._ring_lock:
            entries = self._window(cursor, newest_first)
            first = self._next - len(self._entries)
            end = self._next
        taken: list[LogEntry] = []
        if newest_first:
            position: int | None = cursor if cursor is not None else end
            for entry in entries:
                position = entry.seq
                if not log_filter.matches(entry):
                    continue
                if budget is not None and not budget(entry):
                    return LogPage(tuple(taken), entry.seq + 1)
                taken.append(entry)
                if len(taken) >= limit:
                    return LogPage(tuple(taken), entry.seq if entry.seq > first else None)
            return LogPage(
                tuple(taken), None if position is None or position <= first else position
            )
        start = first if cursor is None else cursor
        missed = max(0, first - start)
        next_cursor = max(start, first)
        for entry in entries:
            if log_filter.matches(entry):
                if len(taken) >= limit or (budget is not None and not budget(entry)):
                    break
                taken.append(entry)
            next_cursor = entry.seq + 1
        return LogPage(tuple(taken), next_cursor, missed)

    def _window(
        self, cursor: int | None, newest_first: bool
    ) -> list[LogEntry] | tuple[LogEntry, ...]:
        """The entries a read from ``cursor`` looks at, in its order (lock held): a copy, so
        that the scan runs without the lock, of only the part it looks at. A follower reads
        from near the newest end on every record: it copies the few records it has not seen,
        not the whole ring (indexing a deque is O(n); iterating from an end is not)."""
        entries = self._entries
        held = len(entries)
        first = self._next - held
        if newest_first:
            end = held if cursor is None else max(0, min(held, cursor - first))
            return list(itertools.islice(reversed(entries), held - end, None))
        # (A cursor past the newest record looks at nothing.)
        begin = 0 if cursor is None else min(held, max(0, cursor - first))
        if begin == 0:
            return tuple(entries)  # one C-level copy
        tail = list(itertools.islice(reversed(entries), held - begin))
        tail.reverse()
        return tail

    def counts(self) -> LogCounts:
        """The ring's figures (see :class:`LogCounts`)."""
        horizon = int(self._clock()) // 60 * 60 - (TREND_MINUTES - 1) * 60
        with self._ring_lock:
            trend = tuple(
                LogMinute(start, dict(counts)) for start, counts in self._trend if start >= horizon
            )
            return LogCounts(
                levels=dict(self._levels),
                loggers=dict(self._loggers),
                trend=trend,
                capacity=self.capacity,
                held=len(self._entries),
                first=self._next - len(self._entries),
                next=self._next,
            )
