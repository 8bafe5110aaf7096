"""The asyncio edge of a TLS connection: socket transport below, HTTP protocol above.

`TlsServerProtocol` owns the socket transport, the timers and flow control, and drives a
`TlsServerMachine`. When the first request bytes arrive after the handshake it creates the
application protocol (`proxy.http.HttpProtocol`) and hands it a `TlsAppTransport`, which
encrypts what the application writes.
Modelled on CPython's `asyncio.sslproto`, with pyOpenSSL instead of `ssl`.
"""

from __future__ import annotations

import asyncio
import enum
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from OpenSSL import SSL

from . import deadlines
from .preface import PrefacePolicy, PrefaceRefused, PrefaceReader
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
_PLAIN_HTTP_BODY = b"400 Bad Request: plain HTTP was sent to an HTTPS port.\r\n\r\n"
PLAIN_HTTP_RESPONSE = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_PLAIN_HTTP_BODY), _PLAIN_HTTP_BODY)
)
LINGER_SECONDS = 2.0
# The socket transport pauses the application past this much unsent ciphertext, so a client
# that does not read holds at most this much (plus one write) of ours.
WRITE_HIGH_WATER = 64 * 1024
WRITE_LOW_WATER = 16 * 1024
# Plaintext is encrypted this much at a time and its records handed on at once: OpenSSL's
# output memory BIO keeps the capacity of the largest write it ever held.
ENCRYPT_SLICE = 64 * 1024


@dataclass(frozen=True)
class Limits:
    handshake_timeout: float
    client_header_timeout: float
    # Read before TLS (server.proxy_protocol: a load balancer's PROXY header); None: nothing.
    preface: PrefacePolicy | None = None
    # A byte stream (tcp mode) rather than requests: the application protocol starts at the
    # handshake, not at the first byte (the upstream may speak first, and the connection to
    # it is made at once), and no request-head deadline applies (its idle_timeout does).
    stream: bool = False


class ConnectionObserver(Protocol):
    """What the daemon wants to know about connections (logging and metrics)."""

    def handshake_done(self, peer: str, info: HandshakeInfo, seconds: float) -> None: ...
    def handshake_failed(self, peer: str, reason: str, alert: str | None, seconds: float) -> None: ...
    def tls_error(self, peer: str, reason: str, alert: str | None) -> None: ...
    def plain_http(self, peer: str) -> None: ...
    def preface_refused(self, peer: str, reason: str, detail: str) -> None: ...
    def request_timeout(self, peer: str, info: HandshakeInfo | None) -> None: ...
    def connection_closed(self) -> None: ...


class AdmissionGate(Protocol):
    """Access control's say on a new connection (`proxy.access`): asked once, with the
    client's address, before the handshake; what it returns is kept for the connection (the
    HTTP side reads it as `get_extra_info("access")`) and released when it closes. In tcp
    mode (`Limits.stream`) there is no request to answer a refusal to, so the gate is asked
    whether to close: before the handshake, and right after it (the client certificate)."""

    def admit(self, address: str) -> Any: ...
    def refuses_now(self, admission: Any) -> bool: ...
    def refuses_established(self, admission: Any, info: HandshakeInfo) -> bool: ...


class AppProtocol(Protocol):
    """What the TLS side asks of the application protocol above it (`proxy.http`), besides
    asyncio.Protocol's callbacks (each called once, in order: connection_made, data_received
    and eof_received, connection_lost)."""

    def request_head_timed_out(self) -> None:
        """The request head did not arrive within client_header_timeout: answer (408) and
        close. Only called between requests that have begun to arrive."""


def looks_like_plain_http(first_bytes: bytes) -> bool:
    return bool(first_bytes) and first_bytes[0] != TLS_HANDSHAKE_RECORD and bool(
        _PLAIN_HTTP.match(first_bytes))


