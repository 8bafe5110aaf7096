"""`--test-config` as an operator meets it (issue 15, point 4): every problem in one run, in
plain words, with the JSON path, the expected JSON type or value, and the closest known name
for a typo; strict JSON types. In-process checks of the wording, then the real command on real
files, then random junk that must only ever give ConfigErrors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qproxy import pki
from qproxy.config.load import check_document, parse_config
from qproxy.errors import ConfigError, ConfigErrors
from tests.support.harness import ROOT, child_env

# What pydantic says and an operator must never see.
LIBRARY_WORDS = re.compile(r"Input should|valid tuple|valid boolean|\.bool\b|literal\[|"
                           r"function-after|function-before|tuple\[|Value error|"
                           r"Extra inputs|Field required|\[type=")


def base(**sections: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "certificates": {"server_cert": "c.pem", "server_key": "k.pem"},
        "upstreams": {"ota": {"servers": ["127.0.0.1:5000"]}},
    }
    for name, value in sections.items():
        document[name] = {**document.get(name, {}), **value}
    return document


def problems(document: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigErrors) as info:
        parse_config(document, "server.json", environ={})
    return {e.path: e.problem for e in info.value.errors}


# --- wording ------------------------------------------------------------------------------

@pytest.mark.parametrize("section,key,value,expected", [
    ("certificates", "verify_client", "yes", 'expected true, false or "optional", got "yes"'),
    ("tls", "hybrid_mode", "yes", 'expected true or false, got "yes"'),
    ("tls", "hybrid_mode", 1, "expected true or false, got 1"),
    ("certificates", "verify_depth", "3", 'expected a whole number, got "3"'),
    ("server", "workers", "4", 'expected a whole number, got "4"'),
    ("server", "listen_port", 8443.5, "expected a whole number, got 8443.5"),
    ("server", "handshake_timeout", "10", 'expected a number, got "10"'),
    ("tls", "alpn", "http/1.1", 'expected an array, got "http/1.1"'),
    ("tls", "protocol_version", 1.3, 'expected "1.3" or "1.2", got 1.3'),
    ("logging", "level", "verbose",
     'expected "debug", "info", "warn", "warning", "error" or "critical", got "verbose"'),
    ("server", "listen_port", 70000, "must be at most 65535, got 70000"),
    ("upstreams", "ota", "127.0.0.1:5000", 'expected an object, got "127.0.0.1:5000"'),
])
def test_type_and_value_errors_say_what_json_was_expected(section, key, value, expected):
    found = problems(base(**{section: {key: value}}))
    assert found == {f"{section}.{key}": expected}


def test_no_validation_library_words_in_any_message():
    document = base(
        server={"listen_port": "8443", "listen_adress": "::", "workers": -1},
        tls={"hybrid_mode": "yes", "alpn": "h2", "protocol_version": 1.3},
        certificates={"verify_client": "yes", "keypairs": [{"cert": 1}], "sni": []},
        upstreams={"ota": {"servers": "x", "health_check": "on", "keepalive": True}},
        openssl={"providers": [{"name": "bad name!", "settings": {"k": "a\nb"}}]},
    )
    document["routes"] = [{"upstream": 3, "path_prefix": "x"}]
    found = problems(document)
    assert len(found) >= 12
    for path, problem in found.items():
        assert not LIBRARY_WORDS.search(f"{path}: {problem}"), (path, problem)
    assert found["certificates.keypairs[0].key"] == "required key is missing"
    assert found["certificates.sni"] == "expected an object, got an array"
    assert found["openssl.providers[0].name"].startswith("only letters, digits and _ . -")
    assert found["openssl.providers[0].settings.k"].startswith("must be one line")


@pytest.mark.parametrize("section,typo,meant", [
    ("server", "listen_adress", "listen_address"),
    ("server", "worker", "workers"),
    ("tls", "hybridmode", "hybrid_mode"),
    ("certificates", "verify_clients", "verify_client"),
    ("logging", "Level", "level"),
])
def test_an_unknown_key_gets_the_closest_known_one(section, typo, meant):
    found = problems(base(**{section: {typo: 1}}))
    assert found == {f"{section}.{typo}": f'unknown key; did you mean "{meant}"?'}


def test_unknown_keys_deep_inside_and_without_a_close_match():
    document = base(upstreams={"ota": {"servers": ["127.0.0.1:5000"],
                                       "helth_check": {"path": "/h"},
                                       "health_check": {"intervall": 3}}})
    document["routes"] = [{"upstream": "ota", "prefix": "/"}]
    document["nonsense"] = {}
    found = problems(document)
    assert found["upstreams.ota.helth_check"] == 'unknown key; did you mean "health_check"?'
    assert found["upstreams.ota.health_check.intervall"] == 'unknown key; did you mean "interval"?'
    assert found["routes[0].prefix"] == 'unknown key; did you mean "path_prefix"?'
    assert found["nonsense"].startswith('unknown key; this object takes "server", "tls"')


def test_an_unknown_upstream_name_gets_the_closest_one():
    document = base()
    document["routes"] = [{"upstream": "otta"}]
    [problem] = problems(document).values()
    assert problem.endswith("did you mean 'ota'?")


def test_json_arrays_fill_lists_and_integers_fill_float_settings():
    document = base(server={"handshake_timeout": 10, "keepalive_timeout": 7.5},
                    tls={"alpn": ["http/1.1"]},
                    certificates={"verify_client": "optional", "ca_bundle": "ca.pem",
                                  "keypairs": [{"cert": "a", "key": "b"}]},
                    algorithms={"kem": ["kyber768"]})
    config = parse_config(document, environ={})
    assert config.server.handshake_timeout == 10.0
    assert config.tls.alpn == ("http/1.1",)
    assert config.certificates.verify_client == "optional"


def test_every_unset_environment_variable_is_named():
    document = base(hsm={"pin": "${QTLS_TEST_A}"},
                    certificates={"server_cert": "${QTLS_TEST_B}/c.pem"})
    found = problems(document)
    assert found == {"hsm.pin": "environment variable QTLS_TEST_A is not set",
                     "certificates.server_cert": "environment variable QTLS_TEST_B is not set"}


def test_every_unknown_algorithm_name_is_named_with_a_suggestion():
    from qproxy.tls.policy import unknown_words

    errors = unknown_words(("kyber786", "x25519", "X25519MLKEM786"), ("dilithum3",),
                           ("aes-256-gmc", "rot13"))
    found = {(e.field, e.index): str(e) for e in errors}
    assert found[("kem", 0)].endswith("did you mean 'kyber768'?")
    assert found[("kem", 2)].endswith("did you mean 'X25519MLKEM768'?")
    assert found[("signature", 0)].endswith("did you mean 'dilithium3'?")
    assert found[("cipher", 0)].endswith("did you mean 'aes-256-gcm'?")
    assert "known: aes-128-gcm" in found[("cipher", 1)]
    assert len(errors) == 5


# --- the command, on real files ------------------------------------------------------------

@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> pki.DevPki:
    return pki.init(tmp_path_factory.mktemp("pki"))


def run_test_config(path: Path) -> subprocess.CompletedProcess[str]:
    """`qtls-server --test-config -c path`, the installed command."""
    command = Path(sys.executable).with_name("qtls-server")
    return subprocess.run([str(command), "--test-config", "-c", str(path)], cwd=ROOT,
                          env=child_env(), capture_output=True, text=True, timeout=120)


def listed(stderr: str) -> dict[str, str]:
    out = {}
    for line in stderr.splitlines():
        if line.startswith("  ") and ": " in line:
            path, _, problem = line.strip().partition(": ")
            out[path] = problem
    return out


def test_one_run_lists_schema_file_and_algorithm_problems_together(dev, tmp_path):
    document = {
        "server": {"listen_adress": "::", "workers": "4"},
        "tls": {"hybrid_mode": "yes"},
        "certificates": {"server_cert": str(tmp_path / "missing-cert.pem"),
                         "server_key": str(dev.ecdsa_key),
                         "keypairs": [{"cert": str(dev.mldsa_cert), "key": str(dev.ecdsa_key)}],
                         "verify_client": "yes", "ca_bundle": str(dev.ca_bundle)},
        "algorithms": {"kem": ["kyber786"]},
        "logging": {"file": str(tmp_path / "no-dir" / "x.log")},
        "upstreams": {"ota": {"servers": ["127.0.0.1:5000"]}},
    }
    path = tmp_path / "server.json"
    path.write_text(json.dumps(document))
    result = run_test_config(path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    found = listed(result.stderr)
    assert found["server.listen_adress"] == 'unknown key; did you mean "listen_address"?'
    assert found["server.workers"] == 'expected a whole number, got "4"'
    assert found["tls.hybrid_mode"] == 'expected true or false, got "yes"'
    assert found["certificates.verify_client"] == 'expected true, false or "optional", got "yes"'
    # The files of the sections that validated are checked in the same run.
    assert "missing-cert.pem" in found["certificates.server_cert"]
    assert "does not match the certificate" in found["certificates.keypairs[0].key"]
    assert found["algorithms.kem[0]"].endswith("did you mean 'kyber768'?")
    assert "does not exist" in found["logging.file"]
    assert not LIBRARY_WORDS.search(result.stderr)


def test_a_valid_schema_lists_every_file_and_algorithm_problem(dev, tmp_path):
    document = {
        "certificates": {"keypairs": [
            {"cert": str(dev.mldsa_cert), "key": str(tmp_path / "gone.key")},
            {"cert": str(dev.ecdsa_cert), "key": str(dev.mldsa_key)}],
            "ca_bundle": str(dev.ecdsa_key)},
        "algorithms": {"kem": ["kyber768", "x2559"], "signature": ["mldsa66"]},
        "logging": {"file": str(tmp_path / "no-dir" / "x.log")},
        "hsm": {"enabled": True, "pkcs11_library": str(tmp_path / "libnone.so")},
        "upstreams": {"ota": {"servers": ["127.0.0.1:5000"]}},
    }
    path = tmp_path / "server.json"
    path.write_text(json.dumps(document))
    result = run_test_config(path)
    assert result.returncode == 1
    found = listed(result.stderr)
    assert set(found) == {"logging.file", "hsm.pkcs11_library", "algorithms.kem[1]",
                          "algorithms.signature[0]", "certificates.ca_bundle",
                          "certificates.keypairs[0].key", "certificates.keypairs[1].key"}, \
        result.stderr
    assert found["algorithms.kem[1]"].endswith("did you mean 'X25519'?")
    assert found["algorithms.signature[0]"].endswith("did you mean 'mldsa65'?")


@pytest.mark.parametrize("name", ["server.json", "server.dev.json"])
def test_shipped_examples_fail_only_on_what_this_machine_lacks(name, tmp_path):
    """The production example names files this machine has not got: all of them come in one
    run (before: the log directory and HSM library first, the certificates on the next run)."""
    result = run_test_config(ROOT / "etc" / "qtls" / "config" / name)
    assert result.returncode == 1
    found = listed(result.stderr)
    for path, problem in found.items():
        assert any(word in problem for word in ("does not exist", "No such file",
                                                "is not set")), (path, problem)
    if name == "server.json":
        assert {"logging.file", "hsm.pkcs11_library", "certificates.ca_bundle",
                "certificates.server_cert", "certificates.keypairs[0].cert",
                "certificates.keypairs[0].key"} <= set(found)


# --- junk never crashes the loader ---------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**60, 2**60) | st.floats(allow_nan=False,
                                                                      allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                               max_size=4),
    max_leaves=12)
KEYS = st.sampled_from(["server", "tls", "certificates", "hsm", "openssl", "algorithms",
                        "logging", "metrics", "fips", "upstreams", "routes", "listen_port",
                        "verify_client", "servers", "health_check", "keypairs", "sni", "kem",
                        "providers", "settings", "alpn", "ota", "path_prefix", "upstream"])


def _plant(document: Any, path: list[str], value: Any) -> Any:
    """`value` at `path` inside a copy of `document` (dicts created on the way)."""
    if not path:
        return value
    node = dict(document) if isinstance(document, dict) else {}
    node[path[0]] = _plant(node.get(path[0]), path[1:], value)
    return node


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(plants=st.lists(st.tuples(st.lists(KEYS, min_size=1, max_size=4), JSON), max_size=5),
       top=JSON)
def test_random_junk_only_ever_gives_config_errors_with_paths(plants, top):
    document = base() if not isinstance(top, dict) else {**base(), **top}
    for path, value in plants:
        document = _plant(document, path, value)
    checked = check_document(document, environ={})
    if checked.config is not None:
        return
    assert checked.errors
    for error in checked.errors:
        assert isinstance(error, ConfigError) and isinstance(error.path, str)
        assert not LIBRARY_WORDS.search(str(error)), str(error)


def test_a_check_over_several_keys_is_reported_at_the_key_it_names():
    """The listeners branch raises model.AtPath(path, problem) from a model validator: the
    error goes to that key, not to the section (kept working for the merge)."""
    from pydantic import BaseModel

    from qproxy.config.messages import plain_errors

    class AtPath(ValueError):
        def __init__(self, path: str, problem: str) -> None:
            super().__init__(problem)
            self.path = path

    document = {"listeners": [{"name": "mqtt", "upstream": "mosquito"}]}
    error = {"type": "value_error", "loc": ("listeners", 0), "msg": "Value error, x",
             "input": document["listeners"][0],
             "ctx": {"error": AtPath("upstream", "no upstream named 'mosquito'")}}
    [found] = plain_errors([error], document, BaseModel)
    assert str(found) == "listeners[0].upstream: no upstream named 'mosquito'"


def test_a_problem_with_a_secret_never_shows_its_value():
    """--test-config and a refused reload print their problems to terminals, the journal and
    the status file: a PIN written as a number, or one whose environment variable ends in a
    line break (a systemd EnvironmentFile), is named by its path, its value masked as in -T."""
    document = base(hsm={"pin": 271828},
                    openssl={"providers": [{"name": "pkcs11", "settings": {
                        "pkcs11-module-token-pin": "${PIN}"}}]})
    with pytest.raises(ConfigErrors) as info:
        parse_config(document, "server.json", environ={"PIN": "hunter2\n"})
    found = {e.path: e.problem for e in info.value.errors}
    assert found["hsm.pin"] == "expected a string, got ********"
    assert found["openssl.providers[0].settings.pkcs11-module-token-pin"].startswith(
        "must be one line")
    assert "hunter2" not in str(info.value) and "271828" not in str(info.value)


@pytest.mark.parametrize("document,path,problem", [
    (base(upstreams={"": {"servers": ["127.0.0.1:5001"]}}), 'upstreams[""]', "must not be empty"),
    (base(certificates={"sni": {"": [{"cert": "c.pem", "key": "k.pem"}]}}),
     'certificates.sni[""]', "must not be empty"),
    ({**base(), "routes": [{"host": "", "upstream": "ota"}]}, "routes[0].host", "must not be empty"),
    ({**base(), "routes": [{"host": " ", "upstream": "ota"}]}, "routes[0].host", "' ' is blank"),
    ({**base(), "listeners": [{"name": "m", "listen_port": 8883, "pid_file": "/run/m.pid"}]},
     "listeners[0].pid_file", "unknown key"),
])
def test_empty_names_and_a_listener_pid_file_are_errors(document, path, problem):
    """An empty upstream or SNI name, a blank route host (which matched only requests without
    a Host header) and a pid file on a listener (there is one master, and it read only
    server.pid_file) were taken without a word."""
    assert problems(document)[path].startswith(problem)


def test_every_wrong_upstream_name_is_listed_with_the_other_problems():
    """The names routes and listeners give are checked across sections; that check stopped at
    the first wrong name and did not run at all while any field was wrong, so a file with a
    typo in a timeout and two in upstream names took three runs of --test-config."""
    document = {**base(server={"handshake_timeout": "10"}),
                "routes": [{"path_prefix": "/api", "upstream": "otaa"},
                           {"path_prefix": "/", "upstream": "ota"}],
                "upstreams": {"ota": {"servers": ["127.0.0.1:5000"]},
                              "broker": {"servers": ["127.0.0.1:1884"]}},
                "listeners": [{"name": "mqtt", "mode": "tcp", "listen_port": 8883,
                               "upstream": "brokr"}]}
    found = problems(document)
    assert found["server.handshake_timeout"] == 'expected a number, got "10"'
    assert found["routes[0].upstream"].endswith("did you mean 'ota'?")
    assert found["listeners[0].upstream"].endswith("did you mean 'broker'?")
    del document["server"]
    found = problems(document)
    assert set(found) == {"routes[0].upstream", "listeners[0].upstream"}


def test_every_wrong_upstream_server_is_named_by_its_index():
    """The servers were checked as one list that stopped at the first wrong one: a typo in
    the second and the fourth took two runs, and neither was named by its position."""
    found = problems(base(upstreams={"ota": {"servers": ["127.0.0.1:5000", "localhost",
                                                        "127.0.0.1:5001", "[::1]:0"]}}))
    assert set(found) == {"upstreams.ota.servers[1]", "upstreams.ota.servers[3]"}
    assert found["upstreams.ota.servers[1]"].startswith("'localhost' is not host:port")
    # The only server mistyped: named, and the list not also called empty.
    found = problems(base(upstreams={"ota": {"servers": ["localhost"]}}))
    assert set(found) == {"upstreams.ota.servers[0]"}
    assert problems(base(upstreams={"ota": {"servers": []}})) == {
        "upstreams.ota.servers": "needs at least 1 entry"}


def test_a_swapped_pair_of_letters_suggests_the_key_it_came_from():
    """"hots" is as similar to "host" as to "hsts" by difflib's measure, which broke the tie
    alphabetically and suggested hsts; two swapped letters are one slip of the fingers."""
    found = problems({**base(), "routes": [{"upstream": "ota", "hots": "a.example"}]})
    assert found == {"routes[0].hots": 'unknown key; did you mean "host"?'}
    found = problems(base(server={"listen_prot": 8443}))
    assert found == {"server.listen_prot": 'unknown key; did you mean "listen_port"?'}


def test_every_listener_clash_is_listed_with_the_other_problems():
    """Names and addresses taken twice were checked once every field was valid, and only up
    to the first clash."""
    document = {**base(server={"listen_port": 8443, "workers": "2"}), "listeners": [
        {"name": "mqtt", "listen_port": 8883, "mode": "tcp", "upstream": "ota"},
        {"name": "mqtt", "listen_port": 8884, "mode": "tcp", "upstream": "ota"},
        {"name": "api", "listen_address": "0.0.0.0", "listen_port": 8443},
        {"name": "default", "listen_port": 9000}],
        "routes": [{"upstream": "ota"}]}
    found = problems(document)
    assert found["server.workers"] == 'expected a whole number, got "2"'
    assert found["listeners[1].name"].startswith("'mqtt' is taken (by listeners[0])")
    assert found["listeners[2].listen_port"] == "0.0.0.0:8443 is already server's address"
    assert found["listeners[3].name"].startswith("'default' is taken (by server)")
