"""Server keys in SoftHSM2 through pkcs11-provider: real token, real handshakes, real processes."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from qproxy.tls import openssl_ext
from qproxy.tls.certinfo import describe_key
from tests.conftest import make_config
from tests.support.harness import ROOT, child_env, client_context, http_request, tls_connect

SOFTHSM_LIBRARY = "/usr/lib/softhsm/libsofthsm2.so"
PIN = "4711-qtls"

pytestmark = pytest.mark.skipif(
    shutil.which("softhsm2-util") is None or not Path(SOFTHSM_LIBRARY).exists(),
    reason="softhsm2 and pkcs11-provider are installed by `make test`")


def qproxy(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "qproxy", *args], cwd=ROOT, env=child_env(),
                            capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def token(tmp_path, monkeypatch):
    """A throw-away SoftHSM2 token with its own SOFTHSM2_CONF, and a PIN file."""
    (tmp_path / "tokens").mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tmp_path / 'tokens'}\nobjectstore.backend = file\n"
                    "log.level = ERROR\n")
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "qtls-server",
                    "--pin", PIN, "--so-pin", "so-secret"], check=True, capture_output=True,
                   env={**child_env(), "SOFTHSM2_CONF": str(conf)})
    pin_file = tmp_path / "hsm-pin"
    pin_file.write_text(PIN)
    pin_file.chmod(0o600)
    monkeypatch.setenv("QTLS_PKCS11_LIBRARY", SOFTHSM_LIBRARY)
    monkeypatch.setenv("QTLS_HSM_TOKEN", "qtls-server")
    monkeypatch.setenv("QTLS_HSM_PIN_FILE", str(pin_file))
    return {"pin_file": pin_file, "dir": tmp_path}


@pytest.fixture
def hsm_cert(token, dev_pki):
    """An ECDSA P-384 key made in the token, its CSR signed in the token, issued by the dev CA."""
    uri = qproxy("hsm", "keygen", "--label", "server-key", "--type", "ec-p384").stdout.strip()
    assert uri == "pkcs11:token=qtls-server;object=server-key;type=private"
    csr = token["dir"] / "server.csr"
    qproxy("hsm", "csr", "--label", "server-key", "--subject", "CN=localhost,O=qproxy test",
           "--dns", "localhost", "--out", str(csr))
    cert = token["dir"] / "server-hsm-cert.pem"
    qproxy("pki", "sign-csr", str(dev_pki.directory), str(csr), "--out", str(cert))
    qproxy("hsm", "import-cert", "--label", "server-key", str(cert))
    return {"uri": uri, "cert": cert}


def hsm_config(dev_pki, backend, token, hsm_cert, *, with_mldsa: bool = False, **sections):
    certificates = {"server_cert": str(hsm_cert["cert"]), "server_key_uri": hsm_cert["uri"],
                    "keypairs": []}
    if with_mldsa:
        certificates["keypairs"] = [{"cert": str(dev_pki.mldsa_cert), "key": str(dev_pki.mldsa_key)}]
    return make_config(dev_pki, backend["address"], certificates=certificates,
                       hsm={"enabled": True, "pkcs11_library": SOFTHSM_LIBRARY,
                            "token_label": "qtls-server", "pin_file": str(token["pin_file"])},
                       **sections)


def _maps_softhsm(pid: int) -> bool:
    return "libsofthsm2" in Path(f"/proc/{pid}/maps").read_text()


def test_hsm_key_signs_handshakes_and_never_leaves_the_token(start_server, dev_pki, backend,
                                                             token, hsm_cert):
    listed = qproxy("hsm", "list").stdout
    assert "class=private_key  label=server-key" in listed and "extractable=false" in listed
    ids = {line.split("  ")[0]: line.split("id=")[1].split()[0]
           for line in listed.splitlines() if "id=" in line}
    assert ids["class=certificate"] == ids["class=private_key"] != ""  # stored next to its key
    server = start_server(hsm_config(dev_pki, backend, token, hsm_cert))
    conn = tls_connect(server.port, client_context(cafile=dev_pki.ca_bundle))
    assert openssl_ext.verify_result(conn) == 0
    assert openssl_ext.negotiated_group(conn) == "X25519MLKEM768"
    assert describe_key(conn.get_peer_certificate().to_cryptography().public_key()) == "ECDSA P-384"
    assert http_request(conn, "GET", "/echo").status == 200
    access = server.wait_log(lambda e: e.get("event") == "request")
    assert access["ssl_sigalg"] == "ecdsa_secp384r1_sha384"
    assert access["ssl_key_source"] == "hsm"
    # The PKCS#11 module lives in the workers only: the master never initialised it.
    assert not _maps_softhsm(server.pid)
    assert all(_maps_softhsm(pid) for pid in server.worker_pids)


def test_mixed_listener_pq_client_gets_mldsa_file_classical_gets_ecdsa_hsm(
        start_server, dev_pki, backend, token, hsm_cert):
    server = start_server(hsm_config(dev_pki, backend, token, hsm_cert, with_mldsa=True))
    pq = tls_connect(server.port, client_context(cafile=dev_pki.ca_bundle))
    assert describe_key(pq.get_peer_certificate().to_cryptography().public_key()) == "ML-DSA-65"
    http_request(pq, "GET", "/echo?client=pq")
    ctx = ssl.create_default_context(cafile=str(dev_pki.ca_bundle))
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"GET /echo?client=classical HTTP/1.1\r\nHost: localhost\r\n"
                        b"Connection: close\r\n\r\n")
            assert tls.recv(100).startswith(b"HTTP/1.1 200")
    lines = {e["path"]: e for e in (server.wait_log(lambda e, p=p: e.get("path") == p)
                                    for p in ("/echo?client=pq", "/echo?client=classical"))}
    assert lines["/echo?client=pq"]["ssl_key_source"] == "file"
    assert lines["/echo?client=pq"]["ssl_sigalg"] == "mldsa65"
    assert lines["/echo?client=classical"]["ssl_key_source"] == "hsm"
    assert lines["/echo?client=classical"]["ssl_sigalg"] == "ecdsa_secp384r1_sha384"


def _check(config: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    path = tmp_path / "check.json"
    path.write_text(json.dumps(config))
    return qproxy("check-config", "--config", str(path), check=False)


def test_test_config_names_each_hsm_problem_and_never_the_pin(dev_pki, backend, token, hsm_cert,
                                                              tmp_path):
    good = hsm_config(dev_pki, backend, token, hsm_cert)
    assert _check(good, tmp_path).returncode == 0

    wrong_pin = tmp_path / "wrong-pin"
    wrong_pin.write_text("0000-wrong")
    cases = {
        "wrong PIN": {**good, "hsm": {**good["hsm"], "pin_file": str(wrong_pin)}},
        "token 'absent' not found": {**good, "certificates": {
            **good["certificates"],
            "server_key_uri": "pkcs11:token=absent;object=server-key;type=private"}},
        "key missing": {**good, "certificates": {
            **good["certificates"],
            "server_key_uri": "pkcs11:token=qtls-server;object=no-such-key;type=private"}},
        "mismatch": {**good, "certificates": {
            **good["certificates"], "server_cert": str(dev_pki.ecdsa_cert)}},
    }
    for expected, config in cases.items():
        result = _check(config, tmp_path)
        assert result.returncode == 1, expected
        assert expected in result.stderr, (expected, result.stderr)
        assert PIN not in result.stderr + result.stdout
        assert "0000-wrong" not in result.stderr + result.stdout


def test_four_workers_sign_concurrently_500_handshakes(start_server, dev_pki, backend, token,
                                                       hsm_cert):
    config = hsm_config(dev_pki, backend, token, hsm_cert,
                        server={"listen_address": "127.0.0.1", "listen_port": 0, "workers": 4})
    server = start_server(config)
    script = (
        "import sys\n"
        "from tests.support.harness import tls_connect, client_context\n"
        "ctx = client_context(sigalgs='ecdsa_secp384r1_sha384')\n"
        "failures = 0\n"
        "for _ in range(125):\n"
        "    try:\n"
        f"        tls_connect({server.port}, ctx).close()\n"
        "    except Exception as exc:\n"
        "        failures += 1; print(repr(exc), file=sys.stderr)\n"
        "print(failures)\n")
    clients = [subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=child_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(4)]
    outputs = [c.communicate(timeout=300) for c in clients]
    assert [int(out.strip()) for out, _ in outputs] == [0, 0, 0, 0], [e for _, e in outputs]
    text = __import__("urllib.request").request.urlopen(
        f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
    hsm_handshakes = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                         if line.startswith("qtls_handshake_duration_seconds_count")
                         and 'key_source="hsm"' in line)
    assert hsm_handshakes >= 500
    assert "qtls_hsm_errors_total 0.0" in text


def test_test_config_lists_hsm_problems_with_file_and_algorithm_problems(
        dev_pki, backend, token, hsm_cert, tmp_path):
    """One run names the missing HSM key, a key file that does not match its certificate and
    a misspelt algorithm (issue 15: the production example needed a run per stage)."""
    config = hsm_config(dev_pki, backend, token, hsm_cert, with_mldsa=True)
    config["certificates"]["server_key_uri"] = \
        "pkcs11:token=qtls-server;object=no-such-key;type=private"
    config["certificates"]["keypairs"][0]["key"] = str(dev_pki.ecdsa_key)
    config["algorithms"] = {"signature": ["dilithum3", "ecdsa-p384"]}
    result = _check(config, tmp_path)
    assert result.returncode == 1
    assert "key missing" in result.stderr or "no-such-key" in result.stderr, result.stderr
    assert "certificates.keypairs[0].key" in result.stderr
    assert "does not match the certificate" in result.stderr
    assert "algorithms.signature[0]: unknown signature algorithm 'dilithum3'; did you mean " \
           "'dilithium3'?" in result.stderr
