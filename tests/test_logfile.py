"""The log file when its disk fills and empties again, and on SIGUSR1's reopen; on a real
(small tmpfs) file system, through `configure_logging` as the daemon uses it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from qproxy.config.model import LoggingSection
from qproxy.observability.logging import configure_logging, get_logger, reopen_log_files
from tests.support.tmpfs import fill, small_tmpfs


@pytest.fixture
def disk(tmp_path: Path):
    with small_tmpfs(tmp_path / "disk") as mounted:
        yield mounted
    configure_logging(LoggingSection(console=False))


def lines_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]  # every line whole


def test_full_disk_costs_one_stderr_line_and_no_torn_line(disk: Path, capfd):
    log_file = disk / "qtls.log"
    configure_logging(LoggingSection(file=str(log_file), console=False))
    log = get_logger("test")
    log.info("before", n=0)
    filler = fill(disk)
    for n in range(500):
        log.info("while full", n=n, padding="x" * 300)
    err = capfd.readouterr().err
    assert "Logging error" not in err and "Traceback" not in err
    reports = [json.loads(line) for line in err.splitlines()]
    assert [r["event"] for r in reports] == ["log write failed"]
    assert reports[0]["file"] == str(log_file)
    lines_of(log_file)  # whatever went in went in whole

    filler.unlink()
    log.info("after", n=1)
    entries = lines_of(log_file)
    assert entries[0]["event"] == "before" and entries[-1]["event"] == "after"
    lost = [e for e in entries if e["event"] == "log records lost"]
    written = [e for e in entries if e["event"] == "while full"]
    assert lost and sum(e["records_lost"] for e in lost) + len(written) == 500
    assert capfd.readouterr().err == ""  # within the minute: nothing more on stderr


def test_reopen_lets_go_of_a_deleted_file(tmp_path: Path):
    log_file = tmp_path / "qtls.log"
    configure_logging(LoggingSection(file=str(log_file), console=False))
    get_logger("test").info("first")
    log_file.rename(tmp_path / "qtls.log.1")
    (tmp_path / "qtls.log.1").unlink()  # deleted while still open: its space is held
    reopen_log_files()
    held = [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
            if os.path.islink(f"/proc/self/fd/{fd}")]
    assert not any("qtls.log.1" in target for target in held)
    get_logger("test").info("second")
    assert [e["event"] for e in lines_of(log_file)] == ["second"]
    configure_logging(LoggingSection(console=False))


def test_failures_are_reported_once_a_minute_with_a_count(tmp_path: Path):
    from qproxy.observability.logfile import LineFileHandler

    now = [0.0]
    reports: list[dict] = []
    handler = LineFileHandler(str(tmp_path / "x.log"), report=reports.append, clock=lambda: now[0])
    for _ in range(3):
        handler._failed("No space left on device")
    now[0] = 61.0
    handler._failed("No space left on device")
    assert [r["records_lost"] for r in reports] == [1, 3]
    handler.close()
