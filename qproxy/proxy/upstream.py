"""Upstreams: backend servers in round robin, taken out of rotation when they fail and tried
again later; the upstream sends each request, retries where nothing can have been acted on,
and keeps each server's health.

`ServerPool` is plain state with an injectable clock (tested without sockets);
`Upstream` adds the kept-alive backend connections, the sending and retrying, and the optional
active health check.
"""

from __future__ import annotations

import asyncio
import enum
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import aiohttp

from ..config.model import Route, UpstreamSection, parse_host_port
from .backend import (BackendError, BackendRequest, BackendResponse, BackendSettings,
                      FailureKind, ServerConnections)


class Rotation(enum.Enum):
    IN = "in rotation"
    OUT = "out of rotation"  # failed max_fails times; tried again after fail_timeout


@dataclass
class ServerState:
    address: str
    host: str
    port: int
    fails: int = 0
    down_until: float = 0.0
    rotation: Rotation = Rotation.IN

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
        """Record a failure; True only when it takes the server out of rotation (a server
        already out, tried again, stays out for another fail_timeout: no change)."""
        if server.rotation is Rotation.OUT:
            server.down_until = self.clock() + self.fail_timeout
            return False
        server.fails += 1
        if server.fails >= self.max_fails:
            server.fails = 0
            server.down_until = self.clock() + self.fail_timeout
            server.rotation = Rotation.OUT
            return True
        return False

    def succeeded(self, server: ServerState) -> bool:
        """Record a success; True when it brings the server back into rotation."""
        server.fails = 0
        server.down_until = 0.0
        if server.rotation is Rotation.OUT:
            server.rotation = Rotation.IN
            return True
        return False


class Sent(NamedTuple):
    """A request the backend answered: its response (head arrived), which server, how long."""

    response: BackendResponse
    server: str
    seconds: float


# Failures where nothing of the request reached the server: any request may go to the next.
_NOTHING_SENT = frozenset({FailureKind.CONNECT, FailureKind.CONNECT_TIMEOUT})

class _HealthCheck:
    """The "client" of a health-check connection: always gone, so it is never pooled."""

    def is_closing(self) -> bool:
        return True


_HEALTH_CHECK = _HealthCheck()

# (upstream, server, in rotation, cause): cause None for the initial state at start.
StateCallback = Callable[[str, str, bool, "str | None"], None]


