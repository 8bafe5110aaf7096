"""Header rewriting between client and backend: pure functions, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from multidict import CIMultiDict

from ..config.model import Route

# RFC 9110 section 7.6.1: meaningful for one connection only, never forwarded.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
    "upgrade", "proxy-authenticate", "proxy-authorization",
})
# Identity headers qproxy sets from a verified client certificate; a client must never be
# able to send them itself.
CLIENT_CERT_PREFIX = "x-client-cert-"
CLIENT_VERIFY = "X-Client-Verify"
FORWARDED_SET = ("X-Forwarded-Proto", "X-Forwarded-Host", "X-Real-IP")


def _connection_tokens(headers: Mapping[str, str] | CIMultiDict[str]) -> set[str]:
    tokens: set[str] = set()
    for value in headers.getall("Connection", []) if hasattr(headers, "getall") else []:
        tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens


def is_websocket_upgrade(headers: CIMultiDict[str]) -> bool:
    return ("upgrade" in _connection_tokens(headers)
            and headers.get("Upgrade", "").lower() == "websocket")


def upstream_request_headers(
    incoming: CIMultiDict[str],
    *,
    client_ip: str,
    host: str | None,
    client_identity: Mapping[str, str] | None,
    keep_upgrade: bool = False,
) -> CIMultiDict[str]:
    """Headers for the backend request: hop-by-hop dropped, names with an underscore dropped,
    forwarding headers set."""
    drop = HOP_BY_HOP | _connection_tokens(incoming)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        lower = name.lower()
        if lower in drop or lower.startswith(CLIENT_CERT_PREFIX) or lower == "x-client-verify":
            continue
        if "_" in name:
            # nginx's `underscores_in_headers off`: CGI-style backends (WSGI, PHP) fold `_` and
            # `-` together, so `Content_Length` or `X_Real_IP` would pass for the real thing.
            continue
        if lower in ("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-real-ip"):
            continue
        out.add(name, value)
    prior = ", ".join(v.strip() for v in incoming.getall("X-Forwarded-For", []) if v.strip())
    out["X-Forwarded-For"] = f"{prior}, {client_ip}" if prior else client_ip
    out["X-Forwarded-Proto"] = "https"
    if host:
        out["X-Forwarded-Host"] = host
    out["X-Real-IP"] = client_ip
    if keep_upgrade:
        out["Connection"] = "Upgrade"
        out["Upgrade"] = incoming.get("Upgrade", "websocket")
    out[CLIENT_VERIFY] = "SUCCESS" if client_identity else "NONE"
    for name, value in (client_identity or {}).items():
        out[name] = value
    return out


HOP_BY_HOP_BYTES = frozenset(name.encode() for name in HOP_BY_HOP)

Fields = list[tuple[bytes, bytes]]


def downstream_response_fields(incoming: Fields) -> Fields:
    """A backend response's header fields for the client: hop-by-hop ones and those the
    backend's Connection header names are dropped, everything else kept in order, as bytes
    (llhttp has already refused line breaks in them)."""
    drop = HOP_BY_HOP_BYTES
    for name, value in incoming:
        if name.lower() == b"connection":
            drop = drop | {t.strip().lower() for t in value.split(b",") if t.strip()}
    return [(name, value) for name, value in incoming if name.lower() not in drop]


def encode_request_head(method: str, target: str, headers: CIMultiDict[str],
                        default_host: str) -> bytes:
    """The request line and headers for a backend, refusing anything that would split them."""
    lines = [f"{method} {target} HTTP/1.1"]
    if "Host" not in headers:
        lines.append(f"Host: {default_host}")
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise ValueError(f"header {name!r} holds a line break")
        lines.append(f"{name}: {value}")
    lines.append("\r\n")
    # The parser decoded the client's bytes as UTF-8 with surrogateescape: this gives them back.
    return "\r\n".join(lines).encode("utf-8", "surrogateescape")



def encode_response_head(status: int, reason: str, fields: Fields, *,
                         content_length: int | None, chunked: bool, connection: bytes | None,
                         date: bytes, keep_length: bool) -> bytes:
    """The status line and header fields for the client, framed by us: any Content-Length in
    `fields` is replaced by `content_length` unless `keep_length` (a HEAD, 204 or 304 answer,
    whose Content-Length describes a body not sent)."""
    if status == 204 or status < 200:
        # RFC 9110 8.6: a 204 or 1xx never carries Content-Length (a backend's is not a HEAD
        # or 304's description of a body, just wrong); nginx drops it as well.
        keep_length, content_length = False, None
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason.encode("latin-1", "replace"))]
    has_date = False
    for name, value in fields:
        lower = name.lower()
        if lower == b"content-length" and not keep_length:
            continue
        if lower == b"date":
            has_date = True
        parts += (name, b": ", value, b"\r\n")
    if not has_date:
        parts += (b"Date: ", date, b"\r\n")
    if content_length is not None and not keep_length:
        parts.append(b"Content-Length: %d\r\n" % content_length)
    if chunked:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    if connection is not None:
        parts += (b"Connection: ", connection, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


# Response header hygiene (nginx's defaults, issue 15). What software and version answers
# behind qproxy is for its operator, not for every client: these backend fields are dropped
# unless a route's `pass_headers` names them. qproxy sends no Server field of its own either
# (HAProxy's choice; nginx's "Server: nginx" tells a scanner which exploits to try).
HIDDEN_BY_DEFAULT = frozenset({b"server", b"x-powered-by", b"x-aspnet-version",
                               b"x-aspnetmvc-version"})
# nginx's add_header adds only to these unless `always`: an error page is not the resource
# whose policy the fields describe.
ADD_HEADER_STATUSES = frozenset({200, 201, 204, 206, 301, 302, 303, 304, 307, 308})
STRICT_TRANSPORT_SECURITY = b"Strict-Transport-Security"


@dataclass(frozen=True)
class ResponseHeaders:
    """What one route does to response header fields: drop `hide`, then add `add` (replacing
    fields of the same name) on ADD_HEADER_STATUSES, or on every status if `always`."""

    hide: frozenset[bytes] = HIDDEN_BY_DEFAULT
    add: tuple[tuple[bytes, bytes], ...] = ()
    always: bool = False

    def apply(self, status: int, fields: Fields) -> Fields:
        out = [(name, value) for name, value in fields if name.lower() not in self.hide]
        if self.add and (self.always or status in ADD_HEADER_STATUSES):
            added = {name.lower() for name, _ in self.add}
            out = [(name, value) for name, value in out if name.lower() not in added]
            out.extend(self.add)
        return out


DEFAULT_RESPONSE_HEADERS = ResponseHeaders()


def response_headers(route: Route) -> ResponseHeaders:
    """A route's response header settings as the bytes the HTTP layer writes."""
    passed = {name.lower().encode() for name in route.pass_headers}
    hide = (HIDDEN_BY_DEFAULT - passed) | {name.lower().encode() for name in route.hide_headers}
    add = [(name.encode(), value.encode()) for name, value in route.add_headers.items()]
    if route.hsts is not None:
        add.append((STRICT_TRANSPORT_SECURITY, route.hsts.value().encode()))
    return ResponseHeaders(frozenset(hide), tuple(add), route.add_headers_always)
