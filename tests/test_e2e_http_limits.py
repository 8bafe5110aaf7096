"""The client HTTP/1.1 side end to end, real daemon, real TLS over 127.0.0.1: request bodies
buffered before a backend is involved (slow uploads pin no backend connection), 413s, a TLS
half-close answered, the courtesy 400's length."""

from __future__ import annotations

import socket
import socketserver
import threading
import time

import pytest
from OpenSSL import SSL

from tests.conftest import make_config
from tests.support.harness import _recv, read_response, tls_connect


class CountingBackend(socketserver.ThreadingTCPServer):
    """An HTTP/1.1 backend that counts the connections it is given and reads each request
    whole (a Content-Length body) before answering 200 with the body's length."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # socketserver's 5 would refuse a burst of connections

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _BackendHandler)
        self.connections = 0
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _BackendHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        with self.server.lock:  # type: ignore[attr-defined]
            self.server.connections += 1  # type: ignore[attr-defined]
        self.connection.settimeout(30)
        while True:
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                line = self.rfile.readline(65536)
                if not line:
                    return
                head += line
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
                if line.lower().startswith(b"transfer-encoding:"):
                    return  # not needed here
            body = self.rfile.read(length)
            text = b"%d" % len(body)
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(text),
                                                                                   text))


@pytest.fixture
def counting_backend():
    backend = CountingBackend()
    yield backend
    backend.stop()


def test_slow_uploads_hold_no_backend_connection(start_server, dev_pki, counting_backend):
    """Defect 2: thirty clients trickling their bodies. Streamed unbuffered, each pinned a
    backend connection as soon as its head arrived; buffered, the backend sees none of them
    until their bodies are whole, and a normal request is served meanwhile."""
    server = start_server(make_config(dev_pki, counting_backend.address))
    trickling = []
    for _ in range(30):
        conn = tls_connect(server.port)
        conn.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
                     + b"x" * 100)
        trickling.append(conn)
    normal = tls_connect(server.port)
    normal.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_response(normal).status == 200
    time.sleep(0.3)  # give any wrongly forwarded upload time to reach the backend
    assert counting_backend.connections <= 2
    for conn in trickling:
        conn.sendall(b"y" * 900)
    for conn in trickling:
        result = read_response(conn)
        assert result.status == 200 and result.body == b"1000", [
            e.get("error") for e in server.lines if e.get("status") == 502][:2]


def test_content_length_over_the_limit_is_413_without_100_continue(start_server, dev_pki,
                                                                   counting_backend):
    server = start_server(make_config(dev_pki, counting_backend.address,
                                      server={"client_max_body_size": 1000}))
    conn = tls_connect(server.port)
    conn.sendall(b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n"
                 b"Expect: 100-continue\r\n\r\n")
    result = read_response(conn)
    assert result.status == 413
    assert counting_backend.connections == 0
    assert server.wait_log(lambda e: e.get("status") == 413)


def test_chunked_body_growing_past_the_limit_is_413(start_server, dev_pki, counting_backend):
    server = start_server(make_config(dev_pki, counting_backend.address,
                                      server={"client_max_body_size": 1000}))
    conn = tls_connect(server.port)
    conn.sendall(b"PUT / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                 + b"400\r\n" + b"x" * 1024 + b"\r\n")
    assert read_response(conn).status == 413
    assert counting_backend.connections == 0


def test_expect_100_continue_is_answered_when_the_body_is_wanted(start_server, dev_pki,
                                                                 counting_backend):
    server = start_server(make_config(dev_pki, counting_backend.address))
    conn = tls_connect(server.port)
    conn.sendall(b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                 b"Expect: 100-continue\r\n\r\n")
    assert read_response(conn).status == 100
    assert counting_backend.connections == 0  # no backend held while the body is awaited
    conn.sendall(b"hello")
    result = read_response(conn)
    assert result.status == 200 and result.body == b"5"


def test_request_then_close_notify_gets_the_response_then_close_notify(server):
    """Defect 5: GET / HTTP/1.0 then close_notify at once (a TLS 1.3 half-close)."""
    conn = tls_connect(server.port)
    conn.sendall(b"GET /echo HTTP/1.0\r\nHost: x\r\n\r\n")
    conn.shutdown()  # close_notify, our writing side of TLS is done
    data = bytearray()
    closed_cleanly = False
    for _ in range(100):
        try:
            chunk = conn.recv(65536)
        except SSL.ZeroReturnError:
            closed_cleanly = True
            break
        if not chunk:
            break
        data += chunk
    assert data.startswith(b"HTTP/1.1 200 "), data[:100]
    assert closed_cleanly, "the server's close_notify follows the response"
    body = data.partition(b"\r\n\r\n")[2]
    entry = server.wait_log(lambda e: e.get("event") == "request" and e.get("path") == "/echo")
    assert entry is not None and entry["status"] == 200
    assert entry["bytes_sent"] == len(body)


def test_plain_http_courtesy_400_says_its_own_length(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    assert head.startswith(b"HTTP/1.1 400 ") and length == len(body)


def test_half_closed_tcp_still_gets_the_answer(server):
    """The client shuts its TCP side right after close_notify (as `openssl s_client` does at
    the end of its input): the response still comes."""
    conn = tls_connect(server.port)
    conn.sendall(b"GET /echo HTTP/1.0\r\nHost: x\r\n\r\n")
    conn.shutdown()
    conn.sock_shutdown(socket.SHUT_WR)
    data = bytearray()
    while chunk := _recv(conn):
        data += chunk
    assert data.startswith(b"HTTP/1.1 200 ")
