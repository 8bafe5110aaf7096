from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from qproxy import pki
from tests.support.harness import ROOT, ServerProcess, child_env, free_port, wait_for_port


@pytest.fixture(scope="session")
def dev_pki(tmp_path_factory: pytest.TempPathFactory) -> pki.DevPki:
    return pki.init(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def backend(tmp_path_factory: pytest.TempPathFactory):
    """The aiohttp test backend (tests/support/backend.py) on a free port."""
    markers = tmp_path_factory.mktemp("markers")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.backend", str(port), str(markers)],
                            cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield {"port": port, "markers": markers, "address": f"127.0.0.1:{port}"}
    finally:
        proc.terminate()
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
