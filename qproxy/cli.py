"""Command line: `qtls-server` (the daemon, as systemd runs it) and `qproxy` (tools).

Only this module decides exit codes: 0 success, 1 a problem the operator must fix
(configuration, platform, a reload the master refused), 2 wrong usage (click's own); the
control commands (`qproxy reload|stop|quit|reopen-logs|status`, control_commands.py) add
3 to 7 for scripts.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from .config.model import LoggingSection
from .command_errors import one_line_errors
from .errors import QProxyError
from .keys import provider

from .control_commands import DEFAULT_CONFIG


def _print_version(config_path: str | None) -> None:
    from .version_info import report

    config, unreadable = None, None
    if config_path and os.path.exists(config_path):
        from .config.load import load_config

        try:
            config = load_config(config_path)
        except QProxyError:  # --version reports the software; --test-config judges the file
            unreadable = config_path
    click.echo(report(config, unreadable))


def _version_option(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        _print_version(DEFAULT_CONFIG)
        ctx.exit(0)


def _tested(path: str):
    """The checks of --test-config, told on stderr as `nginx -t` does; None if they failed."""
    from .daemon.prepare import Purpose, prepare

    try:
        prepared = prepare(path, Purpose.TEST)
    except QProxyError as exc:
        click.echo(f"qtls-server: configuration test failed\n{exc}", err=True)
        return None
    for warning in prepared.warnings:
        click.echo(f"warning: {warning}", err=True)
    return prepared


def _dump(path: str) -> int:
    """nginx -T: the checks of --test-config, then the effective configuration on stdout."""
    from .config.dump import dump

    prepared = _tested(path)
    if prepared is None:
        return 1
    click.echo(f"qtls-server: configuration file {path} test is successful", err=True)
    click.echo(f"# effective configuration of {path} (defaults filled in, ${{VAR}} expanded, "
               "secrets masked)", err=True)
    click.echo(dump(prepared.config), nl=False)
    return 0


def _check(path: str) -> int:
    prepared = _tested(path)
    if prepared is None:
        return 1
    for line in _served_summary(prepared):  # stderr, with the verdict, as `nginx -t` does
        click.echo(line, err=True)
    click.echo(f"qtls-server: configuration file {path} test is successful", err=True)
    return 0


def _served_summary(prepared) -> list[str]:
    """What --test-config shows of a good configuration: each chain's subject, key type and
    expiry, and the FIPS mode in force."""
    from .observability.cert_expiry import describe, expiry_of
    from .tls.fips import fips_status

    chains = [entry for item in prepared.listeners
              if item.listener.json_path == "server" or item.listener.own_certificates
              for entry in expiry_of(item.server_tls.pairs, listener=item.listener.name)]
    return [*describe(chains), fips_status(prepared.config)]


def _serve(path: str) -> int:
    from .observability import multiprocess

    # Before anything imports prometheus_client (preparing the configuration does: the OCSP
    # fetcher's module): it picks where values live at import, and imported first, each
    # worker's counters stayed in its own memory and /metrics answered nothing. The directory
    # lives as long as the process tree: Master.run returns only once its children are gone.
    metrics_dir, created = multiprocess.prepare()
    master_pid = os.getpid()
    try:
        return _prepare_and_serve(path)
    finally:
        if os.getpid() == master_pid:
            multiprocess.cleanup(metrics_dir, created)


def _prepare_and_serve(path: str) -> int:
    from .daemon.prepare import Purpose, prepare
    from .observability.logging import configure_logging

    try:
        prepared = prepare(path, Purpose.START)
    except QProxyError as exc:
        click.echo(f"qtls-server: {exc}", err=True)
        return 1
    config = prepared.config
    try:
        configure_logging(config.logging)
    except OSError as exc:
        click.echo(f"qtls-server: logging.file: cannot open {config.logging.file!r}: "
                   f"{exc.strerror}", err=True)
        return 1
    from .daemon.server import serve

    try:
        return serve(prepared, path)
    except QProxyError as exc:
        configure_logging(LoggingSection(console=True))
        click.echo(f"qtls-server: {exc}", err=True)
        return 1
    except OSError as exc:
        click.echo(f"qtls-server: cannot listen on {config.server.listen_address}:"
                   f"{config.server.listen_port} or the metrics port: {exc.strerror}", err=True)
        return 1


config_option = click.option(
    "--config", "-c", "config_path", default=DEFAULT_CONFIG, show_default=True,
    type=click.Path(dir_okay=False), help="server.json to use")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@config_option
@click.option("--test-config", "-t", is_flag=True,
              help="Check the configuration (JSON, keys, certificates, algorithms) and exit.")
@click.option("--dump-config", "-T", is_flag=True,
              help="Check the configuration, then print it as in force (defaults filled in, "
                   "${VAR} expanded, secrets masked) as JSON, and exit.")
@click.option("--version", "-V", "version", is_flag=True,
              help="Print the version, Python, the OpenSSL inside cryptography, the "
                   "post-quantum groups and signature algorithms it has, whether "
                   "pkcs11-provider loads, and FIPS mode, then exit.")
def qtls_server(config_path: str, test_config: bool, dump_config: bool, version: bool) -> None:
    """Terminate hybrid post-quantum TLS and reverse-proxy HTTP to backends."""
    if version:
        _print_version(config_path)
        sys.exit(0)
    if dump_config:
        sys.exit(_dump(config_path))
    sys.exit(_check(config_path) if test_config else _serve(config_path))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", "-V", is_flag=True, expose_value=False, is_eager=True,
              callback=_version_option,
              help="Print the version, OpenSSL, post-quantum algorithms, pkcs11-provider and "
                   "FIPS status, then exit.")
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
@click.option("--force", is_flag=True, help="Replace a PKI already in DIRECTORY.")
def pki_init(directory: str, names: tuple[str, ...], force: bool) -> None:
    """Create a development CA, server certificates (ML-DSA-65, ECDSA P-384, RSA) and a client
    certificate in DIRECTORY. Keys are written mode 0600."""
    from . import pki as dev_pki

    # A second run replaced the CA and every key without a word: each client trusting the old
    # CA and a server still holding the old files broke at its next handshake.
    existing = dev_pki.DevPki(Path(directory)).ca_bundle
    if existing.exists() and not force:
        click.echo(f"qproxy pki init: {str(existing)!r} exists; refusing to replace the PKI in "
                   f"{directory!r} (--force replaces it, and every client must then trust the "
                   "new CA)", err=True)
        sys.exit(1)
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


@pki.command("sign-csr")
@click.argument("directory", type=click.Path(file_okay=False, exists=True))
@click.argument("csr", type=click.Path(dir_okay=False, exists=True))
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Where to write the certificate chain (leaf + intermediate)")
@click.option("--name", "names", multiple=True, help="Server names (default: the CSR's SANs)")
def pki_sign_csr(directory: str, csr: str, out: str, names: tuple[str, ...]) -> None:
    """Issue a server certificate for CSR with the development CA in DIRECTORY."""
    from pathlib import Path

    from . import pki as dev_pki

    try:
        chain = dev_pki.sign_csr(directory, Path(csr).read_bytes(), names)
    except (dev_pki.CsrError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    Path(out).write_bytes(chain)
    click.echo(out)


# -- qproxy hsm ----------------------------------------------------------------------------

class HsmTarget:
    def __init__(self, library: str | None, token: str | None, pin_file: str | None) -> None:
        # Checked when a command uses it, not by the group: `qproxy hsm keygen --help` must
        # work without a library.
        self._library = library
        self.token = token
        self.pin_file = pin_file

    @property
    def library(self) -> str:
        if not self._library:
            raise click.UsageError("give the PKCS#11 module: qproxy hsm --library PATH ... "
                                   "(or set QTLS_PKCS11_LIBRARY)")
        return self._library

    def pin(self) -> str | None:
        from .config.model import HsmSection

        return provider.resolve_pin(HsmSection(pin_file=self.pin_file))

    def session(self, rw: bool = False):
        from .keys.pkcs11 import open_session

        return open_session(self.library, self.token, self.pin(), rw=rw)


@main.group()
@click.option("--library", envvar="QTLS_PKCS11_LIBRARY",
              help="PKCS#11 module (e.g. /usr/lib/softhsm/libsofthsm2.so); env "
                   "QTLS_PKCS11_LIBRARY; required by every command")
@click.option("--token", envvar="QTLS_HSM_TOKEN", help="Token label; env QTLS_HSM_TOKEN")
@click.option("--pin-file", envvar="QTLS_HSM_PIN_FILE", type=click.Path(dir_okay=False),
              help="File holding the user PIN; env QTLS_HSM_PIN_FILE (or QTLS_HSM_PIN)")
@click.pass_context
def hsm(ctx: click.Context, library: str | None, token: str | None, pin_file: str | None) -> None:
    """Keys in a PKCS#11 token (Luna, SoftHSM2, ...). The PIN is never taken on the command line."""
    ctx.obj = HsmTarget(library, token, pin_file)


