"""Run every script in tests/scenarios/ against a real daemon, over both transports."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
import trio

from librorum.errors import LibrorumError
from librorum.protocol.constants import EntryKind, ErrorCode, WriteMode
from librorum.testing import Transport, open_test_daemon

SCENARIOS = sorted((Path(__file__).parent.parent / "scenarios").glob("*.toml"))


def _data(step: dict[str, Any]) -> bytes:
    if "data_repeat" in step:
        text, count = step["data_repeat"]
        return str(text).encode() * int(count)
    return str(step.get("data", "")).encode()


async def _run(client: Any, step: dict[str, Any]) -> None:
    action = step["do"]
    if action == "write":
        info = await client.write(
            step["path"], _data(step), mode=WriteMode(step.get("mode", "create"))
        )
        if "expect_size" in step:
            assert info.size == step["expect_size"]
    elif action == "read":
        data = await client.read(
            step["path"], offset=step.get("offset", 0), length=step.get("length")
        )
        if "expect_data" in step:
            assert data == step["expect_data"].encode()
    elif action == "stat":
        info = await client.stat(step["path"])
        if "expect_kind" in step:
            assert info.kind is EntryKind(step["expect_kind"])
        if "expect_size" in step:
            assert info.size == step["expect_size"]
    elif action == "list":
        entries = await client.list(step["path"])
        if "expect_names" in step:
            assert [e.name for e in entries] == step["expect_names"]
    elif action == "mkdir":
        await client.mkdir(step["path"], parents=step.get("parents", False))
    elif action == "delete":
        removed = await client.delete(step["path"], recursive=step.get("recursive", False))
        if "expect_removed" in step:
            assert removed == step["expect_removed"]
    elif action == "rename":
        await client.rename(step["src"], step["dst"], overwrite=step.get("overwrite", False))
    elif action == "ping":
        assert await client.ping() >= 0
    elif action == "status":
        status = await client.status()
        if "expect_files" in step:
            assert status.store.files == step["expect_files"]
    else:
        pytest.fail(f"unknown scenario action {action!r}")


@pytest.mark.parametrize("transport", ["uds", "websocket"])
@pytest.mark.parametrize("script", SCENARIOS, ids=lambda p: p.stem)
async def test_scenario(script: Path, transport: Transport, tmp_path: Path) -> None:
    scenario = tomllib.loads(script.read_text())  # noqa: ASYNC240 - a small file, before the daemon starts
    assert scenario["step"], f"{script.name} has no steps"
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path) as daemon, daemon.client(transport) as client:
            for number, step in enumerate(scenario["step"], 1):
                where = f"{script.name} step {number} ({step['do']})"
                expected = step.get("expect_error")
                try:
                    await _run(client, step)
                except LibrorumError as exc:
                    if expected is None:
                        raise AssertionError(f"{where}: unexpected {exc!r}") from exc
                    assert exc.wire_code == ErrorCode[expected], f"{where}: got {exc!r}"  # noqa: PT017 - a scripted expectation, not a pytest.raises case
                else:
                    assert expected is None, f"{where}: expected {expected}, got success"
