"""Where worker processes keep their metric values for the master to sum.

prometheus-client picks its value storage when it is first imported, so the directory must be
in the environment before that; this module therefore does not import prometheus_client.
"""

from __future__ import annotations

import os
import shutil
import tempfile

ENV = "PROMETHEUS_MULTIPROC_DIR"
_PREFIX = "qtls-metrics-"


def prepare() -> tuple[str, bool]:
    """Use the operator's directory if set (emptied), else a private temporary one.

    Returns the directory and whether qproxy created it (and should remove it at exit)."""
    given = os.environ.get(ENV)
    if given:
        os.makedirs(given, mode=0o700, exist_ok=True)
        for name in os.listdir(given):
            if name.endswith(".db"):
                os.unlink(os.path.join(given, name))
        return given, False
    sweep_orphans(tempfile.gettempdir())
    directory = tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-")
    os.environ[ENV] = directory
    return directory, True


def sweep_orphans(parent: str) -> list[str]:
    """Remove the directories of masters that died without cleaning up (kill -9, OOM killer):
    ours, named after a process id that no longer runs. A directory of a live process, of
    another user, or named otherwise is left alone. Returns what was removed."""
    removed = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for name in names:
        pid_text = name[len(_PREFIX):].partition("-")[0]
        if not name.startswith(_PREFIX) or not pid_text.isdigit():
            continue
        path = os.path.join(parent, name)
        try:
            if os.lstat(path).st_uid != os.geteuid() or _alive(int(pid_text)):
                continue
        except OSError:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's process, or a number no process can have: keep it
    return True


def cleanup(directory: str, created: bool) -> None:
    if created:
        shutil.rmtree(directory, ignore_errors=True)
