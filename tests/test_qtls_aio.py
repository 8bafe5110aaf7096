"""qproxy.qtls.aio: asyncio streams over memory BIOs, against qtls-server and a QTLSServer."""

from __future__ import annotations

import asyncio
import socket

import pytest

from qproxy.qtls import (
    QTLS_CLIENT_MODE, QTLS_OP_HYBRID_MODE, QTLS_SERVER_MODE, QTLSConnectionClosed, QTLSContext,
    QTLSModeError, QTLSServer, QTLSTimeout, QTLSVerificationError,
)
from qproxy.qtls.aio import open_connection
from tests.qtls_support import ThreadedServer, echo


def client_context(dev_pki) -> QTLSContext:
    ctx = QTLSContext(mode=QTLS_CLIENT_MODE)
    ctx.load_verify_locations(dev_pki.ca_bundle)
    ctx.set_options(QTLS_OP_HYBRID_MODE)
    return ctx


def run(coro):
    """Run with executors forbidden but for asyncio's own name resolution: the TLS work must
    not be hidden in threads."""
    async def guarded():
        loop = asyncio.get_running_loop()
        original = loop.run_in_executor

        def no_executor(executor, func, *args):
            if func is not socket.getaddrinfo:
                raise AssertionError(f"run_in_executor used for {func}")
            return original(executor, func, *args)
        loop.run_in_executor = no_executor  # type: ignore[method-assign]
        return await coro
    return asyncio.run(guarded())


async def http_get(port: int, ctx: QTLSContext, path: str, session=None):
    reader, writer = await open_connection("localhost", port, ctx, session=session)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    body = await reader.read()
    facts = (writer.negotiated_group, writer.peer_signature_algorithm, writer.session_resumed)
    session = writer.session
    writer.close()
    await writer.wait_closed()
    return head, body, facts, session


def test_asyncio_client_against_qtls_server(server, dev_pki):
    ctx = client_context(dev_pki)

    async def main():
        first = await http_get(server.port, ctx, "/echo?from=aio")
        second = await http_get(server.port, ctx, "/echo?from=aio-resumed", session=first[3])
        return first, second

    first, second = run(main())
    assert first[0].startswith(b"HTTP/1.1 200")
    assert b"/echo?from=aio" in first[1]
    assert first[2] == ("X25519MLKEM768", "mldsa65", False)
    assert second[2][2] is True  # resumed with the first connection's session
    access = server.wait_log(lambda e: e.get("path") == "/echo?from=aio")
    assert access["ssl_curve"] == "X25519MLKEM768"


@pytest.fixture
def echo_server(dev_pki):
    ctx = QTLSContext(QTLS_SERVER_MODE)
    ctx.use_certificate_file(dev_pki.mldsa_cert)
    ctx.use_private_key_file(dev_pki.mldsa_key)
    server = ThreadedServer(QTLSServer(ctx, "127.0.0.1", 0), echo)
    yield server
    server.close()


def test_many_concurrent_streams_share_one_context(echo_server, dev_pki):
    ctx = client_context(dev_pki)

    async def one(index: int) -> bytes:
        reader, writer = await open_connection("localhost", echo_server.port, ctx)
        payload = f"stream {index} ".encode() * 1400  # one record: the echo handler reads once
        writer.write(payload)
        await writer.drain()
        reply = await reader.readexactly(len(payload) + 5)
        assert await reader.read() == b""  # the server's close_notify ends the stream
        writer.close()
        await writer.wait_closed()
        return reply == b"echo:" + payload

    async def main():
        return await asyncio.gather(*(one(i) for i in range(10)))

    assert all(run(main()))


def test_asyncio_errors_are_qtls_exceptions(echo_server, dev_pki):
    ctx = client_context(dev_pki)
    listener = socket.create_server(("127.0.0.1", 0))

    async def main():
        with pytest.raises(QTLSVerificationError, match="hostname mismatch"):
            await open_connection("127.0.0.1", echo_server.port, ctx,
                                  server_hostname="ota.example.com")
        with pytest.raises(QTLSConnectionClosed, match="cannot connect"):
            await open_connection("127.0.0.1", 1, ctx)
        with pytest.raises(QTLSTimeout):
            await open_connection("127.0.0.1", listener.getsockname()[1], ctx, timeout=0.3)
        server_ctx = QTLSContext(QTLS_SERVER_MODE)
        with pytest.raises(QTLSModeError):
            await open_connection("127.0.0.1", echo_server.port, server_ctx)
        reader, writer = await open_connection("localhost", echo_server.port, ctx)
        writer.close()
        with pytest.raises(QTLSConnectionClosed):
            writer.write(b"after close")
        await writer.wait_closed()

    with listener:
        run(main())
