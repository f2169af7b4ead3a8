"""The service manager's readiness protocol (systemd's ``sd_notify``), without systemd.

When the daemon runs under a service manager with ``Type=notify``, the manager sets
``NOTIFY_SOCKET`` to a Unix datagram socket (a path, or an abstract name written with a
leading ``@``) and waits for ``READY=1`` before it considers the service started; with
``WatchdogSec=`` it also sets ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``) and restarts the
service when ``WATCHDOG=1`` stops coming. Each message is one datagram of ``KEY=VALUE`` lines.

Sending never blocks and never raises: a manager that went away, or whose queue is full, must
not stop the daemon (the message is dropped, with one WARNING).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

import trio

log = logging.getLogger("librorum.server")


class Notifier:
    """Messages to the service manager named by ``env`` (``os.environ``); does nothing when
    ``NOTIFY_SOCKET`` is unset or empty.

    Attributes:
        watchdog_interval: Seconds between two ``WATCHDOG=1`` (half of ``WATCHDOG_USEC``),
            or ``None`` when the manager watches nothing (or watches another process:
            ``WATCHDOG_PID`` names another pid).
    """

    def __init__(self, env: Mapping[str, str] = os.environ) -> None:
        name = env.get("NOTIFY_SOCKET", "")
        # An abstract socket's name starts with a NUL byte, written '@' in the variable.
        self._address: str | bytes | None = (
            None if not name else b"\0" + name[1:].encode() if name.startswith("@") else name
        )
        self._socket: socket.socket | None = None
        self._warned = False
        self.watchdog_interval: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        # WATCHDOG_PID names the process watched; a child that inherited it must stay quiet.
        ours = not pid or (pid.isdigit() and int(pid) == os.getpid())
        if self._address is not None and usec.isdigit() and int(usec) > 0 and ours:
            self.watchdog_interval = int(usec) / 2_000_000

    def notify(self, **fields: str) -> bool:
        """Send one message: ``notify(READY="1", STATUS="serving")``. A value is kept to its
        first line (the protocol is line-based).

        Returns:
            Whether the datagram was sent (False when disabled or when sending failed).
        """
        if self._address is None:
            return False
        message = "\n".join(
            f"{key}={value.splitlines()[0] if value else ''}" for key, value in fields.items()
        )
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
                self._socket.setblocking(False)
            self._socket.sendto(message.encode(), self._address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("cannot notify the service manager (NOTIFY_SOCKET): %s", exc)
            return False
        return True

    async def watchdog(self) -> None:
        """Send ``WATCHDOG=1`` every :attr:`watchdog_interval` until cancelled (returns at
        once when there is no watchdog).

        Cancellation: safe; the next keep-alive is simply not sent.
        """
        if self.watchdog_interval is None:
            return
        while True:
            self.notify(WATCHDOG="1")
            await trio.sleep(self.watchdog_interval)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
