"""The master's status file: what `qproxy status` prints and what `qproxy reload` waits on.

A small JSON document next to the pid file (`qtls-server.pid` -> `qtls-server.status.json`),
rewritten atomically by the master whenever what it says changes: its pid, start time, state,
generation, worker pids (current and draining), listeners, and the last reload's result.

Why a file and not a control socket: the master runs no event loop, only a `select` on its
signal pipe, and must never block on a slow or stuck client; a file written with
temp + rename costs it nothing, needs no protocol, and whoever may read the pid file may read
the status next to it (file permissions are the access control). The price is that a master
killed with SIGKILL leaves a stale file behind: readers check the pid is alive.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from .pidfile import PidFileError, read_small_file, write_atomically

FORMAT = 1
MAX_STATUS_FILE = 1 << 20


def status_path(pid_file: str | os.PathLike[str]) -> Path:
    """`/run/qtls/qtls-server.pid` -> `/run/qtls/qtls-server.status.json`."""
    path = Path(pid_file)
    stem = path.stem if path.suffix == ".pid" else path.name
    return path.with_name(f"{stem}.status.json")


@dataclass(frozen=True)
class ReloadRecord:
    """One SIGHUP's outcome. `count` grows by one per reload, so a waiter can tell its own."""

    count: int
    result: str  # "ok" | "failed"
    at: float  # wall-clock seconds (time.time())
    generation: int
    errors: tuple[str, ...] = ()


def describe_listener(sock: socket.socket, mode: str = "http", name: str = "default") -> dict[str, Any]:
    host, port = sock.getsockname()[:2]
    return {"name": name, "address": host, "port": port, "mode": mode}


class StatusBoard:
    """What the master publishes. With no path (no pid file configured) it records the last
    reload for nothing and writes nothing."""

    def __init__(self, path: Path | None, config_path: str) -> None:
        self.path = path
        self.config_path = config_path
        self.pid = os.getpid()
        self.started_at = time.time()
        self.last_reload: ReloadRecord | None = None
        self._written: dict[str, Any] | None = None

    def reload_done(self, ok: bool, generation: int, errors: list[str] | tuple[str, ...] = ()) -> None:
        count = self.last_reload.count + 1 if self.last_reload else 1
        self.last_reload = ReloadRecord(count, "ok" if ok else "failed", time.time(), generation,
                                        tuple(errors))

    def publish(self, *, state: str, generation: int, workers: list[int],
                draining: dict[int, list[int]], listeners: list[dict[str, Any]],
                metrics: dict[str, Any] | None) -> None:
        """Write the status if it differs from what was written last. Raises OSError (the
        master logs it and goes on serving)."""
        if self.path is None:
            return
        document = {
            "format": FORMAT, "pid": self.pid, "version": __version__,
            "config": self.config_path, "state": state, "started_at": self.started_at,
            "generation": generation, "workers": workers,
            "draining": [{"generation": number, "workers": pids}
                         for number, pids in sorted(draining.items())],
            "listeners": listeners, "metrics": metrics,
            "last_reload": asdict(self.last_reload) if self.last_reload else None,
        }
        if document == self._written:
            return
        write_atomically(self.path, (json.dumps(document, indent=1) + "\n").encode())
        self._written = document

    def remove(self) -> None:
        if self.path is None or os.getpid() != self.pid:
            return
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def read_status(path: Path) -> dict[str, Any]:
    """The status document; OSError passes through, a damaged file is a ValueError."""
    try:
        data = read_small_file(path, MAX_STATUS_FILE)
    except PidFileError as exc:
        raise ValueError(str(exc)) from None
    document = json.loads(data)
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a qtls-server status file")
    return document
