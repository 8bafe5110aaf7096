"""Man pages, shell completion, `qproxy hsm ... --help`, and what `make install` / `make run`
install (issue 15, points 7, 8 and 10), run as a user would."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import click
import pytest

from qproxy.cli import main

from .support.harness import ROOT, child_env

MAN = ROOT / "man"
QPROXY = Path(sys.executable).parent / "qproxy"


def run(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("env", child_env())
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120, cwd=ROOT,
                          **kwargs)


def test_man_pages_match_the_commands():
    result = run(sys.executable, "scripts/make-man.py", "--check")
    assert result.returncode == 0, result.stderr


def _command_paths(group: click.Group, ctx: click.Context, prefix: str) -> list[str]:
    paths = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        paths.append(f"{prefix} {name}")
        if isinstance(command, click.Group):
            sub = click.Context(command, info_name=name, parent=ctx)
            paths += _command_paths(command, sub, f"{prefix} {name}")
    return paths


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff renders man pages")
def test_man_pages_render_cleanly_and_name_every_command():
    for page in ("qtls-server.8", "qproxy.1"):
        result = run("groff", "-man", "-ww", "-Tutf8", str(MAN / page))
        assert result.returncode == 0 and result.stderr == "", result.stderr
    text = run("groff", "-man", "-Tascii", "-P-cbou", str(MAN / "qproxy.1")).stdout
    for path in _command_paths(main, click.Context(main, info_name="qproxy"), "qproxy"):
        assert path in text, f"{path} is missing from qproxy(1)"
    assert "_QPROXY_COMPLETE=bash_source qproxy" in text
    server = run("groff", "-man", "-Tascii", "-P-cbou", str(MAN / "qtls-server.8")).stdout
    for option in ("--test-config", "--dump-config", "--version", "SIGHUP", "SIGQUIT"):
        assert option in server


def test_bash_completion_as_the_readme_says():
    readme = (ROOT / "README.md").read_text()
    assert 'eval "$(_QPROXY_COMPLETE=bash_source qproxy)"' in readme
    result = run(str(QPROXY), env={**child_env(), "_QPROXY_COMPLETE": "bash_source"})
    assert result.returncode == 0
    assert "complete -o nosort -F _qproxy_completion qproxy" in result.stdout
    words = run(str(QPROXY), env={**child_env(), "_QPROXY_COMPLETE": "bash_complete",
                                  "COMP_WORDS": "qproxy re", "COMP_CWORD": "1"})
    assert "plain,reload" in words.stdout and "plain,reopen-logs" in words.stdout


def test_hsm_help_needs_no_library():
    env = {k: v for k, v in child_env().items() if k != "QTLS_PKCS11_LIBRARY"}
    for command in ("status", "keygen", "csr", "import-cert", "list", "uri"):
        result = run(str(QPROXY), "hsm", command, "--help", env=env)
        assert result.returncode == 0, (command, result.stderr)
        assert "Usage: qproxy hsm" in result.stdout
    missing = run(str(QPROXY), "hsm", "list", env=env)
    assert missing.returncode == 2
    assert "qproxy hsm --library PATH" in missing.stderr and "QTLS_PKCS11_LIBRARY" in missing.stderr


def make(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    return run("make", "--no-print-directory", "-C", str(ROOT), *args,
               env={**os.environ, **env})


def test_install_puts_man_pages_in_place_and_uninstall_takes_them(tmp_path):
    dest = tmp_path / "root"
    result = make("install", f"DESTDIR={dest}", "QPROXY_SKIP_VENV=1")
    assert result.returncode == 0, result.stderr
    for page, section in (("qtls-server.8", "man8"), ("qproxy.1", "man1")):
        installed = dest / "usr/local/share/man" / section / page
        assert installed.read_text() == (MAN / page).read_text()
        assert oct(installed.stat().st_mode & 0o777) == "0o644"
    manifest = (dest / "usr/local/share/qproxy/install-manifest").read_text().splitlines()
    assert "file 0644 root:root /usr/local/share/man/man8/qtls-server.8" in manifest
    assert make("uninstall", f"DESTDIR={dest}").returncode == 0
    assert not (dest / "usr/local/share/man/man8/qtls-server.8").exists()
    assert not (dest / "usr/local/share/man/man1/qproxy.1").exists()


def test_install_builds_on_the_system_python():
    result = make("-n", "install")
    assert result.returncode == 0, result.stderr
    assert 'PYTHON="/usr/bin/python3" scripts/install.sh' in result.stdout


def test_install_refuses_a_python_in_a_home_directory(tmp_path):
    """pyenv's python3 (first on root's PATH here) made a venv whose interpreter the unit's
    ProtectHome=yes hides: qtls-server could not start."""
    home = Path(os.path.expanduser("~"))
    if not str(home).startswith(("/root", "/home")):
        pytest.skip("needs a home directory under /root or /home")
    wrapper_dir = Path(tempfile.mkdtemp(prefix=".qproxy-test-", dir=home))
    try:
        wrapper = wrapper_dir / "python3"
        wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")
        wrapper.chmod(0o755)
        dest = tmp_path / "root"
        result = make("install", f"DESTDIR={dest}", f"INSTALL_PYTHON={wrapper}")
    finally:
        shutil.rmtree(wrapper_dir)
    assert result.returncode != 0
    assert "a home directory the service cannot see (ProtectHome=yes)" in result.stderr
    assert not (dest / "opt/qproxy").exists()


def test_make_run_installs_no_test_extras():
    result = make("-n", "-B", "run", "VENV=/nonexistent/venv")
    assert result.returncode == 0, result.stderr
    installs = [line for line in result.stdout.splitlines() if " -e " in line]
    assert installs == ["/nonexistent/venv/bin/pip install --quiet --disable-pip-version-check "
                        "-e '.[examples]'"]


def test_readme_commands_table_names_every_command_and_flag():
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Commands", 1)[1].split("\n## ", 1)[0]
    ctx = click.Context(main, info_name="qproxy")
    for name in main.list_commands(ctx):
        assert f"qproxy {name}" in table or f"\\|{name}" in table or f"|{name}" in table, name
    for flag in ("--version", "-T", "--dump-config", "--test-config"):
        assert flag in table, flag
    exit_codes = readme.split("### Controlling a running daemon", 1)[1].split("\n## ", 1)[0]
    for code in range(3, 8):
        assert f"`{code}`" in exit_codes, code
