"""The LBRU command table covers the protocol: every request command has exactly one row.

Which commands open a request is the session's own answer (a frame of each command, with any
valid message, fed to a ``ServerSession``), not a list kept here: a request command added to
the protocol without a row fails this test.
"""

from __future__ import annotations

import collections

import pytest
from hypothesis import given, settings, strategies as st

from librorum.protocol.constants import Command, Flags
from librorum.protocol.converter import encode_message
from librorum.protocol.framing import encode_frame
from librorum.protocol.messages import COMMAND_OF, REQUEST_TYPES, Message
from librorum.protocol.session import ClientSession, RequestReceived, ServerSession
from librorum.server.commands import COMMANDS, ROWS, Cancellation, Streamed, Unary
from tests.protocol.strategies import record


def _open_server_session() -> ServerSession:
    client = ClientSession()
    client.hello()
    server = ServerSession()
    server.receive_data(b"".join(bytes(h) + bytes(p) for h, p in client.frames_to_send()))
    for event in server.events():
        server.accept_hello(event.hello)  # type: ignore[union-attr]
    server.frames_to_send()
    return server


def _opens_a_request(command: Command, message: Message) -> bool:
    session = _open_server_session()
    frame = encode_frame(command, encode_message(message), session_id=1, flags=int(Flags.END))
    session.receive_data(frame)
    return any(isinstance(event, RequestReceived) for event in session.events())


@pytest.mark.parametrize("command", sorted(REQUEST_TYPES), ids=lambda c: c.name)
@settings(max_examples=10)
@given(data=st.data())
def test_a_command_has_a_row_exactly_when_it_opens_a_request(
    command: Command, data: st.DataObject
) -> None:
    cls = REQUEST_TYPES[command]
    message: Message = data.draw(record(cls))  # type: ignore[assignment]
    assert _opens_a_request(command, message) == (cls in COMMANDS)


def test_every_row_is_a_request_message_with_one_row() -> None:
    counts = collections.Counter(row.message for row in ROWS)
    assert all(count == 1 for count in counts.values()), counts
    assert set(COMMANDS) == set(counts)
    for cls in COMMANDS:
        command, is_reply = COMMAND_OF[cls]
        assert not is_reply
        assert REQUEST_TYPES[command] is cls


def test_only_unary_requests_are_answered_inline() -> None:
    for row in ROWS:
        if isinstance(row, Streamed):
            assert row.inline is False
            assert row.cancellation is Cancellation.STREAM
        else:
            assert isinstance(row, Unary)
            assert row.cancellation is not Cancellation.STREAM
            assert not row.receives_data
