"""Request heads parsed by httptools (llhttp), checked and turned into `HttpRequest`s.

The reader knows HTTP/1.1's syntax and our limits on it; what to do with a request (queue it,
answer it, pause) is the connection's business (`proxy.connection`)."""

from __future__ import annotations

from typing import Any, Protocol

import httptools
from multidict import CIMultiDict

from ..config.model import ListenerSettings
from .request import BadRequest, HttpRequest
from .request_body import BodyLimits, BodySource, RequestBody
from .target import (Target, TargetError, check_request_framing, normalise_target,
                     valid_host_field)


class RequestSink(Protocol):
    """What the reader tells its connection."""

    remote: str
    transport: Any  # what the request was read from (HttpRequest.transport)
    answers: BodySource  # what a request body asks to pause input or invite the body

    def message_begun(self) -> None: ...
    def request_parsed(self, request: HttpRequest) -> None: ...
    def message_complete(self) -> None: ...


# The header fields the reader looks at, by lower-case name: one dict lookup a field.
_SPECIAL = {b"host": "host", b"transfer-encoding": "transfer-encoding",
            b"content-length": "content-length", b"expect": "expect", b"te": "te"}


# Targets seen lately, normalised: most requests repeat a path seen a moment ago, and a dict
# lookup costs a fraction of normalising. Bounded; emptied when full.
_NORMALISED: dict[str, Target] = {}
_NORMALISED_MAX = 512
_CACHED_LENGTH = 200


def _normalised(target: str, method: str) -> Target:
    if target[:1] != "/" or len(target) > _CACHED_LENGTH:
        return normalise_target(target, method=method)  # (the asterisk form, say: per method)
    found = _NORMALISED.get(target)
    if found is None:
        found = normalise_target(target, method=method)  # raises TargetError: not kept
        if len(_NORMALISED) >= _NORMALISED_MAX:
            _NORMALISED.clear()
        _NORMALISED[target] = found
    return found


def _content_length(value: bytes) -> int:
    try:
        return int(value)
    except ValueError:
        return 0  # llhttp refuses it anyway


