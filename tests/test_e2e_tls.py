"""Real handshakes against a real qtls-server process on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import time

import pytest
from OpenSSL import SSL

from qproxy.tls import openssl_ext
from qproxy.tls.certinfo import describe_key
from tests.conftest import make_config
from tests.support.harness import client_context, http_request, tls_connect


def _client_hello(groups: str = "X25519MLKEM768") -> bytes:
    """The first flight of a real pyOpenSSL client, captured from its memory BIO."""
    ctx = client_context(groups=groups)
    conn = SSL.Connection(ctx, None)
    conn.set_connect_state()
    conn.set_tlsext_host_name(b"localhost")
    try:
        conn.do_handshake()
    except SSL.WantReadError:
        pass
    return conn.bio_read(65536)


def test_pq_client_gets_x25519mlkem768_and_mldsa65(server, dev_pki):
    conn = tls_connect(server.port, client_context(cafile=dev_pki.ca_bundle))
    assert openssl_ext.negotiated_group(conn) == "X25519MLKEM768"
    assert conn.get_protocol_version_name() == "TLSv1.3"
    assert describe_key(conn.get_peer_certificate().to_cryptography().public_key()) == "ML-DSA-65"
    assert len(conn.get_peer_cert_chain()) == 2  # leaf and intermediate: a full chain
    assert conn.get_alpn_proto_negotiated() == b"http/1.1"
    result = http_request(conn, "GET", "/echo")
    assert result.status == 200
    access = server.wait_log(lambda e: e.get("event") == "request" and e.get("path") == "/echo")
    assert access["ssl_curve"] == "X25519MLKEM768"
    assert access["ssl_sigalg"] == "mldsa65"
    assert access["tls_version"] == "TLSv1.3"


def test_client_offering_only_secp384r1mlkem1024_gets_it(server, dev_pki):
    conn = tls_connect(server.port, client_context(groups="SecP384r1MLKEM1024",
                                                   cafile=dev_pki.ca_bundle))
    assert openssl_ext.negotiated_group(conn) == "SecP384r1MLKEM1024"
    assert http_request(conn, "GET", "/healthz").status == 200


def test_hybrid_preferred_even_when_client_sends_classical_share_first(server):
    # The client supports X25519MLKEM768 but leads with an X25519 key share: the server's
    # post-quantum tuple must win (HelloRetryRequest), not the classical share.
    conn = tls_connect(server.port, client_context(groups="X25519:X25519MLKEM768"))
    assert openssl_ext.negotiated_group(conn) == "X25519MLKEM768"


def test_ecdsa_only_client_gets_ecdsa_certificate(server, dev_pki):
    conn = tls_connect(server.port, client_context(
        sigalgs="ecdsa_secp384r1_sha384:ecdsa_secp256r1_sha256", cafile=dev_pki.ca_bundle))
    assert describe_key(conn.get_peer_certificate().to_cryptography().public_key()) == "ECDSA P-384"
    assert openssl_ext.verify_result(conn) == 0


def test_classical_python_ssl_client_gets_x25519_and_ecdsa(start_server, dev_pki, backend):
    # A classical client is logged at debug only (counted in qtls_classical_fallbacks).
    server = start_server(make_config(dev_pki, backend["address"], logging={"level": "debug"}))
    # Python's ssl module runs on the system OpenSSL 3.0: no ML-KEM, no ML-DSA.
    ctx = ssl.create_default_context(cafile=str(dev_pki.ca_bundle))
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.version() == "TLSv1.3"
            tls.sendall(b"GET /echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    assert data.startswith(b"HTTP/1.1 200")
    access = server.wait_log(lambda e: e.get("event") == "request" and e.get("ssl_curve") == "X25519")
    assert access is not None and access["ssl_sigalg"] == "ecdsa_secp384r1_sha384"
    fallback = server.wait_log(lambda e: e.get("event") == "classical key exchange")
    assert fallback is not None and fallback["level"] == "debug"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is installed by make test")
def test_curl_classical_client(server, dev_pki):
    out = subprocess.run(
        ["curl", "-sS", "--cacert", str(dev_pki.ca_bundle), "-o", "-", "-w", "\n%{http_code}",
         f"https://localhost:{server.port}/healthz", "--resolve", f"localhost:{server.port}:127.0.0.1"],
        capture_output=True, text=True, timeout=30)
    assert out.stdout.strip().endswith("200"), out.stderr


def test_require_pq_refuses_classical_client_with_handshake_failure(start_server, dev_pki, backend):
    server = start_server(make_config(dev_pki, backend["address"], tls={"require_pq": True}))
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        with pytest.raises(ssl.SSLError) as excinfo:
            ctx.wrap_socket(raw, server_hostname="localhost")
    assert "HANDSHAKE_FAILURE" in str(excinfo.value).upper()
    failure = server.wait_log(lambda e: e.get("event") == "handshake failed")
    assert failure["alert"] == "handshake_failure"
    # ...while a post-quantum client is still served.
    conn = tls_connect(server.port)
    assert openssl_ext.negotiated_group(conn) in ("X25519MLKEM768", "SecP384r1MLKEM1024")


def test_pqc_only_offers_pure_mlkem(start_server, dev_pki, backend):
    server = start_server(make_config(dev_pki, backend["address"], tls={"pqc_only": True}))
    conn = tls_connect(server.port, client_context(groups="MLKEM768:X25519MLKEM768:X25519"))
    assert openssl_ext.negotiated_group(conn) == "MLKEM768"
    with pytest.raises(SSL.Error):
        tls_connect(server.port, client_context(groups="X25519MLKEM768:X25519"))


def test_session_resumes_with_ticket(server):
    ctx = client_context()
    first = tls_connect(server.port, ctx)
    assert http_request(first, "GET", "/healthz").status == 200  # tickets arrive after the handshake
    session = first.get_session()
    second = tls_connect(server.port, ctx, session=session)
    assert openssl_ext.session_reused(second)
    assert http_request(second, "GET", "/echo").status == 200
    access = server.wait_log(lambda e: e.get("event") == "request" and e.get("ssl_session_reused"))
    assert access is not None and access["ssl_sigalg"] is None


def _pending(conn: SSL.Connection) -> bytes:
    try:
        return conn.bio_read(65536)
    except SSL.WantReadError:
        return b""


def test_client_hello_delivered_a_few_bytes_at_a_time_completes(server):
    # Real networks split a ~1.6 KB hybrid ClientHello across segments; here it goes in 7-byte
    # writes, and the handshake must still complete.
    client = SSL.Connection(client_context(), None)
    client.set_connect_state()
    sent = 0
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(200):
            try:
                client.do_handshake()
                break
            except SSL.WantReadError:
                pass
            out = _pending(client)
            for offset in range(0, len(out), 7):
                raw.sendall(out[offset:offset + 7])
                sent += 1
                time.sleep(0.0005)
            client.bio_write(raw.recv(65536))
        assert openssl_ext.negotiated_group(client) == "X25519MLKEM768"
    assert sent > 150


def test_mldsa_server_flight_over_14kb_arrives_whole(server):
    hello = _client_hello()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        raw.sendall(hello)
        flight = b""
        deadline = time.monotonic() + 10
        # ServerHello + encrypted extensions + certificate chain (two ML-DSA-65 certificates)
        # + CertificateVerify: read whole records until the flight is complete.
        while len(flight) < 14 * 1024 and time.monotonic() < deadline:
            chunk = raw.recv(65536)
            if not chunk:
                break
            flight += chunk
    assert len(flight) > 14 * 1024


def test_garbage_and_truncated_hello_get_one_log_line_each_and_others_still_served(
        start_server, dev_pki, backend):
    # debug: a client that leaves mid-handshake is logged there (it is no fault of ours).
    server = start_server(make_config(dev_pki, backend["address"], logging={"level": "debug"}))
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        raw.sendall(b"\x16\x03\x01\x00\x05garbagegarbagegarbage")
        raw.settimeout(10)
        alert = raw.recv(100)
    assert alert[:1] == b"\x15", "a TLS alert record"
    truncated = _client_hello()[:300]
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        raw.sendall(truncated)
        raw.shutdown(socket.SHUT_WR)
        raw.settimeout(10)
        assert raw.recv(100) == b""
    failures = []
    deadline = time.monotonic() + 10
    while len(failures) < 2 and time.monotonic() < deadline:
        failures = server.events("handshake failed")
        time.sleep(0.05)
    assert len(failures) == 2
    assert any(f.get("alert") for f in failures)
    conn = tls_connect(server.port)
    assert http_request(conn, "GET", "/healthz").status == 200


def test_plain_http_on_tls_port_gets_400_use_https(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        raw.settimeout(10)
        data = b""
        while chunk := raw.recv(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.1 400")
    assert b"HTTPS port" in data
    assert server.wait_log(lambda e: e.get("event") == "plain HTTP request on the TLS port")


def test_200_idle_connections_do_not_stop_service(server):
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(200)]
    try:
        conn = tls_connect(server.port)
        assert http_request(conn, "GET", "/healthz").status == 200
    finally:
        for sock in idle:
            sock.close()


def test_handshake_timeout_closes_silent_connections(start_server, dev_pki, backend):
    server = start_server(make_config(dev_pki, backend["address"],
                                      server={"listen_address": "127.0.0.1", "listen_port": 0,
                                              "handshake_timeout": 0.5}))
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        raw.settimeout(10)
        started = time.monotonic()
        assert raw.recv(100) == b""
        assert time.monotonic() - started < 5
    assert server.wait_log(lambda e: e.get("reason") == "handshake timed out")


def test_corrupted_record_after_handshake_gets_alert_and_one_log_line(server):
    conn = tls_connect(server.port)
    assert http_request(conn, "GET", "/healthz").status == 200
    # An application-data record whose ciphertext is garbage: bad_record_mac.
    with socket.socket(fileno=os.dup(conn.fileno())) as raw:  # the TCP socket under TLS
        raw.sendall(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)
    assert server.wait_log(lambda e: e.get("event") == "TLS error on an established connection"
                           and e.get("alert") == "bad_record_mac")
    assert http_request(tls_connect(server.port), "GET", "/healthz").status == 200


def test_client_closing_after_handshake_without_request_is_not_a_handshake_failure(server):
    # Browsers pre-connect and then drop unused connections: the handshake did succeed.
    for _ in range(3):
        conn = tls_connect(server.port)
        conn.close()  # TCP close without close_notify, as browsers often do
    assert http_request(tls_connect(server.port), "GET", "/healthz").status == 200
    assert server.wait_log(lambda e: e.get("event") == "request")
    assert server.wait_log(lambda e: e.get("event") == "handshake failed", 1.0) is None
