"""The ``librorum`` command line (also ``python -m librorum``).

    librorum serve [--data-dir DIR] [--socket PATH] [--listen HOST:PORT] [--token-file FILE]
                   [--no-remote] [--config FILE] [--log-level LEVEL]
                   [--log-format text|json] [--log-file FILE] [--metrics HOST:PORT]
    librorum [--socket PATH | --url ws://HOST:PORT] [--token-file FILE]
             [--transport auto|local|remote] COMMAND ...

Exit status: 0 on success, 1 for an operation error (one line on stderr), 2 for a usage error
(and for ``status`` when the node is degraded).
Client commands use the synchronous client: a one-shot command needs no event loop.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, BinaryIO, NoReturn, TextIO

import attrs

from librorum import logs_cli
from librorum.config import LOG_LEVELS
from librorum.errors import LibrorumError, NotADirectoryError_
from librorum.protocol.constants import MAX_REQUESTS_LISTED, EntryKind, WriteMode
from librorum.protocol.messages import DirEntry, FsckReply, NodeStatusReply

if TYPE_CHECKING:
    from librorum.client.sync import SyncClient

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
#: ``librorum status``: the daemon answered, but its store is degraded (read-only, or chunks
#: quarantined).
EXIT_DEGRADED = 2


class UsageError(Exception):
    """The arguments (or the environment standing in for them) make no sense: exit status 2,
    with the message on one line."""


# --- Formatting ----------------------------------------------------------------------------


def human_size(n: int) -> str:
    """1536 -> '1.5 KiB' (binary units, as ``ls -lh``)."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def human_time(mtime_ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(mtime_ns / 1e9))


def table(rows: Sequence[Sequence[str]], *, right: Sequence[int] = ()) -> str:
    """Aligned columns; the column indexes in ``right`` are right-aligned (numbers)."""
    if not rows:
        return ""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


class Progress:
    """A one-line progress bar on a terminal's stderr; silent when stderr is not a tty."""

    def __init__(self, label: str, stream: TextIO = sys.stderr) -> None:
        self.label = label
        self.stream = stream
        self.enabled = stream.isatty()
        self.started = time.monotonic()
        self._last_draw = 0.0
        # The last figures reported, and whether the line shows them.
        self._done = 0
        self._total: int | None = None
        self._shown = True

    def __call__(self, done: int, total: int | None, *, force: bool = False) -> None:
        if not self.enabled:
            return
        self._done, self._total = done, total
        now = time.monotonic()
        if now - self._last_draw < 0.1 and done != total and not force:
            self._shown = False
            return  # redraw at most 10 times a second
        self._shown = True
        self._last_draw = now
        rate = done / max(now - self.started, 1e-6)
        if total:
            width = 30
            filled = int(width * done / total)
            bar = "#" * filled + "-" * (width - filled)
            eta = (total - done) / rate if rate else 0
            text = (
                f"\r{self.label} [{bar}] {done * 100 // total:3d}% "
                f"{human_size(done)}/{human_size(total)} {human_size(int(rate))}/s ETA {eta:.0f}s"
            )
        else:
            text = f"\r{self.label} {human_size(done)} {human_size(int(rate))}/s"
        self.stream.write(text)
        self.stream.flush()

    def finish(self) -> None:
        """End the line, showing the final figures if the last ones were not drawn."""
        if self.enabled:
            if not self._shown:
                self(self._done, self._total, force=True)
            self.stream.write("\n")
            self.stream.flush()


# --- Commands --------------------------------------------------------------------------------


def cmd_put(client: SyncClient, args: argparse.Namespace) -> int:
    mode = WriteMode.EXCLUSIVE if args.exclusive else WriteMode.CREATE
    progress = Progress(f"put {args.remote}")
    if args.local == "-":
        info = client.write(args.remote, _chunks(sys.stdin.buffer), mode=mode, progress=progress)
    else:
        info = client.write(args.remote, Path(args.local), mode=mode, progress=progress)
    progress.finish()
    if args.verbose:
        print(f"{info.path}: {info.size} bytes, version {info.version}")
    return EXIT_OK


def _chunks(stream: BinaryIO, size: int = 1 << 20) -> Iterator[bytes]:
    while chunk := stream.read(size):
        yield chunk


def cmd_get(client: SyncClient, args: argparse.Namespace) -> int:
    if args.local == "-":
        return cmd_cat(client, args)
    progress = Progress(f"get {args.remote}")
    client.read_to_file(args.remote, Path(args.local), progress=progress)
    progress.finish()
    return EXIT_OK


