"""Pydantic's validation errors -> one plain-words `ConfigError` per JSON path.

What an operator sees names the path they wrote (`certificates.verify_client`), what JSON
type or value was expected and what was found, and for a misspelt key the closest known one:

    certificates.verify_client: expected true, false or "optional", got "yes"
    server.listen_adress: unknown key; did you mean "listen_address"?

and never the library's own words (`Input should be a valid tuple`, `verify_client.bool`,
`literal['optional']`, `function-after[...]`). The union members pydantic tries show up as
extra location parts and as one error each: the parts are dropped by walking the operator's
document (a part that is not a key or index of it is the library's), and the errors of one
path are merged into one line.
"""

from __future__ import annotations

import difflib
import json
import re
import types
import typing
from typing import Any, Iterable, Mapping, Sequence, Union

from pydantic import AliasChoices, BaseModel

from ..errors import ConfigError
from .secrets import MASK, is_secret_key, mask_uri_pins

# What each type error means in JSON words; merged across a union's members.
_EXPECTED: dict[str, tuple[str, ...]] = {
    "bool_type": ("true", "false"), "bool_parsing": ("true", "false"),
    "int_type": ("a whole number",), "int_parsing": ("a whole number",),
    "int_from_float": ("a whole number",),
    "float_type": ("a number",), "float_parsing": ("a number",),
    "string_type": ("a string",),
    "tuple_type": ("an array",), "list_type": ("an array",), "set_type": ("an array",),
    "dict_type": ("an object",), "model_type": ("an object",),
    "model_attributes_type": ("an object",), "dataclass_type": ("an object",),
    "none_required": ("null",),
}

# Patterns of the model, in words.
_PATTERNS = {
    r"^[^\r\n]*$": "must be one line (no line break)",
    r"^[A-Za-z0-9_.-]+$": "only letters, digits and _ . - are allowed",
}

_QUOTED = re.compile(r"'((?:[^'\\]|\\.)*)'")


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


def show(value: Any) -> str:
    """A value as the operator wrote it in JSON, short."""
    if isinstance(value, _Hidden):
        return MASK
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "an array"
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def one_of(items: Iterable[str]) -> str:
    items = list(dict.fromkeys(items))
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " or " + items[-1]


def clean_location(location: tuple[Any, ...], document: Any, *, keep_last: bool) -> tuple[Any, ...]:
    """The part of pydantic's location that exists in the operator's document. `keep_last`: the
    final part names a key that is absent (a missing required key)."""
    kept: list[Any] = []
    node = document
    for index, part in enumerate(location):
        if isinstance(node, dict) and isinstance(part, str) and part in node:
            kept.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            kept.append(part)
            node = node[part]
        elif keep_last and index == len(location) - 1:
            kept.append(part)
        # else: a union member's tag or a validator's name, which no operator wrote
    return tuple(kept)


