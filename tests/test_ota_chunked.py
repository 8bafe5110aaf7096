"""The OTA backend's chunked request-body decoder (examples/ota_backend/chunked.py), which
replaces werkzeug's: that one over-read the heap when a client stopped mid-chunk."""

from __future__ import annotations

import io
import socket
import threading

import pytest
from werkzeug.serving import make_server

from examples.ota_backend.app import HeaderPreservingRequestHandler
from examples.ota_backend.chunked import ChunkedBody


def body(raw: bytes) -> ChunkedBody:
    return ChunkedBody(io.BufferedReader(io.BytesIO(raw)))


def read_all(stream: ChunkedBody, size: int) -> bytes:
    out = b""
    for _ in range(10_000):
        piece = stream.read(size)
        if not piece:
            return out
        out += piece
    raise AssertionError("no end of body")


@pytest.mark.parametrize("read_size", [1, 3, 7, 64 * 1024])
def test_chunks_extensions_and_trailers_decode_at_any_read_size(read_size):
    raw = (b"3\r\nabc\r\n"
           b"A;name=value\r\n0123456789\r\n"
           b"1\r\nz\r\n"
           b"0\r\nX-Checksum: 1\r\n\r\n"
           b"NEXT REQUEST")
    stream = body(raw)
    assert read_all(stream, read_size) == b"abc0123456789z"
    assert stream._rfile.read() == b"NEXT REQUEST"  # trailers consumed, nothing beyond


def test_body_ending_mid_chunk_hands_over_only_what_arrived():
    stream = body(b"100000\r\n" + b"a" * 5000)
    got = b""
    with pytest.raises(OSError, match="middle of a chunk"):
        for _ in range(100):
            got += stream.read(256 * 1024)
    assert got == b"a" * len(got) and len(got) <= 5000


@pytest.mark.parametrize("raw", [
    b"-5\r\nabcde\r\n0\r\n\r\n",        # int() would take a sign
    b"0x5\r\nabcde\r\n0\r\n\r\n",       # ... and a prefix
    b"\r\n",                            # no size at all
    b"5\r\nabcdefg\r\n0\r\n\r\n",       # more data than declared
    b"5\r\nabcde",                      # no line end after the data
    b"5",                               # size line cut off
    b"0\r\n" + b"X: y\r\n" * 100,       # endless trailers
])
def test_malformed_or_cut_bodies_are_os_errors(raw):
    with pytest.raises(OSError):
        read_all(body(raw), 1024)


def test_handler_gives_the_app_only_bytes_the_client_sent():
    """Regression: werkzeug's DechunkedInput returned the full requested size from a 5000-byte
    body (heap memory after the bytes; with a large chunk size the server died of SIGSEGV)."""
    seen = {}

    def app(environ, start_response):
        try:
            seen["first read"] = environ["wsgi.input"].read(16 * 1024)
        except OSError as exc:
            seen["error"] = exc
        start_response("400 Bad Request", [("Content-Length", "0")])
        return [b""]

    server = make_server("127.0.0.1", 0, app, threaded=True,
                         request_handler=HeaderPreservingRequestHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", server.server_port), timeout=10) as sock:
            sock.sendall(b"PUT /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"8000\r\n" + b"a" * 5000)
            sock.shutdown(socket.SHUT_WR)
            assert sock.recv(100).startswith(b"HTTP/1.1 400")
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()
    first = seen.get("first read", b"")
    assert first == b"a" * len(first) and len(first) <= 5000, (len(first), first[5000:5040])
    assert isinstance(seen.get("error"), OSError), (seen.keys(), len(first))
