"""The reverse-proxy request handler: one client request -> one backend request, bodies streamed."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, Mapping

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from ..tls.machine import HandshakeInfo
from .backend import BackendError, BackendResponse
from .headers import (
    downstream_response_headers,
    encode_request_head,
    is_websocket_upgrade,
    response_connection_tokens,
    upstream_request_headers,
)
from .upstream import Router, ServerState, Upstream

CLIENT_CLOSED_REQUEST = 499  # nginx's status for "the client went away first"


class UpstreamFailure(Exception):
    """The backend could not answer. `status` is what the client gets (502 or 504)."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        self.status = status
        self.kind = kind
        super().__init__(message)


@dataclass
class Exchange:
    """What one request did, for the access log and metrics."""

    request: web.BaseRequest
    started: float = field(default_factory=time.monotonic)
    status: int = 0
    upstream: str = "-"
    server: str = "-"
    upstream_seconds: float | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    error: str | None = None


AccessLogger = Callable[[Exchange, HandshakeInfo | None], None]
IdentityFn = Callable[[HandshakeInfo | None], Mapping[str, str] | None]


def _short(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=f"{status} {text}\n", content_type="text/plain")


class ProxyHandler:
    def __init__(self, upstreams: dict[str, Upstream], router: Router,
                 access_logger: AccessLogger, identity: IdentityFn) -> None:
        self._upstreams = upstreams
        self._router = router
        self._access_logger = access_logger
        self._identity = identity

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        transport = request.transport
        info: HandshakeInfo | None = transport.get_extra_info("tls") if transport else None
        if transport is not None and hasattr(transport, "request_started"):
            transport.request_started()
        exchange = Exchange(request)
        try:
            response = await self._proxy(request, info, exchange)
            exchange.status = exchange.status or response.status
            return response
        except asyncio.CancelledError:
            exchange.status = CLIENT_CLOSED_REQUEST
            exchange.error = "client closed the connection"
            raise
        finally:
            self._access_logger(exchange, info)
            if transport is not None and hasattr(transport, "request_finished"):
                transport.request_finished()

    async def _proxy(self, request: web.BaseRequest, info: HandshakeInfo | None,
                     exchange: Exchange) -> web.StreamResponse:
        name = self._router.match(request.host, request.path)
        if name is None:
            return _short(404, "Not Found: no route for this host and path")
        upstream = self._upstreams[name]
        exchange.upstream = name
        client_ip = request.remote or "-"
        websocket = is_websocket_upgrade(request.headers)
        headers = upstream_request_headers(
            request.headers, client_ip=client_ip, host=request.headers.get("Host"),
            client_identity=self._identity(info), keep_upgrade=False)
        if websocket:
            return await self._websocket(request, upstream, headers, exchange)
        has_body = request.body_exists
        if has_body and request.headers.get("Expect", "").lower() == "100-continue":
            # Like nginx: answer the client's Expect ourselves rather than forwarding it.
            request.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        headers.popall("Expect", None)
        body = _counting(request.content, exchange) if has_body else None
        # A body without Content-Length (the client sent it chunked) goes on chunked.
        chunked = has_body and "Content-Length" not in headers
        if chunked:
            headers["Transfer-Encoding"] = "chunked"
        try:
            head = encode_request_head(request.method, request.raw_path, headers,
                                       upstream.name)
        except ValueError as exc:
            return _short(400, f"Bad Request: {exc}")
        try:
            return await self._forward(request, upstream, head, body, chunked, exchange)
        except UpstreamFailure as failure:
            exchange.error = str(failure)
            return _short(failure.status, str(failure))

    async def _send(self, upstream: Upstream, request: web.BaseRequest, head: bytes,
                    body: AsyncIterator[bytes] | None, chunked: bool, exchange: Exchange,
                    ) -> tuple[BackendResponse, ServerState]:
        tried: set[str] = set()
        while True:
            server = upstream.pool.pick(frozenset(tried))
            if server is None:
                raise UpstreamFailure(502, "unavailable", "Bad Gateway: no backend server left to try")
            tried.add(server.address)
            exchange.server = server.address
            connections = upstream.connections(server)
            started = time.monotonic()
            fresh = False
            while True:
                try:
                    connection = await connections.acquire(fresh)
                    response = await connection.exchange(
                        head, body, chunked, request.method == "HEAD",
                        upstream.section.read_timeout)
                except BackendError as error:
                    if error.retryable and body is None and not fresh and error.kind == "protocol":
                        fresh = True  # a kept-alive connection the backend had closed: reopen
                        continue
                    upstream.mark_failed(server)
                    if error.kind == "connect" and body is None and len(tried) < len(
                            upstream.pool.servers):
                        break  # nothing reached this server: try the next one
                    raise _failure(error) from None
                upstream.mark_ok(server)
                exchange.upstream_seconds = time.monotonic() - started
                return response, server

    async def _forward(self, request: web.BaseRequest, upstream: Upstream, head: bytes,
                       body: AsyncIterator[bytes] | None, chunked: bool, exchange: Exchange,
                       ) -> web.StreamResponse:
        backend, server = await self._send(upstream, request, head, body, chunked, exchange)
        try:
            tokens = response_connection_tokens(backend.headers)
            headers = downstream_response_headers(backend.headers.items(), tokens)
            exchange.status = backend.status
            whole = (backend.whole_body() if request.method != "HEAD"
                     and backend.status not in (204, 304) else None)
            if whole is not None:
                # Already complete: head and body leave in one write, one TLS record.
                exchange.bytes_out = len(whole)
                return web.Response(status=backend.status, reason=backend.reason,
                                    headers=headers, body=whole)
            response = web.StreamResponse(status=backend.status, reason=backend.reason,
                                          headers=headers)
            await response.prepare(request)
            chunks = backend.chunks()
            while True:
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    break
                except BackendError as exc:
                    # Headers are gone already: all we can do is cut the client off, as nginx does.
                    exchange.error = f"backend failed mid-response ({exc})"
                    upstream.mark_failed(server)
                    request.transport.close()
                    return response
                try:
                    await response.write(chunk)
                except ConnectionError:
                    # The client went away; the unfinished backend connection is closed below,
                    # which cancels the backend's work.
                    exchange.status = CLIENT_CLOSED_REQUEST
                    exchange.error = "client closed the connection"
                    return response
                exchange.bytes_out += len(chunk)
            await response.write_eof()
            return response
        finally:
            backend.release()

    async def _websocket(self, request: web.BaseRequest, upstream: Upstream,
                         headers: CIMultiDict[str], exchange: Exchange) -> web.StreamResponse:
        server = upstream.pool.pick()
        if server is None:
            return _short(502, "Bad Gateway: no backend server")
        exchange.server = server.address
        protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")
                     if p.strip()]
        for name in ("Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Protocol",
                     "Sec-WebSocket-Extensions"):
            headers.popall(name, None)
        url = URL(server.base_url.replace("http://", "ws://") + request.raw_path, encoded=True)
        try:
            backend = await upstream.session.ws_connect(url, headers=headers, protocols=protocols,
                                                        autoping=False, max_msg_size=0)
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            upstream.mark_failed(server)
            exchange.error = f"websocket upgrade to backend failed ({exc.__class__.__name__})"
            return _short(502, "Bad Gateway: the backend refused the WebSocket upgrade")
        async with backend:
            client = web.WebSocketResponse(
                protocols=(backend.protocol,) if backend.protocol else (), autoping=False,
                max_msg_size=0)
            await client.prepare(request)
            exchange.status = 101
            await _relay_websocket(client, backend, exchange)
        return client


