"""`server.pid_file` and `qproxy reload|stop|quit|reopen-logs|status`, run as an operator runs
them: a real qtls-server, the commands as subprocesses, their exit codes and output."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from qproxy import control_commands as cli

from .conftest import make_config
from .support.harness import ROOT, child_env, tls_connect, wait_first_bytes


def qproxy(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qproxy", *args], capture_output=True,
                          text=True, timeout=timeout, env=child_env(), cwd=ROOT)


def wait_until(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def status_file(pid_file: Path) -> Path:
    return pid_file.with_name(pid_file.stem + ".status.json")


@pytest.fixture
def controlled(start_server, dev_pki, backend, tmp_path):
    pid_file = tmp_path / "run" / "qtls-server.pid"
    pid_file.parent.mkdir()
    server = start_server(make_config(dev_pki, backend["address"],
                                      server={"pid_file": str(pid_file), "workers": 2}))
    assert wait_until(lambda: status_file(pid_file).exists())
    return server, pid_file


def test_pid_file_names_the_master_and_status_reports_it(controlled):
    server, pid_file = controlled
    assert pid_file.read_text() == f"{server.pid}\n"
    result = qproxy("status", "--config", str(server.config_path))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"pid {server.pid} (running)" in out
    assert "generation:  1" in out
    for pid in server.worker_pids:
        assert str(pid) in out
    assert f"127.0.0.1:{server.port} (http, default)" in out
    assert f"127.0.0.1:{server.metrics_port}" in out
    assert "last reload: none since start" in out
    assert "uptime:      00:00:" in out
    document = json.loads(qproxy("status", "--pid-file", str(pid_file), "--json").stdout)
    assert sorted(document["workers"]) == sorted(server.worker_pids)


def test_quit_drains_and_removes_the_pid_and_status_files(controlled):
    server, pid_file = controlled
    result = qproxy("quit", "--config", str(server.config_path), "--wait", "30")
    assert result.returncode == 0, result.stderr
    assert f"sent SIGTERM to qtls-server (pid {server.pid})" in result.stdout
    assert server.proc.wait(10) == 0
    assert server.events("stopping: no new connections, finishing requests in flight")
    assert not pid_file.exists()
    assert not status_file(pid_file).exists()
    # Nothing running now: scripts can tell "not running" from other failures.
    again = qproxy("quit", "--config", str(server.config_path))
    assert again.returncode == cli.EXIT_NOT_RUNNING, again.stderr
    assert "not running" in again.stderr


def test_stop_is_fast_and_cuts_requests_in_flight(controlled):
    """stop (SIGINT) does not wait for a 30 s response; quit would (server.shutdown_timeout)."""
    server, pid_file = controlled
    conn = tls_connect(server.port)
    wait_first_bytes(conn, f"/trickle?id=stop-{os.getpid()}-{time.monotonic_ns()}")
    started = time.monotonic()
    result = qproxy("stop", "--pid-file", str(pid_file), "--wait", "15")
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 15
    assert server.proc.wait(10) == 0
    assert server.events("stopping fast: connections in flight are cut")
    assert not pid_file.exists()
    conn.close()


def test_stop_cuts_short_a_graceful_drain(start_server, dev_pki, backend, tmp_path):
    """quit drains (a 30 s response, shutdown_timeout 60 s); a stop sent meanwhile ends it within
    a second or so, as a second Ctrl-C would."""
    pid_file = tmp_path / "qtls-server.pid"
    server = start_server(make_config(dev_pki, backend["address"],
                                      server={"pid_file": str(pid_file),
                                              "shutdown_timeout": 60}))
    conn = tls_connect(server.port)
    wait_first_bytes(conn, f"/trickle?id=drain-{os.getpid()}-{time.monotonic_ns()}")
    assert qproxy("quit", "--pid-file", str(pid_file)).returncode == 0
    assert server.wait_log(lambda e: e.get("event", "").startswith("stopping: no new")) is not None
    started = time.monotonic()
    result = qproxy("stop", "--pid-file", str(pid_file), "--wait", "20")
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 20
    assert server.proc.wait(10) == 0
    assert server.events("stopping fast: connections in flight are cut")
    conn.close()


def test_sigquit_is_a_graceful_stop_like_nginx(controlled):
    """kill -QUIT (nginx's graceful stop) used to kill the master with a core dump, leaving
    its pid file behind."""
    server, pid_file = controlled
    os.kill(server.pid, signal.SIGQUIT)
    assert server.proc.wait(30) == 0
    assert server.events("stopping: no new connections, finishing requests in flight")
    assert not pid_file.exists()


def test_reload_waits_for_the_result(controlled):
    server, pid_file = controlled
    config = json.loads(server.config_path.read_text())
    result = qproxy("reload", "--config", str(server.config_path))
    assert result.returncode == 0, result.stderr
    assert "reloaded: generation 2 serving" in result.stdout
    status = json.loads(status_file(pid_file).read_text())
    assert status["generation"] == 2 and status["last_reload"]["result"] == "ok"
    assert not set(status["workers"]) & set(server.worker_pids)

    # A broken configuration: the master keeps generation 2, and reload says so with exit 1.
    config["server"]["listen_portt"] = 1
    server.config_path.write_text(json.dumps(config))
    result = qproxy("reload", "--config", str(server.config_path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "reload failed; still serving generation 2" in result.stderr
    assert "server.listen_portt" in result.stderr
    shown = qproxy("status", "--pid-file", str(pid_file))
    assert shown.returncode == 0
    assert "last reload: failed at" in shown.stdout and "(generation 2)" in shown.stdout
    assert "server.listen_portt" in shown.stdout


def test_status_follows_a_respawned_worker(controlled):
    server, pid_file = controlled
    victim = server.worker_pids[0]
    os.kill(victim, signal.SIGKILL)

    def respawned() -> bool:
        workers = json.loads(status_file(pid_file).read_text())["workers"]
        return victim not in workers and len(workers) == 2
    assert wait_until(respawned)


def test_reopen_logs(controlled):
    server, pid_file = controlled
    result = qproxy("reopen-logs", "--pid-file", str(pid_file))
    assert result.returncode == 0, result.stderr
    assert server.wait_log(lambda e: e.get("event") == "log files reopened") is not None


def test_a_second_master_on_the_same_pid_file_is_refused(controlled, tmp_path):
    server, pid_file = controlled
    config = json.loads(server.config_path.read_text())
    other = tmp_path / "second.json"
    other.write_text(json.dumps(config))
    result = subprocess.run([sys.executable, "-m", "qproxy", "serve", "--config", str(other)],
                            capture_output=True, text=True, timeout=60, env=child_env(),
                            cwd=ROOT)
    assert result.returncode == 1
    assert f"belongs to qtls-server process {server.pid}, which is running" in result.stderr
    assert pid_file.read_text() == f"{server.pid}\n"  # untouched
    assert server.proc.poll() is None


def test_a_stale_pid_file_is_reported_and_taken_over(start_server, dev_pki, backend, tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    pid_file = tmp_path / "qtls-server.pid"
    pid_file.write_text(f"{dead.pid}\n")
    result = qproxy("status", "--pid-file", str(pid_file))
    assert result.returncode == cli.EXIT_STALE_PID, result.stderr
    assert "stale pid file" in result.stderr
    server = start_server(make_config(dev_pki, backend["address"],
                                      server={"pid_file": str(pid_file)}))
    assert pid_file.read_text() == f"{server.pid}\n"


def test_exit_codes_without_a_daemon(tmp_path, dev_pki, backend):
    missing = qproxy("reload", "--pid-file", str(tmp_path / "none.pid"))
    assert missing.returncode == cli.EXIT_NOT_RUNNING
    config = tmp_path / "server.json"
    config.write_text(json.dumps(make_config(dev_pki, backend["address"])))
    unset = qproxy("stop", "--config", str(config))
    assert unset.returncode == cli.EXIT_NO_PID_FILE
    assert "sets no server.pid_file" in unset.stderr
    garbage = tmp_path / "garbage.pid"
    garbage.write_text("hello\n")
    assert qproxy("quit", "--pid-file", str(garbage)).returncode == 1


def _as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
         sys.executable, "-m", "qproxy", *args],
        capture_output=True, text=True, timeout=60, env={**child_env(), "HOME": "/"}, cwd=ROOT)


def test_another_users_master_is_permission_denied(controlled):
    """As nobody: a pid file it may not read, then a readable one naming a root-owned master
    it may not signal; both exit 5, and the daemon serves on."""
    server, pid_file = controlled
    if os.geteuid() != 0:
        pytest.skip("needs root to run a command as another user")
    unreadable = _as_nobody("reopen-logs", "--pid-file", str(pid_file))  # tmp_path is 0700
    assert unreadable.returncode == cli.EXIT_NO_PERMISSION, unreadable.stderr
    assert "cannot read the pid file" in unreadable.stderr
    readable = Path(tempfile.mkdtemp(prefix="qproxy-pid-"))
    try:
        readable.chmod(0o755)
        copy = readable / "qtls-server.pid"
        copy.write_text(pid_file.read_text())
        copy.chmod(0o644)
        result = _as_nobody("reopen-logs", "--pid-file", str(copy))
    finally:
        shutil.rmtree(readable)
    assert result.returncode == cli.EXIT_NO_PERMISSION, result.stdout + result.stderr
    assert "not allowed to signal" in result.stderr
    assert server.proc.poll() is None


def test_test_config_checks_the_pid_file_directory(tmp_path, dev_pki, backend):
    """A pid file in a missing directory passed --test-config, then the start failed."""
    config = tmp_path / "server.json"
    config.write_text(json.dumps(make_config(
        dev_pki, backend["address"], server={"pid_file": str(tmp_path / "nope" / "q.pid")})))
    result = subprocess.run([sys.executable, "-m", "qproxy", "check-config", "--config",
                             str(config)], capture_output=True, text=True, timeout=60,
                            env=child_env(), cwd=ROOT)
    assert result.returncode == 1
    assert "server.pid_file: the directory of" in result.stderr
    assert "does not exist" in result.stderr
