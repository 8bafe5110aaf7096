"""`server.proxy_protocol`: PROXY headers accepted from trusted load balancers only.

HAProxy's doc/proxy-protocol.txt, section 5: a receiver must never guess whether a header is
present, and should accept one only from known sources; otherwise any client could choose the
address it appears to come from. So with `accept` set every connection must start with a
header, and only peers inside `trusted` may send one."""

from __future__ import annotations

import ipaddress
from typing import Any

from ..config.model import ProxyProtocolSection
from ..tls.preface import PrefaceDone, PrefaceRefused
from .proxy_protocol import Command, NeedMore, ProxyHeaderError, ProxyHeaderParser, Rejection

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ProxyHeaderReader:
    """One connection's header, fed as it arrives (implements tls.preface.PrefaceReader)."""

    __slots__ = ("_parser",)

    def __init__(self, parser: ProxyHeaderParser) -> None:
        self._parser = parser

    def feed(self, data: bytes) -> PrefaceDone | PrefaceRefused | None:
        try:
            result = self._parser.feed(data)
        except ProxyHeaderError as error:
            return PrefaceRefused(error.reason.value, error.detail)
        if isinstance(result, NeedMore):
            return None
        if result.command is Command.PROXY and result.source is not None:
            return PrefaceDone(result.source, result.destination, result.rest)
        return PrefaceDone(None, None, result.rest)

    def ended(self) -> PrefaceRefused:
        try:
            self._parser.eof()
        except ProxyHeaderError as error:
            return PrefaceRefused(error.reason.value, error.detail)
        raise AssertionError("eof() always raises")  # pragma: no cover


class ProxyHeaderPolicy:
    """Implements tls.preface.PrefacePolicy for one listener's settings."""

    def __init__(self, accept: frozenset[int], trusted: tuple[_Network, ...],
                 timeout: float, path: str = "server.proxy_protocol") -> None:
        self.accept = accept
        self.trusted = trusted
        self.timeout = timeout
        self.path = path  # where the operator wrote it, for the refusal's detail

    @classmethod
    def from_section(cls, section: ProxyProtocolSection, handshake_timeout: float,
                     path: str = "server.proxy_protocol") -> "ProxyHeaderPolicy | None":
        if not section.accept:
            return None
        return cls(frozenset(int(v[1]) for v in section.accept),
                   tuple(ipaddress.ip_network(c) for c in section.trusted),
                   section.timeout if section.timeout is not None else handshake_timeout,
                   path)

    def trusts(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # an IPv4 balancer seen through a "::" listener
        return any(address in network for network in self.trusted)

    def reader(self, peername: Any) -> ProxyHeaderReader | PrefaceRefused:
        host = peername[0] if isinstance(peername, tuple) and peername else str(peername)
        if not self.trusts(str(host)):
            return PrefaceRefused(Rejection.UNTRUSTED.value,
                                  f"{host} is not in {self.path}.trusted")
        return ProxyHeaderReader(ProxyHeaderParser(self.accept))