def format_peer(peername: Any) -> str:
    if isinstance(peername, tuple) and len(peername) >= 2:
        host, port = peername[0], peername[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(peername)


class Phase(enum.Enum):
    """The socket's side of the connection."""

    PREFACE = "preface"  # reading a PROXY header before any TLS byte (Limits.preface)
    NEW = "new"  # nothing received yet (the first bytes are checked for plain HTTP)
    READING = "reading"
    INPUT_ENDED = "input ended"  # the peer's TCP FIN: we may still write
    OUTPUT_ENDED = "output ended"  # our close_notify and FIN sent (tcp mode): we still read
    LINGERING = "lingering"  # our side shut; what comes is read and dropped until the close
    CLOSED = "closed"


_PHASES = {
    Phase.PREFACE: {Phase.NEW, Phase.CLOSED},
    Phase.NEW: {Phase.READING, Phase.INPUT_ENDED, Phase.LINGERING, Phase.CLOSED},
    Phase.READING: {Phase.INPUT_ENDED, Phase.OUTPUT_ENDED, Phase.LINGERING, Phase.CLOSED},
    Phase.INPUT_ENDED: {Phase.LINGERING, Phase.CLOSED},
    Phase.OUTPUT_ENDED: {Phase.LINGERING, Phase.CLOSED},
    Phase.LINGERING: {Phase.CLOSED},
    Phase.CLOSED: set(),
}


class AppPhase(enum.Enum):
    """Where the application protocol is in its lifecycle: each callback at most once, in
    this order (asyncio's contract, which a TLS layer could otherwise break: close_notify
    and then the TCP FIN are two ends of input)."""

    NONE = "none"  # not made yet: no request byte has arrived
    OPEN = "open"
    INPUT_ENDED = "input ended"  # eof_received delivered
    LOST = "lost"  # connection_lost delivered


_APP_PHASES = {
    AppPhase.NONE: {AppPhase.OPEN},
    AppPhase.OPEN: {AppPhase.INPUT_ENDED, AppPhase.LOST},
    AppPhase.INPUT_ENDED: {AppPhase.LOST},
    AppPhase.LOST: set(),
}


class TlsServerProtocol(asyncio.Protocol):
    """The socket side of one TLS connection, and the application protocol's lifecycle.

    Longer than our ~250-line rule, for a reason: one of these lives as long as each
    connection, idle ones included, and the idle-connection memory target counts its bytes;
    the request-head deadline, the lingering close, the app's lifecycle and the PROXY
    preface (its reader lives only until the header is read) kept here cost a few slots,
    where helper objects would cost an object each per idle connection. Each job
    has its own section below and its own state (`Phase`, `AppPhase`, the machine's)."""

    # Slots: one of these lives as long as each connection (an idle one too).
    __slots__ = ("_context_factory", "_app_factory", "_observer", "_limits", "_transport",
                 "_machine", "_app", "_app_phase", "_peer", "_started", "_phase",
                 "_write_paused", "_timer", "_header_deadline", "_in_request", "_client",
                 "_destination", "_preface", "_gate", "_admission")

    def __init__(
        self,
        context_factory: Callable[[], SSL.Context],
        app_factory: Callable[[], asyncio.Protocol],
        observer: ConnectionObserver,
        limits: Limits,
        gate: AdmissionGate | None = None,
    ) -> None:
        self._context_factory = context_factory
        self._app_factory = app_factory
        self._observer = observer
        self._limits = limits
        self._transport: asyncio.Transport | None = None
        self._machine: TlsServerMachine | None = None
        self._app: asyncio.Protocol | None = None
        self._app_phase = AppPhase.NONE
        self._peer = "-"
        self._started = 0.0
        self._phase = Phase.NEW
        self._write_paused = False
        self._timer: asyncio.TimerHandle | None = None
        self._header_deadline: float | None = None  # its key in the loop's `Deadlines`
        self._in_request = False
        self._client: Any = None  # the real client: the socket's peer, or a PROXY header's
        self._destination: Any = None  # what that client connected to, per a PROXY header
        self._preface: PrefaceReader | None = None
        self._gate = gate
        self._admission: Any = None

    @property
    def client_address(self) -> Any:
        """The client's (host, port): from the load balancer's PROXY header when one was
        accepted, else the socket's peer. Logs, X-Forwarded-For and address rules read this
        (the HTTP side as `get_extra_info("peername")` of its transport)."""
        return self._client

    @property
    def destination_address(self) -> Any:
        """The (host, port) the client connected to: a PROXY header's destination (what
        HAProxy relays onward too), else our socket's own address (`sockname` upstairs)."""
        if self._destination is not None:
            return self._destination
        return self._transport.get_extra_info("sockname") if self._transport else None

    @property
    def admission(self) -> Any:
        """What access control decided when the client became known (`AdmissionGate`)."""
        return self._admission

    def _client_known(self) -> bool:
        """The real client is known (at connect, or after its PROXY header): access control
        admits it or not, before any TLS work. False: refused, and closed now (tcp mode; HTTP
        answers the refusal to the first request, `get_extra_info("access")`)."""
        gate = self._gate
        if gate is None:
            return True
        client = self._client
        host = str(client[0]) if isinstance(client, tuple) and client else ""
        self._admission = gate.admit(host)
        if self._limits.stream and gate.refuses_now(self._admission):
            self._cancel_timer()
            if self._transport is not None:
                self._transport.close()
            return False
        return True

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def app_phase(self) -> AppPhase:
        return self._app_phase

    def _set_phase(self, new: Phase) -> None:
        if new not in _PHASES[self._phase]:
            raise RuntimeError(f"connection phase {self._phase.value} -> {new.value} is not "
                               "allowed")
        self._phase = new

    def _set_app_phase(self, new: AppPhase) -> bool:
        """Move the application on; False (and nothing happens) if it was already there."""
        if new not in _APP_PHASES[self._app_phase]:
            return False
        self._app_phase = new
        return True

    # -- socket side ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(WRITE_HIGH_WATER, WRITE_LOW_WATER)  # type: ignore[attr-defined]
        self._client = transport.get_extra_info("peername")
        self._peer = format_peer(self._client)
        self._started = time.monotonic()
        self._machine = TlsServerMachine(self._context_factory())
        loop = asyncio.get_running_loop()
        policy = self._limits.preface
        if policy is None:
            self._timer = loop.call_later(self._limits.handshake_timeout,
                                          self._handshake_timed_out)
            self._client_known()  # a refusal closes: nothing more to set up either way
            return
        self._phase = Phase.PREFACE  # the first phase of such a connection, not a transition
        reader = policy.reader(self._client)
        if isinstance(reader, PrefaceRefused):
            self._refuse_preface(reader)
            return
        self._preface = reader
        self._timer = loop.call_later(policy.timeout, self._preface_timed_out)

    def data_received(self, data: bytes) -> None:
        phase = self._phase
        if phase is not Phase.READING and phase is not Phase.OUTPUT_ENDED:
            if phase is Phase.PREFACE:
                data = self._read_preface(data)
                if not data:
                    return
            elif phase is not Phase.NEW or self._machine is None:
                return  # lingering (or closed): read and dropped
            self._set_phase(Phase.READING)
            if looks_like_plain_http(data[:8]):
                self._observer.plain_http(self._peer)
                self._cancel_timer()
                assert self._transport is not None
                self._transport.write(PLAIN_HTTP_RESPONSE)
                self._linger_close()
                return
        assert self._machine is not None
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
        """The peer's TCP FIN. Returns True (keep our writing half open) while the application
        still has something to say, as after a TLS half-close."""
        if self._phase in (Phase.LINGERING, Phase.CLOSED):
            return False
        silent = self._phase is Phase.NEW
        if self._phase is Phase.PREFACE:
            if self._preface is not None:
                self._refuse_preface(self._preface.ended())
            return False
        if self._phase is Phase.OUTPUT_ENDED:  # both ways done: the app hears it, we close
            self._app_eof()
            self._set_phase(Phase.LINGERING)
            return False
        self._set_phase(Phase.INPUT_ENDED)
        handshaking = self._machine is not None and self._machine.info is None
        if handshaking:
            self._cancel_timer()
            # Closed before its first byte: a browser's unused pre-connection, not a failure
            # of anything (the observer counts it and logs it at debug).
            reason = ("client closed the connection before sending anything" if silent else
                      "client closed the connection during the handshake")
            self._observer.handshake_failed(self._peer, reason, None, self._elapsed())
            return False
        if self._app is None:
            return False  # nothing was asked: nothing to answer
        if not self._app_eof():
            self._close_tls()
        return self._phase is Phase.INPUT_ENDED

    def connection_lost(self, exc: Exception | None) -> None:
        if self._phase is Phase.CLOSED:
            return
        self._set_phase(Phase.CLOSED)
        self._cancel_timer()
        self._cancel_header_timer()
        app = self._app
        if app is not None and self._set_app_phase(AppPhase.LOST):
            app.connection_lost(exc)
        # The application and its transport point back at us, and the machine's SSL object at
        # the machine: without these cuts a closed connection's OpenSSL state (tens of KB) waits
        # for a full garbage collection, which a worker past a burst of slow clients may not run
        # for a long time.
        self._app = None
        self._preface = None
        machine, self._machine = self._machine, None
        if machine is not None:
            machine.release()
        self._transport = None
        admission, self._admission = self._admission, None
        if admission is not None:
            admission.release()
        self._observer.connection_closed()

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._app is not None and self._app_phase is not AppPhase.LOST:
            self._app.pause_writing()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._app is not None and self._app_phase is not AppPhase.LOST:
            self._app.resume_writing()

    # -- the preface (a load balancer's PROXY header) -----------------------------------
    def _read_preface(self, data: bytes) -> bytes:
        """Feed the preface reader; the bytes after a complete preface (for TLS), else b"".
        A header split over reads is kept by the reader until it is whole."""
        reader = self._preface
        if reader is None:
            return b""  # refused: the close is under way
        outcome = reader.feed(data)
        if outcome is None:
            return b""
        if isinstance(outcome, PrefaceRefused):
            self._refuse_preface(outcome)
            return b""
        self._preface = None
        if outcome.client is not None:
            self._client, self._destination = outcome.client, outcome.destination
            self._peer = format_peer(outcome.client)
        if not self._client_known():
            return b""
        self._set_phase(Phase.NEW)
        self._cancel_timer()
        self._started = time.monotonic()  # the handshake's time starts after the header
        self._timer = asyncio.get_running_loop().call_later(self._limits.handshake_timeout,
                                                            self._handshake_timed_out)
        return outcome.rest

    def _refuse_preface(self, refused: PrefaceRefused) -> None:
        """One log line and a count, then close: nothing is said to a peer that did not
        send a usable header (it may not even be the load balancer)."""
        self._cancel_timer()
        self._preface = None
        self._observer.preface_refused(self._peer, refused.reason, refused.detail)
        if self._transport is not None:
            self._transport.close()

    def _preface_timed_out(self) -> None:
        self._timer = None
        policy = self._limits.preface
        self._refuse_preface(PrefaceRefused(
            "timeout", f"no complete PROXY header within {policy.timeout if policy else 0:g} s"))

    # -- the application protocol ------------------------------------------------------
    def _app_eof(self) -> bool:
        """Tell the application its input ended (once). True: it keeps the connection open
        to finish; False: it has nothing more to say, so we close."""
        app = self._app
        if app is None or not self._set_app_phase(AppPhase.INPUT_ENDED):
            return True  # already told: its answer then still stands
        return bool(app.eof_received())

    def set_app(self, protocol: asyncio.Protocol) -> None:
        """Another protocol takes over the application side (an upgrade's byte tunnel)."""
        if self._app_phase is AppPhase.LOST:
            raise RuntimeError("the connection is lost: no protocol can take it over")
        self._app = protocol
        if self._write_paused:
            protocol.pause_writing()

    @property
    def app(self) -> asyncio.Protocol | None:
        return self._app

    # -- TLS events ----------------------------------------------------------------------
    def _elapsed(self) -> float:
        return time.monotonic() - self._started

    def _handshake_complete(self, info: HandshakeInfo) -> None:
        self._cancel_timer()
        self._observer.handshake_done(self._peer, info, self._elapsed())
        assert self._transport is not None
        if self._limits.stream:
            gate = self._gate
            if gate is not None and gate.refuses_established(self._admission, info):
                self._close_tls()  # tcp mode: no answer to give, close_notify and go
                return
            self._start_app()
        else:
            self._arm_header_timer()

    def _start_app(self) -> asyncio.Protocol:
        # The HTTP protocol (parser, buffers, a task) and its transport are made when the first
        # request bytes arrive, not at the handshake: an idle TLS connection then costs only
        # the TLS state.
        assert self._machine is not None and self._machine.info is not None
        app = self._app = self._app_factory()
        self._set_app_phase(AppPhase.OPEN)
        app.connection_made(TlsAppTransport(self, self._machine.info))
        if self._write_paused:
            app.pause_writing()
        return app

    def _deliver(self, plaintext: bytes) -> None:
        if self._machine is None or self._machine.info is None:
            return
        app = self._app or self._start_app()
        if self._app_phase is not AppPhase.OPEN:
            return  # lost (or ended) meanwhile
        if not self._in_request and self._header_deadline is None and not self._limits.stream:
            self._arm_header_timer()
        app.data_received(plaintext)

    def _peer_closed(self) -> None:
        """The peer's close_notify: the request in hand is still answered (RFC 8446 6.1)."""
        if self._app is None or not self._app_eof():
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
                and self._app is None and self._phase is Phase.READING)

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
        if self._in_request or self._phase in (Phase.LINGERING, Phase.CLOSED) or (
                self._machine is None):
            return
        app = self._app
        if app is None or self._app_phase is not AppPhase.OPEN:
            # Not one request byte since the handshake: close (with close_notify) and answer
            # nothing, as nginx does. Nobody is waiting for an answer, and an unasked 408
            # could be read by a client as the answer to a request it sends meanwhile.
            self._close_tls()
            return
        self._observer.request_timeout(self._peer, self._machine.info)
        app.request_head_timed_out()  # type: ignore[attr-defined]

    # -- writing and closing -------------------------------------------------------------
    def write_plaintext(self, data: bytes) -> None:
        machine = self._machine
        if machine is None or self._transport is None or self._phase in (
                Phase.LINGERING, Phase.CLOSED, Phase.OUTPUT_ENDED):
            return
        try:
            if len(data) <= ENCRYPT_SLICE:
                machine.send(data)
                self._flush()
                return
            view = memoryview(data)
            for start in range(0, len(data), ENCRYPT_SLICE):
                machine.send(bytes(view[start:start + ENCRYPT_SLICE]))
                self._flush()
        except (TlsFailure, RuntimeError):
            self.abort()

    def _flush(self) -> None:
        if self._machine is None or self._transport is None:
            return
        out = self._machine.data_to_send()
        if out:
            self._transport.write(out)

    def _close_tls(self) -> None:
        """close_notify, then a half-close so the peer reads it before any TCP reset."""
        if self._phase in (Phase.LINGERING, Phase.CLOSED):
            return
        if self._machine is not None:
            self._machine.close()
            self._flush()
        self._linger_close()

    def close_write(self) -> None:
        """close_notify and a TCP FIN, reading on (tcp mode: the upstream ended its side, the
        client may still be sending). After the client's FIN it is a full close."""
        if self._phase is not Phase.READING or self._machine is None:
            self._close_tls()
            return
        self._machine.close_write()
        self._flush()
        self._set_phase(Phase.OUTPUT_ENDED)
        assert self._transport is not None
        if self._transport.can_write_eof():
            self._transport.write_eof()

    def close_without_notify(self) -> None:
        """Close after what is written, with no close_notify: a response was cut off, and a
        TLS end without close_notify is how the client tells truncation from a whole
        close-delimited body (RFC 8446 6.1; nginx shuts down quietly after an error too)."""
        self._linger_close()

    def _linger_close(self) -> None:
        # Closing a socket with unread input sends a RST, which can overtake our last bytes
        # (an alert, a 400): shut our side, read and drop what comes, then close. When the
        # peer has already shut its side there is nothing to drain: close once all is sent.
        if self._phase in (Phase.LINGERING, Phase.CLOSED) or self._transport is None:
            return
        input_ended = self._phase is Phase.INPUT_ENDED
        output_ended = self._phase is Phase.OUTPUT_ENDED
        self._set_phase(Phase.LINGERING)
        self._cancel_timer()
        self._cancel_header_timer()
        transport = self._transport
        if not input_ended and (output_ended or transport.can_write_eof()):
            if not output_ended:
                transport.write_eof()
            self._timer = asyncio.get_running_loop().call_later(LINGER_SECONDS, transport.close)
        else:
            transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def is_closing(self) -> bool:
        return self._phase in (Phase.LINGERING, Phase.CLOSED) or (
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
        if name == "access":
            return self._protocol.admission
        if name == "peername":
            return self._protocol.client_address
        if name == "sockname":
            return self._protocol.destination_address
        transport = self._protocol.socket_transport
        return transport.get_extra_info(name, default) if transport else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if data:
            self._protocol.write_plaintext(bytes(data))

    def writelines(self, list_of_data) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        """close_notify and FIN, reading on (what a byte relay passes on)."""
        self._protocol.close_write()

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

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol.set_app(protocol)  # type: ignore[arg-type]

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol.app  # type: ignore[return-value]

    # The HTTP side's RequestLifecycle (proxy.connection): the request-head deadline stops
    # while a request is in hand.
    def request_started(self) -> None:
        self._protocol.request_started()

    def request_finished(self) -> None:
        self._protocol.request_finished()

    def response_cut(self) -> None:
        self._protocol.close_without_notify()
