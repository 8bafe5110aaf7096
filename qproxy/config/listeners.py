"""Every listener of a configuration, with what it inherits from the top level filled in.

The top-level `server` + `tls` + `certificates` + `routes` are the first listener, named
"default", mode http (every configuration written before `listeners` existed stays valid);
each `listeners` entry follows, taking `tls`, `certificates` and `routes` from the top level
where it gives none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .model import (DEFAULT_LISTENER, CertificatesSection, ListenerSettings, Route, ServerConfig,
                    TlsSection)


@dataclass(frozen=True)
class Listener:
    name: str
    mode: Literal["http", "tcp"]
    settings: ListenerSettings  # address, port, backlog, timeouts, request limits
    tls: TlsSection
    certificates: CertificatesSection
    routes: tuple[Route, ...]  # http mode
    upstream: str | None  # tcp mode
    idle_timeout: float  # tcp mode
    json_path: str  # where it is written: "server" or "listeners[1]"
    own_tls: bool  # its `tls` is its own (errors name listeners[i].tls)
    own_certificates: bool

    @property
    def address(self) -> tuple[str, int]:
        return self.settings.listen_address, self.settings.listen_port

    def config_path(self, path: str) -> str:
        """A path build_server_tls reports ('certificates.keypairs[0].key', 'tls') as written
        in the operator's file: under this listener when the section is its own."""
        for section, own in (("certificates", self.own_certificates), ("tls", self.own_tls)):
            if own and (path == section or path.startswith(section + ".")):
                return f"{self.json_path}.{path}"
        return path


def listeners_of(config: ServerConfig) -> tuple[Listener, ...]:
    default = Listener(DEFAULT_LISTENER, "http", config.server, config.tls, config.certificates,
                       config.effective_routes(), None, 0.0, "server", False, False)
    extra = tuple(
        Listener(section.name, section.mode, section, section.tls or config.tls,
                 section.certificates or config.certificates,
                 (section.routes or config.effective_routes()) if section.mode == "http" else (),
                 section.upstream, section.idle_timeout, f"listeners[{index}]",
                 section.tls is not None, section.certificates is not None)
        for index, section in enumerate(config.listeners))
    return (default, *extra)


def with_listener_tls(config: ServerConfig, listener: Listener) -> ServerConfig:
    """The configuration as the TLS context builder reads it for `listener`: the same
    algorithms, HSM and FIPS settings, the listener's `tls` and `certificates`. A tcp
    listener's `tls.alpn` is its own list or none: never the HTTP door's "http/1.1"."""
    tls = listener.tls
    if listener.mode == "tcp":
        alpn = (tls.alpn or ()) if listener.own_tls else ()
        if tls.alpn != alpn:
            tls = tls.model_copy(update={"alpn": alpn})
    if tls is config.tls and listener.certificates is config.certificates:
        return config
    return config.model_copy(update={"tls": tls, "certificates": listener.certificates})
