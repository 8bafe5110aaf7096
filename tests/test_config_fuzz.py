"""Configuration fuzzing: structured and raw-byte mutations of a full `server.json`.

Whatever the file holds, `--test-config` exits 0 or 1 without a traceback, within a time and
memory bound; and a SIGHUP with such a file leaves the master alive and serving. Bounded for
`make test` (a fixed number of examples, derandomized); QPROXY_FUZZ_EXAMPLES=N runs longer.
"""

from __future__ import annotations

import copy
import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qproxy import pki
from qproxy.cli import qtls_server
from tests.conftest import make_config
from tests.support.harness import ROOT, child_env, http_request, tls_connect

EXAMPLES = int(os.environ.get("QPROXY_FUZZ_EXAMPLES", "120"))
FUZZ = settings(max_examples=EXAMPLES, deadline=5000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> pki.DevPki:
    return pki.init(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def full_config(dev: pki.DevPki) -> dict[str, Any]:
    """Every section, so that mutations reach every part of the model."""
    return {
        "server": {"listen_address": "127.0.0.1", "listen_port": 8443, "workers": 2,
                   "max_connections": 1000, "backlog": 128, "handshake_timeout": 10,
                   "client_header_timeout": 30, "keepalive_timeout": 75, "shutdown_timeout": 5},
        "tls": {"protocol_version": "1.3", "hybrid_mode": True, "pqc_only": False,
                "require_pq": False, "session_timeout": 3600, "session_tickets": True,
                "alpn": ["http/1.1"]},
        "certificates": {
            "keypairs": [{"cert": str(dev.mldsa_cert), "key": str(dev.mldsa_key)},
                         {"cert": str(dev.ecdsa_cert), "key": str(dev.ecdsa_key)}],
            "sni": {"localhost": [{"cert": str(dev.ecdsa_cert), "key": str(dev.ecdsa_key)}]},
            "ca_bundle": str(dev.ca_bundle), "verify_client": "optional", "verify_depth": 3},
        "hsm": {"enabled": False, "session_pool_size": 4},
        "algorithms": {"kem": ["kyber768", "x25519"], "signature": [], "cipher": []},
        "logging": {"level": "info", "console": True, "access_log": True},
        "metrics": {"enabled": True, "address": "127.0.0.1", "port": 9091, "path": "/metrics"},
        "fips": {"enabled": False},
        "upstreams": {"app": {"servers": ["127.0.0.1:5000"], "connect_timeout": 2,
                              "read_timeout": 10, "keepalive": 8,
                              "health_check": {"path": "/healthz", "interval": 5}}},
        "routes": [{"path_prefix": "/", "upstream": "app"}],
    }


# -- mutations -------------------------------------------------------------------------------

odd_text = st.one_of(
    st.sampled_from(["", "\0", "a\0b", "\ud800", "/dev/zero", "/dev/urandom", "/", ".", "..",
                     "${NOPE}", "${HOME}", "pkcs11:object=x", "h2", "http/1.1", "1.2", "1.3",
                     "optional", "0.0.0.0:0", "[::1]:5000", "999.1.1.1", "x" * 5000]),
    st.text(max_size=20),
)
odd_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
    st.sampled_from([0, -1, 1, 65535, 65536, 2**31, 2**63, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True), odd_text,
)
odd_json = st.recursive(odd_scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(odd_text, inner, max_size=4)), max_leaves=12)


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out += _paths(item, (*prefix, index))
    return out


def _get(config: Any, path: tuple) -> Any:
    for part in path:
        config = config[part]
    return config


@st.composite
def structured(draw, base: dict[str, Any]) -> bytes:
    config = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(config) if p]
        if not paths:
            break
        strings = [p for p in paths if isinstance(_get(config, p), str)]
        path = draw(st.sampled_from(strings if strings and draw(st.booleans()) else paths))
        parent = config
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if action == "replace":
            # A string (a path, a name) mostly becomes another odd string: that is where NUL
            # bytes, surrogates and device files do their damage.
            like = odd_text if isinstance(parent[path[-1]], str) else odd_json
            parent[path[-1]] = draw(st.one_of(like, odd_json) if like is odd_text else like)
        elif action == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(odd_text)] = draw(odd_json)
    # allow_nan: NaN and Infinity reach the loader as Python's json writes them
    return json.dumps(config, allow_nan=True).encode("utf-8", "surrogatepass")


