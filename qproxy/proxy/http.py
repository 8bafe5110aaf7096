"""The client side of HTTP/1.1: requests parsed by httptools (llhttp), responses framed here.

One `HttpConnection` (`proxy.connection`) per TLS connection, above `TlsAppTransport`.
Requests are handled one at a time in arrival order; each runs the handler as one task with a
responder (`RequestCycle`, exported here as `HttpProtocol`): `send_response`, or
`start_response` / `write_body` / `end_response` for streamed bodies, or `tunnel` after a
101. A request body (`request.body`) is streamed, or buffered whole first with `buffer()`.
A general web framework spent a third of the worker's time per proxied request on request and
response objects a reverse proxy does not need.

This module is the import point of the HTTP layer; its parts:
`http_state` (the connection's states), `request_reader` (parsing), `request` (the request and
its errors), `request_body` (the body: streamed, or buffered to memory and a temp file),
`flow` (flow control), `request_cycle` (the responder), `tunnel` (after a 101),
`connection` (the asyncio protocol that ties them).
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

from ..config.model import ListenerSettings
from .connection import HttpConnection
from .request import PHRASES, BadRequest, HttpRequest, error_body
from .request_body import BODY_HIGH_WATER, BodyLimits, RequestBody
from .request_cycle import RequestCycle
from .tunnel import TunnelPeer

__all__ = ["BODY_HIGH_WATER", "PHRASES", "SERVER_SHUTDOWN", "BadRequest", "HttpConnection", "HttpProtocol",
           "HttpRequest", "HttpServer", "RequestBody", "TunnelPeer", "error_body"]

# The responder a handler answers through.
HttpProtocol = RequestCycle

# The message a handler task is cancelled with when the drain at shutdown runs out of time
# (`asyncio.CancelledError.args[0]`): the request was cut by the server, not the client (499).
SERVER_SHUTDOWN = "server shutdown"

Handler = Callable[[HttpRequest, RequestCycle], Awaitable[None]]
ErrorLogger = Callable[[str, int, str], None]


def body_limits(section: ListenerSettings) -> BodyLimits:
    return BodyLimits(
        max_size=section.client_max_body_size, memory_size=section.client_body_buffer_size,
        temp_dir=section.client_body_temp_path, timeout=section.client_body_timeout)


class HttpServer:
    """Makes one `HttpConnection` per connection and drains them all on shutdown."""

    def __init__(self, handler: Handler, section: ListenerSettings, error_logger: ErrorLogger
                 ) -> None:
        self.handler = handler
        self.section = section
        self.body_limits = body_limits(section)
        self.error_logger = error_logger
        self.connections: set[HttpConnection] = set()
        self.closing = False  # shutting down: every response says "Connection: close"

    def __call__(self) -> HttpConnection:
        return HttpConnection(self)

    async def shutdown(self, timeout: float) -> None:
        self.closing = True
        for connection in list(self.connections):
            connection.shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.connections and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for connection in list(self.connections):
            # Its handler is cancelled with SERVER_SHUTDOWN, then the connection cut.
            connection.abort(SERVER_SHUTDOWN)
