"""`server.pid_file`: the master's process id, for `qproxy reload|stop|quit|reopen-logs|status`.

Written atomically (a temp file in the same directory, then rename): a reader sees the old
file or the whole new one, never a half-written number. A live master that owns the file
already is a refusal, not an overwrite: two masters on one pid file would leave `qproxy stop`
signalling the wrong one. A pid file whose process is gone (or is no qtls-server: the pid was
reused after a crash) is stale and taken over. Removed on a clean exit, and only if it still
names this process.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import QProxyError

MAX_PID_FILE = 64
"""Bytes read from a pid file: a number and a newline; anything longer is not ours."""


class PidFileError(QProxyError):
    """The pid file cannot be taken, read or written; the message says which and why."""


class PidFileBusy(PidFileError):
    """Another live master owns the pid file."""


def read_small_file(path: str | os.PathLike[str], limit: int) -> bytes:
    """Up to `limit` bytes of a regular file, opened non-blocking: a FIFO named as the pid or
    status file must not hang `qproxy stop` or the master's start. OSError passes through."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise PidFileError(f"{os.fspath(path)!r} is not a regular file")
        chunks, size = [], 0
        while size < limit and (chunk := os.read(fd, limit - size)):
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_pid(path: str | os.PathLike[str]) -> int:
    """The pid in `path`. FileNotFoundError and PermissionError pass through (the caller says
    what they mean); a file that holds no pid is a PidFileError."""
    data = read_small_file(path, MAX_PID_FILE + 1)
    text = data.decode("ascii", "replace").strip()
    if len(data) > MAX_PID_FILE or not text.isdigit() or int(text) <= 0:
        raise PidFileError(f"{os.fspath(path)!r} holds no process id ({text[:20]!r})")
    return int(text)


def is_master_process(pid: int) -> bool:
    """Whether `pid` is alive and looks like a qtls-server master (not a reused pid).

    A process we may not signal (EPERM) is alive; its command line decides whether it is
    ours: it runs qtls-server (or `qproxy serve`), and its parent is not a process with the
    same command line (a worker, the metrics process and the OCSP fetcher are forks of the
    master; a wrapper such as `timeout 60 qtls-server` or `tini -- qtls-server` is not).
    Where /proc cannot tell (another user's process under hidepid), alive is enough."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        status = Path(f"/proc/{pid}/stat").read_bytes()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:
        return True
    if not runs_qtls_server(cmdline):
        return False
    # The parent pid is the second field after the command name in parentheses, which may
    # itself hold spaces and parentheses: split after the last ')'.
    fields = status[status.rfind(b")") + 1:].split()
    parent = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else 0
    try:
        return parent <= 1 or Path(f"/proc/{parent}/cmdline").read_bytes() != cmdline
    except OSError:
        return True


def runs_qtls_server(cmdline: bytes) -> bool:
    """A /proc cmdline (NUL-separated argv) of qtls-server: `[python] .../qtls-server ...`,
    `qproxy serve ...` or `python -m qproxy serve ...`; not merely one that mentions
    qproxy (`tail -f /var/log/qproxy.log`, an editor, `qproxy status` itself)."""
    argv = [os.path.basename(arg) for arg in cmdline.split(b"\0")]
    for index, arg in enumerate(argv):
        if arg == b"qtls-server":
            return True
        if arg == b"qproxy" and argv[index + 1:index + 2] == [b"serve"]:
            return True
    return False


def write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    """`data` into `path` through a temp file in the same directory and a rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # O_EXCL: never write into a file someone else left (or planted) under the temp name.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(tmp, flags, mode)
    except FileExistsError:
        os.unlink(tmp)  # ours from a crashed run with the same pid, or planted: not used
        fd = os.open(tmp, flags, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def check_location(path: str, json_path: str = "server.pid_file") -> None:
    """For --test-config and a start: the pid file's directory exists and takes a new file
    (the temp file renamed over it). Whether a live master owns it is not checked here: the
    running daemon does, whenever its configuration is tested before a reload."""
    from ..errors import ConfigError

    directory = Path(path).absolute().parent
    if Path(path).name in ("", ".", ".."):
        raise ConfigError(json_path, f"{path!r} names no file")
    if not directory.is_dir():
        raise ConfigError(json_path, f"the directory of {path!r} does not exist (create it, "
                          "e.g. /run/qtls with systemd's RuntimeDirectory=qtls)")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError(json_path, f"cannot create {path!r}: its directory is not "
                          "writable by this user")
    if Path(path).is_dir():
        raise ConfigError(json_path, f"{path!r} is a directory; give a file name")


class PidFile:
    """The master's hold on `server.pid_file`: `acquire()` at start, `release()` on exit."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.pid = os.getpid()

    def acquire(self) -> None:
        try:
            owner = read_pid(self.path)
        except FileNotFoundError:
            owner = None
        except PidFileError:
            owner = None  # garbage: no master owns it
        except OSError as exc:
            raise PidFileError(f"server.pid_file: cannot read {str(self.path)!r}: "
                               f"{exc.strerror}") from None
        if owner is not None and owner != self.pid and is_master_process(owner):
            raise PidFileBusy(
                f"server.pid_file: {str(self.path)!r} belongs to qtls-server process {owner}, "
                "which is running: stop it first (qproxy stop), or give this instance a pid "
                "file of its own")
        try:
            write_atomically(self.path, f"{self.pid}\n".encode())
        except OSError as exc:
            raise PidFileError(f"server.pid_file: cannot write {str(self.path)!r}: "
                               f"{exc.strerror}") from None

    def release(self) -> None:
        """Remove the file if it still names this process (a successor's file stays)."""
        if os.getpid() != self.pid:
            return  # a forked child leaving: the file is the master's
        try:
            if read_pid(self.path) == self.pid:
                self.path.unlink()
        except (OSError, PidFileError):
            pass

    def __enter__(self) -> "PidFile":
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
