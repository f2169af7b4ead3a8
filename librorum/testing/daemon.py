"""A real daemon on temporary paths, and clients connected to it (see :mod:`librorum.testing`)."""

from __future__ import annotations

import contextlib
import functools
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import attrs
import trio

from librorum.config import Config, load_config
from librorum.server.app import RunningServer, serve

if TYPE_CHECKING:
    from librorum.client.aio import Client

Transport = Literal["uds", "websocket"]


@attrs.frozen
class TestDaemon:
    """A daemon started by :func:`open_test_daemon`."""

    config: Config
    running: RunningServer

    @property
    def socket_path(self) -> Path:
        return self.running.socket_path

    @property
    def url(self) -> str:
        assert self.running.url is not None, "remote access is off for this daemon"
        return self.running.url

    @property
    def token_file(self) -> Path:
        assert self.config.token_file is not None, "this daemon runs without a token"
        return self.config.token_file

    @contextlib.asynccontextmanager
    async def client(
        self, transport: Transport = "uds", *, pass_fds: bool = True
    ) -> AsyncIterator[Client]:
        """An async client connected over ``transport``; ``pass_fds=False`` makes it stream
        every write over the Unix socket (as over WebSocket) instead of passing descriptors."""
        from librorum.client.aio import open_client

        if transport == "uds":
            async with open_client(
                transport="local", socket_path=self.socket_path, pass_fds=pass_fds
            ) as client:
                yield client
        else:
            async with open_client(
                transport="remote", url=self.url, token_file=self.token_file
            ) as client:
                yield client

    def shutdown(self) -> None:
        """Start a graceful shutdown (what SIGTERM does)."""
        self.running.shutdown()


def test_config(directory: Path, **overrides: object) -> Config:
    """A configuration confined to ``directory``: data, socket and token live there, the
    WebSocket listener is on 127.0.0.1 with an ephemeral port, and signals are not handled.
    New data is refused only when the disk is full (``min_free_space = 0``): a test's few
    files should not fail on a machine whose disk happens to be nearly full. The background
    scrub is off (``scrub_interval = 0``)."""
    settings: dict[str, object] = {
        "data_dir": directory / "data",
        "socket_path": directory / "run" / "librorum.sock",
        "token_file": directory / "token",
        "listen_host": "127.0.0.1",
        "listen_port": 0,
        "min_free_space": 0,
        # No background scrub unless a test asks for one: it would quarantine the chunks
        # other tests damage on purpose before they look.
        "scrub_interval": 0,
    }
    settings.update(overrides)
    return load_config(env={}, overrides=settings)


@contextlib.asynccontextmanager
async def open_test_daemon(
    directory: Path | None = None, **overrides: object
) -> AsyncIterator[TestDaemon]:
    """Run a real daemon for the duration of the block, then shut it down gracefully.

    Args:
        directory: where its data, socket and token go (a temporary directory if ``None``).
        overrides: configuration values (see :class:`librorum.config.Config`).

    Raises:
        LibrorumError: the daemon could not start.
    """
    with contextlib.ExitStack() as stack:
        if directory is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="librorum-")))
        config = test_config(directory, **overrides)
        async with trio.open_nursery() as nursery:
            running: RunningServer = await nursery.start(
                functools.partial(serve, config, handle_signals=False)
            )
            try:
                yield TestDaemon(config, running)
            finally:
                running.shutdown()


# Not collected by pytest although the names start with "test".
TestDaemon.__test__ = False  # type: ignore[attr-defined]
test_config.__test__ = False  # type: ignore[attr-defined]
