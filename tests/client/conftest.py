"""Fixtures of the client tests: a fake server on a Unix socket in ``tmp_path``."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from librorum.protocol.session import ServerLimits

from .fake_server import Behaviour, FakeServer

#: Seconds any one client test may take; each test body runs under trio.fail_after(this).
TEST_TIMEOUT = 20


@pytest.fixture
def socket_path(tmp_path: Path) -> Path:
    return tmp_path / "lbru.sock"


async def start_server(
    nursery: trio.Nursery,
    path: Path,
    *,
    limits: ServerLimits | None = None,
    behaviour: Behaviour | None = None,
) -> FakeServer:
    """A fake server accepting on ``path`` until the test's nursery is cancelled."""
    server = FakeServer(limits, behaviour)
    await nursery.start(server.serve_uds, path)
    return server
