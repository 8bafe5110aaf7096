#!/usr/bin/env python3
"""Man pages qtls-server(8) and qproxy(1) generated from the click commands (`make man`).

    python scripts/make-man.py [--out man] [--check]

click's own help texts are the single source: a page lists the command's usage, description,
options and (for qproxy) every subcommand with its own options. The roff is written here
(click-man is not a dependency for ~100 lines). No date in the output, so regenerating an
unchanged tree changes nothing; `--check` exits 1 when the committed pages are out of date.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qproxy import __version__  # noqa: E402
from qproxy.cli import main, qtls_server  # noqa: E402

PAGES = (("qtls-server", "8", qtls_server, "System Administration"),
         ("qproxy", "1", main, "User Commands"))

EXTRA = {
    "qtls-server": """.SH SIGNALS
.TP
.B SIGHUP
Reload: re\\-read the configuration and certificates and start a new generation of workers;
on any problem keep serving with the old configuration.
.TP
.BR SIGTERM ", " SIGQUIT
Graceful stop: stop accepting, let requests in flight finish (server.shutdown_timeout).
.TP
.B SIGINT
Fast stop: requests in flight are cut after 1 s.
.TP
.B SIGUSR1
Every process reopens its log file.
.SH FILES
.TP
.I /etc/qtls/config/server.json
The configuration (README, "Configuration reference").
.TP
.I server.pid_file
The master's pid; next to it its status file (\\fIqtls\\-server.status.json\\fR).
.SH SEE ALSO
.BR qproxy (1),
.BR systemctl (1),
.BR nginx (8)
""",
    "qproxy": """.SH EXIT STATUS
0 success; 1 a problem to fix (configuration, a refused reload); 2 wrong usage.
The control commands (reload, stop, quit, reopen\\-logs, status) also use
3 not running (no pid file), 4 stale pid file, 5 permission denied,
6 no pid file configured, 7 no answer in time.
.SH SHELL COMPLETION
.nf
eval "$(_QPROXY_COMPLETE=bash_source qproxy)"        # bash, in ~/.bashrc
eval "$(_QPROXY_COMPLETE=zsh_source qproxy)"         # zsh, in ~/.zshrc
_QPROXY_COMPLETE=fish_source qproxy | source         # fish
.fi
.SH SEE ALSO
.BR qtls\\-server (8)
""",
}


def roff(text: str) -> str:
    """Plain text as roff: backslashes escaped, no line taken for a request."""
    out = []
    for line in text.replace("\\", "\\e").replace("-", "\\-").splitlines():
        out.append("\\&" + line if line.startswith((".", "'")) else line)
    return "\n".join(out)


def _help_text(command: click.Command) -> str:
    text = command.help or command.short_help or ""
    return click.unstyle(text).replace("\b\n", "").strip()


def _options(command: click.Command, ctx: click.Context) -> list[str]:
    out = []
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None:
            continue
        names, help_text = record
        out += [".TP", f"\\fB{roff(names)}\\fR", roff(help_text or "")]
    return out


def _commands(group: click.Group, ctx: click.Context, prefix: str) -> list[str]:
    out = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is None or command.hidden:
            continue
        sub = click.Context(command, info_name=name, parent=ctx, **command.context_settings)
        usage = " ".join(command.collect_usage_pieces(sub))
        out += [".SS", roff(f"{prefix} {name} {usage}".strip()), roff(_help_text(command))]
        options = _options(command, sub)
        if options:
            out += [".PP", "Options:", ".RS", *options, ".RE"]
        if isinstance(command, click.Group):
            out += _commands(command, sub, f"{prefix} {name}")
    return out


def page(name: str, section: str, command: click.Command, manual: str) -> str:
    ctx = click.Context(command, info_name=name, **command.context_settings)
    first = _help_text(command).splitlines()[0].rstrip(".").removeprefix(f"{name}: ")
    usage = " ".join(command.collect_usage_pieces(ctx))
    title = roff(name.upper())
    lines = [
        f'.TH {title} {section} "" "qproxy {__version__}" "{manual}"',
        ".SH NAME", f"{roff(name)} \\- {roff(first)}",
        ".SH SYNOPSIS", f"\\fB{roff(name)}\\fR {roff(usage)}",
        ".SH DESCRIPTION", roff(_help_text(command)),
        ".SH OPTIONS", *_options(command, ctx),
    ]
    if isinstance(command, click.Group):
        lines += [".SH COMMANDS", *_commands(command, ctx, name)]
    return "\n".join(lines) + "\n" + EXTRA.get(name, "")


def main_(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "man"))
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the pages in --out differ from freshly generated ones")
    args = parser.parse_args(argv)
    out = Path(args.out)
    stale = []
    for name, section, command, manual in PAGES:
        text = page(name, section, command, manual)
        path = out / f"{name}.{section}"
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
            continue
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(path)
    if stale:
        print("out of date (run make man): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main_())
