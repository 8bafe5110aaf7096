"""The pid file and the status file in-process: atomic writes, ownership, stale files, and the
status document's rendering (no daemon; milliseconds)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from qproxy.daemon import control
from qproxy.daemon.pidfile import PidFile, PidFileBusy, PidFileError, read_pid
from qproxy.daemon.status import StatusBoard, read_status, status_path


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_status_path_sits_next_to_the_pid_file(tmp_path):
    assert status_path(tmp_path / "qtls-server.pid") == tmp_path / "qtls-server.status.json"
    assert status_path(tmp_path / "master") == tmp_path / "master.status.json"


def test_acquire_writes_this_pid_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "q.pid"
    with PidFile(path):
        assert read_pid(path) == os.getpid()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["q.pid"]
    assert not path.exists()


def test_a_live_master_keeps_its_pid_file(tmp_path):
    """A process whose command line runs qtls-server, alive: the file is its, not ours."""
    owner = subprocess.Popen(
        [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(30)",
         "/usr/local/bin/qtls-server"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None and owner.stdout.readline() == "up\n"  # exec'd
        path = tmp_path / "q.pid"
        path.write_text(f"{owner.pid}\n")
        with pytest.raises(PidFileBusy, match=f"belongs to qtls-server process {owner.pid}"):
            PidFile(path).acquire()
        assert read_pid(path) == owner.pid
    finally:
        owner.kill()
        owner.wait()


@pytest.mark.parametrize("content", ["{dead}\n", "garbage\n", "", "1" * 100])
def test_stale_or_garbage_pid_files_are_taken_over(tmp_path, content):
    path = tmp_path / "q.pid"
    path.write_text(content.format(dead=dead_pid()))
    PidFile(path).acquire()
    assert read_pid(path) == os.getpid()


def test_a_live_process_that_is_no_master_is_a_reused_pid(tmp_path):
    path = tmp_path / "q.pid"
    other = subprocess.Popen(["sleep", "30"])
    try:
        path.write_text(f"{other.pid}\n")
        PidFile(path).acquire()
        assert read_pid(path) == os.getpid()
    finally:
        other.kill()
        other.wait()


def test_release_leaves_a_successors_file(tmp_path):
    path = tmp_path / "q.pid"
    held = PidFile(path)
    held.acquire()
    path.write_text("1\n")  # another master took it over meanwhile
    held.release()
    assert path.read_text() == "1\n"


def test_an_unwritable_directory_is_a_clear_error(tmp_path):
    with pytest.raises(PidFileError, match="server.pid_file: cannot write .*No such file"):
        PidFile(tmp_path / "missing" / "q.pid").acquire()


def _publish(board: StatusBoard, **changes) -> None:
    fields = dict(state="running", generation=1, workers=[11, 12], draining={},
                  listeners=[{"name": "default", "address": "::1", "port": 8443, "mode": "http"}],
                  metrics=None)
    fields.update(changes)
    board.publish(**fields)


def test_status_is_written_only_when_it_changes(tmp_path):
    path = tmp_path / "q.status.json"
    board = StatusBoard(path, "server.json")
    _publish(board)
    first = path.stat().st_mtime_ns
    os.utime(path, ns=(0, 0))
    _publish(board)
    assert path.stat().st_mtime_ns == 0  # unchanged: not rewritten
    board.reload_done(False, 1, ["server.x: unknown key"])
    _publish(board)
    document = read_status(path)
    assert document["last_reload"]["count"] == 1
    assert document["last_reload"]["result"] == "failed"
    assert document["last_reload"]["errors"] == ["server.x: unknown key"]
    assert first


def test_no_pid_file_means_no_status_file(tmp_path):
    board = StatusBoard(None, "server.json")
    _publish(board)
    board.remove()
    assert list(tmp_path.iterdir()) == []


def test_format_status_shows_everything_an_operator_asks_for(tmp_path):
    path = tmp_path / "q.status.json"
    board = StatusBoard(path, "/etc/qtls/config/server.json")
    board.reload_done(True, 2)
    _publish(board, generation=2, draining={1: [7, 8]},
             metrics={"name": "metrics", "address": "127.0.0.1", "port": 9091, "mode": "metrics"})
    document = json.loads(path.read_text())
    text = control.format_status(document, now=document["started_at"] + 90061)
    assert f"pid {os.getpid()} (running)" in text
    assert "uptime:      1d 01:01:01" in text
    assert "generation:  2" in text
    assert "workers:     11 12" in text
    assert "draining:    generation 1: 7 8" in text
    assert "listener:    [::1]:8443 (http, default)" in text
    assert "metrics:     127.0.0.1:9091" in text
    assert "last reload: ok at " in text and "(generation 2)" in text


def test_pid_file_from_config_reads_only_that_key(tmp_path, monkeypatch):
    config = tmp_path / "server.json"
    monkeypatch.setenv("RUN_DIR", "/run/qtls")
    config.write_text(json.dumps({"server": {"pid_file": "${RUN_DIR}/q.pid", "bogus": 1}}))
    assert control.pid_file_from_config(str(config)) == "/run/qtls/q.pid"
    config.write_text(json.dumps({"server": {}}))
    with pytest.raises(control.NoPidFile):
        control.pid_file_from_config(str(config))


def test_a_fifo_as_pid_file_does_not_hang(tmp_path):
    fifo = tmp_path / "q.pid"
    os.mkfifo(fifo)
    with pytest.raises(PidFileError, match="not a regular file"):
        read_pid(fifo)
    with pytest.raises(PidFileError):  # exit 1 from the commands
        control.master_pid(str(fifo))
    status = tmp_path / "s.status.json"
    os.mkfifo(status)
    with pytest.raises(ValueError, match="not a regular file"):
        read_status(status)


def test_a_file_planted_under_the_temp_name_is_not_written_into(tmp_path):
    path = tmp_path / "q.pid"
    planted = tmp_path / f".q.pid.{os.getpid()}.tmp"
    target = tmp_path / "elsewhere"
    target.write_text("keep\n")
    os.link(target, planted)  # a hard link: writing through it would change `elsewhere`
    PidFile(path).acquire()
    assert target.read_text() == "keep\n"
    assert read_pid(path) == os.getpid()


def test_a_process_that_only_mentions_qproxy_is_no_master(tmp_path):
    """A pid reused by `tail -f /var/log/qproxy.log` (anything whose command line merely
    holds "qproxy") counted as a live master: `qproxy stop` signalled it, and a start refused
    to take the pid file."""
    other = subprocess.Popen(
        [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(30)",
         "/var/log/qproxy.log"], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout is not None and other.stdout.readline() == "up\n"
        path = tmp_path / "q.pid"
        path.write_text(f"{other.pid}\n")
        result = subprocess.run([sys.executable, "-m", "qproxy", "stop", "--pid-file",
                                 str(path)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 4, result.stderr
        assert f"process {other.pid} is not a qtls-server master" in result.stderr
        assert other.poll() is None
        PidFile(path).acquire()
        assert read_pid(path) == os.getpid()
    finally:
        other.kill()
        other.wait()


def test_a_worker_of_a_live_master_is_no_master(tmp_path):
    """A pid file naming one of the master's forks (a worker, the metrics process: they share
    its command line) is not the master's: `qproxy stop` would have stopped one worker."""
    code = ("import os, time\n"
            "child = os.fork()\n"
            "if child == 0:\n    time.sleep(30); os._exit(0)\n"
            "print(child, flush=True); time.sleep(30)\n")
    master = subprocess.Popen([sys.executable, "-c", code, "qtls-server"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert master.stdout is not None
        worker = int(master.stdout.readline())
        assert control.is_master_process(master.pid)
        assert not control.is_master_process(worker)
        path = tmp_path / "q.pid"
        path.write_text(f"{worker}\n")
        with pytest.raises(control.StalePidFile, match="not a qtls-server master"):
            control.master_pid(str(path))
    finally:
        master.kill()
        master.wait()
        if "worker" in locals():
            os.kill(worker, 9)


def test_a_master_under_a_wrapper_that_names_qtls_server_is_the_master(tmp_path):
    """`timeout 600 qtls-server ...`, `tini -- qtls-server ...`: the parent's command line
    names qtls-server too, but it is no fork of the master (a fork has the same one)."""
    code = "import time; print('up', flush=True); time.sleep(30)"
    wrapper = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys; subprocess.run(sys.argv[1:])",
         sys.executable, "-c", code, "qtls-server"], stdout=subprocess.PIPE, text=True)
    try:
        assert wrapper.stdout is not None and wrapper.stdout.readline() == "up\n"
        [master] = [int(p) for p in
                    open(f"/proc/{wrapper.pid}/task/{wrapper.pid}/children").read().split()]
        assert control.is_master_process(master)
        path = tmp_path / "q.pid"
        path.write_text(f"{master}\n")
        assert control.master_pid(str(path)) == master
    finally:
        for pid in [wrapper.pid] + ([master] if "master" in locals() else []):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        wrapper.wait()
