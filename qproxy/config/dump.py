"""`qtls-server -T`: the effective configuration (defaults filled in, `${VAR}` expanded) as
JSON, with secrets masked.

Which values are secrets: config/secrets.py.
"""

from __future__ import annotations

import json
from typing import Any

from .model import ServerConfig
from .secrets import MASK, is_secret_key, mask_uri_pins

__all__ = ["MASK", "dump", "effective", "is_secret_key", "mask"]


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
        return mask_uri_pins(value)
    return value


def effective(config: ServerConfig) -> dict[str, Any]:
    """Every key with its value in force, as a JSON-ready dict, secrets masked."""
    return mask(config.model_dump(mode="json"))


def dump(config: ServerConfig) -> str:
    return json.dumps(effective(config), indent=2) + "\n"
