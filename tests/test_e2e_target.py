"""Request targets, header names and framing end to end: qtls-server in front of three real
backends (one per route), each of which reports the request line and headers it received
exactly as they came (http.server does not normalise anything)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import make_config
from tests.support.harness import http_request, read_response, tls_connect

class _Reporter(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _report(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = json.dumps({"server": self.server.name,  # type: ignore[attr-defined]
                           "target": self.path,
                           "headers": [[k, v] for k, v in self.headers.items()]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_OPTIONS = _report

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def backends() -> Iterator[dict[str, ThreadingHTTPServer]]:
    servers = {}
    for name in ("internal", "public", "default"):
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Reporter)
        server.name = name  # type: ignore[attr-defined]
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                         daemon=True).start()
        servers[name] = server
    yield servers
    for server in servers.values():
        server.shutdown()
        server.server_close()


@pytest.fixture
def proxy(start_server, dev_pki, backends):
    address = {name: f"127.0.0.1:{s.server_address[1]}" for name, s in backends.items()}
    return start_server(make_config(
        dev_pki, address["default"],
        upstreams={name: {"servers": [a], "connect_timeout": 2, "read_timeout": 10}
                   for name, a in address.items()},
        routes=[{"path_prefix": "/internal/", "upstream": "internal"},
                {"path_prefix": "/public/", "upstream": "public"},
                {"path_prefix": "/", "upstream": "default"}]))


def _raw(proxy, head: bytes) -> int:
    conn = tls_connect(proxy.port)
    conn.sendall(head)
    return read_response(conn).status


def test_header_names_with_underscores_never_reach_the_backend(proxy):
    result = http_request(tls_connect(proxy.port), "GET", "/public/x", headers={
        "X_Real_IP": "6.6.6.6", "X-Real_IP": "6.6.6.6", "X_Forwarded_For": "6.6.6.6",
        "Content_Length": "99", "Transfer_Encoding": "chunked", "X_Client_Cert_Subject": "CN=a",
        "X-Kept": "yes"})
    assert result.status == 200
    seen = result.json()
    names = [name for name, _ in seen["headers"]]
    assert not [name for name in names if "_" in name], names
    assert "6.6.6.6" not in json.dumps(seen["headers"])
    assert ["X-Kept", "yes"] in seen["headers"]


@pytest.mark.parametrize("sent,server,target", [
    ("/internal/../public/x", "public", "/public/x"),
    ("/public/%2e%2e/internal/secret", "internal", "/internal/secret"),
    ("/public/..%2Finternal/secret", "internal", "/internal/secret"),
    ("//internal//secret", "internal", "/internal/secret"),
    ("/public/./x/../y?q=/../z", "public", "/public/y?q=/../z"),
])
def test_routed_and_forwarded_by_the_normalised_path(proxy, sent, server, target):
    seen = http_request(tls_connect(proxy.port), "GET", sent).json()
    assert (seen["server"], seen["target"]) == (server, target)


def test_a_normal_target_is_forwarded_as_sent(proxy):
    seen = http_request(tls_connect(proxy.port), "GET", "/public/a;b=c/d?x=%20&y=/../").json()
    assert (seen["server"], seen["target"]) == ("public", "/public/a;b=c/d?x=%20&y=/../")


@pytest.mark.parametrize("sent", ["/../x", "/public/../../internal/secret", "/%2e%2e/x",
                                  "/public/%00", "/public/%zz", "/public/..;/internal/secret"])
def test_targets_refused_with_400_and_the_connection_serves_no_more(proxy, sent):
    assert _raw(proxy, f"GET {sent} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()) == 400
    assert http_request(tls_connect(proxy.port), "GET", "/public/ok").status == 200


@pytest.mark.parametrize("fields,status", [
    (b"Transfer-Encoding: gzip, chunked\r\n", 501),
    (b"Transfer-Encoding: identity, chunked\r\n", 501),
    (b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n", 501),
])
def test_framing_refused(proxy, fields, status):
    head = b"POST /public/x HTTP/1.1\r\nHost: localhost\r\n" + fields + b"\r\n3\r\nabc\r\n0\r\n\r\n"
    assert _raw(proxy, head) == status
    assert http_request(tls_connect(proxy.port), "GET", "/public/ok").status == 200