def _failure(error: BackendError) -> UpstreamFailure:
    if error.kind == "connect_timeout":
        return UpstreamFailure(504, error.kind, "Gateway Timeout: the backend did not accept "
                               "the connection in time")
    if error.kind == "read_timeout":
        return UpstreamFailure(504, error.kind, "Gateway Timeout: the backend did not answer "
                               "in time")
    if error.kind == "connect":
        return UpstreamFailure(502, error.kind, f"Bad Gateway: {error}")
    return UpstreamFailure(502, "protocol", f"Bad Gateway: {error}")


async def _counting(stream: aiohttp.StreamReader, exchange: Exchange):
    async for chunk in stream.iter_any():
        exchange.bytes_in += len(chunk)
        yield chunk


async def _relay_websocket(client: web.WebSocketResponse, backend: aiohttp.ClientWebSocketResponse,
                           exchange: Exchange) -> None:
    async def pump(source, sink) -> None:
        async for message in source:
            if message.type == aiohttp.WSMsgType.TEXT:
                await sink.send_str(message.data)
            elif message.type == aiohttp.WSMsgType.BINARY:
                exchange.bytes_out += len(message.data)
                await sink.send_bytes(message.data)
            elif message.type == aiohttp.WSMsgType.PING:
                await sink.ping(message.data)
            elif message.type == aiohttp.WSMsgType.PONG:
                await sink.pong(message.data)
            elif message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                                  aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                break
        await sink.close()

    tasks = [asyncio.ensure_future(pump(client, backend)), asyncio.ensure_future(pump(backend, client))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
