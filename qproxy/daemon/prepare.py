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

from ..config.files import check_log_file, check_regular, check_temp_dir, read_regular
from ..config.load import load_config
from ..config.model import ServerConfig
from ..errors import ConfigError, ConfigErrors, PlatformError, QProxyError
from ..keys import provider

if TYPE_CHECKING:  # OpenSSL must not load before provider.install() has set OPENSSL_CONF
    from ..tls.context import ServerTls

HSM_CHECK_TIMEOUT = 30.0


class Purpose(enum.Enum):
    START = "start"
    TEST = "test"
    RELOAD = "reload"


@dataclass(frozen=True)
class Prepared:
    config: ServerConfig
    server_tls: "ServerTls"
    warnings: tuple[str, ...]


def prepare(source: str, purpose: Purpose) -> Prepared:
    """Everything checkable without binding a socket; raises ConfigErrors or PlatformError."""
    try:
        return _prepare(source, purpose)
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


def _prepare(source: str, purpose: Purpose) -> Prepared:
    config = load_config(source)
    errors = check_named_files(config)
    if errors:
        raise ConfigErrors(source, errors)
    if purpose is not Purpose.RELOAD:
        # OPENSSL_CONF, before OpenSSL is first loaded below. A running daemon's OpenSSL has
        # read it already: on reload, provider changes are reported by `restart_only_changes`.
        provider.install(config)
    from ..tls.context import build_server_tls, check_platform
    from ..tls.machine import info_callback

    check_platform()
    server_tls = build_server_tls(config, source, info_callback)
    check_hsm_keys(config, server_tls, source)
    from ..tls.stapling import stapling_targets

    server_tls.ocsp = stapling_targets(config, server_tls.pairs, server_tls.warnings)
    if purpose is Purpose.TEST and server_tls.ocsp:
        from .ocsp_fetcher import must_staple_warnings

        server_tls.warnings += must_staple_warnings(server_tls.ocsp)
    return Prepared(config, server_tls, tuple(server_tls.warnings))


def check_named_files(config: ServerConfig) -> list[ConfigError]:
    """Files loaded later by name (log file, PKCS#11 library, provider modules, the request
    body spool directory): they must be what they claim before anything opens or dlopen()s
    them."""
    checks = []
    if config.logging.file is not None:
        checks.append(lambda: check_log_file(config.logging.file))
    if config.server.client_body_temp_path is not None:
        checks.append(lambda: check_temp_dir(config.server.client_body_temp_path))
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


def check_hsm_keys(config: ServerConfig, server_tls: "ServerTls", source: str) -> None:
    """Every HSM key exists, is non-extractable and matches its certificate; checked with
    python-pkcs11 in a short-lived child so this process never initialises the module."""
    from ..keys.pkcs11 import KeyCheck, check_keys_in_child
    from ..tls.context import member_path

    checks = [KeyCheck(p.json_path, p.key_uri,
                       read_regular(p.cert_path, member_path(p.json_path, "cert"), "certificate"))
              for p in server_tls.pairs if p.key_uri is not None]
    if not checks:
        return
    assert config.hsm.pkcs11_library is not None
    problems = check_keys_in_child(config.hsm.pkcs11_library, config.hsm.token_label,
                                   provider.resolve_pin(config.hsm), checks,
                                   timeout=HSM_CHECK_TIMEOUT)
    if problems:
        raise ConfigErrors(source, [ConfigError("", problem) for problem in problems])


# Settings the running master cannot change: its sockets, its metrics process, the OpenSSL it
# initialised at start (providers, HSM module and PIN) and its log outputs.
_RESTART_ONLY = {
    "server": ("listen_address", "listen_port", "backlog"),
    "metrics": None, "hsm": None, "openssl": None, "fips": None,
    "logging": ("file", "console", "level"),
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
