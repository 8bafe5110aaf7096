"""`qtls-server --version` / `qproxy --version`: what this installation is and can do (nginx -V).

Every line is asked of the running software: OpenSSL's version and its post-quantum groups and
signature algorithms from the bundled OpenSSL itself, pkcs11-provider by loading it.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from . import __version__
from .keys.provider import PROVIDER_MODULE_DIRS, find_provider_module


# Run in a child: a broken module can crash the process that dlopen()s it.
_LOAD_PROBE = """
import ctypes, sys
try:
    module = ctypes.CDLL(sys.argv[1])
except OSError as exc:
    print(exc); sys.exit(1)
if not hasattr(module, "OSSL_provider_init"):
    print("no OSSL_provider_init symbol: not an OpenSSL provider"); sys.exit(1)
"""


def fips_status(config: Any | None, unreadable: str | None = None) -> str:
    """The FIPS line, as the startup log says it (tls/fips.py); a configuration that exists
    but cannot be read leaves it unknown rather than "off"."""
    if config is None and unreadable:
        return f"unknown ({unreadable} could not be read; qtls-server -t says why)"
    if config is None:
        return "off"
    from .tls import fips

    return fips.fips_status(config).removeprefix("FIPS mode: ")


def pkcs11_provider_status() -> str:
    module = find_provider_module()
    if module is None:
        return (f"not found (looked for pkcs11.so in {', '.join(PROVIDER_MODULE_DIRS)}; "
                "Debian package pkcs11-provider)")
    try:
        result = subprocess.run([sys.executable, "-c", _LOAD_PROBE, module], capture_output=True,
                                text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{module} could not be tried: {exc}"
    if result.returncode != 0:
        reason = (result.stdout or result.stderr).strip().splitlines()
        return f"{module} does not load: {reason[-1] if reason else f'exit {result.returncode}'}"
    return f"{module} loads (used when hsm.enabled is true)"


def report(config: Any | None = None, unreadable: str | None = None) -> str:
    from .tls import capabilities
    from .tls.openssl_ext import openssl_version

    import cryptography

    groups = capabilities.pq_groups()
    sigalgs = capabilities.pq_sigalgs()
    lines = [
        f"qproxy {__version__} (qtls-server)",
        f"Python: {platform.python_version()} ({platform.python_implementation()}, "
        f"{Path(sys.executable)})",
        f"OpenSSL: {openssl_version()} (inside cryptography {cryptography.__version__})",
        f"post-quantum groups: {' '.join(groups) or 'none'}",
        f"post-quantum signature algorithms: {' '.join(sigalgs) or 'none'}",
        f"pkcs11-provider: {pkcs11_provider_status()}",
        f"FIPS: {fips_status(config, unreadable)}",
    ]
    return "\n".join(lines)
