"""A tcp-mode listener's sessions: connecting each to its upstream (the same round robin and
max_fails / fail_timeout bookkeeping as HTTP, `Upstream.pool`), and the drain on reload and
stop: sessions run on until they end or `shutdown_timeout`, then are closed cleanly."""

from __future__ import annotations

import asyncio
from typing import Callable

from .stream import End, Preamble, StreamConnectError, StreamRecord, StreamRelay
from .upstream import Upstream


def connector(upstream: Upstream):
    """A `Connector` over `upstream`'s servers: the next one in rotation; one that refuses or
    does not answer within connect_timeout counts as failed and the next is tried (nginx's
    proxy_next_upstream for streams), until each was tried once."""

    async def connect(factory: Callable[[str], asyncio.Protocol]
                      ) -> tuple[asyncio.Transport, str]:
        loop = asyncio.get_running_loop()
        tried: set[str] = set()
        timeout = upstream.section.connect_timeout
        while True:
            server = upstream.pool.pick(frozenset(tried))
            if server is None:
                raise StreamConnectError(End.UPSTREAM_REFUSED, "no upstream server to try")
            tried.add(server.address)
            try:
                transport, _ = await asyncio.wait_for(
                    loop.create_connection(lambda address=server.address: factory(address),
                                           server.host, server.port), timeout)
            except asyncio.TimeoutError:
                end, message = End.CONNECT_TIMEOUT, f"connect timed out after {timeout:g} s"
            except OSError as exc:
                end, message = End.UPSTREAM_REFUSED, f"connect failed: {exc.strerror or exc}"
            else:
                upstream.mark_ok(server)
                return transport, server.address  # type: ignore[return-value]
            upstream.mark_failed(server, message)
            if len(tried) >= len(upstream.pool.servers):
                raise StreamConnectError(end, message, server.address)

    return connect


class StreamServer:
    """Makes one `StreamRelay` per connection of a tcp listener and drains them all."""

    def __init__(self, upstream: Upstream, idle_timeout: float,
                 report: Callable[[StreamRecord], None], preamble: Preamble | None = None
                 ) -> None:
        """`preamble`: bytes for the upstream ahead of the client's (a PROXY v2 header)."""
        self._connect = connector(upstream)
        self._preamble = preamble
        self._idle_timeout = idle_timeout
        self._report = report
        self.connections: set[StreamRelay] = set()

    def __call__(self) -> StreamRelay:
        relay = StreamRelay(self._connect, self._idle_timeout, self._finished, self._preamble)
        self.connections.add(relay)
        return relay

    def _finished(self, relay: StreamRelay, record: StreamRecord) -> None:
        self.connections.discard(relay)
        self._report(record)

    async def shutdown(self, timeout: float) -> None:
        """Sessions end by themselves until `timeout`; the rest get close_notify then."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.connections and loop.time() < deadline:
            await asyncio.sleep(min(0.05, max(0.0, deadline - loop.time())))
        for relay in list(self.connections):
            relay.shutdown()
