"""Backends that misbehave, end to end: the real qtls-server process in front of a scripted
backend on 127.0.0.1, answers read by an independent parser (h11) over real TLS.

Each test pins one defect of issue 11/12 (backend side) and failed on the code before it."""

from __future__ import annotations

import gzip
import socket
import threading
import time
import urllib.request

import h11
import pytest
from OpenSSL import SSL

from tests.conftest import make_config
from tests.support.harness import _recv, client_context, free_port, tls_connect
from tests.support.scripted_backend import Conn, Request, ScriptedBackend

BODY = b"the body, whole\n" * 8


def chunked(body: bytes, trailers: bytes = b"") -> bytes:
    half = len(body) // 2
    return (b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n%s\r\n"
            % (half, body[:half], len(body) - half, body[half:], trailers))


EVIL_TRAILERS = (b"Set-Cookie: injected=1\r\nContent-Type: text/html\r\n"
                 b"Location: https://evil.example/\r\nContent-Length: 1\r\n"
                 b"X-Checksum: abc\r\n")
CHUNKED_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n"
                b"Trailer: X-Checksum\r\n\r\n")


def exchange(tls: SSL.Connection, method: str = "GET", target: str = "/",
             headers: list[tuple[str, str]] | None = None, body: bytes = b"",
             client: h11.Connection | None = None, timeout: float = 15.0):
    """One request with h11 on both ends: (h11.Response, body, trailers); the h11 client
    connection is reset for the next request if it can be."""
    client = client or h11.Connection(h11.CLIENT)
    fields = [("Host", "localhost"), *(headers or [])]
    if body:
        fields.append(("Content-Length", str(len(body))))
    data = client.send(h11.Request(method=method, target=target, headers=fields))
    if body:
        data += client.send(h11.Data(data=body))
    data += client.send(h11.EndOfMessage())
    tls.sendall(data)
    response, content, trailers = None, b"", []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        event = client.next_event()
        if event is h11.NEED_DATA:
            client.receive_data(_recv(tls))
            continue
        if isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            content += event.data
        elif isinstance(event, h11.EndOfMessage):
            trailers = [(bytes(n), bytes(v)) for n, v in event.headers]
            if client.our_state is h11.DONE and client.their_state is h11.DONE:
                client.start_next_cycle()
            return response, content, trailers
        elif isinstance(event, h11.ConnectionClosed):
            raise ConnectionError(f"closed mid-response: {response}, {len(content)} bytes")
    raise TimeoutError("no whole response in time")


def names(response: h11.Response) -> dict[bytes, bytes]:
    return {bytes(n).lower(): bytes(v) for n, v in response.headers}


@pytest.fixture
def proxy(start_server, dev_pki):
    """proxy(backend, **sections) -> a qtls-server in front of `backend`."""
    def start(backend: ScriptedBackend, **sections):
        return start_server(make_config(dev_pki, backend.address, **sections))
    return start


# -- defect 1: trailers never become header fields ------------------------------------------

@pytest.mark.parametrize("trailers", [EVIL_TRAILERS, EVIL_TRAILERS.replace(
    b"Content-Length: 1\r\n", b"")], ids=["with-content-length", "without"])
def test_trailers_in_one_read_do_not_become_headers_or_cut_the_body(proxy, trailers):
    def script(conn: Conn, request: Request) -> None:
        conn.send(CHUNKED_HEAD + chunked(BODY, trailers))

    with ScriptedBackend({"/t": script}) as backend:
        server = proxy(backend)
        tls = tls_connect(server.port)
        client = h11.Connection(h11.CLIENT)
        for _ in range(2):  # and the connection stays in step
            response, body, sent_trailers = exchange(tls, target="/t", client=client)
            head = names(response)
            assert response.status_code == 200 and body == BODY
            assert b"set-cookie" not in head and b"location" not in head
            assert head[b"content-type"] == b"text/plain"
            assert b"injected" not in b"".join(v for _, v in sent_trailers)


