"""The log commands of LBRU (spec 5.19): LOG_GET, LOG_STREAM and LOG_STATS, over the service
core's log ring. Administrators only: the service core checks the caller.

LOG_STREAM streams like a READ (spec 6): a first reply, then DATA frames, each one
:class:`~librorum.protocol.messages.LogBatch`, sent only as far as the client's credit goes.
The follower holds nothing but its cursor into the ring: while the client grants no credit,
records are not queued for it; when it grants credit again, it gets what the ring still holds
from its cursor on, and a batch whose ``missed`` counts the records overwritten meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import trio

from librorum.activity import Wait
from librorum.protocol.constants import MAX_CONTROL_PAYLOAD, MAX_LOG_RECORDS
from librorum.protocol.converter import encode_log_batch
from librorum.protocol.messages import (
    LogBatch,
    LogGet,
    LogGetReply,
    LogMinute,
    LogRecord,
    LogStats,
    LogStatsReply,
    LogStream,
    LogStreamReply,
)
from librorum.server.requests import Driver, RequestState
from librorum.server.streams import wait_on_client
from librorum.service.logring import LogEntry, LogFilter

#: Budget for the records of one LOG_GET reply: a control frame, less room for the rest.
_GET_BUDGET: Final = MAX_CONTROL_PAYLOAD - 1024
#: Bytes a record costs beyond its texts, at most: keys, a 9-byte integer each, the level.
_RECORD_OVERHEAD: Final = 64
#: Bytes a LOG_STREAM batch costs beyond its records.
_BATCH_OVERHEAD: Final = 32


def wire_record(entry: LogEntry) -> LogRecord:
    """The wire record of a ring entry."""
    return LogRecord(
        entry.seq, int(entry.time * 1000), entry.level, entry.logger, entry.message, entry.exc_text
    )


def record_cost(entry: LogEntry) -> int:
    """The encoded size of ``entry``'s wire record, at most."""
    size = len(entry.logger.encode()) + len(entry.message.encode()) + _RECORD_OVERHEAD
    return size + (len(entry.exc_text.encode()) if entry.exc_text is not None else 0)


def _budget(total: int) -> Callable[[LogEntry], bool]:
    """A page budget of ``total`` bytes: each call takes a record's cost, or says it would
    not fit."""
    left = total

    def take(entry: LogEntry) -> bool:
        nonlocal left
        cost = record_cost(entry)
        if cost > left:
            return False
        left -= cost
        return True

    return take


def _seconds(ms: int | None) -> float | None:
    return None if ms is None else ms / 1000


async def log_get(driver: Driver, message: LogGet) -> LogGetReply:
    """LOG_GET: one page, which fits a control frame."""
    page = await driver.service.read_log(
        driver.caller,
        LogFilter(
            message.min_level,
            message.logger,
            message.grep,
            _seconds(message.since_ms),
            _seconds(message.until_ms),
        ),
        cursor=message.cursor,
        limit=message.limit,
        newest_first=message.newest_first,
        budget=_budget(_GET_BUDGET),
    )
    records = tuple(wire_record(entry) for entry in page.entries)
    return LogGetReply(records, page.cursor, page.missed)


async def log_stats(driver: Driver, message: LogStats) -> LogStatsReply:
    """LOG_STATS: the figures of the log."""
    counts = await driver.service.log_counts(driver.caller)
    return LogStatsReply(
        levels=counts.levels,
        loggers=counts.loggers,
        trend=tuple(LogMinute(minute.start * 1000, minute.counts) for minute in counts.trend),
        capacity=counts.capacity,
        held=counts.held,
        first_cursor=counts.first,
        next_cursor=counts.next,
    )


async def log_stream(driver: Driver, state: RequestState, message: LogStream) -> LogStreamReply:
    """LOG_STREAM: the first reply, then batches of records under the client's credit, until
    the client cancels, the connection ends, or the daemon stops (then the final reply, with
    the cursor to go on from).

    Cancellation: at any point (it changes nothing).

    Raises:
        ForbiddenError: The caller is not an administrator.
        TimeoutError_: The client granted no credit, or read nothing, for the stream deadline.
    """
    service = driver.service
    session = driver.session
    sid = state.session_id
    log_filter = LogFilter(message.min_level, message.logger, message.grep)
    cursor = await service.follow_log(driver.caller, log_filter, message.last)
    state.started = True
    session.reply(sid, LogStreamReply(cursor), end=False)
    driver.wake_writer()
    stopping = driver.context.stopping
    while not stopping.is_set():
        if not await _wait_for_records(driver, state, cursor):
            break
        window = min(session.send_window(sid), session.max_payload)
        page = await service.read_log(
            driver.caller,
            log_filter,
            cursor=cursor,
            limit=MAX_LOG_RECORDS,
            budget=_budget(window - _BATCH_OVERHEAD),
        )
        if not page.entries and not page.missed:
            assert page.cursor is not None
            if page.cursor == cursor:
                # The next record passes the filter but does not fit the credit left.
                driver.wake_writer()
                await wait_on_client(
                    driver, state, "granted no credit", state.window.park, on=Wait.PEER_CREDIT
                )
            cursor = page.cursor
            continue
        assert page.cursor is not None
        records = tuple(wire_record(entry) for entry in page.entries)
        payload = encode_log_batch(LogBatch(records, page.cursor, page.missed))
        if len(payload) > window:
            # Never with the budget above (its costs are upper bounds); a batch that would
            # overrun the window must wait rather than break flow control.
            await wait_on_client(
                driver, state, "granted no credit", state.window.park, on=Wait.PEER_CREDIT
            )
            continue
        session.send_data(sid, payload)
        cursor = page.cursor
        driver.wake_writer()
        await wait_on_client(driver, state, "read nothing", driver.wait_for_writer)
    return LogStreamReply(cursor)


async def _wait_for_records(driver: Driver, state: RequestState, cursor: int) -> bool:
    """Wait until the log holds a record from ``cursor`` on (True), or the daemon stops
    (False). The wait is the client's (it asked to follow): the connection may count it
    so, as for a client that reads nothing."""
    if driver.service.logs.next_seq > cursor:
        return True
    stopping = driver.context.stopping
    arrived = False

    async def records(cancel: trio.CancelScope) -> None:
        nonlocal arrived
        await driver.service.wait_for_log(cursor)
        arrived = True
        cancel.cancel()

    async def stop(cancel: trio.CancelScope) -> None:
        await stopping.wait()
        cancel.cancel()

    state.waiting_on_peer = True
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(records, nursery.cancel_scope)
            nursery.start_soon(stop, nursery.cancel_scope)
    finally:
        state.waiting_on_peer = False
    return arrived
