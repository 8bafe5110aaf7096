"""TCP mode: after the handshake, bytes are relayed both ways between the client and one
server of the listener's upstream (nginx's `stream`, HAProxy's `mode tcp`).

`StreamRelay` is the application protocol above the TLS connection (`TlsAppTransport`); an
`UpstreamSide` protocol carries the upstream socket's events back to it. Where the relay is
lives in one state (`RelayState`, with a transition table); how it ended in one `End`.

- Half-close passes through both ways: the client's close_notify (or FIN) becomes a
  shutdown(SHUT_WR) to the upstream; the upstream's FIN becomes our close_notify (and FIN)
  after everything it sent, while the client's bytes still flow up.
- Back-pressure both ways: a side whose write buffer is past its high-water mark pauses
  reading on the other side until it drains.
- `idle_timeout`: no byte either way for that long ends the session (close_notify).
- An upstream that cannot be reached, or that resets, ends the client's connection without
  close_notify (a TLS end without one tells the client the stream was cut, RFC 8446 6.1).
"""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from .tunnel import IdleTimer

UPSTREAM_HIGH_WATER = 64 * 1024
UPSTREAM_LOW_WATER = 16 * 1024


class RelayState(enum.Enum):
    CONNECTING = "connecting"  # the upstream connection is being made; client bytes wait
    OPEN = "open"
    CLIENT_ENDED = "client ended"  # the client's side ended; the upstream's write side shut
    UPSTREAM_ENDED = "upstream ended"  # the upstream's side ended; our close_notify sent
    CLOSED = "closed"


_TRANSITIONS = {
    RelayState.CONNECTING: {RelayState.OPEN, RelayState.CLIENT_ENDED, RelayState.CLOSED},
    RelayState.OPEN: {RelayState.CLIENT_ENDED, RelayState.UPSTREAM_ENDED, RelayState.CLOSED},
    RelayState.CLIENT_ENDED: {RelayState.CLOSED},
    RelayState.UPSTREAM_ENDED: {RelayState.CLOSED},
    RelayState.CLOSED: set(),
}


class End(enum.Enum):
    """How a session ended: the access log's `end` and a metric label (a closed set)."""

    DONE = "done"  # both sides ended their halves
    CLIENT_CLOSED = "client_closed"  # the client's connection went without a half-close
    UPSTREAM_CLOSED = "upstream_closed"  # the upstream's went without a half-close
    UPSTREAM_RESET = "upstream_reset"
    UPSTREAM_REFUSED = "upstream_refused"  # no server could be connected to
    CONNECT_TIMEOUT = "connect_timeout"
    IDLE_TIMEOUT = "idle_timeout"
    SHUTDOWN = "shutdown"  # the drain (reload, stop) ran out of shutdown_timeout


class StreamConnectError(Exception):
    """The upstream could not be reached: `end` says how, `server` which one was tried last."""

    def __init__(self, end: End, message: str, server: str | None = None) -> None:
        super().__init__(message)
        self.end = end
        self.server = server


# (protocol factory, called with the server's "host:port") -> (the upstream transport, that
# server). The protocol hears of its connection (connection_made) before the connector returns.
Connector = Callable[[Callable[[str], asyncio.Protocol]],
                     Awaitable[tuple[asyncio.Transport, str]]]

# What goes to the upstream before any client byte, made from the client's TLS transport
# (peername, sockname, get_extra_info("tls")): the seam for a PROXY protocol v2 header.
Preamble = Callable[[asyncio.BaseTransport], bytes]


@dataclass(frozen=True)
class StreamRecord:
    """One finished session, for the access log and the metrics."""

    client: str
    tls: Any  # the HandshakeInfo of the client's connection
    server: str | None
    bytes_up: int  # client -> upstream
    bytes_down: int  # upstream -> client
    seconds: float
    end: End
    error: str | None


