"""Pipelined STATs on one LBRU connection, driven from a lean blocking loop: what the daemon
can answer when the client costs almost nothing.

The handshake goes through the sans-I/O :class:`~librorum.protocol.session.ClientSession`;
after it, ``depth`` STAT request frames (one per session id) are encoded once and re-sent
as they complete: each reply is recognised by its header alone (no payload decoding), and the
frames of the requests that completed in one receive go out again in one write. The daemon
sees an ordinary client with ``depth`` requests always in flight.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Final

from librorum.protocol.constants import HEADER_SIZE, Command, Flags
from librorum.protocol.header import HEADER
from librorum.protocol.messages import FileStat
from librorum.protocol.session import ClientSession, HelloAccepted

_END: Final = int(Flags.END)
_STAT: Final = int(Command.STAT)
_ERROR: Final = int(Command.ERROR)
_RECEIVE: Final = 1 << 20


def _handshake(sock: socket.socket, session: ClientSession) -> None:
    session.hello(client="bench-raw")
    sock.sendall(b"".join(bytes(part) for frame in session.frames_to_send() for part in frame))
    while True:
        data = sock.recv(_RECEIVE)
        if not data:
            msg = "the daemon closed the connection during the handshake"
            raise ConnectionError(msg)
        session.receive_data(data)
        for event in session.events():
            if isinstance(event, HelloAccepted):
                return


def pipelined_stat(
    socket_path: Path, path: str, depth: int, duration: float
) -> tuple[int, float, int]:
    """STAT ``path`` with ``depth`` requests in flight for about ``duration`` seconds.

    Returns:
        (replies, seconds, error replies).
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.settimeout(30)
    with sock:
        sock.connect(str(socket_path))
        session = ClientSession()
        _handshake(sock, session)
        assert session.server is not None
        depth = min(depth, session.server.max_streams - 1)
        frames: dict[int, bytes] = {}
        for _ in range(depth):
            sid = session.start_request(FileStat(path))
            frames[sid] = b"".join(bytes(part) for part in session.frames_to_send()[0])
        unpack = HEADER.unpack_from
        buffer = bytearray()
        replies = errors = 0
        in_flight = depth
        start = time.perf_counter()
        deadline = start + duration
        sending = True
        sock.sendall(b"".join(frames.values()))
        while in_flight:
            data = sock.recv(_RECEIVE)
            if not data:
                msg = "the daemon closed the connection"
                raise ConnectionError(msg)
            buffer += data
            pos = 0
            end = len(buffer)
            again: list[bytes] = []
            while end - pos >= HEADER_SIZE:
                _magic, _version, command, flags, size, sid = unpack(buffer, pos)
                if end - pos < HEADER_SIZE + size:
                    break
                pos += HEADER_SIZE + size
                if not flags & _END:
                    continue
                if command == _ERROR:
                    errors += 1
                elif command != _STAT:
                    continue  # GOAWAY or another connection frame: not a reply
                replies += 1
                in_flight -= 1
                if sending:
                    again.append(frames[sid])
            del buffer[:pos]
            if sending and time.perf_counter() >= deadline:
                sending = False
                again = []
            if again:
                in_flight += len(again)
                sock.sendall(b"".join(again))
        return replies, time.perf_counter() - start, errors