def _unwrap(annotation: Any) -> list[Any]:
    """The concrete types an annotation allows (Annotated and Optional/Union taken apart)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return [t for arg in typing.get_args(annotation) for t in _unwrap(arg)]
    return [annotation]


def _step(annotation: Any, part: Any) -> Any:
    for candidate in _unwrap(annotation):
        origin = typing.get_origin(candidate)
        args = typing.get_args(candidate)
        if isinstance(candidate, type) and issubclass(candidate, BaseModel) and isinstance(part, str):
            for name, info in candidate.model_fields.items():
                if part == name or part in _aliases(info.validation_alias):
                    return info.annotation
        elif origin is tuple and isinstance(part, int) and args:
            return args[0]
        elif origin is list and isinstance(part, int) and args:
            return args[0]
        elif origin is dict and isinstance(part, str) and len(args) == 2:
            return args[1]
    return None


def _aliases(alias: Any) -> list[str]:
    if isinstance(alias, str):
        return [alias]
    if isinstance(alias, AliasChoices):
        return [c for c in alias.choices if isinstance(c, str)]
    return []


def known_keys(root: type[BaseModel], location: tuple[Any, ...]) -> list[str]:
    """The keys the object at `location` takes (empty if it is no model)."""
    annotation: Any = root
    for part in location:
        annotation = _step(annotation, part)
        if annotation is None:
            return []
    for candidate in _unwrap(annotation):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            keys: list[str] = []
            for name, info in candidate.model_fields.items():
                keys += [name, *[a for a in _aliases(info.validation_alias) if a != name]]
            return keys
    return []


def closest(word: str, known: Iterable[str]) -> str | None:
    """The known word a typo most likely meant (difflib, case-insensitive), or None."""
    known = list(known)
    by_lower = {k.lower(): k for k in known}
    if word.lower() in by_lower:
        return by_lower[word.lower()]
    lower = word.lower()
    matches = difflib.get_close_matches(lower, list(by_lower), n=5, cutoff=0.6)
    if not matches:
        return None
    # difflib breaks a tie by the later name in the alphabet ("hots" -> "hsts", not "host");
    # among the equally similar, the fewest keystrokes away wins, and between those the one
    # with the same letters (fingers swap letters more often than they invent one).
    def ratio(name: str) -> float:
        return difflib.SequenceMatcher(None, lower, name).ratio()
    best = ratio(matches[0])
    tied = [m for m in matches if ratio(m) == best]
    return by_lower[min(tied, key=lambda m: (_edits(lower, m), sorted(m) != sorted(lower)))]


def _edits(a: str, b: str) -> int:
    """Optimal string alignment distance: insertions, deletions, substitutions and swaps of
    two neighbouring characters, each one edit."""
    rows = [list(range(len(b) + 1))]
    for i in range(1, len(a) + 1):
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            row[j] = min(rows[-1][j] + 1, row[j - 1] + 1, rows[-1][j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], rows[-2][j - 2] + 1)
        rows.append(row)
    return rows[-1][-1]


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """'; did you mean "x"?' or ''."""
    match = closest(word, known)
    return f'; did you mean "{match}"?' if match else ""


def _unknown_key(root: type[BaseModel], location: tuple[Any, ...]) -> str:
    key = str(location[-1])
    known = known_keys(root, location[:-1])
    if not known:
        return "unknown key"
    hint = did_you_mean(key, known)
    if hint:
        return "unknown key" + hint
    return "unknown key; this object takes " + ", ".join(f'"{k}"' for k in known)


def _constraint(kind: str, ctx: dict[str, Any], value: Any) -> str | None:
    got = f", got {show(value)}"
    if kind == "greater_than_equal":
        return f"must be at least {ctx['ge']}{got}"
    if kind == "greater_than":
        return f"must be more than {ctx['gt']}{got}"
    if kind == "less_than_equal":
        return f"must be at most {ctx['le']}{got}"
    if kind == "less_than":
        return f"must be less than {ctx['lt']}{got}"
    if kind == "too_short":
        return f"needs at least {ctx['min_length']} entr{'y' if ctx['min_length'] == 1 else 'ies'}"
    if kind == "too_long":
        return f"takes at most {ctx['max_length']} entries"
    if kind == "string_too_short":
        return "must not be empty" if ctx["min_length"] == 1 else (
            f"must be at least {ctx['min_length']} characters")
    if kind == "string_too_long":
        return f"must be at most {ctx['max_length']} characters"
    if kind == "string_pattern_mismatch":
        return f"{_PATTERNS.get(ctx['pattern'], 'has a character that is not allowed')}{got}"
    if kind == "finite_number":
        return f"expected a finite number{got}"
    return None


def _plain(error: Mapping[str, Any]) -> tuple[tuple[str, ...] | None, str]:
    """(expected phrases, None) for a type error, else (None, the whole message)."""
    kind = error["type"]
    if kind in _EXPECTED:
        return _EXPECTED[kind], ""
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        return tuple(json.dumps(v) for v in _QUOTED.findall(expected)), ""
    if kind in ("value_error", "assertion_error"):
        return None, error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    message = _constraint(kind, error.get("ctx", {}), error.get("input"))
    if message is not None:
        return None, message
    # A kind not seen before: the library's sentence, in the words used everywhere else.
    return None, error["msg"].replace("Input should be", "expected")


def _split_path(path: str) -> tuple[Any, ...]:
    """'listeners[0].upstream' -> ('listeners', 0, 'upstream')."""
    parts: list[Any] = []
    for piece in path.split("."):
        name, *indexes = piece.split("[")
        if name:
            parts.append(name)
        parts += [int(i.rstrip("]")) if i.rstrip("]").isdigit() else i.rstrip("]")
                  for i in indexes]
    return tuple(parts)


def plain_errors(errors: Sequence[Mapping[str, Any]], document: Any,
                 root: type[BaseModel], prefix: tuple[Any, ...] = ()) -> list[ConfigError]:
    """Pydantic's `errors()` -> one ConfigError per JSON path, in the order first seen.
    `prefix` is where `document` sits in the whole file (a section validated on its own)."""
    expected: dict[tuple[Any, ...], list[str]] = {}
    inputs: dict[tuple[Any, ...], Any] = {}
    messages: dict[tuple[Any, ...], str] = {}
    order: list[tuple[Any, ...]] = []
    for error in errors:
        kind = error["type"]
        location = clean_location(tuple(error["loc"]), document,
                                  keep_last=kind in ("missing", "extra_forbidden"))
        error = _hide_secret(error, location)
        cause = (error.get("ctx") or {}).get("error")
        at = getattr(cause, "path", None)
        if isinstance(at, str) and at:
            # A check over several keys that names the one at fault (model.AtPath): reported
            # there, relative to where the check ran.
            location = (*location, *_split_path(at))
            kind = "located"
        if location not in inputs and location not in messages:
            order.append(location)
        if kind == "located":
            messages.setdefault(location, str(cause))
        elif kind == "extra_forbidden":
            messages[location] = _unknown_key(root, (*prefix, *location))
        elif kind == "missing":
            messages[location] = "required key is missing"
        else:
            phrases, message = _plain(error)
            if phrases is not None:
                expected.setdefault(location, []).extend(phrases)
                inputs[location] = error.get("input")
            else:
                messages.setdefault(location, message)
    out = []
    for location in order:
        if location in messages:  # a value that had the right type but not the right value
            problem = messages[location]
        else:
            problem = f"expected {one_of(expected[location])}, got {show(inputs[location])}"
        out.append(ConfigError(json_path((*prefix, *location)), mask_uri_pins(problem)))
    return out


class _Hidden:
    """A secret's value where a message would show what was written."""


def _hide_secret(error: Mapping[str, Any], location: tuple[Any, ...]) -> Mapping[str, Any]:
    """The error with its input hidden when it sits under a secret's key (`hsm.pin`, a
    provider's `pkcs11-module-token-pin`): problems are printed to terminals, journals and a
    reload's status file, and never show a secret, as `-T` does not."""
    if any(isinstance(part, str) and is_secret_key(part) for part in location):
        return {**error, "input": _Hidden()}
    return error
