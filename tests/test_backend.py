"""The backend HTTP/1.1 client against scripted servers on 127.0.0.1 (real sockets, real parser)."""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

import pytest
from multidict import CIMultiDict

from qproxy.proxy.backend import (BackendError, BackendRequest, BackendSettings, FailureKind,
                                  ServerConnections)
from qproxy.proxy.headers import encode_request_head

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)


def get(path: str = "/", method: str = "GET") -> bytes:
    return encode_request_head(method, path, CIMultiDict(Host="backend"), "backend")


async def fetch(pool: ServerConnections, head: bytes, *, body=None, chunked=False,
                head_only=False, read_timeout=5.0) -> tuple[int, bytes, bool]:
    """(status, body, whether the connection was a reused one)."""
    connection = await pool.acquire()
    reused = connection.reused
    if read_timeout != pool.settings.read_timeout:
        pool.settings = BackendSettings(read_timeout=read_timeout)
        connection._settings = pool.settings
    response = await connection.exchange(BackendRequest(head, body, chunked, head_only))
    try:
        data = b""
        while piece := await response.read(65536):
            data += piece
    finally:
        response.release()
    return response.status, data, reused


def run(script: Script, test: Callable[[ServerConnections], Awaitable[None]],
        keepalive: int = 4, idle_timeout: float = 30.0) -> list[int]:
    """Runs `test` against a server running `script` per connection; returns each connection's
    request count (as the script reported it through its return value)."""
    connections: list[int] = []

    async def main() -> None:
        async def handle(reader, writer):
            connections.append(0)
            try:
                await script(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = ServerConnections("127.0.0.1", port, keepalive, idle_timeout, 5.0)
        try:
            await asyncio.wait_for(test(pool), 20)
        finally:
            pool.close()
            server.close()

    asyncio.run(main())
    return connections


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def serve_forever(reader, writer, answer=ok(b"hello")) -> None:
    for _ in range(100):
        await read_head(reader)
        writer.write(answer)
        await writer.drain()


def test_connections_are_reused() -> None:
    async def test(pool):
        for i in range(3):
            status, body, reused = await fetch(pool, get())
            assert (status, body, reused) == (200, b"hello", i > 0)

    assert len(run(serve_forever, test)) == 1


def test_keepalive_zero_opens_a_connection_per_request() -> None:
    async def test(pool):
        for _ in range(3):
            assert (await fetch(pool, get()))[0] == 200

    assert len(run(serve_forever, test, keepalive=0)) == 3


def test_a_kept_alive_connection_closed_under_a_request_is_retryable_only_if_reused() -> None:
    # A backend whose keep-alive timeout expires just as the next request arrives closes
    # without answering: the request may be sent again on a new connection (nginx does).
    async def answer_once_then_drop(reader, writer):
        await read_head(reader)
        writer.write(ok(b"one"))
        await writer.drain()
        await read_head(reader)

    async def test(pool):
        assert (await fetch(pool, get()))[1:] == (b"one", False)
        with pytest.raises(BackendError) as failure:
            await fetch(pool, get())
        assert failure.value.retryable and failure.value.kind is FailureKind.CLOSED

    assert len(run(answer_once_then_drop, test)) == 1

    async def drop(reader, writer):
        await read_head(reader)

    async def fresh(pool):
        with pytest.raises(BackendError) as failure:
            await fetch(pool, get())
        assert not failure.value.retryable  # a new connection: the backend may have acted

    run(drop, fresh)


def test_head_response_has_no_body_and_only_an_empty_one_keeps_the_connection() -> None:
    # A HEAD answer announcing a body (Content-Length: 1000) may be followed by that body
    # anyway (aiohttp does): its connection is not reused. One announcing none is.
    lengths = iter((0, 1000))

    async def script(reader, writer):
        for _ in range(3):
            head = await read_head(reader)
            if head.startswith(b"HEAD "):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % next(lengths))
            else:
                writer.write(ok(b"after head"))
            await writer.drain()

    async def test(pool):
        assert await fetch(pool, get(method="HEAD"), head_only=True) == (200, b"", False)
        assert await fetch(pool, get(method="HEAD"), head_only=True) == (200, b"", True)
        assert pool.idle_count == 0  # closed after the second, which announced a body
        status, body, reused = await fetch(pool, get())
        assert (status, reused) == (200, False)

    connections = run(script, test)
    assert len(connections) == 2


def test_informational_responses_are_skipped() -> None:
    async def script(reader, writer):
        await read_head(reader)
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n" + ok(b"x"))
        await reader.read()

    async def test(pool):
        assert (await fetch(pool, get()))[:2] == (200, b"x")

    run(script, test)


