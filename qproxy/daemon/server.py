"""`qtls-server`: check the platform and configuration, then hand over to the master process."""

from __future__ import annotations

from pathlib import Path

from ..config.model import ServerConfig
from ..errors import ConfigError, ConfigErrors
from ..keys.pkcs11 import KeyCheck, check_keys_in_child
from ..keys.provider import needs_providers, resolve_pin
from ..observability.logging import get_logger
from ..observability.metrics import Metrics
from ..tls.context import ServerTls, check_platform
from .master import Master
from .worker import build_tls

log = get_logger("qproxy.server")


def check_hsm_keys(config: ServerConfig, server_tls: ServerTls, source: str) -> None:
    """Every HSM key exists, is non-extractable and matches its certificate; checked with
    python-pkcs11 in a short-lived child so this process never initialises the module."""
    checks = [KeyCheck(p.json_path, p.key_uri, Path(p.cert_path).read_bytes())
              for p in server_tls.pairs if p.key_uri is not None]
    if not checks:
        return
    assert config.hsm.pkcs11_library is not None
    problems = check_keys_in_child(config.hsm.pkcs11_library, config.hsm.token_label,
                                   resolve_pin(config.hsm), checks)
    if problems:
        raise ConfigErrors(source, [ConfigError("", problem) for problem in problems])


def serve(config: ServerConfig, source: str) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code."""
    version = check_platform()
    server_tls = build_tls(config, source)
    check_hsm_keys(config, server_tls, source)
    log.info("starting qtls-server", openssl=version, config=source,
             openssl_conf="generated" if needs_providers(config) else "default")
    for warning in server_tls.warnings:
        log.warning("configuration warning", detail=warning)
    return Master(config, source, server_tls, Metrics()).run()
