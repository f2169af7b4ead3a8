"""What every fuzz target shares: instrumented imports, the atheris entry point, and the
replay and Hypothesis fallbacks used when atheris is not installed.

A target is a module with ``test_one_input(data: bytes) -> None`` that raises only on a bug.
Run it as ``python fuzz/fuzz_<name>.py [libFuzzer flags] [corpus dirs or files]``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

Target = Callable[[bytes], None]

try:  # atheris only builds for some platforms and Python versions
    import atheris
except ImportError:  # pragma: no cover - depends on the machine
    atheris = None

#: libFuzzer's input cap for our targets: larger than any control frame, small enough that a
#: byte-by-byte feed stays fast.
MAX_LEN = 65536


def have_atheris() -> bool:
    return atheris is not None and os.environ.get("LIBRORUM_FUZZ_ENGINE") != "hypothesis"


@contextlib.contextmanager
def instrumented() -> Iterator[None]:
    """Import the code under test with coverage instrumentation when atheris is present."""
    if have_atheris():
        with atheris.instrument_imports(include=["librorum"]):
            yield
    else:
        yield


def fast_temp_dir() -> str | None:
    """Where a target that writes files (the connection target's stores) should put them: a
    RAM file system when the machine has one, else ``None`` (the usual temporary
    directory). Each of its executions opens a store and commits with fsync, which costs
    milliseconds on tmpfs and far more on a busy disk."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK) else None


def corpus_files(paths: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.is_file() and p.name != ".keep"))
        elif path.is_file():
            files.append(path)
    return files


def replay(test_one_input: Target, paths: Sequence[str]) -> int:
    """Run every input file once; returns how many ran. Raises what the target raises."""
    files = corpus_files(paths)
    for path in files:
        test_one_input(path.read_bytes())
    return len(files)


def hypothesis_fuzz(test_one_input: Target, seeds: Sequence[bytes], seconds: float) -> int:
    """Fuzz with Hypothesis-generated inputs (raw bytes, and seeds with bytes replaced,
    inserted, deleted and spliced) for ``seconds``; returns the number of executions."""
    from hypothesis import HealthCheck, given, settings, strategies as st

    @st.composite
    def mutated(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(st.sampled_from(seeds)) if seeds else b"")
        for _ in range(draw(st.integers(0, 8))):
            op = draw(st.integers(0, 3))
            at = draw(st.integers(0, len(data)))
            if op == 0 and data:
                data[min(at, len(data) - 1)] = draw(st.integers(0, 255))
            elif op == 1:
                data[at:at] = draw(st.binary(max_size=16))
            elif op == 2:
                del data[at : at + draw(st.integers(1, 16))]
            elif seeds:
                data[at:] = draw(st.sampled_from(seeds))
        return bytes(data[:MAX_LEN])

    @settings(
        database=None,
        deadline=None,
        max_examples=10**9,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.binary(max_size=4096) | mutated())
    def prop(data: bytes) -> None:
        test_one_input(data)

    runs = 0
    deadline = time.monotonic() + seconds
    rng = __import__("random").Random(0x4C425255)
    while time.monotonic() < deadline:
        prop.hypothesis.fuzz_one_input(rng.randbytes(rng.randrange(8, 2048)))
        runs += 1
    return runs


def main(test_one_input: Target, argv: list[str] | None = None) -> None:
    """Fuzz with atheris (libFuzzer flags and corpus directories in ``argv``); without
    atheris, replay the files and directories named in ``argv``."""
    argv = sys.argv if argv is None else argv
    if have_atheris():
        atheris.Setup(argv, test_one_input)
        atheris.Fuzz()
    else:
        ran = replay(test_one_input, [a for a in argv[1:] if not a.startswith("-")])
        print(f"replayed {ran} inputs without atheris: no failures")
