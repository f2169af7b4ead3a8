"""pytest fixtures for testing code against a real Librorum daemon (registered as a pytest
plugin by the package's entry point; needs pytest-trio)::

    async def test_upload(librorum_client):
        await librorum_client.write("/x", b"data")
        assert await librorum_client.read("/x") == b"data"

Fixtures: ``librorum_daemon`` (a :class:`librorum.testing.TestDaemon` in ``tmp_path``),
``librorum_client`` (an async client over the Unix socket) and ``librorum_ws_client`` (over
WebSocket with the daemon's token).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from librorum.testing import TestDaemon, open_test_daemon

if TYPE_CHECKING:
    from librorum.client.aio import Client


@pytest.fixture
async def librorum_daemon(tmp_path: Path) -> AsyncIterator[TestDaemon]:
    """A daemon with its data, socket and token under ``tmp_path``."""
    async with open_test_daemon(tmp_path) as daemon:
        yield daemon


@pytest.fixture
async def librorum_client(librorum_daemon: TestDaemon) -> AsyncIterator[Client]:
    """An async client connected to ``librorum_daemon`` over its Unix socket."""
    async with librorum_daemon.client("uds") as client:
        yield client


@pytest.fixture
async def librorum_ws_client(librorum_daemon: TestDaemon) -> AsyncIterator[Client]:
    """An async client connected to ``librorum_daemon`` over WebSocket."""
    async with librorum_daemon.client("websocket") as client:
        yield client
