"""What the handler sees of one client request, and the errors that refuse one."""

from __future__ import annotations

import asyncio
import time
from email.utils import formatdate
from typing import TYPE_CHECKING
from urllib.parse import unquote

from multidict import CIMultiDict

if TYPE_CHECKING:
    from .request_body import RequestBody

PHRASES = {
    400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    408: "Request Timeout", 413: "Content Too Large", 414: "URI Too Long",
    429: "Too Many Requests", 431: "Request Header Fields Too Large",
    499: "Client Closed Request", 500: "Internal Server Error", 501: "Not Implemented",
    502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}

TEXT_PLAIN = [(b"Content-Type", b"text/plain")]


class BadRequest(Exception):
    """The client's bytes are not a request we will serve; `status` says which error."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def error_body(status: int, text: str) -> bytes:
    return f"{status} {text}\n".encode()


def routing_path(target: str) -> str:
    """The decoded path of a request target, for routing: no query, no scheme and authority."""
    if not target.startswith("/"):
        scheme, sep, rest = target.partition("://")
        target = ("/" + rest.partition("/")[2]) if sep else target
    path = target.partition("?")[0].partition("#")[0]
    return unquote(path) if "%" in path else path


class HttpRequest:
    """One request. Header values are decoded as UTF-8 with surrogateescape, so the client's
    exact bytes can be given back to a backend.

    `raw_path` is the target as the client sent it (for logs), `path` the normalised path that
    routes match, `target` the normalised target that is forwarded."""

    __slots__ = ("method", "raw_path", "path", "target", "version", "headers", "keep_alive",
                 "upgrade", "body", "remote", "transport", "started", "trailers")

    def __init__(self, method: str, raw_path: str, version: str, headers: CIMultiDict[str],
                 keep_alive: bool, upgrade: bool, body: "RequestBody | None", remote: str,
                 transport: asyncio.Transport, path: str | None = None,
                 target: str | None = None) -> None:
        self.method = method
        self.raw_path = raw_path
        self.path = routing_path(raw_path) if path is None else path
        self.target = raw_path if target is None else target
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.upgrade = upgrade
        self.body = body
        self.remote = remote
        self.transport = transport
        self.started = time.monotonic()
        # Whether the client said it takes trailers (TE: trailers): only then are a chunked
        # backend response's trailers passed on.
        self.trailers = False

    @property
    def host(self) -> str | None:
        return self.headers.get("Host")


class HttpDate:
    """The Date header value, formatted once a second rather than once a response."""

    second = -1
    value = b""

    @classmethod
    def now(cls) -> bytes:
        second = int(time.time())
        if second != cls.second:
            cls.second, cls.value = second, formatdate(second, usegmt=True).encode()
        return cls.value
