"""The reverse-proxy request handler: one client request -> one backend request.

The request body is read whole first unless its route says `request_buffering: false` (nginx's
`proxy_request_buffering`): a slow upload then holds no backend connection. The upstream picks
the server, retries and keeps health (`Upstream.send`); `relay` answers the client.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, Mapping

from ..policy.access import Denial
from ..tls.machine import HandshakeInfo
from .access import RequestAccess
from .backend import BackendError, BackendRequest
from ..config.model import Route
from .headers import (ResponseHeaders, encode_request_head, is_websocket_upgrade,
                      response_headers, upstream_request_headers)
from .http import PHRASES, SERVER_SHUTDOWN, BadRequest, HttpProtocol, HttpRequest, error_body
from .relay import CLIENT_CLOSED_REQUEST, relay
from .upstream import Router, Upstream


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
    # The backend failure's kind (`FailureKind.label`), for qtls_upstream_errors{kind}.
    error_kind: str | None = None
    # Why access control refused the request (`Reason.label`), for the access log.
    denied: str | None = None

    def failed(self, error: BackendError) -> None:
        self.error = str(error)
        if error.kind.blames_backend:
            self.error_kind = error.kind.label


AccessLogger = Callable[[Exchange, HandshakeInfo | None], None]
IdentityFn = Callable[[HandshakeInfo | None], Mapping[str, str] | None]
# server.send_proxy_protocol: (the client connection's transport, its TLS facts) -> header.
ProxyHeaderFn = Callable[[asyncio.BaseTransport, HandshakeInfo | None], bytes]
DenialLogger = Callable[[HttpRequest, Denial, str], None]

_TEXT = [(b"Content-Type", b"text/plain")]
# What a refused client reads (the log line says which rule or limit; the client is not told).
_DENIAL_TEXT = {
    "ip": "Forbidden: this address may not use this service",
    "client_cert": "Forbidden: this client certificate may not use this service",
    "rate": "Too Many Requests: slow down and retry after the time in Retry-After",
    "connection_cap": "Service Unavailable: too many connections from this address",
}


def _short(responder: HttpProtocol, request: HttpRequest, exchange: Exchange, status: int,
           text: str, headers: ResponseHeaders | None = None) -> None:
    exchange.status = status
    fields = _TEXT if headers is None else headers.apply(status, _TEXT)
    responder.send_response(request, status, PHRASES.get(status, "Error"), fields,
                            error_body(status, text))


class ProxyHandler:
    def __init__(self, upstreams: dict[str, Upstream], router: Router,
                 access_logger: AccessLogger, identity: IdentityFn,
                 proxy_header: ProxyHeaderFn | None = None,
                 access: RequestAccess | None = None,
                 denial_logger: DenialLogger | None = None) -> None:
        self._upstreams = upstreams
        self._proxy_header = proxy_header
        self._router = router
        self._access_logger = access_logger
        self._identity = identity
        self._access = access
        self._denial_logger = denial_logger
        self._response_headers: dict[int, ResponseHeaders] = {}

    def _headers_of(self, route: Route) -> ResponseHeaders:
        # Built once per route (routes live as long as the configuration that holds them).
        found = self._response_headers.get(id(route))
        if found is None:
            found = self._response_headers[id(route)] = response_headers(route)
        return found

    async def __call__(self, request: HttpRequest, responder: HttpProtocol) -> None:
        info: HandshakeInfo | None = request.transport.get_extra_info("tls")
        exchange = Exchange(request)
        try:
            await self._proxy(request, responder, info, exchange)
        except asyncio.CancelledError as cancelled:
            if SERVER_SHUTDOWN in cancelled.args:
                # The drain at shutdown ran out: the server cut it, the client did not leave.
                exchange.error = "cut by the server: the shutdown drain deadline passed"
                exchange.status = exchange.status or 503
            else:
                exchange.status = CLIENT_CLOSED_REQUEST
                exchange.error = "client closed the connection"
            raise
        finally:
            self._access_logger(exchange, info)

    async def _proxy(self, request: HttpRequest, responder: HttpProtocol,
                     info: HandshakeInfo | None, exchange: Exchange) -> None:
        access = self._access
        if access is not None:
            admission = access.admission(request, info)
            denial = access.on_listener(admission)
            if denial is not None:
                return self._refuse(responder, request, exchange, denial, "listener")
        route = self._router.route(request.host, request.path)
        if route is None:
            return _short(responder, request, exchange, 404,
                          "Not Found: no route for this host and path")
        if access is not None:
            denial = access.on_route(route, admission)
            if denial is not None:
                exchange.upstream = route.upstream
                return self._refuse(responder, request, exchange, denial, "route",
                                    self._headers_of(route))
        upstream = self._upstreams[route.upstream]
        exchange.upstream = route.upstream
        headers = self._headers_of(route)
        body = request.body
        if body is not None and route.request_buffering:
            try:
                await body.buffer()
            except BadRequest as exc:  # 413, 408, 400: no backend is involved
                exchange.error = str(exc)
                return _short(responder, request, exchange, exc.status,
                              f"{PHRASES.get(exc.status, 'Error')}: {exc}", headers)
            except ConnectionError:
                exchange.status = CLIENT_CLOSED_REQUEST
                exchange.error = "client closed the connection while sending its body"
                return
        try:
            backend_request = self._backend_request(request, info, upstream, exchange)
        except ValueError as exc:
            return _short(responder, request, exchange, 400, f"Bad Request: {exc}", headers)
        try:
            sent = await upstream.send(backend_request)
        except BackendError as error:
            exchange.server = error.server or "-"
            exchange.failed(error)
            if error.status == CLIENT_CLOSED_REQUEST:
                exchange.status = error.status  # nobody left to answer
                return
            return _short(responder, request, exchange, error.status,
                          f"{PHRASES.get(error.status, 'Error')}: {error}", headers)
        exchange.server = sent.server
        exchange.upstream_seconds = sent.seconds
        try:
            await relay(request, responder, sent.response, exchange,
                        lambda error: upstream.report(sent.server, error), headers)
        except BackendError as error:  # before anything was sent to the client
            upstream.report(sent.server, error)
            exchange.failed(error)
            _short(responder, request, exchange, error.status,
                   f"{PHRASES.get(error.status, 'Error')}: {error}", headers)

    def _refuse(self, responder: HttpProtocol, request: HttpRequest, exchange: Exchange,
                denial: Denial, scope: str, headers: ResponseHeaders | None = None) -> None:
        """403, 429 (with Retry-After) or 503; the connection is closed after a refusal
        decided for the whole connection (its address or its connection count). A route's
        refusal carries the route's headers where they go on errors (add_headers_always)."""
        status = denial.reason.status
        exchange.status = status
        exchange.denied = denial.reason.label
        if self._denial_logger is not None:
            self._denial_logger(request, denial, scope)
        fields = list(_TEXT) if headers is None else headers.apply(status, _TEXT)
        if denial.retry_after is not None:
            fields.append((b"Retry-After", str(denial.retry_after).encode()))
        if denial.for_connection:
            responder.close_after_response()
        responder.send_response(request, status, PHRASES.get(status, "Error"), fields,
                                error_body(status, _DENIAL_TEXT[denial.reason.label]))

    def _backend_request(self, request: HttpRequest, info: HandshakeInfo | None,
                         upstream: Upstream, exchange: Exchange) -> BackendRequest:
        websocket = request.upgrade and is_websocket_upgrade(request.headers)
        headers = upstream_request_headers(
            request.headers, client_ip=request.remote, host=request.host,
            client_identity=self._identity(info), keep_upgrade=websocket)
        # Answered on our side (by the body, when first read); a backend must not answer it.
        headers.popall("Expect", None)
        body = request.body
        stream: AsyncIterator[bytes] | None = None
        chunked = buffered = False
        if body is not None and body.length is not None:  # read whole: its length is known
            headers.popall("Content-Length", None)
            headers["Content-Length"] = str(body.length)
            exchange.bytes_in = body.length
            stream, buffered = (body if body.length else None), True
        elif body is not None:
            # Streamed: a body without Content-Length (sent chunked) goes on chunked.
            chunked = "Content-Length" not in headers
            if chunked:
                headers["Transfer-Encoding"] = "chunked"
            stream = _counting(body, exchange)
        head = encode_request_head(request.method, request.target, headers, upstream.name)
        preface, client = b"", None
        if self._proxy_header is not None:
            # The backend connection then belongs to this client connection (see pool).
            preface, client = self._proxy_header(request.transport, info), request.transport
        return BackendRequest(head, stream, chunked, head_only=request.method == "HEAD",
                              upgrade=websocket, replayable=buffered, preface=preface,
                              client=client)


async def _counting(stream: AsyncIterator[bytes], exchange: Exchange) -> AsyncIterator[bytes]:
    async for chunk in stream:
        exchange.bytes_in += len(chunk)
        yield chunk
