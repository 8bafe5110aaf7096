"""OpenSSL provider configuration: what lets the bundled OpenSSL sign inside an HSM.

The generated OpenSSL config and the PIN live in memory files (memfd) that every process of
the daemon inherits and OpenSSL reads as /proc/self/fd/N: nothing secret is written to disk.
`OPENSSL_CONF` must be set before OpenSSL initialises, i.e. before `cryptography` or
`OpenSSL` is imported; this module imports neither.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from ..config.files import SECRET_LIMIT, read_regular
from ..config.model import HsmSection, OpensslSection, ServerConfig
from ..errors import ConfigError

PEM_URI_DESCRIPTION = "PKCS#11 Provider URI v1.0"
PEM_URI_LABEL = "PKCS#11 PROVIDER URI"
PROVIDER_MODULE_DIRS = (
    "/usr/lib/x86_64-linux-gnu/ossl-modules", "/usr/lib/aarch64-linux-gnu/ossl-modules",
    "/usr/lib64/ossl-modules", "/usr/lib/ossl-modules", "/usr/local/lib/ossl-modules",
)
PIN_FILE_ENV = "QTLS_HSM_PIN_FILE"
PIN_ENV = "QTLS_HSM_PIN"


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    body = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def pem_uri(uri: str) -> bytes:
    """pkcs11-provider's PEM key form: SEQUENCE { VisibleString desc, UTF8String uri }."""
    desc = PEM_URI_DESCRIPTION.encode("ascii")
    body = (b"\x1a" + _der_length(len(desc)) + desc
            + b"\x0c" + _der_length(len(uri.encode())) + uri.encode())
    der = b"\x30" + _der_length(len(body)) + body
    lines = base64.encodebytes(der).decode().strip()
    return f"-----BEGIN {PEM_URI_LABEL}-----\n{lines}\n-----END {PEM_URI_LABEL}-----\n".encode()


def find_provider_module(name: str = "pkcs11") -> str | None:
    for directory in PROVIDER_MODULE_DIRS:
        candidate = Path(directory) / f"{name}.so"
        if candidate.is_file():
            return str(candidate)
    return None


def resolve_pin(hsm: HsmSection, environ: dict[str, str] | None = None) -> str | None:
    """The token PIN from (in order) hsm.pin, hsm.pin_file, $QTLS_HSM_PIN_FILE, $QTLS_HSM_PIN."""
    env = os.environ if environ is None else environ
    if hsm.pin:
        return hsm.pin
    pin_file = hsm.pin_file or env.get(PIN_FILE_ENV)
    if pin_file:
        data = read_regular(pin_file, "hsm.pin_file", "the PIN file", SECRET_LIMIT)
        try:
            return data.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise ConfigError("hsm.pin_file", f"the PIN file {pin_file!r} is not UTF-8 "
                              "text") from None
    return env.get(PIN_ENV)


def memory_file(name: str, data: bytes) -> str:
    """An inheritable in-memory file; returns a path every process of the daemon can open."""
    fd = os.memfd_create(name, 0)  # no MFD_CLOEXEC: workers inherit it
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return f"/proc/self/fd/{fd}"


def openssl_config(hsm: HsmSection, openssl: OpensslSection, pin_path: str | None,
                   module: str | None, fips_properties: bool = False) -> str:
    """The OpenSSL config text: default provider kept active, pkcs11 and any other providers."""
    sections = {"default": ["activate = 1"]}
    if hsm.enabled:
        pkcs11 = [f"module = {module}", f"pkcs11-module-path = {hsm.pkcs11_library}",
                  # Open the PKCS#11 module at first use, which is after fork, in each worker:
                  # PKCS#11 modules are not fork-safe.
                  "pkcs11-module-load-behavior = late",
                  "pkcs11-module-cache-pins = cache",
                  "pkcs11-module-login-behavior = always",
                  f"pkcs11-module-cache-sessions = {hsm.session_pool_size}"]
        if pin_path:
            pkcs11.append(f"pkcs11-module-token-pin = file:{pin_path}")
        pkcs11.append("activate = 1")
        sections["pkcs11"] = pkcs11
    for provider in openssl.providers:
        lines = [f"module = {provider.module}"] if provider.module else []
        lines += [f"{key} = {value}" for key, value in provider.settings.items()]
        lines.append(f"activate = {1 if provider.activate else 0}")
        sections[provider.name] = lines
    out = ["openssl_conf = openssl_init", "", "[openssl_init]", "providers = provider_sect"]
    if fips_properties:
        # Every algorithm fetch (TLS included) must then come from a provider with fips=yes.
        out.append("alg_section = algorithm_sect")
    out += ["", "[provider_sect]"]
    out += [f"{name} = {name}_sect" for name in sections]
    for name, lines in sections.items():
        out += ["", f"[{name}_sect]", *lines]
    if fips_properties:
        out += ["", "[algorithm_sect]", "default_properties = fips=yes"]
    return "\n".join(out) + "\n"


def uses_fips_provider(config: ServerConfig) -> bool:
    """fips.enabled with a provider named "fips" (the operator's validated module)."""
    return config.fips.enabled and any(p.name == "fips" for p in config.openssl.providers)


def needs_providers(config: ServerConfig) -> bool:
    return config.hsm.enabled or bool(config.openssl.providers)


def install(config: ServerConfig) -> str | None:
    """Point OPENSSL_CONF at a generated config (before OpenSSL initialises); returns its path."""
    if not needs_providers(config):
        return None
    hsm = config.hsm
    pin_path = None
    module = None
    if hsm.enabled:
        if not hsm.pkcs11_library:
            raise ConfigError("hsm.pkcs11_library", "required when hsm.enabled is true (the "
                              "vendor's PKCS#11 library, e.g. libCryptoki2_64.so)")
        if not Path(hsm.pkcs11_library).is_file():
            raise ConfigError("hsm.pkcs11_library", f"{hsm.pkcs11_library!r} does not exist")
        module = hsm.provider_module or find_provider_module()
        if module is None or not Path(module).is_file():
            raise ConfigError("hsm.provider_module", "pkcs11-provider (pkcs11.so) not found; "
                              "install Debian's pkcs11-provider or set hsm.provider_module")
        pin = resolve_pin(hsm)
        if pin is None:
            raise ConfigError("hsm.pin", f"no PIN: set hsm.pin_file, ${PIN_FILE_ENV} or "
                              f"${PIN_ENV}")
        pin_path = memory_file("qtls-hsm-pin", pin.encode())
    path = memory_file("qtls-openssl.cnf",
                       openssl_config(hsm, config.openssl, pin_path, module,
                                      uses_fips_provider(config)).encode())
    os.environ["OPENSSL_CONF"] = path
    return path
