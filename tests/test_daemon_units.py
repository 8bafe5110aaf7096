"""Daemon pieces without a daemon: log rotation, sd_notify, socket activation, limits."""

from __future__ import annotations

import os
import socket

import pytest

from qproxy.daemon import systemd
from qproxy.daemon.master import bind_listeners
from qproxy.daemon.worker import connection_share
from qproxy.observability.logging import rotate_by_size


def test_rotate_by_size_shifts_and_keeps_at_most_n(tmp_path):
    log = tmp_path / "server.log"
    for generation in range(4):
        log.write_text(f"gen{generation}\n" * 100)
        assert rotate_by_size(str(log), 10, keep=2)
    assert not log.exists()
    assert (tmp_path / "server.log.1").read_text().startswith("gen3")
    assert (tmp_path / "server.log.2").read_text().startswith("gen2")
    assert not (tmp_path / "server.log.3").exists()


def test_rotate_by_size_leaves_small_or_missing_files(tmp_path):
    log = tmp_path / "server.log"
    assert not rotate_by_size(str(log), 10, keep=2)
    log.write_text("short")
    assert not rotate_by_size(str(log), 1000, keep=2)
    assert not rotate_by_size(str(log), 0, keep=2)  # 0: logrotate's job
    assert log.read_text() == "short"


def test_notify_sends_datagram_to_notify_socket(tmp_path, monkeypatch):
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(path)
        listener.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert systemd.notify("READY=1", "STATUS=serving")
        assert listener.recv(1024) == b"READY=1\nSTATUS=serving"
        assert systemd.reloading()
        message = listener.recv(1024).decode()
        assert message.startswith("RELOADING=1\nMONOTONIC_USEC=")


def test_notify_without_systemd_is_a_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False


def test_watchdog_interval_is_half_of_watchdog_usec(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_interval() == 5.0
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert systemd.watchdog_interval() is None


def test_inherited_listener_only_for_our_pid(monkeypatch):
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.setenv("LISTEN_PID", "1")
    assert systemd.inherited_listener() is None


def test_bind_listeners_localhost_binds_every_address_on_one_port():
    sockets = bind_listeners("localhost", 0, 16)
    try:
        ports = {s.getsockname()[1] for s in sockets}
        assert len(ports) == 1
        families = {s.family for s in sockets}
        assert socket.AF_INET in families
    finally:
        for s in sockets:
            s.close()


@pytest.mark.parametrize("total,workers,share", [(10000, 4, 2500), (10, 3, 4), (1, 8, 1)])
def test_connection_share(total, workers, share):
    assert connection_share(total, workers) == share


def test_respawn_queue_backs_off_for_children_that_keep_dying():
    from qproxy.daemon.respawn import METRICS_SLOT, RespawnQueue

    now = [100.0]
    queue = RespawnQueue(clock=lambda: now[0])
    assert queue.schedule(0, lived=3600) == 0.0  # a long life: at once
    assert [queue.schedule(1, lived=1) for _ in range(9)] == [
        0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert queue.due() == [0]
    queue.schedule(METRICS_SLOT, lived=1)
    queue.new_generation()  # old workers are not respawned, the metrics process is
    now[0] += 1
    assert queue.due() == [METRICS_SLOT] and queue.seconds_to_next() is None
