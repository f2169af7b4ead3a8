"""A Librorum daemon in its own process (``python -m librorum serve``), so that its CPU and
memory are its own: the benchmark reads its peak RSS (VmHWM) and profiles it by pid."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import attrs

from bench.common import ServerProcess, can_connect_tcp, free_port, server_process
from librorum.client.sync import connect


@attrs.frozen
class Daemon:
    process: ServerProcess
    socket_path: Path
    port: int
    token_file: Path

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid


def _ready(socket_path: Path, token_file: Path, port: int) -> bool:
    if not socket_path.exists() or not token_file.exists() or not can_connect_tcp(port):
        return False
    try:
        with connect(transport="local", socket_path=socket_path, connect_timeout=2) as client:
            client.ping()
    except Exception:
        return False
    return True


@contextlib.contextmanager
def run_daemon(directory: Path, *, name: str = "librorum") -> Iterator[Daemon]:
    """A daemon with its data, socket and token under ``directory``, listening on the Unix
    socket and on WebSocket at 127.0.0.1 (a free port), with connection caps raised for the
    100-client workload."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    socket_path = directory / "run" / "librorum.sock"
    token_file = directory / "token"
    config = directory / "config.toml"
    config.write_text(
        "\n".join(
            [
                f'data_dir = "{directory / "data"}"',
                f'socket_path = "{socket_path}"',
                f'token_file = "{token_file}"',
                'listen_host = "127.0.0.1"',
                f"listen_port = {port}",
                # INFO: the log then says why the daemon stopped, if it ever stops early.
                'log_level = "INFO"',
                "max_connections_per_uid = 256",
                "max_connections_per_ip = 256",
                "max_unauthenticated = 256",
                "",
            ]
        )
    )
    with server_process(
        name,
        ["-m", "librorum", "serve", "--config", str(config)],
        directory / "daemon.log",
        lambda: _ready(socket_path, token_file, port),
    ) as process:
        yield Daemon(process, socket_path, port, token_file)
