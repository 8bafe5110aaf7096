"""`qproxy reload|stop|quit|reopen-logs|status`: nginx -s for qtls-server without systemd.

The commands only forward to `daemon.control`; this module turns its errors into the exit
codes scripts test (README, "Controlling a running daemon").
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable, TypeVar

import click

from .errors import QProxyError

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_CONFIG = "/etc/qtls/config/server.json"

# Exit codes of the control commands, for scripts (README, "Controlling a running daemon").
EXIT_NOT_RUNNING = 3  # the pid file does not exist
EXIT_STALE_PID = 4  # the pid file names a process that is gone
EXIT_NO_PERMISSION = 5  # the pid file or the master is not this user's to read or signal
EXIT_NO_PID_FILE = 6  # neither --pid-file nor server.pid_file
EXIT_NO_ANSWER = 7  # the master did not report in time (reload result, exit)


config_option = click.option(
    "--config", "-c", "config_path", default=DEFAULT_CONFIG, show_default=True,
    type=click.Path(dir_okay=False), help="server.json naming server.pid_file")


def exit_code(error: QProxyError) -> int:
    from .daemon import control

    codes = ((control.NotRunning, EXIT_NOT_RUNNING), (control.StalePidFile, EXIT_STALE_PID),
             (control.NoPermission, EXIT_NO_PERMISSION), (control.NoPidFile, EXIT_NO_PID_FILE),
             (control.NoAnswer, EXIT_NO_ANSWER))
    return next((code for kind, code in codes if isinstance(error, kind)), 1)


def _control_errors(func: F) -> F:
    """The control errors as one line on stderr and the exit code scripts can test."""
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except QProxyError as exc:
            click.echo(f"qproxy: {exc}", err=True)
            sys.exit(exit_code(exc))
    return wrapper  # type: ignore[return-value]


def _pid_file(config_path: str, pid_file: str | None) -> str:
    from .daemon import control

    return pid_file or control.pid_file_from_config(config_path)


pid_file_option = click.option(
    "--pid-file", type=click.Path(dir_okay=False),
    help="The master's pid file (default: server.pid_file of --config)")


def _signal_command(name: str, summary: str) -> click.Command:
    @click.command(name, help=summary)
    @config_option
    @pid_file_option
    @click.option("--wait", "wait_s", type=click.FloatRange(min=0), default=None,
                  metavar="SECONDS",
                  help="Wait up to SECONDS for the master to exit (exit 7 if it has not)."
                  if name in ("stop", "quit") else "Not used by this command.",
                  hidden=name not in ("stop", "quit"))
    @_control_errors
    def command(config_path: str, pid_file: str | None, wait_s: float | None) -> None:
        from .daemon import control

        path = _pid_file(config_path, pid_file)
        pid = control.master_pid(path)
        control.send(pid, control.SIGNALS[name])
        if wait_s is not None and not control.wait_exit(pid, wait_s):
            raise control.NoAnswer(f"qtls-server (pid {pid}) is still running after "
                                   f"{wait_s:g} s")
        click.echo(f"qproxy: sent {control.SIGNALS[name].name} to qtls-server (pid {pid})")
    return command


stop_command = _signal_command(
    "stop", "Fast stop (SIGINT): close the listeners and cut connections in "
            "flight after 1 s. Exit 0, or 3 not running, 4 stale pid file, 5 "
            "permission denied, 6 no pid file configured, 7 --wait timed out.")
quit_command = _signal_command(
    "quit", "Graceful stop (SIGTERM, as systemctl stop): stop accepting, let "
            "requests in flight finish (server.shutdown_timeout). Exit codes as "
            "for stop.")
reopen_logs_command = _signal_command(
    "reopen-logs", "Every process reopens its log file (SIGUSR1), after "
                   "logrotate moved it. Exit codes as for stop.")


@click.command("reload")
@config_option
@pid_file_option
@click.option("--timeout", default=60.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds to wait for the master to report the reload's result")
@_control_errors
def reload_command(config_path: str, pid_file: str | None, timeout: float) -> None:
    """Re-read the configuration and certificates (SIGHUP) and wait for the result: exit 0 when
    the new generation serves, 1 when the master refused the new configuration and keeps the
    old one (the problems are printed), 7 when it did not answer in time; 3-6 as for stop."""
    from .daemon import control

    path = _pid_file(config_path, pid_file)
    outcome = control.reload(path, timeout)
    click.echo(f"qproxy: reloaded: generation {outcome.generation} serving "
               f"({outcome.seconds:.1f} s)")


@click.command("status")
@config_option
@pid_file_option
@click.option("--json", "as_json", is_flag=True, help="Print the master's status document")
@_control_errors
def status_command(config_path: str, pid_file: str | None, as_json: bool) -> None:
    """The running master as it reports itself: pid, workers, generation, listeners, uptime,
    the last reload's result. Exit 0 running; 3-7 as for stop (7: no status published yet)."""
    import json

    from .daemon import control

    document = control.current_status(_pid_file(config_path, pid_file))
    click.echo(json.dumps(document, indent=2) if as_json else control.format_status(document))


CONTROL_COMMANDS = (reload_command, stop_command, quit_command, reopen_logs_command,
                    status_command)
