"""The per-request state machine (spec 6.1): the table itself, and the sessions obeying it."""

from __future__ import annotations

import pytest

from librorum.errors import LocalProtocolError, RemoteProtocolError
from librorum.protocol.constants import Command, Flags
from librorum.protocol.framing import encode_frame
from librorum.protocol.messages import FileRead, FileReadReply, FileStat, FileWrite
from librorum.protocol.stream import (
    TRANSITIONS,
    Stream,
    StreamInput,
    StreamState,
    next_state,
)

from .test_session import INFO, connected, pump

S = StreamState
I = StreamInput  # noqa: E741 - the table's own abbreviation


def walk(state: StreamState, *inputs: StreamInput) -> StreamState | None:
    """The state after ``inputs``, or ``None`` at the first one the table refuses."""
    current: StreamState | None = state
    for event in inputs:
        assert current is not None
        current = next_state(current, event)
        if current is None:
            return None
    return current


@pytest.mark.parametrize(
    ("inputs", "end"),
    [
        # unary: request+END, then the reply (spec 6.1, first row)
        ((I.REQUEST_END, I.FINAL_REPLY), S.CLOSED),
        # WRITE with DATA: open until DATA+END, then the reply
        ((I.WRITE_OPEN, I.DATA, I.DATA, I.DATA_END, I.FINAL_REPLY), S.CLOSED),
        # an early ERROR while the content still flows
        ((I.WRITE_OPEN, I.DATA, I.FINAL_REPLY), S.CLOSED),
        # READ: first reply, DATA|REPLY, the last one with END
        ((I.READ_REQUEST, I.FIRST_REPLY, I.REPLY_DATA, I.REPLY_DATA_END), S.CLOSED),
        # READ of length 0: one final reply
        ((I.READ_REQUEST, I.FINAL_REPLY), S.CLOSED),
        # READ ended by an ERROR after some data
        ((I.READ_REQUEST, I.FIRST_REPLY, I.REPLY_DATA, I.FINAL_REPLY), S.CLOSED),
        ((I.WRITE_OPEN,), S.OPEN),
        ((I.WRITE_OPEN, I.DATA_END), S.HALF_CLOSED),
        ((I.READ_REQUEST, I.FIRST_REPLY), S.STREAMING),
    ],
)
def test_the_spec_paths(inputs: tuple[StreamInput, ...], end: StreamState) -> None:
    assert walk(S.IDLE, *inputs) is end


@pytest.mark.parametrize(
    "inputs",
    [
        (I.REQUEST_END, I.DATA),  # DATA where none is expected
        (I.WRITE_OPEN, I.DATA_END, I.DATA),  # DATA after END
        (I.READ_REQUEST, I.REPLY_DATA),  # a READ's DATA before its first reply
        (I.READ_REQUEST, I.FIRST_REPLY, I.FIRST_REPLY),  # a second non-final reply
        (I.REQUEST_END, I.FIRST_REPLY),  # a non-final reply to anything but a READ
        (I.WRITE_OPEN, I.REPLY_DATA),  # server DATA on an upload
        (I.REQUEST_END, I.REQUEST_END),  # a request on a session in flight
    ],
)
def test_frames_that_do_not_fit_are_refused(inputs: tuple[StreamInput, ...]) -> None:
    assert walk(S.IDLE, *inputs) is None


def test_closed_and_idle_are_ends() -> None:
    assert not [key for key in TRANSITIONS if key[0] is S.CLOSED], "nothing leaves CLOSED"
    openers = {event for state, event in TRANSITIONS if state is S.IDLE}
    assert openers == {I.REQUEST_END, I.WRITE_OPEN, I.READ_REQUEST}
    live = {state for state in S if state not in (S.IDLE, S.CLOSED)}
    assert all(next_state(state, I.FINAL_REPLY) is S.CLOSED for state in live)


@pytest.mark.parametrize(
    ("command", "end", "state"),
    [
        (Command.STAT, True, S.HALF_CLOSED),
        (Command.WRITE, True, S.HALF_CLOSED),
        (Command.WRITE, False, S.OPEN),
        (Command.READ, True, S.READ_PENDING),
    ],
)
def test_a_request_opens_its_stream(command: Command, end: bool, state: StreamState) -> None:
    assert Stream.open(command, end=end).state is state
    assert Stream(command).state is S.HALF_CLOSED  # built from its command: awaits its reply


def test_the_sessions_track_each_request() -> None:
    client, server = connected()
    write = client.start_request(FileWrite("/w"), end=False)
    read = client.start_request(FileRead("/r"))
    stat = client.start_request(FileStat("/s"))
    pump(client, server)
    assert [client._streams[sid].state for sid in (write, read, stat)] == [
        S.OPEN,
        S.READ_PENDING,
        S.HALF_CLOSED,
    ]
    assert [server._streams[sid].state for sid in (write, read, stat)] == [
        S.OPEN,
        S.READ_PENDING,
        S.HALF_CLOSED,
    ]
    client.send_data(write, b"abc", end=True)
    server.reply(read, FileReadReply(INFO, 0, 3), end=False)
    server.send_data(read, b"xyz")
    pump(client, server)
    pump(server, client)
    assert client._streams[write].state is server._streams[write].state is S.HALF_CLOSED
    assert client._streams[read].state is server._streams[read].state is S.STREAMING


def test_the_client_sends_no_data_after_end() -> None:
    client, _server = connected()
    write = client.start_request(FileWrite("/w"), end=False)
    client.send_data(write, b"abc", end=True)
    # An empty DATA fits any window, so only the stream's state can refuse it; the server
    # would take it as DATA where none is expected and end the connection.
    with pytest.raises(LocalProtocolError, match="not a WRITE whose content is still open"):
        client.send_data(write, b"", end=True)
    stat = client.start_request(FileStat("/s"))
    with pytest.raises(LocalProtocolError, match="not a WRITE whose content is still open"):
        client.send_data(stat, b"")


def test_the_server_refuses_data_on_a_one_frame_request() -> None:
    client, server = connected()
    stat = client.start_request(FileStat("/s"))
    pump(client, server)
    server.receive_data(encode_frame(Command.DATA, b"x", session_id=stat, flags=Flags.END))
    (event,) = list(server.events())
    assert isinstance(getattr(event, "error", None), RemoteProtocolError)
    assert "which takes no more DATA" in str(event.error)  # type: ignore[union-attr]
    assert server.closed
