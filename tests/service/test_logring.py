"""The log ring: bounds, cursors, filters, what a reader missed, counts, and threads."""

from __future__ import annotations

import logging
import threading

import pytest

from librorum.service.logring import (
    MAX_EXC_CHARS,
    MAX_LOGGERS,
    MAX_MESSAGE_CHARS,
    OTHER_LOGGERS,
    LogEntry,
    LogFilter,
    LogRing,
)


def _record(
    message: str,
    *,
    level: int = logging.INFO,
    name: str = "librorum.test",
    created: float = 1000.0,
    exc: bool = False,
) -> logging.LogRecord:
    record = logging.makeLogRecord(
        {"name": name, "levelno": level, "levelname": logging.getLevelName(level), "msg": message}
    )
    record.created = created
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            import sys

            record.exc_info = sys.exc_info()
    return record


def _fill(ring: LogRing, count: int, **kwargs: object) -> None:
    for i in range(count):
        ring.emit(_record(f"record {i}", **kwargs))  # type: ignore[arg-type]


def test_holds_at_most_its_capacity_and_numbers_every_record() -> None:
    ring = LogRing(5)
    _fill(ring, 12)
    page = ring.read(limit=100)
    assert [e.seq for e in page.entries] == [7, 8, 9, 10, 11]
    assert [e.message for e in page.entries] == [f"record {i}" for i in range(7, 12)]
    assert ring.next_seq == 12
    counts = ring.counts()
    assert (counts.held, counts.first, counts.next, counts.capacity) == (5, 7, 12, 5)


def test_oldest_first_pages_continue_from_the_cursor() -> None:
    ring = LogRing(100)
    _fill(ring, 10)
    first = ring.read(limit=4)
    assert [e.seq for e in first.entries] == [0, 1, 2, 3]
    assert first.cursor == 4
    second = ring.read(cursor=first.cursor, limit=100)
    assert [e.seq for e in second.entries] == list(range(4, 10))
    assert second.cursor == 10
    # At the end the cursor stays usable: it returns only what is logged later.
    assert ring.read(cursor=10).entries == ()
    _fill(ring, 1)
    assert [e.seq for e in ring.read(cursor=10).entries] == [10]
    # A cursor past the newest record (a client's typo) reads nothing, either way.
    assert ring.read(cursor=50).entries == ()
    assert [e.seq for e in ring.read(cursor=50, newest_first=True, limit=2).entries] == [10, 9]


def test_newest_first_pages_go_back_and_end_with_no_cursor() -> None:
    ring = LogRing(100)
    _fill(ring, 7)
    page = ring.read(limit=3, newest_first=True)
    assert [e.seq for e in page.entries] == [6, 5, 4]
    page = ring.read(cursor=page.cursor, limit=3, newest_first=True)
    assert [e.seq for e in page.entries] == [3, 2, 1]
    page = ring.read(cursor=page.cursor, limit=3, newest_first=True)
    assert [e.seq for e in page.entries] == [0]
    assert page.cursor is None


def test_a_reader_behind_the_ring_is_told_how_many_it_missed() -> None:
    ring = LogRing(4)
    _fill(ring, 3)
    cursor = ring.read().cursor
    assert cursor == 3
    _fill(ring, 10)  # records 3..12; the ring keeps 9..12
    page = ring.read(cursor=cursor, limit=100)
    assert page.missed == 6
    assert [e.seq for e in page.entries] == [9, 10, 11, 12]
    assert ring.read(cursor=page.cursor).missed == 0


def test_filters_by_level_logger_text_and_time() -> None:
    ring = LogRing(100)
    ring.emit(_record("chunk abc is missing", level=logging.ERROR, name="librorum.store.engine"))
    ring.emit(_record("connection from uid 1000 closed", name="librorum.server", created=2000))
    ring.emit(_record("refusing uid 1001", level=logging.WARNING, name="librorum.transport"))
    ring.emit(_record("storex line", name="librorum.storex", created=3000))

    def seqs(log_filter: LogFilter) -> list[int]:
        return [e.seq for e in ring.read(log_filter).entries]

    assert seqs(LogFilter(min_level=logging.WARNING)) == [0, 2]
    assert seqs(LogFilter(logger="librorum.store")) == [0]
    assert seqs(LogFilter(logger="librorum")) == [0, 1, 2, 3]
    assert seqs(LogFilter(grep="uid")) == [1, 2]
    assert seqs(LogFilter(grep="UID")) == []
    assert seqs(LogFilter(since=2000)) == [1, 3]
    assert seqs(LogFilter(since=1500, until=3000)) == [1]


