"""The metrics endpoint's HTTP bounds: connections at once, and time per connection."""

from __future__ import annotations

import ssl
from pathlib import Path

import trio
import trio.testing

from librorum.server.http import HEAD_TIMEOUT, MAX_PER_ADDRESS, HttpEndpoint, Page


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


async def _get(address: tuple[str, int], local: str | None = None) -> bytes:
    stream = await trio.open_tcp_stream(*address, local_address=local)
    await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = b""
    while chunk := await stream.receive_some(4096):
        answer += chunk
    await stream.aclose()
    return answer


async def test_idle_connections_from_one_address_cannot_keep_scrapes_out() -> None:
    """One address holds at most MAX_PER_ADDRESS places, and a connection that sends no
    request head gives its place back after HEAD_TIMEOUT, long before request_timeout."""
    endpoint = HttpEndpoint(_page, path="/metrics", token=None, request_timeout=60)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(endpoint.serve, "127.0.0.1", 0)
            idle = [await trio.open_tcp_stream(*address) for _ in range(MAX_PER_ADDRESS)]
            while endpoint.open_connections < MAX_PER_ADDRESS:
                await trio.testing.wait_all_tasks_blocked()
            started = trio.current_time()
            # One more from the same address: closed at once, unanswered.
            extra = await trio.open_tcp_stream(*address)
            assert await extra.receive_some(100) == b""
            await extra.aclose()
            # Another address still gets its answer meanwhile.
            assert (await _get(address, local="127.0.0.2")).startswith(b"HTTP/1.1 200 ")
            # The idle ones are closed once their head is overdue, not after 60 s.
            for stream in idle:
                assert await stream.receive_some(100) == b""
                await stream.aclose()
            assert trio.current_time() - started < HEAD_TIMEOUT + 5
            while endpoint.open_connections:
                await trio.testing.wait_all_tasks_blocked()
            assert (await _get(address)).startswith(b"HTTP/1.1 200 ")
            nursery.cancel_scope.cancel()


async def test_over_tls_with_a_token(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=str(cert))
    endpoint = HttpEndpoint(_page, path="/metrics", token="s3cret", ssl_context=server_context)

    async def get(address: tuple[str, int], headers: str) -> bytes:
        tcp = await trio.open_tcp_stream(*address)
        stream = trio.SSLStream(tcp, client_context, server_hostname="127.0.0.1")
        await stream.send_all(f"GET /metrics HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())
        answer = b""
        try:
            while chunk := await stream.receive_some(4096):
                answer += chunk
        except trio.BrokenResourceError:
            pass  # the server closed without a TLS close_notify: the answer is whole
        await trio.aclose_forcefully(stream)
        return answer

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(endpoint.serve, "127.0.0.1", 0)
            assert (await get(address, "")).startswith(b"HTTP/1.1 401 ")
            answer = await get(address, "Authorization: Bearer s3cret\r\n")
            assert answer.startswith(b"HTTP/1.1 200 ")
            assert answer.endswith(b"figures\n")
            nursery.cancel_scope.cancel()
