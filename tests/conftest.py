from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from qproxy import pki
from tests.support.harness import ROOT, ServerProcess, child_env, free_port, wait_for_port


# -- skips under CI ----------------------------------------------------------------------------
# A skip for a missing tool (chromium, curl, SoftHSM2, nginx/wrk, the packaging tools) would let
# CI pass without ever running the test. Under CI=true a skip fails the test, unless the test
# carries `ci_may_skip(reason=...)`: a reason no install can change (the CPU architecture, a
# container's network namespace), which holds on whatever machine CI runs on.
CI_MAY_SKIP = "ci_may_skip"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{CI_MAY_SKIP}(reason): this test may skip under CI=true, for the reason "
        "given (one no install can change); any other skip under CI=true fails")


def _ci_skip_failure(report: pytest.TestReport | pytest.CollectReport, what: str) -> None:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = (f"{what} skipped under CI=true: {reason}\n"
                       "A skip in CI hides a missing install: install what it names, or mark the "
                       f"test {CI_MAY_SKIP}(reason=...) if no install can make it run.")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    outcome = yield
    report = outcome.get_result()
    if (in_ci() and report.skipped and not hasattr(report, "wasxfail")
            and item.get_closest_marker(CI_MAY_SKIP) is None):
        _ci_skip_failure(report, item.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    outcome = yield
    report = outcome.get_result()
    if in_ci() and report.skipped:  # a whole module skipped (importorskip, module-level skip)
        _ci_skip_failure(report, collector.nodeid)


@pytest.fixture(scope="session")
def dev_pki(tmp_path_factory: pytest.TempPathFactory) -> pki.DevPki:
    return pki.init(tmp_path_factory.mktemp("pki"))


def run_backend(markers: Path) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """The aiohttp test backend (tests/support/backend.py) on a free port, as its own process."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.backend", str(port), str(markers)],
                            cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL)
    try:
        wait_for_port(port)
    except BaseException:
        proc.kill()
        proc.wait(10)
        raise
    return proc, {"port": port, "markers": markers, "address": f"127.0.0.1:{port}"}


@pytest.fixture(scope="session")
def backend(tmp_path_factory: pytest.TempPathFactory):
    """The test backend shared by the session (tests must not leave markers it obeys)."""
    proc, info = run_backend(tmp_path_factory.mktemp("markers"))
    try:
        yield info
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def start_backend(tmp_path_factory: pytest.TempPathFactory):
    """Starts backends of the test's own (markers of their own: health, releases)."""
    started: list[subprocess.Popen[bytes]] = []

    def start() -> dict[str, Any]:
        proc, info = run_backend(tmp_path_factory.mktemp("markers"))
        started.append(proc)
        return info

    yield start
    for proc in started:
        proc.kill()  # a test may leave a request the backend would wait for
        proc.wait(10)


def make_config(dev_pki: pki.DevPki, backend_address: str, **sections: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "server": {"listen_address": "127.0.0.1", "listen_port": 0, "workers": 1},
        "certificates": {
            "keypairs": [
                {"cert": str(dev_pki.mldsa_cert), "key": str(dev_pki.mldsa_key)},
                {"cert": str(dev_pki.ecdsa_cert), "key": str(dev_pki.ecdsa_key)},
            ],
        },
        "algorithms": {"kem": ["kyber768", "x25519", "kyber1024", "ecdhe-p384"]},
        "logging": {"level": "info", "console": True},
        "metrics": {"enabled": True, "address": "127.0.0.1", "port": 0},
        "upstreams": {"app": {"servers": [backend_address], "connect_timeout": 2,
                              "read_timeout": 10}},
    }
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(name), dict):
            config[name] = {**config[name], **value}
        else:
            config[name] = value
    return config


@pytest.fixture
def start_server(tmp_path: Path) -> Callable[..., ServerProcess]:
    started: list[ServerProcess] = []

    def start(config: dict[str, Any]) -> ServerProcess:
        server = ServerProcess(config, tmp_path)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def server(start_server, dev_pki, backend) -> ServerProcess:
    """qtls-server with the default test configuration in front of the test backend."""
    return start_server(make_config(dev_pki, backend["address"]))
