"""Micro-benchmark of the sans-I/O protocol core: header pack/unpack, frame decoding of small
and 1 MiB frames, frame encoding and message (de)serialisation.

    python -m bench.protocol [--quick] [--json PATH]

Each case is warmed up, then the cases run interleaved for several rounds (the machine is
noisy); the table shows the median and the spread (min..max) over the rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from librorum.protocol.constants import Command, Flags
from librorum.protocol.converter import decode_payload, encode_message
from librorum.protocol.framing import Frame, FrameDecoder, encode_frame, encode_frames
from librorum.protocol.header import HEADER, Header, check_header, pack_header
from librorum.protocol.messages import FileStat

LIMITS = {"expected_version": 1, "max_payload": 1 << 20, "max_control_payload": 64 << 10}
MIB = 1 << 20


def case_header_pack(n: int) -> tuple[int, int]:
    pack = pack_header
    for i in range(n):
        pack(Command.STAT, 1, 24, i)
    return n, 0


def case_header_unpack(n: int) -> tuple[int, int]:
    data = Header(Command.STAT, Flags.END, 24, 7).pack()
    unpack = Header.unpack
    for _ in range(n):
        unpack(data)
    return n, 0


def case_header_decoder_path(n: int) -> tuple[int, int]:
    # What FrameDecoder does per frame: struct unpack plus the ordered checks, no object.
    data = Header(Command.STAT, Flags.END, 24, 7).pack()
    unpack = HEADER.unpack_from
    for _ in range(n):
        magic, version, command, flags, size, _session = unpack(data)
        check_header(
            magic,
            version,
            command,
            flags,
            size,
            expected_version=1,
            max_payload=1 << 20,
            max_control_payload=64 << 10,
        )
    return n, 0


def case_struct_only(n: int) -> tuple[int, int]:
    # The floor: the struct call alone, without validation or object construction.
    data = HEADER.pack(b"LBRU", 1, 5, 1, 24, 7)
    unpack = HEADER.unpack_from
    for _ in range(n):
        unpack(data)
    return n, 0


_SMALL = encode_frame(Command.STAT, encode_message(FileStat("/docs/report.txt")), flags=Flags.END)


def case_decode_small(n: int) -> tuple[int, int]:
    # Frames arrive as 64 KiB socket reads holding many frames each.
    per_read = (64 << 10) // len(_SMALL)
    chunk = _SMALL * per_read
    decoder = FrameDecoder(**LIMITS)
    frames = 0
    for _ in range(max(n // per_read, 1)):
        decoder.receive_data(chunk)
        for _frame in decoder:
            frames += 1
    return frames, frames * len(_SMALL)


_BIG_PAYLOAD = bytes(MIB)
_BIG = encode_frame(Command.DATA, _BIG_PAYLOAD, session_id=3)


def case_decode_1mib(n: int) -> tuple[int, int]:
    # 1 MiB reads, as the transport does them; frames straddle reads.
    stream = _BIG * 4
    decoder = FrameDecoder(**LIMITS)
    frames = 0
    view = memoryview(stream)
    for _ in range(max(n // 4, 1)):
        for start in range(0, len(stream), MIB):
            decoder.receive_data(view[start : start + MIB])
            for _frame in decoder:
                frames += 1
    return frames, frames * len(_BIG)


def case_encode_small_batch(n: int) -> tuple[int, int]:
    batch = [Frame(Command.STAT, Flags.END, i, _SMALL[20:]) for i in range(256)]
    total = 0
    for _ in range(max(n // 256, 1)):
        total += len(encode_frames(batch))
    return max(n // 256, 1) * 256, total


def case_message_round_trip(n: int) -> tuple[int, int]:
    message = FileStat("/docs/report.txt")
    for _ in range(n):
        decode_payload(encode_message(message), FileStat)
    return n, 0


CASES: dict[str, tuple[Callable[[int], tuple[int, int]], int, str]] = {
    "header pack": (case_header_pack, 200_000, "ops/s"),
    "Header.unpack (object)": (case_header_unpack, 200_000, "ops/s"),
    "header unpack+check": (case_header_decoder_path, 200_000, "ops/s"),
    "struct unpack only": (case_struct_only, 200_000, "ops/s"),
    "decode small frames": (case_decode_small, 200_000, "frames/s"),
    "decode 1 MiB frames": (case_decode_1mib, 64, "GB/s"),
    "encode 256-frame batch": (case_encode_small_batch, 200_000, "frames/s"),
    "FileStat encode+decode": (case_message_round_trip, 50_000, "ops/s"),
}


def run(rounds: int, scale: float) -> dict[str, dict[str, float | str]]:
    samples: dict[str, list[float]] = {name: [] for name in CASES}
    for fn, n, _unit in CASES.values():  # warm-up
        fn(max(int(n * scale / 10), 1))
    for _ in range(rounds):
        for name, (fn, n, unit) in CASES.items():
            count = max(int(n * scale), 1)
            t0 = time.perf_counter()
            items, nbytes = fn(count)
            dt = time.perf_counter() - t0
            samples[name].append(nbytes / dt / 1e9 if unit == "GB/s" else items / dt)
    return {
        name: {
            "unit": CASES[name][2],
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
        }
        for name, values in samples.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, smaller sizes")
    parser.add_argument("--json", type=Path, default=Path("bench/results/protocol.json"))
    args = parser.parse_args()
    results = run(rounds=3 if args.quick else 7, scale=0.2 if args.quick else 1.0)
    print(f"{'case':26s} {'median':>14s} {'spread (min..max)':>26s}")
    for name, r in results.items():
        fmt = "{:,.2f}" if r["unit"] == "GB/s" else "{:,.0f}"
        spread = f"{fmt.format(r['min'])}..{fmt.format(r['max'])}"
        print(f"{name:26s} {fmt.format(r['median']):>14s} {spread:>20s} {r['unit']}")
    ns = 1e9 / float(results["header unpack+check"]["median"])
    print(f"header unpack+check: {ns:.0f} ns per header")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
