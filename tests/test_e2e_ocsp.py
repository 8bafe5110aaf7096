"""OCSP stapling end to end: a real qtls-server, real responders on 127.0.0.1 (Debian's
`openssl ocsp`, and a scripted one built on cryptography for ML-DSA, forged and short-lived
responses), real clients (`openssl s_client -status`, pyOpenSSL, `qproxy probe`)."""

from __future__ import annotations

import datetime as dt
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from cryptography.x509 import ocsp
from OpenSSL import SSL

from tests.support.harness import ROOT, child_env, client_context, free_port
from tests.support.ocsp_pki import OcspCa, ScriptedResponder, openssl_ocsp_answerer

OPENSSL = shutil.which("openssl")


def stapled(port: int, cafile: Path, sigalgs: str | None = None) -> bytes:
    """The OCSP response the server stapled in a fresh handshake (b"" if none)."""
    seen: list[bytes] = []

    def note(_conn: SSL.Connection, data: bytes, _arg: Any) -> bool:
        seen.append(data)
        return True

    ctx = client_context(sigalgs=sigalgs, cafile=cafile)
    ctx.set_ocsp_client_callback(note)
    conn = tls_connect_requesting_ocsp(port, ctx)
    conn.close()
    return seen[0] if seen else b""


def until_stapled(port: int, cafile: Path, expected: bytes, timeout: float = 10.0) -> None:
    """Workers look at a newly published response within stapling.RECHECK seconds."""
    deadline = time.monotonic() + timeout
    while stapled(port, cafile) != expected:
        assert time.monotonic() < deadline, "the published response was never stapled"
        time.sleep(0.1)


def tls_connect_requesting_ocsp(port: int, ctx: SSL.Context) -> SSL.Connection:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.settimeout(None)  # pyOpenSSL wants blocking; SO_RCVTIMEO bounds a hung test
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 10, 0))
    conn = SSL.Connection(ctx, sock)
    conn.set_tlsext_host_name(b"localhost")
    conn.request_ocsp()
    conn.set_connect_state()
    conn.do_handshake()
    return conn


def status_of(der: bytes) -> str:
    return ocsp.load_der_ocsp_response(der).certificate_status.name.lower()


def metric(server, name: str, cert: str) -> float | None:
    body = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics",
                                  timeout=10).read().decode()
    total = None
    for line in body.splitlines():
        if line.startswith(name + "{") and f'cert="{cert}"' in line:
            total = (total or 0.0) + float(line.rsplit(" ", 1)[1])
    return total


def ocsp_config(backend, pairs: list[dict[str, str]], **certificates: Any) -> dict[str, Any]:
    config = _base(backend)
    config["certificates"] = {"keypairs": pairs, "ocsp_stapling": True,
                              "ocsp_retry_interval": 0.3, "ocsp_timeout": 2, **certificates}
    return config


def _base(backend) -> dict[str, Any]:
    return {
        "server": {"listen_address": "127.0.0.1", "listen_port": 0, "workers": 2},
        "algorithms": {"kem": ["kyber768", "x25519", "kyber1024", "ecdhe-p384"]},
        "logging": {"level": "info", "console": True},
        "metrics": {"enabled": True, "address": "127.0.0.1", "port": 0},
        "upstreams": {"app": {"servers": [backend["address"]]}},
    }


def pair(leaf) -> dict[str, str]:
    return {"cert": str(leaf.cert_path), "key": str(leaf.key_path)}


def wait_event(server, event: str, timeout: float = 15.0, **fields: Any) -> dict[str, Any]:
    entry = server.wait_log(lambda e: e.get("event") == event
                            and all(e.get(k) == v for k, v in fields.items()), timeout)
    assert entry is not None, f"no {event!r} {fields} in:\n" + "\n".join(server.raw[-20:])
    return entry


@pytest.fixture
def responder():
    port = free_port()
    with ScriptedResponder(port) as scripted:
        scripted.url = f"http://127.0.0.1:{port}/"
        yield scripted


