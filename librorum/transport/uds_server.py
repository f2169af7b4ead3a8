"""LBRU over a Unix domain socket, the listener: :func:`serve_uds`, which admits each
connection by its peer's uid and hands it on as a
:class:`~librorum.transport.uds.UdsTransport`."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import stat
import time
from collections.abc import Collection
from functools import partial
from pathlib import Path
from typing import Final, NoReturn

import attrs
import trio

from librorum.config import ConfigError
from librorum.errors import (
    ErrorCode,
)
from librorum.limits import (
    CLOSE_GRACE,
    FD_RESERVE,
    LISTEN_BACKLOG,
    MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_UID,
    UDS_SOCKET_BUFFER,
)
from librorum.transport._throttle import LogLimiter
from librorum.transport.base import (
    AlreadyRunningError,
    Handler,
    PeerInfo,
    Reclaim,
    connection_guard,
    fd_headroom,
    logger,
    refusal_frame,
    run_handler,
)
from librorum.transport.files import ensure_private_dir, exclusive_lock
from librorum.transport.uds import (
    UdsTransport,
    check_socket_path,
    peer_credentials,
    set_buffers,
)

#: Bytes read and discarded from a refused peer before closing (see _refuse).
_REFUSAL_DRAIN: Final = 64 << 10


@attrs.define
class _Admission:
    """The listener's bookkeeping: who is allowed, how many are connected."""

    allowed_uids: frozenset[int]
    max_connections: int
    max_per_uid: int
    fd_reserve: int
    reclaim: Reclaim | None = None
    total: int = 0
    per_uid: dict[int, int] = attrs.Factory(dict)

    def admit(self, uid: int, fd: int) -> tuple[ErrorCode, str] | None:
        """Count the connection in, or say why it is refused. No await in here: the check and
        the increment are one atomic step for trio.

        At a full cap, a stalled connection (of this uid for the per-uid cap, of anyone for
        the total) is closed to make room, so stalled connections cannot hold the cap
        against new clients; the newcomer is counted in at once, and the cap is exceeded
        only until that connection has closed (the close grace at most).
        """
        if uid not in self.allowed_uids:
            return ErrorCode.UNAUTHORIZED, f"uid {uid} is not allowed to use this daemon"
        if not fd_headroom(fd, self.fd_reserve):
            return ErrorCode.CONNECTION_LIMIT, "too many connections; try again later"
        if self.per_uid.get(uid, 0) >= self.max_per_uid:
            if not self._reclaim(uid):
                return (
                    ErrorCode.CONNECTION_LIMIT,
                    f"uid {uid} has {self.max_per_uid} connections open already",
                )
        elif self.total >= self.max_connections and not self._reclaim(None):
            return ErrorCode.CONNECTION_LIMIT, "too many connections; try again later"
        self.total += 1
        self.per_uid[uid] = self.per_uid.get(uid, 0) + 1
        return None

    def _reclaim(self, uid: int | None) -> bool:
        return self.reclaim is not None and self.reclaim("uds", uid)

    def release(self, uid: int) -> None:
        self.total -= 1
        left = self.per_uid[uid] - 1
        if left:
            self.per_uid[uid] = left
        else:
            del self.per_uid[uid]


