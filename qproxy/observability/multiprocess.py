"""Where worker processes keep their metric values for the master to sum.

prometheus-client picks its value storage when it is first imported, so the directory must be
in the environment before that; this module therefore does not import prometheus_client.
"""

from __future__ import annotations

import os
import shutil
import tempfile

ENV = "PROMETHEUS_MULTIPROC_DIR"


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
    directory = tempfile.mkdtemp(prefix="qtls-metrics-")
    os.environ[ENV] = directory
    return directory, True


def cleanup(directory: str, created: bool) -> None:
    if created:
        shutil.rmtree(directory, ignore_errors=True)
