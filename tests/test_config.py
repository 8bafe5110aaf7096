"""Configuration: the model and loader (qproxy.config), then `check-config` / `qtls-server -t` as
an operator runs them, against real certificates from the development PKI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from qproxy import pki
from qproxy.cli import main, qtls_server
from qproxy.config.load import expand_env, json_path, load_config, parse_config
from qproxy.config.model import ServerConfig, parse_host_port
from qproxy.errors import ConfigError, ConfigErrors

ROOT = Path(__file__).resolve().parents[1]

BASE: dict[str, Any] = {
    "certificates": {"keypairs": [{"cert": "server.pem", "key": "server.key"}]},
    "upstreams": {"app": {"servers": ["127.0.0.1:5000"]}},
}


def doc(**sections: Any) -> dict[str, Any]:
    return {**json.loads(json.dumps(BASE)), **sections}


def errors_of(document: Any, environ: dict[str, str] | None = None) -> list[ConfigError]:
    with pytest.raises(ConfigErrors) as info:
        parse_config(document, "server.json", {} if environ is None else environ)
    assert info.value.source == "server.json"
    return info.value.errors


def paths_of(document: Any, environ: dict[str, str] | None = None) -> list[str]:
    return [e.path for e in errors_of(document, environ)]


# --- model and loader -----------------------------------------------------------------------

def test_minimal_config_defaults():
    config = parse_config(doc(), environ={})
    assert isinstance(config, ServerConfig)
    assert config.server.listen_port == 8443
    assert config.server.workers == 0  # one per CPU
    assert config.tls.hybrid_mode is True
    assert config.certificates.default_pairs()[0].cert == "server.pem"
    assert [r.upstream for r in config.effective_routes()] == ["app"]
    assert config.effective_routes()[0].path_prefix == "/"


def test_config_is_frozen():
    config = parse_config(doc(), environ={})
    with pytest.raises(ValidationError, match="frozen"):
        config.server.listen_port = 1  # type: ignore[misc]


@pytest.mark.parametrize("value,problem", [
    (70000, "must be at most 65535, got 70000"),
    (-1, "must be at least 0, got -1"),
    ("eighty", 'expected a whole number, got "eighty"'),
])
def test_error_names_listen_port(value, problem):
    [error] = errors_of(doc(server={"listen_port": value}))
    assert error.path == "server.listen_port"
    assert problem in error.problem
    assert str(error).startswith("server.listen_port: ")


def test_missing_key_names_keypair_index():
    document = doc(certificates={"keypairs": [{"cert": "a.pem", "key": "a.key"},
                                              {"cert": "b.pem"}]})
    [error] = errors_of(document)
    assert error.path == "certificates.keypairs[1].key"
    assert error.problem == "required key is missing"


def test_missing_key_first_keypair():
    assert paths_of(doc(certificates={"keypairs": [{"cert": "a.pem"}]})) == \
        ["certificates.keypairs[0].key"]


@pytest.mark.parametrize("document,path", [
    (doc(servr={}), "servr"),
    (doc(server={"listen_prot": 1}), "server.listen_prot"),
    (doc(certificates={"keypairs": [{"cert": "a", "key": "b", "kye": "c"}]}),
     "certificates.keypairs[0].kye"),
    (doc(upstreams={"app": {"servers": ["h:1"], "timeout": 3}}), "upstreams.app.timeout"),
])
def test_unknown_keys_are_errors(document, path):
    [error] = errors_of(document)
    assert error.path == path
    assert error.problem.startswith("unknown key")


def test_several_problems_reported_together():
    errors = errors_of(doc(server={"listen_port": 70000, "bogus": True},
                           tls={"hybrid_mode": "maybe"}))
    assert sorted(e.path for e in errors) == ["server.bogus", "server.listen_port",
                                              "tls.hybrid_mode"]
    with pytest.raises(ConfigErrors, match=r"3 problem\(s\)"):
        parse_config(doc(server={"listen_port": 70000, "bogus": True},
                         tls={"hybrid_mode": "maybe"}), environ={})


def test_required_sections():
    assert sorted(paths_of({"upstreams": BASE["upstreams"]})) == ["certificates"]
    assert sorted(paths_of({"certificates": BASE["certificates"]})) == ["upstreams"]


def test_top_level_must_be_object():
    [error] = errors_of([BASE])
    assert "JSON object" in error.problem


def test_no_certificate_at_all():
    [error] = errors_of(doc(certificates={}))
    assert error.path == "certificates"
    assert "no certificate" in error.problem


def test_server_cert_single_pair_comes_first():
    config = parse_config(doc(certificates={"server_cert": "s.pem", "server_key": "s.key",
                                             "keypairs": [{"cert": "a", "key": "b"}]}), environ={})
    assert [p.cert for p in config.certificates.default_pairs()] == ["s.pem", "a"]


def test_server_cert_without_key():
    [error] = errors_of(doc(certificates={"server_cert": "s.pem"}))
    assert "go together" in error.problem


def test_verify_client_needs_ca_bundle():
    [error] = errors_of(doc(certificates={**BASE["certificates"], "verify_client": True}))
    assert error.path == "certificates"
    assert "ca_bundle" in error.problem


def test_pqc_only_needs_tls13():
    [error] = errors_of(doc(tls={"pqc_only": True, "protocol_version": "1.2"}))
    assert error.path == "tls"
    assert "TLS 1.3" in error.problem


@pytest.mark.parametrize("server", [{"worker_threads": 4}, {"workers": 4}])
def test_worker_threads_accepted_as_workers(server):
    assert parse_config(doc(server=server), environ={}).server.workers == 4


def test_worker_threads_validated_under_its_own_name():
    [error] = errors_of(doc(server={"worker_threads": -2}))
    assert error.path == "server.worker_threads"


def test_route_naming_unknown_upstream():
    [error] = errors_of(doc(routes=[{"path_prefix": "/", "upstream": "app"},
                                    {"path_prefix": "/api", "upstream": "api"}]))
    assert "routes[1].upstream" in str(error)
    assert "'api'" in str(error)
    assert "known: app" in str(error)


def test_several_upstreams_need_routes():
    document = doc(upstreams={"a": {"servers": ["h:1"]}, "b": {"servers": ["h:2"]}})
    [error] = errors_of(document)
    assert "routes" in str(error)
    routed = parse_config({**document, "routes": [{"path_prefix": "/b", "upstream": "b"},
                                                  {"upstream": "a"}]}, environ={})
    assert [r.upstream for r in routed.effective_routes()] == ["b", "a"]


def test_upstream_servers_must_be_host_port():
    [error] = errors_of(doc(upstreams={"app": {"servers": ["127.0.0.1:5000", "localhost"]}}))
    assert error.path == "upstreams.app.servers[1]"
    assert "'localhost' is not host:port" in error.problem


def test_upstream_needs_a_server():
    assert paths_of(doc(upstreams={"app": {"servers": []}})) == ["upstreams.app.servers"]


@pytest.mark.parametrize("text,expected", [
    ("127.0.0.1:5000", ("127.0.0.1", 5000)),
    ("[::1]:5000", ("::1", 5000)),
    ("backend.local:80", ("backend.local", 80)),
    ("http://backend.local:8080", ("backend.local", 8080)),
])
def test_parse_host_port(text, expected):
    assert parse_host_port(text) == expected


@pytest.mark.parametrize("text", ["backend", "backend:", ":80", "h:0", "h:65536", "h:x", "[::1]"])
def test_parse_host_port_rejects(text):
    with pytest.raises(ValueError):
        parse_host_port(text)


# --- ${VAR} expansion -----------------------------------------------------------------------

def test_env_expansion_in_nested_values():
    environ = {"PIN": "1234", "DIR": "/srv/tls", "PORT_HOST": "10.1.1.1"}
    config = parse_config(doc(
        hsm={"pin": "${PIN}"},
        certificates={"keypairs": [{"cert": "${DIR}/a.pem", "key": "${DIR}/${DIR}.key"}]},
        upstreams={"app": {"servers": ["${PORT_HOST}:80"]}},
    ), environ=environ)
    assert config.hsm.pin == "1234"
    assert config.certificates.keypairs[0].cert == "/srv/tls/a.pem"
    assert config.certificates.keypairs[0].key == "/srv/tls//srv/tls.key"
    assert config.upstreams["app"].servers == ("10.1.1.1:80",)


def test_env_expansion_leaves_other_dollar_forms_alone():
    assert expand_env({"a": "$PIN ${ not a ref} $${x", "n": 3, "b": True}, {"PIN": "1"}) == \
        {"a": "$PIN ${ not a ref} $${x", "n": 3, "b": True}


def test_env_expansion_uses_process_environment_by_default(monkeypatch):
    monkeypatch.setenv("QPROXY_TEST_PIN", "4242")
    config = parse_config(doc(hsm={"pin": "${QPROXY_TEST_PIN}"}))
    assert config.hsm.pin == "4242"


def test_missing_env_variable_names_path_and_variable():
    [error] = errors_of(doc(certificates={"keypairs": [
        {"cert": "a.pem", "key": "a.key"}, {"cert": "b.pem", "key": "${KEY_DIR}/b.key"}]}))
    assert error.path == "certificates.keypairs[1].key"
    assert "KEY_DIR" in error.problem
    assert "not set" in error.problem


def test_json_path():
    assert json_path(("certificates", "keypairs", 1, "key")) == "certificates.keypairs[1].key"
    assert json_path(("algorithms", "kem", 0)) == "algorithms.kem[0]"
    assert json_path(()) == ""


# --- load_config from a file ----------------------------------------------------------------

def test_load_config_invalid_json_reports_line_and_column(tmp_path):
    path = tmp_path / "server.json"
    path.write_text('{\n  "a": 1\n  "b": 2\n}\n')
    with pytest.raises(ConfigErrors) as info:
        load_config(path, environ={})
    assert info.value.source == str(path)
    [error] = info.value.errors
    assert "invalid JSON at line 3, column 3" in error.problem


def test_load_config_missing_file(tmp_path):
    with pytest.raises(ConfigErrors, match="cannot read the file"):
        load_config(tmp_path / "nope.json", environ={})


def test_load_config_reads_file(tmp_path):
    path = tmp_path / "server.json"
    path.write_text(json.dumps(doc(server={"listen_port": 9443})))
    assert load_config(path, environ={}).server.listen_port == 9443


# --- check-config / qtls-server -t against real certificates --------------------------------

@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> pki.DevPki:
    return pki.init(tmp_path_factory.mktemp("pki"))


def valid_config(dev: pki.DevPki, **sections: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "certificates": {"keypairs": [
            {"cert": str(dev.mldsa_cert), "key": str(dev.mldsa_key)},
            {"cert": str(dev.ecdsa_cert), "key": str(dev.ecdsa_key)},
            {"cert": str(dev.rsa_cert), "key": str(dev.rsa_key)},
        ]},
        "algorithms": {"kem": ["kyber768", "x25519", "kyber1024", "ecdhe-p384"]},
        "upstreams": {"app": {"servers": ["127.0.0.1:5000"]}},
    }
    config.update(sections)
    return config


def write(tmp_path: Path, config: Any) -> str:
    path = tmp_path / "server.json"
    path.write_text(config if isinstance(config, str) else json.dumps(config, indent=2))
    return str(path)


def check(config_file: str, entry: str = "check-config"):
    """Run through click as the console scripts do; returns the click Result."""
    runner = CliRunner()
    if entry == "check-config":
        return runner.invoke(main, ["check-config", "--config", config_file])
    return runner.invoke(qtls_server, ["--test-config", "--config", config_file])


ENTRIES = ["check-config", "qtls-server"]


@pytest.mark.parametrize("entry", ENTRIES)
def test_cli_valid_config(tmp_path, dev, entry):
    path = write(tmp_path, valid_config(dev))
    result = check(path, entry)
    assert result.exit_code == 0, result.stderr
    assert "test is successful" in result.stderr
    assert path in result.stderr
    assert "warning" not in result.stderr


def test_cli_minimal_valid_config(tmp_path, dev):
    path = write(tmp_path, {
        "certificates": {"keypairs": [{"cert": str(dev.mldsa_cert), "key": str(dev.mldsa_key)}]},
        "upstreams": {"app": {"servers": ["127.0.0.1:5000"]}},
    })
    result = check(path)
    assert result.exit_code == 0, result.stderr


def test_cli_short_options(tmp_path, dev):
    path = write(tmp_path, valid_config(dev))
    result = CliRunner().invoke(qtls_server, ["-t", "-c", path])
    assert result.exit_code == 0, result.stderr


@pytest.mark.parametrize("entry", ENTRIES)
def test_cli_invalid_json(tmp_path, entry):
    path = write(tmp_path, '{\n  "upstreams": {}\n  "certificates": {}\n}\n')
    result = check(path, entry)
    assert result.exit_code == 1
    assert "configuration test failed" in result.stderr
    assert "line 3, column 3" in result.stderr


def test_cli_missing_config_file(tmp_path):
    result = check(str(tmp_path / "absent.json"))
    assert result.exit_code == 1
    assert "cannot read the file" in result.stderr


@pytest.mark.parametrize("entry", ENTRIES)
def test_cli_missing_certificate_file(tmp_path, dev, entry):
    config = valid_config(dev)
    config["certificates"]["keypairs"][0]["cert"] = str(tmp_path / "missing-cert.pem")
    result = check(write(tmp_path, config), entry)
    assert result.exit_code == 1
    assert "certificates.keypairs[0].cert" in result.stderr
    assert "missing-cert.pem" in result.stderr


def test_cli_missing_key_file(tmp_path, dev):
    config = valid_config(dev)
    config["certificates"]["keypairs"][1]["key"] = str(tmp_path / "missing.key")
    result = check(write(tmp_path, config))
    assert result.exit_code == 1
    assert "certificates.keypairs[1].key" in result.stderr


def test_cli_file_that_is_not_a_certificate(tmp_path, dev):
    config = valid_config(dev)
    config["certificates"]["keypairs"][0]["cert"] = str(dev.mldsa_key)
    result = check(write(tmp_path, config))
    assert result.exit_code == 1
    assert "certificates.keypairs[0].cert" in result.stderr
    assert "no PEM certificate" in result.stderr


@pytest.mark.parametrize("entry", ENTRIES)
def test_cli_key_not_matching_certificate(tmp_path, dev, entry):
    config = valid_config(dev)
    config["certificates"]["keypairs"][0]["key"] = str(dev.ecdsa_key)
    result = check(write(tmp_path, config), entry)
    assert result.exit_code == 1
    assert "certificates.keypairs[0].key" in result.stderr
    assert "does not match" in result.stderr


@pytest.mark.parametrize("entry", ENTRIES)
def test_cli_unknown_kem(tmp_path, dev, entry):
    config = valid_config(dev, algorithms={"kem": ["kyber768", "kyber512", "x25519"]})
    result = check(write(tmp_path, config), entry)
    assert result.exit_code == 1
    assert "algorithms.kem[1]" in result.stderr
    assert "kyber512" in result.stderr


def test_cli_unknown_signature_and_cipher(tmp_path, dev):
    result = check(write(tmp_path, valid_config(dev, algorithms={"signature": ["falcon"]})))
    assert result.exit_code == 1
    assert "algorithms.signature[0]" in result.stderr
    result = check(write(tmp_path, valid_config(dev, algorithms={
        "cipher": ["aes-256-gcm", "aes-256-cbc"]})))
    assert result.exit_code == 1
    assert "algorithms.cipher[1]" in result.stderr


def test_cli_require_pq_without_hybrid_names_kem(tmp_path, dev):
    config = valid_config(dev, tls={"hybrid_mode": False, "require_pq": True})
    result = check(write(tmp_path, config))
    assert result.exit_code == 1
    assert "algorithms.kem:" in result.stderr


def test_cli_two_ecdsa_certificates_on_one_listener(tmp_path, dev):
    config = valid_config(dev)
    # The development client certificate is ECDSA P-256: a second ECDSA pair.
    config["certificates"]["keypairs"].append({"cert": str(dev.client_cert),
                                               "key": str(dev.client_key)})
    result = check(write(tmp_path, config))
    assert result.exit_code == 1
    assert "certificates.keypairs[3]" in result.stderr
    assert "second ECDSA certificate" in result.stderr


def test_cli_ecdsa_certificate_excluded_by_signature_list(tmp_path, dev):
    config = valid_config(dev, algorithms={"signature": ["dilithium3"]})
    config["certificates"]["keypairs"] = [
        {"cert": str(dev.mldsa_cert), "key": str(dev.mldsa_key)},
        {"cert": str(dev.ecdsa_cert), "key": str(dev.ecdsa_key)},
    ]
    result = check(write(tmp_path, config))
    assert result.exit_code == 1
    assert "certificates.keypairs[1]" in result.stderr
    assert "ECDSA P-384 certificate can never be used" in result.stderr
    assert "certificates.keypairs[0]" not in result.stderr


def test_cli_signature_list_covering_every_certificate(tmp_path, dev):
    config = valid_config(dev, algorithms={"signature": ["dilithium3", "ecdsa-p384", "rsa"]})
    assert check(write(tmp_path, config)).exit_code == 0


def test_cli_hsm_with_missing_library_is_a_clear_error(tmp_path, dev):
    config = valid_config(dev, hsm={"enabled": True, "pkcs11_library": str(tmp_path / "none.so")})
    result = check(write(tmp_path, config))
    assert result.exit_code == 1
    assert "hsm.pkcs11_library" in result.stderr
    assert "does not exist" in result.stderr


def test_cli_pkcs11_key_uri_is_a_clear_error(tmp_path, dev):
    config = valid_config(dev)
    config["certificates"]["keypairs"][0]["key"] = "pkcs11:token=qtls;object=server"
    result = check(write(tmp_path, config))
    assert result.exit_code == 1
    assert "certificates.keypairs[0].key" in result.stderr
    assert "hsm section" in result.stderr


def test_cli_sni_certificates_checked_too(tmp_path, dev):
    config = valid_config(dev)
    config["certificates"]["sni"] = {"api.example.com": [
        {"cert": str(dev.ecdsa_cert), "key": str(dev.rsa_key)}]}
    result = check(write(tmp_path, config))
    assert result.exit_code == 1
    assert "certificates.sni.api.example.com[0].key" in result.stderr
    assert "does not match" in result.stderr


def test_cli_reports_several_certificate_problems_at_once(tmp_path, dev):
    config = valid_config(dev, fips={"enabled": True})
    config["certificates"]["keypairs"][0]["cert"] = str(tmp_path / "gone.pem")
    config["certificates"]["keypairs"][2]["key"] = str(dev.ecdsa_key)
    result = check(write(tmp_path, config))
    assert result.exit_code == 1
    assert "3 problem(s)" in result.stderr
    # FIPS mode refuses the listed x25519 (algorithms.kem[1]): one problem among the three.
    for path in ("algorithms.kem[1]", "certificates.keypairs[0].cert",
                 "certificates.keypairs[2].key"):
        assert path in result.stderr


def test_cli_world_readable_key_is_a_warning(tmp_path, dev):
    key = tmp_path / "readable.key"
    shutil.copyfile(dev.mldsa_key, key)
    os.chmod(key, 0o644)
    config = valid_config(dev)
    config["certificates"]["keypairs"][0]["key"] = str(key)
    result = check(write(tmp_path, config))
    assert result.exit_code == 0, result.stderr
    assert "warning: certificates.keypairs[0].key" in result.stderr
    assert "chmod 600" in result.stderr
    assert "0644" in result.stderr
    assert "test is successful" in result.stderr


def test_cli_private_key_gives_no_warning(tmp_path, dev):
    assert os.stat(dev.mldsa_key).st_mode & 0o077 == 0
    result = check(write(tmp_path, valid_config(dev)))
    assert "chmod" not in result.stderr


# --- the real command line ------------------------------------------------------------------

def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qproxy", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def test_subprocess_check_config_valid(tmp_path, dev):
    path = write(tmp_path, valid_config(dev))
    proc = run_cli("check-config", "--config", path)
    assert proc.returncode == 0, proc.stderr
    assert "test is successful" in proc.stderr
    assert proc.stdout == ""


def test_subprocess_check_config_failure(tmp_path, dev):
    config = valid_config(dev, algorithms={"kem": ["x25519", "kyber512"]})
    config["certificates"]["keypairs"][0]["key"] = str(dev.rsa_key)
    proc = run_cli("check-config", "--config", write(tmp_path, config))
    assert proc.returncode == 1
    # The algorithm list is checked before the files: the first problem to fix is named.
    assert "algorithms.kem[1]" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_subprocess_invalid_json(tmp_path):
    proc = run_cli("check-config", "--config", write(tmp_path, '{"upstreams": }'))
    assert proc.returncode == 1
    assert "line 1, column 15" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_subprocess_usage_error_exit_2():
    proc = run_cli("check-config", "--no-such-option")
    assert proc.returncode == 2
