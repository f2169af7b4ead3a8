"""scripts/unasync.py, which generates the blocking client from the async one: what it rewrites
on a small input, and that the generated modules in the tree are what it generates now."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def unasync() -> ModuleType:
    spec = importlib.util.spec_from_file_location("unasync", ROOT / "scripts" / "unasync.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SOURCE = '''\
from collections.abc import AsyncIterator
from librorum.client._async_driver import AsyncConnection
import trio  # unasync: remove


class Client:
    """Use it inside `async with`; an async iterable of chunks."""

    def __init__(self, nursery: trio.Nursery, name: str) -> None:  # unasync: remove
    # unasync: sync: def __init__(self, name: str) -> None:
        self.name = name

    async def __aenter__(self) -> Client:
        return self

    async def aclose(self) -> None:
        async with self.lock:
            async for item in self.items():
                await self.send(item)

    def __aiter__(self) -> AsyncIterator[int]:
        return self

    async def __anext__(self) -> int:
        raise StopAsyncIteration
'''

EXPECTED = '''\
from collections.abc import Iterator
from librorum.client._sync_driver import SyncConnection


class SyncClient:
    """Use it inside `with`; an iterable of chunks."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> SyncClient:
        return self

    def close(self) -> None:
        with self.lock:
            for item in self.items():
                self.send(item)

    def __iter__(self) -> Iterator[int]:
        return self

    def __next__(self) -> int:
        raise StopIteration
'''


def test_keywords_names_and_marked_lines_are_rewritten(unasync: ModuleType) -> None:
    assert unasync.unasync_text(SOURCE) == EXPECTED


def test_names_are_rewritten_only_as_whole_identifiers(unasync: ModuleType) -> None:
    text = "ClientError, Client, self._client, aclosed, aclose(), open_sources, Source\n"
    assert unasync.unasync_text(text) == (
        "ClientError, SyncClient, self._client, aclosed, close(), open_sources, SyncSource\n"
    )


def test_generated_modules_say_what_they_come_from(unasync: ModuleType) -> None:
    for rule in unasync.RULES:
        text = (ROOT / rule.target).read_text()
        assert text.startswith("# GENERATED FILE: do not edit. Generated from ")
        assert rule.source.as_posix() in text.splitlines()[0]


def test_the_generated_modules_are_fresh(unasync: ModuleType) -> None:
    # `make lint` runs the same check; this says which module is stale.
    stale = [
        rule.target
        for rule in unasync.RULES
        if (ROOT / rule.target).read_text() != unasync.generate(rule)
    ]
    assert stale == [], "run `python scripts/unasync.py`"
