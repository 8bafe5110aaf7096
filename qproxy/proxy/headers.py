"""Header rewriting between client and backend: pure functions, no I/O."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from multidict import CIMultiDict

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
    """Headers for the backend request: hop-by-hop dropped, forwarding headers set."""
    drop = HOP_BY_HOP | _connection_tokens(incoming)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        lower = name.lower()
        if lower in drop or lower.startswith(CLIENT_CERT_PREFIX) or lower == "x-client-verify":
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


def downstream_response_headers(incoming: Iterable[tuple[str, str]],
                                connection_tokens: Iterable[str] = ()) -> CIMultiDict[str]:
    """Headers for the client's response: hop-by-hop dropped, everything else kept in order."""
    drop = HOP_BY_HOP | {t.lower() for t in connection_tokens}
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming:
        if name.lower() not in drop:
            out.add(name, value)
    return out


def response_connection_tokens(headers: CIMultiDict[str]) -> set[str]:
    return _connection_tokens(headers)


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



def encode_response_head(status: int, reason: str, headers: Iterable[tuple[str, str]], *,
                         content_length: int | None, chunked: bool, connection: str | None,
                         date: str, keep_length: bool) -> bytes:
    """The status line and headers for the client, framed by us: any Content-Length in
    `headers` is replaced by `content_length` unless `keep_length` (a HEAD, 204 or 304 answer,
    whose Content-Length describes a body not sent). `headers` must already be free of
    hop-by-hop fields (`downstream_response_headers`); llhttp has refused line breaks in any
    value that came from a backend."""
    lines = [f"HTTP/1.1 {status} {reason}"]
    has_date = False
    for name, value in headers:
        lower = name.lower()
        if lower == "content-length" and not keep_length:
            continue
        if lower == "date":
            has_date = True
        lines.append(f"{name}: {value}")
    if not has_date:
        lines.append(f"Date: {date}")
    if content_length is not None and not keep_length:
        lines.append(f"Content-Length: {content_length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    if connection is not None:
        lines.append(f"Connection: {connection}")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("utf-8", "surrogateescape")
