"""The README's configuration reference names every key the configuration accepts."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from qproxy.config.model import ListenerSection, ServerConfig, UpstreamSection

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _keys(model: type[BaseModel], prefix: str) -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
    return keys


def test_every_section_key_is_documented():
    missing = []
    for section, field in ServerConfig.model_fields.items():
        if section in ("upstreams", "routes", "listeners"):
            continue
        model = field.annotation
        for key in _keys(model, section + "."):
            if f"`{key}`" not in README and not re.search(rf"`{re.escape(section)}\.[^`]*\b{key.split('.')[-1]}\b", README):
                missing.append(key)
    for key in _keys(UpstreamSection, "upstreams.<name>."):
        if f"`{key}`" not in README:
            missing.append(key)
    for key in _keys(ListenerSection, "listeners[]."):
        if f"`{key}`" not in README:
            missing.append(key)
    assert not missing, f"undocumented configuration keys: {missing}"


def test_both_commands_documented():
    assert "make run" in README and "make test" in README


def _reference_rows() -> list[str]:
    """The first cell of every table row in the README's configuration reference."""
    section = README.split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([^`]+)` \|", section, flags=re.MULTILINE)


def _field_names(model: type[BaseModel]) -> set[str]:
    names = set(model.model_fields)
    for name, field in model.model_fields.items():  # accepted aliases (worker_threads)
        choices = getattr(field.validation_alias, "choices", ())
        names.update(c for c in choices if isinstance(c, str))
    return names


def test_every_documented_key_exists():
    """The other direction: a key in the reference that the model does not know is a key an
    operator copies into server.json and then gets 'unknown key' for."""
    from qproxy.config.model import HealthCheck, Route

    unknown = []
    for key in _reference_rows():
        if key.startswith("upstreams.<name>."):
            model, name = UpstreamSection, key.removeprefix("upstreams.<name>.")
        elif key.startswith("routes[]."):
            model, name = Route, key.removeprefix("routes[].")
        elif key.startswith("listeners[]."):
            model, name = ListenerSection, key.removeprefix("listeners[].")
        elif key.count(".") == 1 and key.split(".")[0] in ServerConfig.model_fields:
            section, name = key.split(".")
            model = ServerConfig.model_fields[section].annotation
        else:
            continue  # not a key row (the algorithm-word table)
        if name not in _field_names(model):
            unknown.append(key)
    assert _reference_rows(), "the configuration reference has no table rows"
    assert not unknown, f"documented but not accepted: {unknown}"
    # The sub-keys of health_check and every route key are documented too.
    for name in HealthCheck.model_fields:
        assert f"`{name}`" in README, f"upstreams.<name>.health_check.{name} is undocumented"
    rows = set(_reference_rows())
    missing = [f"routes[].{name}" for name in Route.model_fields if f"routes[].{name}" not in rows]
    assert not missing, f"undocumented route keys: {missing}"
