"""`qproxy reload|stop|quit|reopen-logs|status`: the master found by its pid file, told by a
signal, and (for reload and status) read back from its status file. nginx's `-s`, without
systemd.

| command     | signal  | what the master does                                               |
|-------------|---------|--------------------------------------------------------------------|
| reload      | SIGHUP  | new generation from the re-read configuration; old one drains     |
| stop        | SIGINT  | fast: listeners closed, workers killed after 1 s (requests cut)    |
| quit        | SIGTERM | graceful: stop accepting, drain up to server.shutdown_timeout      |
| reopen-logs | SIGUSR1 | every process reopens its log file                                 |

Library code raises the types below; the command line maps each to its exit code.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.files import CONFIG_LIMIT, read_regular
from ..config.load import decode_json, expand_env
from ..errors import ConfigError, QProxyError
from .pidfile import PidFileError, is_master_process, read_pid
from .status import read_status, status_path

SIGNALS = {
    "reload": signal.SIGHUP,
    "stop": signal.SIGINT,
    "quit": signal.SIGTERM,
    "reopen-logs": signal.SIGUSR1,
}
POLL_INTERVAL = 0.05


class ControlError(QProxyError):
    """A control command could not reach or instruct the master."""


class NoPidFile(ControlError):
    """Neither --pid-file nor server.pid_file names a pid file."""


class NotRunning(ControlError):
    """The pid file does not exist: no master is running with it."""


class StalePidFile(ControlError):
    """The pid file names a process that is gone (or is no qtls-server)."""


class NoPermission(ControlError):
    """The pid file cannot be read, or the master cannot be signalled, by this user."""


class ReloadFailed(ControlError):
    """The master kept its previous configuration."""


class NoAnswer(ControlError):
    """The master did not publish the outcome in time."""


def pid_file_from_config(config_path: str) -> str:
    """`server.pid_file` of the configuration, read leniently: stopping a daemon must work
    even when the file on disk has since been broken by an edit."""
    try:
        document = decode_json(read_regular(config_path, "", "the configuration",
                                            CONFIG_LIMIT))
    except ConfigError as exc:
        raise ConfigError("", f"{config_path}: {exc} (or give --pid-file)") from None
    server = document.get("server") if isinstance(document, dict) else None
    value = server.get("pid_file") if isinstance(server, dict) else None
    if value is None:
        raise NoPidFile(f"{config_path} sets no server.pid_file (set it, or give --pid-file)")
    if not isinstance(value, str) or not value:
        raise ConfigError("server.pid_file", f"{config_path}: must be a path")
    return str(expand_env(value, dict(os.environ), ("server", "pid_file")))


def master_pid(pid_file: str) -> int:
    """The pid of the live master that owns `pid_file`."""
    try:
        pid = read_pid(pid_file)
    except FileNotFoundError:
        raise NotRunning(f"qtls-server is not running (no pid file {pid_file!r})") from None
    except PermissionError:
        raise NoPermission(f"cannot read the pid file {pid_file!r}: permission denied (run "
                           "as the user that runs qtls-server, or root)") from None
    except IsADirectoryError:
        raise PidFileError(f"{pid_file!r} is a directory, not a pid file") from None
    except OSError as exc:
        raise PidFileError(f"cannot read the pid file {pid_file!r}: {exc.strerror}") from None
    if not is_master_process(pid):
        raise StalePidFile(f"stale pid file {pid_file!r}: " + (
            f"process {pid} is not a qtls-server master (the pid was reused after "
            "qtls-server ended without removing the file)" if _alive(pid) else
            f"process {pid} is not running (qtls-server ended without removing it)"))
    return pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def send(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        raise NotRunning(f"qtls-server (pid {pid}) has exited") from None
    except PermissionError:
        raise NoPermission(f"not allowed to signal qtls-server (pid {pid}): run as the user "
                           "that runs it, or root") from None


def current_status(pid_file: str) -> dict[str, Any]:
    """The master's status document, checked to belong to the running master."""
    pid = master_pid(pid_file)
    path = status_path(pid_file)
    try:
        document = read_status(path)
    except FileNotFoundError:
        raise NoAnswer(f"qtls-server (pid {pid}) has published no status yet ({str(path)!r}): "
                       "it is still starting, or predates status files") from None
    except PermissionError:
        raise NoPermission(f"cannot read {str(path)!r}: permission denied") from None
    except (OSError, ValueError) as exc:
        raise ControlError(f"cannot read the status file {str(path)!r}: {exc}") from None
    if document.get("pid") != pid:
        raise NoAnswer(f"the status file {str(path)!r} is from process {document.get('pid')}, "
                       f"not the running master {pid}: it is still starting")
    return document