def test_good_response_is_stapled_and_counted(start_server, backend, responder, tmp_path):
    ca = OcspCa(tmp_path / "ca", responder.url)
    leaf = ca.issue_leaf("server")
    responder.answer = ca.response(leaf, next_update=dt.timedelta(hours=1))
    server = start_server(ocsp_config(backend, [pair(leaf)]))
    wait_event(server, "OCSP response stapled", cert="server-cert.pem", status="good")
    der = stapled(server.port, ca.ca_path)
    assert der == responder.answer
    assert metric(server, "qtls_ocsp_response_valid", "server-cert.pem") == 1
    assert metric(server, "qtls_ocsp_next_update_seconds", "server-cert.pem") > time.time()


def test_revoked_is_stapled_as_revoked(start_server, backend, responder, tmp_path):
    ca = OcspCa(tmp_path / "ca", responder.url)
    leaf = ca.issue_leaf("server")
    responder.answer = ca.response(leaf, "revoked")
    server = start_server(ocsp_config(backend, [pair(leaf)]))
    wait_event(server, "OCSP response stapled", status="revoked")
    assert status_of(stapled(server.port, ca.ca_path)) == "revoked"


def test_responder_down_keeps_the_last_good_response_until_next_update(
        start_server, backend, responder, tmp_path):
    ca = OcspCa(tmp_path / "ca", responder.url)
    leaf = ca.issue_leaf("server")
    # Each answer valid for 10 s from when it is made (a loaded machine may take seconds to
    # start the server); refreshed after a quarter of that, when the responder is down.
    responder.answer_with = lambda _request: ca.response(leaf, next_update=dt.timedelta(
        seconds=10))
    server = start_server(ocsp_config(backend, [pair(leaf)]))
    wait_event(server, "OCSP response stapled")
    responder.answer_with = None  # down: HTTP 503 from now on
    good = responder.served[-1]
    kept = wait_event(server, "OCSP refresh failed; the last good response stays stapled "
                      "until its nextUpdate")
    assert "503" in kept["error"]
    assert stapled(server.port, ca.ca_path) == good
    assert metric(server, "qtls_ocsp_response_valid", "server-cert.pem") == 1
    wait_event(server, "OCSP response expired and no new one verifies; nothing is stapled")
    assert stapled(server.port, ca.ca_path) == b""
    assert metric(server, "qtls_ocsp_response_valid", "server-cert.pem") == 0
    assert metric(server, "qtls_ocsp_fetch_failures_total", "server-cert.pem") >= 2


def test_a_forged_response_is_never_stapled(start_server, backend, responder, tmp_path):
    ca = OcspCa(tmp_path / "ca", responder.url)
    forger = OcspCa(tmp_path / "forger", responder.url)
    leaf = ca.issue_leaf("server")
    responder.answer = ca.response(leaf, signer=ca.responder(issuer_key=forger.key,
                                                             issuer_cert=forger.cert))
    server = start_server(ocsp_config(backend, [pair(leaf)]))
    refused = wait_event(server, "no valid OCSP response to staple")
    assert "not signed by the issuer" in refused["error"]
    assert stapled(server.port, ca.ca_path) == b""
    assert metric(server, "qtls_ocsp_response_valid", "server-cert.pem") == 0
    # A forged answer after a good one: the good one stays, the forged one is not stapled.
    good = ca.response(leaf, next_update=dt.timedelta(seconds=20))
    responder.answer = good
    wait_event(server, "OCSP response stapled")
    until_stapled(server.port, ca.ca_path, good)
    responder.answer = ca.response(leaf, "revoked", signer=ca.responder(
        issuer_key=forger.key, issuer_cert=forger.cert))
    kept = wait_event(server, "OCSP refresh failed; the last good response stays stapled "
                      "until its nextUpdate")
    assert "not signed by the issuer" in kept["error"]
    assert stapled(server.port, ca.ca_path) == good


