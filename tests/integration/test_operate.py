"""Running the daemon as a service, against real daemons: sd_notify, `librorum stop`, a
stable node id, `librorum status --json` and its exit status when the store is degraded,
and `librorum init`."""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import socket
import subprocess
from pathlib import Path

import trio

from librorum.config import Config, load_config
from librorum.server.node_id import NODE_ID_FILE
from librorum.server.sd_notify import Notifier
from librorum.testing import open_test_daemon
from tests.integration.test_cli import cli, command, environment, local


async def test_serve_notifies_the_service_manager_and_stop_ends_it(tmp_path: Path) -> None:
    """READY=1 once the listeners accept, WATCHDOG=1 every WATCHDOG_USEC/2, STOPPING=1 when
    `librorum stop` asks the daemon to go; the daemon exits 0 and its socket is gone."""
    name = f"@librorum-test-{secrets.token_hex(6)}"  # an abstract socket
    manager = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await manager.bind("\0" + name[1:])
    socket_path = tmp_path / "run" / "s.sock"
    env = environment() | {"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "200000"}
    args = ["serve", "--data-dir", tmp_path / "data", "--socket", socket_path, "--no-remote"]
    messages: list[str] = []
    arrived = trio.Condition()

    async def receive() -> None:
        # Read every datagram as it comes, as a service manager does: the kernel queues only
        # a few (net.unix.max_dgram_qlen, 10 by default) and the daemon drops what does not
        # fit, so a test that stopped reading while WATCHDOG=1 keeps coming would lose
        # STOPPING=1.
        while True:
            message = (await manager.recv(4096)).decode()
            async with arrived:
                messages.append(message)
                arrived.notify_all()

    async def until(prefix: str, after: int = 0) -> tuple[int, str]:
        """The first message from index ``after`` on with a line starting with ``prefix``,
        and the index after it."""
        async with arrived:
            while True:
                for i in range(after, len(messages)):
                    if any(line.startswith(prefix) for line in messages[i].splitlines()):
                        return i + 1, messages[i]
                after = len(messages)
                await arrived.wait()

    with manager, trio.fail_after(60):
        process = await trio.lowlevel.open_process(
            command(*args), stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
        )
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive)
                seen, ready = await until("READY=1")
                assert "STATUS=serving on" in ready
                # The listener accepts by the time READY=1 is said.
                assert (await cli("--socket", socket_path, "ping")).returncode == 0
                seen, _ = await until("WATCHDOG=1", seen)
                seen, _ = await until("WATCHDOG=1", seen)
                result = await cli("--socket", socket_path, "stop")
                assert result.returncode == 0, result
                assert b"has stopped" in result.stdout
                _, stopping = await until("STOPPING=1", seen)
                assert "STATUS=shutting down" in stopping
                assert await process.wait() == 0
                nursery.cancel_scope.cancel()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert not socket_path.exists()
    assert messages.index(next(m for m in messages if "READY=1" in m)) == 0


def test_notifier_is_silent_without_a_manager_and_survives_one_gone(tmp_path: Path) -> None:
    assert not Notifier({}).notify(READY="1")
    assert Notifier({}).watchdog_interval is None
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody")})
    assert not gone.notify(READY="1")  # no such socket: dropped, no exception
    gone.close()
    other = Notifier({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert other.watchdog_interval is None  # the watchdog is another process's
    ours = Notifier({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000000"})
    assert ours.watchdog_interval == 0.5
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(str(tmp_path / "notify"))
        notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify")})
        assert notifier.notify(STATUS="two\nlines", READY="1")
        assert manager.recv(4096) == b"STATUS=two\nREADY=1"
        notifier.close()


async def test_stop_is_refused_for_a_non_administrator(tmp_path: Path) -> None:
    """Over the real socket: a daemon whose admin list does not hold our uid refuses."""
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path, admin_uids=(os.getuid() + 1,)) as daemon:
            result = await cli(*local(daemon), "stop")
            assert result.returncode == 1
            assert b"administrators" in result.stderr
            assert b"Traceback" not in result.stderr
            assert (await cli(*local(daemon), "ping")).returncode == 0


async def test_the_node_id_is_kept_across_restarts(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path) as daemon, daemon.client() as client:
            first = (await client.status()).node_id
        async with open_test_daemon(tmp_path) as daemon, daemon.client() as client:
            second = (await client.status()).node_id
    assert first == second
    path = tmp_path / "data" / NODE_ID_FILE
    assert path.read_text() == f"{first}\n"
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".node_id")] == []


async def test_status_json_and_the_exit_status_of_a_degraded_store(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path) as daemon:
            healthy = await cli(*local(daemon), "status", "--json")
            assert healthy.returncode == 0, healthy
            report = json.loads(healthy.stdout)
            assert report["healthy"] is True
            assert report["degraded"] == []
            assert report["store"]["read_only"] is False
            assert report["python_version"]
            assert report["sqlite_version"]
            # A failed fsync: what turns the store read-only (see the store's fault tests).
            engine = daemon.running.server.service._store._engine
            engine.on_fatal_io(OSError(errno.EIO, "Input/output error"))
            degraded = await cli(*local(daemon), "status", "--json")
            assert degraded.returncode == 2
            report = json.loads(degraded.stdout)
            assert report["healthy"] is False
            assert report["store"]["read_only"] is True
            assert "Input/output error" in report["read_only_reason"]
            assert report["read_only_since_ms"] > 0
            assert report["degraded"][0].startswith("read-only: ")
            text = await cli(*local(daemon), "status")
            assert text.returncode == 2
            assert b"DEGRADED" in text.stdout
            assert b"read-only because" in text.stdout
            # Writes are refused, and counted as server errors.
            assert (await cli(*local(daemon), "mkdir", "/x")).returncode == 1
            report = json.loads((await cli(*local(daemon), "status", "--json")).stdout)
            assert report["server_errors"] == 1


async def test_init_writes_a_file_that_loads_as_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "librorum.toml"
    result = await cli("init", path)
    assert result.returncode == 0, result
    text = path.read_text()
    env = {"HOME": str(tmp_path / "home")}
    # Every setting is in the file, with its documentation.
    for field in Config.__attrs_attrs__:
        assert f"{field.name} = " in text, field.name
    assert "# Seconds requests in flight get to finish when the daemon stops." in text
    assert load_config(config_file=path, env=env) == load_config(env=env)
    # Not replaced without --force.
    path.write_text("listen_port = 9999\n")
    refused = await cli("init", path)
    assert refused.returncode == 1
    assert b"--force" in refused.stderr
    assert path.read_text() == "listen_port = 9999\n"
    assert (await cli("init", "--force", path)).returncode == 0
    assert path.read_text() == text


async def test_stop_over_websocket_with_the_token(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    socket_path = tmp_path / "run" / "s.sock"
    args = [
        "serve", "--data-dir", tmp_path / "data", "--socket", socket_path,
        "--listen", "127.0.0.1:0", "--token-file", token_file,
    ]  # fmt: skip
    with trio.fail_after(60):
        process = await trio.lowlevel.open_process(
            command(*args), stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, env=environment()
        )
        try:
            assert process.stderr is not None
            log = bytearray()
            while not (found := re.search(rb"serving .* and (ws://\S+)", log)):
                chunk = await process.stderr.receive_some(4096)
                assert chunk, log
                log += chunk
            remote = ["--url", found.group(1).decode(), "--transport", "remote"]
            result = await cli(*remote, "--token-file", token_file, "stop")
            assert result.returncode == 0, result
            assert b"no longer accepts connections" in result.stdout
            assert await process.wait() == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
