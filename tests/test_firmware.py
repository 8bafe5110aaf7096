"""`qproxy firmware keygen|sign|verify`: ML-DSA-65 detached signatures over firmware images."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from click.testing import CliRunner
from dilithium_py.ml_dsa import ML_DSA_65

from qproxy import firmware
from qproxy.cli import main
from qproxy.qtls import QTLSDilithium


@pytest.fixture
def signed(tmp_path):
    runner = CliRunner()
    key = tmp_path / "signer.pem"
    result = runner.invoke(main, ["firmware", "keygen", "--out", str(key)])
    assert result.exit_code == 0, result.output
    key_id = result.output.strip()
    image = tmp_path / "fw-1.2.3.bin"
    image.write_bytes(os.urandom(3 * 1024 * 1024 + 17))  # several read chunks
    result = runner.invoke(main, ["firmware", "sign", str(image), "--key", str(key)])
    assert result.exit_code == 0, result.output
    return {"runner": runner, "key": key, "pub": tmp_path / "signer.pub.pem", "key_id": key_id,
            "image": image, "sig": tmp_path / "fw-1.2.3.bin.sig",
            "meta": json.loads(result.output)}


def verify(signed, *extra: str):
    return signed["runner"].invoke(main, ["firmware", "verify", str(signed["image"]),
                                          "--pubkey", str(signed["pub"]), *extra])


def test_sign_writes_a_detached_signature_and_its_metadata(signed):
    meta = signed["meta"]
    assert meta["algorithm"] == "ML-DSA-65"
    assert meta["key_id"] == signed["key_id"] == QTLSDilithium.load_public_key_file(
        signed["pub"]).key_id
    assert meta["sha256"] == hashlib.sha256(signed["image"].read_bytes()).hexdigest()
    assert meta["size"] == signed["image"].stat().st_size
    assert len(signed["sig"].read_bytes()) == 3309
    assert oct(signed["key"].stat().st_mode & 0o777) == "0o600"
    result = verify(signed)
    assert result.exit_code == 0 and result.output.startswith("OK ")


def test_signature_format_checked_by_an_independent_ml_dsa(signed):
    """The documented message, verified with dilithium-py (not cryptography)."""
    public = QTLSDilithium.load_public_key_file(signed["pub"]).get_public_key()
    message = b"qproxy firmware v1 sha256\0" + hashlib.sha256(signed["image"].read_bytes()).digest()
    assert ML_DSA_65.verify(public, message, signed["sig"].read_bytes())


def test_tampered_image_fails(signed):
    data = bytearray(signed["image"].read_bytes())
    data[len(data) // 2] ^= 1
    signed["image"].write_bytes(bytes(data))
    result = verify(signed)
    assert result.exit_code == 1 and "does not match" in result.output


def test_tampered_signature_fails(signed):
    sig = bytearray(signed["sig"].read_bytes())
    sig[5] ^= 0x40
    signed["sig"].write_bytes(bytes(sig))
    assert verify(signed).exit_code == 1
    signed["sig"].write_bytes(bytes(sig[:100]))
    assert verify(signed).exit_code == 1


def test_other_signer_and_expected_digest(signed, tmp_path):
    other = QTLSDilithium()
    other.keygen()
    (tmp_path / "other.pem").write_bytes(other.public_key_pem())
    result = signed["runner"].invoke(main, ["firmware", "verify", str(signed["image"]),
                                            "--pubkey", str(tmp_path / "other.pem")])
    assert result.exit_code == 1
    assert verify(signed, "--sha256", signed["meta"]["sha256"]).exit_code == 0
    result = verify(signed, "--sha256", "0" * 64)
    assert result.exit_code == 1 and "SHA-256 mismatch" in result.output


def test_unusable_keys_and_files_are_one_clear_line(signed, dev_pki, tmp_path):
    runner = signed["runner"]
    result = runner.invoke(main, ["firmware", "sign", str(signed["image"]),
                                  "--key", str(dev_pki.ecdsa_key)])
    assert result.exit_code == 1 and "not an ML-DSA key" in result.output
    result = runner.invoke(main, ["firmware", "verify", str(signed["image"]),
                                  "--pubkey", str(dev_pki.ecdsa_cert)])
    assert result.exit_code == 1 and "not an ML-DSA key" in result.output
    signed["sig"].unlink()
    result = verify(signed)
    assert result.exit_code == 1 and "cannot read the signature" in result.output
    result = runner.invoke(main, ["firmware", "keygen", "--out", str(signed["key"])])
    assert result.exit_code == 1 and "refusing to overwrite" in result.output
    result = runner.invoke(main, ["firmware", "sign", str(signed["image"]), "--key",
                                  "pkcs11:token=t;object=k;type=private"], env={
                                      "QTLS_PKCS11_LIBRARY": ""})
    assert result.exit_code == 1 and "--library" in result.output


def test_a_server_certificate_can_name_the_signer(signed, dev_pki):
    """The ML-DSA-65 server key of the dev PKI doubles as a signer; its certificate verifies."""
    path, info = firmware.sign_image(signed["image"], firmware.FileSigner(dev_pki.mldsa_key),
                                     signed["sig"])
    key = firmware.load_verification_key(dev_pki.mldsa_cert)
    assert firmware.verify_image(signed["image"], path.read_bytes(), key).key_id == info.key_id


try:
    from tests.test_e2e_hsm import token  # noqa: F401 (fixture: a throw-away SoftHSM2 token)
    from tests.test_e2e_hsm import qproxy as qproxy_cli
except ImportError:  # pragma: no cover
    qproxy_cli = None


@pytest.mark.skipif(__import__("shutil").which("softhsm2-util") is None,
                    reason="softhsm2 is installed by `make test`")
def test_hsm_signing_key_problems_are_one_clear_line(token, tmp_path):
    """SoftHSM2 2.6 has no ML-DSA: signing with a token key must say so, not crash."""
    image = tmp_path / "fw.bin"
    image.write_bytes(b"firmware")
    qproxy_cli("hsm", "keygen", "--label", "ec-key", "--type", "ec-p256")
    out = qproxy_cli("firmware", "sign", str(image), "--key",
                     "pkcs11:token=qtls-server;object=ec-key;type=private", check=False)
    assert out.returncode == 1
    assert "ML-DSA" in out.stderr and "Traceback" not in out.stderr
    out = qproxy_cli("firmware", "sign", str(image), "--key",
                     "pkcs11:token=qtls-server;object=absent;type=private", check=False)
    assert out.returncode == 1 and "no such private key" in out.stderr
    assert not (tmp_path / "fw.bin.sig").exists()
