"""The harness's own promises: it tells close_notify from a bare EOF and from a reset, and it
reports a chunked body without its last chunk as incomplete. A real pyOpenSSL server thread on
127.0.0.1 ends each connection one way."""

from __future__ import annotations

import socket
import struct
import threading

import pytest
from OpenSSL import SSL

from tests.support.harness import (
    CloseKind,
    close_kind,
    read_response,
    read_until_closed,
    tls_connect,
)


@pytest.fixture(scope="module")
def server_context(dev_pki) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.use_certificate_chain_file(str(dev_pki.ecdsa_cert))
    ctx.use_privatekey_file(str(dev_pki.ecdsa_key))
    return ctx


def _serve_once(ctx: SSL.Context, send: bytes, ending: CloseKind) -> tuple[int, threading.Thread]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def run() -> None:
        sock, _ = listener.accept()
        listener.close()
        conn = SSL.Connection(ctx, sock)
        conn.set_accept_state()
        conn.do_handshake()
        conn.sendall(send)
        if ending is CloseKind.RESET:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
            return
        if ending is CloseKind.CLOSE_NOTIFY:
            conn.shutdown()
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(5)
        try:
            sock.recv(1024)
        except OSError:
            pass
        sock.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return listener.getsockname()[1], thread


@pytest.mark.parametrize("ending", [CloseKind.CLOSE_NOTIFY, CloseKind.EOF])
def test_the_harness_tells_close_notify_from_a_bare_eof(server_context, ending):
    port, thread = _serve_once(server_context, b"bye", ending)
    conn = tls_connect(port, timeout=5)
    assert read_until_closed(conn, 5) == (b"bye", ending)
    thread.join(5)


def test_the_harness_reports_a_reset(server_context):
    port, thread = _serve_once(server_context, b"", CloseKind.RESET)
    conn = tls_connect(port, timeout=5)
    thread.join(5)
    assert read_until_closed(conn, 5)[1] is CloseKind.RESET


def test_a_chunked_body_without_its_last_chunk_is_incomplete(server_context):
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    port, thread = _serve_once(server_context, head + b"5\r\nhello\r\n", CloseKind.CLOSE_NOTIFY)
    conn = tls_connect(port, timeout=5)
    response = read_response(conn)
    assert response.body == b"hello" and not response.complete
    assert close_kind(conn) is CloseKind.CLOSE_NOTIFY
    thread.join(5)
