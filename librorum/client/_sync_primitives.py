"""The blocking counterparts of :mod:`librorum.client._async_primitives`, under the same
names: the generated blocking client calls these where the async client awaits trio."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from librorum.client._common import Chunk

T = TypeVar("T")

#: Seconds on the clock the client's deadlines are measured with.
current_time = time.monotonic
#: Wait for a number of seconds.
sleep = time.sleep
#: Guards the client's connection against concurrent replacement. The blocking client is
#: not meant to be shared between threads; the lock costs nothing when uncontended.
Lock = threading.Lock


def checkpoint() -> None:
    """Nothing to yield to without an event loop."""


def deadline_scope(deadline: float) -> contextlib.nullcontext[None]:
    """No way to interrupt a blocking call at ``deadline``: each socket call is bounded by
    its own timeout, and callers check the deadline between steps."""
    return contextlib.nullcontext()


def shielded() -> contextlib.nullcontext[None]:
    """Nothing interrupts a blocking call but a signal, which nothing can shield from."""
    return contextlib.nullcontext()


def run_sync(fn: Callable[..., T], *args: object) -> T:
    """Call ``fn(*args)``: blocking is what this client does."""
    return fn(*args)


def write_file(path: Path, chunks: Iterable[Chunk]) -> None:
    """Write ``chunks`` into ``path`` (created or truncated) as they come.

    Raises:
        OSError: the file cannot be written.
    """
    with open(path, "wb") as out:
        for chunk in chunks:
            out.write(chunk)


def replace_file(source: Path, target: Path) -> None:
    """Rename ``source`` over ``target`` atomically (same directory).

    Raises:
        OSError: the rename failed.
    """
    os.replace(source, target)


def remove_file(path: Path) -> None:
    """Remove ``path`` if it exists.

    Raises:
        OSError: it exists and cannot be removed.
    """
    path.unlink(missing_ok=True)