def test_mldsa_ca_and_ecdsa_ca_each_staple_their_own(start_server, backend, responder,
                                                      tmp_path):
    """One context holds an ML-DSA-65 and an ECDSA pair; the staple follows the certificate
    OpenSSL chose. The ML-DSA CA signs its OCSP responses with ML-DSA-65."""
    mldsa_ca = OcspCa(tmp_path / "mldsa", responder.url, kind="mldsa65")
    ecdsa_ca = OcspCa(tmp_path / "ecdsa", responder.url.replace("127.0.0.1", "localhost"))
    mldsa_leaf = mldsa_ca.issue_leaf("pq", key_kind="mldsa65")
    ecdsa_leaf = ecdsa_ca.issue_leaf("classic")
    answers = {"pq": mldsa_ca.response(mldsa_leaf), "classic": ecdsa_ca.response(ecdsa_leaf)}
    # Both certificates name the same responder; it answers for the one asked about.
    import threading
    lock = threading.Lock()
    original = responder.server.RequestHandlerClass.do_POST

    def do_post(handler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length)
        serial = ocsp.load_der_ocsp_request(body).serial_number
        with lock:
            responder.answer = (answers["pq"] if serial == mldsa_leaf.cert.serial_number
                                else answers["classic"])
        import io
        handler.rfile = io.BytesIO(body)
        original(handler)

    responder.server.RequestHandlerClass.do_POST = do_post
    server = start_server(ocsp_config(backend, [pair(mldsa_leaf), pair(ecdsa_leaf)]))
    wait_event(server, "OCSP response stapled", cert="pq-cert.pem")
    wait_event(server, "OCSP response stapled", cert="classic-cert.pem")
    assert stapled(server.port, mldsa_ca.ca_path, sigalgs="mldsa65") == answers["pq"]
    assert stapled(server.port, ecdsa_ca.ca_path,
                   sigalgs="ecdsa_secp384r1_sha384") == answers["classic"]


def test_response_file_is_stapled_without_fetching(start_server, backend, tmp_path):
    ca = OcspCa(tmp_path / "ca", "http://127.0.0.1:9/")  # nothing listens there
    leaf = ca.issue_leaf("server")
    response_file = tmp_path / "server.ocsp"
    response_file.write_bytes(ca.response(leaf))
    config = _base(backend)
    config["certificates"] = {"server_cert": str(leaf.cert_path),
                              "server_key": str(leaf.key_path),
                              "ocsp_response_file": str(response_file)}
    server = start_server(config)
    wait_event(server, "OCSP response stapled", source=str(response_file))
    assert stapled(server.port, ca.ca_path) == response_file.read_bytes()


@pytest.mark.skipif(OPENSSL is None, reason="needs the openssl command")
def test_openssl_ocsp_responder_and_s_client_status(start_server, backend, responder, tmp_path):
    ca = OcspCa(tmp_path / "ca", responder.url)
    good = ca.issue_leaf("good")
    bad = ca.issue_leaf("bad")
    responder.answer_with = openssl_ocsp_answerer(OPENSSL, ca.write_openssl_index(
        revoked=("bad",)))
    for leaf, status in ((good, "good"), (bad, "revoked")):
        server = start_server(ocsp_config(backend, [pair(leaf)]))
        entry = wait_event(server, "OCSP response stapled", status=status)
        assert entry["signer"] == "delegated responder CN=OCSP responder"
        out = subprocess.run(
            [OPENSSL, "s_client", "-connect", f"127.0.0.1:{server.port}", "-status",
             "-servername", "localhost", "-CAfile", str(ca.ca_path)],
            input=b"", capture_output=True, timeout=30).stdout.decode()
        assert "OCSP Response Status: successful" in out, out
        assert f"Cert Status: {status}" in out, out
        probe = subprocess.run(
            [sys.executable, "-m", "qproxy", "probe", f"https://localhost:{server.port}/",
             "--cafile", str(ca.ca_path)],
            capture_output=True, text=True, timeout=60, env=child_env(), cwd=ROOT)
        assert f"OCSP: stapled, {status} (next update" in probe.stdout, \
            probe.stdout + probe.stderr
        assert "signed by the delegated responder CN=OCSP responder" in probe.stdout
        server.stop()


