"""`prepare()`, the one path from a file to a serving configuration, as `--test-config` meets it:
every broken file is exit 1 with one line per problem naming where, never a traceback, a hang
or unbounded memory; and what a reload could not apply is named."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from qproxy import pki
from qproxy.cli import qtls_server
from qproxy.config.files import PEM_LIMIT, check_log_file, read_regular
from qproxy.config.load import parse_config
from qproxy.daemon.prepare import Purpose, prepare, restart_only_changes
from qproxy.errors import ConfigError, ConfigErrors
from tests.support.bad_configs import CASES, BadConfig
from tests.support.harness import ROOT, child_env


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> pki.DevPki:
    return pki.init(tmp_path_factory.mktemp("pki"))


def full_config(dev: pki.DevPki) -> dict[str, Any]:
    return {
        "server": {"listen_address": "127.0.0.1", "listen_port": 8443, "workers": 2},
        "tls": {"alpn": ["http/1.1"]},
        "certificates": {"keypairs": [{"cert": str(dev.mldsa_cert), "key": str(dev.mldsa_key)},
                                      {"cert": str(dev.ecdsa_cert), "key": str(dev.ecdsa_key)}]},
        "algorithms": {"kem": ["kyber768", "x25519"]},
        "logging": {"level": "info", "console": True},
        "upstreams": {"app": {"servers": ["127.0.0.1:5000"]}},
    }


def run_test_config(tmp_path: Path, data: bytes):
    path = tmp_path / "server.json"
    path.write_bytes(data)
    return CliRunner().invoke(qtls_server, ["--test-config", "--config", str(path)])


def assert_refused_cleanly(result, mentions: str) -> None:
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.stderr
    assert mentions in result.stderr, result.stderr
    problems = [line for line in result.stderr.splitlines() if line.startswith("  ")]
    assert problems and all(len(line) < 600 for line in problems)


SAFE = [c for c in CASES if not c.dangerous]
DANGEROUS = [c for c in CASES if c.dangerous]


def test_full_config_passes(tmp_path, dev):
    result = run_test_config(tmp_path, json.dumps(full_config(dev)).encode())
    assert result.exit_code == 0, result.stderr


@pytest.mark.parametrize("bad", SAFE, ids=[c.name for c in SAFE])
def test_broken_file_is_exit_1_naming_the_place(tmp_path, dev, bad: BadConfig):
    result = run_test_config(tmp_path, bad.make(full_config(dev), tmp_path))
    assert_refused_cleanly(result, bad.mentions)


def _bounded() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


@pytest.mark.parametrize("bad", DANGEROUS, ids=[c.name for c in DANGEROUS])
def test_non_regular_file_refused_without_blocking_or_reading_it(tmp_path, dev, bad: BadConfig):
    """A FIFO blocked --test-config forever; /dev/zero read until memory ran out."""
    path = tmp_path / "server.json"
    path.write_bytes(bad.make(full_config(dev), tmp_path))
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "qproxy", "check-config", "--config", str(path)],
                            capture_output=True, text=True, timeout=30, env=child_env(), cwd=ROOT,
                            preexec_fn=_bounded)
    assert time.monotonic() - started < 20
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert bad.mentions in result.stderr and "not a regular file" in result.stderr


def test_config_file_itself_a_fifo_is_refused(tmp_path):
    fifo = tmp_path / "server.json"
    os.mkfifo(fifo)
    with pytest.raises(ConfigErrors, match="FIFO"):
        prepare(str(fifo), Purpose.TEST)


def test_read_regular_bounds_what_it_reads(tmp_path):
    big = tmp_path / "big.pem"
    big.write_bytes(b"x" * (PEM_LIMIT + 1))
    with pytest.raises(ConfigError, match="bytes"):
        read_regular(str(big), "certificates.ca_bundle", "CA bundle")
    small = tmp_path / "small.pem"
    small.write_bytes(b"abc")
    assert read_regular(str(small), "x", "file") == b"abc"


def test_log_file_checks(tmp_path):
    check_log_file(str(tmp_path / "new.log"))  # a new file in a writable directory: fine
    check_log_file("/dev/null")  # a character device (/dev/stdout in containers): fine
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="FIFO"):
        check_log_file(str(fifo))
    with pytest.raises(ConfigError, match="NUL"):
        check_log_file("/tmp/a\0b")


def test_restart_only_changes_are_named(dev):
    before = parse_config(full_config(dev), environ={})
    changed = full_config(dev)
    changed["server"]["listen_port"] = 9443  # applied by a reload: a new socket is bound
    changed["server"]["backlog"] = 100
    changed["server"]["workers"] = 3  # applied by a reload
    changed["hsm"] = {"session_pool_size": 3}
    changed["openssl"] = {"providers": [{"name": "legacy"}]}
    changed["logging"]["file"] = "/var/log/qtls/x.log"
    after = parse_config(changed, environ={})
    assert restart_only_changes(before, after) == [
        "server.backlog", "hsm", "openssl", "logging.file"]
    assert restart_only_changes(before, before) == []


def test_unexpected_failure_inside_prepare_is_a_config_error(tmp_path, dev, monkeypatch):
    """The boundary's promise: whatever goes wrong in checking is a config error, not a crash."""
    path = tmp_path / "server.json"
    path.write_text(json.dumps(full_config(dev)))

    def explode(*_args, **_kwargs):
        raise AttributeError("something nobody foresaw")

    monkeypatch.setattr("qproxy.tls.context.build_server_tls", explode)
    with pytest.raises(ConfigErrors, match="unexpected AttributeError"):
        prepare(str(path), Purpose.RELOAD)


def test_json_path_of_an_odd_key_stays_on_one_line():
    from qproxy.config.load import json_path

    assert json_path(("certificates", "keypairs", 0, "key")) == "certificates.keypairs[0].key"
    assert json_path(("server", "a\nb")) == 'server["a\\nb"]'
    assert json_path(("server", "")) == 'server[""]'


def test_a_flood_of_problems_is_listed_up_to_a_bound(tmp_path, dev):
    config = full_config(dev)
    config["server"].update({f"unknown_{i}": i for i in range(5000)})
    result = run_test_config(tmp_path, json.dumps(config).encode())
    assert result.exit_code == 1
    problems = [line for line in result.stderr.splitlines() if line.startswith("  ")]
    assert len(problems) == 51 and "4950 more problems" in problems[-1]


def test_hsm_check_child_is_bounded_in_time(monkeypatch):
    """A token that never answers must not hold the master (which runs this on SIGHUP)."""
    from qproxy.keys import pkcs11

    monkeypatch.setattr(pkcs11, "check_keys", lambda *args: time.sleep(30) or [])
    started = time.monotonic()
    problems = pkcs11.check_keys_in_child("/nonexistent.so", None, None, [], timeout=0.5)
    assert time.monotonic() - started < 5
    assert problems and "did not finish within 0.5 s" in problems[0]


def test_hsm_check_child_reports_what_it_found(monkeypatch):
    from qproxy.keys import pkcs11

    monkeypatch.setattr(pkcs11, "check_keys", lambda *args: ["certificates.x: mismatch"])
    assert pkcs11.check_keys_in_child("/x.so", None, None, []) == ["certificates.x: mismatch"]

