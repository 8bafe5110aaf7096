"""HTTP/1.1 on the client side, end to end: framing, keep-alive, pipelining, HTTP/1.0, upgrades."""

from __future__ import annotations

import base64
import json
import os
import socket
import time

import pytest

from qproxy.proxy.http import BODY_HIGH_WATER

from tests.conftest import make_config
from tests.support.harness import (
    CloseKind,
    _recv,
    free_port,
    http_request,
    read_response,
    read_until_closed,
    tls_connect,
)


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
    assert read_until_closed(conn, 8) == (b"", CloseKind.CLOSE_NOTIFY)
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


def _open_websocket(conn) -> None:
    key = base64.b64encode(os.urandom(16)).decode()
    conn.sendall((f"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
    assert read_response(conn).status == 101


def test_websocket_tunnel_carries_a_large_binary_message_both_ways(server):
    conn = tls_connect(server.port)
    _open_websocket(conn)
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
    _open_websocket(conn)
    started = time.monotonic()
    assert _closed_within(conn, 8)
    assert 0.9 < time.monotonic() - started < 8


def _send_ignoring_close(conn, data: bytes) -> None:
    try:
        conn.sendall(data)
    except Exception:  # the server may answer and close before taking it all
        pass


def test_endless_header_line_gets_431_before_it_grows_without_bound(server):
    conn = tls_connect(server.port)
    conn.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Long: ")
    for _ in range(64):  # up to 4 MiB, in pieces as a slow attacker would send it
        _send_ignoring_close(conn, b"a" * 65536)
    assert read_response(conn).status == 431
    assert http_request(tls_connect(server.port), "GET", "/echo").status == 200


def test_many_pipelined_requests_from_a_client_that_reads_late_are_all_answered(server):
    conn = tls_connect(server.port)
    count = 1500
    conn.sendall(b"".join(b"GET /echo?n=%d HTTP/1.1\r\nHost: x\r\n\r\n" % n
                          for n in range(count - 1))
                 + b"GET /echo?n=%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % (count - 1))
    time.sleep(1)  # answers pile up unread: reading and answering must pause, not buffer
    paths = [json.loads(body)["path"] for _, body in _responses_until_close(conn)]
    assert paths == [f"/echo?n={n}" for n in range(count)]


def test_malformed_chunked_body_gets_400_and_the_backend_is_not_blamed(server):
    conn = tls_connect(server.port)
    conn.sendall(b"POST /sha256 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"5\r\nhello\r\nzz\r\n")
    assert read_response(conn).status == 400
    # With the only backend server marked failed, this would be a 502.
    assert http_request(tls_connect(server.port), "GET", "/echo").status == 200


def test_client_slower_than_the_read_timeout_still_gets_the_whole_download(start_server,
                                                                          dev_pki, backend):
    config = make_config(dev_pki, backend["address"])
    config["upstreams"]["app"]["read_timeout"] = 1
    server = start_server(config)
    conn = tls_connect(server.port, timeout=30)
    size = 40 << 20
    conn.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: x\r\n\r\n" % size)
    first = _recv(conn)
    time.sleep(2.5)  # the backend's socket is paused meanwhile: that is not its silence
    assert first.startswith(b"HTTP/1.1 200")
    received = len(first.partition(b"\r\n\r\n")[2])
    while received < size and (chunk := _recv(conn)):
        received += len(chunk)
    assert received == size
    assert http_request(tls_connect(server.port), "GET", "/echo").status == 200


@pytest.fixture
def stuck_upstream():
    """An address whose TCP connect hangs: a listener whose one-place accept queue is full, so
    the kernel drops further SYNs until the connecting side gives up (its connect_timeout)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    filler = socket.create_connection(listener.getsockname(), timeout=5)
    probe = socket.socket()
    probe.settimeout(0.3)
    try:
        # Checked, not assumed: with net.ipv4.tcp_abort_on_overflow=1 it would be refused.
        try:
            probe.connect(listener.getsockname())
            raise AssertionError("a connect to the full listener did not hang")
        except TimeoutError:
            pass
        finally:
            probe.close()
        yield "127.0.0.1:%d" % listener.getsockname()[1]
    finally:
        filler.close()
        listener.close()


def test_unread_complete_body_does_not_stall_the_kept_alive_connection(start_server, dev_pki,
                                                                        backend, stuck_upstream):
    """A body that arrives whole, unread, past the high-water mark (which pauses reading):
    the error answer may keep the connection alive, and then reading must resume for the
    next request. The upstream's connect hangs for a second, so the whole body is in before
    the answer; its last 8 KiB go in one TLS record, so the mark is crossed by the slice that
    also completes the body."""
    server = start_server(make_config(
        dev_pki, backend["address"],
        upstreams={"app": {"servers": [backend["address"]]},
                   "stuck": {"servers": [stuck_upstream], "connect_timeout": 1}},
        routes=[{"path_prefix": "/stuck", "upstream": "stuck"},
                {"path_prefix": "/", "upstream": "app"}]))
    conn = tls_connect(server.port, timeout=5)
    size = BODY_HIGH_WATER + 4096
    body = b"b" * size
    conn.sendall(b"POST /stuck/upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size
                 + body[:-8192])
    conn.sendall(body[-8192:])
    result = read_response(conn)
    assert result.status in (502, 504)
    assert result.header("Connection") != "close", "the body was whole: nothing forces a close"
    assert http_request(conn, "GET", "/echo?after-unread-body").status == 200


@pytest.mark.parametrize("raw, status", [
    (b"GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"GET /echo HTTP/1.1\r\n\r\n", 400),
    (b"GET http://elsewhere/echo HTTP/1.1\r\nHost: localhost\r\n\r\n", 400),
    (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 405),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
     b"Content-Length: 5\r\n\r\nhello", 400),
], ids=["two-hosts", "no-host", "absolute-other-host", "connect", "upgrade-with-body"])
def test_requests_routing_could_misread_are_refused(server, raw, status):
    conn = tls_connect(server.port)
    conn.sendall(raw)
    assert read_response(conn).status == status
    assert http_request(tls_connect(server.port), "GET", "/echo").status == 200


def test_absolute_form_naming_the_host_is_served(server):
    conn = tls_connect(server.port)
    conn.sendall(b"GET http://localhost/echo?abs HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert read_response(conn).status == 200


def test_request_body_that_stops_arriving_gets_408(start_server, dev_pki, backend):
    server = start_server(make_config(dev_pki, backend["address"], server={
        "listen_address": "127.0.0.1", "listen_port": 0, "client_body_timeout": 1}))
    conn = tls_connect(server.port)
    conn.sendall(b"POST /sha256 HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
    started = time.monotonic()
    assert read_response(conn).status == 408
    assert 0.9 < time.monotonic() - started < 8
    assert read_until_closed(conn) == (b"", CloseKind.CLOSE_NOTIFY)
    assert http_request(tls_connect(server.port), "GET", "/echo").status == 200


def test_client_that_stops_reading_a_download_is_cut_off_after_send_timeout(start_server,
                                                                           dev_pki, backend):
    server = start_server(make_config(dev_pki, backend["address"], server={
        "listen_address": "127.0.0.1", "listen_port": 0, "send_timeout": 1}))
    conn = tls_connect(server.port, timeout=30)
    size = 512 << 20
    conn.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: x\r\n\r\n" % size)
    time.sleep(4)  # buffers fill, then nothing moves for longer than send_timeout
    received = 0
    try:
        while chunk := _recv(conn):
            received += len(chunk)
    except Exception:
        pass  # a reset is how the cut-off can show
    assert received < size
    assert server.wait_log(lambda e: "stopped taking the response" in str(e.get("error")))
    assert http_request(tls_connect(server.port), "GET", "/echo").status == 200


def test_websocket_frames_sent_with_the_upgrade_request_reach_the_backend(server):
    conn = tls_connect(server.port)
    key = base64.b64encode(os.urandom(16)).decode()
    payload = os.urandom(40_000)  # with the head, more than one parsing slice
    mask = os.urandom(4)
    frame = bytes([0x82, 0x80 | 126]) + len(payload).to_bytes(2, "big") + mask + bytes(
        b ^ mask[i % 4] for i, b in enumerate(payload))
    conn.sendall((f"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  f"Sec-WebSocket-Version: 13\r\n\r\n").encode() + frame)
    data = b""
    deadline = time.monotonic() + 20
    while b"\r\n\r\n" not in data and time.monotonic() < deadline:
        data += _recv(conn)
    head, _, reply = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    while len(reply) < 4 + len(payload) and time.monotonic() < deadline:
        reply += _recv(conn)
    assert reply[:4] == bytes([0x82, 126]) + len(payload).to_bytes(2, "big")
    assert reply[4:] == payload[::-1]


def test_client_close_notify_is_answered_with_close_notify(server):
    conn = tls_connect(server.port)
    assert http_request(conn, "GET", "/echo").status == 200
    conn.shutdown()  # our close_notify; the server's should follow
    assert read_until_closed(conn) == (b"", CloseKind.CLOSE_NOTIFY)
