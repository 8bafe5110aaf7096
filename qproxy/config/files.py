"""Reading the files a configuration names, without ever blocking or reading without bound.

A path in `server.json` may name anything: a FIFO (an `open()` for reading waits for a writer),
`/dev/zero` (a read never ends), a directory, a file of gigabytes. The master reads these files
on SIGHUP, in the code that must always come back to its signal loop, so every read goes
through here: opened with O_NONBLOCK (a FIFO's open returns at once), refused unless `fstat`
says it is a regular file, and read up to a bound.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile

from ..errors import ConfigError

PEM_LIMIT = 1024 * 1024
"""Bytes read at most from a certificate, key or CA bundle (a chain of ML-DSA-87 certificates
is ~25 KB; a CA bundle of every public root ~220 KB)."""
CONFIG_LIMIT = 4 * 1024 * 1024
SECRET_LIMIT = 64 * 1024

_KINDS = {
    stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
}


def usable_name(path: str, json_path: str, what: str) -> str:
    """The path itself must be something the OS can be asked about: no NUL byte, no lone
    surrogate (a JSON "\\ud800" escape), not empty."""
    if not path:
        raise ConfigError(json_path, f"the {what} path is empty")
    if "\0" in path:
        raise ConfigError(json_path, f"the {what} path {path!r} contains a NUL byte")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(json_path, f"the {what} path {path!r} is not valid Unicode "
                          "(a lone surrogate escape)") from None
    return path


def kind_of(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def read_regular(path: str, json_path: str, what: str, limit: int = PEM_LIMIT) -> bytes:
    """The bytes of `path` if it is a regular file of at most `limit` bytes, else ConfigError."""
    usable_name(path, json_path, what)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(json_path, f"cannot read {what} {path!r}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(json_path, f"{what} {path!r} is {kind_of(info.st_mode)}, not a "
                              "regular file")
        if info.st_size > limit:
            raise ConfigError(json_path, f"{what} {path!r} is {info.st_size} bytes; more than "
                              f"the {limit} this can be")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:  # it grew while we read it
            raise ConfigError(json_path, f"{what} {path!r} is more than {limit} bytes")
        return b"".join(chunks)
    except OSError as exc:
        raise ConfigError(json_path, f"cannot read {what} {path!r}: {exc.strerror}") from None
    finally:
        os.close(fd)


def check_regular(path: str, json_path: str, what: str) -> None:
    """`path` exists and is a regular file (a library or module loaded later by name)."""
    usable_name(path, json_path, what)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(json_path, f"{what} {path!r} does not exist") from None
    except OSError as exc:
        raise ConfigError(json_path, f"{what} {path!r}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(json_path, f"{what} {path!r} is {kind_of(info.st_mode)}, not a "
                          "regular file")


def check_log_file(path: str, json_path: str = "logging.file") -> None:
    """A log file the daemon can open for appending without blocking: an existing regular file
    or character device (/dev/stdout) it may write, or a new file in a writable directory.
    Nothing is created: a test of the configuration leaves no trace."""
    usable_name(path, json_path, "log file")
    try:
        info = os.stat(path)
    except FileNotFoundError:
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise ConfigError(json_path, f"the directory of the log file {path!r} does not "
                              "exist") from None
        if not os.access(directory, os.W_OK | os.X_OK):
            raise ConfigError(json_path, f"cannot create the log file {path!r}: the directory "
                              "is not writable") from None
        return
    except OSError as exc:
        raise ConfigError(json_path, f"log file {path!r}: {exc.strerror}") from None
    if not (stat.S_ISREG(info.st_mode) or stat.S_ISCHR(info.st_mode)):
        raise ConfigError(json_path, f"log file {path!r} is {kind_of(info.st_mode)}; give a "
                          "regular file")
    if not os.access(path, os.W_OK):
        raise ConfigError(json_path, f"log file {path!r} is not writable: "
                          f"{os.strerror(errno.EACCES)}")


def check_temp_dir(path: str, json_path: str = "server.client_body_temp_path") -> None:
    """A directory request bodies can be spooled into. Without this check a missing,
    read-only or non-directory path passed --test-config and a reload, and then every request
    body past client_body_buffer_size was answered 500."""
    usable_name(path, json_path, "temp directory")
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(json_path, f"the directory {path!r} does not exist") from None
    except OSError as exc:
        raise ConfigError(json_path, f"directory {path!r}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        kind = "a regular file" if stat.S_ISREG(info.st_mode) else kind_of(info.st_mode)
        raise ConfigError(json_path, f"{path!r} is {kind}; give a directory")
    # access() says what the mode bits allow (everything, for root); a read-only mount or /proc
    # allows it and still refuses a file. So make and drop one nameless temp file, exactly as
    # the body spool does.
    try:
        tempfile.TemporaryFile(dir=path).close()
    except OSError as exc:
        raise ConfigError(json_path, f"cannot create a temp file in {path!r}: "
                          f"{exc.strerror}") from None