def cmd_cat(client: SyncClient, args: argparse.Namespace) -> int:
    out = sys.stdout.buffer
    with client.open_read(args.remote) as stream:
        for chunk in stream:
            out.write(chunk)
    out.flush()
    return EXIT_OK


def cmd_ls(client: SyncClient, args: argparse.Namespace) -> int:
    path = args.remote or "/"
    try:
        entries = client.list(path)
    except NotADirectoryError_:
        # `ls FILE` describes the file, as ls(1) does.
        info = client.stat(path)
        name = PurePosixPath(info.path).name
        entries = [DirEntry(name, info.kind, info.size, info.mtime_ns, info.version)]
    if not args.long:
        for entry in entries:
            print(entry.name + ("/" if entry.kind is EntryKind.DIRECTORY else ""))
        return EXIT_OK
    rows = []
    for entry in entries:
        kind = "d" if entry.kind is EntryKind.DIRECTORY else "-"
        size = "-" if entry.kind is EntryKind.DIRECTORY else human_size(entry.size)
        rows.append([kind, size, human_time(entry.mtime_ns), f"v{entry.version}", entry.name])
    if rows:
        print(table(rows, right=(1,)))
    return EXIT_OK


def cmd_stat(client: SyncClient, args: argparse.Namespace) -> int:
    info = client.stat(args.remote)
    rows = [
        ["path", info.path],
        ["kind", "directory" if info.kind is EntryKind.DIRECTORY else "file"],
        ["size", f"{info.size} ({human_size(info.size)})"],
        ["modified", human_time(info.mtime_ns)],
        ["version", str(info.version)],
    ]
    if info.content_hash is not None:
        rows.append(["blake3", info.content_hash.hex()])
    print(table(rows))
    return EXIT_OK


def cmd_rm(client: SyncClient, args: argparse.Namespace) -> int:
    client.delete(args.remote, recursive=args.recursive)
    return EXIT_OK


def cmd_mv(client: SyncClient, args: argparse.Namespace) -> int:
    client.rename(args.src, args.dst, overwrite=args.force)
    return EXIT_OK


def cmd_mkdir(client: SyncClient, args: argparse.Namespace) -> int:
    client.mkdir(args.remote, parents=args.parents)
    return EXIT_OK


def cmd_status(client: SyncClient, args: argparse.Namespace) -> int:
    status = client.status()
    if args.json:
        print(json.dumps(_status_json(status), indent=2, sort_keys=True))
        return EXIT_DEGRADED if status.degraded else EXIT_OK
    store = status.store
    saved = store.logical_bytes - store.stored_bytes
    data = (
        f"{human_size(store.logical_bytes)} ({human_size(store.stored_bytes)} stored, "
        f"{human_size(max(saved, 0))} saved by dedup)"
    )
    connections = ", ".join(f"{k} {v}" for k, v in sorted(status.connections.items())) or "0"
    rows = [
        ["version", f"{status.version} (protocol {status.protocol_version})"],
        ["node", status.node_id],
        ["uptime", _duration(status.uptime_ms / 1000)],
        ["connections", connections],
        ["requests", f"{status.requests:,}"],
        ["bytes in / out", f"{human_size(status.bytes_in)} / {human_size(status.bytes_out)}"],
        [
            "uploads in flight",
            f"{human_size(status.inflight_bytes)} (peak {human_size(status.inflight_peak_bytes)})",
        ],
        ["files", f"{store.files:,} in {store.directories:,} directories"],
        ["data", data],
        ["chunks", f"{store.chunks:,}"],
        ["free space", human_size(store.free_bytes)],
    ]
    if store.quarantined:
        rows.append(["quarantined", f"{store.quarantined:,} corrupt chunks (re-upload to heal)"])
    if store.read_only:
        rows.append(["store", "READ-ONLY: a write to disk failed; restart the daemon"])
    if status.read_only_reason:
        since = ""
        if status.read_only_since_ms is not None:
            since = f" (since {human_time(status.read_only_since_ms * 1_000_000)})"
        rows.append(["read-only because", f"{status.read_only_reason}{since}"])
    rows.append(["errors", f"{status.client_errors:,} client, {status.server_errors:,} server"])
    if status.python_version:
        rows.append(["runs on", f"Python {status.python_version}, SQLite {status.sqlite_version}"])
    rows.append(["health", "DEGRADED" if status.degraded else "ok"])
    rows.extend(["degraded", reason] for reason in status.degraded)
    rows += check_rows(status)
    print(table(rows))
    return EXIT_DEGRADED if status.degraded else EXIT_OK


