"""A real daemon process for the reliability campaign: ``python -m librorum serve`` on
temporary paths, its log captured, its memory and descriptors readable from /proc, and a
SIGKILL or a graceful stop at any moment.

    async with trio.open_nursery() as nursery:
        daemon = DaemonProcess(tmp_path, settings={"stream_timeout": 2.0})
        await daemon.start(nursery)
        ... daemon.url, daemon.socket_path, daemon.rss(), daemon.kill() ...
        await daemon.stop()

Settings go to the daemon as a TOML file (``--config``): any field of
:class:`librorum.config.Config`. The WebSocket listener is on 127.0.0.1 with an ephemeral
port; the daemon's log line announcing it says which.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

import trio

#: How long a daemon may take to start serving (a fresh store; coverage may slow it).
START_TIMEOUT: Final = 30.0
#: How long a graceful stop may take (the shutdown grace and the close grace, and margin).
STOP_TIMEOUT: Final = 30.0
_SERVING: Final = re.compile(rb"serving .* on (\S+)(?: and (wss?://\S+))?")

Setting = str | int | float | bool | list[int] | Path


def _toml_value(value: Setting) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return json.dumps(str(value))  # a TOML basic string is a JSON string for these values


class DaemonProcess:
    """One daemon directory, and the process serving it (restartable after a kill).

    Args:
        directory: where data, socket, token, config and log live.
        settings: extra configuration keys.
        nofile: RLIMIT_NOFILE (soft and hard) for the process, or ``None`` to inherit.
        env: extra environment variables.
        coverage: whether the process is measured when the tests run under coverage (its
            tracer costs memory and time: a figure of the daemon's own memory is taken
            without it).
    """

    def __init__(
        self,
        directory: Path,
        *,
        settings: Mapping[str, Setting] | None = None,
        nofile: int | None = None,
        env: Mapping[str, str] | None = None,
        coverage: bool = True,
    ) -> None:
        self.directory = directory
        self.data_dir = directory / "data"
        self.socket_path = directory / "run" / "librorum.sock"
        self.token_file = directory / "token"
        self.config_file = directory / "config.toml"
        self.log_path = directory / "daemon.log"
        self.settings = dict(settings or {})
        self.nofile = nofile
        self.env = dict(env or {})
        self.coverage = coverage
        self.process: trio.Process | None = None
        self.url: str | None = None
        self.starts = 0
        self._log = bytearray()
        self._exited: trio.Event | None = None

    # --- lifecycle -------------------------------------------------------------------------

    def _write_config(self) -> None:
        values: dict[str, Setting] = {
            "data_dir": self.data_dir,
            "socket_path": self.socket_path,
            "token_file": self.token_file,
            "listen_host": "127.0.0.1",
            "listen_port": 0,
            # As librorum.testing's: no floor under new data but the disk's end.
            "min_free_space": 0,
            **self.settings,
        }
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(
            "".join(f"{key} = {_toml_value(value)}\n" for key, value in values.items())
        )

    def _preexec(self) -> Callable[[], None] | None:
        nofile = self.nofile
        if nofile is None:
            return None

        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        return limit

    async def start(self, nursery: trio.Nursery, *, wait: bool = True) -> None:
        """Start the daemon; with ``wait``, return once it serves (else raise with its log).

        Raises:
            RuntimeError: it exited, or did not serve within START_TIMEOUT.
        """
        assert self.process is None or self.process.returncode is not None, "already running"
        self._write_config()
        self.starts += 1
        env = {**os.environ, **self.env}
        env.pop("LIBRORUM_URL", None)
        if not self.coverage:
            # coverage.py measures a subprocess when it finds these (its patch=subprocess).
            env.pop("COVERAGE_PROCESS_CONFIG", None)
            env.pop("COVERAGE_PROCESS_START", None)
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "librorum", "serve", "--config", str(self.config_file)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            preexec_fn=self._preexec(),
        )
        self.process = process
        self.url = None
        serving = trio.Event()
        exited = self._exited = trio.Event()
        nursery.start_soon(self._pump, process, serving, exited)
        if not wait:
            return
        with trio.move_on_after(START_TIMEOUT):
            async with trio.open_nursery() as waiter:

                async def until(event: trio.Event) -> None:
                    await event.wait()
                    waiter.cancel_scope.cancel()

                waiter.start_soon(until, serving)
                waiter.start_soon(until, exited)
        if not serving.is_set():
            await self.kill()
            msg = f"the daemon did not start serving:\n{self.log_tail()}"
            raise RuntimeError(msg)

    async def _pump(self, process: trio.Process, serving: trio.Event, exited: trio.Event) -> None:
        """Copy the daemon's stderr into the log (memory and file); note when it serves."""
        assert process.stderr is not None
        pending = b""
        with self.log_path.open("ab") as log:
            try:
                async for data in process.stderr:
                    self._log += data
                    log.write(data)
                    log.flush()
                    pending += data
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        match = _SERVING.search(line)
                        if match and not serving.is_set():
                            if match.group(2):
                                self.url = match.group(2).decode()
                            serving.set()
            finally:
                with trio.CancelScope(shield=True):
                    if process.returncode is None:
                        # The test is over (cancelled, or failed): never leave a daemon behind.
                        process.send_signal(signal.SIGKILL)
                    await process.wait()
                    # Left to the garbage collector, the pipe would be closed at some point
                    # during a later test, which would see its process's descriptor count
                    # change under it.
                    await process.stderr.aclose()
                    exited.set()

    async def kill(self) -> None:
        """SIGKILL the daemon and wait until it is gone (no cleanup of any kind runs)."""
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGKILL)
        with trio.fail_after(STOP_TIMEOUT):
            await process.wait()
            assert self._exited is not None
            await self._exited.wait()

    async def stop(self) -> int:
        """SIGTERM (graceful shutdown) and wait; returns the exit status.

        Raises:
            trio.TooSlowError: it did not stop within STOP_TIMEOUT.
        """
        process = self.process
        assert process is not None
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        with trio.fail_after(STOP_TIMEOUT):
            status = await process.wait()
            assert self._exited is not None
            await self._exited.wait()
        return status

    async def wait(self) -> int:
        """Wait for the process to exit by itself; returns its status."""
        assert self.process is not None
        assert self._exited is not None
        status = await self.process.wait()
        await self._exited.wait()
        return status

    # --- observation -----------------------------------------------------------------------

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def _status(self, field: str) -> int:
        """A ``kB`` field of /proc/PID/status, in bytes."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        msg = f"no {field} in /proc/{self.pid}/status"
        raise LookupError(msg)

    def rss(self) -> int:
        """Resident memory now, in bytes."""
        return self._status("VmRSS")

    def peak_rss(self) -> int:
        """The high-water mark of resident memory since the process started, in bytes."""
        return self._status("VmHWM")

    def fd_count(self) -> int:
        """Descriptors the daemon holds open."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    @property
    def log(self) -> str:
        """Everything the daemon wrote to stderr, over all its starts."""
        return self._log.decode("utf-8", "replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.splitlines()[-lines:])

    def tracebacks(self) -> list[str]:
        """The log lines that start a traceback (a bug, or an error reported badly)."""
        return [line for line in self.log.splitlines() if line.startswith("Traceback")]
