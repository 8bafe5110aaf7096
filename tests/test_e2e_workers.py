"""The production process model: master + workers, reloads, respawns, shared resumption."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

from qproxy import pki
from qproxy.tls import openssl_ext
from tests.conftest import make_config
from tests.support.harness import ROOT, child_env, client_context, http_request, tls_connect


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


def test_reload_under_load_refuses_nothing(start_server, dev_pki, backend, tmp_path):
    config = _four_workers(dev_pki, backend)
    server = start_server(config)
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


def test_sigterm_drains_then_refuses_and_exits_0(start_server, dev_pki, backend):
    server = start_server(_four_workers(dev_pki, backend))
    conn = tls_connect(server.port, timeout=30)
    conn.sendall(b"GET /slow?delay=2 HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.3)  # the request must be in flight at the backend before the signal
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    from tests.support.harness import read_response
    response = read_response(conn)
    assert response.status == 200 and response.body == b"late\n"
    assert server.proc.wait(30) == 0
    assert time.monotonic() - started < 30
    import socket
    try:
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
        refused = False
    except OSError:
        refused = True
    assert refused


def test_logrotate_rename_and_sigusr1_lose_no_lines(start_server, dev_pki, backend, tmp_path):
    log_file = tmp_path / "server.log"
    server = start_server(_four_workers(dev_pki, backend, logging={
        "console": True, "file": str(log_file), "max_size_mb": 0}))
    for index in range(40):
        assert http_request(tls_connect(server.port), "GET", f"/echo?before={index}").status == 200
    _wait_requests(server, 40)
    os.rename(log_file, tmp_path / "server.log.1")
    server.proc.send_signal(signal.SIGUSR1)
    assert server.wait_log(lambda e: e.get("event") == "log files reopened", 10)
    for index in range(40):
        assert http_request(tls_connect(server.port), "GET", f"/echo?after={index}").status == 200
    _wait_requests(server, 80)

    def request_lines(path) -> list[dict]:
        out = []
        for line in path.read_text().splitlines():
            entry = json.loads(line)  # every line whole: no torn or interleaved JSON
            if entry.get("event") == "request":
                out.append(entry)
        return out

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        old, new = request_lines(tmp_path / "server.log.1"), request_lines(log_file)
        if len(old) + len(new) >= 80:
            break
        time.sleep(0.1)
    assert len(old) + len(new) == 80
    assert all("after" in e["path"] for e in new)
    assert len(new) >= 30  # the workers moved to the new file


def test_metrics_total_is_the_sum_over_workers(start_server, dev_pki, backend):
    server = start_server(_four_workers(dev_pki, backend))
    for index in range(60):
        assert http_request(tls_connect(server.port), "GET", f"/echo?m={index}").status == 200
    lines = _wait_requests(server, 60)
    assert len({line["pid"] for line in lines}) >= 2
    text = _metrics(server)
    assert _metric_sum(text, "qtls_http_requests_total", 'upstream="app"') == 60
    assert re.search(r"^qtls_workers 4\.0$", text, re.M)
