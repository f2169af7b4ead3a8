"""The metrics endpoint's HTTP bounds: connections at once, and time per connection."""

from __future__ import annotations

import trio
import trio.testing

from librorum.server.http import HttpEndpoint, Page


async def _page() -> Page:
    return Page(b"figures\n", "text/plain")


async def test_connections_beyond_the_cap_are_closed_and_a_silent_one_times_out() -> None:
    endpoint = HttpEndpoint(
        _page, path="/metrics", token=None, max_connections=1, request_timeout=0.5
    )
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(endpoint.serve, "127.0.0.1", 0)
            silent = await trio.open_tcp_stream(*address)
            while endpoint.open_connections < 1:
                await trio.testing.wait_all_tasks_blocked()
            # The cap is reached: a new connection is closed at once, unanswered.
            extra = await trio.open_tcp_stream(*address)
            assert await extra.receive_some(100) == b""
            await extra.aclose()
            # The silent one is closed when its time is up (well within the test's bound).
            started = trio.current_time()
            assert await silent.receive_some(100) == b""
            assert trio.current_time() - started < 5
            await silent.aclose()
            while endpoint.open_connections:
                await trio.testing.wait_all_tasks_blocked()
            # Room again: a request is answered.
            stream = await trio.open_tcp_stream(*address)
            await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while chunk := await stream.receive_some(4096):
                answer += chunk
            await stream.aclose()
            assert answer.startswith(b"HTTP/1.1 200 ")
            assert answer.endswith(b"\r\n\r\nfigures\n")
            nursery.cancel_scope.cancel()
