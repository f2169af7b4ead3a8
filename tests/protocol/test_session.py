"""The connection state machines, driven against each other in memory (no I/O)."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from librorum.errors import (
    BadFlagsError,
    FlowControlError,
    LocalProtocolError,
    MalformedPayloadError,
    NotFoundError,
    RemoteProtocolError,
    SessionInUseError,
    UnavailableError,
    UnsupportedVersionError,
)
from librorum.protocol.constants import (
    MAX_TEXT_BYTES,
    Command,
    EntryKind,
    ErrorCode,
    Feature,
    Flags,
)
from librorum.protocol.converter import command_of, encode_message
from librorum.protocol.framing import encode_frame
from librorum.protocol.messages import (
    ErrorMessage,
    FileInfo,
    FileRead,
    FileReadReply,
    FileStat,
    FileStatReply,
    FileWrite,
    FileWriteReply,
    GoAway,
    Hello,
    HelloReply,
    Message,
    Ping,
    PingReply,
    WindowUpdate,
)
from librorum.protocol.session import (
    ClientSession,
    ConnectionEnded,
    DataReceived,
    ErrorReceived,
    Event,
    GoAwayReceived,
    HelloAccepted,
    HelloReceived,
    ReplyReceived,
    RequestReceived,
    ServerLimits,
    ServerSession,
    State,
    WindowGranted,
)

INFO = FileInfo("/f", EntryKind.FILE, 3, 0, 1)


def pump(src: ClientSession | ServerSession, dst: ClientSession | ServerSession) -> list[Event]:
    """Move src's queued frames into dst; return dst's events."""
    for header, payload in src.frames_to_send():
        dst.receive_data(header + bytes(payload))
    return list(dst.events())


def connected(
    limits: ServerLimits | None = None, **hello: int
) -> tuple[ClientSession, ServerSession]:
    client = ClientSession()
    server = ServerSession(limits or ServerLimits(), features=int(Feature.FD_PASSING))
    client.hello(**hello)
    [event] = pump(client, server)
    assert isinstance(event, HelloReceived)
    server.accept_hello(event.hello)
    [accepted] = pump(server, client)
    assert isinstance(accepted, HelloAccepted)
    assert client.state is server.state is State.OPEN
    return client, server


def test_handshake_negotiates_the_smaller_payload_and_common_features() -> None:
    client, server = connected(
        ServerLimits(max_payload=1 << 20, features=3), max_payload=256 << 10, features=1
    )
    assert client.max_payload == server.max_payload == 256 << 10
    assert client.features == server.features == Feature.FD_PASSING
    assert client.server is not None
    assert client.server.max_streams == 128


def test_no_common_version_is_a_connection_error() -> None:
    server = ServerSession()
    with pytest.raises(UnsupportedVersionError):
        server.accept_hello(Hello((7, 8), 1 << 20, 1 << 20))
    assert server.closed
    client = ClientSession()
    client.hello()
    client.frames_to_send()
    [ended] = pump(server, client)
    assert isinstance(ended, ConnectionEnded)
    assert isinstance(ended.error, UnsupportedVersionError)
    assert "speaks 1" in str(ended.error)


@pytest.mark.parametrize(
    "first",
    [
        encode_frame(Command.STAT, encode_message(FileStat("/")), session_id=1, flags=Flags.END),
        encode_frame(Command.HELLO, encode_message(Hello((1,), 1 << 20, 1)), session_id=5),
        encode_frame(Command.HELLO, b"\x80"),
        encode_frame(Command.HELLO, encode_message(Hello((1,), 1024, 1))),
    ],
    ids=["not-hello", "hello-on-a-session", "malformed-hello", "tiny-max-payload"],
)
def test_bad_first_frames_end_the_connection(first: bytes) -> None:
    server = ServerSession()
    server.receive_data(first)
    [event] = server.events()
    assert isinstance(event, ConnectionEnded)
    assert isinstance(event.error, RemoteProtocolError)
    assert server.closed
    [(header, _payload)] = server.frames_to_send()
    assert header[5] == Command.ERROR
    assert header[12:20] == bytes(8)


def test_multiplexed_requests_complete_out_of_order() -> None:
    client, server = connected()
    ids = [client.start_request(FileStat(f"/{i}")) for i in range(5)]
    assert len(set(ids)) == 5
    requests = pump(client, server)
    assert [e.session_id for e in requests if isinstance(e, RequestReceived)] == ids
    for session_id in reversed(ids):
        server.reply(session_id, FileStatReply(INFO))
    replies = pump(server, client)
    assert [e.session_id for e in replies if isinstance(e, ReplyReceived)] == list(reversed(ids))
    assert client.in_flight() == server.in_flight() == 0


def test_reusing_an_id_in_flight_is_a_connection_error() -> None:
    _client, server = connected()
    frame = encode_frame(Command.PING, encode_message(Ping()), session_id=9, flags=Flags.END)
    server.receive_data(frame + frame)
    events = list(server.events())
    assert isinstance(events[0], RequestReceived)
    assert isinstance(events[1], ConnectionEnded)
    assert isinstance(events[1].error, SessionInUseError)


def test_malformed_request_is_a_request_error_and_the_connection_survives() -> None:
    client, server = connected()
    server.receive_data(
        encode_frame(Command.STAT, b"\x81\xa4path\x01", session_id=4, flags=Flags.END)
    )
    assert list(server.events()) == []
    sid = client.start_request(FileStat("/a"))  # session id 1; the bad frame used 4
    client._streams[4] = client._streams[sid].__class__(Command.STAT)  # as if 4 were ours
    events = pump(server, client)
    assert isinstance(events[0], ErrorReceived)
    assert isinstance(events[0].exception, MalformedPayloadError)
    assert not server.closed


def test_stream_and_upload_caps_refuse_with_busy() -> None:
    client, server = connected(ServerLimits(max_streams=2, max_uploads=1))
    a = client.start_request(FileWrite("/a"), end=False)
    with pytest.raises(LocalProtocolError):  # the client knows the caps too
        client.start_request(FileWrite("/b"), end=False)
    events = pump(client, server)
    for session_id, message in ((10, FileWrite("/b")), (11, Ping()), (12, Ping())):
        server.receive_data(
            encode_frame(
                _cmd(message), encode_message(message), session_id=session_id, flags=Flags.END
            )
        )
    events += list(server.events())
    started = [e.session_id for e in events if isinstance(e, RequestReceived)]
    assert started == [a, 11]
    refusals = [f for f in server.frames_to_send() if f[0][5] == Command.ERROR]
    assert {int.from_bytes(h[12:20], "big") for h, _ in refusals} == {10, 12}


def _cmd(message: Message) -> Command:
    return command_of(message)[0]


def test_upload_flow_control_and_credit() -> None:
    client, server = connected(ServerLimits(initial_window=100))
    sid = client.start_request(FileWrite("/a", size=250), end=False)
    assert client.send_window(sid) == 100
    client.send_data(sid, b"x" * 100)
    with pytest.raises(LocalProtocolError):
        client.send_data(sid, b"x")
    events = pump(client, server)
    assert isinstance(events[0], RequestReceived)
    assert not events[0].end
    assert isinstance(events[1], DataReceived)
    assert len(events[1].data) == 100
    server.grant(sid, 150)
    [granted] = pump(server, client)
    assert granted == WindowGranted(sid, 150)
    client.send_data(sid, b"y" * 150, end=True)
    [data] = pump(client, server)
    assert isinstance(data, DataReceived)
    assert data.end
    server.reply(sid, FileWriteReply(INFO))
    [reply] = pump(server, client)
    assert isinstance(reply, ReplyReceived)
    assert reply.end


def test_overrunning_the_window_is_a_connection_error() -> None:
    client, server = connected(ServerLimits(initial_window=10))
    sid = client.start_request(FileWrite("/a"), end=False)
    pump(client, server)
    server.receive_data(encode_frame(Command.DATA, b"z" * 11, session_id=sid))
    [event] = server.events()
    assert isinstance(event, ConnectionEnded)
    assert isinstance(event.error, FlowControlError)


def test_early_error_discards_the_rest_of_the_upload() -> None:
    client, server = connected(ServerLimits(initial_window=10))
    sid = client.start_request(FileWrite("/nope/a"), end=False)
    pump(client, server)
    server.send_error(sid, NotFoundError("no /nope"))
    # Crossing in flight: the client still sends its window's worth before seeing the error.
    client.send_data(sid, b"a" * 10)
    assert pump(client, server) == []
    [event] = pump(server, client)
    assert isinstance(event, ErrorReceived)
    assert isinstance(event.exception, NotFoundError)
    client.send_data(sid, b"b" * 10)  # after the error: dropped locally
    assert client.frames_to_send() == []


def test_read_stream_with_client_credit() -> None:
    client, server = connected(initial_window=8)
    sid = client.start_request(FileRead("/f"))
    pump(client, server)
    with pytest.raises(LocalProtocolError):
        server.send_data(sid, b"early")  # DATA before the READ reply
    server.reply(sid, FileReadReply(INFO, 0, 12), end=False)
    assert server.send_window(sid) == 8
    server.send_data(sid, b"12345678")
    with pytest.raises(LocalProtocolError):
        server.send_data(sid, b"9")
    events = pump(server, client)
    assert isinstance(events[0], ReplyReceived)
    assert not events[0].end
    assert events[1] == DataReceived(sid, b"12345678", False)
    client.grant(sid, 8)
    assert pump(client, server) == [WindowGranted(sid, 8)]
    server.send_data(sid, b"9abc", end=True)
    assert pump(server, client) == [DataReceived(sid, b"9abc", True)]
    assert client.in_flight() == server.in_flight() == 0


def test_goaway_drains_then_closes() -> None:
    client, server = connected()
    sid = client.start_request(Ping())
    pump(client, server)
    server.goaway("restarting", 5000)
    assert server.state is State.DRAINING
    server.receive_data(
        encode_frame(Command.PING, encode_message(Ping()), session_id=77, flags=Flags.END)
    )
    assert list(server.events()) == []  # refused with UNAVAILABLE, not started
    events = pump(server, client)
    assert isinstance(events[0], GoAwayReceived)
    with pytest.raises(UnavailableError):
        client.start_request(Ping())
    server.reply(sid, PingReply())
    assert server.closed


@pytest.mark.parametrize(
    ("command", "message", "flags"),
    [
        (Command.STAT, FileStat("/a"), 0),  # a one-frame request without END
        (Command.READ, FileRead("/a"), 0),
        (Command.WINDOW, WindowUpdate(5), Flags.END),  # WINDOW never ends anything
    ],
)
def test_end_flag_rules(command: Command, message: Message, flags: int) -> None:
    _client, server = connected()
    server.receive_data(encode_frame(command, encode_message(message), session_id=3, flags=flags))
    [event] = server.events()
    assert isinstance(event, ConnectionEnded)
    assert isinstance(event.error, BadFlagsError)


def test_connection_errors_always_carry_a_connection_class_code() -> None:
    client, server = connected()
    # A malformed WINDOW payload is a request-class problem, but on no request: the
    # connection ends, and the ERROR on session 0 says PROTOCOL_ERROR (spec 7.1).
    server.receive_data(encode_frame(Command.WINDOW, b"\x80", session_id=3))
    [event] = server.events()
    assert isinstance(event, ConnectionEnded)
    [ended] = pump(server, client)
    assert isinstance(ended, ConnectionEnded)
    assert ended.error is not None
    assert ended.error.wire_code == ErrorCode.PROTOCOL_ERROR


def test_long_error_text_is_capped_in_utf8_bytes() -> None:
    client, server = connected()
    sid = client.start_request(Ping())
    pump(client, server)
    server.send_error(sid, NotFoundError("é" * 5000))
    [event] = pump(server, client)
    assert isinstance(event, ErrorReceived)
    assert len(str(event.exception).encode()) <= MAX_TEXT_BYTES


def test_client_rejects_a_reply_raising_max_payload() -> None:
    client = ClientSession()
    client.hello(max_payload=128 << 10)
    client.frames_to_send()
    reply = HelloReply(1, 1 << 20, 1, 1, 1, 1)
    client.receive_data(
        encode_frame(Command.HELLO, encode_message(reply), flags=Flags.REPLY | Flags.END)
    )
    [event] = client.events()
    assert isinstance(event, ConnectionEnded)


def test_fd_flag_only_with_negotiated_write() -> None:
    _client, server = connected(features=0)
    server.receive_data(
        encode_frame(
            Command.WRITE,
            encode_message(FileWrite("/a", size=1)),
            session_id=1,
            flags=Flags.FD | Flags.END,
        )
    )
    [event] = server.events()
    assert isinstance(event, ConnectionEnded)


@given(st.lists(st.tuples(st.integers(0, 20), st.booleans()), max_size=30))
def test_random_unary_traffic_keeps_both_tables_in_step(ops: list[tuple[int, bool]]) -> None:
    client, server = connected(ServerLimits(max_streams=8))
    pending: list[int] = []
    for value, answer in ops:
        if answer and pending:
            server.reply(pending.pop(value % len(pending)), PingReply())
        elif client.in_flight() < 8:
            client.start_request(Ping())
        for event in pump(client, server):
            assert isinstance(event, RequestReceived)
            pending.append(event.session_id)
        for event in pump(server, client):
            assert isinstance(event, ReplyReceived)
        assert client.in_flight() == server.in_flight() == len(pending)


def test_a_request_over_the_control_limit_is_refused_before_it_is_sent() -> None:
    """The server would end the whole connection (FRAME_TOO_LARGE, spec 3.1): the client
    session refuses that request alone, and the connection goes on."""
    client, server = connected()
    fits = FileStat("/" + "x" * (65536 - 20))
    assert len(encode_message(fits)) <= 65536
    too_long = FileStat("/" + "x" * 65536)
    with pytest.raises(LocalProtocolError, match="over the control frame limit of 65536"):
        client.start_request(too_long)
    assert client.frames_to_send() == []
    assert client.in_flight() == 0
    sid = client.start_request(fits)
    [request] = pump(client, server)
    assert isinstance(request, RequestReceived)
    assert request.session_id == sid
    assert request.message == fits


# --- What breaks the protocol, frame by frame -------------------------------------------------

REPLY_END = Flags.REPLY | Flags.END


def frame(command: Command, message: Message | bytes, session_id: int, flags: int) -> bytes:
    payload = message if isinstance(message, bytes) else encode_message(message)
    return encode_frame(command, payload, session_id=session_id, flags=flags)


#: Frames a server must not send, each to a client with a STAT (session 1) and a WRITE
#: (session 2, its window open) in flight; the error class and words it ends the connection
#: with.
SERVER_VIOLATIONS = [
    (frame(Command.DATA, b"", 1, 0), RemoteProtocolError, "DATA from the server lacks"),
    (
        frame(Command.STAT, FileStatReply(INFO), 1, Flags.END),
        RemoteProtocolError,
        "STAT from the server lacks the REPLY flag",
    ),
    (
        frame(Command.READ, FileReadReply(INFO, 0, 3), 1, REPLY_END),
        RemoteProtocolError,
        "READ reply on session 1, a STAT",
    ),
    (
        frame(Command.STAT, FileStatReply(INFO), 1, Flags.REPLY),
        RemoteProtocolError,
        "non-final STAT reply",
    ),
    (frame(Command.DATA, b"x", 1, Flags.REPLY), RemoteProtocolError, "takes no more DATA"),
    (
        frame(Command.PING, PingReply(b""), 0, REPLY_END),
        RemoteProtocolError,
        "unexpected PING on session 0",
    ),
    (
        # 64 grants of 64 MiB, the largest increment, on top of the initial window.
        frame(Command.WINDOW, WindowUpdate(64 << 20), 2, Flags.REPLY) * 64,
        FlowControlError,
        "grew past 2**32-1",
    ),
    (
        # A connection-class code ends the connection wherever it comes (spec 7.3).
        frame(Command.ERROR, ErrorMessage(ErrorCode.FLOW_CONTROL, "overrun"), 1, REPLY_END),
        FlowControlError,
        "overrun",
    ),
]


@pytest.mark.parametrize(
    ("data", "error", "words"),
    SERVER_VIOLATIONS,
    ids=[
        "data-without-reply",
        "reply-without-reply-flag",
        "reply-of-another-command",
        "non-final-stat-reply",
        "data-on-a-stat",
        "ping-on-session-0",
        "window-past-u32",
        "connection-error-on-a-request",
    ],
)
def test_a_server_breaking_the_protocol_ends_the_connection(
    data: bytes, error: type[Exception], words: str
) -> None:
    client, server = connected()
    assert client.start_request(FileStat("/f")) == 1
    assert client.start_request(FileWrite("/w"), end=False) == 2
    pump(client, server)
    client.receive_data(data)
    *granted, event = client.events()
    assert all(isinstance(e, WindowGranted) for e in granted)
    assert isinstance(event, ConnectionEnded)
    assert type(event.error) is error
    assert words in str(event.error)
    assert client.state is State.CLOSED
    client.receive_data(frame(Command.STAT, FileStatReply(INFO), 1, REPLY_END))
    assert list(client.events()) == []  # nothing after the end


#: Frames a client must not send, each to a server after the handshake.
CLIENT_VIOLATIONS = [
    (frame(Command.STAT, FileStat("/"), 1, REPLY_END), RemoteProtocolError, "REPLY flag"),
    (frame(Command.STAT, FileStat("/"), 0, Flags.END), RemoteProtocolError, "on session 0"),
    (
        frame(Command.WRITE, FileWrite("/a", size=1), 1, Flags.FD),
        BadFlagsError,
        "must also carry END",
    ),
    (frame(Command.GOAWAY, GoAway("bye"), 3, 0), RemoteProtocolError, "may not send GOAWAY"),
]


@pytest.mark.parametrize(
    ("data", "error", "words"),
    CLIENT_VIOLATIONS,
    ids=["reply-flag", "request-on-session-0", "fd-without-end", "goaway-from-a-client"],
)
def test_a_client_breaking_the_protocol_ends_the_connection(
    data: bytes, error: type[Exception], words: str
) -> None:
    fds = int(Feature.FD_PASSING)
    _client, server = connected(ServerLimits(features=fds), features=fds)
    server.receive_data(data)
    [event] = server.events()
    assert isinstance(event, ConnectionEnded)
    assert type(event.error) is error
    assert words in str(event.error)
    assert server.closed
    server.fail(FlowControlError("again"))  # already over: nothing more is queued
    [(header, _payload)] = server.frames_to_send()
    assert header[5] == Command.ERROR


def test_a_client_ending_the_connection_with_an_error() -> None:
    client, server = connected()
    client.fail(FlowControlError("the server overran a READ window"))
    [ended] = pump(client, server)
    assert isinstance(ended, ConnectionEnded)
    assert isinstance(ended.error, FlowControlError)
    assert "overran" in str(ended.error)
    assert server.closed


def test_what_each_side_refuses_to_do_locally() -> None:
    fresh = ClientSession()
    with pytest.raises(LocalProtocolError, match="cannot start a request in state"):
        fresh.start_request(Ping())
    client, server = connected(ServerLimits(max_streams=1))
    with pytest.raises(LocalProtocolError, match="PingReply is not a request"):
        client.start_request(PingReply(b""))
    with pytest.raises(LocalProtocolError, match="rides only with a WRITE"):
        client.start_request(Ping(), fd=True)
    sid = client.start_request(Ping())
    with pytest.raises(LocalProtocolError, match="1 requests already in flight"):
        client.start_request(Ping())
    with pytest.raises(LocalProtocolError, match="already answered"):
        server.accept_hello(Hello((1,), 1 << 20, 1 << 20))
    pump(client, server)
    with pytest.raises(LocalProtocolError, match="only a READ's first reply"):
        server.reply(sid, PingReply(b""), end=False)
    with pytest.raises(LocalProtocolError, match="session 77 is not in flight"):
        server.reply(77, PingReply(b""))
    server.reply(sid, PingReply(b""))
    server.send_error(sid, NotFoundError("too late"))  # already answered: nothing queued
    [(header, _payload)] = server.frames_to_send()
    assert header[5] == Command.PING
    server.goaway("stopping", 0)
    server.goaway("again", 0)  # once only
    assert len(server.frames_to_send()) == 1
