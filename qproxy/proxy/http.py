"""The client side of HTTP/1.1: requests parsed by httptools (llhttp), responses framed here.

One `HttpProtocol` per TLS connection, above `TlsAppTransport`. Requests are handled one at a
time in arrival order (pipelined ones wait their turn); each runs the handler as one task,
which answers through the protocol (`send_response`, or `start_response` / `write_body` /
`end_response` for streamed bodies, or `tunnel` after a 101). A general web framework spent a
third of the worker's time per proxied request on request and response objects a reverse proxy
does not need.
"""

from __future__ import annotations

import asyncio
import collections
import time
from email.utils import formatdate
from typing import Awaitable, Callable, Protocol
from urllib.parse import unquote

import httptools
from multidict import CIMultiDict

from ..config.model import ServerSection
from .headers import Fields, encode_response_head

# A request body stops being read from the client once this much waits for the backend.
BODY_HIGH_WATER = 256 * 1024
# Pipelined requests parsed ahead of the one being answered before reading pauses.
MAX_QUEUED_REQUESTS = 16
# Input is parsed this much at a time, so that a pause takes effect within one read.
FEED_SLICE = 16 * 1024
# Why input is paused (besides each request body over its high-water mark).
_QUEUE_FULL = "queue full"
_UPGRADING = "upgrading"

PHRASES = {
    400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout", 413: "Content Too Large",
    414: "URI Too Long", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
    502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
}


_TEXT = [(b"Content-Type", b"text/plain")]


class BadRequest(Exception):
    """The client's bytes are not a request we will serve; `status` says which error."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class RequestBody:
    """A request body as it arrives: an async iterator of chunks, with back-pressure."""

    __slots__ = ("_protocol", "_chunks", "_buffered", "_waiter", "complete", "error",
                 "received")

    def __init__(self, protocol: "HttpProtocol") -> None:
        self._protocol = protocol
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self.complete = False
        self.error: BaseException | None = None
        self.received = 0

    def feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        self.received += len(chunk)
        if self._buffered > BODY_HIGH_WATER:
            self._protocol.pause_input(self)
        self._wake()

    def finish(self) -> None:
        self.complete = True
        self._wake()

    def fail(self, error: BaseException) -> None:
        if not self.complete:
            self.error = error
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __aiter__(self) -> "RequestBody":
        return self

    async def __anext__(self) -> bytes:
        while True:
            if self._chunks:
                chunks = self._chunks
                data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self._buffered = 0
                self._protocol.resume_input(self)
                return data
            if self.error is not None:
                raise self.error
            if self.complete:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(self._protocol.body_timeout):
                    await self._waiter
            except TimeoutError:
                self.error = BadRequest(408, "the request body stopped arriving")
            finally:
                self._waiter = None


class HttpRequest:
    """What the handler sees of one request. Header values are decoded as UTF-8 with
    surrogateescape, so the client's exact bytes can be given back to a backend."""

    __slots__ = ("method", "raw_path", "version", "headers", "keep_alive", "upgrade", "body",
                 "remote", "transport", "started")

    def __init__(self, method: str, raw_path: str, version: str, headers: CIMultiDict[str],
                 keep_alive: bool, upgrade: bool, body: RequestBody | None, remote: str,
                 transport: asyncio.Transport) -> None:
        self.method = method
        self.raw_path = raw_path
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.upgrade = upgrade
        self.body = body
        self.remote = remote
        self.transport = transport
        self.started = time.monotonic()

    @property
    def host(self) -> str | None:
        return self.headers.get("Host")

    @property
    def path(self) -> str:
        """The decoded path, for routing: no query, no scheme and authority (absolute form)."""
        target = self.raw_path
        if not target.startswith("/"):
            scheme, sep, rest = target.partition("://")
            target = ("/" + rest.partition("/")[2]) if sep else target
        path = target.partition("?")[0].partition("#")[0]
        return unquote(path) if "%" in path else path