@hsm.command("status")
@click.pass_obj
@one_line_errors
def hsm_status(target: HsmTarget) -> None:
    """Library, slots, tokens and the TLS-relevant mechanisms each offers."""
    from .keys.pkcs11 import token_status

    click.echo(f"library: {target.library}")
    for row in token_status(target.library):
        click.echo(f"slot {row['slot']}: token {row['token']!r} ({row['manufacturer']} "
                   f"{row['model']}, serial {row['serial']})")
        click.echo("  mechanisms: " + (", ".join(row["mechanisms"]) or "none of interest"))


@hsm.command("keygen")
@click.option("--label", required=True, help="Label (CKA_LABEL) of the new key pair")
@click.option("--type", "key_type", type=click.Choice(["ec-p384", "ec-p256", "rsa-3072",
                                                       "ml-dsa-65"]), default="ec-p384",
              show_default=True)
@click.option("--id", "key_id", default=None, help="CKA_ID in hex (default: random)")
@click.pass_obj
@one_line_errors
def hsm_keygen(target: HsmTarget, label: str, key_type: str, key_id: str | None) -> None:
    """Generate a sensitive, non-extractable key pair inside the token and print its URI."""
    from .keys.pkcs11 import keygen
    from .keys.uri import Pkcs11Uri

    ident = bytes.fromhex(key_id) if key_id else os.urandom(8)
    with target.session(rw=True) as session:
        keygen(session, label, key_type, ident)
        token = session.token.label
    click.echo(str(Pkcs11Uri(token=token, object=label, type="private")))