class RequestReader:
    """Feeds bytes to one httptools parser and builds the requests it finds."""

    __slots__ = ("_sink", "_parser", "_section", "_limits", "_url", "_fields", "_in_head",
                 "_head_bytes", "_head_limit", "parsing")

    def __init__(self, sink: RequestSink, section: ListenerSettings, limits: BodyLimits) -> None:
        self._sink = sink
        self._parser = httptools.HttpRequestParser(self)
        self._section = section
        self._limits = limits
        self._url = b""
        self._fields: list[tuple[bytes, bytes]] = []
        self._in_head = False
        self._head_bytes = 0
        self._head_limit = section.max_request_line + section.max_header_size * (
            section.max_header_count + 1)
        self.parsing: HttpRequest | None = None  # the request whose body is arriving

    def feed(self, data: bytes) -> int | None:
        """Parse; returns where the bytes after an upgrade request begin, if one was parsed.
        Raises BadRequest for bytes that are not a request we take."""
        if self._in_head:
            # httptools holds a header line until it ends and checks nothing meanwhile:
            # bound the head as a whole (its lines' limits summed), so one endless line
            # cannot grow without bound.
            self._head_bytes += len(data)
            if self._head_bytes > self._head_limit:
                raise BadRequest(431, "request head too large")
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            return exc.args[0] if exc.args else len(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, BadRequest):
                raise cause from None
            raise BadRequest(400, f"malformed request ({cause or exc})") from None
        except httptools.HttpParserError as exc:
            raise BadRequest(400, f"malformed request ({exc})") from None
        return None

    # -- httptools callbacks ---------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url = b""
        self._fields = []
        self._in_head = True
        self._head_bytes = 0
        self._sink.message_begun()

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._section.max_request_line:
            raise BadRequest(414, "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        section = self._section
        if len(name) + len(value) + 2 > section.max_header_size:
            raise BadRequest(431, "header field too large")
        self._fields.append((name, value))
        if len(self._fields) > section.max_header_count:
            raise BadRequest(431, "too many header fields")

    def on_headers_complete(self) -> None:
        parser = self._parser
        self._in_head = False
        fields, self._fields = self._fields, []
        headers: CIMultiDict[str] = CIMultiDict()
        has_body = expect_continue = takes_trailers = framed = False
        length = 0
        hosts = 0
        host = b""
        for name, value in fields:
            kind = _SPECIAL.get(name.lower())
            if kind is not None:
                if kind == "host":
                    hosts += 1
                    host = value.strip()
                elif kind == "transfer-encoding":
                    has_body = framed = True
                elif kind == "content-length":
                    framed = True
                    length = _content_length(value)
                    has_body = has_body or length > 0
                elif kind == "expect":
                    expect_continue = value.strip().lower() == b"100-continue"
                else:
                    takes_trailers = takes_trailers or any(
                        token.partition(b";")[0].strip() == b"trailers"
                        for token in value.lower().split(b","))
            headers.add(name.decode("utf-8", "surrogateescape"),
                        value.decode("utf-8", "surrogateescape"))
        method = parser.get_method().decode("ascii", "replace")
        version = parser.get_http_version()
        target = self._url.decode("utf-8", "surrogateescape")
        upgrade = parser.should_upgrade()
        if version not in ("1.1", "1.0"):
            # llhttp takes a request line with no version ("GET /pathHTTP/1.1") for HTTP/0.9
            # and lets "HTTP/2.0" through; neither is HTTP/1.x with header fields.
            if version == "0.9":
                raise BadRequest(400, "no HTTP version in the request line")
            raise BadRequest(505, f"HTTP/{version} is not supported here")
        # Where routing and the backend could disagree on the host, refuse, as nginx does.
        if hosts > 1:
            raise BadRequest(400, "more than one Host header")
        if hosts == 0 and version != "1.0":
            raise BadRequest(400, "HTTP/1.1 request without a Host header")
        if host and not valid_host_field(host):  # (empty is allowed: RFC 9112 3.2)
            raise BadRequest(400, "the Host header is not a host[:port]")
        if method == "CONNECT":
            raise BadRequest(405, "CONNECT is not supported")
        try:
            # Framing the backend could read otherwise (smuggling), then the target in the
            # one form that routes and is forwarded.
            if framed:  # (with neither field there is nothing to check)
                check_request_framing(fields, http_version=version)
            normalised = _normalised(target, method)
        except TargetError as exc:
            raise BadRequest(exc.status, str(exc)) from None
        if normalised.authority is not None and normalised.authority.lower() != (
                headers["Host"].strip().lower() if hosts else ""):
            raise BadRequest(400, "the absolute request target names another host than Host")
        if upgrade and has_body:
            # llhttp hands an upgrade request's body over as post-upgrade bytes.
            raise BadRequest(400, "an upgrade request with a body")
        limit = self._limits.max_size
        if limit and length > limit:
            # Refused before a byte of it is read (and before any 100 Continue).
            raise BadRequest(413, f"request body of {length} bytes is larger than "
                             f"client_max_body_size ({limit})")
        sink = self._sink
        body = RequestBody(sink.answers, self._limits,
                           expect_continue and version != "1.0") if has_body else None
        request = HttpRequest(method, target, version, headers, parser.should_keep_alive(),
                              upgrade, body, sink.remote, sink.transport,
                              path=normalised.path, target=normalised.forward)
        request.trailers = takes_trailers
        self.parsing = request if body is not None else None
        sink.request_parsed(request)

    def on_body(self, body: bytes) -> None:
        request = self.parsing
        if request is not None and request.body is not None:
            request.body.feed(body)

    def on_message_complete(self) -> None:
        request, self.parsing = self.parsing, None
        if request is not None and request.body is not None:
            request.body.finish()
        self._sink.message_complete()
