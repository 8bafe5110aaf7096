"""qproxy.proxy.headers: what the backend and the client see of each other's headers."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from qproxy.proxy.headers import (
    HOP_BY_HOP,
    downstream_response_fields,
    encode_response_head,
    is_websocket_upgrade,
    upstream_request_headers,
)


def request(*pairs: tuple[str, str], client_ip: str = "198.51.100.7", host: str | None = "example.com",
            identity=None, keep_upgrade: bool = False) -> CIMultiDict[str]:
    return upstream_request_headers(CIMultiDict(pairs), client_ip=client_ip, host=host,
                                    client_identity=identity, keep_upgrade=keep_upgrade)


# --- hop-by-hop -----------------------------------------------------------------------------

def test_hop_by_hop_headers_are_dropped():
    out = request(
        ("Host", "example.com"), ("Connection", "keep-alive"), ("Keep-Alive", "timeout=5"),
        ("Proxy-Connection", "keep-alive"), ("TE", "trailers"), ("Trailer", "Expires"),
        ("Transfer-Encoding", "chunked"), ("Upgrade", "h2c"),
        ("Proxy-Authorization", "Basic eDp5"), ("Proxy-Authenticate", "Basic"),
        ("Accept", "*/*"),
    )
    for name in HOP_BY_HOP:
        assert name not in out, name
    assert out["Host"] == "example.com"
    assert out["Accept"] == "*/*"


def test_headers_named_in_connection_are_dropped():
    out = request(("Connection", "close, X-Secret ,x-other"), ("Connection", "X-Third"),
                  ("X-Secret", "1"), ("X-Other", "2"), ("x-third", "3"), ("X-Kept", "4"))
    assert "X-Secret" not in out
    assert "X-Other" not in out
    assert "X-Third" not in out
    assert out["X-Kept"] == "4"


def test_end_to_end_headers_kept_with_duplicates_in_order():
    out = request(("Accept", "text/html"), ("X-Multi", "a"), ("Cookie", "a=1"), ("X-Multi", "b"))
    assert out.getall("X-Multi") == ["a", "b"]
    assert out["Cookie"] == "a=1"
    assert [k for k, _ in out.items()][:4] == ["Accept", "X-Multi", "Cookie", "X-Multi"]


# --- forwarding headers ---------------------------------------------------------------------

def test_x_forwarded_for_set_when_absent():
    assert request(client_ip="203.0.113.9")["X-Forwarded-For"] == "203.0.113.9"


def test_x_forwarded_for_appended_to_existing_values():
    out = request(("X-Forwarded-For", "10.0.0.1, 10.0.0.2"), ("x-forwarded-for", " 10.0.0.3 "),
                  client_ip="203.0.113.9")
    assert out.getall("X-Forwarded-For") == ["10.0.0.1, 10.0.0.2, 10.0.0.3, 203.0.113.9"]


def test_blank_x_forwarded_for_ignored():
    out = request(("X-Forwarded-For", "  "), client_ip="203.0.113.9")
    assert out.getall("X-Forwarded-For") == ["203.0.113.9"]


def test_forwarding_headers_overwritten_not_trusted():
    out = request(("X-Real-IP", "1.2.3.4"), ("X-Forwarded-Proto", "http"),
                  ("X-Forwarded-Host", "evil.example"), ("x-real-ip", "5.6.7.8"),
                  client_ip="203.0.113.9", host="example.com:8443")
    assert out.getall("X-Real-IP") == ["203.0.113.9"]
    assert out.getall("X-Forwarded-Proto") == ["https"]
    assert out.getall("X-Forwarded-Host") == ["example.com:8443"]


def test_no_host_means_no_x_forwarded_host_even_if_client_sent_one():
    out = request(("X-Forwarded-Host", "evil.example"), host=None)
    assert "X-Forwarded-Host" not in out


def test_ipv6_client():
    out = request(client_ip="2001:db8::1")
    assert out["X-Forwarded-For"] == "2001:db8::1"
    assert out["X-Real-IP"] == "2001:db8::1"


# --- client certificate identity ------------------------------------------------------------

@pytest.mark.parametrize("name", ["X-Client-Cert-Subject", "x-client-cert-subject",
                                  "X-CLIENT-CERT-FINGERPRINT", "X-Client-Cert-Anything-Else",
                                  "X-Client-Verify", "x-client-verify"])
def test_client_sent_identity_headers_are_removed(name):
    out = request((name, "CN=admin"))
    assert "CN=admin" not in out.values()
    assert out.getall("X-Client-Verify") == ["NONE"]


def test_similar_but_different_header_names_are_kept():
    out = request(("X-Client-Certificate", "kept"), ("X-Client-Cert", "kept too"))
    assert out["X-Client-Certificate"] == "kept"
    assert out["X-Client-Cert"] == "kept too"


def test_verified_identity_headers_added_and_replace_forged_ones():
    identity = {"X-Client-Cert-Subject": "CN=device-42",
                "X-Client-Cert-Fingerprint": "ab:cd"}
    out = request(("x-client-cert-subject", "CN=admin"), ("X-Client-Verify", "SUCCESS"),
                  identity=identity)
    assert out.getall("X-Client-Cert-Subject") == ["CN=device-42"]
    assert out.getall("X-Client-Cert-Fingerprint") == ["ab:cd"]
    assert out.getall("X-Client-Verify") == ["SUCCESS"]


def test_empty_identity_is_none():
    assert request(identity={})["X-Client-Verify"] == "NONE"


# --- upgrade --------------------------------------------------------------------------------

def test_keep_upgrade_restores_connection_and_upgrade():
    out = request(("Connection", "keep-alive, Upgrade"), ("Upgrade", "websocket"),
                  ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), keep_upgrade=True)
    assert out.getall("Connection") == ["Upgrade"]
    assert out.getall("Upgrade") == ["websocket"]
    assert out["Sec-WebSocket-Key"] == "dGhlIHNhbXBsZSBub25jZQ=="


def test_without_keep_upgrade_upgrade_is_dropped():
    out = request(("Connection", "Upgrade"), ("Upgrade", "websocket"))
    assert "Upgrade" not in out
    assert "Connection" not in out


@pytest.mark.parametrize("pairs,expected", [
    ([("Connection", "Upgrade"), ("Upgrade", "websocket")], True),
    ([("connection", "keep-alive, UPGRADE"), ("upgrade", "WebSocket")], True),
    ([("Connection", "keep-alive"), ("Connection", "upgrade"), ("Upgrade", "websocket")], True),
    ([("Upgrade", "websocket")], False),
    ([("Connection", "Upgrade"), ("Upgrade", "h2c")], False),
    ([("Connection", "Upgrade")], False),
    ([("Connection", "keep-alive"), ("Upgrade", "websocket")], False),
    ([], False),
])
def test_is_websocket_upgrade(pairs, expected):
    assert is_websocket_upgrade(CIMultiDict(pairs)) is expected


# --- responses ------------------------------------------------------------------------------

def test_downstream_keeps_duplicate_set_cookie_in_order():
    incoming = [(b"Content-Type", b"text/plain"), (b"Set-Cookie", b"a=1; Path=/"),
                (b"X-Other", b"x"), (b"set-cookie", b"b=2; HttpOnly"), (b"Set-Cookie", b"c=3")]
    assert downstream_response_fields(incoming) == incoming


def test_downstream_drops_hop_by_hop_and_connection_tokens():
    incoming = [(b"Connection", b"close, X-Backend-Only"), (b"Keep-Alive", b"timeout=5"),
                (b"Transfer-Encoding", b"chunked"), (b"X-Backend-Only", b"secret"),
                (b"Content-Length", b"3"), (b"ETag", b'"v1"')]
    assert downstream_response_fields(incoming) == [(b"Content-Length", b"3"),
                                                    (b"ETag", b'"v1"')]


def test_downstream_connection_tokens_case_insensitive():
    incoming = [(b"connection", b" X-INTERNAL "), (b"X-Internal", b"1"), (b"X-Public", b"2")]
    assert downstream_response_fields(incoming) == [(b"X-Public", b"2")]


def _head_lines(head: bytes) -> list[str]:
    assert head.endswith(b"\r\n\r\n")
    return head[:-4].decode("latin-1").split("\r\n")


def test_response_head_frames_the_body_itself():
    head = encode_response_head(200, "OK", [(b"Content-Type", b"text/plain"),
                                            (b"Content-Length", b"999")],
                                content_length=5, chunked=False, connection=None,
                                date=b"Sat, 21 Nov 2026 00:00:00 GMT", keep_length=False)
    assert _head_lines(head) == ["HTTP/1.1 200 OK", "Content-Type: text/plain",
                                 "Date: Sat, 21 Nov 2026 00:00:00 GMT", "Content-Length: 5"]


def test_response_head_keeps_the_backends_date_and_a_head_answers_length():
    head = encode_response_head(200, "OK", [(b"Date", b"then"), (b"Content-Length", b"5000")],
                                content_length=0, chunked=False, connection=b"keep-alive",
                                date=b"now", keep_length=True)
    assert _head_lines(head) == ["HTTP/1.1 200 OK", "Date: then", "Content-Length: 5000",
                                 "Connection: keep-alive"]


def test_response_head_chunked_and_closing():
    head = encode_response_head(502, "Bad Gateway", [], content_length=None, chunked=True,
                                connection=b"close", date=b"now", keep_length=False)
    assert _head_lines(head) == ["HTTP/1.1 502 Bad Gateway", "Date: now",
                                 "Transfer-Encoding: chunked", "Connection: close"]


def test_response_head_gives_back_the_backends_bytes():
    head = encode_response_head(200, "R\xe9ponse", [(b"X-Name", b"caf\xe9")], content_length=0,
                                chunked=False, connection=None, date=b"now", keep_length=False)
    assert head.startswith(b"HTTP/1.1 200 R\xe9ponse\r\n") and b"X-Name: caf\xe9\r\n" in head


# --- names with an underscore (nginx underscores_in_headers off) ----------------------------

@pytest.mark.parametrize("name", [
    "Content_Length", "content_length", "Transfer_Encoding", "X-Real_IP", "X_Real_IP",
    "X_Forwarded_For", "X-Forwarded_Proto", "X_Forwarded_Host", "Host_", "_Host", "_",
    "X_Client_Cert_Subject", "X-Client_Verify", "Connection_", "X_Custom", "Authorization_Token",
])
def test_names_with_an_underscore_never_reach_the_backend(name):
    out = request((name, "forged"), client_ip="203.0.113.9")
    assert all("_" not in key for key in out.keys()), name
    assert "forged" not in out.values()
    # what a backend folding '_' into '-' would read is ours alone
    assert out.getall("X-Real-IP") == ["203.0.113.9"]
    assert out.getall("X-Forwarded-For") == ["203.0.113.9"]


def test_underscore_names_dropped_whatever_else_is_sent():
    out = request(("Content-Length", "3"), ("Content_Length", "300"), ("X-Kept", "1"),
                  ("X_Dropped", "2"), ("X-Forwarded-For", "10.0.0.1"),
                  ("X_Forwarded_For", "6.6.6.6"), client_ip="203.0.113.9")
    assert list(out.items())[:2] == [("Content-Length", "3"), ("X-Kept", "1")]
    assert out.getall("X-Forwarded-For") == ["10.0.0.1, 203.0.113.9"]
    assert "X_Dropped" not in out and "X_Forwarded_For" not in out


def test_names_with_hyphens_and_digits_are_kept():
    out = request(("X-Request-ID", "1"), ("X-B3-TraceId", "2"), ("Sec-CH-UA", "3"),
                  ("Accept-Encoding", "gzip"))
    assert [out[n] for n in ("X-Request-ID", "X-B3-TraceId", "Sec-CH-UA", "Accept-Encoding")] \
        == ["1", "2", "3", "gzip"]


def test_verified_identity_headers_are_ours_even_beside_underscore_forgeries():
    out = request(("X_Client_Cert_Subject", "CN=admin"), ("X-Client-Verify", "SUCCESS"),
                  identity={"X-Client-Cert-Subject": "CN=device-42"})
    assert out.getall("X-Client-Cert-Subject") == ["CN=device-42"]
    assert "X_Client_Cert_Subject" not in out


def test_a_204_or_1xx_head_never_carries_content_length():
    # RFC 9110 8.6: kept for a HEAD or 304 answer, dropped (a backend's or ours) for a 204.
    for status in (204, 103):
        head = encode_response_head(status, "X", [(b"Content-Length", b"4")], content_length=4,
                                    chunked=False, connection=None, date=b"now",
                                    keep_length=True)
        assert b"content-length" not in head.lower()
    head = encode_response_head(304, "Not Modified", [(b"Content-Length", b"4")],
                                content_length=None, chunked=False, connection=None,
                                date=b"now", keep_length=True)
    assert b"Content-Length: 4\r\n" in head
