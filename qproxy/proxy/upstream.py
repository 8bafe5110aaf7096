"""Upstreams: backend servers in round robin, taken out when they fail and retried later.

`ServerPool` is plain state with an injectable clock (tested without sockets);
`Upstream` adds the kept-alive backend connections and the optional active health check.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Callable

import aiohttp

from ..config.model import Route, UpstreamSection, parse_host_port
from .backend import ServerConnections


@dataclass
class ServerState:
    address: str
    host: str
    port: int
    fails: int = 0
    down_until: float = 0.0

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


@dataclass
class ServerPool:
    """Round robin over servers that are up (nginx's max_fails / fail_timeout)."""

    servers: list[ServerState]
    max_fails: int = 1
    fail_timeout: float = 10.0
    clock: Callable[[], float] = time.monotonic
    _next: int = field(default=0, repr=False)

    @classmethod
    def from_addresses(cls, addresses: tuple[str, ...], max_fails: int = 1,
                       fail_timeout: float = 10.0, clock: Callable[[], float] = time.monotonic,
                       ) -> "ServerPool":
        servers = [ServerState(a, *parse_host_port(a)) for a in addresses]
        return cls(servers, max_fails, fail_timeout, clock)

    def is_up(self, server: ServerState) -> bool:
        return server.down_until <= self.clock()

    def pick(self, exclude: frozenset[str] = frozenset()) -> ServerState | None:
        """Next server in rotation; when every server is down, the one that comes back first
        (as nginx does, a lone or fully failed group is still tried rather than refused)."""
        candidates = [s for s in self.servers if s.address not in exclude]
        if not candidates:
            return None
        count = len(self.servers)
        for step in range(count):
            server = self.servers[(self._next + step) % count]
            if server.address not in exclude and self.is_up(server):
                self._next = (self._next + step + 1) % count
                return server
        return min(candidates, key=lambda s: s.down_until)

    def failed(self, server: ServerState) -> bool:
        """Record a failure; True when it takes the server out of rotation."""
        server.fails += 1
        if server.fails >= self.max_fails:
            server.fails = 0
            server.down_until = self.clock() + self.fail_timeout
            return True
        return False

    def succeeded(self, server: ServerState) -> None:
        server.fails = 0
        server.down_until = 0.0


class Upstream:
    def __init__(self, name: str, section: UpstreamSection,
                 on_state: Callable[[str, str, bool], None] | None = None) -> None:
        self.name = name
        self.section = section
        self.pool = ServerPool.from_addresses(section.servers, section.max_fails,
                                              section.fail_timeout)
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=section.connect_timeout,
                                             sock_read=section.read_timeout)
        self._on_state = on_state or (lambda upstream, server, up: None)
        self._connections = {
            server.address: ServerConnections(server.host, server.port, section.keepalive,
                                              section.idle_timeout, section.connect_timeout)
            for server in self.pool.servers}
        self._session: aiohttp.ClientSession | None = None
        self._health_task: asyncio.Task[None] | None = None

    def connections(self, server: ServerState) -> ServerConnections:
        return self._connections[server.address]

    @property
    def session(self) -> aiohttp.ClientSession:
        """For health checks, which are rare enough for a general client."""
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=0, limit_per_host=0, keepalive_timeout=self.section.idle_timeout,
                force_close=self.section.keepalive == 0, enable_cleanup_closed=False)
            self._session = aiohttp.ClientSession(
                connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
                timeout=self.timeout, trust_env=False)
        return self._session

    def start(self) -> None:
        for server in self.pool.servers:
            self._on_state(self.name, server.address, True)
        if self.section.health_check is not None and self._health_task is None:
            self._health_task = asyncio.get_running_loop().create_task(self._health_loop())

    def mark_failed(self, server: ServerState) -> None:
        if self.pool.failed(server):
            self._on_state(self.name, server.address, False)

    def mark_ok(self, server: ServerState) -> None:
        was_down = not self.pool.is_up(server)
        self.pool.succeeded(server)
        if was_down:
            self._on_state(self.name, server.address, True)

    async def _health_loop(self) -> None:
        check = self.section.health_check
        assert check is not None
        timeout = aiohttp.ClientTimeout(total=check.timeout)
        while True:
            for server in self.pool.servers:
                try:
                    async with self.session.get(server.base_url + check.path,
                                                timeout=timeout) as response:
                        healthy = response.status < 500
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    healthy = False
                if healthy:
                    self.mark_ok(server)
                elif self.pool.is_up(server):
                    server.fails = self.pool.max_fails - 1
                    self.mark_failed(server)
            await asyncio.sleep(check.interval)

    async def close(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            await asyncio.gather(self._health_task, return_exceptions=True)
        for connections in self._connections.values():
            connections.close()
        if self._session is not None:
            await self._session.close()


class Router:
    """Host and path-prefix routes -> upstream name. Host-specific routes win; then the longest
    matching prefix (nginx's prefix locations)."""

    def __init__(self, routes: tuple[Route, ...]) -> None:
        ordered = sorted(routes, key=lambda r: (r.host is None, -len(r.path_prefix)))
        self._routes = [(None if r.host is None else host_name(r.host), r) for r in ordered]

    def match(self, host: str | None, path: str) -> str | None:
        name = host_name(host)
        for route_host, route in self._routes:
            if route_host is not None and route_host != name:
                continue
            if path.startswith(route.path_prefix):
                return route.upstream
        return None


def host_name(host: str | None) -> str:
    """The name part of a Host header (or of a route's host), for comparison: lower case,
    without port, brackets or trailing dot.

    'Example.COM:8443' -> 'example.com', '[::1]:8443' -> '::1', '[::1]' -> '::1',
    'example.com.' -> 'example.com'; a bare IPv6 literal ('::1') is kept whole."""
    text = (host or "").strip().lower()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    return text.rstrip(".")