@st.composite
def raw_bytes(draw, base: bytes) -> bytes:
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 8))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "repeat"]))
        if action == "flip":
            data[at] = draw(st.integers(0, 255))
        elif action == "insert":
            data[at:at] = draw(st.sampled_from([b"\0", b"\xff", b"[", b"{", b'"', b"\\u0000",
                                                b"\\ud800", b"9" * 50, b"-", b"1e999"]))
        elif action == "delete":
            del data[at:at + draw(st.integers(1, 16))]
        elif action == "truncate":
            del data[at:]
        else:
            data[at:at] = data[at:at + 64] * draw(st.integers(2, 40))
    return bytes(data)


def run_test_config(workdir: Path, data: bytes):
    path = workdir / "server.json"
    path.write_bytes(data)
    saved = os.environ.get("OPENSSL_CONF")
    started = time.monotonic()
    try:
        result = CliRunner().invoke(qtls_server, ["--test-config", "--config", str(path)])
    finally:
        # --test-config points OPENSSL_CONF at a generated file for providers: not for the
        # processes later tests start.
        if saved is None:
            os.environ.pop("OPENSSL_CONF", None)
        else:
            os.environ["OPENSSL_CONF"] = saved
    return result, time.monotonic() - started


def assert_clean(result, took: float) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        repr(result.exception)
    assert result.exit_code in (0, 1), (result.exit_code, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    assert took < 5.0
    if result.exit_code == 1:
        problems = [line for line in result.stderr.splitlines() if line.startswith("  ")]
        assert problems, result.stderr


def test_structured_mutations_are_exit_0_or_1(dev, workdir):
    base = full_config(dev)
    assert run_test_config(workdir, json.dumps(base).encode())[0].exit_code == 0

    @FUZZ
    @given(structured(base))
    def check(data: bytes) -> None:
        assert_clean(*run_test_config(workdir, data))

    check()


def test_raw_byte_mutations_are_exit_0_or_1(dev, workdir):
    base = json.dumps(full_config(dev), indent=2).encode()

    @FUZZ
    @given(raw_bytes(base))
    def check(data: bytes) -> None:
        assert_clean(*run_test_config(workdir, data))

    check()


# -- real processes ---------------------------------------------------------------------------

def _mutants(dev: pki.DevPki, count: int, seed: int) -> list[bytes]:
    """A handful of mutants made without hypothesis (for real processes): byte edits and
    structural ones, from a seeded generator so that every run tries the same files."""
    rng = random.Random(seed)
    base = json.dumps(full_config(dev), indent=2).encode()
    out = []
    for index in range(count):
        data = bytearray(base)
        if index % 2:
            for _ in range(rng.randint(1, 6)):
                at = rng.randrange(len(data))
                data[at:at + rng.randint(0, 3)] = bytes([rng.randrange(256)])
        else:
            data = bytearray(base.replace(b'"workers": 2', b'"workers": ' + b"[" * 2000)
                             if index == 0 else
                             base.replace(b'"backlog": 128', b'"backlog": 1' + b"0" * 5000)
                             if index == 2 else
                             base.replace(str(dev.ecdsa_key).encode(), b"/dev/zero", 1))
        out.append(bytes(data))
    return out


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


def test_test_config_in_real_processes_is_bounded(dev, workdir):
    for number, data in enumerate(_mutants(dev, 4, seed=12)):
        path = workdir / f"mutant-{number}.json"
        path.write_bytes(data)
        done = subprocess.run([sys.executable, "-m", "qproxy", "check-config", "--config",
                               str(path)], capture_output=True, text=True, timeout=30,
                              env=child_env(), cwd=ROOT, preexec_fn=_limits)
        assert done.returncode in (0, 1), done.stderr[-2000:]
        assert "Traceback" not in done.stderr


def test_sighup_with_mutants_leaves_master_serving(start_server, dev_pki, backend, dev):
    server = start_server(make_config(dev_pki, backend["address"]))
    good = server.config_path.read_bytes()
    for number, data in enumerate(_mutants(dev, 6, seed=7), start=1):
        server.config_path.write_bytes(data)
        server.proc.send_signal(signal.SIGHUP)
        outcome = server.wait_log(
            lambda e: (e.get("event", "").startswith("reload failed")
                       or e.get("event") == "reloaded")
            and len(server.events("reloaded")) + len([
                x for x in server.lines if x.get("event", "").startswith("reload failed")])
            >= number, 15)
        assert outcome is not None, number
        assert server.proc.poll() is None
        conn = tls_connect(server.port)
        assert http_request(conn, "GET", "/echo").status in (200, 502)  # mutants may move the backend
        conn.close()
    server.config_path.write_bytes(good)
    assert not [line for line in server.raw if "Traceback" in line]
