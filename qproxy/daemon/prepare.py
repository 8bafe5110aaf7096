"""One path from a configuration file to everything a generation of workers serves with.

Start-up, `--test-config` and SIGHUP all call `prepare()`, so a reload checks exactly what a
start checks (ghostunnel's reload: build, validate, swap, keep the old state on failure):

    read -> parse -> validate -> check files -> OpenSSL providers (not on reload) -> platform
    -> certificates and keys -> HSM keys -> contexts

Whatever the file holds, what comes out is a `Prepared` or `ConfigErrors` (one line per
problem, each naming its JSON path); only a `PlatformError` (this OpenSSL cannot do PQ TLS)
passes through as itself. The last `except Exception` is the boundary's promise, not a way to
find problems: each one it ever catches is a bug to turn into a precise check.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import BaseModel

from ..config.files import check_log_file, check_regular, check_temp_dir, read_regular
from ..config.listeners import Listener, listeners_of, with_listener_tls
from ..config.load import check_config_file
from ..config.model import AlgorithmsSection, CertificatesSection, ServerConfig
from ..errors import ConfigError, ConfigErrors, PlatformError, QProxyError
from .pidfile import check_location as check_pid_location
from ..keys import provider

if TYPE_CHECKING:  # OpenSSL must not load before provider.install() has set OPENSSL_CONF
    from ..tls.context import ServerTls

HSM_CHECK_TIMEOUT = 30.0


class Purpose(enum.Enum):
    START = "start"
    TEST = "test"
    RELOAD = "reload"
    ROTATE = "rotate"  # new ticket keys: the running configuration again, not the file


@dataclass(frozen=True)
class PreparedListener:
    listener: Listener
    server_tls: "ServerTls"


@dataclass(frozen=True)
class Prepared:
    config: ServerConfig
    server_tls: "ServerTls"  # the default listener's
    warnings: tuple[str, ...]
    listeners: tuple[PreparedListener, ...] = ()
    self_tests: tuple[str, ...] = ()
    """FIPS known-answer tests that passed (fips.enabled only)."""

    def all_tls(self) -> list["ServerTls"]:
        return [p.server_tls for p in self.listeners] or [self.server_tls]


def prepare(source: str, purpose: Purpose, running: ServerConfig | None = None) -> Prepared:
    """Everything checkable without binding a socket; raises ConfigErrors or PlatformError.
    Purpose.ROTATE builds from `running` (the serving configuration) instead of the file."""
    try:
        return _prepare(source, purpose, running)
    except (ConfigErrors, PlatformError):
        raise
    except ConfigError as exc:
        raise ConfigErrors(source, [exc]) from None
    except QProxyError as exc:
        raise ConfigErrors(source, [ConfigError("", str(exc))]) from None
    except Exception as exc:  # noqa: BLE001 - the boundary: nothing in a file may end the master
        raise ConfigErrors(source, [ConfigError(
            "", f"unexpected {type(exc).__name__} while checking the configuration: "
                f"{str(exc)[:300]} (please report this)")]) from None


def _prepare(source: str, purpose: Purpose, running: ServerConfig | None) -> Prepared:
    # Every stage that can run does, so that one run lists every problem (schema, files,
    # key/certificate mismatches, HSM keys) rather than the first stage's. A ticket-key
    # rotation builds from the running configuration: a half-edited file is never applied.
    if purpose is Purpose.ROTATE and running is not None:
        config = running
    else:
        checked = check_config_file(source)
        if checked.config is None:
            raise ConfigErrors(source, checked.errors + check_section_files(checked.sections))
        config = checked.config
    errors = check_named_files(config)
    providers_ready = not errors
    if providers_ready and purpose in (Purpose.START, Purpose.TEST):
        # OPENSSL_CONF, before OpenSSL is first loaded below. A running daemon's OpenSSL has
        # read it already: on reload, provider changes are reported by `restart_only_changes`.
        try:
            provider.install(config)
        except ConfigError as exc:
            errors.append(exc)
            providers_ready = False
    from ..tls.context import build_server_tls, check_platform
    from ..tls.machine import info_callback

    check_platform()
    from ..tls.stapling import stapling_targets

    prepared: list[PreparedListener] = []
    for listener in listeners_of(config):
        # Each listener's contexts through the same builder, with its own tls and certificates;
        # errors are reported under the listener when the section at fault is its own (a
        # listener sharing the top-level sections repeats their errors: kept once below).
        listener_config = with_listener_tls(config, listener)
        found: list[ConfigError] = []
        try:
            server_tls = build_server_tls(listener_config, source, info_callback)
        except ConfigErrors as exc:
            found += exc.errors
        else:
            prepared.append(PreparedListener(listener, server_tls))
            server_tls.ocsp = stapling_targets(listener_config, server_tls.pairs,
                                               server_tls.warnings)
            if purpose is Purpose.TEST and server_tls.ocsp:
                # Not at start: the fetcher's module brings prometheus_client, which must
                # not load before the metrics directory is set (cli._serve).
                from .ocsp_fetcher import must_staple_warnings

                server_tls.warnings += must_staple_warnings(server_tls.ocsp)
        if providers_ready and (listener.own_certificates or listener.json_path == "server"):
            found += hsm_key_problems(listener_config)
        errors += [ConfigError(listener.config_path(e.path), e.problem) for e in found]
    if errors:
        unique = {(e.path, e.problem): e for e in errors}
        raise ConfigErrors(source, list(unique.values()))
    from ..observability import cert_expiry
    from ..tls.fips import run_self_tests

    default = prepared[0].server_tls
    warnings: list[str] = []
    self_tests: list[str] = []
    for item in prepared:
        self_tests += run_self_tests(config, item.server_tls.policy)
        if item.listener.json_path == "server" or item.listener.own_certificates:
            expiring = cert_expiry.expiry_warnings(
                cert_expiry.expiry_of(item.server_tls.pairs, listener=item.listener.name),
                item.listener.certificates.warn_days)
            warnings += [_under(item.listener, w) for w in (*item.server_tls.warnings,
                                                             *expiring)]
    return Prepared(config, default, tuple(dict.fromkeys(warnings)), tuple(prepared),
                    tuple(dict.fromkeys(self_tests)))


def _under(listener: Listener, warning: str) -> str:
    """A warning that starts with the JSON path of its setting ('certificates.keypairs[0].cert:
    ...'), with that path as written in the file: under the listener when the section is its
    own (as errors are), or the operator fixes the top-level certificate instead."""
    path, sep, rest = warning.partition(": ")
    if not sep or " " in path:
        return warning
    return f"{listener.config_path(path)}: {rest}"


def check_section_files(sections: dict[str, BaseModel]) -> list[ConfigError]:
    """When the schema failed: the files named by the sections that are valid on their own
    (log file, spool directory, libraries, certificates and keys), so the next run does not
    bring a new list."""
    partial = ServerConfig.model_construct(None, **sections)
    errors = check_named_files(partial)
    algorithms = sections.get("algorithms")
    if isinstance(algorithms, AlgorithmsSection):
        from ..tls.context import policy_word_errors

        errors += policy_word_errors(algorithms)
    certificates = sections.get("certificates")
    if isinstance(certificates, CertificatesSection):
        from ..tls.context import check_pair_files

        errors += check_pair_files(certificates)
    return errors


def check_named_files(config: ServerConfig) -> list[ConfigError]:
    """Files loaded later by name (log file, PKCS#11 library, provider modules, the request
    body spool directory): they must be what they claim before anything opens or dlopen()s
    them."""
    checks = []
    if config.logging.file is not None:
        checks.append(lambda: check_log_file(config.logging.file))
    if config.server.client_body_temp_path is not None:
        checks.append(lambda: check_temp_dir(config.server.client_body_temp_path))
    for index, listener in enumerate(config.listeners):
        if listener.client_body_temp_path is not None:
            checks.append(lambda t=listener.client_body_temp_path, i=index: check_temp_dir(
                t, f"listeners[{i}].client_body_temp_path"))
    if config.server.pid_file is not None:
        checks.append(lambda: check_pid_location(config.server.pid_file))
    hsm = config.hsm
    if hsm.enabled and hsm.pkcs11_library:
        checks.append(lambda: check_regular(hsm.pkcs11_library, "hsm.pkcs11_library",
                                            "PKCS#11 library"))
    if hsm.provider_module:
        checks.append(lambda: check_regular(hsm.provider_module, "hsm.provider_module",
                                            "provider module"))
    for index, spec in enumerate(config.openssl.providers):
        if spec.module and "/" in spec.module:  # a bare name is looked up in OpenSSL's MODULESDIR
            checks.append(lambda m=spec.module, i=index: check_regular(
                m, f"openssl.providers[{i}].module", "provider module"))
    errors = []
    for check in checks:
        try:
            check()
        except ConfigError as exc:
            errors.append(exc)
    return errors


def hsm_key_problems(config: ServerConfig) -> list[ConfigError]:
    """Every HSM key exists, is non-extractable and matches its certificate; checked with
    python-pkcs11 in a short-lived child so this process never initialises the module. Pairs
    whose URI or certificate is wrong were reported by the certificate checks already."""
    from ..keys import uri as pkcs11_uri
    from ..keys.pkcs11 import KeyCheck, check_keys_in_child
    from ..tls.context import member_path, named_pairs

    checks = []
    for pair, json_path in named_pairs(config.certificates):
        if not pkcs11_uri.is_pkcs11_uri(pair.key):
            continue
        try:
            uri = pkcs11_uri.parse(pair.key)
            cert = read_regular(pair.cert, member_path(json_path, "cert"), "certificate")
        except (pkcs11_uri.UriError, ConfigError):
            continue
        checks.append(KeyCheck(json_path, uri, cert))
    if not checks or not config.hsm.enabled or not config.hsm.pkcs11_library:
        return []
    try:
        pin = provider.resolve_pin(config.hsm)
    except ConfigError as exc:
        return [exc]
    problems = check_keys_in_child(config.hsm.pkcs11_library, config.hsm.token_label, pin,
                                   checks, timeout=HSM_CHECK_TIMEOUT)
    return [ConfigError("", problem) for problem in problems]


# Settings the running master cannot change: its sockets, its metrics process, the OpenSSL it
# initialised at start (providers, HSM module and PIN) and its log outputs. `fips` is not one:
# its algorithm lists and self-tests are part of building a generation; a FIPS provider is
# `openssl`, loaded at start.
# A listener's address and port are not here: the master binds a new one before the swap
# (and closes a removed one after it). Its backlog is fixed when its socket is first bound.
_RESTART_ONLY = {
    "server": ("backlog", "pid_file"),
    "metrics": None, "hsm": None, "openssl": None,
    "logging": ("file", "console", "level", "format"),
}


def restart_only_changes(running: ServerConfig, new: ServerConfig) -> list[str]:
    """Dotted names of settings that differ but that a reload does not apply."""
    changed = []
    for section, keys in _RESTART_ONLY.items():
        before, after = getattr(running, section), getattr(new, section)
        if keys is None:
            if before != after:
                changed.append(section)
            continue
        changed += [f"{section}.{key}" for key in keys
                    if getattr(before, key) != getattr(after, key)]
    return changed
