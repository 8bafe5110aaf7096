"""The merged HTTP/1.1 layer attacked end to end: a real daemon, real TLS over 127.0.0.1, a
hostile client or a careless backend (tests/support/scripted_backend.py). Each case: the right
status or close for that one connection, one log line, no traceback, and the daemon keeps
serving a normal request afterwards."""

from __future__ import annotations

import pytest

from tests.conftest import make_config
from tests.support.harness import CloseKind, http_request, read_until_closed, tls_connect
from tests.support.scripted_backend import Conn, Request, ScriptedBackend


def _echo(conn: Conn, request: Request) -> None:
    conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(request.body),
                                                                    request.body))


def _still_serves(server) -> None:
    conn = tls_connect(server.port)
    assert http_request(conn, "POST", "/echo", body=b"fine").body == b"fine"
    conn.close()
    assert not [line for line in server.raw if "Traceback" in line]


@pytest.mark.parametrize("buffering", [True, False])
def test_close_notify_mid_body_gets_no_500(start_server, dev_pki, buffering):
    """A client that sends part of its body and then its TLS close_notify has left: the
    request is logged 499 (client closed), and nothing is written back. The merged code
    answered the half-open connection "500 Internal Server Error" (the handler had returned
    without answering, which the connection took for a handler bug), contradicting its own
    log line."""
    with ScriptedBackend({"/echo": _echo}) as backend:
        server = start_server(make_config(
            dev_pki, backend.address,
            routes=[{"upstream": "app", "request_buffering": buffering}]))
        conn = tls_connect(server.port)
        conn.sendall(b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\nabc")
        conn.shutdown()  # close_notify: our half is closed, the server may still write
        data, kind = read_until_closed(conn)
        assert data == b""
        assert kind in (CloseKind.CLOSE_NOTIFY, CloseKind.EOF)
        logged = server.wait_log(lambda e: e.get("event") == "request"
                                 and e.get("path") == "/echo")
        assert logged is not None and logged["status"] == 499
        _still_serves(server)
        assert len([e for e in server.events("request") if e.get("status") == 499]) == 1
        assert not [e for e in server.lines if e.get("status") == 500]


def test_a_backends_204_loses_its_content_length(start_server, dev_pki):
    """RFC 9110 8.6: a 204 never carries Content-Length. A backend that sends one (and four
    bytes after it) had it passed on to the client, whose next pipelined response a lenient
    client could then misframe. The 204 now goes without it, and the bytes after it never
    reach the client."""
    def no_content(conn: Conn, request: Request) -> None:
        conn.send(b"HTTP/1.1 204 No Content\r\nContent-Length: 4\r\n\r\nevil")

    with ScriptedBackend({"/echo": _echo, "/204": no_content}) as backend:
        server = start_server(make_config(dev_pki, backend.address))
        conn = tls_connect(server.port)
        conn.sendall(b"GET /204 HTTP/1.1\r\nHost: localhost\r\n\r\n"
                     b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n"
                     b"Connection: close\r\n\r\nok")
        data, _ = read_until_closed(conn)
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 204 ")
        assert b"content-length" not in head.lower()
        assert rest.startswith(b"HTTP/1.1 200 ") and rest.endswith(b"\r\n\r\nok")
        assert b"evil" not in data
        _still_serves(server)


@pytest.mark.parametrize("host", [b"evil.example/reset?x=", b"a b", b"caf\xc3\xa9",
                                  b"[::1", b"localhost:80x", b"user@localhost"])
def test_a_host_that_is_not_host_port_is_refused(start_server, dev_pki, host):
    """RFC 9112 3.2: a Host field with an invalid value gets a 400. These went through to the
    router and to the backend as Host and X-Forwarded-Host (a backend building a password
    reset link from it would put the client's path or host in it)."""
    with ScriptedBackend({"/echo": _echo}) as backend:
        server = start_server(make_config(dev_pki, backend.address))
        conn = tls_connect(server.port)
        conn.sendall(b"GET /echo HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
        data, _ = read_until_closed(conn)
        assert data.startswith(b"HTTP/1.1 400 ")
        assert not backend.requests
        assert server.wait_log(lambda e: e.get("event") == "bad request") is not None
        _still_serves(server)
        assert len(server.events("bad request")) == 1


def test_a_host_with_a_port_or_an_ip_literal_is_taken(start_server, dev_pki):
    with ScriptedBackend({"/echo": _echo}) as backend:
        server = start_server(make_config(dev_pki, backend.address))
        for host in ("localhost:8443", "[::1]:443", "LOCALHOST", "127.0.0.1", "xn--caf-dma.test"):
            conn = tls_connect(server.port)
            assert http_request(conn, "POST", "/echo", body=b"x", host=host).status == 200
            conn.close()


def test_a_response_cut_short_ends_without_close_notify(start_server, dev_pki):
    """A backend that closes mid-body (fewer bytes than its Content-Length, or mid-chunk):
    the client's connection ended with a TLS close_notify, the sign of a deliberate, whole
    end (RFC 8446 6.1), so a client reading to the close could take the cut body for all of
    it. Now it ends with no close_notify (as nginx after an upstream error); a whole
    close-delimited response still ends with one."""
    def short(conn: Conn, request: Request) -> None:
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        conn.close()

    def mid_chunk(conn: Conn, request: Request) -> None:
        conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab")
        conn.close()

    def whole(conn: Conn, request: Request) -> None:
        conn.send(b"HTTP/1.0 200 OK\r\n\r\nall of it")
        conn.close()

    with ScriptedBackend({"/echo": _echo, "/short": short, "/chunk": mid_chunk,
                          "/whole": whole}) as backend:
        server = start_server(make_config(dev_pki, backend.address))
        for path in (b"/short", b"/chunk"):
            conn = tls_connect(server.port)
            conn.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: localhost\r\n\r\n")
            data, kind = read_until_closed(conn)
            assert data.startswith(b"HTTP/1.1 200 ") and b"ab" in data
            assert kind is CloseKind.EOF, path
        conn = tls_connect(server.port)
        conn.sendall(b"GET /whole HTTP/1.0\r\nHost: localhost\r\n\r\n")
        data, kind = read_until_closed(conn)
        assert data.endswith(b"\r\n\r\nall of it") and kind is CloseKind.CLOSE_NOTIFY
        _still_serves(server)


_HOST = b"Host: localhost\r\n"
# Held on the merged code (regression guards): each gets its status and a close, one log
# line, and the daemon goes on serving.
_REFUSED = {
    "CL.TE": (b"POST /echo HTTP/1.1\r\n" + _HOST + b"Content-Length: 4\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "TE.CL": (b"POST /echo HTTP/1.1\r\n" + _HOST + b"Transfer-Encoding: chunked\r\n"
              b"Content-Length: 4\r\n\r\n0\r\n\r\n", 400),
    "TE twice": (b"POST /echo HTTP/1.1\r\n" + _HOST + b"Transfer-Encoding: chunked\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "TE gzip": (b"POST /echo HTTP/1.1\r\n" + _HOST + b"Transfer-Encoding: gzip, chunked\r\n\r\n"
                b"0\r\n\r\n", 501),
    "obs-fold": (b"GET /echo HTTP/1.1\r\n" + _HOST + b"X-A: a\r\n b\r\n\r\n", 400),
    "bare LF": (b"GET /echo HTTP/1.1\nHost: localhost\n\n", 400),
    "NUL in value": (b"GET /echo HTTP/1.1\r\n" + _HOST + b"X-A: a\x00b\r\n\r\n", 400),
    "CR in value": (b"GET /echo HTTP/1.1\r\n" + _HOST + b"X-A: a\rb\r\n\r\n", 400),
    "space before colon": (b"POST /echo HTTP/1.1\r\n" + _HOST + b"Content-Length : 2\r\n\r\nab",
                           400),
    "chunk size overflow": (b"POST /echo HTTP/1.1\r\n" + _HOST + b"Transfer-Encoding: chunked"
                            b"\r\n\r\nfffffffffffffffffffff\r\n", 400),
    "trailer with Content-Length": (b"POST /echo HTTP/1.1\r\n" + _HOST + b"Transfer-Encoding: "
                                    b"chunked\r\n\r\n2\r\nab\r\n0\r\nContent-Length: 5\r\n\r\n",
                                    400),
    "%00": (b"GET /a%00b HTTP/1.1\r\n" + _HOST + b"\r\n", 400),
    "%2e%2e": (b"GET /%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\n" + _HOST + b"\r\n", 400),
    "long target": (b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n" + _HOST + b"\r\n", 414),
    "10000 headers": (b"GET /echo HTTP/1.1\r\n" + _HOST
                      + b"".join(b"X-%d: a\r\n" % i for i in range(10_000)) + b"\r\n", 431),
}


def test_smuggling_and_malformed_heads_are_refused_one_connection_each(start_server, dev_pki):
    with ScriptedBackend({"/echo": _echo}) as backend:
        server = start_server(make_config(dev_pki, backend.address))
        for name, (data, status) in _REFUSED.items():
            conn = tls_connect(server.port)
            conn.sendall(data)
            answer, kind = read_until_closed(conn)
            assert answer.startswith(b"HTTP/1.1 %d " % status), name
            assert b"Connection: close\r\n" in answer and kind is CloseKind.CLOSE_NOTIFY, name
            _still_serves(server)
        assert all(r.body == b"fine" for r in backend.requests)  # none of the refused

        def refused() -> int:  # a bad head's line, or a bad body's request line
            return len(server.events("bad request")) + len(
                [e for e in server.events("request") if e.get("status", 0) >= 400])

        server.wait_log(lambda _: refused() >= len(_REFUSED), timeout=5)
        assert refused() == len(_REFUSED)  # one line each
