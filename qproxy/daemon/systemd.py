"""The two small systemd protocols a Type=notify service speaks: sd_notify and LISTEN_FDS.

Both are a few lines over a socket (see sd_notify(3), sd_listen_fds(3)); not worth a dependency.
"""

from __future__ import annotations

import os
import socket
import time

SD_LISTEN_FDS_START = 3


def notify(*states: str) -> bool:
    """Send 'READY=1', 'RELOADING=1', 'STOPPING=1', 'WATCHDOG=1', … to systemd, if it listens."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address)
            sock.sendall("\n".join(states).encode())
        except OSError:
            return False
    return True


def reloading() -> bool:
    # Type=notify-reload wants the monotonic time with RELOADING=1.
    return notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec), when systemd asked for them."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1_000_000 / 2


def inherited_listener() -> socket.socket | None:
    """The first socket passed by systemd socket activation, if it was passed to us."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    if int(os.environ.get("LISTEN_FDS", "0")) < 1:
        return None
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)  # not for our children
    sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    sock.setblocking(False)
    return sock
