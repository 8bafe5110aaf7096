"""One qtls-server process: TLS listener, reverse proxy, metrics endpoint, signals."""

from __future__ import annotations

import asyncio
import signal
import socket
from dataclasses import dataclass

from aiohttp import web

from ..config.model import ServerConfig
from ..observability.logging import get_logger
from ..observability.metrics import Metrics
from ..proxy.handler import ProxyHandler
from ..proxy.http import HttpServer
from ..proxy.upstream import Router, Upstream
from ..tls.context import ServerTls, build_server_tls, check_platform
from ..tls.machine import info_callback
from ..tls.protocol import Limits, TlsServerProtocol
from .observer import Observer, client_identity

log = get_logger("qproxy.server")


class _Refuse(asyncio.Protocol):
    """Accepted past `server.max_connections`: closed at once, the daemon unharmed."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()


@dataclass
class Listening:
    host: str
    port: int
    metrics_port: int | None


def build_tls(config: ServerConfig, source: str) -> ServerTls:
    return build_server_tls(config, source, info_callback)


class Daemon:
    def __init__(self, config: ServerConfig, source: str, server_tls: ServerTls | None = None,
                 metrics: Metrics | None = None) -> None:
        self.config = config
        self.source = source
        self.metrics = metrics or Metrics()
        self.server_tls = server_tls or build_tls(config, source)
        self.observer = Observer(self.metrics, log, get_logger("qproxy.access"), self.server_tls,
                                 access_log=config.logging.access_log)
        self.upstreams = {
            name: Upstream(name, section, self._upstream_state)
            for name, section in config.upstreams.items()
        }
        self.handler = ProxyHandler(self.upstreams, Router(config.effective_routes()),
                                    self.observer.exchange_done, client_identity)
        self._stop = asyncio.Event()

    def _upstream_state(self, upstream: str, server: str, up: bool) -> None:
        self.metrics.upstream_up.labels(upstream, server).set(1 if up else 0)
        if not up:
            log.warning("backend server taken out of rotation", upstream=upstream, server=server,
                        retry_in_s=self.config.upstreams[upstream].fail_timeout)

    def _protocol_factory(self, http_server: HttpServer, limits: Limits):
        maximum = self.config.server.max_connections
        observer = self.observer

        def factory() -> asyncio.Protocol:
            if observer.open_connections >= maximum:
                observer.refused("max_connections")
                return _Refuse()
            observer.connection_opened()
            return TlsServerProtocol(lambda: self.server_tls.default, http_server, observer, limits)

        return factory

    async def _start_metrics(self) -> tuple[web.AppRunner | None, int | None]:
        section = self.config.metrics
        if not section.enabled:
            return None, None
        async def render(_request: web.Request) -> web.Response:
            return web.Response(body=self.metrics.render(),
                                headers={"Content-Type": self.metrics.content_type})
        app = web.Application()
        app.router.add_get(section.path, render)
        app.router.add_get("/healthz", lambda _r: _healthz())
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, section.address, section.port)
        await site.start()
        sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
        port = sockets[0].getsockname()[1] if sockets else section.port
        return runner, port

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        server_section = self.config.server
        http_server = HttpServer(self.handler, server_section, self.observer.bad_request)
        limits = Limits(server_section.handshake_timeout, server_section.client_header_timeout)
        listener = await loop.create_server(
            self._protocol_factory(http_server, limits), server_section.listen_address,
            server_section.listen_port, backlog=server_section.backlog, reuse_address=True,
            family=socket.AF_UNSPEC)
        for upstream in self.upstreams.values():
            upstream.start()
        runner, metrics_port = await self._start_metrics()
        port = listener.sockets[0].getsockname()[1]
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop)
        log.info("listening", address=server_section.listen_address, port=port,
                 metrics_port=metrics_port, groups=self.server_tls.policy.groups,
                 certificates=[p.key_kind for p in self.server_tls.pairs],
                 upstreams={n: list(u.section.servers) for n, u in self.upstreams.items()})
        await self._stop.wait()

        log.info("stopping: no new connections, finishing requests in flight",
                 timeout_s=server_section.shutdown_timeout)
        listener.close()
        await http_server.shutdown(server_section.shutdown_timeout)
        for upstream in self.upstreams.values():
            await upstream.close()
        if runner is not None:
            await runner.cleanup()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        log.info("stopped")
        return 0


async def _healthz() -> web.Response:
    return web.json_response({"status": "ok"})


def serve(config: ServerConfig, source: str) -> int:
    """Run the daemon until SIGTERM/SIGINT; returns the exit code."""
    import uvloop

    version = check_platform()
    server_tls = build_tls(config, source)
    log.info("starting qtls-server", openssl=version, config=source)
    for warning in server_tls.warnings:
        log.warning("configuration warning", detail=warning)

    async def main() -> int:
        return await Daemon(config, source, server_tls).run()

    return uvloop.run(main())