def test_streamed_trailers_do_not_become_headers_or_cut_the_body(proxy):
    def script(conn: Conn, request: Request) -> None:
        conn.send(CHUNKED_HEAD + b"%x\r\n%s\r\n" % (len(BODY), BODY))
        conn.sleep(0.3)
        conn.send(b"0\r\n" + EVIL_TRAILERS + b"\r\n")

    with ScriptedBackend({"/t": script}) as backend:
        server = proxy(backend)
        tls = tls_connect(server.port)
        response, body, trailers = exchange(tls, target="/t")
        head = names(response)
        assert response.status_code == 200 and body == BODY
        assert b"set-cookie" not in head and b"location" not in head
        assert b"injected" not in b"".join(v for _, v in trailers)
        assert not [e for e in server.events("request") if e.get("error")]


# -- defect 4: a backend's response head is bounded ------------------------------------------

def test_endless_response_head_is_a_502_and_nothing_of_it_is_relayed(proxy):
    def script(conn: Conn, request: Request) -> None:
        conn.send(b"HTTP/1.1 200 OK\r\nX-Leak: secret\r\n")
        for index in range(2000):  # ~200 KB of header lines
            conn.send(b"X-Filler-%d: %s\r\n" % (index, b"a" * 100))
            if conn.closed:
                return
        conn.send(b"Content-Length: 2\r\n\r\nok")

    with ScriptedBackend({"/big": script}) as backend:
        server = proxy(backend)
        tls = tls_connect(server.port)
        response, body, _ = exchange(tls, target="/big")
        assert response.status_code == 502
        assert b"x-leak" not in names(response) and b"too big header" in body
        entry = server.wait_log(lambda e: e.get("event") == "request" and e.get("status") == 502)
        assert entry is not None and "too big header" in entry["error"]


# -- defect 7: a HEAD answer's unread body never becomes the next answer ----------------------

def _head_then_owed_body(conn: Conn, request: Request) -> None:
    """Answers HEAD with its length and, like aiohttp, sends the body too: here only once the
    next request on the connection has come, so that a reused connection always meets it."""
    if request.method != "HEAD":
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return
    conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n")
    following = conn.next_request(timeout=2)
    if following is not None:
        conn.send(b"x" * 5000)
        _head_then_owed_body(conn, following)


def test_request_after_a_head_is_never_answered_with_the_head_body(proxy):
    with ScriptedBackend({"/h": _head_then_owed_body}) as backend:
        server = proxy(backend)
        tls = tls_connect(server.port)
        client = h11.Connection(h11.CLIENT)
        for _ in range(5):
            response, _, _ = exchange(tls, "HEAD", "/h", client=client)
            assert response.status_code == 200 and names(response)[b"content-length"] == b"5000"
            response, body, _ = exchange(tls, "GET", "/h", client=client)
            assert (response.status_code, body) == (200, b"ok")