@hsm.command("csr")
@click.option("--label", required=True)
@click.option("--subject", required=True, help="RFC 4514 subject, e.g. 'CN=ota.example.com,O=Example'")
@click.option("--dns", "dns_names", multiple=True, help="subjectAltName DNS names (repeatable)")
@click.option("--out", type=click.Path(dir_okay=False), help="Write the CSR here (default: stdout)")
@click.pass_obj
@one_line_errors
def hsm_csr(target: HsmTarget, label: str, subject: str, dns_names: tuple[str, ...],
            out: str | None) -> None:
    """A certificate request signed inside the token with the key LABEL."""
    from cryptography import x509

    from .keys.pkcs11 import make_csr, public_key_der
    from .keys.uri import Pkcs11Uri

    try:
        name = x509.Name.from_rfc4514_string(subject)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--subject") from None
    uri = Pkcs11Uri(object=label, type="private")
    with target.session() as session:
        pem = make_csr(session, uri, name, public_key_der(session, uri), list(dns_names))
    if out:
        from pathlib import Path

        Path(out).write_bytes(pem)
    else:
        click.echo(pem.decode(), nl=False)


@hsm.command("import-cert")
@click.option("--label", required=True, help="Label for the certificate object (use the key's)")
@click.option("--id", "key_id", default=None, help="CKA_ID in hex (use the key's)")
@click.argument("cert", type=click.Path(dir_okay=False, exists=True))
@click.pass_obj
@one_line_errors
def hsm_import_cert(target: HsmTarget, label: str, key_id: str | None, cert: str) -> None:
    """Store the leaf certificate of CERT on the token next to its key."""
    from pathlib import Path

    from cryptography import x509

    from .keys.pkcs11 import import_certificate

    leaf = x509.load_pem_x509_certificates(Path(cert).read_bytes())[0]
    with target.session(rw=True) as session:
        import_certificate(session, label, bytes.fromhex(key_id) if key_id else None, leaf)
    click.echo(f"imported {leaf.subject.rfc4514_string()} as {label!r}")


@hsm.command("list")
@click.pass_obj
@one_line_errors
def hsm_list(target: HsmTarget) -> None:
    """Keys and certificates on the token."""
    from .keys.pkcs11 import list_objects

    with target.session() as session:
        for row in list_objects(session):
            click.echo("  ".join(f"{k}={v}" for k, v in row.items()))


@hsm.command("uri")
@click.option("--label", required=True)
@click.option("--pem-out", type=click.Path(dir_okay=False),
              help="Also write pkcs11-provider's PEM form of the URI (a key file OpenSSL accepts)")
@click.pass_obj
@one_line_errors
def hsm_uri(target: HsmTarget, label: str, pem_out: str | None) -> None:
    """Print the pkcs11: URI of key LABEL (for certificates.server_key_uri)."""
    from .keys.pkcs11 import public_key_der
    from .keys.uri import Pkcs11Uri

    with target.session() as session:
        public_key_der(session, Pkcs11Uri(object=label, type="private"))  # it must exist
        uri = Pkcs11Uri(token=session.token.label, object=label, type="private")
    click.echo(str(uri))
    if pem_out:
        from pathlib import Path

        Path(pem_out).write_bytes(provider.pem_uri(str(uri)))


from .control_commands import CONTROL_COMMANDS  # noqa: E402  (after main: added to it)
from .firmware import firmware as _firmware  # noqa: E402

main.add_command(_firmware)
for _command in CONTROL_COMMANDS:
    main.add_command(_command)
