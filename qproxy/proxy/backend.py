"""HTTP/1.1 to the backend servers: kept-alive connections per server, responses parsed by
httptools (llhttp, the parser Node.js uses).

A proxied request is one head written and one response read on a pooled connection; a general
HTTP client (aiohttp's ClientSession) spent most of the worker's time per request on features a
reverse proxy does not use (cookies, redirects, URL building, auto headers).
"""

from __future__ import annotations

import asyncio
import collections
import os
from typing import AsyncIterator, Protocol

import httptools
from multidict import CIMultiDict

# A backend connection stops reading once this much response body waits for the client.
BODY_HIGH_WATER = 256 * 1024
_CRLF = b"\r\n"
_LAST_CHUNK = b"0\r\n\r\n"


class BackendError(Exception):
    """The exchange with a backend failed. `kind`: connect, connect_timeout, read_timeout,
    protocol, or client (the client's request body broke off or was malformed: not the
    backend's fault); `retryable`: nothing of the request can have been acted on (a kept-alive
    connection the backend had already closed), so it may be sent again."""

    def __init__(self, kind: str, message: str, retryable: bool = False,
                 cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.retryable = retryable
        self.cause = cause  # for kind "client": what went wrong with the client's body


class BackendResponse:
    """Status and headers of a backend response; its body comes from `chunks()`."""

    def __init__(self, connection: "BackendConnection", status: int, reason: str,
                 fields: list[tuple[bytes, bytes]]) -> None:
        self._connection = connection
        self.status = status
        self.reason = reason
        self.fields = fields  # as received: the client's head is made from these bytes
        self._headers: CIMultiDict[str] | None = None

    @property
    def headers(self) -> CIMultiDict[str]:
        if self._headers is None:
            self._headers = CIMultiDict(
                (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
                for name, value in self.fields)
        return self._headers

    def chunks(self) -> AsyncIterator[bytes]:
        return self._connection.body_chunks()

    def whole_body(self) -> bytes | None:
        """The entire body if it has already arrived (small responses usually come with their
        head), else None and `chunks()` streams it."""
        return self._connection.whole_body()

    @property
    def upgraded(self) -> bool:
        """A 101 to an upgrade request: the connection now carries the new protocol."""
        return self._connection.upgraded

    async def tunnel(self, client: "TunnelClient") -> tuple[int, int]:
        """Relay bytes between the client and the backend until one of them closes, or the
        tunnel has been silent for the read timeout."""
        return await self._connection.tunnel(client)

    def release(self) -> None:
        """Back to the pool if the exchange ended cleanly, else closed."""
        self._connection.finish()


class TunnelClient(Protocol):
    """The client side of a tunnel (`HttpProtocol`)."""

    async def tunnel(self, peer: "BackendConnection", leftover: bytes, idle_timeout: float
                     ) -> tuple[int, int]: ...
    def tunnel_write(self, data: bytes) -> None: ...
    def tunnel_closed(self) -> None: ...
    def pause_input(self, reason: object) -> None: ...
    def resume_input(self, reason: object) -> None: ...


class BackendConnection(asyncio.Protocol):
    """One TCP connection to a backend; one request at a time."""

    def __init__(self, pool: "ServerConnections") -> None:
        self._pool = pool
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.reused = False
        self.closed = False
        self._idle_timer: asyncio.TimerHandle | None = None
        self._idle_since: float | None = None
        self._idle_timeout = 0.0
        self._read_timer: asyncio.TimerHandle | None = None
        self._last_read = 0.0
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._sender: asyncio.Task[None] | None = None
        self._read_timeout = 60.0
        self._tunnel_client: TunnelClient | None = None
        self._reset_exchange()

    def _reset_exchange(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._head_only = False
        self._status = 0
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head: asyncio.Future[BackendResponse] | None = None
        self._body: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._reading_paused = False
        self._body_waiter: asyncio.Future[None] | None = None
        self._got_bytes = False
        self._complete = False
        self._framed = False
        self._keep_alive = False
        self._error: BackendError | None = None
        self._sent_all = False
        self._upgrade = False
        self.upgraded = False
        self._leftover = b""

    # -- asyncio side ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._tunnel_client is not None:
            self._tunnel_client.tunnel_write(data)
            return
        if self.upgraded:
            self._leftover += data  # the tunnel is about to start
            return
        self._got_bytes = True
        self._last_read = self._loop.time()
        if self._head is None or self._complete:
            # Bytes while no request is out: the backend broke HTTP. Nothing to deliver them to.
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            if self.upgraded:
                self._leftover = data[exc.args[0]:] if exc.args else b""
            else:
                self._fail(BackendError("protocol", "the backend switched protocols unasked"))
        except httptools.HttpParserError as exc:
            if self._complete:
                self._keep_alive = False  # bytes past the response: finish() closes it
                return
            self._fail(BackendError("protocol", f"the backend sent a malformed response ({exc})"))

    def eof_received(self) -> bool:
        if self._tunnel_client is not None:
            self._tunnel_client.tunnel_closed()
        self._ended()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timers()
        self._ended()
        self._pool.forget(self)
        if self._tunnel_client is not None:
            client, self._tunnel_client = self._tunnel_client, None
            client.tunnel_closed()
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_exception(ConnectionResetError("backend connection lost"))

    def _ended(self) -> None:
        if self._complete or self._error is not None or self._head is None:
            return
        head_done = self._head.done()
        if head_done and not self._framed:
            self._message_done()  # the body was delimited by the close (HTTP/1.0 style)
            return
        retryable = self.reused and not self._got_bytes
        what = "in the middle of the response" if head_done else "before answering"
        self._fail(BackendError("protocol", f"the backend closed the connection {what}",
                                retryable))

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._tunnel_client is not None:
            self._tunnel_client.pause_input(self)

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._tunnel_client is not None:
            self._tunnel_client.resume_input(self)
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    # -- httptools callbacks --------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._complete:
            # More than the response framed: never parse it as a response of its own (its
            # headers would join this one's). The connection is not reused.
            raise BackendError("protocol", "the backend sent more than its response")

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status == 101 and self._upgrade:
            self.upgraded = True
        elif 100 <= status < 200:
            # 103 Early Hints and stray 100 Continue: informational, the real answer follows.
            self._headers, self._reason = [], b""
            return
        self._status = status
        self._keep_alive = self._parser.should_keep_alive()
        for name, _ in self._headers:
            lower = name.lower()
            if lower == b"content-length" or lower == b"transfer-encoding":
                self._framed = True
                break
        response = BackendResponse(self, status, self._reason.decode("latin-1"), self._headers)
        if self._head is not None and not self._head.done():
            self._head.set_result(response)
        if self._head_only or status in (204, 304):
            self._framed = True
            self._message_done()

    def on_body(self, body: bytes) -> None:
        if self._complete:
            return
        self._body.append(body)
        self._buffered += len(body)
        if self._buffered > BODY_HIGH_WATER and not self._reading_paused and self.transport:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def on_message_complete(self) -> None:
        if self._status == 0:
            return  # the end of an informational response
        self._message_done()

    def _message_done(self) -> None:
        if self._complete:
            return
        self._complete = True
        if self._head_only:
            # llhttp cannot be told a response has no body; a fresh parser for the next one.
            self._parser = httptools.HttpResponseParser(self)
        self._wake_reader()

    # -- the exchange ---------------------------------------------------------------------
    def _fail(self, error: BackendError) -> None:
        if self._error is not None or self._complete:
            return
        self._error = error
        if self._head is not None and not self._head.done():
            self._head.set_exception(error)
        self._wake_reader()
        self.close()

    def _wake_reader(self) -> None:
        waiter = self._body_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def exchange(self, head: bytes, body: AsyncIterator[bytes] | None, chunked: bool,
                       head_only: bool, read_timeout: float, upgrade: bool = False
                       ) -> BackendResponse:
        """Send a request; returns once the response head has arrived. With `upgrade`, a 101
        answer makes the connection a tunnel (`BackendResponse.upgraded`)."""
        assert self.transport is not None
        self._head = self._loop.create_future()
        self._head_only = head_only
        self._upgrade = upgrade
        self._read_timeout = read_timeout
        if body is None:
            self.transport.write(head)
            self._sent_all = True
            self._arm_read_timer()
            try:
                return await self._head
            except asyncio.CancelledError:
                self.close()  # the client left: closing tells the backend to stop working
                raise
        sender = self._loop.create_task(self._send_body(head, body, chunked))
        sender.add_done_callback(_retrieve)
        try:
            response = await self._head
        except BaseException:
            sender.cancel()
            self.close()
            raise
        # The backend may answer before it has read the whole body (an early 413, say): the
        # body keeps streaming while it reads; `finish` decides whether the connection is reusable.
        self._sender = sender
        return response

    async def _send_body(self, head: bytes, body: AsyncIterator[bytes], chunked: bool) -> None:
        assert self.transport is not None
        transport = self.transport
        transport.write(head)
        chunks = body.__aiter__()
        try:
            while True:
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    break
                except (asyncio.CancelledError, GeneratorExit):
                    raise
                except Exception as exc:
                    self._fail(BackendError("client", f"the client's request body failed "
                                            f"({exc})", cause=exc))
                    return
                if not chunk:
                    continue
                if chunked:
                    transport.writelines((b"%x\r\n" % len(chunk), chunk, _CRLF))
                else:
                    transport.write(chunk)
                if self._write_paused:
                    await self._drain()
            if chunked:
                transport.write(_LAST_CHUNK)
            self._sent_all = True
            self._arm_read_timer()  # like nginx's proxy_read_timeout: from the end of the send
        except (ConnectionError, RuntimeError):
            self._fail(BackendError("protocol", "the backend closed the connection while the "
                                    "request body was being sent"))
        except asyncio.CancelledError:
            self.close()  # a half-sent body: the connection is useless
            raise
        except BaseException:
            self.close()
            raise

    async def _drain(self) -> None:
        if self.closed:
            raise ConnectionResetError("backend connection lost")
        self._drain_waiter = self._loop.create_future()
        try:
            async with asyncio.timeout(self._read_timeout):  # nginx's proxy_send_timeout
                await self._drain_waiter
        except TimeoutError:
            self._fail(BackendError("read_timeout", "the backend stopped reading the request "
                                    "body"))
        finally:
            self._drain_waiter = None

    def _take_buffered(self) -> bytes:
        data = self._body.popleft() if len(self._body) == 1 else b"".join(self._body)
        self._body.clear()
        self._buffered = 0
        if self._reading_paused and self.transport is not None and not self.closed:
            self._reading_paused = False
            self._last_read = self._loop.time()  # the read timeout counts from here again
            self.transport.resume_reading()
        return data

    def whole_body(self) -> bytes | None:
        if not self._complete or self._error is not None:
            return None
        return self._take_buffered() if self._body else b""

    async def body_chunks(self) -> AsyncIterator[bytes]:
        while True:
            if self._body:
                yield self._take_buffered()
                continue
            if self._error is not None:
                raise self._error
            if self._complete:
                return
            self._body_waiter = self._loop.create_future()
            try:
                await self._body_waiter
            finally:
                self._body_waiter = None

    async def tunnel(self, client: TunnelClient) -> tuple[int, int]:
        self._tunnel_client = client
        leftover, self._leftover = self._leftover, b""
        return await client.tunnel(self, leftover, self._read_timeout)

    # What the client side of a tunnel calls.
    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def _arm_read_timer(self) -> None:
        self._last_read = self._loop.time()
        if self._read_timer is None:
            self._read_timer = self._loop.call_at(self._last_read + self._read_timeout,
                                                  self._read_due)

    def _read_due(self) -> None:
        # One timer per connection, moved on only when it fires and lapsing when no response is
        # awaited: cheaper than arming and cancelling one per request and per read.
        self._read_timer = None
        if (self._head is None or not self._sent_all or self._complete or self.upgraded
                or self._error is not None):
            return
        now = self._loop.time()
        if self._reading_paused:
            # We stopped reading because the client is slow to take the body: not the
            # backend's silence (nginx stops its read timer then too).
            self._last_read = now
        due = self._last_read + self._read_timeout
        if now < due:
            self._read_timer = self._loop.call_at(due, self._read_due)
            return
        self._fail(BackendError("read_timeout", "the backend did not answer in time"))

    def _cancel_read_timer(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _cancel_timers(self) -> None:
        self._cancel_read_timer()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def finish(self) -> None:
        """The caller is done with the response: pool the connection or close it."""
        sender, self._sender = self._sender, None
        body_sent = self._sent_all and (sender is None or sender.done())
        if sender is not None and not sender.done():
            sender.cancel()
        reusable = (self._complete and self._error is None and self._keep_alive and body_sent
                    and not self._body and not self.closed and not self.upgraded)
        if not reusable:
            self.close()
            return
        self._reset_exchange()
        self._pool.release(self)

    def idle(self, timeout: float) -> None:
        """In the pool from now; closed if still there after `timeout` seconds. The timer is
        moved on only when it fires, as the read timer is."""
        self._idle_since = self._loop.time()
        self._idle_timeout = timeout
        if self._idle_timer is None:
            self._idle_timer = self._loop.call_at(self._idle_since + timeout, self._idle_due)

    def _idle_due(self) -> None:
        self._idle_timer = None
        if self._idle_since is None:
            return  # in use; `idle` arms it again
        due = self._idle_since + self._idle_timeout
        if self._loop.time() < due:
            self._idle_timer = self._loop.call_at(due, self._idle_due)
            return
        self.close()

    def take(self) -> None:
        self._idle_since = None
        self.reused = True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._cancel_timers()
            self._pool.forget(self)
            if self.transport is not None:
                self.transport.close()


def _retrieve(task: asyncio.Task[None]) -> None:
    # The body sender's failure (the client's upload broke off) is reported through the
    # exchange; this only keeps asyncio from logging it a second time as "never retrieved".
    if not task.cancelled():
        task.exception()


class ServerConnections:
    """Kept-alive connections to one backend server (nginx's `keepalive N`: at most N idle)."""

    def __init__(self, host: str, port: int, keepalive: int, idle_timeout: float,
                 connect_timeout: float) -> None:
        self.host = host
        self.port = port
        self._keepalive = keepalive
        self._idle_timeout = idle_timeout
        self._connect_timeout = connect_timeout
        self._idle: list[BackendConnection] = []

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
                    lambda: BackendConnection(self), self.host, self.port)
        except TimeoutError:
            raise BackendError("connect_timeout", "the backend did not accept the connection "
                               "in time", retryable=True) from None
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise BackendError("connect", f"cannot connect to the backend "
                               f"({reason})", retryable=True) from None
        return protocol

    def release(self, connection: BackendConnection) -> None:
        if len(self._idle) >= self._keepalive:
            connection.close()
            return
        connection.idle(self._idle_timeout)
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
