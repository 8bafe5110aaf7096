"""The log file handler: whole lines or nothing, and a full disk that costs one line a minute.

The standard library's file handlers print a ~3 KB "--- Logging error ---" traceback to stderr
for every record they fail to write (141 MB in 20 s with the disk full, all of it to journald),
and a write cut short by ENOSPC leaves half a JSON line that the next record is glued to.
Here each record is one `write()` on an O_APPEND descriptor (several processes share the file);
a short write is cut back off; failures are counted and reported to stderr at most once a
minute; when writing works again, the file gets one line saying how many records were lost.
Moved, deleted or rotated files are followed, and SIGUSR1 reopens in every process.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from datetime import datetime, timezone
from typing import Callable

REPORT_INTERVAL = 60.0


def _stderr_line(fields: dict[str, object]) -> None:
    try:
        os.write(sys.stderr.fileno(), (json.dumps(fields) + "\n").encode())
    except (OSError, ValueError):
        pass  # nowhere left to say it


class LineFileHandler(logging.Handler):
    def __init__(self, path: str, report: Callable[[dict[str, object]], None] = _stderr_line,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.path = path
        self._report = report
        self._clock = clock
        self._fd = self._open()
        self.lost = 0
        """Records lost since writing last worked (the file is told when it works again)."""
        self._unreported = 0
        """Records lost since stderr was last told."""
        self._last_report: float | None = None

    def _open(self) -> int:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        info = os.fstat(fd)
        self._identity = (info.st_dev, info.st_ino)
        return fd

    # -- writing -----------------------------------------------------------------------------
    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = (self.format(record) + "\n").encode("utf-8", "backslashreplace")
        except Exception:  # noqa: BLE001 - a record that cannot be formatted is a lost record
            self._failed("the record could not be formatted")
            return
        self._follow_rotation()
        if self.lost:
            notice = {"event": "log records lost", "level": "error", "records_lost": self.lost,
                      "pid": os.getpid(), "timestamp": _now()}
            if not self._write((json.dumps(notice) + "\n").encode()):
                return
            self._recovered()
        self._write(line)

    def _write(self, line: bytes) -> bool:
        """One line, whole or not at all; False (and counted) when it did not go in."""
        try:
            written = os.write(self._fd, line)
        except OSError as exc:
            self._failed(exc.strerror or str(exc))
            return False
        if written < len(line):
            self._cut_back(written)
            self._failed("No space left on device (short write)")
            return False
        return True

    def _cut_back(self, written: int) -> None:
        """Remove the start of a line that did not fit. Another process may have appended
        after it in the meantime (only if space came back in between): then it stays."""
        try:
            end = os.lseek(self._fd, 0, os.SEEK_CUR)
            if os.fstat(self._fd).st_size == end:
                os.ftruncate(self._fd, end - written)
        except OSError:
            pass

    def _failed(self, reason: str) -> None:
        self.lost += 1
        self._unreported += 1
        self._complain(reason)

    def _complain(self, reason: str) -> None:
        """To stderr, at most once per REPORT_INTERVAL."""
        now = self._clock()
        if self._last_report is not None and now - self._last_report < REPORT_INTERVAL:
            return
        self._last_report = now
        self._report({"event": "log write failed", "level": "error", "file": self.path,
                      "error": reason, "records_lost": self._unreported,
                      "next_report_in_s": REPORT_INTERVAL, "pid": os.getpid(),
                      "timestamp": _now()})
        self._unreported = 0

    def _recovered(self) -> None:
        # The file now says how many records it misses. stderr hears nothing: on a disk with a
        # few bytes left, small lines fit and large ones do not, and a report per recovery
        # would undo the once-a-minute bound; failures after this are still counted for it.
        self.lost = 0

    # -- reopening ----------------------------------------------------------------------------
    def _follow_rotation(self) -> None:
        """A file moved away (by the master's size rotation or logrotate): write to a new
        one of the configured name, as WatchedFileHandler does."""
        try:
            on_disk = os.stat(self.path)
        except OSError:
            self.reopen()
            return
        if (on_disk.st_dev, on_disk.st_ino) != self._identity:
            self.reopen()

    def reopen(self) -> None:
        """SIGUSR1: open the path again; the old descriptor (and a deleted file's space) goes."""
        with self.lock:  # type: ignore[union-attr]
            try:
                fd = self._open()
            except OSError as exc:
                self._complain(f"cannot reopen: {exc.strerror}")  # the old file still works
                return
            old, self._fd = self._fd, fd
            os.close(old)

    def close(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
        super().close()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()