def test_reload_keeps_the_staple_while_the_responder_is_down(start_server, backend, responder,
                                                              tmp_path):
    """SIGHUP: new workers and a new fetcher; the fetcher adopts the published response, so
    the new generation staples it although the responder is down, and does not ask the
    responder again before that response's refresh time."""
    import signal

    ca = OcspCa(tmp_path / "ca", responder.url)
    leaf = ca.issue_leaf("server")
    responder.answer = ca.response(leaf, next_update=dt.timedelta(hours=1))
    server = start_server(ocsp_config(backend, [pair(leaf)]))
    wait_event(server, "OCSP response stapled")
    good, responder.answer = responder.answer, None
    until_stapled(server.port, ca.ca_path, good)
    first = wait_event(server, "OCSP fetcher started")["pid"]
    asked = responder.requests
    server.proc.send_signal(signal.SIGHUP)
    wait_event(server, "reloaded", timeout=30)
    again = server.wait_log(lambda e: e.get("event") == "OCSP fetcher started"
                            and e["pid"] != first, 15)
    assert again is not None, server.raw[-10:]
    until_stapled(server.port, ca.ca_path, good)
    deadline = time.monotonic() + 5
    while metric(server, "qtls_ocsp_response_valid", "server-cert.pem") != 1:
        assert time.monotonic() < deadline, "the adopted response is not counted as valid"
        time.sleep(0.1)
    assert responder.requests == asked
    assert not server.events("OCSP refresh failed")


def test_a_killed_fetcher_is_restarted_and_the_staple_stays(start_server, backend, responder,
                                                           tmp_path):
    import os
    import signal

    ca = OcspCa(tmp_path / "ca", responder.url)
    leaf = ca.issue_leaf("server")
    responder.answer = ca.response(leaf, next_update=dt.timedelta(hours=1))
    server = start_server(ocsp_config(backend, [pair(leaf)]))
    first = wait_event(server, "OCSP fetcher started")["pid"]
    wait_event(server, "OCSP response stapled")
    until_stapled(server.port, ca.ca_path, responder.answer)
    os.kill(first, signal.SIGKILL)
    wait_event(server, "OCSP fetcher exited; restarting it", ocsp_pid=first)
    again = server.wait_log(lambda e: e.get("event") == "OCSP fetcher started"
                            and e["pid"] != first, 15)
    assert again is not None, server.raw[-10:]
    assert stapled(server.port, ca.ca_path) == responder.answer


def test_a_second_listener_with_its_own_certificate_staples_its_own(start_server, backend,
                                                                     responder, tmp_path):
    """The merge wired stapling per listener: each listener's contexts staple their own
    certificate's response, one fetcher serving both, before and after a reload."""
    import signal

    ca = OcspCa(tmp_path / "ca", responder.url)
    first, second = ca.issue_leaf("server"), ca.issue_leaf("other")
    answers = {leaf.cert.serial_number: ca.response(leaf) for leaf in (first, second)}
    responder.answer_with = lambda request: answers[
        ocsp.load_der_ocsp_request(request).serial_number]
    config = ocsp_config(backend, [pair(first)])
    config["listeners"] = [{
        "name": "second", "mode": "http", "listen_address": "127.0.0.1", "listen_port": 0,
        "certificates": {"keypairs": [pair(second)], "ocsp_stapling": True,
                         "ocsp_retry_interval": 0.3}}]
    server = start_server(config)
    ports = wait_event(server, "listening")["listeners"]
    until_stapled(ports["default"], ca.ca_path, answers[first.cert.serial_number])
    until_stapled(ports["second"], ca.ca_path, answers[second.cert.serial_number])
    assert metric(server, "qtls_ocsp_response_valid", "other-cert.pem") == 1
    server.proc.send_signal(signal.SIGHUP)
    wait_event(server, "reloaded", timeout=30)
    until_stapled(ports["second"], ca.ca_path, answers[second.cert.serial_number])
