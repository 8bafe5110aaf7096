"""The production process model: master + workers, reloads, respawns, shared resumption."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

from qproxy import pki
from qproxy.tls import openssl_ext
from tests.conftest import make_config
from tests.support.harness import (
    ROOT,
    CloseKind,
    child_env,
    client_context,
    http_request,
    read_response,
    read_until_closed,
    tls_connect,
    wait_first_bytes,
)


def _four_workers(dev_pki, backend, **sections):
    server = {"listen_address": "127.0.0.1", "listen_port": 0, "workers": 4}
    return make_config(dev_pki, backend["address"], server=server, **sections)


def _metrics(server) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics",
                                  timeout=10).read().decode()


def _metric_sum(text: str, name: str, label_filter: str = "") -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and label_filter in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def _wait_requests(server, count: int, timeout: float = 20) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = server.events("request")
        if len(lines) >= count:
            return lines
        time.sleep(0.05)
    return server.events("request")


def test_connections_spread_over_workers_and_resume_across_them(start_server, dev_pki, backend):
    server = start_server(_four_workers(dev_pki, backend))
    assert len(server.worker_pids) == 4
    ctx = client_context()
    for index in range(200):
        conn = tls_connect(server.port, ctx)
        assert http_request(conn, "GET", f"/echo?c={index}").status == 200
        conn.close()
    lines = _wait_requests(server, 200)
    pids = {line["pid"] for line in lines}
    assert len(pids) >= 2, "every connection went to one worker"
    assert pids <= set(server.worker_pids)

    # A ticket issued by one worker resumes on another: the master built the contexts (and
    # their ticket keys) before forking.
    first = tls_connect(server.port, ctx)
    http_request(first, "GET", "/echo?ticket=issuer")
    session = first.get_session()
    issuer = server.wait_log(lambda e: e.get("path") == "/echo?ticket=issuer")["pid"]
    for attempt in range(100):
        conn = tls_connect(server.port, ctx, session=session)
        http_request(conn, "GET", f"/echo?ticket=resume{attempt}")
        line = server.wait_log(lambda e, a=attempt: e.get("path") == f"/echo?ticket=resume{a}")
        if line["pid"] != issuer:
            assert openssl_ext.session_reused(conn)
            assert line["ssl_session_reused"] is True
            break
    else:
        raise AssertionError("no resumption landed on another worker in 100 tries")


def test_reload_under_load_refuses_nothing(start_server, start_backend, dev_pki, tmp_path):
    """Connections keep coming through the reload and none fails; one response that spans it
    (held by the backend until after the reload) finishes on its old worker."""
    app = start_backend()
    config = _four_workers(dev_pki, app)
    server = start_server(config)
    spanning = tls_connect(server.port, timeout=30)
    first = wait_first_bytes(spanning, "/trickle?id=span")
    errors: list[str] = []
    done = threading.Event()
    count = [0]

    def client_loop() -> None:
        ctx = client_context()
        deadline = time.monotonic() + 60
        while (count[0] < 500 or not done.is_set()) and time.monotonic() < deadline:
            try:
                conn = tls_connect(server.port, ctx)
                status = http_request(conn, "GET", "/echo").status
                conn.close()
                if status != 200:
                    errors.append(f"status {status}")
            except Exception as exc:  # any failure is what the test counts
                errors.append(repr(exc))
            count[0] += 1

    thread = threading.Thread(target=client_loop)
    thread.start()
    while count[0] < 100:
        time.sleep(0.01)
    fresh = pki.init(tmp_path / "rotated")
    config["certificates"]["keypairs"] = [
        {"cert": str(fresh.mldsa_cert), "key": str(fresh.mldsa_key)},
        {"cert": str(fresh.ecdsa_cert), "key": str(fresh.ecdsa_key)},
    ]
    server.config_path.write_text(json.dumps(config))
    server.proc.send_signal(signal.SIGHUP)
    reloaded = server.wait_log(lambda e: e.get("event") == "reloaded", 30)
    assert reloaded is not None and reloaded["generation"] == 2
    done.set()
    thread.join(90)
    assert count[0] >= 500
    assert errors == []
    (app["markers"] / "release-span").touch()
    response = read_response(spanning, already=first)
    assert response.status == 200 and response.complete and response.body.endswith(b"end\n")
    span = server.wait_log(lambda e: e.get("event") == "request"
                           and e.get("path") == "/trickle?id=span")
    assert span is not None and span["pid"] in server.worker_pids
    # The old generation drains and exits.
    assert server.wait_log(lambda e: e.get("event") == "old worker finished", 30)
    assert 'qtls_config_reloads_total{result="ok"} 1.0' in _metrics(server)


def test_broken_reload_keeps_workers_and_test_config_fails(start_server, dev_pki, backend):
    server = start_server(_four_workers(dev_pki, backend))
    config = json.loads(server.config_path.read_text())
    config["certificates"]["keypairs"][0]["key"] = str(dev_pki.ecdsa_key)  # key/cert mismatch
    server.config_path.write_text(json.dumps(config))
    check = subprocess.run([sys.executable, "-m", "qproxy", "check-config", "--config",
                            str(server.config_path)], cwd=ROOT, env=child_env(),
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 1 and "does not match" in check.stderr
    server.proc.send_signal(signal.SIGHUP)
    failure = server.wait_log(lambda e: e.get("event", "").startswith("reload failed"), 10)
    assert "does not match" in failure["error"]
    assert http_request(tls_connect(server.port), "GET", "/echo").status == 200
    assert 'qtls_config_reloads_total{result="failed"} 1.0' in _metrics(server)
    assert server.proc.poll() is None


def test_killed_worker_is_respawned_and_counted(start_server, dev_pki, backend):
    server = start_server(_four_workers(dev_pki, backend))
    victim = server.worker_pids[0]
    os.kill(victim, signal.SIGKILL)
    respawned = server.wait_log(lambda e: e.get("event") == "worker respawned", 15)
    assert respawned is not None and respawned["worker_pid"] not in server.worker_pids
    for _ in range(20):
        assert http_request(tls_connect(server.port), "GET", "/echo").status == 200
    assert "qtls_worker_restarts_total 1.0" in _metrics(server)


def _refused_soon(port: int, seconds: float = 3.0) -> bool:
    """True once a connection is refused (each worker closes its listener a moment after it
    logs the drain: the close goes through its event loop)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        except ConnectionRefusedError:
            return True
        time.sleep(0.02)
    return False


