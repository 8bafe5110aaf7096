"""The reverse-proxy request handler: one client request -> one backend request, bodies streamed."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from ..tls.machine import HandshakeInfo
from .headers import (
    downstream_response_headers,
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
        try:
            return await self._forward(request, upstream, headers, body, exchange)
        except UpstreamFailure as failure:
            exchange.error = str(failure)
            return _short(failure.status, str(failure))

    async def _send(self, upstream: Upstream, request: web.BaseRequest, headers: CIMultiDict[str],
                    body: Any, exchange: Exchange, ) -> tuple[aiohttp.ClientResponse, ServerState]:
        tried: set[str] = set()
        while True:
            server = upstream.pool.pick(frozenset(tried))
            if server is None:
                raise UpstreamFailure(502, "unavailable", "Bad Gateway: no backend server left to try")
            tried.add(server.address)
            exchange.server = server.address
            url = URL(server.base_url + request.raw_path, encoded=True)
            started = time.monotonic()
            try:
                response = await upstream.session.request(
                    request.method, url, headers=headers, data=body, allow_redirects=False,
                    compress=None, chunked=None, auto_decompress=False)
            except aiohttp.ConnectionTimeoutError:
                upstream.mark_failed(server)
                raise UpstreamFailure(504, "connect_timeout",
                                      "Gateway Timeout: the backend did not accept the connection in time") from None
            except aiohttp.ServerTimeoutError:
                upstream.mark_failed(server)
                raise UpstreamFailure(504, "read_timeout",
                                      "Gateway Timeout: the backend did not answer in time") from None
            except aiohttp.ClientConnectorError as exc:
                upstream.mark_failed(server)
                # Nothing of the request reached this server: safe to try the next one,
                # unless a body is being streamed (it cannot be replayed).
                if body is None and len(tried) < len(upstream.pool.servers):
                    continue
                raise UpstreamFailure(502, "connect", "Bad Gateway: cannot connect to the "
                                      f"backend ({exc.os_error.strerror or exc})") from None
            except (aiohttp.ClientError, OSError) as exc:
                upstream.mark_failed(server)
                raise UpstreamFailure(502, "protocol", "Bad Gateway: the backend closed or "
                                      f"broke the connection ({exc.__class__.__name__})") from None
            upstream.mark_ok(server)
            exchange.upstream_seconds = time.monotonic() - started
            return response, server

    async def _forward(self, request: web.BaseRequest, upstream: Upstream,
                       headers: CIMultiDict[str], body: Any, exchange: Exchange,
                       ) -> web.StreamResponse:
        backend, server = await self._send(upstream, request, headers, body, exchange)
        async with backend:
            tokens = response_connection_tokens(backend.headers)
            response = web.StreamResponse(
                status=backend.status, reason=backend.reason,
                headers=downstream_response_headers(backend.headers.items(), tokens))
            exchange.status = backend.status
            await response.prepare(request)
            chunks = backend.content.iter_any().__aiter__()
            while True:
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    break
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    # Headers are gone already: all we can do is cut the client off, as nginx does.
                    exchange.error = f"backend failed mid-response ({exc.__class__.__name__})"
                    upstream.mark_failed(server)
                    request.transport.close()
                    return response
                try:
                    await response.write(chunk)
                except ConnectionError:
                    # The client went away; leaving the `async with` closes the backend
                    # connection (its payload is unfinished), which cancels the backend's work.
                    exchange.status = CLIENT_CLOSED_REQUEST
                    exchange.error = "client closed the connection"
                    return response
                exchange.bytes_out += len(chunk)
            await response.write_eof()
            return response

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
