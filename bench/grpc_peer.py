"""The gRPC peer: a small grpcio service with Librorum's operations, for comparison.

    python -m bench.grpc_peer --uds PATH --port PORT --file FILE --root DIR    (the server)

No generated code: generic handlers with bytes in and out (no protoc step).

* ``/bench.Files/Upload`` (client-streamed): the client streams the content in 1 MiB
  messages; the server counts the bytes and drops them (it moves bytes only: no hashing, no
  disk writes), and answers the count (8 bytes);
* ``/bench.Files/Download`` (server-streamed): the request is a size (8 bytes); the server
  streams that many bytes of FILE (page-cached) in 1 MiB messages;
* ``/bench.Files/Stat`` (unary): the request is a path under ROOT; the server answers its
  ``os.stat`` figures packed with the path and a 32-byte hash field, about the size of
  Librorum's STAT reply.

Message-size limits are raised to 64 MiB on both ends; the server runs a thread pool of
``--workers`` (a sync grpcio server, the common deployment in Python).
"""

from __future__ import annotations

import argparse
import os
import signal
import struct
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any, Final

import grpc

from bench.common import PIECE

SERVICE: Final = "bench.Files"
UPLOAD: Final = f"/{SERVICE}/Upload"
DOWNLOAD: Final = f"/{SERVICE}/Download"
STAT: Final = f"/{SERVICE}/Stat"
MAX_MESSAGE: Final = 64 << 20
OPTIONS: Final = [
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
]
_SIZE: Final = struct.Struct("<Q")
_STAT: Final = struct.Struct("<QQQI")
_FAKE_HASH: Final = bytes(32)


# --- Server ----------------------------------------------------------------------------------------


class Files:
    def __init__(self, file: Path, root: Path) -> None:
        self.file = file
        self.root = root

    def upload(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        total = 0
        for message in requests:
            total += len(message)
        return _SIZE.pack(total)

    def download(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        (size,) = _SIZE.unpack(request)
        yield from _pieces(self.file, size)

    def stat(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        path = request.decode()
        st = os.stat(self.root / path.lstrip("/"))
        return _STAT.pack(st.st_size, st.st_mtime_ns, st.st_ino, st.st_mode) + _FAKE_HASH + request


def serve(uds: Path, port: int, file: Path, root: Path, workers: int) -> None:
    files = Files(file, root)
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Upload": grpc.stream_unary_rpc_method_handler(files.upload),
            "Download": grpc.unary_stream_rpc_method_handler(files.download),
            "Stat": grpc.unary_unary_rpc_method_handler(files.stat),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=OPTIONS)
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"unix://{uds}")
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=1).wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--uds", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--file", type=Path, required=True)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=128)
    args = parser.parse_args()
    serve(args.uds, args.port, args.file, args.root, args.workers)


# --- Client ----------------------------------------------------------------------------------------


def target(uds: Path | None = None, port: int | None = None) -> str:
    return f"unix://{uds}" if uds is not None else f"127.0.0.1:{port}"


def channel(address: str) -> grpc.Channel:
    ch = grpc.insecure_channel(address, options=OPTIONS)
    grpc.channel_ready_future(ch).result(timeout=30)
    return ch


def _pieces(path: Path, size: int) -> Iterator[bytes]:
    """``size`` bytes of ``path`` in messages of at most PIECE bytes, from the start again
    whenever the file ends."""
    with open(path, "rb", buffering=0) as file:
        while size > 0:
            piece = file.read(min(PIECE, size))
            if not piece:
                file.seek(0)
                continue
            size -= len(piece)
            yield piece


def upload(ch: grpc.Channel, path: Path, size: int) -> int:
    """Stream ``size`` bytes of ``path`` in 1 MiB messages; returns what the server counted."""

    call = ch.stream_unary(UPLOAD)
    reply: bytes = call(_pieces(path, size), timeout=600)
    (count,) = _SIZE.unpack(reply)
    return int(count)


def download(ch: grpc.Channel, size: int) -> int:
    call = ch.unary_stream(DOWNLOAD)
    total = 0
    for message in call(_SIZE.pack(size), timeout=600):
        total += len(message)
    return total


def stat_callable(ch: grpc.Channel) -> Any:
    """The unary Stat multicallable (call it with the path as bytes)."""
    return ch.unary_unary(STAT)


if __name__ == "__main__":
    main()
