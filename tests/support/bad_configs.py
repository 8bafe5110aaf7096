"""Configuration files a careless (or hostile) operator could hand the daemon, one per class.

Each case turns a valid configuration (a dict) into the bytes of a broken `server.json`,
possibly creating odd files next to it, and names the JSON path the error must mention.
Used by `--test-config` tests (in-process and real processes) and by SIGHUP tests.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


@dataclass(frozen=True)
class BadConfig:
    name: str
    make: Callable[[dict[str, Any], Path], bytes]
    mentions: str
    """Text the error must contain: the JSON path (or the problem when there is no path)."""
    dangerous: bool = False
    """On code without the fix it blocks or eats memory: run only in a bounded subprocess."""


def _with(config: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(config)
    target = out
    for part in path[:-1]:
        target = target.setdefault(part, {}) if isinstance(part, str) else target[part]
    target[path[-1]] = value
    return out


def _dump(config: dict[str, Any]) -> bytes:
    return json.dumps(config, indent=2).encode()


def _key_is(path_of: Callable[[dict[str, Any], Path], str]) -> Callable[[dict[str, Any], Path], bytes]:
    def make(config: dict[str, Any], workdir: Path) -> bytes:
        return _dump(_with(config, ("certificates", "keypairs", 0, "key"), path_of(config, workdir)))
    return make


def _cert_is(path_of: Callable[[dict[str, Any], Path], str]) -> Callable[[dict[str, Any], Path], bytes]:
    def make(config: dict[str, Any], workdir: Path) -> bytes:
        return _dump(_with(config, ("certificates", "keypairs", 0, "cert"), path_of(config, workdir)))
    return make


def _fifo(_config: dict[str, Any], workdir: Path) -> str:
    path = workdir / "key.fifo"
    if not path.exists():
        os.mkfifo(path)
    return str(path)


def _not_utf8(config: dict[str, Any], _workdir: Path) -> bytes:
    return _dump(_with(config, ("server", "listen_address"), "XX")).replace(b'"XX"', b'"\xff\xfe"')


def _deep(config: dict[str, Any], _workdir: Path) -> bytes:
    return _dump(config)[:-1] + b', "deep": ' + b"[" * 1000 + b"]" * 1000 + b"}"


def _huge_int(config: dict[str, Any], _workdir: Path) -> bytes:
    return _dump(_with(config, ("server", "workers"), 7)).replace(
        b'"workers": 7', b'"workers": 1' + b"0" * 5000)


def _escaped(path: tuple[Any, ...], json_text: str) -> Callable[[dict[str, Any], Path], bytes]:
    """Put a raw JSON string literal (escapes kept as written) at `path`."""
    def make(config: dict[str, Any], _workdir: Path) -> bytes:
        marker = "@@MARK@@"
        return _dump(_with(config, path, marker)).replace(f'"{marker}"'.encode(),
                                                          json_text.encode())
    return make


CASES: list[BadConfig] = [
    BadConfig("not_utf8", _not_utf8, "not UTF-8"),
    BadConfig("nested_1000_deep", _deep, "nested too deeply"),
    BadConfig("integer_5000_digits", _huge_int, "invalid JSON"),
    BadConfig("nul_in_cert_path", _escaped(("certificates", "keypairs", 0, "cert"), '"/tmp/a\\u0000b"'),
              "certificates.keypairs[0].cert"),
    BadConfig("lone_surrogate_in_key_path",
              _escaped(("certificates", "keypairs", 0, "key"), '"/tmp/\\ud800.pem"'),
              "certificates.keypairs[0].key"),
    BadConfig("key_is_a_certificate", _key_is(lambda c, _w: c["certificates"]["keypairs"][0]["cert"]),
              "certificates.keypairs[0].key"),
    BadConfig("key_is_a_directory", _key_is(lambda _c, w: str(w)), "certificates.keypairs[0].key"),
    BadConfig("nul_in_log_file", _escaped(("logging", "file"), '"/tmp/qtls\\u0000.log"'),
              "logging.file"),
    BadConfig("log_file_in_missing_directory",
              lambda c, w: _dump(_with(c, ("logging", "file"), str(w / "no" / "such" / "x.log"))),
              "logging.file"),
    BadConfig("alpn_h2", lambda c, _w: _dump(_with(c, ("tls", "alpn"), ["h2", "http/1.1"])),
              "tls.alpn"),
    BadConfig("timeout_nan", _escaped(("server", "handshake_timeout"), "NaN"), "NaN"),
    BadConfig("timeout_1e300", lambda c, _w: _dump(_with(c, ("server", "handshake_timeout"), 1e300)),
              "server.handshake_timeout"),
    BadConfig("backlog_2_to_70", lambda c, _w: _dump(_with(c, ("server", "backlog"), 2**70)),
              "server.backlog"),
    BadConfig("metrics_path_route_variable",
              lambda c, _w: _dump(_with(c, ("metrics", "path"), "/{x")), "metrics.path"),
    BadConfig("provider_setting_with_line_break",
              lambda c, _w: _dump(_with(c, ("openssl", "providers"), [
                  {"name": "legacy", "activate": False,
                   "settings": {"a": "b\n[evil_sect]\nactivate = 1"}}])),
              "openssl.providers[0].settings.a"),
    BadConfig("key_is_dev_zero", _key_is(lambda _c, _w: "/dev/zero"),
              "certificates.keypairs[0].key", dangerous=True),
    BadConfig("cert_is_dev_urandom", _cert_is(lambda _c, _w: "/dev/urandom"),
              "certificates.keypairs[0].cert", dangerous=True),
    BadConfig("key_is_a_fifo", _key_is(_fifo), "certificates.keypairs[0].key", dangerous=True),
]


def case(name: str) -> BadConfig:
    return next(c for c in CASES if c.name == name)