def test_sigterm_refuses_while_draining_then_finishes_and_exits_0(start_server, start_backend,
                                                                  dev_pki):
    app = start_backend()
    server = start_server(_four_workers(dev_pki, app))
    conn = tls_connect(server.port, timeout=30)
    first = wait_first_bytes(conn, "/trickle?id=drain")
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    while len(server.events("worker draining")) < 4 and time.monotonic() < deadline:
        server.wait_log(lambda e: False, 0.05)
    assert len(server.events("worker draining")) == 4
    # The request is still held by the backend: no worker and not the master may listen now.
    assert server.proc.poll() is None
    assert _refused_soon(server.port)
    (app["markers"] / "release-drain").touch()
    response = read_response(conn, already=first)
    assert response.status == 200 and response.complete and response.body.endswith(b"end\n")
    assert read_until_closed(conn) == (b"", CloseKind.CLOSE_NOTIFY)
    assert server.proc.wait(30) == 0
    assert time.monotonic() - started < 30


def _request_lines(path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        entry = json.loads(line)  # every line whole: no torn or interleaved JSON
        if entry.get("event") == "request":
            out.append(entry)
    return out


def _wait_file_lines(path, count: int, timeout: float = 20) -> list[dict]:
    deadline = time.monotonic() + timeout
    while len(lines := _request_lines(path)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return lines


def _log_targets(pid: int) -> set[str]:
    targets = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return targets


def test_logrotate_rename_and_sigusr1_lose_no_lines(start_server, dev_pki, backend, tmp_path):
    log_file, rotated = tmp_path / "server.log", tmp_path / "server.log.1"
    server = start_server(_four_workers(dev_pki, backend, logging={
        "console": True, "file": str(log_file), "max_size_mb": 0}))
    for index in range(40):
        assert http_request(tls_connect(server.port), "GET", f"/echo?before={index}").status == 200
    # The file's lines, not the console's: those are what the rename must not split.
    assert len(_wait_file_lines(log_file, 40)) == 40
    os.rename(log_file, rotated)
    server.proc.send_signal(signal.SIGUSR1)
    assert server.wait_log(lambda e: e.get("event") == "log files reopened", 10)
    # The signal, not a worker's next line, moves every worker to the new file: with no
    # request since the rename, each one's descriptor must already point at it. (A
    # WatchedFileHandler would reopen by itself at the next line, so lines alone prove nothing.)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not all(
            str(log_file) in _log_targets(pid) and str(rotated) not in _log_targets(pid)
            for pid in server.worker_pids):
        time.sleep(0.05)
    for pid in server.worker_pids:
        assert str(log_file) in _log_targets(pid), f"worker {pid} did not reopen on SIGUSR1"
        assert str(rotated) not in _log_targets(pid), f"worker {pid} still holds the old file"
    for index in range(40):
        assert http_request(tls_connect(server.port), "GET", f"/echo?after={index}").status == 200
    new = _wait_file_lines(log_file, 40)
    old = _request_lines(rotated)
    assert sorted(e["path"] for e in old) == sorted(f"/echo?before={i}" for i in range(40))
    assert sorted(e["path"] for e in new) == sorted(f"/echo?after={i}" for i in range(40))


def test_metrics_total_is_the_sum_over_workers(start_server, dev_pki, backend):
    server = start_server(_four_workers(dev_pki, backend))
    for index in range(60):
        assert http_request(tls_connect(server.port), "GET", f"/echo?m={index}").status == 200
    lines = _wait_requests(server, 60)
    assert len({line["pid"] for line in lines}) >= 2
    text = _metrics(server)
    assert _metric_sum(text, "qtls_http_requests_total", 'upstream="app"') == 60
    assert re.search(r"^qtls_workers 4\.0$", text, re.M)
