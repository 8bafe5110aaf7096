"""aiohttp's HTTP/1.1 server protocol with the status codes nginx users expect for bad requests."""

from __future__ import annotations

from typing import Callable

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

from ..config.model import ServerSection

ErrorLogger = Callable[[web.BaseRequest, int, str], None]

_PHRASES = {
    400: "Bad Request",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
}


def error_status(exc: BaseException | None, default: int) -> int:
    """Map aiohttp's parse errors (all 400 to aiohttp) to the specific status."""
    if isinstance(exc, LineTooLong):
        line = exc.args[0] if exc.args else b""
        line = line if isinstance(line, bytes) else str(line).encode()
        # Only the request target can start with '/' or '*' or hold '://'; header names are
        # tokens, which cannot.
        if line.startswith((b"/", b"*")) or b"://" in line[:16]:
            return 414
        return 431
    if isinstance(exc, BadHttpMessage) and "Too many headers" in str(exc):
        return 431
    if isinstance(exc, HttpProcessingError) and exc.code >= 400:
        return exc.code
    return default


class HttpProtocol(RequestHandler):
    """Short error bodies (never echoing the client's bytes) and one log line per bad request."""

    error_logger: ErrorLogger | None = None

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None, message: str | None = None,
                     ) -> web.StreamResponse:
        status = error_status(exc, status)
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send an error response")
        if self.error_logger is not None:
            self.error_logger(request, status, str(exc) if exc else (message or ""))
        phrase = _PHRASES.get(status, "Internal Server Error" if status == 500 else "Error")
        response = web.Response(status=status, text=f"{status} {phrase}\n",
                                content_type="text/plain")
        response.force_close()
        return response


class HttpServer(web.Server):
    """aiohttp's low-level server making `HttpProtocol`s with our limits."""

    def __init__(self, handler, section: ServerSection, error_logger: ErrorLogger) -> None:
        super().__init__(
            handler,
            handler_cancellation=True,  # a client that goes away cancels its backend request
            keepalive_timeout=section.keepalive_timeout,
            max_line_size=section.max_request_line,
            max_field_size=section.max_header_size,
            max_headers=section.max_header_count,
            auto_decompress=False,
            access_log=None,
            lingering_time=1.0,
        )
        self._error_logger = error_logger

    def __call__(self) -> RequestHandler:
        protocol = HttpProtocol(self, loop=self._loop, **self._kwargs)
        protocol.error_logger = self._error_logger
        return protocol
