"""`make run` (scripts/run-dev.sh) for real: it honours the operator's QTLS_DEV_DIR, and a kill
of the script (not only Ctrl-C to the whole group) stops Mosquitto, the backend and
qtls-server. It uses the fixed development ports: skipped when any of them is taken."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.harness import ROOT

DEV_PORTS = (8443, 8883, 9091, 5000, 1884)


def _taken(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.skipif(shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists(),
                    reason="mosquitto is not installed")
def test_run_dev_uses_the_given_dev_dir_and_a_kill_stops_everything(tmp_path):
    if any(_taken(port) for port in DEV_PORTS):
        pytest.skip("a development port is in use (another make run?)")
    env = {**os.environ, "QTLS_DEV_DIR": str(tmp_path),
           "VENV": str(Path(sys.executable).parent.parent)}
    script = subprocess.Popen([str(ROOT / "scripts" / "run-dev.sh")], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    pgid = script.pid  # its own session: the script and everything it starts
    try:
        deadline = time.monotonic() + 90
        seen = []
        assert script.stdout is not None
        while time.monotonic() < deadline:
            line = script.stdout.readline()
            if not line:
                break
            seen.append(line)
            if '"event": "listening"' in line:
                break
        assert any('"event": "listening"' in line for line in seen), "".join(seen[-20:])
        assert (tmp_path / "pki" / "ca-bundle.pem").exists()
        assert f"export QTLS_DEV_DIR={tmp_path}" in "".join(seen)
        script.send_signal(signal.SIGTERM)
        script.wait(timeout=30)
        deadline = time.monotonic() + 20
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = subprocess.run(["ps", "-o", "pid,cmd", "-g", str(pgid)], capture_output=True,
                              text=True).stdout
        assert not _group_alive(pgid), f"still running after the script was killed:\n{left}"
        assert not any(_taken(port) for port in DEV_PORTS)
    finally:
        if _group_alive(pgid):
            os.killpg(pgid, signal.SIGKILL)
        script.wait(timeout=10)
