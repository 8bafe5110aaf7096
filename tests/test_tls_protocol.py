"""The TLS protocol in-process: a pyOpenSSL client in memory, a mock socket transport, the
real HTTP layer (or a recording one) above; no sockets."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from OpenSSL import SSL

from qproxy.config.model import ServerSection
from qproxy.proxy.http import HttpServer
from qproxy.tls import openssl_ext
from qproxy.tls.machine import TlsState
from tests.support import memory_tls
from qproxy.tls.protocol import (
    PLAIN_HTTP_RESPONSE,
    AppPhase,
    Limits,
    Phase,
    TlsServerProtocol,
)


@pytest.fixture(scope="module")
def server_context() -> SSL.Context:
    return memory_tls.server_context("protocol.test")


class SocketTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.writes: list[int] = []
        self.eof_written = False
        self.closed = False
        self.aborted = False
        self.limits: tuple[int | None, int | None] | None = None
        self.protocol: TlsServerProtocol | None = None

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.written += data
        self.writes.append(len(data))

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.aborted = True
        self.close()

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        self.limits = (high, low)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 50000) if name == "peername" else default


class Observer:
    def __init__(self) -> None:
        self.events: list[str] = []

    def __getattr__(self, name: str):
        return lambda *args: self.events.append(name)


class RecordingApp(asyncio.Protocol):
    def __init__(self, answer_later: bool = True) -> None:
        self.calls: list[str] = []
        self.transport: Any = None

    def connection_made(self, transport) -> None:
        self.calls.append("made")
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.calls.append("data")

    def eof_received(self) -> bool:
        self.calls.append("eof")
        return True  # an answer is on its way

    def connection_lost(self, exc) -> None:
        self.calls.append("lost")

    def request_head_timed_out(self) -> None:
        self.calls.append("head timeout")


class Client:
    """A TLS 1.3 client in memory driving one TlsServerProtocol."""

    def __init__(self, server_context: SSL.Context, app_factory, header_timeout: float = 30):
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_min_proto_version(SSL.TLS1_3_VERSION)
        self.tls = SSL.Connection(context, None)
        self.tls.set_connect_state()
        self.observer = Observer()
        self.protocol = TlsServerProtocol(lambda: server_context, app_factory, self.observer,
                                          Limits(5.0, header_timeout))
        self.socket = SocketTransport()
        self.socket.protocol = self.protocol
        self.protocol.connection_made(self.socket)
        self._seen = 0

    def pump(self) -> None:
        """Server output to the client."""
        data = bytes(self.socket.written[self._seen:])
        self._seen = len(self.socket.written)
        if data:
            self.tls.bio_write(data)

    def handshake(self) -> None:
        for _ in range(5):
            try:
                self.tls.do_handshake()
                break
            except SSL.WantReadError:
                self.protocol.data_received(openssl_ext.take_output(self.tls))
                self.pump()
        self.protocol.data_received(openssl_ext.take_output(self.tls))  # its Finished
        self.pump()

    def send(self, data: bytes, close_notify: bool = False) -> None:
        self.tls.sendall(data) if data else None
        if close_notify:
            self.tls.shutdown()
        self.protocol.data_received(openssl_ext.take_output(self.tls))

    def receive(self) -> tuple[bytes, bool]:
        """(plaintext received, whether our close_notify came)."""
        self.pump()
        data, closed = openssl_ext.read_plaintext(self.tls)
        return data, closed


async def hello(request, responder) -> None:
    await asyncio.sleep(0)  # the answer comes after the close_notify has been processed
    responder.send_response(request, 200, "OK", [(b"Content-Type", b"text/plain")], b"hello")


def http_app(handler=hello):
    return HttpServer(handler, ServerSection(), lambda *args: None)


async def _until(predicate, timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.001)


def test_request_then_close_notify_at_once_is_answered_then_our_close_notify(server_context):
    """Defect 5: a TLS 1.3 half-close right after the request (RFC 8446 6.1)."""
    async def main():
        client = Client(server_context, http_app())
        client.handshake()
        client.send(b"GET / HTTP/1.0\r\n\r\n", close_notify=True)
        # The peer closed its side; it still reads ours.
        assert client.protocol._machine.state is TlsState.PEER_CLOSED
        await _until(lambda: client.socket.eof_written)  # then the lingering close
        data, closed = client.receive()
        assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b"\r\n\r\nhello")
        assert closed, "our close_notify follows the response"
        assert not client.socket.aborted
    asyncio.run(main())


def test_close_notify_then_tcp_fin_gives_the_app_one_eof_and_one_close(server_context):
    async def main():
        app = RecordingApp()
        client = Client(server_context, lambda: app)
        client.handshake()
        client.send(b"GET / HTTP/1.1\r\n", close_notify=True)
        assert client.protocol.eof_received() is True  # the TCP FIN: the answer may still go
        assert client.protocol.phase is Phase.INPUT_ENDED
        assert app.calls == ["made", "data", "eof"]
        app.transport.write(b"answer")
        app.transport.close()
        client.protocol.connection_lost(None)
        client.protocol.connection_lost(None)
        assert app.calls == ["made", "data", "eof", "lost"]
        data, closed = client.receive()
        assert data == b"answer" and closed
        # The peer had shut its side already: nothing to linger for.
        assert client.socket.closed and not client.socket.eof_written
    asyncio.run(main())


def test_fin_before_any_request_byte_closes_without_an_app(server_context):
    async def main():
        client = Client(server_context, RecordingApp)
        client.handshake()
        assert client.protocol.eof_received() is False
        assert client.protocol.app_phase is AppPhase.NONE
    asyncio.run(main())


def test_plain_http_gets_a_400_whose_length_is_its_body():
    head, _, body = PLAIN_HTTP_RESPONSE.partition(b"\r\n\r\n")
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    assert length == len(body)

    async def main():
        client = Client(SSL.Context(SSL.TLS_METHOD), RecordingApp)
        client.protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert bytes(client.socket.written) == PLAIN_HTTP_RESPONSE
        assert client.socket.eof_written
        assert client.observer.events == ["plain_http"]
    asyncio.run(main())


def test_request_head_deadline_is_answered_by_the_app(server_context):
    async def main():
        app = RecordingApp()
        client = Client(server_context, lambda: app)
        client.handshake()
        client.send(b"GET / HTTP/1.1\r\nHost")
        client.protocol.deadline_passed()
        assert app.calls[-1] == "head timeout"
        assert "request_timeout" in client.observer.events
    asyncio.run(main())


def test_request_head_deadline_with_no_byte_closes_quietly(server_context):
    """As nginx: a connection that never sent a request byte is closed, with close_notify,
    and given no unasked 408."""
    async def main():
        client = Client(server_context, RecordingApp)
        client.handshake()
        client.protocol.deadline_passed()
        data, closed = client.receive()
        assert data == b"" and closed
        assert "request_timeout" not in client.observer.events
    asyncio.run(main())


def test_request_in_hand_stops_the_head_deadline(server_context):
    async def main():
        app = RecordingApp()
        client = Client(server_context, lambda: app)
        client.handshake()
        client.send(b"GET / HTTP/1.1\r\n")
        app.transport.request_started()
        client.protocol.deadline_passed()
        assert "head timeout" not in app.calls
        app.transport.request_finished()
    asyncio.run(main())


def test_set_protocol_hands_the_app_side_to_another_protocol(server_context):
    async def main():
        first, second = RecordingApp(), RecordingApp()
        client = Client(server_context, lambda: first)
        client.handshake()
        client.send(b"x")
        first.transport.set_protocol(second)
        assert first.transport.get_protocol() is second
        client.send(b"y")
        client.protocol.pause_writing()
        assert first.calls == ["made", "data"] and second.calls == ["data"]
        client.protocol.connection_lost(None)
        assert second.calls == ["data", "lost"]
    asyncio.run(main())


def test_large_write_leaves_in_bounded_pieces_with_a_write_high_water(server_context):
    async def main():
        app = RecordingApp()
        client = Client(server_context, lambda: app)
        client.handshake()
        assert client.socket.limits == (64 * 1024, 16 * 1024)
        client.send(b"x")
        before = len(client.socket.writes)
        app.transport.write(b"a" * 1_000_000)
        pieces = client.socket.writes[before:]
        assert len(pieces) >= 15 and max(pieces) < 70 * 1024
        got = bytearray()
        client.pump()
        while len(got) < 1_000_000:
            data, _ = openssl_ext.read_plaintext(client.tls)
            assert data
            got += data
        assert got == b"a" * 1_000_000
    asyncio.run(main())


def test_a_closed_connection_frees_its_openssl_state_without_waiting_for_the_gc(server_context):
    """Issue 11 defect 3: memory held after slow clients leave. The app protocol and its
    transport point back at the TLS protocol, and the SSL object at the machine; unless
    connection_lost cuts those, each closed connection's OpenSSL state waits for a full
    collection."""
    import gc

    from qproxy.tls.machine import TlsServerMachine

    def machines() -> int:
        return sum(isinstance(o, (TlsServerMachine, SSL.Connection)) for o in gc.get_objects())

    async def main():
        client = Client(server_context, http_app())
        client.handshake()
        client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await _until(lambda: b"hello" in client.receive()[0] or client.socket.closed)
        client.send(b"", close_notify=True)
        await _until(lambda: client.socket.eof_written)
        client.socket.closed = True
        client.protocol.connection_lost(None)
        server_side = client.protocol
        del client
        return server_side

    gc.collect()
    gc.disable()
    try:
        baseline = machines()
        server_side = asyncio.run(main())
        assert server_side._machine is None
        # Only the test's own pyOpenSSL client may still be around (it was deleted with the
        # Client, so nothing at all is expected).
        assert machines() <= baseline
    finally:
        gc.enable()
