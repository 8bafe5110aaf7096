"""A worker process: one uvloop event loop serving TLS connections on the inherited listener."""

from __future__ import annotations

import asyncio
import os
import signal
import socket

from OpenSSL import SSL

from ..config.listeners import Listener
from ..config.model import ServerConfig
from ..observability.logging import get_logger, reopen_log_files
from ..observability import cert_expiry
from ..observability.metrics import Metrics
from ..proxy.access import StreamGate, access_for
from ..proxy.handler import ProxyHandler
from ..proxy.http import HttpServer
from ..proxy.proxy_accept import ProxyHeaderPolicy
from ..proxy.proxy_protocol import build_v2
from ..proxy.stream_server import StreamServer
from ..proxy.upstream import Router, Upstream
from ..tls.context import ServerTls
from ..tls import deadlines
from ..tls.protocol import Limits, TlsServerProtocol
from ..policy.access import ListenerGate
from ..observability.throttle import Throttle
from .acceptor import AcceptState, Acceptor
from .observer import ConnectionCount, Observer, client_identity
from .prepare import PreparedListener
from .proxy_header import ProxyHeaderSender

log = get_logger("qproxy.worker")


class ListenerService:
    """One listener inside a worker: its TLS contexts, its observer (metrics labelled with its
    name) and what serves its connections after the handshake (HTTP, or the tcp relay)."""

    def __init__(self, listener: Listener, server_tls: ServerTls, config: ServerConfig,
                 metrics: Metrics, connections: ConnectionCount,
                 upstreams: dict[str, Upstream], workers: int = 1, slot: int = 0) -> None:
        self.listener = listener
        self.server_tls = server_tls
        self.observer = Observer(metrics, log, get_logger("qproxy.access"), server_tls,
                                 connections, access_log=config.logging.access_log,
                                 listener=listener.name)
        settings = listener.settings
        send = settings.send_proxy_protocol
        sender = ProxyHeaderSender(send, server_tls) if send else None
        self.server: HttpServer | StreamServer
        # Access control, with this worker's share of each limit (None: nothing configured,
        # nothing asked per connection or request).
        self.access = access_for(settings.access, listener.routes, workers, slot)
        self.gate: ListenerGate | StreamGate | None = None
        if listener.mode == "tcp":
            assert listener.upstream is not None
            preamble = (lambda client: sender(client, client.get_extra_info("tls"))
                        ) if sender is not None else None
            upstream_name = listener.upstream
            self.server = StreamServer(upstreams[upstream_name], listener.idle_timeout,
                                       lambda record: self.observer.stream_done(
                                           record, upstream_name), preamble)
            if self.access is not None and self.access.gate is not None:
                self.gate = StreamGate(self.access.gate, self.observer.connection_denied)
        else:
            handler = ProxyHandler(upstreams, Router(listener.routes),
                                   self.observer.exchange_done, client_identity, sender,
                                   self.access, self.observer.access_denied)
            self.server = HttpServer(handler, settings, self.observer.bad_request)
            self.gate = self.access.gate if self.access is not None else None
        self.limits = Limits(settings.handshake_timeout, settings.client_header_timeout,
                             ProxyHeaderPolicy.from_section(
                                 settings.proxy_protocol, settings.handshake_timeout,
                                 f"{listener.json_path}.proxy_protocol"),
                             stream=listener.mode == "tcp")
        # One bound method shared by every connection (each protocol holds it for its life).
        self._context_factory = self._default_context

    def _default_context(self) -> SSL.Context:
        return self.server_tls.default

    def protocol(self) -> TlsServerProtocol:
        self.observer.connection_opened()
        return TlsServerProtocol(self._context_factory, self.server, self.observer, self.limits,
                                 self.gate)


def health_preface(upstream: str, prepared: list[PreparedListener]) -> bytes:
    """A PROXY v2 LOCAL header for health checks of an upstream that a listener sending
    PROXY headers (send_proxy_protocol) uses: such a backend wants one on every connection."""
    for item in prepared:
        listener, send = item.listener, item.listener.settings.send_proxy_protocol
        uses = upstream == listener.upstream or any(r.upstream == upstream
                                                    for r in listener.routes)
        if send is not None and uses:
            return build_v2(None, None, alpn=None, authority=None, ssl=None, crc32c=send.crc32c)
    return b""


