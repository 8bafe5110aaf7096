"""A small tmpfs mounted for a test: a disk that really fills up (the tests run as root)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def small_tmpfs(directory: Path, size: str = "256k") -> Iterator[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                           str(directory)], capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        raise RuntimeError(f"cannot mount a tmpfs (tests need root): {done.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], capture_output=True, timeout=10)


def fill(directory: Path) -> Path:
    """Fill the file system of `directory`; returns the filler to delete for space."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        block = b"\0" * 4096
        while True:
            try:
                if os.write(fd, block) < len(block):
                    break
            except OSError:
                break
    finally:
        os.close(fd)
    return filler