def _status_json(status: NodeStatusReply) -> dict[str, object]:
    """The status as plain JSON values: every field of the reply, plus ``healthy``."""
    value = attrs.asdict(status)
    value["healthy"] = not status.degraded
    return value


#: How much longer than its grace ``librorum stop`` waits for the daemon to exit: closing the
#: connections and the store after the drain.
STOP_MARGIN = 10.0


def cmd_stop(client: SyncClient, args: argparse.Namespace) -> int:
    from librorum.client import LocalEndpoint

    endpoint = client.endpoint
    reply = client.shutdown()
    timeout = args.timeout if args.timeout is not None else reply.grace_ms / 1000 + STOP_MARGIN
    deadline = time.monotonic() + timeout
    if isinstance(endpoint, LocalEndpoint) and reply.pid:
        # Same machine: the daemon is gone when its process is.
        while _process_alive(reply.pid):
            if time.monotonic() > deadline:
                print(
                    f"librorum: the daemon (pid {reply.pid}) has not exited within {timeout:g} s",
                    file=sys.stderr,
                )
                return EXIT_ERROR
            time.sleep(STOP_POLL)
        print(f"librorum: the daemon (pid {reply.pid}) has stopped")
        return EXIT_OK
    # Remote: it is going when it no longer answers (new connections are refused).
    while True:
        try:
            client.ping()
        except LibrorumError:
            break
        if time.monotonic() > deadline:
            print(f"librorum: the daemon still answers after {timeout:g} s", file=sys.stderr)
            return EXIT_ERROR
        time.sleep(STOP_POLL)
    print("librorum: the daemon is stopping: it no longer accepts connections")
    return EXIT_OK


#: Seconds between two looks at whether the daemon is gone (bounded by the deadline).
STOP_POLL = 0.05


def _process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, exited but not reaped yet, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process, alive
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill()
    # The state follows the command name in parentheses, which may itself hold any bytes.
    return stat[stat.rfind(")") + 2 :][:1] != "Z"


def run_init(args: argparse.Namespace) -> int:
    from librorum.config import ConfigError, default_config_file
    from librorum.config_template import render

    path: Path = args.path or default_config_file()
    try:
        text = render()
    except ConfigError as exc:
        raise UsageError(str(exc)) from exc
    if path.exists() and not args.force:
        print(f"librorum: {path} exists; use --force to replace it", file=sys.stderr)
        return EXIT_ERROR
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written whole under a temporary name, then renamed: never a half-written file.
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)
    print(f"librorum: wrote {path}")
    return EXIT_OK


def check_rows(status: NodeStatusReply) -> list[list[str]]:
    """The rows of ``status`` about fsck and the scrub: one running, the last results."""
    rows: list[list[str]] = []
    if status.fsck_phase:
        rows.append(
            [
                "fsck",
                (
                    f"running: {status.fsck_phase}, "
                    f"{status.fsck_chunks_done:,}/{status.fsck_chunks_total:,} chunks"
                ),
            ]
        )
    if status.last_fsck_ms:
        result = (
            "clean"
            if status.last_fsck_ok
            else f"{status.last_fsck_problems:,} problems, "
            f"{status.last_fsck_affected:,} files affected"
        )
        rows.append(["last fsck", f"{human_time(status.last_fsck_ms * 1_000_000)}: {result}"])
    scrub = f"{status.scrub_chunks_verified:,} chunks verified since start"
    if status.scrub_corrupt_found:
        scrub += f", {status.scrub_corrupt_found:,} DAMAGED found (quarantined)"
    if status.last_scrub_ms:
        scrub += f"; last full pass {human_time(status.last_scrub_ms * 1_000_000)}"
    if status.scrub_chunks_verified or status.last_scrub_ms or status.scrub_corrupt_found:
        rows.append(["scrub", scrub])
    return rows


def _duration(seconds: float) -> str:
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    parts = [f"{days}d"] if days else []
    return " ".join([*parts, f"{hours:02d}:{minutes:02d}:{sec:02d}"])


def cmd_ping(client: SyncClient, args: argparse.Namespace) -> int:
    rtts = [client.ping() for _ in range(args.count)]
    for rtt in rtts:
        print(f"pong in {rtt * 1000:.3f} ms")
    return EXIT_OK


def cmd_top(client: SyncClient, args: argparse.Namespace) -> int:
    from librorum import _top

    formats = _top.Formats(human_size, lambda rows, right: table(rows, right=right))
    return _top.run(
        lambda: client.requests(limit=args.limit),
        formats,
        once=args.once,
        as_json_lines=args.json,
    )


