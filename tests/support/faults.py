"""Helpers for the fault suite: load in the background, a backend that can be killed and
restarted, and a look at the daemon's processes through /proc."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.harness import ROOT, child_env, http_request, tls_connect, wait_for_port


@dataclass
class LoadResult:
    ok: int = 0
    failures: list[str] = field(default_factory=list)


class Load:
    """`threads` clients, each making one request per new TLS connection until stopped."""

    def __init__(self, port: int, threads: int = 3, path: str = "/echo",
                 timeout: float = 10.0) -> None:
        self.port, self.path, self.timeout = port, path, timeout
        self.result = LoadResult()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.stop()

    def stop(self) -> LoadResult:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)
        return self.result

    def wait_for(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.result.ok < count and time.monotonic() < deadline:
            time.sleep(0.02)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn = tls_connect(self.port, timeout=self.timeout)
                try:
                    status = http_request(conn, "GET", self.path).status
                finally:
                    conn.close()
                outcome = None if status == 200 else f"status {status}"
            except Exception as exc:  # noqa: BLE001 - every failure is a lost request here
                outcome = f"{type(exc).__name__}: {exc}"
            with self._lock:
                if outcome is None:
                    self.result.ok += 1
                else:
                    self.result.failures.append(outcome)


class Backend:
    """tests/support/backend.py on a fixed port, to be killed and started again."""

    def __init__(self, markers: Path, port: int | None = None) -> None:
        self.port = port or free_tcp_port()
        self.markers = markers
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "Backend":
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.backend", str(self.port), str(self.markers)],
            cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL)
        wait_for_port(self.port)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out += [int(p) for p in text]
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_fds(pid: int) -> list[str]:
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return out


def wait_until(predicate, timeout: float = 10.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()