async def serve_uds(
    handler: Handler,
    path: Path,
    *,
    allowed_uids: Collection[int],
    max_connections: int = MAX_CONNECTIONS,
    max_per_uid: int = MAX_CONNECTIONS_PER_UID,
    fd_reserve: int = FD_RESERVE,
    backlog: int = LISTEN_BACKLOG,
    socket_buffer: int = UDS_SOCKET_BUFFER,
    close_grace: float = CLOSE_GRACE,
    reclaim: Reclaim | None = None,
    handler_nursery: trio.Nursery | None = None,
    task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Listen on the Unix socket ``path`` and run ``handler`` for each accepted connection.

    Start it with ``await nursery.start(serve_uds, handler, path, allowed_uids=...)``; the
    start returns ``path`` once connections are being accepted.

    The directory of ``path`` is created 0700 if missing (an existing one must be ours and
    private). The socket is bound under a temporary name in that directory, made 0600 and
    verified, then renamed onto ``path``, so ``path`` is 0600 from the moment it exists (the
    process umask is never touched: it is shared with every thread). A socket file already at
    ``path`` is replaced (atomically) when it is stale (connect() is refused: its daemon
    died) and never when something answers on it.
    A lock file next to the socket (``PATH.lock``) keeps two starting daemons from both taking
    the stale path. The socket is unlinked on exit, unless another daemon replaced it since.

    Each connection's SO_PEERCRED uid must be in ``allowed_uids``; refused peers (not allowed,
    over ``max_connections`` in total or ``max_per_uid`` for their uid, or too close to the
    descriptor limit) get an LBRU ERROR frame (UNAUTHORIZED or CONNECTION_LIMIT) and are
    closed, unless ``reclaim`` makes room at a full cap by closing a stalled connection. A handler's exception ends only its connection (see
    :func:`~librorum.transport.base.run_handler`); when it returns the transport is closed.

    Args:
        handler: called with each accepted connection's :class:`UdsTransport`.
        path: the socket path; never the abstract namespace.
        allowed_uids: uids that may connect.
        max_connections, max_per_uid: connection caps.
        fd_reserve: descriptors to keep free for the rest of the daemon.
        backlog: listen(2) backlog.
        socket_buffer: SO_SNDBUF/SO_RCVBUF of each connection.
        close_grace: longest time spent telling a refused peer why.
        reclaim: called at a full cap with ("uds", uid) for the per-uid cap or ("uds", None)
            for the total; true when it closed a stalled connection to make room.
        handler_nursery: where handlers run (default: inside this task), so that a server can
            stop accepting and still let connections finish.
        task_status: see :meth:`trio.Nursery.start`.

    Cancellation: stops accepting, closes the listening socket and unlinks it; handlers in
    our own nursery are cancelled, handlers in ``handler_nursery`` are not.

    Raises:
        AlreadyRunningError: a daemon answers on ``path`` or holds its lock.
        ConfigError: the directory or the path is unsafe or unusable (see above).
    """
    name = check_socket_path(path)
    ensure_private_dir(path.parent)
    admission = _Admission(
        frozenset(allowed_uids), max_connections, max_per_uid, fd_reserve, reclaim
    )
    lock_path = path.with_name(path.name + ".lock")
    with exclusive_lock(lock_path, f"another daemon is serving {path}"):
        raw, identity = _bind(path, name, backlog)
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(raw))
        try:
            serve_one = partial(
                _serve_connection,
                handler=handler,
                admission=admission,
                socket_buffer=socket_buffer,
                close_grace=close_grace,
            )
            async with trio.open_nursery() as nursery:
                await nursery.start(
                    partial(
                        trio.serve_listeners,
                        serve_one,
                        [listener],
                        handler_nursery=handler_nursery,
                    )
                )
                logger.info("listening on %s", path)
                task_status.started(path)
                await trio.sleep_forever()
        finally:
            listener.socket.close()
            _unlink_if_ours(path, identity)


def _bind(path: Path, name: str, backlog: int) -> tuple[socket.socket, tuple[int, int]]:
    """Create, bind and listen, so that ``path`` is 0600 from the moment it exists; return
    the socket and the (st_dev, st_ino) of its file, so that on exit we unlink our socket and
    never a successor's.

    The socket is bound under a temporary name in the (verified 0700) directory, made 0600,
    checked, and then renamed onto ``path``: the final name appears atomically with its final
    mode, and a stale socket there is replaced atomically too. Changing the umask around
    bind() would do the first part, but the umask is process-wide: a worker thread creating a
    directory in that window would make it unusable (0600, no search bit).
    """
    try:
        existing = path.lstat()
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(existing.st_mode):
            msg = f"{path} exists and is not a socket; refusing to replace it"
            raise ConfigError(msg)
        if _is_live(name):
            msg = f"a daemon is already listening on {path}"
            raise AlreadyRunningError(msg)
        logger.info("replacing stale socket %s", path)
    temporary = path.with_name(f".{secrets.token_hex(4)}.tmp")
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        raw.bind(check_socket_path(temporary))
        try:
            os.chmod(temporary, 0o600)
            info = temporary.lstat()
            if (
                not stat.S_ISSOCK(info.st_mode)
                or info.st_uid != os.geteuid()
                or stat.S_IMODE(info.st_mode) != 0o600
            ):
                msg = (
                    f"socket {temporary} has mode {stat.S_IMODE(info.st_mode):04o}, owner "
                    f"{info.st_uid}; expected 0600 and uid {os.geteuid()}"
                )
                raise ConfigError(msg)
            # Listening before the rename: the path accepts connections as soon as it exists.
            raw.listen(backlog)
            os.rename(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
    except OSError as exc:
        raw.close()
        msg = f"cannot listen on {path}: {exc.strerror or exc}"
        raise ConfigError(msg) from exc
    except BaseException:
        raw.close()
        raise
    return raw, (info.st_dev, info.st_ino)


def _is_live(name: str) -> bool:
    """Whether something accepts connections on the socket file ``name``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        probe.connect(name)
    except (BlockingIOError, InterruptedError):
        return True  # EAGAIN: a listener whose backlog is full; it is alive
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError as exc:
        msg = f"cannot tell whether the socket {name} is in use: {exc.strerror or exc}"
        raise ConfigError(msg) from exc
    finally:
        probe.close()
    return True


