"""Read `server.json` into a validated, frozen `ServerConfig`, or say precisely what is wrong."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..errors import ConfigError, ConfigErrors
from .model import ServerConfig

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def json_path(location: tuple[Any, ...]) -> str:
    """('certificates', 'keypairs', 1, 'key') -> 'certificates.keypairs[1].key'."""
    out = ""
    for part in location:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def expand_env(value: Any, environ: dict[str, str], path: tuple[Any, ...] = ()) -> Any:
    """Replace ${VAR} in strings (the seed's `"pin": "${QTLS_HSM_PIN}"`)."""
    if isinstance(value, str):
        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in environ:
                raise ConfigError(json_path(path), f"environment variable {name} is not set")
            return environ[name]
        return _ENV_REF.sub(substitute, value)
    if isinstance(value, dict):
        return {k: expand_env(v, environ, (*path, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, environ, (*path, i)) for i, v in enumerate(value)]
    return value


def _pydantic_errors(exc: ValidationError) -> list[ConfigError]:
    errors = []
    for err in exc.errors(include_url=False):
        location = tuple(p for p in err["loc"] if p not in ("function-after",))
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key (misspelt? see the README's configuration reference)"
        elif err["type"] == "missing":
            message = "required key is missing"
        errors.append(ConfigError(json_path(location), message))
    return errors


def parse_config(document: Any, source: str = "<config>",
                 environ: dict[str, str] | None = None) -> ServerConfig:
    if not isinstance(document, dict):
        raise ConfigErrors(source, [ConfigError("", "the top level must be a JSON object")])
    try:
        expanded = expand_env(document, dict(os.environ) if environ is None else environ)
    except ConfigError as exc:
        raise ConfigErrors(source, [exc]) from None
    try:
        return ServerConfig.model_validate(expanded)
    except ValidationError as exc:
        raise ConfigErrors(source, _pydantic_errors(exc)) from None


def load_config(path: str | os.PathLike[str], environ: dict[str, str] | None = None) -> ServerConfig:
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigErrors(source, [ConfigError("", f"cannot read the file: {exc.strerror}")]) from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigErrors(source, [ConfigError(
            "", f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}")]) from None
    return parse_config(document, source, environ)
