"""The device example end to end: qtls-server in front of the OTA backend (the `make run`
stack), firmware signed with `qproxy firmware sign`, and `python -m examples.ota_device`."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import urllib.request

import pytest

from tests.conftest import make_config
from tests.support.harness import ROOT, child_env, free_port, wait_for_port


@pytest.fixture
def ota_backend(tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "examples.ota_backend", "--port", str(port),
                             "--storage", str(tmp_path / "firmware")], cwd=ROOT, env=child_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield {"port": port, "address": f"127.0.0.1:{port}", "storage": tmp_path / "firmware"}
    finally:
        proc.terminate()
        proc.wait(10)


def qproxy(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "qproxy", *args], cwd=ROOT, env=child_env(),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def put(backend, path: str, data: bytes, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(f"http://{backend['address']}{path}", data=data,
                                     method="PUT", headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status


@pytest.fixture
def published(tmp_path, ota_backend):
    """Firmware 1.4.0 uploaded, signed by a fresh ML-DSA-65 key, signature uploaded."""
    key = tmp_path / "signer.pem"
    key_id = qproxy("firmware", "keygen", "--out", str(key)).strip()
    image = tmp_path / "app-1.4.0.bin"
    image.write_bytes(os.urandom(700_000))
    meta = json.loads(qproxy("firmware", "sign", str(image), "--key", str(key)))
    assert meta["key_id"] == key_id
    assert put(ota_backend, "/api/firmware/1.4.0", image.read_bytes()) == 201
    assert put(ota_backend, "/api/firmware/1.4.0/signature", (tmp_path / "app-1.4.0.bin.sig")
               .read_bytes(), {"X-Signer-Key-Id": key_id}) == 201
    return {"image": image, "key_id": key_id, "pub": tmp_path / "signer.pub.pem",
            "install": tmp_path / "device"}


def device(port: int, ca, signer, install, *extra: str) -> subprocess.CompletedProcess:
    install.mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-m", "examples.ota_device",
                           "--server", f"localhost:{port}", "--ca", str(ca),
                           "--signer", str(signer), "--install", str(install), *extra],
                          cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=60)


def test_device_installs_signed_firmware_over_pq_tls(start_server, dev_pki, ota_backend,
                                                     published):
    server = start_server(make_config(dev_pki, ota_backend["address"]))
    out = device(server.port, dev_pki.ca_bundle, published["pub"], published["install"])
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["status"] == "installed" and report["version"] == "1.4.0"
    assert report["group"] == "X25519MLKEM768"
    assert report["server_signature"] == "mldsa65"
    assert report["server_chain"] == ["ML-DSA-65", "ML-DSA-65"]
    assert report["signer_key_id"] == published["key_id"]
    installed = published["install"] / "firmware-1.4.0.bin"
    assert installed.read_bytes() == published["image"].read_bytes()
    assert report["sha256"] == hashlib.sha256(installed.read_bytes()).hexdigest()
    downloads = [e for e in server.events("request") if e.get("path", "").endswith("/download")]
    assert downloads and downloads[0]["ssl_curve"] == "X25519MLKEM768"

    again = device(server.port, dev_pki.ca_bundle, published["pub"], published["install"],
                   "--current", "1.4.0")
    assert again.returncode == 0 and json.loads(again.stdout)["status"] == "up-to-date"


def test_device_refuses_a_forged_signature(start_server, dev_pki, ota_backend, published):
    # Someone with write access to the store replaces the signature (same key id claimed).
    (ota_backend["storage"] / "1.4.0.sig").write_bytes(os.urandom(3309))
    server = start_server(make_config(dev_pki, ota_backend["address"]))
    out = device(server.port, dev_pki.ca_bundle, published["pub"], published["install"])
    assert out.returncode == 1
    assert "signature of firmware 1.4.0 does not verify" in out.stderr
    assert list(published["install"].iterdir()) == []  # nothing installed


def test_device_refuses_firmware_from_another_signer(start_server, dev_pki, ota_backend,
                                                     published, tmp_path):
    qproxy("firmware", "keygen", "--out", str(tmp_path / "other.pem"))
    server = start_server(make_config(dev_pki, ota_backend["address"]))
    out = device(server.port, dev_pki.ca_bundle, tmp_path / "other.pub.pem",
                 published["install"])
    assert out.returncode == 1 and "not signed by the trusted key" in out.stderr


def test_device_refuses_a_server_without_ml_dsa_chain(start_server, dev_pki, ota_backend,
                                                      published):
    config = make_config(dev_pki, ota_backend["address"], certificates={"keypairs": [
        {"cert": str(dev_pki.ecdsa_cert), "key": str(dev_pki.ecdsa_key)}]})
    server = start_server(config)
    out = device(server.port, dev_pki.ca_bundle, published["pub"], published["install"])
    assert out.returncode == 1 and "TLS to localhost" in out.stderr


def test_device_refuses_an_untrusted_server(start_server, dev_pki, ota_backend, published,
                                            tmp_path):
    from tests.qtls_support import write_ca_and_leaf

    other_ca = write_ca_and_leaf(tmp_path / "other")["ca"]
    server = start_server(make_config(dev_pki, ota_backend["address"]))
    out = device(server.port, other_ca, published["pub"], published["install"])
    assert out.returncode == 1 and "did not verify" in out.stderr
