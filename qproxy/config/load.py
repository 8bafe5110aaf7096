"""Read `server.json` into a validated, frozen `ServerConfig`, or say precisely what is wrong."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from ..errors import ConfigError, ConfigErrors
from .files import CONFIG_LIMIT, read_regular
from .messages import json_path, plain_errors
from .model import ServerConfig, listener_clashes, upstream_references

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(value: Any, environ: dict[str, str], path: tuple[Any, ...] = (),
               errors: list[ConfigError] | None = None) -> Any:
    """Replace ${VAR} in strings (the seed's `"pin": "${QTLS_HSM_PIN}"`). An unset variable
    raises, or with `errors` given is added there (and left as written) so that every one is
    reported in one run."""
    if isinstance(value, str):
        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in environ:
                error = ConfigError(json_path(path), f"environment variable {name} is not set")
                if errors is None:
                    raise error
                errors.append(error)
                return match.group(0)
            return environ[name]
        return _ENV_REF.sub(substitute, value)
    if isinstance(value, dict):
        return {k: expand_env(v, environ, (*path, k), errors) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, environ, (*path, i), errors) for i, v in enumerate(value)]
    return value


MAX_ERRORS = 50
"""Problems listed at most: a file of 100,000 unknown keys gets a readable answer."""


def _at_most(errors: list[ConfigError], limit: int) -> list[ConfigError]:
    if len(errors) <= limit:
        return errors
    return [*errors[:limit], ConfigError("", f"... and {len(errors) - limit} more problems")]


@dataclass(frozen=True)
class Checked:
    """A document checked against the model: the configuration, or every problem found and
    the top-level sections that are valid on their own (whose files can still be checked)."""

    config: ServerConfig | None
    errors: list[ConfigError] = field(default_factory=list)
    sections: dict[str, BaseModel] = field(default_factory=dict)


def _strictly(model: type[BaseModel], document: Any) -> Any:
    # Strict, as JSON: "yes", "3" or 1 are no boolean or number (lax mode took them), while a
    # JSON array still fills a tuple and an integer a float. The document came from JSON, so
    # it goes back to JSON losslessly.
    return model.model_validate_json(json.dumps(document), strict=True)


def _valid_sections(document: dict[str, Any]) -> dict[str, BaseModel]:
    """The top-level sections that validate on their own, or once their wrong keys are left
    out (a wrong `verify_client` does not keep the certificate files from being checked)."""
    sections: dict[str, BaseModel] = {}
    for name, info in ServerConfig.model_fields.items():
        model = info.annotation
        if name not in document or not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue
        section = document[name]
        for _ in range(2):
            try:
                sections[name] = _strictly(model, section)
                break
            except ValidationError as exc:
                wrong = {e["loc"][0] for e in exc.errors() if e["loc"]}
                if not isinstance(section, dict) or not wrong:
                    break
                section = {k: v for k, v in section.items() if k not in wrong}
    return sections


def check_document(document: Any, environ: dict[str, str] | None = None) -> Checked:
    """Every problem of a decoded document in one pass (never raises ConfigError)."""
    if not isinstance(document, dict):
        return Checked(None, [ConfigError("", "the top level must be a JSON object")])
    errors = check_text(document)
    if errors:
        return Checked(None, errors)
    env_errors: list[ConfigError] = []
    expanded = expand_env(document, dict(os.environ) if environ is None else environ,
                          errors=env_errors)
    try:
        config = _strictly(ServerConfig, expanded)
    except ValidationError as exc:
        errors = plain_errors(exc.errors(include_url=False), expanded, ServerConfig)
    else:
        if not env_errors:
            return Checked(config)
    unset = {e.path for e in env_errors}
    errors = env_errors + [e for e in errors if e.path not in unset]
    # The model checks names across sections only once every field is valid; listed here,
    # they come in the same run as the rest.
    seen = {e.path for e in errors}
    errors += [ConfigError(p.path, str(p))
               for p in [*upstream_references(expanded), *listener_clashes(expanded)]
               if p.path not in seen]
    return Checked(None, _at_most(errors, MAX_ERRORS), _valid_sections(expanded))


def parse_config(document: Any, source: str = "<config>",
                 environ: dict[str, str] | None = None) -> ServerConfig:
    checked = check_document(document, environ)
    if checked.config is None:
        raise ConfigErrors(source, checked.errors)
    return checked.config


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


def read_document(path: str | os.PathLike[str]) -> Any:
    """The decoded JSON of a configuration file; ConfigErrors if it cannot be read or decoded
    (then nothing else about it can be checked)."""
    source = str(path)
    try:
        return decode_json(read_regular(source, "", "the file", CONFIG_LIMIT))
    except ConfigError as exc:
        raise ConfigErrors(source, [exc]) from None


def check_config_file(path: str | os.PathLike[str],
                      environ: dict[str, str] | None = None) -> Checked:
    return check_document(read_document(path), environ)


def load_config(path: str | os.PathLike[str], environ: dict[str, str] | None = None) -> ServerConfig:
    return parse_config(read_document(path), str(path), environ)
