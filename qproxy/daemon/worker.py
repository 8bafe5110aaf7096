"""A worker process: one uvloop event loop serving TLS connections on the inherited listener."""

from __future__ import annotations

import asyncio
import os
import signal
import socket

from OpenSSL import SSL

from ..config.model import ServerConfig
from ..observability.logging import get_logger, reopen_log_files
from ..observability import cert_expiry
from ..observability.metrics import Metrics
from ..proxy.handler import ProxyHandler
from ..proxy.http import HttpServer
from ..proxy.upstream import Router, Upstream
from ..tls.context import ServerTls
from ..tls import deadlines
from ..tls.protocol import Limits, TlsServerProtocol
from ..observability.throttle import Throttle
from .acceptor import AcceptState, Acceptor
from .observer import ConnectionCount, Observer, client_identity

log = get_logger("qproxy.worker")


class Generation:
    """Everything one configuration serves with inside a worker."""

    def __init__(self, number: int, config: ServerConfig, server_tls: ServerTls,
                 metrics: Metrics, connections: ConnectionCount) -> None:
        self.number = number
        self.config = config
        self.server_tls = server_tls
        self.observer = Observer(metrics, log, get_logger("qproxy.access"), server_tls,
                                 connections, access_log=config.logging.access_log)

        def upstream_state(upstream: str, server: str, up: bool, cause: str | None) -> None:
            # Called once per change of a server's state (cause None: the state at start).
            metrics.upstream_up.labels(upstream, server).set(1 if up else 0)
            if not up:
                log.warning("backend server taken out of rotation", upstream=upstream,
                            server=server, cause=cause,
                            retry_in_s=config.upstreams[upstream].fail_timeout)
            elif cause is not None:
                log.info("backend server back in rotation", upstream=upstream, server=server,
                         cause=cause)

        self.upstreams = {name: Upstream(name, section, upstream_state)
                          for name, section in config.upstreams.items()}
        handler = ProxyHandler(self.upstreams, Router(config.effective_routes()),
                               self.observer.exchange_done, client_identity)
        self.http_server = HttpServer(handler, config.server, self.observer.bad_request)
        self.limits = Limits(config.server.handshake_timeout, config.server.client_header_timeout)
        # One bound method shared by every connection (each protocol holds it for its life).
        self._context_factory = self._default_context

    def start(self) -> None:
        for upstream in self.upstreams.values():
            upstream.start()

    def _default_context(self) -> SSL.Context:
        return self.server_tls.default

    def protocol(self) -> TlsServerProtocol:
        return TlsServerProtocol(self._context_factory, self.http_server, self.observer,
                                 self.limits)

    async def retire(self, timeout: float) -> None:
        """Finish in-flight requests (closing idle keep-alive connections), then let go."""
        await first_requests(FIRST_REQUEST_GRACE)
        for connection in idle_tls_connections():
            connection.close_if_idle()
        await self.http_server.shutdown(timeout)
        for upstream in self.upstreams.values():
            await upstream.close()


FIRST_REQUEST_GRACE = 1.0
"""How long a drain lets connections that finished their handshake send their first request.
A client's request is usually on its way when the handshake completes: closing at once loses
it (seen under load with a reload every 0.2 s); one that sends nothing is closed after this."""


