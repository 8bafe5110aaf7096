"""A careless operator's `server.json`, as the red team wrote it: each mistake here once passed
`qtls-server --test-config` (and so a SIGHUP) and failed later, at start with a traceback or
on live traffic. Each must now be exit 1 with one line naming its JSON path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from qproxy import pki
from tests.support.harness import ROOT, child_env


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> pki.DevPki:
    return pki.init(tmp_path_factory.mktemp("pki"))


def config(dev: pki.DevPki, **sections: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "server": {"listen_address": "127.0.0.1", "listen_port": 8443, "workers": 1},
        "certificates": {"server_cert": str(dev.ecdsa_cert), "server_key": str(dev.ecdsa_key)},
        "metrics": {"enabled": False},
        "upstreams": {"app": {"servers": ["127.0.0.1:5000"]}},
    }
    for name, values in sections.items():
        if isinstance(values, dict) and isinstance(document.get(name), dict):
            document[name] = {**document[name], **values}
        else:
            document[name] = values
    return document


def test_config(tmp_path: Path, document: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """The real command, in a child: a traceback at start would show on its stderr."""
    path = tmp_path / "server.json"
    path.write_text(json.dumps(document))
    return subprocess.run(
        [sys.executable, "-c", "from qproxy.cli import qtls_server; qtls_server()",
         "--test-config", "--config", str(path)],
        cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=60)


test_config.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


def assert_refused(result: subprocess.CompletedProcess[str], json_path: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    problems = [line for line in result.stderr.splitlines() if line.startswith("  ")]
    assert len(problems) == 1 and problems[0].strip().startswith(json_path + ":"), result.stderr


def test_a_good_file_passes(dev: pki.DevPki, tmp_path: Path) -> None:
    result = test_config(tmp_path, config(dev, server={"client_body_temp_path": str(tmp_path)}))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("where", ["missing", "file", "proc", "empty"])
def test_client_body_temp_path_must_be_a_writable_directory(
        dev: pki.DevPki, tmp_path: Path, where: str) -> None:
    # Before: accepted, and then every body past client_body_buffer_size was a 500.
    (tmp_path / "file").write_text("x")
    path = {"missing": str(tmp_path / "nowhere"), "file": str(tmp_path / "file"),
            "proc": "/proc", "empty": ""}[where]
    result = test_config(tmp_path, config(dev, server={"client_body_temp_path": path}))
    assert_refused(result, "server.client_body_temp_path")


@pytest.mark.parametrize("section,key", [("server", "listen_address"),
                                         ("metrics", "address")])
@pytest.mark.parametrize("value", ["a" * 64, "a" * 3_000, ""])
def test_a_listen_address_getaddrinfo_cannot_take_is_refused(
        dev: pki.DevPki, tmp_path: Path, section: str, key: str, value: str) -> None:
    # Before: a DNS label past 63 characters passed --test-config, and the start died with a
    # UnicodeError traceback from the IDNA codec when the socket was bound.
    result = test_config(tmp_path, config(dev, **{section: {key: value}}))
    assert_refused(result, f"{section}.{key}")


def test_an_upstream_host_getaddrinfo_cannot_take_is_refused(
        dev: pki.DevPki, tmp_path: Path) -> None:
    result = test_config(tmp_path, config(
        dev, upstreams={"app": {"servers": ["a" * 70 + ".example:80"]}}))
    assert_refused(result, "upstreams.app.servers[0]")


@pytest.mark.parametrize("path", ["healthz", "/a b", "/ok\r\nX-Injected: 1"])
def test_a_health_check_path_is_one_wire_path(dev: pki.DevPki, tmp_path: Path,
                                              path: str) -> None:
    # Before: accepted; the health check then asked for 'http://host:port' + 'healthz', or
    # wrote a header of its own into its request.
    result = test_config(tmp_path, config(
        dev, upstreams={"app": {"servers": ["127.0.0.1:5000"], "health_check": {"path": path}}}))
    assert_refused(result, "upstreams.app.health_check.path")


def test_a_route_prefix_without_a_slash_is_refused(dev: pki.DevPki, tmp_path: Path) -> None:
    # Before: accepted, and the route matched no request target at all (every one is '/...').
    result = test_config(tmp_path, config(dev, routes=[{"path_prefix": "api",
                                                        "upstream": "app"}]))
    assert_refused(result, "routes[0].path_prefix")


@pytest.mark.parametrize("member,json_path", [("server_key", "certificates.server_key"),
                                              ("server_cert", "certificates.server_cert")])
def test_the_seed_pair_is_named_as_the_file_names_it(dev: pki.DevPki, tmp_path: Path,
                                                     member: str, json_path: str) -> None:
    # Before: 'certificates.server_cert.key' / '.cert', paths that exist in no file.
    result = test_config(tmp_path, config(dev, certificates={member: str(tmp_path)}))
    assert_refused(result, json_path)


def test_a_key_for_another_certificate_names_the_key(dev: pki.DevPki, tmp_path: Path) -> None:
    result = test_config(tmp_path, config(dev, certificates={"server_key": str(dev.mldsa_key)}))
    assert_refused(result, "certificates.server_key")
    assert "does not match the certificate" in result.stderr


def test_a_keypairs_element_keeps_its_member_path(dev: pki.DevPki, tmp_path: Path) -> None:
    result = test_config(tmp_path, config(dev, certificates={
        "keypairs": [{"cert": str(dev.ecdsa_cert), "key": str(dev.mldsa_key)}]}))
    assert_refused(result, "certificates.keypairs[0].key")


# -- qproxy firmware, and the qtls API's key and certificate files ---------------------------

def qproxy(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from qproxy.cli import main; main()", *args],
        cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("firmware")
    (where / "image.bin").write_bytes(b"firmware" * 1000)
    assert qproxy("firmware", "keygen", "--out", str(where / "key.pem")).returncode == 0
    assert qproxy("firmware", "sign", str(where / "image.bin"), "--key",
                  str(where / "key.pem")).returncode == 0
    return where


def test_a_signature_that_never_ends_is_refused_not_read(signed: Path) -> None:
    # Before: --sig /dev/zero was read whole: memory until the OOM killer ended the process
    # (exit 137). RLIMIT_AS keeps the old code's failure a MemoryError, not a killed machine.
    result = subprocess.run(
        [sys.executable, "-c",
         "import resource; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30)); "
         "from qproxy.cli import main; main()",
         "firmware", "verify", str(signed / "image.bin"), "--pubkey",
         str(signed / "key.pub.pem"), "--sig", "/dev/zero"],
        cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr[-500:]
    assert "Traceback" not in result.stderr
    assert "the signature '/dev/zero' is a character device" in result.stderr, result.stderr


def bounded_child(code: str) -> subprocess.CompletedProcess[str]:
    """`code` in a child with 1 GiB of address space and 20 s: the old code's unbounded read
    fails there (MemoryError, a timeout), not on the machine running the suite."""
    return subprocess.run(
        [sys.executable, "-c",
         "import resource; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
         + code],
        cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=20)


QTLS_ERROR_EXITS = ("import sys\nfrom qproxy.qtls.errors import QTLSConfigError\n"
                    "try:\n    {call}\nexcept QTLSConfigError as exc:\n    sys.exit(str(exc))\n")


@pytest.mark.parametrize("loader", ["load_public_key_file", "load_private_key_file"])
def test_the_qtls_api_refuses_a_key_file_that_never_ends(loader: str) -> None:
    # Before: /dev/zero was read whole, until memory ran out.
    result = bounded_child("from qproxy.qtls.sig import QTLSDilithium\n" + QTLS_ERROR_EXITS
                           .format(call=f"QTLSDilithium.{loader}('/dev/zero')"))
    assert "character device" in result.stderr, result.stderr[-500:]


def test_the_qtls_api_refuses_a_fifo_at_once(tmp_path: Path) -> None:
    # Before: open() waited for a writer forever; the child's timeout fails the old code.
    fifo = tmp_path / "cert.pem"
    os.mkfifo(fifo)
    result = bounded_child("from qproxy.qtls.files import check_pem_certificates\n"
                           + QTLS_ERROR_EXITS.format(
                               call=f"check_pem_certificates({str(fifo)!r}, 'certificate')"))
    assert "FIFO" in result.stderr, result.stderr


# -- starting where a port is taken ----------------------------------------------------------

def start(tmp_path: Path, document: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "server.json"
    path.write_text(json.dumps(document))
    return subprocess.run(
        [sys.executable, "-c", "from qproxy.cli import qtls_server; qtls_server()",
         "--config", str(path)],
        cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("busy", ["server.listen_port", "metrics.port"])
def test_a_busy_port_is_named(dev: pki.DevPki, tmp_path: Path, busy: str) -> None:
    # Before: "cannot listen on 127.0.0.1:<listen_port> or the metrics port: Address already
    # in use" whichever was taken, so a busy metrics port was reported as the TLS port.
    import socket

    from tests.support.harness import free_port

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        taken_port = taken.getsockname()[1]
        ports = {"server.listen_port": free_port(), "metrics.port": free_port(), busy: taken_port}
        result = start(tmp_path, config(
            dev, server={"listen_port": ports["server.listen_port"]},
            metrics={"enabled": True, "address": "127.0.0.1", "port": ports["metrics.port"]}))
    assert result.returncode == 1, result.stderr[-500:]
    assert "Traceback" not in result.stderr
    assert f"{busy}: cannot listen on 127.0.0.1:{taken_port}: Address already in use" \
        in result.stderr, result.stderr[-500:]


# -- qproxy pki init, run twice ---------------------------------------------------------------

def test_pki_init_twice_keeps_the_first_pki(tmp_path: Path) -> None:
    # Before: the second run replaced the CA and every key, exit 0, and every client trusting
    # the first CA failed its next handshake.
    directory = tmp_path / "pki"
    assert qproxy("pki", "init", str(directory)).returncode == 0
    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    again = qproxy("pki", "init", str(directory))
    assert again.returncode == 1, again.stdout
    assert "Traceback" not in again.stderr and "--force" in again.stderr, again.stderr
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before
    forced = qproxy("pki", "init", str(directory), "--force")
    assert forced.returncode == 0, forced.stderr
    assert (directory / "ca-bundle.pem").read_bytes() != before["ca-bundle.pem"]
