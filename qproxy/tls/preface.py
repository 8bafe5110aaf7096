"""What a connection may have to read before its first TLS byte: the seam for a PROXY
protocol header from a load balancer (`proxy.proxy_accept` implements it).

`TlsServerProtocol` asks the policy for a reader when the socket connects, feeds it the first
bytes until it is done or refuses, and hands what followed the preface to the TLS machine. The
outcome types live here so that the TLS side never imports the proxy side."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class PrefaceDone:
    """The preface is complete. `client`: the real client's (host, port), or None to keep
    the socket's own peer (a load balancer's health check); `destination`: the address that
    client connected to (None with `client`); `rest`: the bytes after it."""

    client: tuple[str, int] | None
    destination: tuple[str, int] | None
    rest: bytes


@dataclass(frozen=True, slots=True)
class PrefaceRefused:
    """Close the connection. `reason` is a short fixed word (a metric label)."""

    reason: str
    detail: str


class PrefaceReader(Protocol):
    def feed(self, data: bytes) -> PrefaceDone | PrefaceRefused | None:
        """None: not complete yet."""

    def ended(self) -> PrefaceRefused:
        """The peer closed before the preface was complete."""


class PrefacePolicy(Protocol):
    timeout: float

    def reader(self, peername: Any) -> PrefaceReader | PrefaceRefused:
        """A reader for a connection from `peername`, or a refusal (an untrusted peer)."""
