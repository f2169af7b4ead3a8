"""The limit: the same bytes over a plain blocking socket, no protocol at all.

    python -m bench.raw_peer --uds PATH --port PORT --file FILE     (the server)

A thread per connection. The client's first 9 bytes choose what the connection does:

* ``U`` + size: the client sends ``size`` bytes (read from a cached file into one reused
  1 MiB buffer, then ``sendall``); the server receives them into one reused 1 MiB buffer
  and answers one byte;
* ``D`` + size: the server sends ``size`` bytes of FILE the same way; the client
  receives them into one reused 1 MiB buffer;
* ``E``: echo whatever arrives until the client closes (small-message round trips).
"""

from __future__ import annotations

import argparse
import socket
import struct
import threading
import time
from pathlib import Path
from typing import BinaryIO, Final

from bench.common import MIB, PIECE

_OP: Final = struct.Struct("<cQ")
#: SO_SNDBUF / SO_RCVBUF of Unix sockets, as the daemon sets them.
UDS_BUFFER: Final = 4 * MIB

Address = str | tuple[str, int]


def _configure(sock: socket.socket) -> None:
    if sock.family == socket.AF_UNIX:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UDS_BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDS_BUFFER)
    else:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _receive_exactly(sock: socket.socket, size: int, buf: memoryview) -> None:
    left = size
    while left:
        n = sock.recv_into(buf, min(left, len(buf)))
        if not n:
            msg = f"peer closed with {left} bytes missing"
            raise ConnectionError(msg)
        left -= n


def _send_file(sock: socket.socket, file: BinaryIO, size: int) -> None:
    """``size`` bytes of ``file`` from its start, read into one reused 1 MiB buffer and sent
    with ``sendall`` (here faster than ``sendfile`` on both Unix sockets and TCP)."""
    buf = memoryview(bytearray(PIECE))
    left = size
    while left:
        n = file.readinto(buf[: min(left, PIECE)])  # type: ignore[attr-defined]
        if not n:
            msg = f"the source file is shorter than {size} bytes"
            raise ValueError(msg)
        sock.sendall(buf[:n])
        left -= n


# --- Server ----------------------------------------------------------------------------------------


def _serve_connection(sock: socket.socket, path: Path) -> None:
    with sock:
        _configure(sock)
        head = bytearray(_OP.size)
        _receive_exactly(sock, _OP.size, memoryview(head))
        op, size = _OP.unpack(head)
        buf = memoryview(bytearray(PIECE))
        if op == b"U":
            _receive_exactly(sock, size, buf)
            sock.sendall(b"k")
        elif op == b"D":
            with open(path, "rb", buffering=0) as file:
                _send_file(sock, file, size)
        elif op == b"E":
            while n := sock.recv_into(buf, 64 * 1024):
                sock.sendall(buf[:n])


def _accept_loop(listener: socket.socket, path: Path) -> None:
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_guarded, args=(conn, path), daemon=True).start()


def _guarded(conn: socket.socket, path: Path) -> None:
    try:
        _serve_connection(conn, path)
    except OSError:
        pass  # the client went away


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--uds", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--file", type=Path, required=True)
    args = parser.parse_args()
    uds = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    uds.bind(str(args.uds))
    uds.listen(256)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("127.0.0.1", args.port))
    tcp.listen(256)
    for listener in (uds, tcp):
        threading.Thread(target=_accept_loop, args=(listener, args.file), daemon=True).start()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


# --- Client ----------------------------------------------------------------------------------------


def connect(address: Address) -> socket.socket:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    _configure(sock)
    sock.settimeout(60)
    sock.connect(address)
    return sock


def upload(address: Address, path: Path, size: int) -> None:
    """Send ``size`` bytes of ``path``; returns once the server has them all."""
    with connect(address) as sock, open(path, "rb", buffering=0) as file:
        sock.sendall(_OP.pack(b"U", size))
        _send_file(sock, file, size)
        if sock.recv(1) != b"k":
            msg = "no acknowledgement from the raw peer"
            raise ConnectionError(msg)


def download(address: Address, size: int) -> None:
    """Receive ``size`` bytes from the server's file into one reused buffer."""
    with connect(address) as sock:
        sock.sendall(_OP.pack(b"D", size))
        _receive_exactly(sock, size, memoryview(bytearray(PIECE)))


def ping_pong(address: Address, message_size: int, duration: float) -> tuple[int, float]:
    """Round trips of one ``message_size`` message at a time for about ``duration`` seconds;
    returns (round trips, seconds)."""
    return _echo(address, b"x" * message_size, 1, 100, duration)


def pipelined(
    address: Address, message_size: int, depth: int, duration: float
) -> tuple[int, float]:
    """Batches of ``depth`` messages sent in one write and echoed back, for about
    ``duration`` seconds; returns (messages, seconds)."""
    return _echo(address, b"x" * (message_size * depth), depth, 20, duration)


def _echo(
    address: Address, batch: bytes, messages: int, per_check: int, duration: float
) -> tuple[int, float]:
    """Send ``batch`` (``messages`` messages) and read its echo, again and again, checking
    the clock every ``per_check`` batches; returns (messages, seconds)."""
    buf = memoryview(bytearray(len(batch)))
    with connect(address) as sock:
        sock.sendall(_OP.pack(b"E", 0))
        count = 0
        start = time.perf_counter()
        deadline = start + duration
        while True:
            for _ in range(per_check):
                sock.sendall(batch)
                _receive_exactly(sock, len(batch), buf)
            count += per_check * messages
            now = time.perf_counter()
            if now >= deadline:
                return count, now - start


if __name__ == "__main__":
    main()
