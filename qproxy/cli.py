"""Command line: `qtls-server` (the daemon, as systemd runs it) and `qproxy` (tools).

Only this module decides exit codes: 0 success, 1 a problem the operator must fix
(configuration, platform), 2 wrong usage (click's own).
"""

from __future__ import annotations

import os
import sys

import click

from .config.load import load_config
from .config.model import LoggingSection, ServerConfig
from .errors import ConfigErrors, QProxyError

DEFAULT_CONFIG = "/etc/qtls/config/server.json"


def _load_checked(path: str) -> tuple[ServerConfig, list[str]]:
    """Everything checkable without binding; raises QProxyError."""
    from .tls.context import check_platform
    from .daemon.worker import build_tls

    config = load_config(path)
    check_platform()
    server_tls = build_tls(config, path)
    return config, server_tls.warnings


def _check(path: str) -> int:
    try:
        _config, warnings = _load_checked(path)
    except QProxyError as exc:
        click.echo(f"qtls-server: configuration test failed\n{exc}", err=True)
        return 1
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"qtls-server: configuration file {path} test is successful", err=True)
    return 0


def _serve(path: str) -> int:
    from .observability import multiprocess
    from .observability.logging import configure_logging

    try:
        config = load_config(path)
    except ConfigErrors as exc:
        click.echo(f"qtls-server: {exc}", err=True)
        return 1
    try:
        configure_logging(config.logging)
    except OSError as exc:
        click.echo(f"qtls-server: logging.file: cannot open {config.logging.file!r}: "
                   f"{exc.strerror}", err=True)
        return 1
    # Before prometheus_client is imported: workers keep their metrics there for the master.
    metrics_dir, created = multiprocess.prepare()
    master_pid = os.getpid()
    try:
        from .daemon.server import serve

        return serve(config, path)
    except QProxyError as exc:
        configure_logging(LoggingSection(console=True))
        click.echo(f"qtls-server: {exc}", err=True)
        return 1
    except OSError as exc:
        click.echo(f"qtls-server: cannot listen on {config.server.listen_address}:"
                   f"{config.server.listen_port} or the metrics port: {exc.strerror}", err=True)
        return 1
    finally:
        if os.getpid() == master_pid:
            multiprocess.cleanup(metrics_dir, created)


config_option = click.option(
    "--config", "-c", "config_path", default=DEFAULT_CONFIG, show_default=True,
    type=click.Path(dir_okay=False), help="server.json to use")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@config_option
@click.option("--test-config", "-t", is_flag=True,
              help="Check the configuration (JSON, keys, certificates, algorithms) and exit.")
def qtls_server(config_path: str, test_config: bool) -> None:
    """Terminate hybrid post-quantum TLS and reverse-proxy HTTP to backends."""
    sys.exit(_check(config_path) if test_config else _serve(config_path))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """qproxy: post-quantum TLS terminator tools."""


@main.command()
@config_option
def serve(config_path: str) -> None:
    """Run the daemon (same as qtls-server)."""
    sys.exit(_serve(config_path))


@main.command("check-config")
@config_option
def check_config(config_path: str) -> None:
    """Check a configuration without starting (same as qtls-server --test-config)."""
    sys.exit(_check(config_path))


@main.group()
def pki() -> None:
    """Development certificates."""


@pki.command("init")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--name", "names", multiple=True,
              help="Server name or IP for the certificates (repeatable; default localhost, "
                   "127.0.0.1, ::1).")
def pki_init(directory: str, names: tuple[str, ...]) -> None:
    """Create a development CA, server certificates (ML-DSA-65, ECDSA P-384, RSA) and a client
    certificate in DIRECTORY. Keys are written mode 0600."""
    from . import pki as dev_pki

    made = dev_pki.init(directory, names) if names else dev_pki.init(directory)
    for path in sorted(made.directory.iterdir()):
        click.echo(str(path))


@main.command()
@click.argument("url")
@click.option("--groups", help="Key-exchange groups to offer, e.g. X25519MLKEM768:X25519")
@click.option("--sigalgs", help="Signature algorithms to accept, e.g. mldsa65:ecdsa_secp384r1_sha384")
@click.option("--cafile", type=click.Path(exists=True, dir_okay=False),
              help="CA bundle to verify the server's chain against")
@click.option("--cert", type=click.Path(exists=True, dir_okay=False), help="Client certificate")
@click.option("--key", type=click.Path(exists=True, dir_okay=False), help="Client private key")
@click.option("--servername", help="SNI to send (default: the URL's host name)")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds per connection")
@click.option("--no-resume", is_flag=True, help="Skip the second (resumption) connection")
def probe(url: str, groups: str | None, sigalgs: str | None, cafile: str | None,
          cert: str | None, key: str | None, servername: str | None, timeout: float,
          no_resume: bool) -> None:
    """Connect to URL and summarise the TLS session (protocol, group, signature, chain)."""
    from .probe import format_result, probe as run_probe

    if (cert is None) != (key is None):
        raise click.UsageError("--cert and --key go together")
    try:
        result = run_probe(url, groups=groups, sigalgs=sigalgs, cafile=cafile, cert=cert,
                           key=key, servername=servername, timeout=timeout,
                           resume=not no_resume)
    except QProxyError as exc:
        click.echo(f"probe: {exc}", err=True)
        sys.exit(1)
    click.echo(format_result(result))
    if result.verify_ok is False:
        sys.exit(1)
