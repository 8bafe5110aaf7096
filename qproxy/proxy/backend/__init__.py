"""HTTP/1.1 to the backend servers: kept-alive connections per server, responses parsed by
httptools (llhttp, the parser Node.js uses).

A proxied request is one head written and one response read on a pooled connection; a general
HTTP client (aiohttp's ClientSession) spent most of the worker's time per request on features a
reverse proxy does not use (cookies, redirects, URL building, auto headers).

Parts: `state` (the connection's states and their table), `errors` (failure kinds with the
status they mean), `reader` (bytes -> head, body, trailers), `response` (what the handler
reads, through a bounded buffer), `sender` (the request and its body), `connection` (the
asyncio protocol that ties them), `pool` (kept-alive connections per server).
"""

from .connection import BackendConnection, BackendSettings
from .errors import BackendError, FailureKind
from .pool import ServerConnections
from .response import BackendResponse, Framing, ResponseHead, TunnelClient
from .sender import BackendRequest
from .state import BackendState, StateError

__all__ = ["BackendConnection", "BackendError", "BackendRequest", "BackendResponse",
           "BackendSettings", "BackendState", "FailureKind", "Framing", "ResponseHead",
           "ServerConnections", "StateError", "TunnelClient"]
