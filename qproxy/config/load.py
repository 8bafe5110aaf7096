"""Read `server.json` into a validated, frozen `ServerConfig`, or say precisely what is wrong."""

from __future__ import annotations

import json
import os
import re
from typing import Any

from pydantic import ValidationError

from ..errors import ConfigError, ConfigErrors
from .files import CONFIG_LIMIT, read_regular
from .model import AtPath, ServerConfig

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def json_path(location: tuple[Any, ...]) -> str:
    """('certificates', 'keypairs', 1, 'key') -> 'certificates.keypairs[1].key'."""
    out = ""
    for part in location:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.isprintable() and part and '"' not in part:
            out += ("." if out else "") + part
        else:  # a key with line breaks or control characters: one error stays one line
            out += f"[{json.dumps(str(part))}]"
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


MAX_ERRORS = 50
"""Problems listed at most: a file of 100,000 unknown keys gets a readable answer."""


def _at_most(errors: list[ConfigError], limit: int) -> list[ConfigError]:
    if len(errors) <= limit:
        return errors
    return [*errors[:limit], ConfigError("", f"... and {len(errors) - limit} more problems")]


def _pydantic_errors(exc: ValidationError) -> list[ConfigError]:
    errors = []
    for err in exc.errors(include_url=False):
        location = tuple(p for p in err["loc"] if p not in ("function-after",))
        message = err["msg"].removeprefix("Value error, ")
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, AtPath):  # a check over several keys names the one at fault
            located = json_path(location)
            at = f"{located}.{cause.path}" if located else cause.path
            errors.append(ConfigError(at, str(cause)))
            continue
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
    errors = check_text(document)
    if errors:
        raise ConfigErrors(source, errors)
    try:
        expanded = expand_env(document, dict(os.environ) if environ is None else environ)
    except ConfigError as exc:
        raise ConfigErrors(source, [exc]) from None
    try:
        return ServerConfig.model_validate(expanded)
    except ValidationError as exc:
        raise ConfigErrors(source, _at_most(_pydantic_errors(exc), MAX_ERRORS)) from None


MAX_DEPTH = 32
"""Nesting deeper than this is no qproxy configuration (the real one is 4 deep); refusing it
early keeps every later step (pydantic, env expansion) far from Python's recursion limit."""


MAX_INTEGER = 2**53
"""Larger integers are no setting's value, and lose precision in every other JSON reader."""


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def decode_json(data: bytes) -> Any:
    """Bytes -> JSON document, every failure a ConfigError: not UTF-8, not JSON, nested past
    Python's recursion limit, integers past its 4,300-digit conversion limit, NaN/Infinity."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError("", f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                          f"{exc.start})") from None
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise ConfigError("", f"invalid JSON at line {exc.lineno}, column {exc.colno}: "
                          f"{exc.msg}") from None
    except RecursionError:
        raise ConfigError("", f"invalid JSON: nested too deeply (more than {MAX_DEPTH} levels "
                          "is never a qproxy configuration)") from None
    except ValueError as exc:  # int() past sys.get_int_max_str_digits(), NaN, Infinity
        raise ConfigError("", f"invalid JSON: {exc}") from None


def check_text(document: Any) -> list[ConfigError]:
    """Strings (keys and values) the OS and our log lines can carry: no NUL, no lone surrogate;
    and no nesting past MAX_DEPTH. Walked without recursion."""
    errors: list[ConfigError] = []
    stack: list[tuple[tuple[Any, ...], Any]] = [((), document)]
    while stack and len(errors) < 20:
        location, value = stack.pop()
        if len(location) > MAX_DEPTH:
            errors.append(ConfigError(json_path(location[:MAX_DEPTH]),
                                      f"nested more than {MAX_DEPTH} levels deep"))
            continue
        if isinstance(value, dict):
            for key, item in value.items():
                problem = _bad_text(key)
                if problem:
                    errors.append(ConfigError(json_path(location), f"key {key!r}: {problem}"))
                else:
                    stack.append(((*location, key), item))
        elif isinstance(value, list):
            stack.extend(((*location, index), item) for index, item in enumerate(value))
        elif isinstance(value, int) and abs(value) > MAX_INTEGER:
            errors.append(ConfigError(json_path(location), f"the number {_short(value)} is "
                                      "out of range for any setting"))
        elif isinstance(value, str):
            problem = _bad_text(value)
            if problem:
                errors.append(ConfigError(json_path(location), problem))
    return errors


def _short(number: int) -> str:
    digits = str(abs(number))
    sign = "-" if number < 0 else ""
    return sign + digits if len(digits) <= 20 else f"{sign}{digits[:6]}... ({len(digits)} digits)"


def _bad_text(text: str) -> str | None:
    if "\0" in text:
        return "contains a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate (an unpaired \\ud800-\\udfff escape)"
    return None


def load_config(path: str | os.PathLike[str], environ: dict[str, str] | None = None) -> ServerConfig:
    source = str(path)
    try:
        document = decode_json(read_regular(source, "", "the file", CONFIG_LIMIT))
    except ConfigError as exc:
        raise ConfigErrors(source, [exc]) from None
    return parse_config(document, source, environ)
