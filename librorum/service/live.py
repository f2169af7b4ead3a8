"""The daemon-wide registry of requests in flight, and the snapshot the live view reads of it
(``librorum top``; LBRU REQUESTS, spec 5.21).

Front doors register each connection (:meth:`LiveRequests.open_connection`) and, in it, each
request that runs in a task of its own with its :class:`~librorum.activity.Activity`, which
the code the request runs through (the store's waits, the front door's credit waits) keeps up
to date. Requests answered without a task (STAT, PING, a small LIST page) finish before the
next frame is read and are never registered: they would only cost the hot path.

Everything here runs on the Trio thread: plain dictionaries, no lock, no await.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Iterator
from typing import Final

import attrs

from librorum.activity import Activity

#: What a snapshot lists at most (a front door may ask for fewer).
MAX_LISTED: Final = 1000


@attrs.frozen
class Peer:
    """Who is at the other end of a connection, as the live view shows it.

    Attributes:
        transport: ``"uds"`` or ``"websocket"``.
        uid, pid: The peer process's credentials (Unix socket).
        address: ``"ip:port"`` (WebSocket).
    """

    transport: str
    uid: int | None = None
    pid: int | None = None
    address: str | None = None


class LiveConnection:
    """One registered connection: its number, its peer, and its requests in flight by
    session id (the front door adds and removes them)."""

    __slots__ = ("id", "peer", "requests")

    def __init__(self, id: int, peer: Peer) -> None:  # noqa: A002 (the connection's number)
        self.id = id
        self.peer = peer
        self.requests: dict[int, Activity] = {}


@attrs.frozen
class LiveRequest:
    """One request in flight, in a snapshot.

    Attributes:
        connection: The number of its connection.
        peer: Who sent it.
        session: Its session id on that connection.
        command: The command's name.
        path: The path it works on, if any.
        age: Seconds since it arrived.
        moved: Content bytes moved so far.
        waiting: What it waits on now (a :class:`~librorum.activity.Wait` value, or
            ``"running"``).
    """

    connection: int
    peer: Peer
    session: int
    command: str
    path: str | None
    age: float
    moved: int
    waiting: str


@attrs.frozen
class LiveSnapshot:
    """What :meth:`LiveRequests.snapshot` returns.

    Attributes:
        total: Requests in flight in all.
        connections: Connections open.
        requests: The oldest of them (at most the limit asked for), oldest first.
    """

    total: int
    connections: int
    requests: tuple[LiveRequest, ...]


class LiveRequests:
    """The registry: every open connection of the daemon's front doors and the requests in
    flight on each. Bounded by them (the front doors bound connections and requests)."""

    def __init__(self) -> None:
        self._connections: dict[int, LiveConnection] = {}
        self._next_id = 1

    def open_connection(self, peer: Peer) -> LiveConnection:
        """Register a connection; :meth:`close_connection` when it ends."""
        connection = LiveConnection(self._next_id, peer)
        self._next_id += 1
        self._connections[connection.id] = connection
        return connection

    def close_connection(self, connection: LiveConnection) -> None:
        """Forget a connection and whatever it still listed."""
        self._connections.pop(connection.id, None)

    def _all(self) -> Iterator[tuple[LiveConnection, int, Activity]]:
        for connection in self._connections.values():
            for session, activity in connection.requests.items():
                yield connection, session, activity

    def snapshot(self, limit: int = MAX_LISTED) -> LiveSnapshot:
        """The requests in flight now: the ``limit`` oldest (at most :data:`MAX_LISTED`),
        oldest first, and how many there are in all. Costs O(n log limit) for n requests in
        flight, with no await: a consistent view of one instant.

        Raises:
            ValueError: ``limit`` < 1 (a caller bug).
        """
        if limit < 1:
            msg = f"limit must be at least 1, got {limit}"
            raise ValueError(msg)
        limit = min(limit, MAX_LISTED)
        total = sum(len(connection.requests) for connection in self._connections.values())
        oldest = heapq.nsmallest(limit, self._all(), key=lambda item: item[2].started)
        now = time.monotonic()
        listed = tuple(
            LiveRequest(
                connection=connection.id,
                peer=connection.peer,
                session=session,
                command=activity.command,
                path=activity.path,
                age=max(0.0, now - activity.started),
                moved=activity.moved,
                waiting=activity.waiting_on,
            )
            for connection, session, activity in oldest
        )
        return LiveSnapshot(total=total, connections=len(self._connections), requests=listed)
