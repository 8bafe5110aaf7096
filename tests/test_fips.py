"""FIPS-approved mode (issue 16, item 3): the algorithm policy, the known-answer self-tests and
the honest label, in-process and against a real daemon."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from qproxy import pki
from qproxy.cli import main
from qproxy.config.load import parse_config
from qproxy.config.model import ServerConfig
from qproxy.errors import ConfigErrors
from qproxy.keys.provider import openssl_config
from qproxy.tls import fips, kat
from qproxy.tls.context import build_server_tls
from tests.conftest import make_config
from tests.support import kat_vectors
from tests.support.harness import ROOT, child_env


def fips_config(dev_pki, backend="127.0.0.1:9", **sections) -> dict:
    sections.setdefault("algorithms", {"kem": [], "signature": [], "cipher": []})
    sections["fips"] = {"enabled": True, **sections.get("fips", {})}
    return make_config(dev_pki, backend, **sections)


def loaded(document: dict) -> ServerConfig:
    return parse_config(document)


def problems(document: dict) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        build_server_tls(loaded(document))
    return [str(e) for e in info.value.errors]


# --- policy --------------------------------------------------------------------------------

def test_defaults_are_the_approved_hybrids_curves_and_aes_gcm(dev_pki):
    tls = build_server_tls(loaded(fips_config(dev_pki)))
    assert tls.policy.groups == "SecP384r1MLKEM1024:SecP256r1MLKEM768/secp384r1:secp256r1"
    assert "ed25519" not in tls.policy.sigalgs and "mldsa65" in tls.policy.sigalgs
    assert tls.policy.ciphersuites == "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256"


@pytest.mark.parametrize(("field", "words", "path", "words_in_message"), [
    ("kem", ["kyber1024+ecdhe-p384", "x25519"], "algorithms.kem[1]", "X25519"),
    ("kem", ["X25519MLKEM768"], "algorithms.kem[0]", "fips.allow_x25519_hybrid"),
    ("kem", ["secp384r1", "x448"], "algorithms.kem[1]", "X448"),
    ("signature", ["mldsa65", "ed25519"], "algorithms.signature[1]", "ed25519"),
    ("cipher", ["aes-256-gcm", "chacha20-poly1305"], "algorithms.cipher[1]", "CHACHA20"),
])
def test_a_non_approved_name_is_an_error_with_its_json_path(dev_pki, field, words, path,
                                                            words_in_message):
    found = problems(fips_config(dev_pki, algorithms={field: words}))
    assert any(p.startswith(path + ":") and words_in_message in p
               and "not FIPS-approved" in p for p in found), found


def test_bare_kyber768_would_pair_with_x25519_and_is_refused(dev_pki):
    found = problems(fips_config(dev_pki, algorithms={"kem": ["kyber768"]}))
    assert any(p.startswith("algorithms.kem:") and "X25519MLKEM768" in p for p in found), found
    ok = build_server_tls(loaded(fips_config(dev_pki, algorithms={"kem": ["kyber768", "p256"]})))
    assert ok.policy.groups == "SecP256r1MLKEM768/secp256r1"


def test_the_same_names_pass_with_fips_off(dev_pki):
    config = make_config(dev_pki, "127.0.0.1:9", algorithms={
        "kem": ["x25519", "kyber768"], "cipher": ["chacha20-poly1305"]})
    build_server_tls(loaded(config))


def test_allow_x25519_hybrid_admits_only_the_hybrid(dev_pki):
    allowed = fips_config(dev_pki, fips={"allow_x25519_hybrid": True})
    groups = build_server_tls(loaded(allowed)).policy.groups
    assert groups.startswith("X25519MLKEM768:") and "/X25519" not in groups
    still = fips_config(dev_pki, fips={"allow_x25519_hybrid": True},
                        algorithms={"kem": ["X25519MLKEM768", "x25519"]})
    assert any(p.startswith("algorithms.kem[1]:") for p in problems(still))


def test_small_rsa_and_eddsa_certificates_are_refused(tmp_path, dev_pki):
    small = rsa.generate_private_key(65537, 1024)
    cert = pki.issue("small", small.public_key(), pki._name("small"), small, ca=False, days=30)
    pki.write_certs(tmp_path / "small.pem", cert)
    pki.write_key(tmp_path / "small.key", small)
    config = fips_config(dev_pki, certificates={"keypairs": [
        {"cert": str(dev_pki.mldsa_cert), "key": str(dev_pki.mldsa_key)},
        {"cert": str(tmp_path / "small.pem"), "key": str(tmp_path / "small.key")}]})
    found = problems(config)
    assert any(p.startswith("certificates.keypairs[1].cert:") and "RSA-1024" in p
               and "at least 2048" in p for p in found), found



def test_every_approved_signature_algorithm_has_a_self_test():
    """ecdsa_secp521r1_sha512 was approved and in the default list ('ecdsa') with no
    known-answer test: a FIPS listener signed with an algorithm never self-tested."""
    for sigalg in fips.APPROVED_SIGALGS:
        assert fips.self_test_names([], [sigalg], []) != ["hkdf-sha256"], sigalg


def test_defaults_and_keys_leave_out_ecdsa_p521(tmp_path, dev_pki):
    tls = build_server_tls(loaded(fips_config(dev_pki)))
    assert "secp521r1" not in (tls.policy.sigalgs or "")
    key = ec.generate_private_key(ec.SECP521R1())
    cert = pki.issue("p521", key.public_key(), pki._name("p521"), key, ca=False, days=30)
    pki.write_certs(tmp_path / "p521.pem", cert)
    pki.write_key(tmp_path / "p521.key", key)
    config = fips_config(dev_pki, certificates={"keypairs": [
        {"cert": str(tmp_path / "p521.pem"), "key": str(tmp_path / "p521.key")}]})
    assert any(p.startswith("certificates.keypairs[0].cert:") and "ECDSA P-521" in p
               for p in problems(config))

def test_self_tests_cannot_be_turned_off_in_fips_mode(dev_pki):
    with pytest.raises(ConfigErrors, match="self_test_on_load"):
        loaded(fips_config(dev_pki, fips={"self_test_on_load": False}))


def test_a_fips_provider_is_loaded_with_fips_properties(dev_pki):
    config = loaded(fips_config(dev_pki, openssl={"providers": [
        {"name": "fips", "module": "/opt/vendor/fips.so", "settings": {"module-mac": "AB:CD"}}]}))
    text = openssl_config(config.hsm, config.openssl, None, None, fips_properties=True)
    assert "alg_section = algorithm_sect" in text
    assert text.rstrip().endswith("[algorithm_sect]\ndefault_properties = fips=yes")
    assert "module = /opt/vendor/fips.so" in text
    plain = openssl_config(config.hsm, config.openssl, None, None)
    assert "fips=yes" not in plain


def test_the_label_never_claims_validation(dev_pki):
    assert fips.fips_status(loaded(fips_config(dev_pki))) == \
        "FIPS mode: FIPS-approved algorithms only; not a validated module"
    assert fips.fips_status(loaded(make_config(dev_pki, "127.0.0.1:9"))) == "FIPS mode: off"
    named = fips.fips_status(loaded(fips_config(dev_pki, openssl={"providers": [
        {"name": "fips", "module": "/opt/vendor/fips.so"}]})))
    assert "/opt/vendor/fips.so" in named and "fips=yes" in named
    assert "not qproxy's" in named and " validated module" not in named.replace("not qproxy", "")


# --- known-answer tests ----------------------------------------------------------------------

def test_every_self_test_passes_on_this_openssl():
    assert kat.run_self_tests(kat.SELF_TESTS) == list(kat.SELF_TESTS)


@pytest.mark.parametrize("name", sorted(kat.SELF_TESTS))
def test_a_corrupted_answer_fails_naming_the_algorithm(monkeypatch, name):
    monkeypatch.setenv(kat.CORRUPT_ENV, name)
    with pytest.raises(kat.SelfTestError, match=f"FIPS self-test failed: {name}: "):
        kat.run_self_tests([name])
    others = [n for n in kat.SELF_TESTS if n != name]
    assert kat.run_self_tests(others) == others


def test_enabled_algorithms_choose_the_self_tests(dev_pki):
    tls = build_server_tls(loaded(fips_config(dev_pki)))
    names = fips.self_test_names(tls.policy.group_names(), tls.policy.sigalgs.split(":"),
                                 tls.policy.ciphersuites.split(":"))
    assert {"mlkem768", "mlkem1024", "mldsa65", "ecdsa-p256", "ecdsa-p384", "rsa-pss-2048",
            "aes-256-gcm", "aes-128-gcm", "hkdf-sha256"} <= set(names)
    only = fips.self_test_names(["SecP384r1MLKEM1024"], ["ecdsa_secp384r1_sha384"],
                                ["TLS_AES_256_GCM_SHA384"])
    assert only == ["hkdf-sha256", "mlkem1024", "ecdsa-p384", "aes-256-gcm"]


def test_committed_pq_vectors_are_what_the_independent_implementations_give():
    from qproxy.tls.kat_vectors import VECTORS

    for name, fields in kat_vectors.vectors().items():
        assert VECTORS[name] == fields, name


@pytest.mark.skipif(shutil.which("openssl") is None, reason="Debian's openssl is not installed")
def test_the_rsa_pss_answer_verifies_with_debians_openssl(tmp_path):
    from qproxy.tls.kat_vectors import MESSAGE, VECTORS

    public = serialization.load_der_public_key(bytes.fromhex(VECTORS["rsa-pss-2048"]["public"]))
    (tmp_path / "pub.pem").write_bytes(public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    (tmp_path / "sig").write_bytes(bytes.fromhex(VECTORS["rsa-pss-2048"]["signature"]))
    (tmp_path / "msg").write_bytes(MESSAGE)
    proc = subprocess.run(["openssl", "dgst", "-sha256", "-sigopt", "rsa_padding_mode:pss",
                           "-sigopt", "rsa_pss_saltlen:32", "-verify", str(tmp_path / "pub.pem"),
                           "-signature", str(tmp_path / "sig"), str(tmp_path / "msg")],
                          capture_output=True, text=True, timeout=30,
                          env={k: v for k, v in os.environ.items() if k != "OPENSSL_CONF"})
    assert proc.returncode == 0 and "Verified OK" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.skipif(shutil.which("openssl") is None, reason="Debian's openssl is not installed")
def test_the_p384_answer_verifies_with_debians_openssl(tmp_path):
    """The ECDSA P-384 answer was made with cryptography: a second implementation checks it."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from qproxy.tls.kat_vectors import MESSAGE, VECTORS

    key = ec.EllipticCurvePublicKey.from_encoded_point(
        ec.SECP384R1(), bytes.fromhex(VECTORS["ecdsa-p384"]["public"]))
    (tmp_path / "pub.pem").write_bytes(key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    (tmp_path / "sig").write_bytes(bytes.fromhex(VECTORS["ecdsa-p384"]["signature"]))
    (tmp_path / "msg").write_bytes(MESSAGE)
    proc = subprocess.run(["openssl", "dgst", "-sha384", "-verify", str(tmp_path / "pub.pem"),
                           "-signature", str(tmp_path / "sig"), str(tmp_path / "msg")],
                          capture_output=True, text=True, timeout=30,
                          env={k: v for k, v in os.environ.items() if k != "OPENSSL_CONF"})
    assert proc.returncode == 0 and "Verified OK" in proc.stdout, proc.stdout + proc.stderr


# --- the command line and the daemon -------------------------------------------------------

def write(tmp_path, config) -> str:
    path = tmp_path / "server.json"
    path.write_text(json.dumps(config))
    return str(path)


def test_check_config_prints_the_label(tmp_path, dev_pki):
    result = CliRunner().invoke(main, ["check-config", "--config",
                                       write(tmp_path, fips_config(dev_pki))])
    assert result.exit_code == 0, result.stderr
    assert "FIPS mode: FIPS-approved algorithms only; not a validated module" in result.stderr


def test_check_config_runs_the_self_tests(tmp_path, dev_pki, monkeypatch):
    monkeypatch.setenv(kat.CORRUPT_ENV, "mldsa65")
    result = CliRunner().invoke(main, ["check-config", "--config",
                                       write(tmp_path, fips_config(dev_pki))])
    assert result.exit_code == 1
    assert "FIPS self-test failed: mldsa65" in result.stderr


def test_corrupted_self_test_stops_the_daemon_before_it_listens(tmp_path, dev_pki):
    env = {**child_env(), kat.CORRUPT_ENV: "mlkem1024"}
    proc = subprocess.run([sys.executable, "-m", "qproxy", "serve", "--config",
                           write(tmp_path, fips_config(dev_pki))], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "FIPS self-test failed: mlkem1024: decapsulated secret differs" in proc.stderr
    assert "refusing to start" in proc.stderr
    assert '"listening"' not in proc.stderr


def probe_cli(port: int, ca: str, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qproxy", "probe", f"https://localhost:{port}/",
                           "--cafile", ca, "--no-resume", "--timeout", "10", *options],
                          cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=60)


def test_fips_daemon_refuses_x25519_and_serves_secp384r1mlkem1024_with_ecdsa_p384(
        start_server, dev_pki, backend):
    server = start_server(fips_config(dev_pki, backend["address"]))
    started = server.events("starting qtls-server")[0]
    assert started["fips"] == "FIPS mode: FIPS-approved algorithms only; not a validated module"
    assert {"mlkem1024", "mldsa65", "ecdsa-p384", "hkdf-sha256"} <= set(started["fips_self_tests"])
    ca = str(dev_pki.ca_bundle)

    refused = probe_cli(server.port, ca, "--groups", "X25519")
    assert refused.returncode == 1
    assert "handshake" in refused.stderr.lower() or "alert" in refused.stderr.lower(), \
        refused.stderr
    hybrid = probe_cli(server.port, ca, "--groups", "X25519MLKEM768")
    assert hybrid.returncode == 1, hybrid.stdout

    served = probe_cli(server.port, ca, "--groups", "SecP384r1MLKEM1024",
                       "--sigalgs", "ecdsa_secp384r1_sha384")
    assert served.returncode == 0, served.stderr
    assert "SecP384r1MLKEM1024" in served.stdout
    assert "ecdsa_secp384r1_sha384" in served.stdout
    assert "TLS_AES_256_GCM_SHA384" in served.stdout
    mldsa = probe_cli(server.port, ca, "--groups", "SecP384r1MLKEM1024", "--sigalgs", "mldsa65")
    assert mldsa.returncode == 0 and "mldsa65" in mldsa.stdout, mldsa.stderr


def test_a_reload_turns_fips_mode_on_and_a_bad_one_keeps_the_old(start_server, dev_pki,
                                                                 backend):
    import signal

    plain = make_config(dev_pki, backend["address"])
    server = start_server(plain)
    ca = str(dev_pki.ca_bundle)
    assert probe_cli(server.port, ca, "--groups", "X25519").returncode == 0

    wrong = fips_config(dev_pki, backend["address"], algorithms={"kem": ["x25519"]})
    server.config_path.write_text(json.dumps(wrong))
    server.proc.send_signal(signal.SIGHUP)
    failed = server.wait_log(lambda e: e.get("event", "").startswith("reload failed"), 30)
    assert failed and any("algorithms.kem[0]" in p for p in failed["errors"]), failed
    assert probe_cli(server.port, ca, "--groups", "X25519").returncode == 0

    server.config_path.write_text(json.dumps(fips_config(dev_pki, backend["address"])))
    server.proc.send_signal(signal.SIGHUP)
    assert server.wait_log(lambda e: e.get("event") == "reloaded", 30)
    assert not any(e.get("event", "").startswith("changed settings") for e in server.lines)
    assert probe_cli(server.port, ca, "--groups", "X25519").returncode == 1
