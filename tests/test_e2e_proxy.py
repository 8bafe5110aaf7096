"""The reverse proxy end to end: qtls-server process in front of a real backend process."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import time
import urllib.request

import pytest
from OpenSSL import SSL

from qproxy import pki
from tests.conftest import make_config
from tests.support.harness import (
    CloseKind,
    client_context,
    free_port,
    http_request,
    read_response,
    read_until_closed,
    tls_connect,
)


def _header_map(result) -> dict[str, str]:
    return {k.lower(): v for k, v in result.json()["headers"]}


def test_forwarded_headers_and_forged_identity_removed(server):
    conn = tls_connect(server.port)
    result = http_request(conn, "GET", "/echo?x=1&y=%20z", headers={
        "X-Forwarded-For": "203.0.113.9",
        "X-Real-IP": "198.51.100.1",
        "X-Client-Cert-Subject": "CN=forged admin",
        "X-Client-Verify": "SUCCESS",
        "Connection": "keep-alive, X-Hop",
        "X-Hop": "drop me",
        "Keep-Alive": "timeout=5",
    })
    assert result.status == 200
    seen = _header_map(result)
    assert result.json()["path"] == "/echo?x=1&y=%20z"
    assert seen["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert seen["x-real-ip"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "https"
    assert seen["x-forwarded-host"] == "localhost"
    assert seen["host"] == "localhost"
    assert seen["x-client-verify"] == "NONE"
    assert "x-client-cert-subject" not in seen
    assert "x-hop" not in seen and "keep-alive" not in seen


def test_keep_alive_serves_many_requests_on_one_connection(server):
    conn = tls_connect(server.port)
    for index in range(20):
        assert http_request(conn, "GET", f"/echo?n={index}").json()["path"] == f"/echo?n={index}"


def test_mtls_identity_reaches_backend(start_server, dev_pki, backend):
    server = start_server(make_config(dev_pki, backend["address"], certificates={
        "ca_bundle": str(dev_pki.ca_bundle), "verify_client": True, "verify_depth": 3}))
    conn = tls_connect(server.port, client_context(cert=dev_pki.client_cert, key=dev_pki.client_key))
    seen = _header_map(http_request(conn, "GET", "/echo", headers={
        "X-Client-Cert-Subject": "CN=forged"}))
    assert seen["x-client-verify"] == "SUCCESS"
    assert seen["x-client-cert-subject"] == "O=qproxy development, CN=qproxy dev client"
    assert seen["x-client-cert-key-algorithm"] == "ECDSA P-256"
    assert len(seen["x-client-cert-fingerprint-sha256"]) == 64
    access = server.wait_log(lambda e: e.get("event") == "request" and e.get("path") == "/echo")
    assert access["ssl_client_subject"] == "O=qproxy development, CN=qproxy dev client"


def _refusal(port: int, ctx) -> str:
    """The client's view of a refused handshake: OpenSSL's reason, which names the alert."""
    with pytest.raises(SSL.Error) as refused:
        conn = tls_connect(port, ctx)
        http_request(conn, "GET", "/echo")  # TLS 1.3: the refusal arrives after our Finished
    return str(refused.value)


@pytest.mark.parametrize("case, alert, client_reason", [
    ("no certificate", "certificate_required", "tlsv13 alert certificate required"),
    ("untrusted certificate", "unknown_ca", "tlsv1 alert unknown ca"),
])
def test_mtls_refusal_sends_the_alert_that_names_the_problem(start_server, dev_pki, backend,
                                                             tmp_path, case, alert,
                                                             client_reason):
    server = start_server(make_config(dev_pki, backend["address"], certificates={
        "ca_bundle": str(dev_pki.ca_bundle), "verify_client": True}))
    if case == "no certificate":
        ctx = client_context()
    else:
        stranger = pki.init(tmp_path / "other")
        ctx = client_context(cert=stranger.client_cert, key=stranger.client_key)
    assert client_reason in _refusal(server.port, ctx)
    failure = server.wait_log(lambda e: e.get("event") == "handshake failed")
    assert failure is not None and failure["alert"] == alert
    # Refusing one client leaves the listener serving the next.
    good = client_context(cert=dev_pki.client_cert, key=dev_pki.client_key)
    assert http_request(tls_connect(server.port, good), "GET", "/echo").status == 200


def test_backend_down_gives_502_with_access_log(start_server, dev_pki, backend):
    dead = f"127.0.0.1:{free_port()}"
    server = start_server(make_config(dev_pki, backend["address"], upstreams={
        "app": {"servers": [dead], "connect_timeout": 2}}))
    result = http_request(tls_connect(server.port), "GET", "/echo")
    assert result.status == 502
    assert b"Bad Gateway" in result.body
    access = server.wait_log(lambda e: e.get("event") == "request" and e.get("status") == 502)
    assert access["upstream_addr"] == dead


def test_failed_server_is_skipped_round_robin(start_server, dev_pki, backend):
    dead = f"127.0.0.1:{free_port()}"
    server = start_server(make_config(dev_pki, backend["address"], upstreams={
        "app": {"servers": [dead, backend["address"]], "fail_timeout": 30}}))
    conn = tls_connect(server.port)
    statuses = [http_request(conn, "GET", "/echo").status for _ in range(6)]
    assert statuses == [200] * 6
    assert server.wait_log(lambda e: e.get("event") == "backend server taken out of rotation")


def test_slow_backend_gives_504(start_server, dev_pki, backend):
    server = start_server(make_config(dev_pki, backend["address"], upstreams={
        "app": {"servers": [backend["address"]], "read_timeout": 0.5}}))
    started = time.monotonic()
    result = http_request(tls_connect(server.port), "GET", "/slow?delay=5")
    assert result.status == 504
    assert time.monotonic() - started < 4
    assert server.wait_log(lambda e: e.get("event") == "request" and e.get("status") == 504)


def test_client_hangup_cancels_backend_request(server, backend):
    conn = tls_connect(server.port)
    conn.sendall(b"GET /hang?id=hangup1 HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert conn.recv(1024).startswith(b"HTTP/1.1 200")
    conn.sock_shutdown(socket.SHUT_RDWR)
    conn.close()
    marker = backend["markers"] / "hang-hangup1"
    deadline = time.monotonic() + 10
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "the backend never saw the client go away"
    access = server.wait_log(lambda e: e.get("event") == "request" and e.get("status") == 499)
    assert access is not None


def test_route_by_path_prefix_and_unknown_route(start_server, dev_pki, backend):
    server = start_server(make_config(dev_pki, backend["address"],
                                      upstreams={"app": {"servers": [backend["address"]]},
                                                 "dead": {"servers": [f"127.0.0.1:{free_port()}"]}},
                                      routes=[{"path_prefix": "/echo", "upstream": "app"},
                                              {"path_prefix": "/gone", "upstream": "dead"}]))
    conn = tls_connect(server.port)
    assert http_request(conn, "GET", "/echo").status == 200
    assert http_request(conn, "GET", "/gone/x").status == 502
    assert http_request(tls_connect(server.port), "GET", "/other").status == 404


def test_oversized_header_gets_431_and_server_keeps_serving(server):
    result = http_request(tls_connect(server.port), "GET", "/echo",
                          headers={"X-Big": "a" * 20000})
    assert result.status == 431
    assert http_request(tls_connect(server.port), "GET", "/echo").status == 200
    assert server.wait_log(lambda e: e.get("event") == "bad request" and e.get("status") == 431)


def test_too_many_headers_gets_431(server):
    headers = {f"X-H{i}": "v" for i in range(150)}
    assert http_request(tls_connect(server.port), "GET", "/echo", headers=headers).status == 431


@pytest.mark.parametrize("raw", [
    b"POST /sha256 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST /sha256 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    b"GET /echo HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    b"\x01\x02 garbage\r\n\r\n",
], ids=["cl-and-chunked", "duplicate-cl", "malformed-header", "garbage"])
def test_ambiguous_or_malformed_requests_get_400(server, raw):
    conn = tls_connect(server.port)
    conn.sendall(raw)
    assert read_response(conn).status == 400
    assert http_request(tls_connect(server.port), "GET", "/echo").status == 200


def test_slow_request_headers_get_408(start_server, dev_pki, backend):
    server = start_server(make_config(dev_pki, backend["address"], server={
        "listen_address": "127.0.0.1", "listen_port": 0, "client_header_timeout": 1}))
    conn = tls_connect(server.port)
    conn.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n")  # never finished: slowloris
    started = time.monotonic()
    result = read_response(conn)
    assert result.status == 408
    assert time.monotonic() - started < 5
    assert read_until_closed(conn) == (b"", CloseKind.CLOSE_NOTIFY)
    assert server.wait_log(lambda e: e.get("event") == "request headers timed out")


def test_chunked_upload_reaches_backend_whole_with_a_length(server):
    # Request bodies are buffered by default (nginx's proxy_request_buffering on), so the
    # backend gets a Content-Length; request_buffering: false (streaming, chunked) is tested in
    # test_e2e_backend_faults.py.
    conn = tls_connect(server.port)
    body = os.urandom(300_000)
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 70000]), body[i:i + 70000])
                      for i in range(0, len(body), 70000)) + b"0\r\n\r\n"
    conn.sendall(b"POST /sha256 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks)
    result = read_response(conn)
    assert result.json() == {"sha256": hashlib.sha256(body).hexdigest(), "length": len(body),
                             "chunked": False}


def test_expect_100_continue_answered_by_proxy(server):
    conn = tls_connect(server.port)
    body = b"firmware" * 1000
    conn.sendall(b"PUT /sha256 HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body))
    interim = read_response(conn)
    assert interim.status == 100
    conn.sendall(body)
    assert read_response(conn).json()["length"] == len(body)


def test_websocket_upgrade_passes_through(server):
    conn = tls_connect(server.port)
    key = base64.b64encode(os.urandom(16)).decode()
    conn.sendall((f"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: ota.v1\r\n\r\n").encode())
    head = read_response(conn)
    assert head.status == 101
    assert head.header("Sec-WebSocket-Protocol") == "ota.v1"
    expected = base64.b64encode(hashlib.sha1(
        (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
    assert head.header("Sec-WebSocket-Accept") == expected
    payload = b"hello"
    mask = os.urandom(4)
    frame = bytes([0x81, 0x80 | len(payload)]) + mask + bytes(
        b ^ mask[i % 4] for i, b in enumerate(payload))
    conn.sendall(frame)
    reply = b""
    deadline = time.monotonic() + 10
    while len(reply) < 2 + len(b"echo:hello") and time.monotonic() < deadline:
        reply += conn.recv(1024)
    assert reply[0] == 0x81 and reply[2:] == b"echo:hello"


def test_metrics_count_handshakes_and_requests(server):
    conn = tls_connect(server.port)
    for _ in range(3):
        assert http_request(conn, "GET", "/echo").status == 200
    server.wait_log(lambda e: e.get("event") == "request")
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics",
                                  timeout=10).read().decode()
    assert ('qtls_handshakes_total{group="X25519MLKEM768",listener="default",result="ok",'
            'resumed="false",'
            'sigalg="mldsa65"} 1.0') in text
    assert 'qtls_http_requests_total{status="200",upstream="app"} 3.0' in text
    assert "qtls_handshake_duration_seconds_bucket" in text
    assert "qtls_connections_open" in text


def test_backend_closing_a_kept_alive_connection_under_a_request_is_retried(
        start_server, dev_pki, backend):
    # A backend whose keep-alive timeout runs out just as the proxy reuses the connection:
    # it reads the request and closes without answering. The GET goes again on a new
    # connection; the client sees two 200s and the server is not marked failed.
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(20)
    accepted: list[int] = []

    def serve() -> None:
        for number in range(3):
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            accepted.append(number)
            with sock:
                sock.settimeout(10)
                for _ in range(2 if number == 0 else 1):
                    data = b""
                    while b"\r\n\r\n" not in data:
                        chunk = sock.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    if number == 0 and _ == 1:
                        break  # the second request on the first connection: dropped
                    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    try:
        server = start_server(make_config(dev_pki, address))
        conn = tls_connect(server.port)
        results = [http_request(conn, "GET", f"/n{i}") for i in range(2)]
        assert [(r.status, r.body) for r in results] == [(200, b"ok"), (200, b"ok")]
        assert accepted == [0, 1]
        assert not any(e.get("event") == "backend server taken out of rotation"
                       for e in server.lines)
    finally:
        listener.close()
        thread.join(10)
