"""The reverse-proxy request handler: one client request -> one backend request, bodies streamed."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, Mapping

from ..tls.machine import HandshakeInfo
from .backend import BackendError, BackendResponse
from .headers import (
    downstream_response_fields,
    encode_request_head,
    is_websocket_upgrade,
    upstream_request_headers,
)
from .http import PHRASES, BadRequest, HttpProtocol, HttpRequest, error_body
from .upstream import Router, ServerState, Upstream

CLIENT_CLOSED_REQUEST = 499  # nginx's status for "the client went away first"


class UpstreamFailure(Exception):
    """The backend could not answer. `status` is what the client gets (502 or 504)."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        self.status = status
        self.kind = kind
        super().__init__(message)


@dataclass(slots=True)
class Exchange:
    """What one request did, for the access log and metrics."""

    request: HttpRequest
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


_TEXT = [(b"Content-Type", b"text/plain")]


def _short(responder: HttpProtocol, request: HttpRequest, exchange: "Exchange", status: int,
           text: str) -> None:
    exchange.status = status
    responder.send_response(request, status, PHRASES.get(status, "Error"), _TEXT,
                            error_body(status, text))


class ProxyHandler:
    def __init__(self, upstreams: dict[str, Upstream], router: Router,
                 access_logger: AccessLogger, identity: IdentityFn) -> None:
        self._upstreams = upstreams
        self._router = router
        self._access_logger = access_logger
        self._identity = identity

    async def __call__(self, request: HttpRequest, responder: HttpProtocol) -> None:
        info: HandshakeInfo | None = request.transport.get_extra_info("tls")
        exchange = Exchange(request)
        try:
            await self._proxy(request, responder, info, exchange)
        except asyncio.CancelledError:
            exchange.status = CLIENT_CLOSED_REQUEST
            exchange.error = "client closed the connection"
            raise
        finally:
            self._access_logger(exchange, info)

    async def _proxy(self, request: HttpRequest, responder: HttpProtocol,
                     info: HandshakeInfo | None, exchange: Exchange) -> None:
        name = self._router.match(request.host, request.path)
        if name is None:
            return _short(responder, request, exchange, 404,
                          "Not Found: no route for this host and path")
        upstream = self._upstreams[name]
        exchange.upstream = name
        websocket = request.upgrade and is_websocket_upgrade(request.headers)
        headers = upstream_request_headers(
            request.headers, client_ip=request.remote, host=request.host,
            client_identity=self._identity(info), keep_upgrade=websocket)
        body = request.body
        if body is not None:
            # Read whole before a backend is involved (nginx's proxy_request_buffering); the
            # body answers an Expect: 100-continue itself, so it is not forwarded.
            try:
                await body.buffer()
            except BadRequest as exc:
                exchange.error = str(exc)
                return _short(responder, request, exchange, exc.status,
                              f"{PHRASES.get(exc.status, 'Error')}: {exc}")
            except ConnectionError as exc:
                exchange.status = CLIENT_CLOSED_REQUEST
                exchange.error = str(exc) or "client closed the connection"
                return
        headers.popall("Expect", None)
        # A body without Content-Length (the client sent it chunked) goes on chunked.
        chunked = body is not None and "Content-Length" not in headers
        if chunked:
            headers["Transfer-Encoding"] = "chunked"
        try:
            head = encode_request_head(request.method, request.target, headers,
                                       upstream.name)
        except ValueError as exc:
            return _short(responder, request, exchange, 400, f"Bad Request: {exc}")
        try:
            await self._forward(request, responder, upstream, head,
                                _counting(body, exchange) if body is not None else None,
                                chunked, websocket, exchange)
        except UpstreamFailure as failure:
            exchange.error = str(failure)
            _short(responder, request, exchange, failure.status, str(failure))

    async def _send(self, upstream: Upstream, request: HttpRequest, head: bytes,
                    body: AsyncIterator[bytes] | None, chunked: bool, upgrade: bool,
                    exchange: Exchange) -> tuple[BackendResponse, ServerState]:
        tried: set[str] = set()
        while True:
            server = upstream.pool.pick(frozenset(tried))
            if server is None:
                raise UpstreamFailure(502, "unavailable", "Bad Gateway: no backend server left to try")
            tried.add(server.address)
            exchange.server = server.address
            connections = upstream.connections(server)
            started = time.monotonic()
            fresh = upgrade  # an upgraded connection never returns to the pool: start anew
            while True:
                try:
                    connection = (None if fresh else connections.take_idle()) or (
                        await connections.connect())
                    response = await connection.exchange(
                        head, body, chunked, request.method == "HEAD",
                        upstream.section.read_timeout, upgrade)
                except BackendError as error:
                    if error.kind == "client":
                        raise _client_failure(error) from None
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

    async def _forward(self, request: HttpRequest, responder: HttpProtocol, upstream: Upstream,
                       head: bytes, body: AsyncIterator[bytes] | None, chunked: bool,
                       upgrade: bool, exchange: Exchange) -> None:
        backend, server = await self._send(upstream, request, head, body, chunked, upgrade,
                                           exchange)
        try:
            fields = downstream_response_fields(backend.fields)
            exchange.status = backend.status
            if backend.upgraded:
                fields.append((b"Connection", b"upgrade"))
                fields.append((b"Upgrade", backend.headers.get("Upgrade", "websocket").encode(
                    "utf-8", "surrogateescape")))
                responder.send_response(request, 101, backend.reason or "Switching Protocols",
                                        fields, b"")
                exchange.bytes_in, exchange.bytes_out = await backend.tunnel(responder)
                return
            whole = (backend.whole_body() if request.method != "HEAD"
                     and backend.status not in (204, 304) else None)
            if whole is not None:
                # Already complete: head and body leave in one write, one TLS record.
                exchange.bytes_out = responder.send_response(
                    request, backend.status, backend.reason, fields, whole)
                return
            length = backend.headers.get("Content-Length")
            responder.start_response(request, backend.status, backend.reason, fields,
                                     int(length) if length is not None else None)
            chunks = backend.chunks()
            while True:
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    break
                except BackendError as exc:
                    # Headers are gone already: all we can do is cut the client off, as nginx does.
                    if exc.kind == "client":
                        exchange.error = str(exc)
                    else:
                        exchange.error = f"backend failed mid-response ({exc})"
                        upstream.mark_failed(server)
                    return  # unfinished: the client's connection is closed
                try:
                    await responder.write_body(chunk)
                except ConnectionError as exc:
                    # The client went away (or stopped reading); the unfinished backend
                    # connection is closed below, which cancels the backend's work.
                    exchange.status = CLIENT_CLOSED_REQUEST
                    exchange.error = str(exc) or "client closed the connection"
                    return
                exchange.bytes_out += len(chunk)
            responder.end_response()
        finally:
            backend.release()


def _client_failure(error: BackendError) -> UpstreamFailure:
    """The client's body failed: 400 if it was malformed, 499 if the client went away (or was
    too slow); the backend is not blamed."""
    cause = error.cause
    if isinstance(cause, BadRequest):
        return UpstreamFailure(cause.status, "client", f"{PHRASES.get(cause.status, 'Error')}: "
                               f"{cause}")
    return UpstreamFailure(CLIENT_CLOSED_REQUEST, "client", "the client's request body broke off")


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


async def _counting(stream: AsyncIterator[bytes], exchange: Exchange):
    async for chunk in stream:
        exchange.bytes_in += len(chunk)
        yield chunk
