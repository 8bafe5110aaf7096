"""A request handler that raises, in process: the HTTP/1.1 protocol answers 500 (or, once the
head is out, cuts the response off) and logs it, instead of leaving the client hanging.

Nothing in the real proxy handler raises on purpose, so the protocol is driven here with a
handler that does, over a recording transport on a real event loop (milliseconds)."""

from __future__ import annotations

import asyncio

import h11

from qproxy.config.model import ServerSection
from qproxy.proxy.http import HttpServer


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False
        self.protocol: asyncio.Protocol | None = None

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data) -> None:
        assert not self.closed, "written after close"
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            assert self.protocol is not None
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    abort = close

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        pass


def _responses(data: bytes) -> list[object]:
    """The events an independent HTTP/1.1 client parser (h11) reads from the bytes."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    client.send(h11.EndOfMessage())
    client.receive_data(bytes(data))
    events = []
    while True:
        try:
            event = client.next_event()
        except h11.RemoteProtocolError as exc:
            events.append(exc)
            break
        if event in (h11.NEED_DATA, h11.PAUSED):
            break
        events.append(event)
        if isinstance(event, h11.EndOfMessage):
            break
    return events


async def _serve(handler, raw: bytes) -> tuple[RecordingTransport, list, HttpServer]:
    errors: list[tuple[str, int, str]] = []
    server = HttpServer(handler, ServerSection(), lambda remote, status, text: errors.append(
        (remote, status, text)))
    protocol = server()
    transport = RecordingTransport()
    transport.protocol = protocol
    protocol.connection_made(transport)
    protocol.data_received(raw)
    for _ in range(200):  # bounded: the handler task and the close each take a loop turn
        if transport.closed and not server.connections:
            break
        await asyncio.sleep(0)
    return transport, errors, server


def test_handler_raising_before_the_response_is_answered_500_and_logged():
    async def handler(request, responder):
        raise KeyError("a bug")

    async def run():
        return await _serve(handler, b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n")

    transport, errors, server = asyncio.run(run())
    response, *_ = _responses(transport.written)
    assert isinstance(response, h11.Response) and response.status_code == 500
    assert (b"connection", b"close") in [(k.lower(), v.lower()) for k, v in response.headers]
    assert transport.closed and not server.connections
    assert len(errors) == 1 and errors[0][1] == 500 and "KeyError" in errors[0][2]


def test_handler_raising_mid_stream_leaves_the_body_visibly_unfinished():
    async def handler(request, responder):
        responder.start_response(request, 200, "OK", [(b"Content-Type", b"text/plain")], None)
        await responder.write_body(b"partial")
        raise RuntimeError("a bug after the head")

    async def run():
        return await _serve(handler, b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")

    transport, errors, server = asyncio.run(run())
    events = _responses(transport.written)
    assert isinstance(events[0], h11.Response) and events[0].status_code == 200
    assert b"".join(e.data for e in events if isinstance(e, h11.Data)) == b"partial"
    assert not any(isinstance(e, h11.EndOfMessage) for e in events)  # no last chunk
    assert b"500" not in bytes(transport.written).split(b"\r\n", 1)[1]
    assert transport.closed and not server.connections
    assert [e[1] for e in errors] == [500]