def cmd_fsck(client: SyncClient, args: argparse.Namespace) -> int:
    from librorum import _cli_fsck

    progress = None if args.json else Progress("fsck --repair" if args.repair else "fsck")

    def show(reply: FsckReply) -> None:
        if progress is not None and reply.bytes_total:
            progress(reply.bytes_done, reply.bytes_total)

    report = client.fsck(repair=args.repair, on_progress=show)
    if progress is not None:
        progress.finish()
    if args.json:
        print(_cli_fsck.as_json(report))
    else:
        print(_cli_fsck.describe(report, human_size))
    return _cli_fsck.exit_status(report)


# --- Parsing ---------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (the usage is one ``--help`` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        msg = f"must be at least 1, got {value}"
        raise argparse.ArgumentTypeError(msg)
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="librorum",
        description="Librorum file service: run the daemon, or talk to one.",
        epilog="Start a daemon with `librorum serve`; then e.g. `librorum put notes.txt /notes.txt`.",
    )
    parser.add_argument("--socket", type=Path, help="Unix socket of a local daemon")
    parser.add_argument("--url", help="WebSocket URL of a remote daemon (ws://HOST:PORT)")
    parser.add_argument("--token-file", type=Path, help="file holding the remote access token")
    parser.add_argument(
        "--transport",
        choices=("auto", "local", "remote"),
        default="auto",
        help="auto: the local socket if a daemon answers there, else --url (default)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="say more")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = sub.add_parser("serve", help="run the daemon")
    serve.add_argument("--data-dir", type=Path, help="where the store lives")
    serve.add_argument("--socket", dest="serve_socket", type=Path, help="Unix socket path")
    serve.add_argument("--listen", metavar="HOST:PORT", help="WebSocket address (port 0: any)")
    serve.add_argument(
        "--token-file", dest="serve_token_file", type=Path, help="token file (created if missing)"
    )
    serve.add_argument("--no-remote", action="store_true", help="no WebSocket listener")
    serve.add_argument("--config", type=Path, help="TOML configuration file")
    serve.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        help="DEBUG, INFO (default), WARNING, ERROR or CRITICAL",
    )
    serve.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (off by default)",
    )
    serve.add_argument(
        "--log-format", choices=("text", "json"), help="text (default) or JSON lines"
    )
    serve.add_argument(
        "--log-file", type=Path, help="write the log here, rotated by size (default: stderr)"
    )

    put = sub.add_parser("put", help="upload LOCAL (- for stdin) to REMOTE")
    put.add_argument("local")
    put.add_argument("remote")
    put.add_argument("-x", "--exclusive", action="store_true", help="fail if REMOTE exists")
    put.set_defaults(func=cmd_put)

    get = sub.add_parser("get", help="download REMOTE to LOCAL (- for stdout)")
    get.add_argument("remote")
    get.add_argument("local")
    get.set_defaults(func=cmd_get)

    cat = sub.add_parser("cat", help="write REMOTE to stdout")
    cat.add_argument("remote")
    cat.set_defaults(func=cmd_cat)

    ls = sub.add_parser("ls", help="list a directory")
    ls.add_argument("-l", dest="long", action="store_true", help="long format")
    ls.add_argument("remote", nargs="?")
    ls.set_defaults(func=cmd_ls)

    stat = sub.add_parser("stat", help="describe REMOTE")
    stat.add_argument("remote")
    stat.set_defaults(func=cmd_stat)

    rm = sub.add_parser("rm", help="delete REMOTE")
    rm.add_argument("-r", dest="recursive", action="store_true", help="delete a directory tree")
    rm.add_argument("remote")
    rm.set_defaults(func=cmd_rm)

    mv = sub.add_parser("mv", help="rename SRC to DST (atomic)")
    mv.add_argument("-f", "--force", action="store_true", help="replace an existing file at DST")
    mv.add_argument("src")
    mv.add_argument("dst")
    mv.set_defaults(func=cmd_mv)

    mkdir = sub.add_parser("mkdir", help="create a directory")
    mkdir.add_argument("-p", dest="parents", action="store_true", help="create parents too")
    mkdir.add_argument("remote")
    mkdir.set_defaults(func=cmd_mkdir)

    status = sub.add_parser(
        "status", help="the daemon's health and figures (exit status 2 when degraded)"
    )
    status.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    status.set_defaults(func=cmd_status)

    ping = sub.add_parser("ping", help="round trip to the daemon")
    ping.add_argument("-c", "--count", type=_count, default=1, help="how many pings")
    ping.set_defaults(func=cmd_ping)

    top = sub.add_parser(
        "top", help="the requests in flight and what they wait on, refreshed every second"
    )
    top.add_argument("--once", action="store_true", help="one snapshot, then exit")
    top.add_argument(
        "--json", action="store_true", help="JSON: one document per refresh, one per line"
    )
    top.add_argument(
        "-n", "--limit", type=_listed, default=1000, help="list at most N requests (1-1000)"
    )
    top.set_defaults(func=cmd_top)
    stop = sub.add_parser("stop", help="stop the daemon gracefully (administrators only)")
    stop.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds to wait for it to exit (default: its grace plus 10)",
    )
    stop.set_defaults(func=cmd_stop)

    init = sub.add_parser("init", help="write a configuration file with every default")
    init.add_argument(
        "path", nargs="?", type=Path, help="where (default: the configuration file's usual place)"
    )
    init.add_argument("--force", action="store_true", help="replace an existing file")

    fsck = sub.add_parser(
        "fsck",
        help="check the store (administrators): exit 0 when clean, 1 when problems remain",
    )
    fsck.add_argument(
        "--repair",
        action="store_true",
        help="quarantine corrupt chunks, drop orphans, fix counts; list files to upload again",
    )
    fsck.add_argument("--json", action="store_true", help="the report as JSON, for scripts")
    fsck.set_defaults(func=cmd_fsck)

    logs_cli.add_parser(sub)
    return parser


