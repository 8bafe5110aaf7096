"""qproxy.qtls against other TLS stacks over real sockets: the real qtls-server, curl, Python's
ssl module, headless Chromium, and a QTLSServer whose key lives in SoftHSM2."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import sys
import textwrap

import pytest

from qproxy.qtls import (
    QTLS_CLIENT_MODE, QTLS_OP_HYBRID_MODE, QTLS_SERVER_MODE, QTLS_VERIFY_FAIL_IF_NO_PEER_CERT,
    QTLS_VERIFY_PEER, QTLSClient, QTLSConnection, QTLSContext, QTLSServer,
)
from tests.qtls_support import ThreadedServer
from tests.support.harness import ROOT, child_env

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def client_context(dev_pki) -> QTLSContext:
    ctx = QTLSContext(mode=QTLS_CLIENT_MODE)
    ctx.load_verify_locations(dev_pki.ca_bundle)
    ctx.set_options(QTLS_OP_HYBRID_MODE)
    ctx.set_verify_mode(QTLS_VERIFY_PEER | QTLS_VERIFY_FAIL_IF_NO_PEER_CERT)
    return ctx


def http_get(client: QTLSClient, path: str) -> tuple[int, bytes]:
    client.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while chunk := client.read(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


# -- QTLSClient -> qtls-server -------------------------------------------------------------


def test_client_gets_x25519mlkem768_and_mldsa65_from_qtls_server(server, dev_pki):
    client = QTLSClient(client_context(dev_pki))
    conn = client.connect("localhost", server.port)
    assert conn.negotiated_group == "X25519MLKEM768"
    assert conn.peer_signature_algorithm == "mldsa65"
    assert conn.peer_certificate_keys == ["ML-DSA-65", "ML-DSA-65"]
    assert client.verify_peer_certificate()
    status, body = http_get(client, "/echo?from=qtls-client")
    client.shutdown()
    assert status == 200 and b"/echo?from=qtls-client" in body
    access = server.wait_log(lambda e: e.get("path") == "/echo?from=qtls-client")
    assert access["ssl_curve"] == "X25519MLKEM768" and access["ssl_sigalg"] == "mldsa65"
    assert access["ssl_session_reused"] is False

    # The next connect() resumes: the daemon sees a resumed session.
    conn = client.connect("localhost", server.port)
    assert conn.session_resumed
    http_get(client, "/echo?from=resumed")
    client.shutdown()
    access = server.wait_log(lambda e: e.get("path") == "/echo?from=resumed")
    assert access["ssl_session_reused"] is True


def test_seed_kyber1024_client_gets_the_ml_kem_1024_hybrid_from_qtls_server(server, dev_pki):
    ctx = client_context(dev_pki)
    ctx.set_kem_algorithms(["KYBER1024"])
    client = QTLSClient(ctx)
    assert client.connect("localhost", server.port).negotiated_group == "SecP384r1MLKEM1024"
    http_get(client, "/echo")
    client.shutdown()


# -- other clients -> QTLSServer -----------------------------------------------------------


def http_handler(conn: QTLSConnection) -> None:
    """Answer one HTTP/1.1 request with what was negotiated, as JSON."""
    request = b""
    while b"\r\n\r\n" not in request:
        chunk = conn.read(65536)
        if not chunk:
            return
        request += chunk
    body = json.dumps({"group": conn.negotiated_group, "cipher": conn.cipher,
                       "version": conn.protocol_version,
                       "path": request.split(b" ")[1].decode()}).encode()
    conn.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
               b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


@pytest.fixture
def qtls_http_server(dev_pki):
    """QTLSServer with the ML-DSA-65 and the ECDSA P-384 pair, like the daemon's default."""
    ctx = QTLSContext(mode=QTLS_SERVER_MODE)
    ctx.use_certificate_file(dev_pki.mldsa_cert)
    ctx.use_private_key_file(dev_pki.mldsa_key)
    ctx.use_certificate_file(dev_pki.ecdsa_cert)
    ctx.use_private_key_file(dev_pki.ecdsa_key)
    ctx.set_options(QTLS_OP_HYBRID_MODE)
    ctx.set_alpn_protocols(["http/1.1"])
    server = ThreadedServer(QTLSServer(ctx, "127.0.0.1", 0), http_handler)
    yield server
    server.close()
    assert not server.errors, server.errors


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is installed by `make test`")
def test_curl_talks_to_qtls_server(qtls_http_server, dev_pki):
    out = subprocess.run(["curl", "-sS", "--max-time", "20", "--cacert", str(dev_pki.ca_bundle),
                          f"https://localhost:{qtls_http_server.port}/from-curl"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    reply = json.loads(out.stdout)
    assert reply["path"] == "/from-curl" and reply["version"] == "TLSv1.3"
    # Debian 12's curl links OpenSSL 3.0: no ML-KEM, so the hybrid server falls back.
    assert reply["group"] in ("X25519MLKEM768", "X25519")


def test_python_ssl_classical_client_talks_to_qtls_server(qtls_http_server, dev_pki):
    ctx = ssl.create_default_context(cafile=str(dev_pki.ca_bundle))
    with socket.create_connection(("127.0.0.1", qtls_http_server.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"GET /from-python HTTP/1.1\r\nHost: localhost\r\n\r\n")
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
            peer_key = tls.getpeercert()["subject"]
    reply = json.loads(data.partition(b"\r\n\r\n")[2])
    assert reply["path"] == "/from-python"
    if ssl.OPENSSL_VERSION_INFO < (3, 5):
        assert reply["group"] == "X25519"  # classical, with the ECDSA certificate
    assert peer_key


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is installed by `make test`")
def test_chromium_gets_x25519mlkem768_from_qtls_server(qtls_http_server, tmp_path):
    url = f"https://localhost:{qtls_http_server.port}/from-chromium"
    out = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
         "--ignore-certificate-errors", "--dump-dom", url],
        capture_output=True, text=True, timeout=120)
    assert '"path": "/from-chromium"' in out.stdout, out.stderr[-2000:]
    assert '"group": "X25519MLKEM768"' in out.stdout


# -- mTLS across processes: QTLSClient -> QTLSServer in another process ---------------------


SERVER_SCRIPT = textwrap.dedent("""
    import json, sys
    from qproxy.qtls import *
    cert, key, ca, key_uri = sys.argv[1:5]
    ctx = QTLSContext(mode=QTLS_SERVER_MODE)
    ctx.use_certificate_file(cert)
    if key_uri.startswith("pkcs11:"):
        ctx.use_hsm_key(key_uri)
    else:
        ctx.use_private_key_file(key)
    ctx.load_verify_locations(ca)
    ctx.set_verify_mode(QTLS_VERIFY_PEER | QTLS_VERIFY_FAIL_IF_NO_PEER_CERT)
    with QTLSServer(ctx, "127.0.0.1", 0) as server:
        print(server.port, flush=True)
        for conn in server.accept_connections():
            with conn:
                data = conn.read(4096)
                client = conn.peer_certificate.subject.rfc4514_string()
                conn.write(json.dumps({"got": data.decode(), "client": client,
                                       "group": conn.negotiated_group}).encode())
            break
""")


def run_server_process(args: list[str], env: dict[str, str] | None = None):
    proc = subprocess.Popen([sys.executable, "-c", SERVER_SCRIPT, *args], cwd=ROOT,
                            env=env or child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.strip().isdigit():
        proc.kill()
        raise AssertionError("server script failed: " + line + proc.stderr.read())
    return proc, int(line)


def mtls_client(dev_pki) -> QTLSClient:
    ctx = client_context(dev_pki)
    ctx.use_certificate_file(dev_pki.client_cert)
    ctx.use_private_key_file(dev_pki.client_key)
    return QTLSClient(ctx)


def test_mutual_tls_between_processes(dev_pki):
    proc, port = run_server_process([str(dev_pki.mldsa_cert), str(dev_pki.mldsa_key),
                                     str(dev_pki.ca_bundle), "-"])
    try:
        client = mtls_client(dev_pki)
        conn = client.connect("localhost", port)
        assert conn.peer_signature_algorithm == "mldsa65"
        client.write(b"hello")
        reply = json.loads(client.read())
        client.shutdown()
    finally:
        proc.wait(20)
    assert reply["got"] == "hello" and "qproxy dev client" in reply["client"]
    assert reply["group"] == "X25519MLKEM768"


# -- a QTLSServer whose key is in SoftHSM2 -------------------------------------------------

try:
    from tests.test_e2e_hsm import SOFTHSM_LIBRARY, hsm_cert, token  # noqa: F401 (fixtures)
except ImportError:  # pragma: no cover
    SOFTHSM_LIBRARY = "/nonexistent"


@pytest.mark.skipif(shutil.which("softhsm2-util") is None,
                    reason="softhsm2 and pkcs11-provider are installed by `make test`")
def test_hsm_backed_qtls_server(dev_pki, token, hsm_cert):
    env = child_env()
    env.pop("OPENSSL_CONF", None)
    env["QTLS_PKCS11_LIBRARY"] = SOFTHSM_LIBRARY
    env["QTLS_HSM_PIN_FILE"] = str(token["pin_file"])
    proc, port = run_server_process([str(hsm_cert["cert"]), "-", str(dev_pki.ca_bundle),
                                     hsm_cert["uri"]], env)
    try:
        maps = open(f"/proc/{proc.pid}/maps").read()
        client = mtls_client(dev_pki)
        conn = client.connect("localhost", port)
        assert conn.peer_certificate_keys[0] == "ECDSA P-384"  # the key in the token signed
        assert conn.negotiated_group == "X25519MLKEM768"
        client.write(b"from the hsm test")
        reply = json.loads(client.read())
        client.shutdown()
    finally:
        proc.wait(20)
    assert reply["got"] == "from the hsm test"
    assert "libsofthsm2" in maps or "pkcs11" in maps


def test_use_hsm_key_without_provider_says_what_to_set(dev_pki, monkeypatch):
    from qproxy.qtls import QTLSHSMError

    monkeypatch.delenv("OPENSSL_CONF", raising=False)
    ctx = QTLSContext(mode=QTLS_SERVER_MODE)
    with pytest.raises(QTLSHSMError, match="QTLS_PKCS11_LIBRARY"):
        ctx.use_hsm_key("pkcs11:token=t;object=k;type=private")
