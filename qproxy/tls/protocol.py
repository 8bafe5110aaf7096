"""The asyncio edge of a TLS connection: socket transport below, HTTP protocol above.

`TlsServerProtocol` owns the socket transport, the timers and flow control, and drives a
`TlsServerMachine`. When the first request bytes arrive after the handshake it creates the
application protocol (`proxy.http.HttpProtocol`) and hands it a `TlsAppTransport`, which
encrypts what the application writes.
Modelled on CPython's `asyncio.sslproto`, with pyOpenSSL instead of `ssl`.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from OpenSSL import SSL

from . import deadlines
from .machine import (
    DataReceived,
    HandshakeComplete,
    HandshakeInfo,
    PeerClosed,
    TlsFailure,
    TlsServerMachine,
)

TLS_HANDSHAKE_RECORD = 0x16
_PLAIN_HTTP = re.compile(rb"^[A-Z]{3,7} ")
PLAIN_HTTP_RESPONSE = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n"
    b"Content-Length: 59\r\n\r\n"
    b"400 Bad Request: plain HTTP was sent to an HTTPS port.\r\n\r\n"
)
REQUEST_TIMEOUT_BODY = b"408 Request Timeout: the request headers did not arrive in time.\n"
LINGER_SECONDS = 2.0


@dataclass(frozen=True)
class Limits:
    handshake_timeout: float
    client_header_timeout: float


class ConnectionObserver(Protocol):
    """What the daemon wants to know about connections (logging and metrics)."""

    def handshake_done(self, peer: str, info: HandshakeInfo, seconds: float) -> None: ...
    def handshake_failed(self, peer: str, reason: str, alert: str | None, seconds: float) -> None: ...
    def tls_error(self, peer: str, reason: str, alert: str | None) -> None: ...
    def plain_http(self, peer: str) -> None: ...
    def request_timeout(self, peer: str, info: HandshakeInfo | None) -> None: ...
    def connection_closed(self) -> None: ...


def looks_like_plain_http(first_bytes: bytes) -> bool:
    return bool(first_bytes) and first_bytes[0] != TLS_HANDSHAKE_RECORD and bool(
        _PLAIN_HTTP.match(first_bytes))


def format_peer(peername: Any) -> str:
    if isinstance(peername, tuple) and len(peername) >= 2:
        host, port = peername[0], peername[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(peername)


class TlsServerProtocol(asyncio.Protocol):
    # Slots: one of these lives as long as each connection (an idle one too).
    __slots__ = ("_context_factory", "_app_factory", "_observer", "_limits", "_transport",
                 "_machine", "_app", "_app_transport", "_peer", "_started", "_first_data",
                 "_lingering", "_write_paused", "_timer", "_header_deadline", "_in_request",
                 "_closed")

    def __init__(
        self,
        context_factory: Callable[[], SSL.Context],
        app_factory: Callable[[], asyncio.Protocol],
        observer: ConnectionObserver,
        limits: Limits,
    ) -> None:
        self._context_factory = context_factory
        self._app_factory = app_factory
        self._observer = observer
        self._limits = limits
        self._transport: asyncio.Transport | None = None
        self._machine: TlsServerMachine | None = None
        self._app: asyncio.Protocol | None = None
        self._app_transport: TlsAppTransport | None = None
        self._peer = "-"
        self._started = 0.0
        self._first_data = True
        self._lingering = False
        self._write_paused = False
        self._timer: asyncio.TimerHandle | None = None
        self._header_deadline: float | None = None  # its key in the loop's `Deadlines`
        self._in_request = False
        self._closed = False

    # -- socket side ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._peer = format_peer(transport.get_extra_info("peername"))
        self._started = time.monotonic()
        self._machine = TlsServerMachine(self._context_factory())
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._limits.handshake_timeout, self._handshake_timed_out)

    def data_received(self, data: bytes) -> None:
        if self._lingering or self._machine is None:
            return
        if self._first_data:
            self._first_data = False
            if looks_like_plain_http(data[:8]):
                self._observer.plain_http(self._peer)
                self._cancel_timer()
                assert self._transport is not None
                self._transport.write(PLAIN_HTTP_RESPONSE)
                self._linger_close()
                return
        try:
            events = self._machine.receive(data)
        except TlsFailure as failure:
            self._tls_failed(failure)
            return
        self._flush()
        for event in events:
            if isinstance(event, DataReceived):
                self._deliver(event.data)
            elif isinstance(event, HandshakeComplete):
                self._handshake_complete(event.info)
            elif isinstance(event, PeerClosed):
                self._peer_closed()

    def eof_received(self) -> bool:
        handshaking = self._machine is not None and self._machine.info is None
        if handshaking and not self._lingering:
            self._cancel_timer()
            self._observer.handshake_failed(self._peer, "client closed the connection during "
                                            "the handshake", None, self._elapsed())
        elif self._app is not None:
            self._app.eof_received()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closed:
            return
        self._closed = True
        self._cancel_timer()
        self._cancel_header_timer()
        if self._app is not None:
            app, self._app = self._app, None
            app.connection_lost(exc)
        self._transport = None
        self._observer.connection_closed()

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._app is not None:
            self._app.pause_writing()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._app is not None:
            self._app.resume_writing()

    # -- TLS events ----------------------------------------------------------------------
    def _elapsed(self) -> float:
        return time.monotonic() - self._started

    def _handshake_complete(self, info: HandshakeInfo) -> None:
        self._cancel_timer()
        self._observer.handshake_done(self._peer, info, self._elapsed())
        assert self._transport is not None
        self._arm_header_timer()

    def _start_app(self) -> asyncio.Protocol:
        # The HTTP protocol (parser, buffers, a task) and its transport are made when the first
        # request bytes arrive, not at the handshake: an idle TLS connection then costs only
        # the TLS state.
        assert self._machine is not None and self._machine.info is not None
        self._app_transport = TlsAppTransport(self, self._machine.info)
        self._app = self._app_factory()
        self._app.connection_made(self._app_transport)
        if self._write_paused:
            self._app.pause_writing()
        return self._app

    def _deliver(self, plaintext: bytes) -> None:
        if self._machine is None or self._machine.info is None:
            return
        app = self._app or self._start_app()
        if not self._in_request and self._header_deadline is None:
            self._arm_header_timer()
        app.data_received(plaintext)

    def _peer_closed(self) -> None:
        if self._app is not None:
            self._app.eof_received()
        self._close_tls()

    def _tls_failed(self, failure: TlsFailure) -> None:
        self._cancel_timer()
        if failure.during_handshake:
            self._observer.handshake_failed(self._peer, failure.reason, failure.alert,
                                            self._elapsed())
        else:
            self._observer.tls_error(self._peer, failure.reason, failure.alert)
        self._flush()
        self._linger_close()

    def _handshake_timed_out(self) -> None:
        self._timer = None
        self._observer.handshake_failed(self._peer, "handshake timed out", None, self._elapsed())
        if self._transport is not None:
            self._transport.abort()

    # -- request-header deadline (the slowloris defence) ----------------------------------
    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_deadline = deadlines.for_running_loop().add(
            self._limits.client_header_timeout, self)

    def _cancel_header_timer(self) -> None:
        if self._header_deadline is not None:
            deadlines.for_running_loop().remove(self._header_deadline, self)
            self._header_deadline = None

    def deadline_passed(self) -> None:
        self._header_deadline = None
        self._header_timed_out()

    @property
    def awaiting_first_request(self) -> bool:
        """Handshake done, no request byte yet (no HTTP side made)."""
        return (self._machine is not None and self._machine.info is not None
                and self._app is None and not self._lingering and not self._closed)

    def close_if_idle(self) -> None:
        """At shutdown: close_notify to a connection that has not sent a request, which the
        HTTP side's drain does not see (it is made with the first request)."""
        if self.awaiting_first_request:
            self._close_tls()

    def request_started(self) -> None:
        self._in_request = True
        self._cancel_header_timer()

    def request_finished(self) -> None:
        self._in_request = False

    def _header_timed_out(self) -> None:
        if self._in_request or self._closed or self._machine is None:
            return
        info = self._machine.info
        self._observer.request_timeout(self._peer, info)
        head = (b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain\r\n"
                b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(REQUEST_TIMEOUT_BODY))
        self.write_plaintext(head + REQUEST_TIMEOUT_BODY)
        self._close_tls()

    # -- writing and closing -------------------------------------------------------------
    def write_plaintext(self, data: bytes) -> None:
        if self._machine is None or self._transport is None or self._lingering:
            return
        try:
            self._machine.send(data)
        except (TlsFailure, RuntimeError):
            self.abort()
            return
        self._flush()

    def _flush(self) -> None:
        if self._machine is None or self._transport is None:
            return
        out = self._machine.data_to_send()
        if out:
            self._transport.write(out)

    def _close_tls(self) -> None:
        """close_notify, then a half-close so the peer reads it before any TCP reset."""
        if self._machine is not None:
            self._machine.close()
            self._flush()
        self._linger_close()

    def _linger_close(self) -> None:
        # Closing a socket with unread input sends a RST, which can overtake our last bytes
        # (an alert, a 400): shut our side, read and drop what comes, then close.
        if self._lingering or self._transport is None:
            return
        self._lingering = True
        self._cancel_timer()
        self._cancel_header_timer()
        transport = self._transport
        if transport.can_write_eof():
            transport.write_eof()
            self._timer = asyncio.get_running_loop().call_later(LINGER_SECONDS, transport.close)
        else:
            transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def is_closing(self) -> bool:
        return self._closed or self._lingering or (
            self._transport is not None and self._transport.is_closing())

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    @property
    def socket_transport(self) -> asyncio.Transport | None:
        return self._transport