def _listed(text: str) -> int:
    value = _count(text)
    if value > MAX_REQUESTS_LISTED:
        msg = f"must be at most {MAX_REQUESTS_LISTED}, got {value}"
        raise argparse.ArgumentTypeError(msg)
    return value


def run_serve(args: argparse.Namespace) -> int:
    import trio

    from librorum.config import load_config
    from librorum.server.app import serve
    from librorum.server.logsetup import configure_logging

    overrides: dict[str, object] = {}
    if args.data_dir is not None:
        overrides["data_dir"] = args.data_dir
    # `librorum --socket X serve` means the same as `librorum serve --socket X`.
    socket_path = args.serve_socket or args.socket
    token_file = args.serve_token_file or args.token_file
    if socket_path is not None:
        overrides["socket_path"] = socket_path
    if token_file is not None:
        overrides["token_file"] = token_file
    if args.no_remote:
        overrides["remote_enabled"] = False
    if args.listen is not None:
        host, sep, port = args.listen.rpartition(":")
        if not sep or not port.isdigit():
            msg = f"--listen wants HOST:PORT, got {args.listen!r}"
            raise UsageError(msg)
        overrides["listen_host"] = host.strip("[]") or "127.0.0.1"
        overrides["listen_port"] = int(port)
    if args.log_level is not None:
        overrides["log_level"] = args.log_level
    if args.metrics is not None:
        overrides["metrics_listen"] = args.metrics
    if args.log_format is not None:
        overrides["log_format"] = args.log_format
    if args.log_file is not None:
        overrides["log_file"] = args.log_file
    config = load_config(config_file=args.config, overrides=overrides)
    try:
        configure_logging(config)
    except OSError as exc:
        print(f"librorum: cannot open the log file: {exc}", file=sys.stderr)
        return EXIT_ERROR
    try:
        trio.run(serve, config)
    except BaseExceptionGroup as group:
        # Startup failures (the port is taken, another daemon holds the data directory)
        # come out of the daemon's nurseries wrapped in exception groups; they are expected
        # errors with a message for the user, not a traceback.
        expected, rest = group.split(LibrorumError)
        if rest is not None or expected is None:
            raise
        print(f"librorum: {_first_leaf(expected)}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


@contextlib.contextmanager
def _client(args: argparse.Namespace) -> Iterator[SyncClient]:
    from librorum.client.sync import connect

    try:
        client = connect(
            transport=args.transport,
            socket_path=args.socket,
            url=args.url,
            token_file=args.token_file,
        )
    except ValueError as exc:
        # Where to connect makes no sense: a URL that is not ws:// or wss://, --transport
        # remote without a URL, an empty token file.
        raise UsageError(str(exc)) from exc
    with client:
        yield client


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[SyncClient, argparse.Namespace], int] | None = getattr(args, "func", None)
    try:
        if args.command == "serve":
            return run_serve(args)
        if args.command == "init":
            return run_init(args)
        assert func is not None
        with _client(args) as client:
            return func(client, args)
    except UsageError as exc:
        print(f"librorum: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("librorum: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `librorum cat big | head`: the reader left; not an error of ours.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except LibrorumError as exc:
        print(f"librorum: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        # Local files: a missing LOCAL for put, an unwritable LOCAL for get.
        print(f"librorum: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
