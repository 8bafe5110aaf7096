"""The metrics directory of a master killed with -9 is removed by the next master."""

from __future__ import annotations

import os
import subprocess
import sys

from qproxy.observability import multiprocess


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=30)
    return child.pid


def test_sweep_removes_only_directories_of_dead_masters(tmp_path) -> None:
    dead = tmp_path / f"qtls-metrics-{_dead_pid()}-abc"
    live = tmp_path / f"qtls-metrics-{os.getpid()}-abc"
    foreign = tmp_path / "qtls-metricsX-1-abc"
    other = tmp_path / "unrelated-1-abc"
    for directory in (dead, live, foreign, other):
        directory.mkdir()
        (directory / "counter_1.db").write_bytes(b"x")
    assert multiprocess.sweep_orphans(str(tmp_path)) == [str(dead)]
    assert not dead.exists()
    assert live.exists() and foreign.exists() and other.exists()


def test_prepare_names_the_directory_after_the_master_and_sweeps(tmp_path, monkeypatch) -> None:
    orphan = tmp_path / f"qtls-metrics-{_dead_pid()}-zz"
    orphan.mkdir()
    monkeypatch.setattr(multiprocess.tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv(multiprocess.ENV, raising=False)
    directory, created = multiprocess.prepare()
    try:
        assert created and os.path.basename(directory).startswith(f"qtls-metrics-{os.getpid()}-")
        assert not orphan.exists()
    finally:
        multiprocess.cleanup(directory, created)
        monkeypatch.delenv(multiprocess.ENV, raising=False)


def test_checking_a_configuration_does_not_import_prometheus_client(tmp_path, dev_pki) -> None:
    """prometheus_client picks its value storage when first imported, and qtls-server sets
    PROMETHEUS_MULTIPROC_DIR only after prepare(): the OCSP fetcher's module, imported by
    prepare() for its Must-Staple check, imported it first, so every process kept its metrics
    to itself and /metrics answered an empty body."""
    import json

    from tests.conftest import make_config
    from tests.support.harness import ROOT, child_env

    path = tmp_path / "server.json"
    path.write_text(json.dumps(make_config(dev_pki, "127.0.0.1:9")))
    code = ("import sys; from qproxy.daemon.prepare import prepare, Purpose; "
            f"prepare({str(path)!r}, Purpose.START); "
            "print('prometheus_client' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=child_env(),
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stdout + out.stderr
def test_the_metrics_directory_is_set_before_the_configuration_is_prepared(tmp_path) -> None:
    """prometheus-client chooses where values live when first imported, and preparing the
    configuration imports it (the OCSP fetcher's module): with the directory set only after
    that, every worker counted in its own memory and /metrics was empty. A fresh interpreter,
    as qtls-server starts: what prepare() sees, and where prometheus-client put its values."""
    code = f"""
import os, sys
from qproxy import cli
from qproxy.daemon import prepare as module
from qproxy.errors import QProxyError
real = module.prepare
def prepare(*args, **kwargs):
    try:
        real(*args, **kwargs)
    except QProxyError:
        pass
    from prometheus_client import values
    print(os.environ.get("{multiprocess.ENV}") is not None,
          "MultiProcess" in values.ValueClass.__qualname__, flush=True)
    raise QProxyError("stop here")
module.prepare = prepare
cli._serve({str(tmp_path / "server.json")!r})
"""
    env = {k: v for k, v in os.environ.items() if k != multiprocess.ENV}
    (tmp_path / "server.json").write_text('{"certificates": {"server_cert": "c.pem", '
                                          '"server_key": "k.pem"}, "upstreams": {"a": '
                                          '{"servers": ["127.0.0.1:1"]}}}')
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, env=env)
    assert result.stdout.split() == ["True", "True"], result.stderr[-2000:]
