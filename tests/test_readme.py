"""The README's configuration reference names every key the configuration accepts."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from qproxy.config.model import ServerConfig, UpstreamSection

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _keys(model: type[BaseModel], prefix: str) -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
    return keys


def test_every_section_key_is_documented():
    missing = []
    for section, field in ServerConfig.model_fields.items():
        if section in ("upstreams", "routes"):
            continue
        model = field.annotation
        for key in _keys(model, section + "."):
            if f"`{key}`" not in README and not re.search(rf"`{re.escape(section)}\.[^`]*\b{key.split('.')[-1]}\b", README):
                missing.append(key)
    for key in _keys(UpstreamSection, "upstreams.<name>."):
        if f"`{key}`" not in README:
            missing.append(key)
    assert not missing, f"undocumented configuration keys: {missing}"


def test_both_commands_documented():
    assert "make run" in README and "make test" in README
