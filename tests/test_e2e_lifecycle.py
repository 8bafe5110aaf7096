"""Signals on a real qtls-server: SIGHUP reloads (good and broken), SIGTERM drains."""

from __future__ import annotations

import json
import signal
import socket
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from qproxy import pki
from qproxy.daemon.master import KILL_GRACE
from tests.conftest import make_config
from tests.support.harness import (
    CloseKind,
    close_kind,
    http_request,
    read_response,
    read_until_closed,
    tls_connect,
    wait_first_bytes,
)


def _leaf_fingerprint(conn) -> bytes:
    return conn.get_peer_certificate().to_cryptography().fingerprint(hashes.SHA256())


def _rotate_certificates(server, config: dict, directory) -> pki.DevPki:
    fresh = pki.init(directory)
    config["certificates"]["keypairs"] = [
        {"cert": str(fresh.mldsa_cert), "key": str(fresh.mldsa_key)},
        {"cert": str(fresh.ecdsa_cert), "key": str(fresh.ecdsa_key)},
    ]
    server.config_path.write_text(json.dumps(config))
    return fresh


def _access_line(server, path: str, timeout: float = 10) -> dict:
    line = server.wait_log(lambda e: e.get("event") == "request" and e.get("path") == path,
                           timeout)
    assert line is not None, f"no access log line for {path}"
    return line


def test_sighup_finishes_the_request_in_flight_on_the_old_generation(start_server, start_backend,
                                                                     dev_pki, tmp_path):
    """The response spans the reload (the backend trickles until released): the old worker
    must keep serving it to its clean end while new connections meet the new generation."""
    app = start_backend()
    config = make_config(dev_pki, app["address"])
    server = start_server(config)
    old_workers = set(server.worker_pids)
    old = _leaf_fingerprint(tls_connect(server.port))
    in_flight = tls_connect(server.port, timeout=30)
    first = wait_first_bytes(in_flight, "/trickle?id=reload")

    fresh = _rotate_certificates(server, config, tmp_path / "rotated")
    server.proc.send_signal(signal.SIGHUP)
    reloaded = server.wait_log(lambda e: e.get("event") == "reloaded", 20)
    assert reloaded is not None
    new_workers = set(reloaded["workers"])
    assert new_workers and not new_workers & old_workers

    conn = tls_connect(server.port)
    rotated_leaf = x509.load_pem_x509_certificates(fresh.mldsa_cert.read_bytes())[0]
    assert _leaf_fingerprint(conn) != old
    assert _leaf_fingerprint(conn) == rotated_leaf.fingerprint(hashes.SHA256())
    assert http_request(conn, "GET", "/echo?after-reload").status == 200
    assert _access_line(server, "/echo?after-reload")["pid"] in new_workers
    assert not [e for e in server.events("request") if e.get("path") == "/trickle?id=reload"]

    (app["markers"] / "release-reload").touch()
    response = read_response(in_flight, already=first)
    assert response.status == 200 and response.complete
    assert response.body.endswith(b"end\n") and set(response.body[:-4]) == {ord("t")}
    assert _access_line(server, "/trickle?id=reload")["pid"] in old_workers
    # Its request done, the old worker closes the kept-alive connection properly and exits.
    assert read_until_closed(in_flight) == (b"", CloseKind.CLOSE_NOTIFY)
    assert server.wait_log(lambda e: e.get("event") == "old worker finished", 20)


def test_sighup_with_broken_config_keeps_serving(start_server, dev_pki, backend):
    server = start_server(make_config(dev_pki, backend["address"]))
    server.config_path.write_text("{ not json")
    server.proc.send_signal(signal.SIGHUP)
    failure = server.wait_log(lambda e: e.get("event", "").startswith("reload failed"), 10)
    assert failure is not None and "invalid JSON" in failure["error"]
    assert http_request(tls_connect(server.port), "GET", "/echo").status == 200


def _refused_soon(port: int, seconds: float = 3.0) -> bool:
    """True once a connection to the port is refused. Probed, because a worker logs its drain
    as it asks its event loop to close the listener, a moment before the descriptor goes."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        except ConnectionRefusedError:
            return True
        time.sleep(0.02)
    return False


def test_sigterm_refuses_new_connections_while_the_request_in_flight_finishes(
        start_server, start_backend, dev_pki):
    app = start_backend()
    server = start_server(make_config(dev_pki, app["address"]))
    conn = tls_connect(server.port, timeout=30)
    first = wait_first_bytes(conn, "/trickle?id=term")
    server.proc.send_signal(signal.SIGTERM)
    assert server.wait_log(lambda e: e.get("event") == "worker draining", 10)
    # Still draining (the backend has not been released): the listener must be gone already.
    assert server.proc.poll() is None
    assert _refused_soon(server.port)
    (app["markers"] / "release-term").touch()
    response = read_response(conn, already=first)
    assert response.status == 200 and response.complete and response.body.endswith(b"end\n")
    assert read_until_closed(conn) == (b"", CloseKind.CLOSE_NOTIFY)
    assert server.proc.wait(20) == 0
    assert server.wait_log(lambda e: e.get("event") == "stopped", 5)


def test_shutdown_timeout_cuts_the_request_still_running_and_the_master_exits(
        start_server, start_backend, dev_pki):
    """The backend never finishes (not released): at shutdown_timeout the worker cuts the
    connection (the client sees a body without its last chunk), well before the master's
    SIGKILL grace would, and the master exits 0."""
    app = start_backend()
    server = start_server(make_config(dev_pki, app["address"], server={
        "listen_address": "127.0.0.1", "listen_port": 0, "shutdown_timeout": 1}))
    conn = tls_connect(server.port, timeout=30)
    first = wait_first_bytes(conn, "/trickle?id=never")
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    response = read_response(conn, already=first)
    cut_after = time.monotonic() - started
    assert response.status == 200 and not response.complete
    assert close_kind(conn) is not None
    assert 0.8 < cut_after < 1 + KILL_GRACE - 1, cut_after
    assert server.proc.wait(10) == 0
    assert time.monotonic() - started < 1 + KILL_GRACE


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
    assert read_until_closed(idle) == (b"", CloseKind.CLOSE_NOTIFY)
