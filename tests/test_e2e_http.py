"""HTTP/1.1 on the client side, end to end: framing, keep-alive, pipelining, HTTP/1.0, upgrades."""

from __future__ import annotations

import base64
import json
import os
import time

from tests.conftest import make_config
from tests.support.harness import _recv, http_request, read_response, tls_connect


def _responses_until_close(conn) -> list[tuple[int, bytes]]:
    """Every response on the connection until the server closes it: (status, body) each.
    (The harness's `read_response` drops bytes read past one response.)"""
    data = b""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (chunk := _recv(conn)):
        data += chunk
    responses = []
    while data:
        head, _, data = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        length = next(int(line.split(":", 1)[1]) for line in lines
                      if line.lower().startswith("content-length:"))
        responses.append((int(lines[0].split()[1]), data[:length]))
        data = data[length:]
    return responses


def _closed_within(conn, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _recv(conn) == b"":
            return True
    return False


def test_pipelined_requests_are_answered_in_order(server):
    conn = tls_connect(server.port)
    conn.sendall(b"".join(b"GET /echo?n=%d HTTP/1.1\r\nHost: x\r\n\r\n" % n for n in range(5))
                 + b"GET /echo?n=5 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert [json.loads(body)["path"] for _, body in _responses_until_close(conn)] == [
        f"/echo?n={n}" for n in range(6)]


def test_pipelined_request_after_a_body_is_not_mistaken_for_body(server):
    conn = tls_connect(server.port)
    conn.sendall(b"POST /sha256 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
                 b"GET /echo?after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    (_, first), (_, second) = _responses_until_close(conn)
    assert json.loads(first)["length"] == 5
    assert json.loads(second)["path"] == "/echo?after"


def test_http10_request_is_answered_then_closed(server):
    conn = tls_connect(server.port)
    conn.sendall(b"GET /echo HTTP/1.0\r\nHost: x\r\n\r\n")
    result = read_response(conn)
    assert result.status == 200 and result.header("Connection") == "close"
    assert _closed_within(conn, 5)


def test_http10_keep_alive_is_honoured(server):
    conn = tls_connect(server.port)
    for n in range(2):
        conn.sendall(b"GET /echo?n=%d HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n" % n)
        result = read_response(conn)
        assert result.json()["path"] == f"/echo?n={n}"
        assert result.header("Connection") == "keep-alive"


def test_head_keeps_the_length_and_sends_no_body(server):
    conn = tls_connect(server.port)
    result = http_request(conn, "HEAD", "/bytes/5000")
    assert result.status == 200 and result.header("Content-Length") == "5000"
    # Had a body followed, it would be read as the next response's head.
    assert http_request(conn, "GET", "/echo").status == 200


def test_chunked_backend_body_goes_chunked_to_http11_and_close_delimited_to_http10(server):
    conn = tls_connect(server.port)
    result = http_request(conn, "GET", "/bytes/300000?chunked=1")
    assert result.header("Transfer-Encoding") == "chunked" and len(result.body) == 300000
    assert http_request(conn, "GET", "/echo").status == 200  # still in step

    old = tls_connect(server.port)
    old.sendall(b"GET /bytes/300000?chunked=1 HTTP/1.0\r\nHost: x\r\n\r\n")
    result = read_response(old)
    # HTTP/1.0 has no chunked coding: a length if the body was whole in time, else the close.
    assert result.header("Transfer-Encoding") is None
    assert len(result.body) == 300000


def test_responses_carry_a_date(server):
    result = http_request(tls_connect(server.port), "GET", "/echo")
    assert result.header("Date").endswith(" GMT")


def test_idle_keep_alive_connection_closes_after_keepalive_timeout(start_server, dev_pki,
                                                                   backend):
    server = start_server(make_config(dev_pki, backend["address"], server={
        "listen_address": "127.0.0.1", "listen_port": 0, "keepalive_timeout": 1}))
    conn = tls_connect(server.port)
    assert http_request(conn, "GET", "/echo").status == 200
    started = time.monotonic()
    assert _closed_within(conn, 8)
    assert 0.5 < time.monotonic() - started < 8


def test_request_line_over_the_limit_gets_414(server):
    conn = tls_connect(server.port)
    conn.sendall(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_response(conn).status == 414
    assert server.wait_log(lambda e: e.get("event") == "bad request" and e.get("status") == 414)


def test_bad_request_after_a_good_one_is_answered_after_it(server):
    conn = tls_connect(server.port)
    conn.sendall(b"GET /echo?first HTTP/1.1\r\nHost: x\r\n\r\n\x01\x02 garbage\r\n\r\n")
    (status, body), (bad, _) = _responses_until_close(conn)  # and the connection is closed
    assert status == 200 and json.loads(body)["path"] == "/echo?first"
    assert bad == 400


def test_non_websocket_upgrade_is_served_as_a_plain_request_then_closed(server):
    conn = tls_connect(server.port)
    conn.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
    result = read_response(conn)
    assert result.status == 200
    seen = {k.lower() for k, _ in result.json()["headers"]}
    assert "upgrade" not in seen
    assert result.header("Connection") == "close"
    assert _closed_within(conn, 5)


def test_websocket_tunnel_carries_a_large_binary_message_both_ways(server):
    conn = tls_connect(server.port)
    key = base64.b64encode(os.urandom(16)).decode()
    conn.sendall((f"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
    assert read_response(conn).status == 101
    payload = os.urandom(200_000)
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    conn.sendall(bytes([0x82, 0x80 | 127]) + len(payload).to_bytes(8, "big") + mask + masked)
    reply = b""
    deadline = time.monotonic() + 20
    while len(reply) < 10 + len(payload) and time.monotonic() < deadline:
        reply += _recv(conn)
    assert reply[:2] == bytes([0x82, 127])
    assert int.from_bytes(reply[2:10], "big") == len(payload)
    assert reply[10:] == payload[::-1]


def test_websocket_silent_for_the_read_timeout_is_closed(start_server, dev_pki, backend):
    config = make_config(dev_pki, backend["address"])
    config["upstreams"]["app"]["read_timeout"] = 1
    server = start_server(config)
    conn = tls_connect(server.port)
    key = base64.b64encode(os.urandom(16)).decode()
    conn.sendall((f"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
    assert read_response(conn).status == 101
    started = time.monotonic()
    assert _closed_within(conn, 8)
    assert 0.9 < time.monotonic() - started < 8
