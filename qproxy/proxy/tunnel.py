"""The byte tunnel after a 101 (WebSocket and other upgrades): its own protocol, installed
with `transport.set_protocol` in place of the HTTP one (uvicorn's way), so that HTTP parsing
has nothing to do with a connection once it stops speaking HTTP."""

from __future__ import annotations

import asyncio
from typing import Callable, Protocol


class TunnelPeer(Protocol):
    """The far end of a tunnel (the backend connection after a 101)."""

    closed: bool

    def write(self, data: bytes) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None: ...


class IdleTimer:
    """Calls `expired` once `timeout` seconds pass without `touch`: one timer, moved on only
    when it fires (cheaper than re-arming it per chunk)."""

    __slots__ = ("_loop", "_timeout", "_expired", "_last", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float,
                 expired: Callable[[], None]) -> None:
        self._loop = loop
        self._timeout = timeout
        self._expired = expired
        self._last = loop.time()
        self._timer: asyncio.TimerHandle | None = loop.call_at(self._last + timeout, self._due)

    def touch(self) -> None:
        self._last = self._loop.time()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _due(self) -> None:
        due = self._last + self._timeout
        if self._loop.time() < due:
            self._timer = self._loop.call_at(due, self._due)
            return
        self._timer = None
        self._expired()


class TunnelProtocol(asyncio.Protocol):
    """Relays the client's bytes to the peer and the peer's to the client until either side
    closes or no byte has crossed for `idle_timeout` (nginx's proxy_read_timeout on an upgraded
    connection, which also frees the backend connection of a client that vanished)."""

    __slots__ = ("_transport", "_peer", "_idle", "done", "bytes_in", "bytes_out", "_on_lost")

    def __init__(self, transport: asyncio.Transport, peer: TunnelPeer, idle_timeout: float,
                 on_lost: Callable[[Exception | None], None]) -> None:
        loop = asyncio.get_running_loop()
        self._transport = transport
        self._peer: TunnelPeer | None = peer
        self._idle = IdleTimer(loop, idle_timeout, self.end)
        self.done: asyncio.Future[None] = loop.create_future()
        self.bytes_in = 0  # from the client
        self.bytes_out = 0  # to the client
        self._on_lost = on_lost  # the HTTP connection still owns the connection's end

    # -- the client's side -------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._peer is not None:
            self.bytes_in += len(data)
            self._idle.touch()
            self._peer.write(data)

    def eof_received(self) -> bool:
        self.end()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.end()
        self._on_lost(exc)

    def pause_writing(self) -> None:
        if self._peer is not None:
            self._peer.pause_reading()

    def resume_writing(self) -> None:
        if self._peer is not None:
            self._peer.resume_reading()

    # -- the peer's side ---------------------------------------------------------------------
    def write_to_client(self, data: bytes) -> None:
        if self._peer is not None and not self._transport.is_closing():
            self.bytes_out += len(data)
            self._idle.touch()
            self._transport.write(data)

    def pause_client(self) -> None:
        """The peer cannot take more: stop reading the client."""
        if not self._transport.is_closing():
            self._transport.pause_reading()

    def resume_client(self) -> None:
        if not self._transport.is_closing():
            self._transport.resume_reading()

    def end(self) -> None:
        """Either side closed, or the tunnel went idle: close the other, once."""
        peer, self._peer = self._peer, None
        self._idle.stop()
        if peer is not None:
            peer.close()
        if not self.done.done():
            self.done.set_result(None)