@dataclass(frozen=True)
class ReloadOutcome:
    generation: int
    seconds: float


def _reload_count(document: dict[str, Any] | None) -> int:
    last = (document or {}).get("last_reload") or {}
    return int(last.get("count", 0))


def reload(pid_file: str, timeout: float) -> ReloadOutcome:
    """SIGHUP, then wait (bounded) until the master records this reload's result, as
    `systemctl reload` waits for READY=1 with Type=notify."""
    pid = master_pid(pid_file)
    try:
        before = current_status(pid_file)
    except NoAnswer:
        before = None
    started = time.monotonic()
    send(pid, signal.SIGHUP)
    deadline = started + timeout
    while time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL)
        try:
            now = current_status(pid_file)
        except NoAnswer:
            continue
        if _reload_count(now) > _reload_count(before):
            last = now["last_reload"]
            if last["result"] != "ok":
                errors = "\n".join(f"  {e}" for e in last.get("errors") or ())
                raise ReloadFailed("reload failed; still serving generation "
                                   f"{now['generation']} with the previous configuration"
                                   + (f"\n{errors}" if errors else ""))
            return ReloadOutcome(int(last["generation"]), time.monotonic() - started)
    raise NoAnswer(f"sent SIGHUP to qtls-server (pid {pid}) but it reported no reload result "
                   f"within {timeout:g} s (its log says why)")


def wait_exit(pid: int, timeout: float) -> bool:
    """Whether process `pid` ended within `timeout` (polled: it is not our child)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_master_process(pid):
            return True
        time.sleep(POLL_INTERVAL)
    return not is_master_process(pid)


def format_status(document: dict[str, Any], now: float | None = None) -> str:
    now = time.time() if now is None else now
    uptime = max(0, int(now - float(document.get("started_at", now))))
    lines = [
        f"master:      pid {document['pid']} ({document.get('state', '?')}), qproxy "
        f"{document.get('version', '?')}",
        f"config:      {document.get('config', '?')}",
        f"uptime:      {_duration(uptime)}",
        f"generation:  {document['generation']}",
        f"workers:     {' '.join(str(p) for p in document.get('workers', [])) or 'none'}",
    ]
    for old in document.get("draining", []):
        lines.append(f"draining:    generation {old['generation']}: "
                     + " ".join(str(p) for p in old["workers"]))
    for listener in document.get("listeners", []):
        lines.append(f"listener:    {_address(listener)} ({listener.get('mode', 'http')}, "
                     f"{listener.get('name', 'default')})")
    metrics = document.get("metrics")
    if metrics:
        lines.append(f"metrics:     {_address(metrics)}")
    last = document.get("last_reload")
    if last:
        when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(last["at"]))
        lines.append(f"last reload: {last['result']} at {when} (generation {last['generation']})")
        lines += [f"  {e}" for e in last.get("errors") or ()]
    else:
        lines.append("last reload: none since start")
    return "\n".join(lines)


def _address(listener: dict[str, Any]) -> str:
    host = listener["address"]
    return f"[{host}]:{listener['port']}" if ":" in host else f"{host}:{listener['port']}"


def _duration(seconds: int) -> str:
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}d {text}" if days else text
