"""Request content that streams, under credit both ways (spec 6): a READ's DATA out as the
client grants credit, a WRITE's DATA in as the server grants it from the upload budget.

Part of the connection driver, written against :class:`~librorum.server.requests.Driver`: a
handler in the command table calls :func:`send_content` or :func:`receive_content`, and the
connection does the reading and the writing. Every wait on the client is bounded by the stream
deadline (:func:`wait_on_client`); waits the server imposes (the upload budget) are not.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from librorum.activity import Wait
from librorum.errors import CancelledError, InternalError, TimeoutError_
from librorum.protocol.framing import FileRegion, Payload
from librorum.protocol.messages import FileReadReply
from librorum.server.requests import Driver, RequestState
from librorum.service import Reader

T = TypeVar("T")


async def receive_content(
    driver: Driver, state: RequestState, sink: Callable[[Payload], Awaitable[None]]
) -> None:
    """Hand a WRITE's DATA to ``sink`` piece by piece until the client's END.

    Credit is granted as the sink takes the data, from the global in-flight budget
    (see budget.py): the upload holds at most its share of it, and earns it gradually
    (each grant at most twice what the sink has taken), so an upload that sends
    nothing holds little more than its initial window.

    Cancellation: stops between pieces, or inside ``sink`` as the sink allows.

    Raises:
        TimeoutError_: the client, holding credit, sent no DATA for the stream deadline.
        CancelledError: the DATA ended without END (the connection is going away).
        LibrorumError: whatever ``sink`` raises.
    """
    data = state.data_out
    assert data is not None, "a request without DATA has no content to receive"
    budget = driver.context.budget
    while (piece := await _next_piece(driver, state, data)) is not None:
        await sink(piece)
        size = len(piece)
        state.reserved -= size
        state.consumed += size
        state.activity.moved += size
        budget.give(size)
    if not state.end_received:
        # The channel closed without END: the connection is going away.
        msg = "the upload ended without its last DATA frame"
        raise CancelledError(msg)


async def _next_piece(
    driver: Driver, state: RequestState, data: trio.MemoryReceiveChannel[Payload]
) -> Payload | None:
    """The upload's next DATA payload, or ``None`` after the last one. Grants credit
    first, as far as the upload's allowance and the budget go.

    Waiting for DATA the client has credit for is bounded by the stream deadline; waiting
    for budget to grant from is not (that wait is ours, and ends as other uploads move).

    Raises:
        TimeoutError_: the client sent nothing for the stream deadline.
    """
    sid = state.session_id
    while True:
        _grant_credit(driver, state)
        try:
            return data.receive_nowait()
        except trio.WouldBlock:
            pass
        except trio.EndOfChannel:
            return None
        if state.end_received or driver.session.receive_window(sid):
            return await _wait_for_data(driver, data, state)
        # The client has no credit left and the budget none to give: wait for either
        # room in the budget or (an empty DATA with END needs no credit) the client.
        budget = driver.context.budget
        state.wake = budget.waiter()
        try:
            with state.activity.waiting(Wait.BUDGET):
                await state.wake.wait()
        finally:
            budget.forget(state.wake)
            state.wake = None


def _grant_credit(driver: Driver, state: RequestState) -> None:
    """Grant an upload more credit, in batches: up to its allowance (the initial window
    plus twice what the store has taken, at most its share of the budget), from the
    budget."""
    if state.end_received:
        return
    sid = state.session_id
    budget = driver.context.budget
    allowance = min(budget.share(), driver.context.limits.initial_window + 2 * state.consumed)
    room = allowance - state.reserved
    # Each grant is a frame: wait until a quarter of the allowance is due, unless the
    # client has no credit at all and would stall.
    if room <= 0 or (room < allowance // 4 and driver.session.receive_window(sid)):
        return
    granted = budget.take(room)
    if granted:
        state.reserved += granted
        driver.session.grant(sid, granted)
        driver.wake_writer()


async def _wait_for_data(
    driver: Driver, data: trio.MemoryReceiveChannel[Payload], state: RequestState
) -> Payload | None:
    async def receive() -> Payload | None:
        try:
            return await data.receive()
        except trio.EndOfChannel:
            return None

    return await wait_on_client(driver, state, "sent no DATA", receive)


async def wait_on_client(
    driver: Driver,
    state: RequestState,
    what: str,
    wait: Callable[[], Awaitable[T]],
    *,
    on: Wait = Wait.PEER,
) -> T:
    """Wait for the client's side of a stream, at most the stream deadline. The live view
    shows the request waiting ``on`` the peer (or its credit) meanwhile.

    Raises:
        TimeoutError_: the deadline passed (the request ends; the connection stays).
    """
    timeout = driver.context.timeouts.stream
    with trio.move_on_after(timeout):
        state.waiting_on_peer = True
        try:
            with state.activity.waiting(on):
                return await wait()
        finally:
            state.waiting_on_peer = False
    msg = f"the client {what} for {timeout:g} s: {state.command.name} aborted"
    raise TimeoutError_(msg)


async def send_content(
    driver: Driver, state: RequestState, reply: FileReadReply, reader: Reader
) -> None:
    """Send a READ's first reply, then the reader's range as DATA frames as the client
    grants credit: from the chunk files themselves (``os.sendfile``) where the transport
    sends files, else as views of the reader's buffers. Returns once no frame queued can
    still point into the reader, so the caller may close it.

    Cancellation: stops between frames; the frames queued are settled all the same.

    Raises:
        CorruptDataError, StoreIOError: from the reader, before any byte of that chunk.
        TimeoutError_: the client granted no credit, or read nothing, for the stream
            deadline.
        InternalError: the reader gave fewer bytes than the reply announced.
    """
    remaining = reply.length
    driver.session.reply(state.session_id, reply, end=remaining == 0)
    driver.wake_writer()
    try:
        if driver.file_transport is not None:
            remaining = await _send_segments(driver, state, reader, remaining)
        else:
            remaining = await _send_pieces(driver, state, reader, remaining)
    finally:
        # The DATA frames queued point into the reader (its descriptors or buffers),
        # which closing it releases for reuse: none may be written after that.
        await driver.settle_output()
    if remaining:
        msg = f"{remaining} bytes of the file went missing while reading"
        raise InternalError(msg)


async def _send_segments(
    driver: Driver, state: RequestState, reader: Reader, remaining: int
) -> int:
    """Queue the range as DATA frames whose payloads are regions of the verified chunk
    files (the transport sends them with ``os.sendfile``); return the bytes not sent.

    Cancellation: frames already queued stay queued; the caller settles them before the
    reader closes the descriptors they name.

    Raises:
        CorruptDataError, StoreIOError: from the reader, before any byte of that chunk.
        TimeoutError_: the client granted no credit, or read nothing, for the stream
            deadline.
    """
    session = driver.session
    sid = state.session_id
    async for segment in reader.segments():
        position = segment.offset
        end = segment.offset + segment.length
        while position < end:
            allowed = min(session.send_window(sid), session.max_payload, end - position)
            if allowed == 0:
                driver.wake_writer()
                await wait_on_client(
                    driver, state, "granted no credit", state.window.park, on=Wait.PEER_CREDIT
                )
                continue
            remaining -= allowed
            state.activity.moved += allowed
            region = FileRegion(segment.fd, position, allowed)
            session.send_data(sid, region, end=remaining == 0)
            position += allowed
        # All of the segment's frames are queued at once, and the writer sends them in one
        # batch: they hold no memory (each names a region of the chunk file), and there are
        # at most a chunk's length over the smallest max_payload of them (64 for 4 MiB
        # chunks). The frames name this segment's descriptor, which the next step closes.
        # The reader has verified the next chunks meanwhile, and the socket buffer keeps the
        # client busy while this task advances.
        driver.wake_writer()
        await wait_on_client(driver, state, "read nothing", driver.wait_until_sent)
    return remaining


async def _send_pieces(driver: Driver, state: RequestState, reader: Reader, remaining: int) -> int:
    """Queue the range as DATA frames that are views of the reader's buffers (for
    transports that cannot send from a file); return the bytes not sent.

    Cancellation: as :meth:`_send_segments`.

    Raises:
        CorruptDataError, StoreIOError: from the reader, before any byte of that chunk.
        TimeoutError_: as :meth:`_send_segments`.
    """
    session = driver.session
    sid = state.session_id
    async for piece in reader:
        view = memoryview(piece)
        while view:
            allowed = min(session.send_window(sid), session.max_payload)
            if allowed == 0:
                await wait_on_client(
                    driver, state, "granted no credit", state.window.park, on=Wait.PEER_CREDIT
                )
                continue
            chunk, view = view[:allowed], view[allowed:]
            remaining -= len(chunk)
            state.activity.moved += len(chunk)
            session.send_data(sid, chunk, end=remaining == 0)
            driver.wake_writer()
            await wait_on_client(driver, state, "read nothing", driver.wait_for_writer)
        # The frames just queued are views of the reader's buffer, which the next
        # step reuses: they must be on the wire before the loop advances.
        await wait_on_client(driver, state, "read nothing", driver.wait_until_sent)
    return remaining
