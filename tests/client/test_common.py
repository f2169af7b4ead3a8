"""The pure parts of the clients: endpoint resolution, the backoff schedule, request state."""

from __future__ import annotations

from pathlib import Path

import pytest

from librorum.client._common import (
    COALESCE_BELOW,
    GOAWAY,
    RequestState,
    backoff_delays,
    copy_error,
    expect,
    lost,
    route_event,
)
from librorum.client._endpoints import (
    LocalEndpoint,
    RemoteEndpoint,
    default_socket_path,
    read_token_file,
    resolve_endpoints,
)
from librorum.errors import (
    ConnectionClosed,
    FlowControlError,
    NotFoundError,
    RemoteProtocolError,
)
from librorum.protocol.constants import Command, EntryKind
from librorum.protocol.messages import FileInfo, FileReadReply, FileStatReply, GoAway
from librorum.protocol.session import (
    ConnectionEnded,
    DataReceived,
    ErrorReceived,
    GoAwayReceived,
    ReplyReceived,
    WindowGranted,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LIBRORUM_SOCKET", "LIBRORUM_URL", "LIBRORUM_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)


def test_backoff_starts_at_once_then_doubles_to_the_cap() -> None:
    assert list(backoff_delays(attempts=8)) == [0, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0]
    assert list(backoff_delays(attempts=1)) == [0]


def test_small_data_is_coalesced_and_large_data_handed_over() -> None:
    state = RequestState(1, Command.READ)
    for _ in range(1000):
        state.on_data(b"x" * 100, end=False)
    big = bytearray(COALESCE_BELOW)
    state.on_data(big, end=False)
    state.on_data(b"tail", end=True)
    # 100 kB in 100-byte frames became two buffers; the large payload kept its own.
    assert len(state.chunks) == 4
    assert state.chunks[2] is big
    assert state.buffered == 100_000 + COALESCE_BELOW + 4
    assert state.finished
    assert state.data_ended
    assert b"".join(iter(state.take_chunk, None)) == b"x" * 100_000 + bytes(big) + b"tail"  # type: ignore[arg-type]
    assert state.buffered == 0


def test_error_copies_are_fresh_and_chained() -> None:
    original = FlowControlError("overrun")
    copy = copy_error(original)
    assert type(copy) is FlowControlError
    assert copy is not original
    assert copy.__cause__ is original
    dropped = lost(ConnectionClosed("reset"), Command.STAT, "unix:/s")
    assert isinstance(dropped, ConnectionClosed)
    assert "outcome is unknown" in str(dropped)
    assert "STAT" in str(dropped)
    assert isinstance(lost(NotFoundError("x"), Command.STAT, "unix:/s"), NotFoundError)


def test_auto_tries_the_local_socket_then_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIBRORUM_SOCKET", "/run/x.sock")
    monkeypatch.setenv("LIBRORUM_URL", "wss://example.org:7878")
    assert resolve_endpoints() == [
        LocalEndpoint(Path("/run/x.sock")),
        RemoteEndpoint("wss://example.org:7878"),
    ]
    assert resolve_endpoints(transport="local") == [LocalEndpoint(Path("/run/x.sock"))]
    assert resolve_endpoints(transport="remote") == [RemoteEndpoint("wss://example.org:7878")]


def test_an_explicit_target_decides_its_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIBRORUM_URL", "ws://127.0.0.1:1")
    assert resolve_endpoints("/tmp/s.sock") == [LocalEndpoint(Path("/tmp/s.sock"))]
    assert resolve_endpoints("unix:/tmp/s.sock") == [LocalEndpoint(Path("/tmp/s.sock"))]
    assert resolve_endpoints("ws://h:2") == [RemoteEndpoint("ws://h:2")]
    assert resolve_endpoints("ws://h:2", socket_path="/s") == [
        LocalEndpoint(Path("/s")),
        RemoteEndpoint("ws://h:2"),
    ]


def test_default_socket_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert default_socket_path() == Path("/run/user/1000/librorum/librorum.sock")
    assert resolve_endpoints() == [LocalEndpoint(default_socket_path())]


def test_tokens_come_from_the_argument_or_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("  abc123\n")
    assert read_token_file(token_file) == "abc123"
    [endpoint] = resolve_endpoints("ws://h", token_file=token_file)
    assert isinstance(endpoint, RemoteEndpoint)
    assert endpoint.token == "abc123"
    assert "abc123" not in repr(endpoint)
    monkeypatch.setenv("LIBRORUM_TOKEN_FILE", str(token_file))
    [endpoint] = resolve_endpoints("ws://h")
    assert endpoint == RemoteEndpoint("ws://h", "abc123")
    [endpoint] = resolve_endpoints("ws://h", token="explicit")
    assert endpoint == RemoteEndpoint("ws://h", "explicit")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        read_token_file(tmp_path / "empty")


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((), {"transport": "sideways"}),
        (("ws://h",), {"transport": "local"}),
        (("/s.sock",), {"transport": "remote"}),
        (("/s.sock",), {"socket_path": "/t.sock"}),
        (("ws://a",), {"url": "ws://b"}),
        ((), {"transport": "remote"}),
        ((), {"url": "http://not-a-websocket"}),
    ],
)
def test_contradictions_are_refused(args: tuple[str, ...], kwargs: dict[str, str]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message varies by case
        resolve_endpoints(*args, **kwargs)  # type: ignore[arg-type]


def test_events_go_to_their_request_and_finished_requests_leave() -> None:
    woken: list[int] = []

    class Watched(RequestState):
        def changed(self) -> None:
            woken.append(self.session_id)

    read, stat, other = Watched(1, Command.READ), Watched(3, Command.STAT), 99
    requests: dict[int, RequestState] = {1: read, 3: stat}
    info = FileInfo("/f", EntryKind.FILE, 5, 0, 1)
    events = [
        ReplyReceived(1, Command.READ, FileReadReply(info, 0, 5), end=False),
        WindowGranted(3, 10),
        DataReceived(1, b"ab", end=False),
        DataReceived(other, b"for nobody", end=True),  # forgotten sessions: dropped
        ReplyReceived(other, Command.STAT, FileStatReply(info), end=True),
        WindowGranted(other, 10),
        ErrorReceived(other, NotFoundError("gone")),
        DataReceived(1, b"cde", end=True),
        ErrorReceived(3, NotFoundError("no /g")),
    ]
    assert [route_event(event, requests) for event in events] == [None] * len(events)
    assert requests == {}
    assert woken == [1, 3, 1, 1, 3]
    assert read.finished
    assert read.data_ended
    assert b"".join(iter(read.take_chunk, None)) == b"abcde"  # type: ignore[arg-type]
    assert isinstance(stat.error, NotFoundError)
    # An error after the end changes nothing.
    read.on_error(NotFoundError("late"))
    assert read.error is None
    assert route_event(GoAwayReceived(GoAway("restarting", 1000)), {}) == GOAWAY
    ended = ConnectionEnded(ConnectionClosed("reset"))
    assert route_event(ended, {}) is ended


def test_a_reply_of_another_class_is_a_protocol_error() -> None:
    info = FileInfo("/f", EntryKind.FILE, 5, 0, 1)
    assert expect(FileStatReply(info), FileStatReply) == FileStatReply(info)
    with pytest.raises(RemoteProtocolError, match="expected a FileStatReply reply, got NoneType"):
        expect(None, FileStatReply)
    with pytest.raises(RemoteProtocolError, match="got FileReadReply"):
        expect(FileReadReply(info, 0, 5), FileStatReply)
