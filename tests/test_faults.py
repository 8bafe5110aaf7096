"""Faults an operator meets, on the real daemon with real processes: nothing in a config file,
a signal, a dead backend, a full disk or a descriptor limit takes it down or makes it refuse
clients it could serve. Each test is bounded (well under 20 s on an idle machine)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import make_config
from tests.support.bad_configs import CASES
from tests.support.faults import (
    Backend, Load, alive, children, cpu_seconds, open_fds, wait_until,
)
from tests.support.harness import http_request, tls_connect
from tests.support.tmpfs import fill, small_tmpfs
from tests.test_e2e_hsm import SOFTHSM_LIBRARY, hsm_cert, hsm_config, token  # noqa: F401


def metrics(server) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics",
                                  timeout=10).read().decode()


def get(port: int, path: str = "/echo", timeout: float = 10.0):
    conn = tls_connect(port, timeout=timeout)
    try:
        return http_request(conn, "GET", path)
    finally:
        conn.close()


def test_kill_9_of_a_worker_under_load_loses_only_its_requests(start_server, dev_pki, backend):
    server = start_server(make_config(dev_pki, backend["address"], server={"workers": 2}))
    with Load(server.port, threads=3) as load:
        load.wait_for(20)
        os.kill(server.worker_pids[0], signal.SIGKILL)
        assert server.wait_log(lambda e: e.get("event") == "worker respawned", 10)
        before = load.result.ok
        load.wait_for(before + 20)
    result = load.result
    # At most one request in flight per client thread could have been on the dead worker.
    assert len(result.failures) <= 3, result.failures
    assert result.ok >= before + 20


def test_five_sighups_under_load_lose_nothing(start_server, dev_pki, backend):
    server = start_server(make_config(dev_pki, backend["address"], server={"workers": 2}))
    with Load(server.port, threads=3) as load:
        load.wait_for(10)
        for _ in range(5):
            server.proc.send_signal(signal.SIGHUP)
            time.sleep(0.2)
        assert wait_until(lambda: len(server.events("reloaded")) == 5, 15)
        done = load.result.ok
        load.wait_for(done + 10)
    assert load.result.failures == []
    assert server.proc.poll() is None


def test_sighup_with_each_malformed_config_keeps_master_and_old_generation(
        start_server, dev_pki, backend, tmp_path):
    good = make_config(dev_pki, backend["address"])
    server = start_server(good)
    good_bytes = server.config_path.read_bytes()
    for number, bad in enumerate(CASES, start=1):
        server.config_path.write_bytes(bad.make(good, tmp_path))
        server.proc.send_signal(signal.SIGHUP)
        failed = server.wait_log(lambda e: e.get("event", "").startswith("reload failed")
                                 and len(server.events(e["event"])) >= number, 10)
        assert failed is not None, f"{bad.name}: no 'reload failed' line"
        assert bad.mentions in failed["error"], (bad.name, failed["error"])
        assert server.proc.poll() is None, bad.name
        assert get(server.port).status == 200, bad.name
    server.config_path.unlink()  # the config file itself a FIFO: the master must not block
    os.mkfifo(server.config_path)
    server.proc.send_signal(signal.SIGHUP)
    assert server.wait_log(lambda e: e.get("event", "").startswith("reload failed")
                           and "FIFO" in e["error"], 10)
    server.config_path.unlink()
    server.config_path.write_bytes(good_bytes)
    server.proc.send_signal(signal.SIGHUP)
    assert server.wait_log(lambda e: e.get("event") == "reloaded", 15)
    assert get(server.port).status == 200
    assert not [line for line in server.raw if "Traceback" in line]


def test_backend_killed_then_restarted_502_then_recovers_within_a_second(
        start_server, dev_pki, tmp_path):
    backend = Backend(tmp_path).start()
    try:
        server = start_server(make_config(dev_pki, backend.address))
        assert get(server.port).status == 200
        backend.kill()
        assert get(server.port).status == 502
        backend.start()
        back = time.monotonic()
        while get(server.port).status != 200:
            assert time.monotonic() - back < 1.0, "still failing a second after the backend returned"
            time.sleep(0.05)
    finally:
        backend.kill()


def test_hanging_backend_is_504_at_the_read_timeout(start_server, dev_pki, backend):
    server = start_server(make_config(dev_pki, backend["address"], upstreams={
        "app": {"servers": [backend["address"]], "read_timeout": 1}}))
    started = time.monotonic()
    response = get(server.port, "/slow?delay=10")
    took = time.monotonic() - started
    assert response.status == 504
    assert 0.9 < took < 3.0, took


def test_log_disk_full_serving_unaffected_stderr_bounded_no_torn_line(
        start_server, dev_pki, backend, tmp_path):
    with small_tmpfs(tmp_path / "logs") as disk:
        log_file = disk / "qtls.log"
        server = start_server(make_config(dev_pki, backend["address"], server={"workers": 2},
                                          logging={"file": str(log_file), "console": True}))
        filler = fill(disk)
        mark = len(server.raw)
        for _ in range(40):
            assert get(server.port).status == 200
        time.sleep(0.3)
        stderr = server.raw[mark:]
        assert not [line for line in stderr if "Logging error" in line or "Traceback" in line]
        reports = [line for line in stderr if '"log write failed"' in line]
        assert 1 <= len(reports) <= 4  # one per process that tried to log, not one per record
        assert sum(len(line) for line in stderr) < 40 * 2000  # the access lines, little more
        filler.unlink()
        for _ in range(5):
            assert get(server.port).status == 200
        server.stop()
        entries = [json.loads(line) for line in log_file.read_text().splitlines()]
        assert any(e.get("event") == "log records lost" for e in entries)


def test_metrics_process_reopens_its_log_file_on_sigusr1(start_server, dev_pki, backend, tmp_path):
    log_file = tmp_path / "qtls.log"
    server = start_server(make_config(dev_pki, backend["address"], logging={
        "file": str(log_file), "console": True}))
    metrics_pid = next(p for p in children(server.pid) if p not in server.worker_pids)
    assert "qtls_workers" in metrics(server)  # the metrics process is up (its handlers too)
    assert str(log_file) in open_fds(metrics_pid)
    log_file.unlink()  # logrotate's "delete, then SIGUSR1"
    server.proc.send_signal(signal.SIGUSR1)
    for pid in (server.pid, metrics_pid, *server.worker_pids):
        assert wait_until(lambda: not any(t.endswith("(deleted)") for t in open_fds(pid)), 5), pid


def test_fd_limit_accept_backs_off_and_service_resumes(start_server, dev_pki, backend):
    server = start_server(make_config(dev_pki, backend["address"], server={"workers": 1}))
    worker = server.worker_pids[0]
    in_use = len(open_fds(worker))
    resource.prlimit(worker, resource.RLIMIT_NOFILE, (in_use + 8, in_use + 8))
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(16)]
    try:
        assert server.wait_log(lambda e: e.get("event") == "accept failed; backing off", 10)
        spent = cpu_seconds(worker)
        time.sleep(1.0)
        assert cpu_seconds(worker) - spent < 0.3  # not spinning on a readable listener
        waiting = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    finally:
        for sock in held:
            sock.close()
    waiting.close()
    assert wait_until(lambda: _served(server.port), 10), "service did not resume"


def _served(port: int) -> bool:
    try:
        return get(port, timeout=3).status == 200
    except OSError:
        return False


def test_max_connections_total_is_honoured_with_two_workers(start_server, dev_pki, backend):
    server = start_server(make_config(dev_pki, backend["address"], server={
        "workers": 2, "max_connections": 10}))
    held = []
    try:
        for _ in range(10):  # old: shares of 5 each, and the kernel favours one worker: resets
            conn = tls_connect(server.port, timeout=5)
            assert http_request(conn, "GET", "/echo").status == 200
            held.append(conn)
        extra = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        extra.settimeout(0.5)
        with pytest.raises(TimeoutError):
            extra.recv(1)  # the 11th waits in the queue: neither served nor reset
        assert server.wait_log(lambda e: e.get("event", "").startswith("connection limit reached"), 5)
        assert 'qtls_connections_open{listener="default"} 10.0' in metrics(server)
        held.pop().close()
        extra.close()
        assert get(server.port).status == 200
    finally:
        for conn in held:
            conn.close()


def test_sigterm_during_a_long_download_drains_it(start_server, dev_pki, backend):
    server = start_server(make_config(dev_pki, backend["address"], server={
        "workers": 1, "shutdown_timeout": 15}))
    size = 8 * 1024 * 1024
    conn = tls_connect(server.port, timeout=20)
    conn.sendall(f"GET /bytes/{size} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    first = conn.recv(65536)
    assert first.startswith(b"HTTP/1.1 200")
    server.proc.send_signal(signal.SIGTERM)
    received = len(first) - first.index(b"\r\n\r\n") - 4
    while received < size:
        time.sleep(0.001)  # a slow reader: the drain must wait for it
        chunk = conn.recv(65536)
        if not chunk:
            break
        received += len(chunk)
    assert received == size
    assert server.proc.wait(20) == 0


def test_master_killed_workers_follow_and_free_the_port(start_server, dev_pki, backend):
    server = start_server(make_config(dev_pki, backend["address"], server={"workers": 2}))
    port, workers = server.port, list(server.worker_pids)
    server.proc.kill()
    server.proc.wait(5)
    assert wait_until(lambda: not any(alive(pid) for pid in workers), 10), "orphaned workers"
    with socket.socket() as sock:  # a new instance can bind the port
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))


def test_reload_names_settings_it_cannot_apply(start_server, dev_pki, backend):
    config = make_config(dev_pki, backend["address"])
    server = start_server(config)
    changed = json.loads(json.dumps(config))
    changed["server"]["backlog"] = 100
    changed["hsm"] = {"session_pool_size": 3}
    changed["openssl"] = {"providers": [{"name": "legacy", "activate": False}]}
    changed["upstreams"]["app"]["read_timeout"] = 5  # applied
    server.config_path.write_text(json.dumps(changed))
    server.proc.send_signal(signal.SIGHUP)
    assert server.wait_log(lambda e: e.get("event") == "reloaded", 15)
    warning = server.wait_log(lambda e: "apply only on restart" in e.get("event", ""), 1)
    assert warning is not None and warning["settings"] == ["server.backlog", "hsm", "openssl"]
    assert get(server.port).status == 200


@pytest.mark.skipif(shutil.which("softhsm2-util") is None or not Path(SOFTHSM_LIBRARY).exists(),
                    reason="softhsm2 and pkcs11-provider are installed by `make test`")
def test_reload_checks_hsm_keys_as_a_start_does(start_server, dev_pki, backend, token, hsm_cert):
    """A certificate that does not match the token's key is refused on SIGHUP by the same
    check a start makes, naming the mismatch (it used to reach the new workers, which died)."""
    config = hsm_config(dev_pki, backend, token, hsm_cert)
    server = start_server(config)
    config["certificates"]["server_cert"] = str(dev_pki.ecdsa_cert)  # not the token's key
    server.config_path.write_text(json.dumps(config))
    server.proc.send_signal(signal.SIGHUP)
    failed = server.wait_log(lambda e: e.get("event", "").startswith("reload failed"), 30)
    assert failed is not None and "does not match" in failed["error"], failed
    assert get(server.port).status == 200


def test_metrics_process_that_keeps_dying_is_restarted_with_back_off(start_server, dev_pki, backend):
    server = start_server(make_config(dev_pki, backend["address"]))
    delays = []
    for _ in range(3):
        assert wait_until(lambda: len(children(server.pid)) == 2, 10)
        victim = next(p for p in children(server.pid) if p not in server.worker_pids)
        os.kill(victim, signal.SIGKILL)
        exited = server.wait_log(lambda e: e.get("event", "").startswith("metrics process exited")
                                 and e.get("metrics_pid") == victim, 10)
        assert exited is not None
        delays.append(exited["respawn_in_s"])
    assert delays == [0.25, 0.5, 1.0]
    assert wait_until(lambda: "qtls_workers" in _metrics_or_empty(server), 10)
    assert get(server.port).status == 200


def _metrics_or_empty(server) -> str:
    try:
        return metrics(server)
    except OSError:
        return ""


def test_log_rotation_that_fails_is_logged_and_serving_goes_on(start_server, dev_pki, backend,
                                                               tmp_path):
    log_file = tmp_path / "qtls.log"
    log_file.write_bytes(b"{}\n" * 400_000)  # past max_size_mb: the master rotates at once
    (tmp_path / "qtls.log.1").mkdir()  # ... onto a directory: os.replace fails
    (tmp_path / "qtls.log.1" / "keep").write_text("x")
    server = start_server(make_config(dev_pki, backend["address"], logging={
        "file": str(log_file), "console": True, "max_size_mb": 1, "max_files": 1}))
    assert server.wait_log(lambda e: e.get("event") == "log rotation failed", 5)
    time.sleep(1.5)  # more rounds of the master's loop
    assert server.proc.poll() is None
    assert get(server.port).status == 200
    assert len(server.events("log rotation failed")) == 1  # once a minute at most
