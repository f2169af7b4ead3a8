"""The connection fuzz target (fuzz/fuzz_connection.py; reliability campaign #18) in the test suite:
every seed input, and every regression input kept under fuzz/corpus/connection/, replayed
through a real server connection with the target's invariants; and the known bug the target
found, as an expected failure that turns into a pass when the daemon is fixed."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parents[2] / "fuzz"
sys.path.insert(0, str(FUZZ))
import fuzz_connection  # noqa: E402 - found through the path above, as fuzz/run.py does


@pytest.fixture(scope="module", autouse=True)
def _workspace() -> Iterator[None]:
    yield
    fuzz_connection.close_workspace()


def test_the_seed_corpus_replays_cleanly() -> None:
    inputs = dict(fuzz_connection.named_seeds())
    corpus = FUZZ / "corpus" / "connection"
    inputs |= {p.name: p.read_bytes() for p in corpus.iterdir() if p.name != ".keep"}
    failures = []
    for name, data in inputs.items():
        try:
            fuzz_connection.test_one_input(data)
        except Exception as exc:  # every failure, not just the first
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
    assert not failures, "\n".join(failures)
    assert fuzz_connection.STATS["executions"] >= len(inputs)
    assert fuzz_connection.STATS["max_output_buffered"] <= fuzz_connection.OUTPUT_BOUND


def test_a_download_does_not_spin_while_the_reader_is_stuck_sending(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found by the fuzz target (fixed since). A client with a small READ window grants more window and
    reads its replies slowly. The connection's reader answers a request and sends the queued
    frames itself (``_flush``), taking the download's DATA frames into its batch; the send
    blocks on the slow peer. The download, in ``_wait_until_sent``, sees a send under way
    and rings the writer; the writer finds nothing queued and unparks the download at once;
    the download sees the send still under way and rings again: a busy loop through the
    scheduler for as long as the peer does not read (in mock time the clock can never move
    again). Over a real Unix socket, a client downloading with 256 KiB grants, pipelining
    40 PINGs per grant and reading 4 KiB every 10 ms, drives the daemon to ~100 % of a core
    with ~47,000 writer wake-ups per second and no send completed."""
    data = fuzz_connection.named_seeds()["windowed-read-slow-peer"]
    # Whether the reader or the writer takes the download's frames depends on the order in
    # which Trio runs tasks made runnable together: about 4 orders in 10 livelock.
    for seed in range(16):
        monkeypatch.setattr(fuzz_connection, "SCHEDULER_SEED", seed)
        fuzz_connection.test_one_input(data)