def test_body_delimited_by_close() -> None:
    async def script(reader, writer):
        await read_head(reader)
        writer.write(b"HTTP/1.0 200 OK\r\n\r\n" + b"a" * 100_000)
        await writer.drain()

    async def test(pool):
        status, body, _ = await fetch(pool, get())
        assert (status, len(body)) == (200, 100_000)

    run(script, test)


def test_truncated_body_is_an_error() -> None:
    async def script(reader, writer):
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()

    async def test(pool):
        with pytest.raises(BackendError, match="middle of the response"):
            await fetch(pool, get())

    run(script, test)


def test_malformed_response_is_a_protocol_error() -> None:
    async def script(reader, writer):
        await read_head(reader)
        writer.write(b"SMTP ready\r\n\r\n")
        await reader.read()

    async def test(pool):
        with pytest.raises(BackendError) as failure:
            await fetch(pool, get())
        assert failure.value.kind is FailureKind.MALFORMED and not failure.value.retryable

    run(script, test)


def test_silent_backend_times_out() -> None:
    async def script(reader, writer):
        await read_head(reader)
        await asyncio.sleep(5)

    async def test(pool):
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(BackendError) as failure:
            await fetch(pool, get(), read_timeout=0.3)
        assert failure.value.kind is FailureKind.READ_TIMEOUT
        assert 0.25 < loop.time() - started < 2

    run(script, test)


def test_chunked_request_body_is_framed() -> None:
    received = []

    async def script(reader, writer):
        head = await read_head(reader)
        assert b"transfer-encoding: chunked" in head.lower()
        body = b""
        while True:
            size = int((await reader.readline()).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
        received.append(body)
        writer.write(ok(b"got it"))
        await writer.drain()

    async def parts():
        for part in (b"one ", b"", b"two"):
            yield part

    async def test(pool):
        head = encode_request_head("POST", "/up", CIMultiDict(
            {"Host": "b", "Transfer-Encoding": "chunked"}), "b")
        assert (await fetch(pool, head, body=parts(), chunked=True))[1] == b"got it"

    run(script, test)
    assert received == [b"one two"]


def test_connect_refused_is_retryable_connect_error() -> None:
    async def main():
        pool = ServerConnections("127.0.0.1", 1, 4, 30.0, 5.0)
        with pytest.raises(BackendError) as failure:
            await pool.acquire()
        assert failure.value.kind is FailureKind.CONNECT and "refused" in str(
            failure.value).lower()

    asyncio.run(main())


def test_request_head_refuses_line_breaks() -> None:
    with pytest.raises(ValueError, match="line break"):
        encode_request_head("GET", "/", CIMultiDict({"X-Client-Cert-Subject": "CN=a\r\nEvil: 1"}),
                            "b")
    head = encode_request_head("GET", "/p?q=1", CIMultiDict({"Accept": "*/*"}), "backend:80")
    assert head == b"GET /p?q=1 HTTP/1.1\r\nHost: backend:80\r\nAccept: */*\r\n\r\n"


def test_idle_connection_is_closed_after_idle_timeout_and_not_while_in_use() -> None:
    async def test(pool):
        assert (await fetch(pool, get()))[0] == 200
        await asyncio.sleep(0.2)
        status, _, reused = await fetch(pool, get())  # taken and given back: its idle restarts
        assert (status, reused) == (200, True)
        await asyncio.sleep(0.2)  # 0.4 s since the first release, 0.2 s since the second
        assert len(pool._idle) == 1
        await asyncio.sleep(0.4)
        assert pool._idle == []  # closed and forgotten

    assert len(run(serve_forever, test, idle_timeout=0.3)) == 1


def test_bytes_past_the_response_are_not_a_response_and_the_connection_is_dropped() -> None:
    async def script(reader, writer):
        for _ in range(2):
            await read_head(reader)
            writer.write(ok(b"hi") + b"HTTP/1.1 302 Found\r\nSet-Cookie: session=attacker\r\n"
                         b"Location: https://evil/\r\n\r\n")
            await writer.drain()

    async def test(pool):
        connection = await pool.acquire()
        response = await connection.exchange(BackendRequest(get()))
        assert [name for name, _ in response.fields] == [b"Content-Length"]
        assert response.whole_body() == b"hi"
        response.release()
        assert (await fetch(pool, get()))[2] is False  # a new connection, not the tainted one

    assert len(run(script, test)) == 2
