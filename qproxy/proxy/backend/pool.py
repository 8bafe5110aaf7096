"""Kept-alive connections to one backend server (nginx's `keepalive N`: at most N idle)."""

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

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    async def acquire(self, fresh: bool = False) -> BackendConnection:
        return (None if fresh else self.take_idle()) or await self.connect()

    def take_idle(self) -> BackendConnection | None:
        """A kept-alive connection, if one is idle (no coroutine for the common case)."""
        while self._idle:
            connection = self._idle.pop()  # the most recently used: least likely to be stale
            if not connection.closed:
                connection.take()
                return connection
        return None

    async def connect(self) -> BackendConnection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, protocol = await loop.create_connection(
                    lambda: BackendConnection(self, self.settings), self.host, self.port)
        except TimeoutError:
            raise BackendError(FailureKind.CONNECT_TIMEOUT, "the backend did not accept the "
                               "connection in time") from None
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise BackendError(FailureKind.CONNECT, f"cannot connect to the backend "
                               f"({reason})") from None
        return protocol

    def release(self, connection: BackendConnection) -> None:
        if len(self._idle) >= self._keepalive:
            connection.close()
            return
        connection.went_idle(self.idle_timeout)
        self._idle.append(connection)

    def forget(self, connection: BackendConnection) -> None:
        try:
            self._idle.remove(connection)
        except ValueError:
            pass

    def close(self) -> None:
        for connection in list(self._idle):
            connection.close()
        self._idle.clear()
