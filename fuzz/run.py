"""Run every fuzz target: replay the seed corpus (the golden vectors plus the committed
regression inputs in fuzz/corpus/<target>/), then fuzz each target for a bounded time.

    python fuzz/run.py --seconds 30            # what `make test` does
    python fuzz/run.py --seconds 1800          # `make fuzz`
    python fuzz/run.py --targets framing --seconds 60

With atheris installed, each target runs under libFuzzer in a subprocess; crashing inputs are
written to fuzz/artifacts/. Without atheris (or with LIBRORUM_FUZZ_ENGINE=hypothesis) the seeds
are replayed in-process and the fuzzing is Hypothesis-driven. Exits non-zero on any failure.

The connection target's figures (executions, rate, corpus, crashes, the most output a
connection held for its peer) go to figures.json as ``fuzz.connection`` (tests/figures.py).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VECTORS = ROOT / "protocol_spec" / "vectors"
TARGETS = ("header", "framing", "payload", "connection")

sys.path.insert(0, str(HERE))
import harness  # noqa: E402 - needs the path above


def seeds_for(target: str) -> list[bytes]:
    """Seed inputs for a target, derived from the golden vectors."""
    valid = json.loads((VECTORS / "frames.json").read_text())
    malformed = json.loads((VECTORS / "malformed.json").read_text())
    frames = [bytes.fromhex(v["hex"]) for v in valid]
    bad = [bytes.fromhex(v["hex"]) for v in malformed]
    if target == "header":
        # First byte 0x40: expected version 1, default limits (see fuzz_header.py).
        return [b"\x40" + f[:20] for f in frames + bad]
    if target == "framing":
        return [*frames, *bad, b"".join(frames)]
    if target == "connection":
        seeds: list[bytes] = importlib.import_module("fuzz_connection").seeds()
        return seeds
    types = importlib.import_module("fuzz_payload").TYPES
    index = {cls.__name__: i for i, cls in enumerate(types)}
    seeds = [
        bytes([index[v["message"]["type"]]]) + bytes.fromhex(v["hex"])[20:]
        for v in valid
        if "message" in v
    ]
    seeds += [
        bytes([i]) + bytes.fromhex(v["hex"])[20:]
        for i in range(len(types))
        for v in malformed
        if v.get("stage") == "payload"
    ]
    return seeds


def run_atheris(target: str, seed_dir: Path, seconds: int) -> tuple[int, int | None]:
    """Fuzz ``target`` under libFuzzer; returns the executions and the final corpus size."""
    work = seed_dir.parent / f"{target}-new"
    work.mkdir()
    artifacts = HERE / "artifacts"
    artifacts.mkdir(exist_ok=True)
    cmd = [
        sys.executable,
        str(HERE / f"fuzz_{target}.py"),
        f"-max_total_time={seconds}",
        f"-max_len={harness.MAX_LEN}",
        "-timeout=10",
        "-print_final_stats=1",
        f"-artifact_prefix={artifacts}/{target}-",
        str(work),
        str(seed_dir),
        str(HERE / "corpus" / target),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-6000:])
        msg = f"fuzz target {target} failed (exit {proc.returncode}); see {artifacts}"
        raise SystemExit(msg)
    found = re.search(r"stat::number_of_executed_units:\s*(\d+)", proc.stderr)
    corpus = re.findall(r"corp: (\d+)/", proc.stderr)
    return (int(found.group(1)) if found else 0), (int(corpus[-1]) if corpus else None)


def record_figure(name: str, values: dict[str, int | float | str | None]) -> None:
    """Merge one figure into figures.json, as the test suite does (tests/figures.py)."""
    sys.path.insert(0, str(ROOT))
    from tests.figures import FigureBook

    book = FigureBook()
    book.record(name, values)
    book.write()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=30, help="fuzzing time per target")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated targets")
    args = parser.parse_args()
    engine = "atheris" if harness.have_atheris() else "hypothesis"
    print(f"fuzzing with {engine}, {args.seconds} s per target")
    total = 0
    with (
        tempfile.TemporaryDirectory(prefix="lbru-fuzz-") as tmp,
        tempfile.TemporaryDirectory(
            prefix="lbru-fuzz-stores-", dir=harness.fast_temp_dir()
        ) as stores,
    ):
        # The connection target keeps its stores and its figures here (see fuzz_connection).
        os.environ["LIBRORUM_FUZZ_TMP"] = stores
        stats_file = Path(tmp) / "connection-stats.json"
        os.environ["LIBRORUM_FUZZ_STATS"] = str(stats_file)
        for target in args.targets.split(","):
            seeds = seeds_for(target)
            seed_dir = Path(tmp) / target
            seed_dir.mkdir()
            for i, seed in enumerate(seeds):
                (seed_dir / f"vector-{i:04d}").write_bytes(seed)
            started = time.monotonic()
            corpus: int | None = None
            if engine == "atheris":
                runs, corpus = run_atheris(target, seed_dir, args.seconds)
            else:
                module = importlib.import_module(f"fuzz_{target}")
                runs = harness.replay(
                    module.test_one_input, [str(seed_dir), str(HERE / "corpus" / target)]
                )
                runs += harness.hypothesis_fuzz(module.test_one_input, seeds, args.seconds)
            elapsed = time.monotonic() - started
            total += runs
            print(
                f"{target:10s} seeds {len(seeds):4d}  executions {runs:10d}  ({runs / elapsed:,.0f}/s)"
            )
            if target == "connection":
                stats = json.loads(stats_file.read_text()) if stats_file.exists() else {}
                committed = harness.corpus_files([str(HERE / "corpus" / target)])
                record_figure(
                    "fuzz.connection",
                    {
                        "engine": engine,
                        "seconds": round(elapsed, 1),
                        "execs": runs,
                        "exec_per_s": round(runs / elapsed, 1),
                        "corpus": corpus if corpus is not None else len(seeds) + len(committed),
                        "crashes": 0,
                        "max_output_buffered_bytes": stats.get("max_output_buffered", 0),
                        "output_bound_bytes": importlib.import_module(
                            "fuzz_connection"
                        ).OUTPUT_BOUND,
                    },
                )
    print(f"fuzz: {total} executions, 0 failures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
