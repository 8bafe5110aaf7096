"""One qtls-server process: TLS listener, reverse proxy, metrics endpoint, signals."""

from __future__ import annotations

import asyncio
import signal
import socket

from aiohttp import web

from ..config.load import load_config
from ..config.model import ServerConfig
from ..errors import QProxyError
from ..observability.logging import get_logger
from ..observability.metrics import Metrics
from ..proxy.handler import ProxyHandler
from ..proxy.http import HttpServer
from ..proxy.upstream import Router, Upstream
from ..tls.context import ServerTls, build_server_tls, check_platform
from ..tls.machine import info_callback
from ..tls.protocol import Limits, TlsServerProtocol
from .observer import ConnectionCount, Observer, client_identity

log = get_logger("qproxy.server")


class _Refuse(asyncio.Protocol):
    """Accepted past `server.max_connections`: closed at once, the daemon unharmed."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()


def build_tls(config: ServerConfig, source: str) -> ServerTls:
    return build_server_tls(config, source, info_callback)


class Generation:
    """Everything one configuration serves with. A reload builds a new one beside the old and
    swaps: new connections get the new one, connections already open finish on the old."""

    def __init__(self, number: int, config: ServerConfig, source: str, server_tls: ServerTls,
                 metrics: Metrics, connections: ConnectionCount) -> None:
        self.number = number
        self.config = config
        self.server_tls = server_tls
        self.observer = Observer(metrics, log, get_logger("qproxy.access"), server_tls,
                                 connections, access_log=config.logging.access_log)

        def upstream_state(upstream: str, server: str, up: bool) -> None:
            metrics.upstream_up.labels(upstream, server).set(1 if up else 0)
            if not up:
                log.warning("backend server taken out of rotation", upstream=upstream,
                            server=server, retry_in_s=config.upstreams[upstream].fail_timeout)

        self.upstreams = {name: Upstream(name, section, upstream_state)
                          for name, section in config.upstreams.items()}
        handler = ProxyHandler(self.upstreams, Router(config.effective_routes()),
                               self.observer.exchange_done, client_identity)
        self.http_server = HttpServer(handler, config.server, self.observer.bad_request)
        self.limits = Limits(config.server.handshake_timeout, config.server.client_header_timeout)

    def start(self) -> None:
        for upstream in self.upstreams.values():
            upstream.start()

    def protocol(self) -> TlsServerProtocol:
        return TlsServerProtocol(lambda: self.server_tls.default, self.http_server,
                                 self.observer, self.limits)

    async def retire(self, timeout: float, grace: float = 0.0) -> None:
        """Finish in-flight requests (closing idle keep-alive connections), then let go.

        `grace` lets connections still in their handshake reach the HTTP layer first."""
        if grace:
            await asyncio.sleep(grace)
        await self.http_server.shutdown(timeout)
        for upstream in self.upstreams.values():
            await upstream.close()


class Daemon:
    def __init__(self, config: ServerConfig, source: str, server_tls: ServerTls | None = None,
                 metrics: Metrics | None = None) -> None:
        self.source = source
        self.metrics = metrics or Metrics()
        self.connections = ConnectionCount()
        self.current = Generation(1, config, source, server_tls or build_tls(config, source),
                                  self.metrics, self.connections)
        self._stop = asyncio.Event()
        self._retiring: set[asyncio.Task[None]] = set()

    @property
    def config(self) -> ServerConfig:
        return self.current.config

    def _protocol_factory(self):
        def factory() -> asyncio.Protocol:
            generation = self.current
            if self.connections.open >= generation.config.server.max_connections:
                generation.observer.refused("max_connections")
                return _Refuse()
            generation.observer.connection_opened()
            return generation.protocol()

        return factory

    def reload(self) -> bool:
        """SIGHUP: build and check a new generation from the file; keep the old one on failure."""
        old = self.current
        try:
            config = load_config(self.source)
            server_tls = build_tls(config, self.source)
        except QProxyError as exc:
            self.metrics.reloads.labels("failed").inc()
            log.error("reload failed; still serving the previous configuration",
                      generation=old.number, error=str(exc))
            return False
        fixed = [key for key in ("listen_address", "listen_port", "backlog")
                 if getattr(config.server, key) != getattr(old.config.server, key)]
        if fixed or config.metrics != old.config.metrics:
            log.warning("listener and metrics settings change only on restart",
                        changed=fixed + (["metrics"] if config.metrics != old.config.metrics else []))
        new = Generation(old.number + 1, config, self.source, server_tls, self.metrics,
                         self.connections)
        new.start()
        self.current = new
        task = asyncio.get_running_loop().create_task(
            old.retire(old.config.server.shutdown_timeout, old.config.server.handshake_timeout))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        self.metrics.reloads.labels("ok").inc()
        for warning in server_tls.warnings:
            log.warning("configuration warning", detail=warning)
        log.info("reloaded", generation=new.number, groups=server_tls.policy.groups,
                 certificates=[p.key_kind for p in server_tls.pairs])
        return True

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
        section = self.config.server
        listener = await loop.create_server(
            self._protocol_factory(), section.listen_address, section.listen_port,
            backlog=section.backlog, reuse_address=True, family=socket.AF_UNSPEC)
        self.current.start()
        runner, metrics_port = await self._start_metrics()
        port = listener.sockets[0].getsockname()[1]
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        generation = self.current
        log.info("listening", address=section.listen_address, port=port,
                 metrics_port=metrics_port, groups=generation.server_tls.policy.groups,
                 certificates=[p.key_kind for p in generation.server_tls.pairs],
                 upstreams={n: list(u.section.servers) for n, u in generation.upstreams.items()})
        await self._stop.wait()

        timeout = self.config.server.shutdown_timeout
        log.info("stopping: no new connections, finishing requests in flight", timeout_s=timeout)
        loop.remove_signal_handler(signal.SIGHUP)
        listener.close()
        await asyncio.gather(self.current.retire(timeout), *self._retiring)
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