Handler = Callable[[HttpRequest, "HttpProtocol"], Awaitable[None]]
ErrorLogger = Callable[[str, int, str], None]


class TunnelPeer(Protocol):
    """The far end of a tunnel (the backend connection after a 101)."""

    closed: bool

    def write(self, data: bytes) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None: ...


class _Date:
    """The Date header value, formatted once a second rather than once a response."""

    second = -1
    value = b""

    @classmethod
    def now(cls) -> bytes:
        second = int(time.time())
        if second != cls.second:
            cls.second, cls.value = second, formatdate(second, usegmt=True).encode()
        return cls.value


def _same_authority(target: str, host: str) -> bool:
    """Whether an absolute-form target ('http://name:port/path') names the Host header's host."""
    _, sep, rest = target.partition("://")
    authority = rest.partition("/")[0].partition("?")[0].rpartition("@")[2]
    return bool(sep) and authority.lower() == host.strip().lower()


def error_body(status: int, text: str) -> bytes:
    return f"{status} {text}\n".encode()


class HttpProtocol(asyncio.Protocol):
    def __init__(self, server: "HttpServer") -> None:
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._remote = "-"
        self._parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        # The request being parsed (its head pieces, then its body).
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._in_head = False
        self._head_bytes = 0
        section = server.section
        self._head_limit = section.max_request_line + section.max_header_size * (
            section.max_header_count + 1)
        self._stash = b""  # read while input was paused, parsed on resume
        self._parsing: HttpRequest | None = None
        # Requests waiting to be answered; the one being answered and its task.
        self._queue: collections.deque[HttpRequest | BadRequest] = collections.deque()
        self._active: HttpRequest | None = None
        self._task: asyncio.Task[None] | None = None
        # The response being written.
        self._response_started = False
        self._response_chunked = False
        self._close_after = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._input_paused_by: set[object] = set()
        self._keepalive_timer: asyncio.TimerHandle | None = None
        self._idle_since: float | None = None  # since the last response, with no request
        self._tunnel: TunnelPeer | None = None
        self._tunnel_done: asyncio.Future[None] | None = None
        self._tunnel_idle = _IdleTunnel.NONE
        self._leftover = b""
        self._upgrading = False
        self._response_ended = True
        self.tunnel_bytes_in = 0
        self.tunnel_bytes_out = 0
        self._closing = False
        self._closed = False

    # -- asyncio side ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self._remote = str(peer[0]) if isinstance(peer, tuple) else "-"
        self._server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self._tunnel is not None:
            self.tunnel_bytes_in += len(data)
            self._tunnel_idle.touch()
            self._tunnel.write(data)
            return
        if self._parser is None:
            if self._upgrading:
                # Sent ahead of the 101 (or its refusal): for the tunnel, if there is one.
                self._leftover += data
                self.pause_input(_UPGRADING)
            return  # otherwise a bad request ended parsing; its answer is queued
        self._idle_since = None
        if self._stash or self._input_paused_by:
            # Reading is paused but a read was already under way: parse it on resume.
            self._stash += data
            return
        self._parse(data)

    def _parse(self, data: bytes) -> None:
        view = memoryview(data)
        for start in range(0, len(data), FEED_SLICE):
            if self._input_paused_by or self._parser is None:
                # Pausing does not stop the bytes already read: keep the rest (pipelined
                # requests, say) unparsed until the queue drains; after an upgrade request
                # the rest belongs to the tunnel.
                if self._parser is not None:
                    self._stash = bytes(view[start:])
                elif self._upgrading:
                    self._leftover += bytes(view[start:])
                return
            self._feed(bytes(view[start:start + FEED_SLICE]) if len(data) > FEED_SLICE
                       else data)

    def _feed(self, data: bytes) -> None:
        parser = self._parser
        assert parser is not None
        if self._in_head:
            # httptools holds a header line until it ends and checks nothing meanwhile:
            # bound the head as a whole (its lines' limits summed), so one endless line
            # cannot grow without bound.
            self._head_bytes += len(data)
            if self._head_bytes > self._head_limit:
                self._reject(BadRequest(431, "request head too large"))
                return
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._parser = None
            self._upgrading = True
            self._leftover = data[exc.args[0]:] if exc.args else b""
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, BadRequest):
                self._reject(cause)
            else:
                self._reject(BadRequest(400, f"malformed request ({cause or exc})"))
        except httptools.HttpParserError as exc:
            self._reject(BadRequest(400, f"malformed request ({exc})"))

    def eof_received(self) -> bool:
        # No more requests; the one in hand is still answered.
        self._parser = None
        if self._parsing is not None and self._parsing.body is not None:
            self._parsing.body.fail(ConnectionResetError("the client closed the connection"))
        if self._tunnel is not None:
            self._end_tunnel()
        elif self._active is None and not self._queue:
            self.close()
        else:
            self._close_after = True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._parser = None
        self._cancel_keepalive_timer()
        self._server.connections.discard(self)
        error = ConnectionResetError("the client closed the connection")
        for request in (self._parsing, self._active, *self._queue):
            if isinstance(request, HttpRequest) and request.body is not None:
                request.body.fail(error)
        self._queue.clear()
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)  # write_body then sees the connection closed
        if self._tunnel is not None:
            self._end_tunnel()
        if self._task is not None and not self._task.done():
            self._task.cancel()  # the handler stops; its backend connection is closed
        self._transport = None

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._tunnel is not None:
            self._tunnel.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._tunnel is not None:
            self._tunnel.resume_reading()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._active is None and self._queue and not self._closed:
            item = self._queue.popleft()
            if len(self._queue) < MAX_QUEUED_REQUESTS:
                self.resume_input(_QUEUE_FULL)
            self._start(item)

    # -- flow control of the client's input -----------------------------------------------
    def pause_input(self, reason: object) -> None:
        if not self._input_paused_by and self._transport is not None:
            self._transport.pause_reading()
        self._input_paused_by.add(reason)

    def resume_input(self, reason: object) -> None:
        if reason in self._input_paused_by:
            self._input_paused_by.discard(reason)
            if not self._input_paused_by and self._transport is not None and not self._closed:
                if self._stash:
                    # The socket stays paused until what was read ahead is parsed; else the
                    # stash could grow by a read per pause.
                    self._loop.call_soon(self._replay_stash)
                else:
                    self._transport.resume_reading()

    def _replay_stash(self) -> None:
        if self._input_paused_by or self._closed or self._transport is None:
            return  # paused again meanwhile: the next resume replays
        data, self._stash = self._stash, b""
        if self._parser is not None:
            self._parse(data)
        if not self._stash and not self._input_paused_by and self._transport is not None:
            self._transport.resume_reading()

    # -- httptools callbacks --------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._in_head = True
        self._head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._server.section.max_request_line:
            raise BadRequest(414, "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        section = self._server.section
        if len(name) + len(value) + 2 > section.max_header_size:
            raise BadRequest(431, "header field too large")
        self._headers.append((name, value))
        if len(self._headers) > section.max_header_count:
            raise BadRequest(431, "too many header fields")

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert parser is not None and self._transport is not None
        self._in_head = False
        headers: CIMultiDict[str] = CIMultiDict()
        has_body = False
        hosts = 0
        for name, value in self._headers:
            lower = name.lower()
            if lower == b"transfer-encoding" or (lower == b"content-length"
                                                  and value.strip() != b"0"):
                has_body = True
            elif lower == b"host":
                hosts += 1
            headers.add(name.decode("utf-8", "surrogateescape"),
                        value.decode("utf-8", "surrogateescape"))
        self._headers = []
        method = parser.get_method().decode("ascii", "replace")
        version = parser.get_http_version()
        target = self._url.decode("utf-8", "surrogateescape")
        upgrade = parser.should_upgrade()
        # Where routing and the backend could disagree on the host, refuse, as nginx does.
        if hosts > 1:
            raise BadRequest(400, "more than one Host header")
        if hosts == 0 and version != "1.0":
            raise BadRequest(400, "HTTP/1.1 request without a Host header")
        if method == "CONNECT":
            raise BadRequest(405, "CONNECT is not supported")
        if not target.startswith(("/", "*")) and not _same_authority(target, headers["Host"]
                                                                     if hosts else ""):
            raise BadRequest(400, "the absolute request target names another host than Host")
        if upgrade and has_body:
            # llhttp hands an upgrade request's body over as post-upgrade bytes.
            raise BadRequest(400, "an upgrade request with a body")
        request = HttpRequest(
            method, target, version, headers, parser.should_keep_alive(), upgrade,
            RequestBody(self) if has_body else None, self._remote, self._transport)
        self._parsing = request
        self._enqueue(request)

    def on_body(self, body: bytes) -> None:
        request = self._parsing
        if request is not None and request.body is not None:
            request.body.feed(body)

    def on_message_complete(self) -> None:
        request, self._parsing = self._parsing, None
        if request is not None and request.body is not None:
            request.body.finish()

    # -- requests in turn -----------------------------------------------------------------
    def _enqueue(self, item: HttpRequest | BadRequest) -> None:
        if self._active is None and not self._queue:
            self._start(item)
            return
        self._queue.append(item)
        if len(self._queue) >= MAX_QUEUED_REQUESTS:
            self.pause_input(_QUEUE_FULL)

    def _reject(self, error: BadRequest) -> None:
        self._parser = None  # nothing after a bad request can be trusted to be framed right
        parsing, self._parsing = self._parsing, None
        if parsing is not None and parsing.body is not None:
            # A bad body: its request is being (or will be) handled; its handler answers, and
            # its access-log line (or error line) says why.
            parsing.body.fail(error)
            return
        self._enqueue(error)

    def _start(self, item: HttpRequest | BadRequest) -> None:
        self._response_started = False
        self._response_chunked = False
        if isinstance(item, BadRequest):
            self._server.error_logger(self._remote, item.status, str(item))
            self._close_after = True
            self.send_response(None, item.status, PHRASES.get(item.status, "Error"),
                               _TEXT,
                               error_body(item.status, PHRASES.get(item.status, "Error")))
            self._finish()
            return
        self._active = item
        transport = item.transport
        if hasattr(transport, "request_started"):
            transport.request_started()
        self._task = self._loop.create_task(self._run(item))

    async def _run(self, request: HttpRequest) -> None:
        cancelled = False
        try:
            await self._server.handler(request, self)
        except asyncio.CancelledError:
            cancelled = True  # the client went away, or the drain at shutdown ran out
            raise
        except Exception as exc:  # a bug in the handler: answer 500, keep the worker
            self._server.error_logger(request.remote, 500, f"handler failed: {exc!r}")
        finally:
            if cancelled or self._closed:
                self._active, self._task = None, None
                self.close()
            else:
                if not self._response_started:
                    self._close_after = True
                    self.send_response(request, 500, PHRASES[500], _TEXT,
                                       error_body(500, PHRASES[500]))
                elif not self._response_ended:
                    self.close()  # a streamed response left unfinished (the backend failed)
                self._finish()

    def _finish(self) -> None:
        request, self._active = self._active, None
        self._task = None
        if request is not None and hasattr(request.transport, "request_finished"):
            request.transport.request_finished()
        if self._closed:
            return
        if self._close_after or self._closing:
            self.close()
            return
        if request is not None and request.body is not None:
            self.resume_input(request.body)  # a body the handler left unread
        if self._queue:
            if self._write_paused:
                return  # the client is not reading: the next answer waits for resume_writing
            item = self._queue.popleft()
            if len(self._queue) < MAX_QUEUED_REQUESTS:
                self.resume_input(_QUEUE_FULL)
            self._start(item)
            return
        if self._parser is None:
            self.close()  # parsing ended: an upgrade the backend refused, or the client's EOF
            return
        # One timer per connection, moved on only when it fires (not armed and cancelled per
        # request); it lapses while requests come.
        self._idle_since = self._loop.time()
        if self._keepalive_timer is None:
            self._keepalive_timer = self._loop.call_at(
                self._idle_since + self._server.section.keepalive_timeout,
                self._keepalive_expired)

    def _keepalive_expired(self) -> None:
        self._keepalive_timer = None
        if self._idle_since is None:
            return
        due = self._idle_since + self._server.section.keepalive_timeout
        if self._loop.time() < due:
            self._keepalive_timer = self._loop.call_at(due, self._keepalive_expired)
        elif self._active is None and not self._queue and self._parsing is None:
            self.close()

    def _cancel_keepalive_timer(self) -> None:
        if self._keepalive_timer is not None:
            self._keepalive_timer.cancel()
            self._keepalive_timer = None

    # -- answering ------------------------------------------------------------------------
    def _connection_header(self, request: HttpRequest | None) -> bytes | None:
        """What the response says of the connection; decides whether it is closed after."""
        if request is None or not request.keep_alive or self._closing or (
                request.upgrade and self._parser is None) or (
                # An unread rest of the body would be taken for the next request.
                request.body is not None and not request.body.complete):
            self._close_after = True
        if self._close_after:
            return b"close"
        if request.version == "1.0":
            return b"keep-alive"
        return None

    def send_interim(self, head: bytes) -> None:
        """An informational response (100 Continue) before the real one."""
        if self._transport is not None and not self._response_started:
            self._transport.write(head)

    def send_response(self, request: HttpRequest | None, status: int, reason: str,
                      fields: Fields, body: bytes) -> None:
        """A whole response: head and body leave in one write, one TLS record."""
        self._response_started = True
        self._response_ended = True
        head_only = request is not None and request.method == "HEAD"
        no_body = status in (204, 304) or status < 200
        head = encode_response_head(
            status, reason, fields, content_length=None if no_body else len(body),
            chunked=False, date=_Date.now(), keep_length=head_only or no_body,
            # A 101's own headers say "Connection: upgrade".
            connection=None if status == 101 else self._connection_header(request))
        if self._transport is not None:
            self._transport.write(head if head_only or no_body else head + body)

    def start_response(self, request: HttpRequest, status: int, reason: str,
                       fields: Fields, length: int | None) -> None:
        """A response whose body follows through `write_body`. Without a length it is sent
        chunked (HTTP/1.1) or delimited by closing the connection (HTTP/1.0)."""
        self._response_started = True
        self._response_ended = False
        no_body = request.method == "HEAD" or status in (204, 304)
        chunked = length is None and not no_body and request.version != "1.0"
        if length is None and not no_body and not chunked:
            self._close_after = True
        self._response_chunked = chunked
        head = encode_response_head(
            status, reason, fields, content_length=length, chunked=chunked,
            connection=self._connection_header(request), date=_Date.now(),
            keep_length=no_body)
        if self._transport is not None:
            self._transport.write(head)

    async def write_body(self, data: bytes) -> None:
        """Raises ConnectionError once the client has gone."""
        if self._closed or self._transport is None:
            raise ConnectionResetError("the client closed the connection")
        if self._response_chunked:
            self._transport.write(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            self._transport.write(data)
        if self._write_paused:
            self._drain_waiter = self._loop.create_future()
            try:
                async with asyncio.timeout(self._server.section.send_timeout):
                    await self._drain_waiter
            except TimeoutError:
                self.abort()
                raise ConnectionResetError("the client stopped taking the response") from None
            finally:
                self._drain_waiter = None
            if self._closed:
                raise ConnectionResetError("the client closed the connection")

    def end_response(self) -> None:
        self._response_ended = True
        if self._response_chunked and self._transport is not None and not self._closed:
            self._transport.write(b"0\r\n\r\n")

    async def tunnel(self, peer: TunnelPeer, leftover: bytes, idle_timeout: float
                     ) -> tuple[int, int]:
        """After a 101: relay bytes both ways until either side closes, or no byte has gone
        either way for `idle_timeout` seconds (nginx's proxy_read_timeout on an upgraded
        connection), which also frees the backend connection of a client that vanished.

        Returns (bytes from the client, bytes to the client)."""
        self._response_ended = True
        self.tunnel_bytes_in = 0
        self.tunnel_bytes_out = 0
        self._tunnel = peer
        self._tunnel_done = self._loop.create_future()
        self._tunnel_idle = _IdleTunnel(self, idle_timeout)
        if self._leftover:
            data, self._leftover = self._leftover, b""
            self.data_received(data)
        self.resume_input(_UPGRADING)
        if self._write_paused:
            peer.pause_reading()
        if leftover:
            self.tunnel_write(leftover)
        if peer.closed:
            self._end_tunnel()
        try:
            await self._tunnel_done
        finally:
            self._close_after = True
            self._tunnel_idle.stop()
        return self.tunnel_bytes_in, self.tunnel_bytes_out

    def tunnel_write(self, data: bytes) -> None:
        """Bytes from the far end for the client."""
        if self._transport is not None and not self._closed:
            self.tunnel_bytes_out += len(data)
            self._tunnel_idle.touch()
            self._transport.write(data)

    def tunnel_closed(self) -> None:
        """The far end has gone."""
        self._end_tunnel()

    def _end_tunnel(self) -> None:
        peer, self._tunnel = self._tunnel, None
        if peer is not None:
            peer.close()
        if self._tunnel_done is not None and not self._tunnel_done.done():
            self._tunnel_done.set_result(None)

    # -- closing --------------------------------------------------------------------------
    @property
    def body_timeout(self) -> float:
        return self._server.section.client_body_timeout

    def abort(self) -> None:
        if self._transport is not None and not self._closed:
            self._transport.abort()

    def close(self) -> None:
        self._cancel_keepalive_timer()
        if self._transport is not None and not self._closed:
            self._transport.close()

    def shutdown(self) -> None:
        """Finish the request in hand (if any), then close; idle connections close now."""
        self._closing = True
        if self._active is None and not self._queue:
            self.close()


class _IdleTunnel:
    """Ends a tunnel once no byte has crossed it for `timeout` seconds: one timer, moved on
    only when it fires (cheaper than re-arming per chunk)."""

    NONE: "_IdleTunnel"

    def __init__(self, protocol: HttpProtocol | None, timeout: float) -> None:
        self._protocol = protocol
        self._timeout = timeout
        self._loop = asyncio.get_running_loop() if protocol is not None else None
        self._last = self._loop.time() if self._loop else 0.0
        self._timer = self._loop.call_later(timeout, self._due) if self._loop else None

    def touch(self) -> None:
        if self._loop is not None:
            self._last = self._loop.time()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _due(self) -> None:
        assert self._loop is not None and self._protocol is not None
        due = self._last + self._timeout
        if self._loop.time() < due:
            self._timer = self._loop.call_at(due, self._due)
            return
        self._timer = None
        self._protocol.tunnel_closed()


_IdleTunnel.NONE = _IdleTunnel(None, 0.0)


class HttpServer:
    """Makes one `HttpProtocol` per connection and drains them all on shutdown."""

    def __init__(self, handler: Handler, section: ServerSection, error_logger: ErrorLogger
                 ) -> None:
        self.handler = handler
        self.section = section
        self.error_logger = error_logger
        self.connections: set[HttpProtocol] = set()

    def __call__(self) -> HttpProtocol:
        return HttpProtocol(self)

    async def shutdown(self, timeout: float) -> None:
        for protocol in list(self.connections):
            protocol.shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.connections and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for protocol in list(self.connections):
            protocol.abort()  # its connection_lost cancels the handler still running