class Generation:
    """Everything one configuration serves with inside a worker."""

    def __init__(self, number: int, config: ServerConfig, prepared: list[PreparedListener],
                 metrics: Metrics, connections: ConnectionCount, workers: int = 1,
                 slot: int = 0) -> None:
        self.number = number
        self.config = config

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

        # An upstream only tcp listeners relay to is health-checked with a TCP connect.
        http = {r.upstream for p in prepared for r in p.listener.routes}
        tcp = {p.listener.upstream for p in prepared if p.listener.mode == "tcp"}
        self.upstreams = {name: Upstream(name, section, upstream_state,
                                         health_preface(name, prepared),
                                         stream=name in tcp and name not in http)
                          for name, section in config.upstreams.items()}
        self.services = {p.listener.name: ListenerService(p.listener, p.server_tls, config,
                                                          metrics, connections, self.upstreams,
                                                          workers, slot)
                         for p in prepared}
        default = next(iter(self.services.values()))
        # The default listener's parts, under the names the rest of the code knows.
        self.observer = default.observer
        self.server_tls = default.server_tls
        self.limits = default.limits

    @property
    def http_server(self) -> HttpServer:
        server = next(iter(self.services.values())).server
        assert isinstance(server, HttpServer)
        return server

    def start(self) -> None:
        for upstream in self.upstreams.values():
            upstream.start()

    def protocol(self) -> TlsServerProtocol:
        return next(iter(self.services.values())).protocol()

    def served(self) -> int:
        """Connections past their handshake, in the hands of HTTP or a relay."""
        return sum(len(service.server.connections) for service in self.services.values())

    async def retire(self, timeout: float) -> None:
        """Finish in-flight requests (closing idle keep-alive connections) and let tcp
        sessions run until they end or `timeout`, then let go."""
        await first_requests(FIRST_REQUEST_GRACE)
        for connection in idle_tls_connections():
            connection.close_if_idle()
        await asyncio.gather(*(service.server.shutdown(timeout)
                               for service in self.services.values()))
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
    def __init__(self, generation: Generation, listeners: dict[str, list[socket.socket]],
                 workers: int, ready_fd: int | None, slot: int = 0) -> None:
        self.generation = generation
        self.listeners = listeners  # listener name -> its sockets
        self.limit = connection_share(generation.config.server.max_connections, workers, slot)
        self.ready_fd = ready_fd
        self.connections = generation.observer.connections
        self._stop = asyncio.Event()
        self._pause_log = {state: Throttle(1.0) for state in AcceptState}


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
        handshake_timeout = max(s.limits.handshake_timeout
                                for s in self.generation.services.values())
        deadline = asyncio.get_running_loop().time() + handshake_timeout
        while (self.connections.open > self.generation.served() + len(idle_tls_connections())
               and asyncio.get_running_loop().time() < deadline):
            await asyncio.sleep(0.01)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        # One acceptor per listener (each knows which listener its connections are for),
        # sharing this worker's connection limit.
        acceptors = [Acceptor(loop, self.listeners.get(name, []), service.protocol,
                              self._has_room, self._attach_failed, self._accept_paused)
                     for name, service in self.generation.services.items()]

        def room_made() -> None:
            for acceptor in acceptors:
                acceptor.room_made()

        self.connections.on_closed = room_made
        for acceptor in acceptors:
            acceptor.start()
        self.generation.start()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop.set)
        loop.add_signal_handler(signal.SIGUSR1, reopen_log_files)
        log.info("worker started", generation=self.generation.number, max_connections=self.limit)
        self._tell_master(b"R")
        await self._stop.wait()

        timeout = self.generation.config.server.shutdown_timeout
        for acceptor in acceptors:
            acceptor.stop()
        for socks in self.listeners.values():
            for sock in socks:
                sock.close()  # this process's copy; the master and the other workers keep theirs
        self._tell_master(b"C")
        log.info("worker draining", generation=self.generation.number,
                 open_connections=self.connections.open, timeout_s=timeout)
        await self._handshakes_settled()
        await self.generation.retire(timeout)
        log.info("worker stopped", generation=self.generation.number)
        return 0


def worker_main(number: int, config: ServerConfig, prepared: list[PreparedListener],
                metrics: Metrics, listeners: dict[str, list[socket.socket]], workers: int,
                ready_fd: int | None, slot: int = 0) -> int:
    """Entry point in a freshly forked child."""
    import uvloop

    # Only now, in the worker, does the PKCS#11 module get loaded (it is not fork-safe).
    for item in prepared:
        item.server_tls.load_hsm_keys()
        if item.listener.json_path == "server" or item.listener.own_certificates:
            cert_expiry.publish(metrics.certificate_not_after,
                                cert_expiry.expiry_of(item.server_tls.pairs,
                                                      listener=item.listener.name))

    async def main() -> int:
        # aiohttp's server objects bind to the running loop: build them inside it.
        generation = Generation(number, config, prepared, metrics, ConnectionCount(),
                                workers, slot)
        return await Worker(generation, listeners, workers, ready_fd, slot).run()

    return uvloop.run(main())
