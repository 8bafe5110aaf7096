"""Backend connections that start with a PROXY header belong to one client connection
(proxy/backend/pool.py): in-process, against a real local TCP listener."""

from __future__ import annotations

import asyncio

from qproxy.proxy.backend import ServerConnections


class Client:
    """Stands for a client connection's transport (what the handler ties connections to)."""

    def __init__(self) -> None:
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing


async def _listener():
    first_bytes: list[bytes] = []

    async def serve(reader, writer):
        first_bytes.append(await reader.read(100))
        await reader.read()  # until the pool closes it
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], first_bytes


def test_a_tied_connection_goes_back_to_its_client_only():
    async def main():
        server, port, first_bytes = await _listener()
        pool = ServerConnections("127.0.0.1", port, keepalive=8, idle_timeout=30,
                                 connect_timeout=5)
        alice, bob = Client(), Client()
        connection = await pool.connect(b"PROXY-HEADER-FOR-ALICE", alice)
        async with asyncio.timeout(5):
            while not first_bytes:
                await asyncio.sleep(0.01)
        assert first_bytes == [b"PROXY-HEADER-FOR-ALICE"]   # the preface comes first
        pool.release(connection)
        assert pool.take_idle() is None          # not for requests without a client
        assert pool.take_idle(bob) is None       # nor for another client
        assert pool.take_idle(alice) is connection
        pool.release(connection)
        alice.closing = True                     # Alice leaves: the next release sweeps
        other = await pool.connect(b"BOB", bob)
        pool.release(other)
        assert connection.closed and not other.closed
        assert pool.idle_count == 1
        pool.close()
        server.close()
    asyncio.run(main())


def test_a_connection_released_after_its_client_left_is_closed():
    async def main():
        server, port, _ = await _listener()
        pool = ServerConnections("127.0.0.1", port, keepalive=8, idle_timeout=30,
                                 connect_timeout=5)
        alice = Client()
        connection = await pool.connect(b"A", alice)
        alice.closing = True
        pool.release(connection)
        assert connection.closed and pool.idle_count == 0
        server.close()
    asyncio.run(main())


def test_tied_connections_count_against_keepalive():
    async def main():
        server, port, _ = await _listener()
        pool = ServerConnections("127.0.0.1", port, keepalive=1, idle_timeout=30,
                                 connect_timeout=5)
        first, second = Client(), Client()
        kept = await pool.connect(b"1", first)
        dropped = await pool.connect(b"2", second)
        pool.release(kept)
        pool.release(dropped)
        assert not kept.closed and dropped.closed and pool.idle_count == 1
        pool.close()
        server.close()
    asyncio.run(main())
