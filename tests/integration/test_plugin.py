"""The pytest plugin's fixtures, used as a user of the package would."""

from __future__ import annotations

from librorum.client.aio import Client
from librorum.testing import TestDaemon


async def test_fixtures_share_one_daemon(
    librorum_daemon: TestDaemon, librorum_client: Client, librorum_ws_client: Client
) -> None:
    await librorum_client.write("/from-uds", b"local")
    assert await librorum_ws_client.read("/from-uds") == b"local"
    status = await librorum_ws_client.status()
    assert status.connections["uds"] == 1
    assert status.connections["websocket"] == 1
    assert librorum_daemon.socket_path.exists()
