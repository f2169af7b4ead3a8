"""The names of the benchmark's workloads and contenders: an item is found by its workload's
key and its label, by the tables, the chart and the targets. A module of its own, importing
nothing heavy, so that the target evaluation (:mod:`bench.targets`) and its tests need neither
grpcio nor a daemon."""

from __future__ import annotations

from typing import Final

#: Requests kept in flight on one connection by the pipelined workloads.
PIPELINE_DEPTH: Final = 100
#: The raw LBRU driver keeps the stream limit less one (what the async client may use).
RAW_PIPELINE_DEPTH: Final = 127

# Workload keys (also the names `--only` takes).
UPLOAD, DOWNLOAD, STAT, PIPELINED, CROWD, PARALLEL, RSS = (
    "upload",
    "download",
    "stat",
    "pipelined",
    "crowd",
    "parallel",
    "rss",
)

GRPC_UDS, GRPC_TCP = "gRPC, Unix socket", "gRPC, TCP loopback"
LIMIT_UDS, LIMIT_TCP = "limit: plain Unix socket", "limit: plain TCP loopback"
FILE_COPY, FILE_COPY_FSYNC = "limit: file copy (copy_file_range)", "limit: file copy + fsync"
STORE_PATTERN = "limit: the store's disk writes (4 MiB files, fsync, rename, dir fsync)"
LIB_UDS_TRIO, LIB_UDS_SYNC = "Librorum UDS, Trio client", "Librorum UDS, sync client"
LIB_FD = "Librorum UDS + fd passing, Trio client"
LIB_MEMFD = "Librorum UDS + sealed memfd, Trio client (content already in a memfd)"
LIB_WS_TRIO, LIB_WS_SYNC = "Librorum WebSocket, Trio client", "Librorum WebSocket, sync client"
LIB_RAW = "Librorum UDS, lean pipelined driver"
#: The command line, one process per transfer (its start-up is part of what a user waits for).
LIB_CLI_PUT = "Librorum CLI: librorum put FILE (UDS, fd passing)"
LIB_CLI_GET = "Librorum CLI: librorum get REMOTE FILE (UDS)"
#: What a user might run instead: rclone's WebDAV server over a local directory.
#: Its uploads are written in place and never fsynced: the labels say so where it matters.
RCLONE_CURL_PUT = "rclone serve webdav (no fsync), curl -T FILE (HTTP PUT)"
RCLONE_PY_PUT = "rclone serve webdav (no fsync), Python http.client PUT, 1 MiB blocks"
RCLONE_CURL_GET = "rclone serve webdav, curl -o /dev/null (HTTP GET)"
RCLONE_PY_GET = "rclone serve webdav, Python http.client GET, 1 MiB blocks"

PING_UDS = "limit: 128-byte ping-pong, Unix socket"
#: The same echo from a Trio server: what a round trip costs a Trio program (the daemon's
#: floor) before any protocol runs.
TRIO_PING_UDS = "limit: 128-byte ping-pong, Unix socket, Trio echo server"
PING_TCP = "limit: 128-byte ping-pong, TCP"

ECHO_BATCHES = "limit: echo of 128 x 128-byte batches, Unix socket"
TRIO_ECHO_BATCHES = "limit: echo of 128 x 128-byte batches, Unix socket, Trio echo server"
GRPC_PIPELINED = f"{GRPC_UDS}, {PIPELINE_DEPTH} futures"
LIB_TRIO_PIPELINED = f"{LIB_UDS_TRIO}, {PIPELINE_DEPTH} tasks"
LIB_RAW_PIPELINED = f"{LIB_RAW}, {RAW_PIPELINE_DEPTH} in flight"
LIB_WS_PIPELINED = f"{LIB_WS_TRIO}, {PIPELINE_DEPTH} tasks"

#: The 100-client workload runs each contender paced and in a closed loop.
PACED, CLOSED_LOOP = "paced", "closed loop"


def crowd_echo(how: str) -> str:
    return f"limit: raw echo, {how}"


def crowd_grpc(how: str) -> str:
    return f"{GRPC_UDS} (grpc.aio), {how}"


def crowd_uds(how: str) -> str:
    return f"{LIB_UDS_TRIO}s, {how}"


def crowd_ws(how: str) -> str:
    return f"{LIB_WS_TRIO}s, {how}"


RSS_MOVING = "Librorum daemon, fresh: uploads and downloads one after another, UDS Trio client"
RSS_CONCURRENT = "Librorum daemon, fresh: concurrent streamed uploads, one connection each"
RSS_LONG_RUNNING = "Librorum daemon of the workloads above, at the end"
RSS_GRPC = "gRPC peer of the workloads above, at the end"
