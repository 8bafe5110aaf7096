"""The CI skip policy (tests/conftest.py) and .ci/run's guards, run on throw-away test files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.harness import ROOT, child_env

SAMPLE = '''
import pytest

def test_runs():
    pass

def test_tool_missing():
    pytest.skip("frobnicator is not installed")

@pytest.mark.ci_may_skip(reason="the CPU architecture")
def test_other_architecture():
    pytest.skip("x86-64 only")

@pytest.mark.skipif(True, reason="curl is installed by make test")
def test_marked_skipif():
    pass

@pytest.mark.xfail(strict=True, reason="a known bug")
def test_known_bug():
    assert False
'''


def _pytest(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    test_file = tmp_path / "test_sample.py"
    test_file.write_text(SAMPLE)
    env = child_env()
    env.pop("CI", None)
    if ci is not None:
        env["CI"] = ci
    # The repository's conftest as a plugin, on a file outside the repository's tests.
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider",
         "-q", "-rA", "--rootdir", str(tmp_path), str(test_file)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_outside_ci_skips_are_skips(tmp_path):
    result = _pytest(tmp_path, None)
    assert result.returncode == 0, result.stdout
    assert "1 passed, 3 skipped, 1 xfailed" in result.stdout


def test_under_ci_a_skip_fails_unless_marked_ci_may_skip(tmp_path):
    result = _pytest(tmp_path, "true")
    assert result.returncode == 1, result.stdout
    failed = [line for line in result.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    assert any("test_tool_missing" in line for line in failed)
    assert any("test_marked_skipif" in line for line in failed)
    assert not any("test_other_architecture" in line or "test_known_bug" in line
                   for line in failed)
    assert "frobnicator is not installed" in result.stdout


def test_packaging_tools_script_fails_off_debian_without_the_tools(tmp_path):
    """No dpkg/apt on PATH (as on Fedora or Arch): it cannot install, so it must not say OK."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "cat", "grep", "dirname"):
        os.symlink(shutil.which(tool), bin_dir / tool)
    result = subprocess.run(["bash", str(ROOT / "scripts" / "install-packaging-tools.sh")],
                            env={"PATH": str(bin_dir)}, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1
    assert "not a Debian system" in result.stderr and "shellcheck" in result.stderr
