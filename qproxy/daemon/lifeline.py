"""Children that do not outlive the master.

A worker left without its master keeps the port (a new instance cannot bind), is never
respawned and, once the metrics directory is gone, fails every new connection. Linux's
parent-death signal ends it instead: the kernel sends SIGTERM when the master exits, however
it exits, and the worker drains as on an ordinary stop.
"""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int, signum: int = signal.SIGTERM) -> bool:
    """Ask for `signum` when the parent dies; False where prctl is unavailable.

    The parent may have died between fork and this call, which prctl would never report:
    checked afterwards, and the signal sent to ourselves."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        armed = libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        armed = False
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signum)
    return armed