def _unlink_if_ours(path: Path, identity: tuple[int, int]) -> None:
    try:
        info = path.lstat()
        if (info.st_dev, info.st_ino) == identity:
            path.unlink()
    except OSError as exc:
        logger.warning("could not remove socket %s: %s", path, exc)


async def _serve_connection(
    stream: trio.SocketStream,
    *,
    handler: Handler,
    admission: _Admission,
    socket_buffer: int,
    close_grace: float,
) -> None:
    sock = stream.socket
    try:
        pid, uid, gid = peer_credentials(sock)
        set_buffers(sock, socket_buffer)
    except OSError as exc:
        logger.debug("dropping a connection that vanished at accept: %s", exc)
        await trio.aclose_forcefully(stream)
        return
    refusal = admission.admit(uid, sock.fileno())
    if refusal is not None:
        code, message = refusal
        _log_refusal(uid, pid, message)
        with connection_guard(f"uds:uid={uid},pid={pid}"):
            await _refuse(stream, code, message, close_grace)
        return
    peer = PeerInfo("uds", uid=uid, gid=gid, pid=pid, authenticated=True)
    transport = UdsTransport(stream, peer, socket_buffer=None)
    try:
        with connection_guard(f"uds:uid={uid},pid={pid}"):
            await run_handler(handler, transport)
    finally:
        admission.release(uid)
        await transport.aclose()


#: Refused uids: one WARNING per uid and minute at most, counting the ones held back.
_REFUSALS: Final = LogLimiter()


def _log_refusal(uid: int, pid: int, message: str) -> None:
    # The process's monotonic clock, not trio's: the limiter outlives one trio.run (an
    # embedded daemon restarted in the same process), and each run's clock has its own origin.
    held_back = _REFUSALS.allow(f"uid {uid}", time.monotonic())
    if held_back is None:
        return
    more = f" (and {held_back} more like it since the last report)" if held_back else ""
    logger.warning("refusing local connection from uid %d pid %d: %s%s", uid, pid, message, more)


async def _refuse(stream: trio.SocketStream, code: ErrorCode, message: str, grace: float) -> None:
    """Tell a refused peer why (one ERROR frame, then EOF), then close."""
    with trio.move_on_after(grace):
        try:
            await stream.send_all(refusal_frame(code, message))
            await stream.send_eof()
            # Closing with unread bytes in our queue would make Linux report ECONNRESET to the
            # peer, possibly before it reads the frame; discard what it already sent.
            _drain_nowait(stream.socket.fileno(), _REFUSAL_DRAIN)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            logger.debug("refused peer went away first: %s", exc)
    await trio.aclose_forcefully(stream)


def _drain_nowait(fd: int, limit: int) -> None:
    # The socket is non-blocking (trio made it so): os.read returns what is queued, or raises
    # BlockingIOError when nothing is.
    drained = 0
    with contextlib.suppress(OSError):
        while drained < limit:
            chunk = os.read(fd, limit - drained)
            if not chunk:
                break
            drained += len(chunk)
