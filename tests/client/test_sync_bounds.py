"""The blocking client's waits are bounded as a whole, not only per socket call."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from librorum.client import connect
from librorum.client._common import CLOSE_TIMEOUT
from librorum.errors import LibrorumError
from librorum.protocol.constants import Command, Flags
from librorum.protocol.converter import encode_message
from librorum.protocol.framing import encode_frame
from librorum.protocol.messages import WindowUpdate
from librorum.protocol.session import HelloReceived, ServerSession


def trickling_server(listener: socket.socket, stop: threading.Event) -> None:
    """Answer HELLO, stop reading (the client's next send fails), then send a harmless
    frame every 50 ms without ever closing, until told to stop."""
    conn, _ = listener.accept()
    with conn:
        session = ServerSession()
        while True:
            session.receive_data(conn.recv(65536))
            hello = [e for e in session.events() if isinstance(e, HelloReceived)]
            if hello:
                session.accept_hello(hello[0].hello)
                break
        for header, payload in session.frames_to_send():
            conn.sendall(header + bytes(payload))
        conn.shutdown(socket.SHUT_RD)
        window = encode_frame(
            Command.WINDOW, encode_message(WindowUpdate(1)), session_id=999, flags=Flags.REPLY
        )
        while not stop.wait(0.05):
            try:
                conn.sendall(window)
            except OSError:
                return


def test_a_failed_send_with_a_server_that_never_closes_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    stop = threading.Event()
    server = threading.Thread(target=trickling_server, args=(listener, stop), daemon=True)
    server.start()
    try:
        with connect(transport="local", socket_path=path, timeout=1) as client:
            started = time.monotonic()
            with pytest.raises(LibrorumError):
                client.write("/x", b"y" * (8 << 20))
            # Without the overall bound this never returns (the server trickles forever).
            assert time.monotonic() - started < CLOSE_TIMEOUT + 2
    finally:
        stop.set()
        server.join(10)
        listener.close()
