"""Kept-alive connections to one backend server (nginx's `keepalive N`: at most N idle).

A connection that began with a PROXY header (server.send_proxy_protocol) describes one client
connection, so it is kept for that client only, never handed to another (HAProxy ties server
connections to their session the same way), and closed once that client has gone."""

from __future__ import annotations

import asyncio
import os

from .connection import BackendConnection, BackendSettings
from .errors import BackendError, FailureKind


class ServerConnections:
    def __init__(self, host: str, port: int, keepalive: int, idle_timeout: float,
                 connect_timeout: float, settings: BackendSettings = BackendSettings()) -> None:
        self.host = host
        self.port = port
        self.settings = settings
        self.idle_timeout = idle_timeout
        self._keepalive = keepalive
        self._connect_timeout = connect_timeout
        self._idle: list[BackendConnection] = []
        # Idle connections tied to a client connection (one each: HTTP/1.1 asks one at a time).
        self._tied: dict[object, BackendConnection] = {}

    @property
    def idle_count(self) -> int:
        return len(self._idle) + len(self._tied)

    async def acquire(self, fresh: bool = False) -> BackendConnection:
        return (None if fresh else self.take_idle()) or await self.connect()

    def take_idle(self, client: object | None = None) -> BackendConnection | None:
        """A kept-alive connection, if one is idle (no coroutine for the common case); with
        `client`, only the one tied to that client connection."""
        if client is not None:
            connection = self._tied.pop(client, None)
            if connection is not None and not connection.closed:
                connection.take()
                return connection
            return None
        while self._idle:
            connection = self._idle.pop()  # the most recently used: least likely to be stale
            if not connection.closed:
                connection.take()
                return connection
        return None

    async def connect(self, preface: bytes = b"", client: object | None = None
                      ) -> BackendConnection:
        """A new connection; `preface` (a PROXY header for `client`) is its first bytes."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, protocol = await loop.create_connection(
                    lambda: BackendConnection(self, self.settings, preface, client),
                    self.host, self.port)
        except TimeoutError:
            raise BackendError(FailureKind.CONNECT_TIMEOUT, "the backend did not accept the "
                               "connection in time") from None
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise BackendError(FailureKind.CONNECT, f"cannot connect to the backend "
                               f"({reason})") from None
        return protocol

    def release(self, connection: BackendConnection) -> None:
        self._let_gone_clients_go()
        client = connection.client
        if client is not None:
            if self.idle_count >= self._keepalive or _client_gone(client):
                connection.close()
                return
            connection.went_idle(self.idle_timeout)
            self._tied[client] = connection
            return
        if self.idle_count >= self._keepalive:
            connection.close()
            return
        connection.went_idle(self.idle_timeout)
        self._idle.append(connection)

    def forget(self, connection: BackendConnection) -> None:
        if connection.client is not None:
            if self._tied.get(connection.client) is connection:
                del self._tied[connection.client]
            return
        try:
            self._idle.remove(connection)
        except ValueError:
            pass

    def _let_gone_clients_go(self) -> None:
        """Close the idle connections whose client connection has closed (at most
        `keepalive` of them to look at)."""
        for client, connection in list(self._tied.items()):
            if _client_gone(client):
                connection.close()  # forget() drops it from _tied

    def close(self) -> None:
        for connection in [*self._idle, *self._tied.values()]:
            connection.close()
        self._idle.clear()
        self._tied.clear()


def _client_gone(client: object) -> bool:
    is_closing = getattr(client, "is_closing", None)
    return bool(is_closing()) if is_closing is not None else False
