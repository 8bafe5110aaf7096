"""`qtls-server -T`: the effective configuration (defaults filled in, `${VAR}` expanded) as
JSON, with secrets masked.

A secret is a value under a key named like one (`pin`, `password`, `passphrase`, `secret`,
`token_pin`, ...: `hsm.pin`, a provider setting `pkcs11-module-token-pin`) or a PIN inside a
`pkcs11:` URI (`pin-value=`). Paths to files holding secrets (`pin_file`, key files) are not
secrets and are shown.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .model import ServerConfig

MASK = "********"
_SECRET_KEY = re.compile(r"(^|[-_.])(pin|password|passwd|passphrase|secret)($|[-_.])", re.I)
_PATH_KEY = re.compile(r"(^|[-_.])(file|path)$", re.I)
_URI_PIN = re.compile(r"(pin-value=)[^;?&]*", re.I)


def is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(key)) and not _PATH_KEY.search(key)


def mask(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: mask(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [mask(v, key) for v in value]
    if value is None:
        return None
    if is_secret_key(key):
        return MASK
    if isinstance(value, str):
        return _URI_PIN.sub(lambda m: m.group(1) + MASK, value)
    return value


def effective(config: ServerConfig) -> dict[str, Any]:
    """Every key with its value in force, as a JSON-ready dict, secrets masked."""
    return mask(config.model_dump(mode="json"))


def dump(config: ServerConfig) -> str:
    return json.dumps(effective(config), indent=2) + "\n"