def test_head_then_get_repeated_under_concurrency_never_gets_502(proxy):
    # The body after a HEAD answer comes a moment later, as aiohttp's does under load: whether
    # it meets the next request on a reused connection depends on timing.
    def script(conn: Conn, request: Request) -> None:
        if request.method == "HEAD":
            conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 3000\r\n\r\n")
            conn.sleep(0.002)
            conn.send(b"y" * 3000)
        else:
            conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    with ScriptedBackend({"/h": script}) as backend:
        server = proxy(backend)
        statuses: list[int] = []
        errors: list[BaseException] = []

        def client_loop() -> None:
            try:
                tls = tls_connect(server.port)
                client = h11.Connection(h11.CLIENT)
                for _ in range(15):
                    statuses.append(exchange(tls, "HEAD", "/h", client=client)[0].status_code)
                    statuses.append(exchange(tls, "GET", "/h", client=client)[0].status_code)
            except BaseException as exc:  # reported below, not lost in the thread
                errors.append(exc)

        threads = [threading.Thread(target=client_loop) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors and statuses == [200] * 120


# -- defect 8 (response side): close-delimited bodies with a transfer coding ----------------

def test_close_delimited_gzip_coded_response_is_relayed_whole_and_framed(proxy):
    payload = b"firmware image " * 5000
    coded = gzip.compress(payload)

    def script(conn: Conn, request: Request) -> None:
        conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nConnection: close\r\n\r\n")
        for start in range(0, len(coded), 7000):
            conn.send(coded[start:start + 7000])
            conn.sleep(0.01)
        conn.close()

    with ScriptedBackend({"/gz": script}) as backend:
        server = proxy(backend)
        tls = tls_connect(server.port)
        tls.sendall(b"GET /gz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        data = b""
        while b"\r\n0\r\n\r\n" not in data:
            chunk = _recv(tls)
            assert chunk, f"closed before the last chunk: {data[:200]!r}"
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.lower().split(b"\r\n")
        codings = b", ".join(line.split(b":", 1)[1].strip() for line in lines
                             if line.startswith(b"transfer-encoding:"))
        assert lines[0].startswith(b"http/1.1 200") and codings == b"gzip, chunked"
        assert not any(line.startswith(b"content-length:") for line in lines)
        body = b""
        while True:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            body, rest = body + rest[:size], rest[size + 2:]
        assert gzip.decompress(body) == payload
        entry = server.wait_log(lambda e: e.get("event") == "request" and e.get("path") == "/gz")
        assert entry is not None and entry["status"] == 200 and not entry.get("error")


# -- defect 9: the error metric's label, one TLS record for a head that came alone ----------

def test_upstream_errors_metric_is_labelled_with_the_failure_kind(proxy):
    def hang_up(conn: Conn, request: Request) -> None:
        conn.close()

    with ScriptedBackend({"/x": hang_up}) as backend:
        server = proxy(backend)
        response, _, _ = exchange(tls_connect(server.port), target="/x")
        assert response.status_code == 502
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics",
                                          timeout=10).read().decode()
            lines = [line for line in text.splitlines()
                     if line.startswith("qtls_upstream_errors_total{")]
            if lines:
                break
            time.sleep(0.1)
        assert lines and all('kind="closed"' in line for line in lines), lines


def _records_of_response(port: int, request: bytes) -> int:
    """How many TLS records carried the answer to `request` (read through memory BIOs, so
    each record is seen as it came)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    tls = SSL.Connection(client_context(), None)
    tls.set_tlsext_host_name(b"localhost")
    tls.set_connect_state()

    def flush() -> None:
        while tls.pending() >= 0:
            try:
                out = tls.bio_read(65536)
            except SSL.WantReadError:
                return
            sock.sendall(out)

    while True:
        try:
            tls.do_handshake()
            break
        except SSL.WantReadError:
            flush()
            tls.bio_write(sock.recv(65536))
    flush()
    tls.send(request)
    flush()
    raw, records, got = b"", 0, b""
    while not _whole(got):
        chunk = sock.recv(65536)
        assert chunk, f"closed early: {got!r}"
        raw += chunk
        while len(raw) >= 5 and len(raw) >= 5 + int.from_bytes(raw[3:5], "big"):
            size = 5 + int.from_bytes(raw[3:5], "big")
            record, raw = raw[:size], raw[size:]
            tls.bio_write(record)
            try:
                data = tls.recv(65536)
            except SSL.WantReadError:
                continue  # a session ticket, say: none of the response
            except SSL.ZeroReturnError:
                # Our close_notify after the answer (Connection: close), when it came in the
                # same read as the answer's record: not part of the response.
                break
            records += 1
            got += data
    sock.close()
    return records


def _whole(response: bytes) -> bool:
    head, sep, body = response.partition(b"\r\n\r\n")
    if not sep:
        return False
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    return len(body) >= length


def test_a_head_that_comes_alone_leaves_with_its_body_in_one_tls_record(proxy):
    # As the example Flask backend (werkzeug) sends: the head, then the body a moment later.
    def script(conn: Conn, request: Request) -> None:
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 27\r\n\r\n")
        conn.sleep(0.05)
        conn.send(b'{"version": "1.2.3", "a": 1}'[:27])

    with ScriptedBackend({"/api": script}) as backend:
        server = proxy(backend)
        request = b"GET /api HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        assert _records_of_response(server.port, request) == 1


# -- issue 12 item 6: rotation logged once per change, with the cause ------------------------

def test_a_server_out_of_rotation_is_logged_once_and_its_return_once(proxy):
    port = free_port()
    backend = ScriptedBackend({}, port=port)  # bound, not listening: connections refused
    backend._listener.close()
    server = proxy(backend, upstreams={"app": {"servers": [f"127.0.0.1:{port}"],
                                               "connect_timeout": 2, "read_timeout": 5}})
    tls = tls_connect(server.port)
    client = h11.Connection(h11.CLIENT)
    for _ in range(20):
        assert exchange(tls, target="/x", client=client)[0].status_code == 502
    out = server.events("backend server taken out of rotation")
    assert len(out) == 1 and "refused" in out[0]["cause"].lower()

    def ok(conn: Conn, request: Request) -> None:
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    with ScriptedBackend({"/x": ok}, port=port):
        assert exchange(tls, target="/x", client=client)[0].status_code == 200
        assert exchange(tls, target="/x", client=client)[0].status_code == 200
    back = server.wait_log(lambda e: e.get("event") == "backend server back in rotation")
    assert back is not None and back["server"] == f"127.0.0.1:{port}"
    assert len(server.events("backend server back in rotation")) == 1
    assert len(server.events("backend server taken out of rotation")) == 1


# -- defect 2 (handler side): a body is read whole before any backend is involved -------------

def test_a_trickled_upload_holds_no_backend_connection_until_it_is_whole(proxy):
    def echo_length(conn: Conn, request: Request) -> None:
        body = b"%d %s" % (len(request.body), (request.header("Content-Length") or "-").encode())
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    with ScriptedBackend({"/up": echo_length}) as backend:
        server = proxy(backend)
        tls = tls_connect(server.port)
        tls.sendall(b"POST /up HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n"
                    b"\r\n5\r\nhello\r\n")
        time.sleep(0.5)  # what is being checked is that nothing happens meanwhile
        assert backend.connections == 0
        tls.sendall(b"6\r\n world\r\n0\r\n\r\n")
        client = h11.Connection(h11.CLIENT)
        client.send(h11.Request(method="POST", target="/up", headers=[
            ("Host", "localhost"), ("Transfer-Encoding", "chunked")]))
        client.send(h11.EndOfMessage())
        response, body, _ = None, b"", None
        while True:
            event = client.next_event()
            if event is h11.NEED_DATA:
                client.receive_data(_recv(tls))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
        assert response.status_code == 200 and body == b"11 11"  # sent with its length


def test_a_chunked_upload_goes_with_its_length_unless_the_route_streams(proxy):
    def framing(conn: Conn, request: Request) -> None:
        body = b"%d %s %s" % (len(request.body), (request.header("Content-Length") or "-").encode(),
                              (request.header("Transfer-Encoding") or "-").encode())
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    upload = (b"POST /up HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n")
    expected = {True: b"7 7 -", False: b"7 - chunked"}
    for buffering in (True, False):
        with ScriptedBackend({"/up": framing}) as backend:
            server = proxy(backend, routes=[{"upstream": "app",
                                             "request_buffering": buffering}])
            tls = tls_connect(server.port)
            tls.sendall(upload)
            data = b""
            while not data.endswith(expected[buffering]):
                chunk = _recv(tls)
                assert chunk, data
                data += chunk
            server.stop()
