"""The live view's primitive (librorum.activity): what a request waits on, recorded by the
layers it passes through, and nothing recorded outside a request."""

from __future__ import annotations

import threading
from pathlib import Path

import trio

from librorum import activity
from librorum.activity import RUNNING, Activity, Wait
from librorum.store import open_store


def test_an_activity_reports_its_first_wait_in_order() -> None:
    work = Activity("WRITE", "/x")
    assert work.waiting_on == RUNNING
    with work.waiting(Wait.DISK):
        assert work.waiting_on == "disk"
        with work.waiting(Wait.PEER):
            # The request's own wait on its peer holds it back, not its pieces on the disk.
            assert work.waiting_on == "peer"
        assert work.waiting_on == "disk"
    assert work.waiting_on == RUNNING


def test_overlapping_waits_of_one_kind_are_counted() -> None:
    """Two tasks of one request (an upload's pieces) wait on the disk at once: the wait is
    over when both are, whichever ends first."""
    work = Activity("WRITE")
    work.enter(Wait.DISK)
    work.enter(Wait.DISK)
    work.leave(Wait.DISK)
    assert work.waiting_on == "disk"
    work.leave(Wait.DISK)
    assert work.waiting_on == RUNNING


def test_a_wait_ends_with_its_block_whatever_ends_it() -> None:
    work = Activity("READ")
    try:
        with work.waiting(Wait.PEER_CREDIT):
            raise ValueError
    except ValueError:
        pass
    assert work.waiting_on == RUNNING


def test_outside_a_request_nothing_is_recorded() -> None:
    assert activity.current() is None
    first = activity.waiting(Wait.DISK)
    with first:
        pass
    assert activity.waiting(Wait.PATH_LOCK) is first  # one shared no-op, nothing allocated


async def test_the_store_records_its_worker_thread_calls_as_disk(tmp_path: Path) -> None:
    """A store call that waits in a worker thread shows "disk" on the request it runs for,
    and only for as long as it waits."""
    release = threading.Event()
    entered = trio.Event()
    work = Activity("STAT", "/")
    async with open_store(tmp_path / "store", min_free_space=0) as store:

        async def call() -> None:
            activity.bind(work)  # the task's own context: as a front door binds a request
            await store._engine.in_thread(in_thread)

        def in_thread() -> None:
            trio.from_thread.run_sync(entered.set)
            release.wait(10)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(call)
                await entered.wait()
                assert work.waiting_on == "disk"
                release.set()
        assert work.waiting_on == RUNNING
        assert activity.current() is None  # bound in the task only
