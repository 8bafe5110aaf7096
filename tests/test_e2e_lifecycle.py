"""Signals on a real qtls-server: SIGHUP reloads (good and broken), SIGTERM drains."""

from __future__ import annotations

import json
import signal
import threading
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from qproxy import pki
from tests.conftest import make_config
from tests.support.harness import http_request, read_response, tls_connect


def _leaf_fingerprint(conn) -> bytes:
    return conn.get_peer_certificate().to_cryptography().fingerprint(hashes.SHA256())


def _download_in_background(port: int, size: int, result: dict) -> threading.Thread:
    def run() -> None:
        conn = tls_connect(port, timeout=60)
        conn.sendall(f"GET /bytes/{size} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        first = conn.recv(65536)
        result["started"].set()
        response = read_response_with_prefix(conn, first)
        result["status"] = response[0]
        result["length"] = response[1]
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def read_response_with_prefix(conn, prefix: bytes) -> tuple[int, int]:
    head, _, body = prefix.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    received = len(body)
    while received < length:
        chunk = conn.recv(1 << 20)
        if not chunk:
            break
        received += len(chunk)
    return status, received


def test_sighup_swaps_certificate_while_download_finishes(start_server, dev_pki, backend, tmp_path):
    config = make_config(dev_pki, backend["address"])
    server = start_server(config)
    old = _leaf_fingerprint(tls_connect(server.port))
    result = {"started": threading.Event()}
    thread = _download_in_background(server.port, 50 << 20, result)
    assert result["started"].wait(10)

    fresh = pki.init(tmp_path / "rotated")
    config["certificates"]["keypairs"] = [
        {"cert": str(fresh.mldsa_cert), "key": str(fresh.mldsa_key)},
        {"cert": str(fresh.ecdsa_cert), "key": str(fresh.ecdsa_key)},
    ]
    server.config_path.write_text(json.dumps(config))
    server.proc.send_signal(signal.SIGHUP)
    assert server.wait_log(lambda e: e.get("event") == "reloaded", 10)

    new = _leaf_fingerprint(tls_connect(server.port))
    rotated_leaf = x509.load_pem_x509_certificates(fresh.mldsa_cert.read_bytes())[0]
    assert new != old
    assert new == rotated_leaf.fingerprint(hashes.SHA256())
    thread.join(60)
    assert result.get("status") == 200 and result.get("length") == 50 << 20


def test_sighup_with_broken_config_keeps_serving(start_server, dev_pki, backend):
    server = start_server(make_config(dev_pki, backend["address"]))
    server.config_path.write_text("{ not json")
    server.proc.send_signal(signal.SIGHUP)
    failure = server.wait_log(lambda e: e.get("event", "").startswith("reload failed"), 10)
    assert failure is not None and "invalid JSON" in failure["error"]
    assert http_request(tls_connect(server.port), "GET", "/echo").status == 200


def test_sigterm_lets_request_in_flight_finish_then_exits_0(start_server, dev_pki, backend):
    server = start_server(make_config(dev_pki, backend["address"]))
    conn = tls_connect(server.port, timeout=30)
    conn.sendall(b"GET /slow?delay=1.5 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert server.wait_log(lambda e: False, 0.3) is None  # let the request reach the backend
    server.proc.send_signal(signal.SIGTERM)
    response = read_response(conn)
    assert response.status == 200 and response.body == b"late\n"
    assert server.proc.wait(20) == 0
    assert server.wait_log(lambda e: e.get("event") == "stopped", 5)


def test_sigterm_closes_connections_that_sent_no_request_at_once(start_server, dev_pki, backend):
    server = start_server(make_config(dev_pki, backend["address"], server={
        "listen_address": "127.0.0.1", "listen_port": 0, "handshake_timeout": 20}))
    idle = tls_connect(server.port, timeout=30)  # handshake done, never a request
    time.sleep(0.3)
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(30) == 0
    # Neither waited out as if still handshaking, nor reset: a close_notify, promptly.
    assert time.monotonic() - started < 10
    from tests.support.harness import _recv
    assert _recv(idle) == b""
