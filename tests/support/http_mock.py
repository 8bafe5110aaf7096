"""In-process doubles for the HTTP layer's tests (uvicorn's MockTransport): a transport that
records what is written and what the protocol asked of it, and a server around a handler."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import h11

from qproxy.config.model import ServerSection
from qproxy.proxy.http import HttpServer


class MockTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False
        self.aborted = False
        self.reading = True
        self.protocol: asyncio.BaseProtocol | None = None
        self.started = 0
        self.finished = 0
        self.cut = 0  # responses the connection said were cut off (RequestLifecycle)

    # asyncio.Transport
    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            protocol = self.protocol
            asyncio.get_running_loop().call_soon(protocol.connection_lost, None)

    def abort(self) -> None:
        self.aborted = True
        self.close()

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.protocol

    # proxy.connection.RequestLifecycle
    def request_started(self) -> None:
        self.started += 1

    def request_finished(self) -> None:
        self.finished += 1

    def response_cut(self) -> None:
        self.cut += 1

    def take(self) -> bytes:
        data = bytes(self.written)
        self.written.clear()
        return data


Handler = Callable[..., Awaitable[None]]


def section(**overrides: Any) -> ServerSection:
    return ServerSection(**overrides)


class Harness:
    """One connection of an `HttpServer` over a `MockTransport`."""

    def __init__(self, handler: Handler, **settings: Any) -> None:
        self.errors: list[tuple[int, str]] = []
        self.server = HttpServer(handler, section(**settings),
                                 lambda remote, status, text: self.errors.append((status, text)))
        self.transport = MockTransport()
        self.protocol = self.server()
        self.transport.protocol = self.protocol
        self.protocol.connection_made(self.transport)

    def feed(self, data: bytes) -> None:
        self.transport.protocol.data_received(data)  # type: ignore[union-attr]

    async def settle(self, rounds: int = 20) -> None:
        for _ in range(rounds):
            await asyncio.sleep(0)

    async def until(self, predicate: Callable[[], bool], timeout: float = 2.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.001)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes = b""
    trailers: dict[str, str] = field(default_factory=dict)


def responses(data: bytes, methods: list[bytes] | None = None) -> list[Response]:
    """The responses in `data` (100 Continue included), parsed by h11, an independent parser.
    `methods`: the request methods in turn (HEAD changes framing)."""
    pending = list(methods or [])
    conn = h11.Connection(h11.CLIENT)

    def ask() -> None:
        conn.send(h11.Request(method=pending.pop(0) if pending else b"GET", target="/",
                              headers=[("Host", "x")]))
        conn.send(h11.EndOfMessage())

    ask()
    if not data:
        return []  # (h11 takes b"" for the end of the connection)
    conn.receive_data(data)
    out: list[Response] = []
    current: Response | None = None
    while True:
        event = conn.next_event()
        if event is h11.PAUSED and conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            ask()
            continue
        if event is h11.NEED_DATA or event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
            return out
        if isinstance(event, (h11.Response, h11.InformationalResponse)):
            current = Response(event.status_code, {k.decode().lower(): v.decode()
                                                   for k, v in event.headers})
            if isinstance(event, h11.InformationalResponse):
                out.append(current)
        elif isinstance(event, h11.Data):
            assert current is not None
            current.body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert current is not None
            current.trailers = {k.decode().lower(): v.decode() for k, v in event.headers}
            out.append(current)
