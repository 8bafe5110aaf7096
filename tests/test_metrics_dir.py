"""The metrics directory of a master killed with -9 is removed by the next master."""

from __future__ import annotations

import os
import subprocess
import sys

from qproxy.observability import multiprocess


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=30)
    return child.pid


def test_sweep_removes_only_directories_of_dead_masters(tmp_path) -> None:
    dead = tmp_path / f"qtls-metrics-{_dead_pid()}-abc"
    live = tmp_path / f"qtls-metrics-{os.getpid()}-abc"
    foreign = tmp_path / "qtls-metricsX-1-abc"
    other = tmp_path / "unrelated-1-abc"
    for directory in (dead, live, foreign, other):
        directory.mkdir()
        (directory / "counter_1.db").write_bytes(b"x")
    assert multiprocess.sweep_orphans(str(tmp_path)) == [str(dead)]
    assert not dead.exists()
    assert live.exists() and foreign.exists() and other.exists()


def test_prepare_names_the_directory_after_the_master_and_sweeps(tmp_path, monkeypatch) -> None:
    orphan = tmp_path / f"qtls-metrics-{_dead_pid()}-zz"
    orphan.mkdir()
    monkeypatch.setattr(multiprocess.tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv(multiprocess.ENV, raising=False)
    directory, created = multiprocess.prepare()
    try:
        assert created and os.path.basename(directory).startswith(f"qtls-metrics-{os.getpid()}-")
        assert not orphan.exists()
    finally:
        multiprocess.cleanup(directory, created)
        monkeypatch.delenv(multiprocess.ENV, raising=False)
