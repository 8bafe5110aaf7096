"""What systemd sees: Type=notify messages, socket activation, and the connection limit."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import make_config
from tests.support.harness import ROOT, child_env, http_request, tls_connect


def _messages(listener: socket.socket, until: str, timeout: float = 30) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listener.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            seen.append(listener.recv(4096).decode())
        except TimeoutError:
            break
        if until in seen[-1]:
            break
    return seen


def test_notify_ready_reloading_stopping(start_server, dev_pki, backend, tmp_path, monkeypatch):
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        server = start_server(make_config(dev_pki, backend["address"]))
        ready = _messages(listener, "READY=1")
        assert any(m.startswith("READY=1") for m in ready)
        server.proc.send_signal(signal.SIGHUP)
        reload = _messages(listener, "READY=1")
        assert reload[0].startswith("RELOADING=1") and reload[-1].startswith("READY=1")
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(30) == 0
        assert any("STOPPING=1" in m for m in _messages(listener, "STOPPING=1", 5))


def test_socket_activation_uses_the_passed_listener(dev_pki, backend, tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    # The configured port is ignored in favour of systemd's socket (fd 3).
    config = make_config(dev_pki, backend["address"],
                         server={"listen_address": "127.0.0.1", "listen_port": 1, "workers": 1})
    config_path = tmp_path / "server.json"
    config_path.write_text(json.dumps(config))
    env = child_env()
    env["LISTEN_FDS"] = "1"

    # As systemd does: the socket as fd 3, LISTEN_PID naming the process that reads it (`exec`
    # keeps the shell's pid).
    fd = listener.fileno()
    launcher = (f"import os, sys; os.dup2({fd}, 3); os.close({fd}); "
                "os.environ['LISTEN_PID'] = str(os.getpid()); "
                "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])")
    proc = subprocess.Popen(
        [sys.executable, "-c", launcher, "-m", "qproxy", "serve", "--config", str(config_path)],
        cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True, pass_fds=(fd,))
    try:
        ready = None
        deadline = time.monotonic() + 30
        while ready is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                raise AssertionError("not a log line: " + line + proc.stderr.read()[:3000])
            if entry.get("event") == "listening":
                ready = entry
        assert ready is not None and ready["port"] == port
        assert http_request(tls_connect(port), "GET", "/echo").status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        listener.close()


def test_max_connections_extra_connection_waits_for_room(start_server, dev_pki, backend):
    """At the limit the worker stops accepting (nginx's worker_connections): the extra
    connection waits in the listen queue, not reset, and is served once a slot frees."""
    server = start_server(make_config(dev_pki, backend["address"], server={
        "listen_address": "127.0.0.1", "listen_port": 0, "workers": 1, "max_connections": 2}))
    held = [tls_connect(server.port), tls_connect(server.port)]
    extra = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    extra.settimeout(0.5)
    with pytest.raises(TimeoutError):
        extra.recv(10)  # queued: neither served nor closed
    extra.close()
    held.pop().close()
    assert http_request(tls_connect(server.port), "GET", "/echo").status == 200
    assert http_request(held[0], "GET", "/echo").status == 200
    assert server.wait_log(lambda e: e.get("event", "").startswith("connection limit reached"))
    text = __import__("urllib.request").request.urlopen(
        f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
    assert 'qtls_accept_paused_total{reason="max_connections"}' in text