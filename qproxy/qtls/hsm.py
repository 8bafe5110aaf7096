"""Keys in an HSM through pkcs11-provider, the same path the daemon uses.

OpenSSL reads its configuration once, when it initialises, so the provider must be configured
before `cryptography` or `OpenSSL` is first imported. `qproxy.qtls` does that on import when
`QTLS_PKCS11_LIBRARY` is set (PIN from `QTLS_HSM_PIN_FILE` or `QTLS_HSM_PIN`) and
`OPENSSL_CONF` is not; this module must therefore import neither.
"""

from __future__ import annotations

import os
import sys

from ..config.model import HsmSection, OpensslSection
from ..errors import ConfigError
from ..keys import provider

LIBRARY_ENV = "QTLS_PKCS11_LIBRARY"
setup_problem: str | None = None
"""Why the provider could not be configured on import; `use_hsm_key` reports it."""


def configure_quietly() -> None:
    """On import of `qproxy.qtls`: configure if asked to, keep any problem for later, so that
    importing the library never fails for a program that does not use an HSM key."""
    global setup_problem
    try:
        configure_from_environment()
    except ConfigError as exc:
        setup_problem = str(exc)


def configure_from_environment(environ: dict[str, str] | None = None) -> str | None:
    """Point OPENSSL_CONF at a pkcs11-provider config built from the environment.

    Returns the config path, or None when there is nothing to do (no library named, or the
    process already has an OPENSSL_CONF). Raises ConfigError for a missing provider or PIN."""
    env = os.environ if environ is None else environ
    library = env.get(LIBRARY_ENV)
    if not library or env.get("OPENSSL_CONF"):
        return None
    if "cryptography" in sys.modules or "OpenSSL" in sys.modules:
        return None  # too late: OpenSSL has read its configuration; use_hsm_key will say so
    hsm = HsmSection(enabled=True, pkcs11_library=library)
    module = provider.find_provider_module()
    if module is None:
        raise ConfigError(LIBRARY_ENV, "pkcs11-provider (pkcs11.so) not found; install "
                          "Debian's pkcs11-provider")
    pin = provider.resolve_pin(hsm, dict(env))
    if pin is None:
        raise ConfigError(provider.PIN_ENV, f"no PIN for the token: set ${provider.PIN_FILE_ENV} "
                          f"or ${provider.PIN_ENV}")
    pin_path = provider.memory_file("qtls-hsm-pin", pin.encode())
    path = provider.memory_file(
        "qtls-openssl.cnf",
        provider.openssl_config(hsm, OpensslSection(), pin_path, module).encode())
    os.environ["OPENSSL_CONF"] = path
    return path


def key_file_for_uri(uri: str) -> int:
    """A memory file holding pkcs11-provider's PEM form of `uri`; returns its descriptor."""
    fd = os.memfd_create("qtls-hsm-key", os.MFD_CLOEXEC)
    os.write(fd, provider.pem_uri(uri))
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
