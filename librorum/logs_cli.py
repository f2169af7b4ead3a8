"""``librorum logs``: read or follow the daemon's log (spec 5.19), for the command line.

    librorum logs [-n N] [-f] [--level L] [--logger NAME] [--since T] [--grep TEXT] [--json]

Text output is one line per record, as the daemon writes them (with the traceback after it
when there is one); ``--json`` writes one JSON object per record and line. ``-f`` follows the
log until Ctrl-C (exit 0) or the daemon going away (a one-line message, exit 1).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import re
import sys
import time
from typing import TYPE_CHECKING, Any, Final, TextIO

from librorum.config import LOG_LEVELS
from librorum.protocol.constants import MAX_LOG_RECORDS
from librorum.protocol.messages import LogRecord

if TYPE_CHECKING:
    from librorum.client.sync import SyncClient

#: What the daemon writes a text record as (the same as ``logsetup.TEXT_FORMAT``).
_TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_DURATION: Final = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")
_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}
#: Records ``logs`` shows without ``-n``.
DEFAULT_LINES: Final = 10


def parse_since(text: str, *, now: float | None = None) -> float:
    """``--since``: a duration back from now ("10m", "2h", "90s", "1d") or an ISO 8601 time
    (local time when it names no zone), as seconds since the epoch.

    Raises:
        argparse.ArgumentTypeError: neither.
    """
    match = _DURATION.fullmatch(text.strip())
    if match is not None:
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        return (time.time() if now is None else now) - seconds
    try:
        moment = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        msg = f"--since wants a duration like 10m or 2h, or an ISO time, not {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    return moment.timestamp()  # a naive time is local time


def add_parser(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``logs`` to the command line's subcommands."""
    logs = sub.add_parser("logs", help="the daemon's log (administrators only)")
    logs.add_argument(
        "-n", dest="lines", type=_lines, default=DEFAULT_LINES, help="the last N records (10)"
    )
    logs.add_argument("-f", "--follow", action="store_true", help="then follow new records")
    logs.add_argument(
        "--level", type=str.upper, choices=LOG_LEVELS, help="the least level (e.g. WARNING)"
    )
    logs.add_argument("--logger", help="only this logger and those below it (librorum.store)")
    logs.add_argument("--since", type=parse_since, help="from T on: 10m, 2h, or an ISO time")
    logs.add_argument("--grep", help="only records whose message contains TEXT")
    logs.add_argument("--json", action="store_true", help="one JSON object per line")
    logs.set_defaults(func=cmd_logs)


def _lines(text: str) -> int:
    value = int(text)
    if value < 0:
        msg = f"-n wants a count >= 0, got {value}"
        raise argparse.ArgumentTypeError(msg)
    return value


def cmd_logs(client: SyncClient, args: argparse.Namespace) -> int:
    """Print the last records, then (``-f``) follow. Returns the exit status.

    Raises:
        LibrorumError: the daemon refused (ForbiddenError) or went away (ConnectionClosed).
    """
    level = logging.getLevelName(args.level) if args.level else 0
    out = sys.stdout
    if not args.follow:
        for record in _last(client, args, level):
            _print(out, record, as_json=args.json)
        return 0
    try:
        with client.follow_log(
            last=min(args.lines, MAX_LOG_RECORDS), min_level=level, logger=args.logger,
            grep=args.grep,
        ) as follower:  # fmt: skip
            for batch in follower:
                if batch.missed:
                    print(
                        f"librorum: {batch.missed} records were missed (the log moved on "
                        "faster than they were read)",
                        file=sys.stderr,
                    )
                for record in batch.records:
                    if args.since is None or record.time_ms >= args.since * 1000:
                        _print(out, record, as_json=args.json)
                out.flush()
    except KeyboardInterrupt:
        return 0  # Ctrl-C is how a follow ends
    print("librorum: the daemon is stopping; the log ends here", file=sys.stderr)
    return 1


def _last(client: SyncClient, args: argparse.Namespace, level: int) -> list[LogRecord]:
    """The last ``args.lines`` records that pass the filters, oldest first (paging back as
    far as needed: a reply holds at most 1000, and fewer when they are long)."""
    records: list[LogRecord] = []
    cursor: int | None = None
    while len(records) < args.lines:
        page = client.log_get(
            min_level=level,
            logger=args.logger,
            grep=args.grep,
            since=args.since,
            limit=min(args.lines - len(records), MAX_LOG_RECORDS),
            newest_first=True,
            cursor=cursor,
        )
        records.extend(page.records)
        if page.cursor is None or not page.records:
            break
        cursor = page.cursor
    records.reverse()
    return records


def format_record(record: LogRecord) -> str:
    """A record as the daemon's text log has it (local time, like its standard error)."""
    line = logging.makeLogRecord(
        {
            "name": record.logger,
            "levelno": record.level,
            "levelname": logging.getLevelName(record.level),
            "msg": record.message,
            "created": record.time_ms / 1000,
            "msecs": record.time_ms % 1000,
            "exc_text": record.exc,
        }
    )
    return logging.Formatter(_TEXT_FORMAT).format(line)


def record_json(record: LogRecord) -> str:
    """A record as one JSON object: seq, time (ISO 8601, UTC), level, logger, message, and
    exc when it carries a traceback."""
    moment = datetime.datetime.fromtimestamp(record.time_ms / 1000, tz=datetime.UTC)
    line: dict[str, object] = {
        "seq": record.seq,
        "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": logging.getLevelName(record.level),
        "logger": record.logger,
        "message": record.message,
    }
    if record.exc is not None:
        line["exc"] = record.exc
    return json.dumps(line, ensure_ascii=False)


def _print(out: TextIO, record: LogRecord, *, as_json: bool) -> None:
    out.write((record_json(record) if as_json else format_record(record)) + "\n")
