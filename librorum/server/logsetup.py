"""How the daemon logs: where its records go (standard error or a rotated file, as text or
JSON lines, and always the in-memory ring the log commands read), and the level each kind of
event is logged at.

The levels mean something (README, "Operating"): a client's ordinary failure (not found,
exists, a bad request) is DEBUG, since the client was told and the daemon is fine; a refused
uid or token is WARNING, at most once per source and interval with a count of the lines held
back; what threatens data (corruption, a failed fsync, the store turning read-only) is ERROR,
logged by the store where it happens; one line per connection at most at INFO.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import logging.handlers
import sys
from collections.abc import Iterator
from typing import Final

from librorum.config import Config
from librorum.errors import ErrorClass, ErrorCode, LibrorumError, error_class
from librorum.service.logring import LogRing
from librorum.transport import LogLimiter

#: The logger every module of the daemon logs under; the ring hangs here.
ROOT_LOGGER: Final = "librorum"
#: The text format of a record: the same on standard error, in the log file and in
#: ``librorum logs``.
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: Server-class errors that are the daemon's own trouble rather than its load: worth a
#: WARNING on the request (the store has logged the cause at ERROR where it happened).
_SERVER_FAULTS: Final = frozenset(
    {ErrorCode.INTERNAL, ErrorCode.CORRUPT, ErrorCode.IO_ERROR, ErrorCode.READ_ONLY}
)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: ``time`` (ISO 8601, UTC, milliseconds),
    ``level``, ``logger``, ``message``, and ``exc`` (the traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        return json.dumps(line, ensure_ascii=False)


def iso_time(seconds: float) -> str:
    """``seconds`` since the epoch as ISO 8601 in UTC, to the millisecond."""
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def formatter_for(log_format: str) -> logging.Formatter:
    """The formatter of ``log_format`` ("text" or "json")."""
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def configure_logging(config: Config) -> logging.Handler:
    """Send the process's log to standard error, or to ``config.log_file`` rotated by size,
    in ``config.log_format``, at ``config.log_level`` (the command line's ``serve``; an
    embedding program configures logging itself). Replaces the root logger's handlers.

    Returns:
        The handler installed.

    Raises:
        OSError: The log file cannot be opened.
    """
    handler: logging.Handler
    if config.log_file is not None:
        config.log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            config.log_file,
            maxBytes=config.log_file_max_bytes,
            backupCount=config.log_file_backups,
            encoding="utf-8",
        )
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter_for(config.log_format))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(config.log_level)
    return handler


@contextlib.contextmanager
def log_ring(capacity: int, level: str | int | None = None) -> Iterator[LogRing]:
    """Keep every record of the daemon's loggers in a :class:`LogRing` of ``capacity``
    records for the duration of the block (the daemon's life), with the ``librorum``
    loggers at ``level`` meanwhile (None: as they are).

    The ring sees what the ``librorum`` loggers let through (the daemon's ``log_level``):
    a DEBUG record is kept only when the daemon logs at DEBUG, which keeps the cost of the
    levels nobody asked for at nothing. Setting the level here, not only on the root
    logger, makes an embedded daemon (``librorum.serve``) keep its INFO records whatever
    the embedding program's root level.
    """
    ring = LogRing(capacity)
    logger = logging.getLogger(ROOT_LOGGER)
    previous = logger.level
    if level is not None:
        logger.setLevel(level)
    logger.addHandler(ring)
    try:
        yield ring
    finally:
        logger.removeHandler(ring)
        logger.setLevel(previous)


def failure_level(error: LibrorumError) -> int:
    """The level a request's failure is logged at: DEBUG for what the client asked wrong
    (not found, exists, bad request, ...) and for the server's load (busy, no space,
    timeout); INFO for a connection-class error (the connection ends with it); WARNING for
    the daemon's own faults (internal, corrupt data, I/O, read-only), whose cause the store
    logged at ERROR."""
    code = error.wire_code
    if code in _SERVER_FAULTS:
        return logging.WARNING
    if error_class(code) is ErrorClass.CONNECTION:
        return logging.INFO
    return logging.DEBUG


class RefusalLog:
    """WARNING lines for refused callers (a uid not allowed, a missing token), at most one per
    source and interval, the next one counting those held back.

    Args:
        logger: Where the lines go.
        interval: Seconds between two lines for one source.
    """

    def __init__(self, logger: logging.Logger, *, interval: float = 60.0) -> None:
        self._logger = logger
        self._limiter = LogLimiter(interval=interval)

    def refused(self, source: str, now: float, message: str, *args: object) -> bool:
        """Log ``message % args`` for ``source`` unless a line for it went out less than the
        interval ago (``now``: a monotonic clock). Returns whether a line was logged."""
        held_back = self._limiter.allow(source, now)
        if held_back is None:
            return False
        if held_back:
            message += " (and %d more like it since the last report)"
            args = (*args, held_back)
        self._logger.warning(message, *args)
        return True
