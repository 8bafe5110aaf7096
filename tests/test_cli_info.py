"""`qtls-server --version` / `qproxy --version` (nginx -V) and `qtls-server -T` (nginx -T), run
as an operator runs them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from qproxy.config.dump import MASK, mask
from qproxy.config.model import ServerConfig
from qproxy.tls.fips import NOT_VALIDATED
from qproxy.version_info import fips_status

from .conftest import make_config
from .support.harness import ROOT, child_env


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    code = f"import sys; from qproxy.cli import {args[0]}; sys.argv[0] = {args[0]!r}; {args[0]}()"
    return subprocess.run([sys.executable, "-c", code, *args[1:]], capture_output=True,
                          text=True, timeout=60, env={**child_env(), **(env or {})}, cwd=ROOT)


@pytest.mark.parametrize("command", ["qtls_server", "main"])
def test_version_reports_what_openssl_has(command):
    result = run(command, "--version")
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(": ", 1) for line in result.stdout.splitlines()[1:])
    assert result.stdout.startswith("qproxy 0.1.0 (qtls-server)\n")
    assert lines["Python"].startswith(f"{sys.version_info.major}.{sys.version_info.minor}.")
    assert lines["OpenSSL"].startswith("OpenSSL 4.0.")
    assert "inside cryptography 50." in lines["OpenSSL"]
    groups = lines["post-quantum groups"].split()
    assert {"X25519MLKEM768", "SecP384r1MLKEM1024", "SecP256r1MLKEM768"} <= set(groups)
    assert "MLKEM768" in groups
    assert lines["post-quantum signature algorithms"].split() == ["mldsa44", "mldsa65", "mldsa87"]
    assert "pkcs11-provider" in lines
    assert lines["FIPS"] == "off"


def test_version_names_no_algorithm_openssl_refuses(monkeypatch):
    """The lists come from OpenSSL: a candidate it rejects is not printed."""
    from qproxy.tls import capabilities

    monkeypatch.setattr(capabilities, "PQ_GROUP_CANDIDATES", ("X25519MLKEM768", "NoSuchKEM1"))
    monkeypatch.setattr(capabilities, "PQ_SIGALG_CANDIDATES", ("mldsa65", "nosuchsig"))
    assert capabilities.pq_groups() == ["X25519MLKEM768"]
    assert capabilities.pq_sigalgs() == ["mldsa65"]


def test_pkcs11_provider_failure_says_why(monkeypatch, tmp_path):
    from qproxy import version_info

    bogus = tmp_path / "pkcs11.so"
    bogus.write_bytes(b"not an ELF file")
    monkeypatch.setattr(version_info, "find_provider_module", lambda: str(bogus))
    line = version_info.pkcs11_provider_status()
    assert line.startswith(f"{bogus} does not load: ")
    assert "invalid ELF header" in line or "too short" in line
    monkeypatch.setattr(version_info, "find_provider_module", lambda: None)
    assert version_info.pkcs11_provider_status().startswith("not found (looked for pkcs11.so")


def test_fips_line_follows_the_configuration():
    base = {"certificates": {"server_cert": "c.pem", "server_key": "k.pem"},
            "upstreams": {"app": {"servers": ["127.0.0.1:5000"]}}}
    on = ServerConfig.model_validate({**base, "fips": {"enabled": True}})
    assert fips_status(on) == NOT_VALIDATED
    assert fips_status(ServerConfig.model_validate(base)) == "off"
    assert fips_status(None) == "off"


def test_version_with_an_unreadable_configuration_says_fips_is_unknown(tmp_path):
    broken = tmp_path / "server.json"
    broken.write_text("{")
    result = run("qtls_server", "--version", "--config", str(broken))
    assert result.returncode == 0, result.stderr
    assert f"FIPS: unknown ({broken} could not be read" in result.stdout


def test_dump_config_shows_defaults_expanded_and_secrets_masked(tmp_path, dev_pki):
    config = make_config(dev_pki, "127.0.0.1:5000")
    config["certificates"]["keypairs"][0]["cert"] = "${PKI_DIR}/server-mldsa65-cert.pem"
    config["hsm"] = {"pin": "${SECRET_PIN}", "pin_file": "/etc/qtls/secrets/hsm-pin"}
    path = tmp_path / "server.json"
    path.write_text(json.dumps(config))
    env = {"PKI_DIR": str(dev_pki.directory), "SECRET_PIN": "123456-top-secret"}
    result = run("qtls_server", "-T", "--config", str(path), env=env)
    assert result.returncode == 0, result.stderr
    assert "123456-top-secret" not in result.stdout + result.stderr
    dumped = json.loads(result.stdout)
    assert dumped["hsm"]["pin"] == MASK
    assert dumped["hsm"]["pin_file"] == "/etc/qtls/secrets/hsm-pin"  # a path is no secret
    assert dumped["certificates"]["keypairs"][0]["cert"] == str(dev_pki.mldsa_cert)
    assert dumped["server"]["backlog"] == 511  # a default the file does not set
    assert dumped["server"]["shutdown_timeout"] == 30.0
    assert dumped["tls"]["protocol_version"] == "1.3"
    assert "test is successful" in result.stderr
    long = run("qtls_server", "--dump-config", "--config", str(path), env=env)
    assert long.stdout == result.stdout


def test_dump_config_of_a_broken_file_lists_its_problems(tmp_path, dev_pki):
    config = make_config(dev_pki, "127.0.0.1:5000")
    config["server"]["listen_portt"] = 1
    path = tmp_path / "server.json"
    path.write_text(json.dumps(config))
    result = run("qtls_server", "-T", "--config", str(path))
    assert result.returncode == 1
    assert result.stdout == ""
    assert "server.listen_portt" in result.stderr


def test_mask_covers_pins_passwords_and_uri_pins():
    document = {
        "hsm": {"pin": "1234", "pin_file": "/x", "token_label": "qtls"},
        "openssl": {"providers": [{"settings": {"pkcs11-module-token-pin": "file:/p",
                                                "some-password": "pw", "other": "ok"}}]},
        "certificates": {"server_key_uri": "pkcs11:token=t;object=k?pin-value=4321"},
    }
    masked = mask(document)
    assert masked["hsm"] == {"pin": MASK, "pin_file": "/x", "token_label": "qtls"}
    settings = masked["openssl"]["providers"][0]["settings"]
    assert settings == {"pkcs11-module-token-pin": MASK, "some-password": MASK, "other": "ok"}
    assert masked["certificates"]["server_key_uri"] == f"pkcs11:token=t;object=k?pin-value={MASK}"
