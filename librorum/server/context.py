"""What every LBRU connection of one daemon shares, handed to each connection as one small
value (hypercorn's worker context) rather than the whole server: the service, the limits it
announces, its deadlines, its figures and the upload budget, and whether it is shutting down.
"""

from __future__ import annotations

import logging
from typing import Final

import attrs
import trio

from librorum import limits
from librorum.protocol.session import ServerLimits
from librorum.server.budget import InflightBudget
from librorum.server.logsetup import RefusalLog
from librorum.service import Service, Stats
from librorum.transport import LogLimiter
from librorum.transport.base import FrameTransport

_log = logging.getLogger("librorum.server")

#: A peer's closing lines at INFO: this many at once, then one per interval (seconds).
CLOSING_LINE_BURST: Final = 100
CLOSING_LINE_INTERVAL: Final = 1.0


@attrs.frozen
class Timeouts:
    """Server-side deadlines (spec 9; values from the config)."""

    handshake: float = limits.HANDSHAKE_TIMEOUT
    frame: float = limits.FRAME_TIMEOUT
    idle_uds: float = limits.IDLE_TIMEOUT_UDS
    idle_ws: float = limits.IDLE_TIMEOUT_WS
    close: float = limits.CLOSE_GRACE
    #: A request stream with no progress from the client for this long ends with TIMEOUT.
    stream: float = limits.STREAM_TIMEOUT
    #: Under a full connection cap, a connection waiting on its client this long gives way.
    reclaim: float = limits.RECLAIM_AFTER

    def idle(self, kind: str) -> float:
        return self.idle_uds if kind == "uds" else self.idle_ws


@attrs.define(eq=False)
class ServerContext:
    """The daemon as one of its connections sees it."""

    service: Service
    #: What HELLO replies offer.
    limits: ServerLimits
    timeouts: Timeouts
    #: The figures the connections keep (the service reports them).
    stats: Stats
    #: Upload bytes in flight, shared by every connection (spec 9.2).
    budget: InflightBudget
    #: Seconds requests in flight get to finish after GOAWAY.
    grace: float
    #: Set when the daemon starts to drain: requests that would run on forever (a
    #: LOG_STREAM following the log) end on it.
    stopping: trio.Event = attrs.field(factory=trio.Event)
    #: The connections' closing lines at INFO: 100 at once per peer (uid or address), then
    #: one a second, the rest at DEBUG, so that a peer opening connections in a loop cannot
    #: push the daemon's warnings and errors out of the log ring (spec 5.19).
    #: Refused administrators' commands: a WARNING per peer and minute at most. The
    #: daemon's own (not the module's): the trio clock it reads is this run's.
    refusals: RefusalLog = attrs.field(factory=lambda: RefusalLog(_log))
    closing_lines: LogLimiter = attrs.field(
        factory=lambda: LogLimiter(interval=CLOSING_LINE_INTERVAL, burst=CLOSING_LINE_BURST)
    )

    @property
    def shutting_down(self) -> bool:
        """Whether the daemon drains: a connection that opens meanwhile gets GOAWAY at once."""
        return self.stopping.is_set()

    @property
    def grace_ms(self) -> int:
        return int(self.grace * 1000)

    def features_for(self, transport: FrameTransport) -> int:
        """Feature bits a connection over ``transport`` can use (fd passing and memfds need a
        transport that carries files)."""
        return self.limits.features if transport.carries_files else 0