class UpstreamSide(asyncio.Protocol):
    """The upstream socket's events, handed to the relay."""

    __slots__ = ("_relay", "_server")

    def __init__(self, relay: "StreamRelay", server: str) -> None:
        self._relay = relay
        self._server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._relay.upstream_connected(transport, self._server)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self._relay.upstream_data(data)

    def eof_received(self) -> bool:
        return self._relay.upstream_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        self._relay.upstream_lost(exc)

    def pause_writing(self) -> None:
        self._relay.upstream_full()

    def resume_writing(self) -> None:
        self._relay.upstream_drained()


class StreamRelay(asyncio.Protocol):
    def __init__(self, connect: Connector, idle_timeout: float,
                 done: Callable[["StreamRelay", StreamRecord], None],
                 preamble: Preamble | None = None) -> None:
        self._connect = connect
        self._preamble = preamble
        self._idle_timeout = idle_timeout
        self._done = done
        self.state = RelayState.CONNECTING
        self._client: asyncio.Transport | None = None
        self._upstream: asyncio.Transport | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._waiting: list[bytes] = []  # client bytes that came before the upstream was there
        # Each side said pause_writing and not yet resume_writing (asyncio says each once):
        # the other side stays paused, from its first read on.
        self._upstream_full = False
        self._client_full = False
        self._idle: IdleTimer | None = None
        self._started = time.monotonic()
        self._peer = "-"
        self.server: str | None = None
        self.bytes_up = 0
        self.bytes_down = 0

    def _set(self, new: RelayState) -> None:
        if new not in _TRANSITIONS[self.state]:
            raise RuntimeError(f"relay state {self.state.value} -> {new.value} is not allowed")
        self.state = new

    # -- the client's side (asyncio.Protocol on the TLS app transport) -------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._client = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self._peer = (f"[{peer[0]}]:{peer[1]}" if ":" in str(peer[0]) else f"{peer[0]}:{peer[1]}"
                      ) if isinstance(peer, tuple) else str(peer or "-")
        loop = asyncio.get_running_loop()
        self._idle = IdleTimer(loop, self._idle_timeout, self._went_idle)
        self._connecting = loop.create_task(self._open_upstream())

    async def _open_upstream(self) -> None:
        try:
            await self._connect(lambda server: UpstreamSide(self, server))
        except StreamConnectError as exc:
            self._connecting = None
            self.server = exc.server
            self._finish(exc.end, str(exc), cut=True)
            return
        self._connecting = None

    def upstream_connected(self, transport: asyncio.Transport, server: str) -> None:
        """The upstream's connection is made: taken at once, not when the connector returns,
        since a server that speaks first (a banner, a greeting) may be read in between."""
        if self.state is RelayState.CLOSED or self._upstream is not None:
            transport.close()  # the client left meanwhile
            return
        self.server = server
        self._upstream = transport
        transport.set_write_buffer_limits(UPSTREAM_HIGH_WATER, UPSTREAM_LOW_WATER)
        if self._client_full:  # the client was not reading before the upstream was there
            transport.pause_reading()
        if self._preamble is not None and self._client is not None:
            transport.write(self._preamble(self._client))
        waiting, self._waiting = self._waiting, []
        for chunk in waiting:
            transport.write(chunk)
        if self.state is RelayState.CLIENT_ENDED:
            self._shut_upstream_write()
        else:
            self._set(RelayState.OPEN)
            if not self._upstream_full:  # what waited may have filled it already
                self._resume(self._client)

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state is RelayState.OPEN or state is RelayState.UPSTREAM_ENDED:
            self.bytes_up += len(data)
            if self._idle is not None:
                self._idle.touch()
            assert self._upstream is not None
            self._upstream.write(data)
        elif state is RelayState.CONNECTING:
            # At most what one read of the client brings: it stops being read until then.
            self.bytes_up += len(data)
            self._waiting.append(data)
            self._pause(self._client)

    def eof_received(self) -> bool:
        """The client's close_notify (or FIN): shut the upstream's write side, keep reading it."""
        state = self.state
        if state is RelayState.UPSTREAM_ENDED:
            self._finish(End.DONE, None)
            return False
        if state is RelayState.OPEN:
            self._set(RelayState.CLIENT_ENDED)
            self._shut_upstream_write()
        elif state is RelayState.CONNECTING:
            self._set(RelayState.CLIENT_ENDED)
        return state is not RelayState.CLOSED

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state is not RelayState.CLOSED:
            self._finish(End.CLIENT_CLOSED, str(exc) if exc else None)
        self._client = None

    def pause_writing(self) -> None:
        """The client is not reading fast enough: stop reading the upstream."""
        self._client_full = True
        self._pause(self._upstream)

    def resume_writing(self) -> None:
        self._client_full = False
        self._resume(self._upstream)

    # -- the upstream's side ---------------------------------------------------------------
    def upstream_data(self, data: bytes) -> None:
        state = self.state
        if state is RelayState.OPEN or state is RelayState.CLIENT_ENDED:
            self.bytes_down += len(data)
            if self._idle is not None:
                self._idle.touch()
            assert self._client is not None
            self._client.write(data)

    def upstream_eof(self) -> bool:
        """The upstream's FIN: our close_notify after what it sent; the client may go on."""
        state = self.state
        if state is RelayState.CLIENT_ENDED:
            self._finish(End.DONE, None)
            return False
        if state is RelayState.OPEN:
            self._set(RelayState.UPSTREAM_ENDED)
            assert self._client is not None
            if self._client.can_write_eof():
                self._client.write_eof()
            return True
        return False

    def upstream_lost(self, exc: Exception | None) -> None:
        if self.state is RelayState.CLOSED:
            return
        if exc is not None:
            self._finish(End.UPSTREAM_RESET, str(exc) or type(exc).__name__, cut=True)
        else:
            self._finish(End.UPSTREAM_CLOSED, None)

    def upstream_full(self) -> None:
        self._upstream_full = True
        self._pause(self._client)

    def upstream_drained(self) -> None:
        self._upstream_full = False
        if self.state is not RelayState.CONNECTING:
            self._resume(self._client)

    # -- ending ------------------------------------------------------------------------------
    def _went_idle(self) -> None:
        self._finish(End.IDLE_TIMEOUT, None)

    def shutdown(self) -> None:
        """The drain ran out: close_notify to the client, close the upstream."""
        self._finish(End.SHUTDOWN, None)

    def _shut_upstream_write(self) -> None:
        upstream = self._upstream
        if upstream is not None and upstream.can_write_eof() and not upstream.is_closing():
            upstream.write_eof()

    def _finish(self, end: End, error: str | None, cut: bool = False) -> None:
        """Once: both connections closed and the session reported. `cut`: the client's
        connection ends without close_notify (the stream was broken, not finished)."""
        if self.state is RelayState.CLOSED:
            return
        self._set(RelayState.CLOSED)
        if self._idle is not None:
            self._idle.stop()
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        upstream, self._upstream = self._upstream, None
        if upstream is not None:
            if end is End.CLIENT_CLOSED:
                upstream.abort()  # nobody is left to read what it would still send
            else:
                upstream.close()
        client = self._client
        if client is not None and not client.is_closing():
            cut_off = getattr(client, "response_cut", None) if cut else None
            if cut_off is not None:
                cut_off()
            else:
                client.close()
        self._waiting = []
        self._done(self, StreamRecord(self._peer, _tls_of(client), self.server, self.bytes_up,
                                      self.bytes_down, time.monotonic() - self._started, end,
                                      error))

    @staticmethod
    def _pause(transport: asyncio.Transport | None) -> None:
        if transport is not None and not transport.is_closing():
            transport.pause_reading()

    @staticmethod
    def _resume(transport: asyncio.Transport | None) -> None:
        if transport is not None and not transport.is_closing():
            transport.resume_reading()


def _tls_of(transport: asyncio.BaseTransport | None) -> Any:
    return transport.get_extra_info("tls") if transport is not None else None
