"""What a request in flight is doing now: the primitive behind the live view (``librorum top``,
spec 5.21).

A request's waits happen at different layers: the store waits for a path lock or a worker
thread, the front door for the peer's credit or DATA and for the global in-flight budget.
None of them knows the request; each only wraps its wait::

    with activity.waiting(Wait.DISK):
        await trio.to_thread.run_sync(...)

and the :class:`Activity` of the task's request, if it has one (a context variable the front
door sets in the request's task, :func:`bind`), records it. Code running outside a request
(start-up, background jobs of the store started by none) has no activity, and the wait costs
one context-variable lookup.

The cost on the hot path: nothing for a request served without a task (STAT), which is never
bound; for the others, one small object per request, and per wait one small object and two
integer updates, around waits that are checkpoints anyway (on the 2-vCPU development machine a
recorded wait costs ~1.7 us, the worker-thread call it wraps ~110 us).

Like :mod:`librorum.limits`, this module imports nothing of the project, so that every layer
may use it (the store included, which knows nothing of requests or frames). Everything here
is used on the event loop's thread only.
"""

from __future__ import annotations

import enum
import time
from contextlib import AbstractContextManager, nullcontext
from contextvars import ContextVar, Token
from typing import Final


class Wait(enum.Enum):
    """What a request waits on. The values are the words the live view shows (spec 5.21)."""

    #: A path lock: another request holds the same path (a second writer of one file).
    PATH_LOCK = "path lock"
    #: The global budget of upload bytes in flight (spec 9.2): other uploads hold it.
    BUDGET = "budget"
    #: The peer's credit: a READ whose client granted no WINDOW.
    PEER_CREDIT = "peer credit"
    #: The peer itself: a WRITE waiting for DATA, a READ waiting for its client to read.
    PEER = "peer"
    #: The disk: a store call in a worker thread, or waiting for one (the metadata writer,
    #: the I/O thread limit).
    DISK = "disk"


#: The waits in the order the live view reports them when a request waits on several at
#: once (an upload's stored pieces may be on the disk while its task waits for the next
#: DATA): the first is the one that holds the request back.
_ORDER: Final = tuple(Wait)
_INDEX: Final = {wait: i for i, wait in enumerate(_ORDER)}
#: What a request that waits on nothing is doing.
RUNNING: Final = "running"


class Activity:
    """One request's live state, as the live view shows it.

    Attributes:
        command: The request's command name (``"WRITE"``).
        path: The path it works on, if any (RENAME: its source).
        started: When it began, on :func:`time.monotonic`'s clock.
        moved: Content bytes moved so far (DATA received and stored, or DATA sent).
    """

    __slots__ = ("_waits", "command", "moved", "path", "started")

    def __init__(self, command: str, path: str | None = None) -> None:
        self.command = command
        self.path = path
        self.started = time.monotonic()
        self.moved = 0
        # How many waits of each kind are under way now (several tasks of one request may
        # wait at once: an upload's pieces in worker threads), indexed as _ORDER.
        self._waits = [0] * len(_ORDER)

    @property
    def waiting_on(self) -> str:
        """What the request waits on now (a :class:`Wait` value), or ``"running"``."""
        waits = self._waits
        for i, count in enumerate(waits):
            if count:
                return _ORDER[i].value
        return RUNNING

    def enter(self, wait: Wait) -> None:
        """Count one wait of ``wait`` as begun (pair with :meth:`leave`)."""
        self._waits[_INDEX[wait]] += 1

    def leave(self, wait: Wait) -> None:
        """Count one wait of ``wait`` as over."""
        self._waits[_INDEX[wait]] -= 1

    def waiting(self, wait: Wait) -> AbstractContextManager[None]:
        """Record ``wait`` for the duration of the block (whatever ends it)."""
        return _Waiting(self._waits, _INDEX[wait])


class _Waiting:
    """The context manager of :meth:`Activity.waiting`: a plain class, since a generator
    based one costs several times more per wait."""

    __slots__ = ("_i", "_waits")

    def __init__(self, waits: list[int], i: int) -> None:
        self._waits = waits
        self._i = i

    def __enter__(self) -> None:
        self._waits[self._i] += 1

    def __exit__(self, *exc_info: object) -> None:
        self._waits[self._i] -= 1


_current: ContextVar[Activity | None] = ContextVar("librorum_activity", default=None)


def current() -> Activity | None:
    """The activity of the request this task works for, if any."""
    return _current.get()


def bind(activity: Activity | None) -> Token[Activity | None]:
    """Make ``activity`` the current task's (and the tasks it starts from now on). A front
    door calls it at the start of a request's task, which ends with the request: nothing to
    undo (``contextvars`` can, with the token returned)."""
    return _current.set(activity)


#: What :func:`waiting` gives outside a request: nothing to record, nothing allocated.
_UNTRACKED: Final[AbstractContextManager[None]] = nullcontext()


def waiting(wait: Wait) -> AbstractContextManager[None]:
    """A context manager recording that the current request waits on ``wait`` while the
    block runs; outside a request it records nothing.

    Cancellation: none of its own; the wait it wraps ends as that wait does, and the record
    with it.
    """
    activity = _current.get()
    if activity is None:
        return _UNTRACKED
    return activity.waiting(wait)