async def first_requests(grace: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while idle_tls_connections() and loop.time() < deadline:
        await asyncio.sleep(0.01)


def idle_tls_connections() -> list[TlsServerProtocol]:
    """Connections past their handshake that have not sent a request: each waits on its
    request-header deadline, so the loop's deadline wheel knows them all."""
    return [target for target in deadlines.for_running_loop().targets()
            if isinstance(target, TlsServerProtocol) and target.awaiting_first_request]


def connection_share(max_connections: int, workers: int, slot: int = 0) -> int:
    """Worker `slot`'s part of `server.max_connections`: the parts add up to the total
    exactly (10 over 3 workers: 4, 3, 3)."""
    workers = max(1, workers)
    return max_connections // workers + (1 if slot % workers < max_connections % workers else 0)


class Worker:
    def __init__(self, generation: Generation, listeners: list[socket.socket], workers: int,
                 ready_fd: int | None, slot: int = 0) -> None:
        self.generation = generation
        self.listeners = listeners
        self.limit = connection_share(generation.config.server.max_connections, workers, slot)
        self.ready_fd = ready_fd
        self.connections = generation.observer.connections
        self._stop = asyncio.Event()
        self._pause_log = {state: Throttle(1.0) for state in AcceptState}

    def _factory(self) -> asyncio.Protocol:
        self.generation.observer.connection_opened()
        return self.generation.protocol()

    def _has_room(self, pending: int) -> bool:
        return self.connections.open + pending < self.limit

    def _attach_failed(self, exc: BaseException) -> None:
        log.warning("accepted connection could not be set up", error=repr(exc))

    def _accept_paused(self, state: AcceptState, reason: str) -> None:
        self.generation.observer.accept_paused(reason)
        count = self._pause_log[state].hit()
        if count is None:
            return
        if state is AcceptState.FULL:
            log.warning("connection limit reached; new connections wait for a worker with room",
                        max_connections=self.limit, open_connections=self.connections.open,
                        times=count)
        else:
            log.error("accept failed; backing off", error=reason, times=count,
                      open_connections=self.connections.open)

    def _tell_master(self, state: bytes) -> None:
        """b"R": listening; b"C": listeners closed (the master waits for it on reload)."""
        if self.ready_fd is not None:
            try:
                os.write(self.ready_fd, state)
            except OSError:
                os.close(self.ready_fd)
                self.ready_fd = None

    async def _handshakes_settled(self) -> None:
        """Let connections still in their TLS handshake reach the HTTP layer (or fail) before
        the drain, so none of them meets an HTTP server that has already shut down."""
        deadline = asyncio.get_running_loop().time() + self.generation.limits.handshake_timeout
        http_server = self.generation.http_server
        while (self.connections.open > len(http_server.connections) + len(idle_tls_connections())
               and asyncio.get_running_loop().time() < deadline):
            await asyncio.sleep(0.01)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        acceptor = Acceptor(loop, self.listeners, self._factory, self._has_room,
                            self._attach_failed, self._accept_paused)
        self.connections.on_closed = acceptor.room_made
        acceptor.start()
        self.generation.start()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop.set)
        loop.add_signal_handler(signal.SIGUSR1, reopen_log_files)
        log.info("worker started", generation=self.generation.number, max_connections=self.limit)
        self._tell_master(b"R")
        await self._stop.wait()

        timeout = self.generation.config.server.shutdown_timeout
        acceptor.stop()
        for sock in self.listeners:
            sock.close()  # this process's copy; the master and the other workers keep theirs
        self._tell_master(b"C")
        log.info("worker draining", generation=self.generation.number,
                 open_connections=self.connections.open, timeout_s=timeout)
        await self._handshakes_settled()
        await self.generation.retire(timeout)
        log.info("worker stopped", generation=self.generation.number)
        return 0


def worker_main(number: int, config: ServerConfig, server_tls: ServerTls, metrics: Metrics,
                listeners: list[socket.socket], workers: int, ready_fd: int | None,
                slot: int = 0) -> int:
    """Entry point in a freshly forked child."""
    import uvloop

    # Only now, in the worker, does the PKCS#11 module get loaded (it is not fork-safe).
    server_tls.load_hsm_keys()
    cert_expiry.publish(metrics.certificate_not_after, cert_expiry.expiry_of(server_tls.pairs))

    async def main() -> int:
        # aiohttp's server objects bind to the running loop: build them inside it.
        generation = Generation(number, config, server_tls, metrics, ConnectionCount())
        return await Worker(generation, listeners, workers, ready_fd, slot).run()

    return uvloop.run(main())