class TlsAppTransport(asyncio.Transport):
    """What the HTTP layer writes to: plaintext in, TLS records out."""

    __slots__ = ("_protocol", "info")

    def __init__(self, protocol: TlsServerProtocol, info: HandshakeInfo) -> None:
        super().__init__()
        self._protocol = protocol
        self.info = info

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "tls":
            return self.info
        transport = self._protocol.socket_transport
        return transport.get_extra_info(name, default) if transport else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if data:
            self._protocol.write_plaintext(bytes(data))

    def writelines(self, list_of_data) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False

    def is_closing(self) -> bool:
        return self._protocol.is_closing()

    def close(self) -> None:
        self._protocol._close_tls()

    def abort(self) -> None:
        self._protocol.abort()

    def pause_reading(self) -> None:
        transport = self._protocol.socket_transport
        if transport is not None and not transport.is_closing():
            transport.pause_reading()

    def resume_reading(self) -> None:
        transport = self._protocol.socket_transport
        if transport is not None and not transport.is_closing():
            transport.resume_reading()

    def is_reading(self) -> bool:
        transport = self._protocol.socket_transport
        return transport.is_reading() if transport is not None else False

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        transport = self._protocol.socket_transport
        if transport is not None:
            transport.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        transport = self._protocol.socket_transport
        return transport.get_write_buffer_size() if transport is not None else 0

    def request_started(self) -> None:
        self._protocol.request_started()

    def request_finished(self) -> None:
        self._protocol.request_finished()
