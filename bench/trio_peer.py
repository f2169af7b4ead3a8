"""The event loop's own floor: an echo server written with Trio, as the daemon is.

    python -m bench.trio_peer --uds PATH     (the server)

It speaks the raw peer's echo mode (a 9-byte header ``E`` + 8 bytes, then whatever arrives is
sent back), so :func:`bench.raw_peer.ping_pong` and :func:`bench.raw_peer.pipelined` drive it.
Against the raw peer (a blocking thread per connection) it shows what a request costs in a
Trio program before any protocol runs: a round trip through Trio's run loop, its socket
wrappers and epoll. A Librorum request cannot cost less.
"""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

import trio

from bench.raw_peer import UDS_BUFFER

_HEADER = 9


async def _echo(stream: trio.SocketStream) -> None:
    sock = stream.socket
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UDS_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDS_BUFFER)
    head = b""
    while len(head) < _HEADER:
        data = await sock.recv(_HEADER - len(head))
        if not data:
            return
        head += data
    while data := await sock.recv(64 * 1024):
        view = memoryview(data)
        while view:
            view = view[await sock.send(view) :]


async def _serve(path: Path) -> None:
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await listener.bind(str(path))
    listener.listen(256)

    async def guarded(stream: trio.SocketStream) -> None:
        try:
            await _echo(stream)
        except (OSError, trio.BrokenResourceError):
            pass  # the client went away
        finally:
            await stream.aclose()

    await trio.serve_listeners(guarded, [trio.SocketListener(listener)])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--uds", type=Path, required=True)
    args = parser.parse_args()
    try:
        trio.run(_serve, args.uds)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