def test_a_filtered_read_advances_the_cursor_past_what_it_skipped() -> None:
    ring = LogRing(100)
    _fill(ring, 5)
    ring.emit(_record("the one", level=logging.ERROR))
    _fill(ring, 5)
    page = ring.read(LogFilter(min_level=logging.ERROR))
    assert [e.message for e in page.entries] == ["the one"]
    assert page.cursor == 11


def test_the_budget_ends_a_page_before_the_record_that_does_not_fit() -> None:
    ring = LogRing(100)
    _fill(ring, 5)
    taken = 0

    def budget(_entry: object) -> bool:
        nonlocal taken
        taken += 1
        return taken <= 2

    page = ring.read(budget=budget)
    assert [e.seq for e in page.entries] == [0, 1]
    assert page.cursor == 2


def test_long_messages_and_tracebacks_are_clipped() -> None:
    ring = LogRing(10)
    ring.emit(_record("x" * (MAX_MESSAGE_CHARS * 3), exc=True))
    [entry] = ring.read().entries
    assert len(entry.message) == MAX_MESSAGE_CHARS
    assert entry.exc_text is not None
    assert "ValueError: boom" in entry.exc_text
    assert len(entry.exc_text) <= MAX_EXC_CHARS


def test_a_bad_format_string_keeps_the_record() -> None:
    ring = LogRing(10)
    record = _record("value %d")
    record.args = ("not a number",)
    ring.emit(record)
    [entry] = ring.read().entries
    assert "unformattable" in entry.message


def test_counts_by_level_and_logger_and_a_bounded_number_of_names() -> None:
    ring = LogRing(10)
    _fill(ring, 3)
    ring.emit(_record("bad", level=logging.ERROR, name="librorum.store"))
    for i in range(MAX_LOGGERS + 5):
        ring.emit(_record("x", name=f"other.{i}"))
    counts = ring.counts()
    assert counts.levels == {"INFO": 3 + MAX_LOGGERS + 5, "ERROR": 1}
    assert counts.loggers["librorum.test"] == 3
    assert len(counts.loggers) == MAX_LOGGERS + 1
    assert counts.loggers[OTHER_LOGGERS] == 7  # the names past the cap


def test_the_trend_counts_each_minute_and_forgets_after_an_hour() -> None:
    now = 600_000.0

    def clock() -> float:
        return now

    ring = LogRing(100, clock=clock)
    _fill(ring, 2)
    ring.emit(_record("w", level=logging.WARNING))
    now += 60
    _fill(ring, 1)
    trend = ring.counts().trend
    assert [(m.start, m.counts) for m in trend] == [
        (600_000, {"INFO": 2, "WARNING": 1}),
        (600_060, {"INFO": 1}),
    ]
    now += 3600
    assert ring.counts().trend == ()


def test_listeners_hear_every_record_until_removed() -> None:
    ring = LogRing(10)
    heard: list[int] = []

    def listener() -> None:
        heard.append(ring.next_seq)

    ring.add_listener(listener)
    _fill(ring, 2)
    ring.remove_listener(listener)
    _fill(ring, 1)
    assert heard == [1, 2]


def test_records_from_many_threads_are_each_kept_once() -> None:
    ring = LogRing(100_000)
    logger = logging.getLogger("librorum.test.threads")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(ring)
    threads_count, per_thread = 8, 2000
    reads: list[int] = []

    def log(n: int) -> None:
        for i in range(per_thread):
            logger.info("thread %d record %d", n, i)
            if i % 500 == 0:
                reads.append(len(ring.read(limit=1000).entries))

    try:
        threads = [threading.Thread(target=log, args=(n,)) for n in range(threads_count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        logger.removeHandler(ring)
    entries = ring.read(limit=1000, cursor=0).entries
    assert ring.next_seq == threads_count * per_thread
    total = ring.counts().levels["INFO"]
    assert total == threads_count * per_thread
    everything: list[LogEntry] = []
    cursor: int | None = 0
    while True:
        page = ring.read(cursor=cursor, limit=1000)
        if not page.entries:
            break
        everything.extend(page.entries)
        cursor = page.cursor
    assert [e.seq for e in everything] == list(range(threads_count * per_thread))
    assert len({e.message for e in everything}) == threads_count * per_thread
    assert entries[0].seq == 0


def test_a_ring_holds_at_least_one_record() -> None:
    with pytest.raises(ValueError, match="at least one"):
        LogRing(0)
