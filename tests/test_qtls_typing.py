"""qproxy.qtls is typed (py.typed): mypy --strict finds nothing, and the marker ships."""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_py_typed_marker_is_package_data():
    assert resources.files("qproxy.qtls").joinpath("py.typed").is_file()
    assert '"qproxy.qtls" = ["py.typed"]' in (ROOT / "pyproject.toml").read_text()


@pytest.mark.skipif(shutil.which("mypy", path=str(Path(sys.executable).parent)) is None,
                    reason="mypy comes with the test extra")
def test_mypy_strict_is_clean():
    out = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
                          "--ignore-missing-imports", "--no-incremental", "qproxy/qtls"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