class Upstream:
    def __init__(self, name: str, section: UpstreamSection,
                 on_state: StateCallback | None = None, health_preface: bytes = b"",
                 stream: bool = False) -> None:
        self.name = name
        # Relayed to by tcp listeners only: a health check is a TCP connect, not an HTTP GET.
        self.stream = stream
        self.section = section
        # server.send_proxy_protocol: backends that require a PROXY header on every
        # connection get a LOCAL one on health checks too (HAProxy's check-send-proxy).
        self._health_preface = health_preface
        self.pool = ServerPool.from_addresses(section.servers, section.max_fails,
                                              section.fail_timeout)
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=section.connect_timeout,
                                             sock_read=section.read_timeout)
        self._on_state = on_state or (lambda upstream, server, up, cause: None)
        settings = BackendSettings(read_timeout=section.read_timeout,
                                   max_head=section.max_response_head_size,
                                   body_buffer=section.response_buffer_size)
        self._connections = {
            server.address: ServerConnections(server.host, server.port, section.keepalive,
                                              section.idle_timeout, section.connect_timeout,
                                              settings)
            for server in self.pool.servers}
        self._session: aiohttp.ClientSession | None = None
        self._health_task: asyncio.Task[None] | None = None

    def connections(self, server: ServerState) -> ServerConnections:
        return self._connections[server.address]

    @property
    def session(self) -> aiohttp.ClientSession:
        """For health checks, which are rare enough for a general client."""
        if self._session is None:
            # aiohttp refuses a keepalive_timeout together with force_close: with keepalive 0
            # that ValueError ended the health-check task silently, and no check ever ran.
            keepalive: dict[str, Any] = (
                {"force_close": True} if self.section.keepalive == 0
                else {"keepalive_timeout": self.section.idle_timeout})
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=0,
                                             enable_cleanup_closed=False, **keepalive)
            self._session = aiohttp.ClientSession(
                connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
                timeout=self.timeout, trust_env=False)
        return self._session

    def start(self) -> None:
        for server in self.pool.servers:
            self._on_state(self.name, server.address, True, None)
        if self.section.health_check is not None and self._health_task is None:
            self._health_task = asyncio.get_running_loop().create_task(self._health_loop())

    async def send(self, request: BackendRequest) -> Sent:
        """Send `request` to a server in rotation and return once its response head has come.

        Retries, as nginx's proxy_next_upstream "error timeout" does where nothing can have
        been acted on: a kept-alive connection the backend had closed unanswered is replaced
        by a new one (if the body can be sent again); a server that cannot be connected to is
        skipped for the next. Raises BackendError (with `server` set) otherwise; failures
        that are the backend's count against its server."""
        tried: set[str] = set()
        while True:
            server = self.pool.pick(frozenset(tried))
            if server is None:
                raise BackendError(FailureKind.CONNECT, "no backend server left to try")
            tried.add(server.address)
            connections = self._connections[server.address]
            started = time.monotonic()
            fresh = request.upgrade  # an upgraded connection never returns to the pool
            while True:
                try:
                    connection = (None if fresh else connections.take_idle(request.client)) or (
                        await connections.connect(request.preface, request.client))
                    response = await connection.exchange(request)
                except BackendError as error:
                    error.server = server.address
                    if not error.kind.blames_backend:
                        raise
                    if error.retryable and not fresh and (
                            request.body is None or request.replayable):
                        fresh = True
                        continue
                    self.mark_failed(server, error)
                    if error.kind in _NOTHING_SENT and len(tried) < len(self.pool.servers):
                        break  # nothing reached this server: try the next one
                    raise
                self.mark_ok(server)
                return Sent(response, server.address, time.monotonic() - started)

    def report(self, server: str, error: BackendError) -> None:
        """A failure after the response head (the body broke off)."""
        if error.kind.blames_backend:
            for state in self.pool.servers:
                if state.address == server:
                    self.mark_failed(state, error)

    def mark_failed(self, server: ServerState, error: BackendError | str) -> None:
        if self.pool.failed(server):
            self._on_state(self.name, server.address, False, str(error))

    def mark_ok(self, server: ServerState, cause: str = "it answered again") -> None:
        if self.pool.succeeded(server):
            self._on_state(self.name, server.address, True, cause)

    async def _health_loop(self) -> None:
        check = self.section.health_check
        assert check is not None
        timeout = aiohttp.ClientTimeout(total=check.timeout)
        what = "(TCP connect)" if self.stream else check.path
        while True:
            for server in self.pool.servers:
                outcome: int | BaseException
                if self.stream:
                    outcome = await self._connects(server, check.timeout)
                elif self._health_preface:
                    try:
                        outcome = await self._check_with_preface(server, check.path,
                                                                 check.timeout)
                    except (asyncio.TimeoutError, BackendError) as exc:
                        outcome = exc
                else:
                    outcome = await self._answers(server, check.path, timeout)
                failure = health_check_failure(outcome, what, check.timeout)
                if failure is None:
                    self.mark_ok(server, f"its health check {what} passed")
                elif server.rotation is Rotation.IN:
                    server.fails = self.pool.max_fails - 1
                    self.mark_failed(server, failure)
            await asyncio.sleep(check.interval)

    async def _answers(self, server: ServerState, path: str,
                       timeout: aiohttp.ClientTimeout) -> int | BaseException:
        try:
            async with self.session.get(server.base_url + path, timeout=timeout) as response:
                return response.status
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return exc

    async def _connects(self, server: ServerState, timeout: float) -> int | BaseException:
        """A tcp upstream's health check: it takes a connection (which, when it wants PROXY
        headers, starts with a LOCAL one)."""
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(server.host, server.port),
                                               timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            return exc
        if self._health_preface:
            writer.write(self._health_preface)
        writer.close()
        return 0  # connected: as good as a 2xx

    async def _check_with_preface(self, server: ServerState, path: str, timeout: float
                                  ) -> int:
        """One health check on a connection of its own that starts with the preface; the
        connection is closed after the response head (it is tied to no client)."""
        connections = self._connections[server.address]
        host = f"[{server.host}]" if ":" in server.host else server.host
        head = (f"GET {path} HTTP/1.1\r\nHost: {host}:{server.port}\r\n"
                f"Connection: close\r\n\r\n").encode()
        async with asyncio.timeout(timeout):
            connection = await connections.connect(self._health_preface, _HEALTH_CHECK)
            try:
                response = await connection.exchange(BackendRequest(head))
                return response.status
            finally:
                connection.close()

    async def close(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            await asyncio.gather(self._health_task, return_exceptions=True)
        for connections in self._connections.values():
            connections.close()
        if self._session is not None:
            await self._session.close()


def health_check_failure(outcome: int | BaseException, path: str, timeout: float) -> str | None:
    """Why a health check failed, in the words an operator acts on (refused, timed out, which
    status), or None if it passed: a status below 500 passes."""
    if isinstance(outcome, int):
        return None if outcome < 500 else f"its health check {path} answered status {outcome}"
    if isinstance(outcome, asyncio.TimeoutError):
        return f"its health check {path} got no answer within {timeout:g} s (timeout)"
    error = outcome.os_error if isinstance(outcome, aiohttp.ClientConnectorError) else outcome
    if isinstance(error, OSError):
        reason = os.strerror(error.errno) if error.errno else str(error)
        return f"its health check {path} could not connect: {reason.lower()}"
    detail = str(outcome) or type(outcome).__name__
    return f"its health check {path} failed: {detail[:200]}"


class Router:
    """Host and path-prefix routes -> upstream name. Host-specific routes win; then the longest
    matching prefix (nginx's prefix locations)."""

    def __init__(self, routes: tuple[Route, ...]) -> None:
        ordered = sorted(routes, key=lambda r: (r.host is None, -len(r.path_prefix)))
        self._routes = [(None if r.host is None else host_name(r.host), r) for r in ordered]

    def route(self, host: str | None, path: str) -> Route | None:
        name = host_name(host)
        for route_host, route in self._routes:
            if route_host is not None and route_host != name:
                continue
            if path.startswith(route.path_prefix):
                return route
        return None

    def match(self, host: str | None, path: str) -> str | None:
        """The name of the upstream the route for `host` and `path` names."""
        route = self.route(host, path)
        return route.upstream if route is not None else None


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
