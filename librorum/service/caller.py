"""Who is asking: what the service core knows of a request's sender, and the one rule that
separates administrators' commands (logs, fsck, the live view of requests, stop) from
everyone else's.

A front door turns what its transport proved about the peer into a :class:`Caller`; the
service core decides with :meth:`Admins.check`. The rule (spec 2.5): over a Unix socket the
peer's uid (from ``SO_PEERCRED``, the kernel's word) must be on the admin list, which by
default holds only the daemon's own uid; over WebSocket the peer must have presented the
token (a WebSocket listener without a token has no administrators).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import attrs

from librorum.errors import ForbiddenError


@attrs.frozen
class Caller:
    """A request's sender.

    Attributes:
        uid: The peer's uid, from the kernel (Unix sockets); None on WebSocket.
        token: Whether the peer presented the daemon's token (WebSocket).
    """

    uid: int | None = None
    token: bool = False


#: A caller trusted with everything: the daemon's own code and in-process front doors.
INTERNAL = Caller(uid=os.getuid(), token=True)


class Admins:
    """Who may run administrators' commands.

    Args:
        uids: The uids allowed over a Unix socket (default: the daemon's own).
    """

    def __init__(self, uids: Iterable[int] | None = None) -> None:
        self.uids = frozenset((os.getuid(),) if uids is None else uids)

    def allows(self, caller: Caller) -> bool:
        """Whether ``caller`` is an administrator."""
        return caller.token or (caller.uid is not None and caller.uid in self.uids)

    def check(self, caller: Caller, what: str) -> None:
        """Raise unless ``caller`` is an administrator.

        Raises:
            ForbiddenError: ``caller`` is not one; the message names ``what`` was refused.
        """
        if not self.allows(caller):
            who = f"uid {caller.uid}" if caller.uid is not None else "a caller without the token"
            msg = f"{what} is for administrators; {who} is not one"
            raise ForbiddenError(msg)
