"""The command line, run as a real subprocess against a real daemon: outputs and exit codes
(0 success, 1 operation error with one line on stderr, 2 usage error; never a traceback)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from librorum.testing import TestDaemon, open_test_daemon


def environment() -> dict[str, str]:
    """The tests' environment without the LIBRORUM_* variables of whoever runs them."""
    return {k: v for k, v in os.environ.items() if not k.startswith("LIBRORUM_")}


def command(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "librorum", *map(str, args)]


async def cli(*args: str | Path, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        command(*args),
        stdin=stdin,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=environment(),
    )


def local(daemon: TestDaemon) -> list[str | Path]:
    return ["--socket", daemon.socket_path]


def assert_one_line_error(result: subprocess.CompletedProcess[bytes], *words: str) -> None:
    assert result.returncode == 1, result
    err = result.stderr.decode()
    assert err.count("\n") == 1, err
    assert err.startswith("librorum: ")
    assert "Traceback" not in err
    for word in words:
        assert word in err, err


async def test_file_commands_round_trip(tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(bytes(range(256)) * 8192)  # 2 MiB
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path / "d") as daemon:
            base = local(daemon)
            assert (await cli(*base, "mkdir", "-p", "/a/b")).returncode == 0
            assert (await cli(*base, "put", source, "/a/b/s.bin")).returncode == 0
            assert (await cli(*base, "put", "-", "/a/note.txt", stdin=b"hello\n")).returncode == 0
            result = await cli(*base, "cat", "/a/note.txt")
            assert result.stdout == b"hello\n"
            copy = tmp_path / "copy.bin"
            assert (await cli(*base, "get", "/a/b/s.bin", copy)).returncode == 0
            assert copy.read_bytes() == source.read_bytes()
            listing = (await cli(*base, "ls", "-l", "/a")).stdout.decode().splitlines()
            assert [line.split()[-1] for line in listing] == ["b", "note.txt"]
            assert listing[1].split()[1:3] == ["6", "B"]
            stat = (await cli(*base, "stat", "/a/b/s.bin")).stdout.decode()
            assert "2.0 MiB" in stat
            assert "blake3" in stat
            assert (await cli(*base, "mv", "/a/note.txt", "/note.txt")).returncode == 0
            assert (await cli(*base, "ls", "/")).stdout.decode().split() == ["a/", "note.txt"]
            assert (await cli(*base, "rm", "-r", "/a")).returncode == 0
            status = (await cli(*base, "status")).stdout.decode()
            assert "files" in status
            assert "1 in 1 directories" in status
            assert (await cli(*base, "ping")).stdout.startswith(b"pong in ")


async def test_remote_commands_use_the_token(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path) as daemon:
            remote = ["--url", daemon.url, "--transport", "remote"]
            ok = await cli(*remote, "--token-file", daemon.token_file, "put", "-", "/r", stdin=b"x")
            assert ok.returncode == 0, ok.stderr
            assert (
                await cli(*remote, "--token-file", daemon.token_file, "cat", "/r")
            ).stdout == b"x"
            assert_one_line_error(await cli(*remote, "ls", "/"), "401")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["stat", "/missing"], ["no such file"]),
        (["mkdir", "/x/y"], ["no such"]),
        (["rm", "/"], []),
        (["put", "/definitely/not/here.bin", "/x"], ["No such file"]),
    ],
)
async def test_operation_errors_exit_1_with_one_line(
    args: list[str], words: list[str], tmp_path: Path
) -> None:
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path) as daemon:
            assert_one_line_error(await cli(*local(daemon), *args), *words)


async def test_usage_errors_exit_2_with_one_line(tmp_path: Path) -> None:
    empty_token = tmp_path / "token"
    empty_token.touch()
    cases: list[tuple[list[str | Path], str]] = [
        (["bogus"], "invalid choice: 'bogus'"),
        (["put", "only-one"], "librorum put: the following arguments are required: remote"),
        ([], "the following arguments are required: COMMAND"),
        (["ls", "-z"], "unrecognized arguments: -z"),
        (["ping", "-c", "0"], "must be at least 1"),
        (["serve", "--log-level", "loud"], "invalid choice: 'LOUD'"),
        (["serve", "--listen", "7878"], "--listen wants HOST:PORT, got '7878'"),
        # Where to connect: not a WebSocket URL, no URL at all, a token file with no token.
        (["--url", "http://example.org", "ping"], "not a WebSocket URL"),
        (["--transport", "remote", "ping"], "no URL for transport='remote'"),
        (["--url", "ws://127.0.0.1:9", "--token-file", empty_token, "ping"], "is empty"),
    ]
    for args, words in cases:
        result = await cli(*args)
        assert result.returncode == 2, (args, result)
        err = result.stderr.decode()
        assert err.count("\n") == 1, (args, err)
        assert err.startswith("librorum"), (args, err)
        assert words in err, (args, err)


async def test_no_daemon_says_how_to_start_one(tmp_path: Path) -> None:
    result = await cli("--socket", tmp_path / "none.sock", "--transport", "local", "ping")
    assert_one_line_error(result, "librorum serve")


@pytest.mark.parametrize("clash", ["data-dir", "port"])
async def test_serve_startup_errors_are_one_line(clash: str, tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path / "first") as daemon:
            assert daemon.running.websocket is not None
            host, port = daemon.running.websocket
            second = tmp_path / "second"
            args: list[str | Path] = ["serve", "--socket", second / "run" / "s.sock"]
            if clash == "data-dir":
                # Held by the running daemon: refused before anything starts.
                args += ["--data-dir", daemon.config.data_dir, "--no-remote"]
            else:
                # The port is taken: fails inside the daemon's nurseries, where errors
                # come out wrapped in exception groups.
                args += ["--data-dir", second / "data", "--listen", f"{host}:{port}"]
            result = await cli(*args)
    # The daemon logs to stderr too; the error is its last line, and there is no traceback.
    assert result.returncode == 1, result
    err = result.stderr.decode()
    assert "Traceback" not in err, err
    last = err.splitlines()[-1]
    assert last.startswith("librorum: "), err
    assert ("data" if clash == "data-dir" else "cannot listen") in last


async def test_serve_takes_the_global_socket_option_too(tmp_path: Path) -> None:
    """`librorum --socket X serve` serves on X: here X is a live daemon's socket, which
    is never taken over, so the second daemon refuses to start, naming it."""
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path / "first") as daemon:
            args = ["--socket", daemon.socket_path, "serve", "--no-remote"]
            result = await cli(*args, "--data-dir", tmp_path / "second")
    assert result.returncode == 1, result
    err = result.stderr.decode()
    assert "Traceback" not in err, err
    assert str(daemon.socket_path) in err.splitlines()[-1], err


async def test_ls_of_a_file_describes_the_file(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path) as daemon:
            base = local(daemon)
            assert (await cli(*base, "put", "-", "/dir/f.txt", stdin=b"abc")).returncode == 1
            assert (await cli(*base, "mkdir", "/dir")).returncode == 0
            assert (await cli(*base, "put", "-", "/dir/f.txt", stdin=b"abc")).returncode == 0
            assert (await cli(*base, "ls", "/dir/f.txt")).stdout == b"f.txt\n"
            line = (await cli(*base, "ls", "-l", "/dir/f.txt")).stdout.decode().split()
            assert line[0] == "-"
            assert line[-1] == "f.txt"
            assert_one_line_error(await cli(*base, "ls", "/nope"), "no such")
