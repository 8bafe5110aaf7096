"""The PROXY v2 header each backend connection starts with (server.send_proxy_protocol): the
client connection's addresses and TLS facts, from its HandshakeInfo and our certificates."""

from __future__ import annotations

from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from ..config.model import SendProxyProtocolSection
from ..proxy.proxy_protocol import SslInfo, build_v2
from ..tls import certinfo
from ..tls.context import ServerTls
from ..tls.machine import HandshakeInfo
from ..tls.policy import sigalg_for_key


def _address(value: Any) -> tuple[str, int] | None:
    if isinstance(value, tuple) and len(value) >= 2:
        return str(value[0]), int(value[1])
    return None


def _common_name(cert: x509.Certificate) -> str | None:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


class ProxyHeaderSender:
    """Called per backend request (the header is written only when a connection is made)."""

    def __init__(self, section: SendProxyProtocolSection, server_tls: ServerTls) -> None:
        self.crc32c = section.crc32c
        self._server_tls = server_tls
        # Our certificates are few and fixed per generation: their facts are worked out once.
        self._cert_facts: dict[bytes, tuple[str | None, str | None]] = {}

    def _certificate(self, der: bytes) -> tuple[str | None, str | None]:
        """(signature algorithm, key algorithm) of one of our certificates."""
        facts = self._cert_facts.get(der)
        if facts is None:
            cert = x509.load_der_x509_certificate(der)
            oid = cert.signature_algorithm_oid
            facts = (getattr(oid, "_name", None) or oid.dotted_string,
                     certinfo.certificate_key(cert))
            self._cert_facts[der] = facts
        return facts

    def ssl_info(self, info: HandshakeInfo) -> SslInfo:
        sig_alg = key_alg = sig_scheme = None
        if info.own_cert_der is not None:
            sig_alg, key_alg = self._certificate(info.own_cert_der)
            kind = self._server_tls.key_kind_of(info.own_cert_der)
            # A resumed handshake signs nothing: no signature scheme then.
            sig_scheme = sigalg_for_key(kind, info.version) if kind and not info.resumed else None
        peer = info.peer_cert
        return SslInfo(
            version=info.version, cipher=info.cipher, sig_alg=sig_alg, key_alg=key_alg,
            group=info.group, sig_scheme=sig_scheme,
            client_cn=_common_name(peer) if peer is not None else None,
            cert_in_connection=peer is not None and not info.resumed,
            cert_in_session=peer is not None,
            # 0: a client certificate that verified; non-zero otherwise (none, or unverified).
            verify=0 if peer is not None and info.peer_verified else 1)

    def __call__(self, transport: Any, info: HandshakeInfo | None) -> bytes:
        return build_v2(
            _address(transport.get_extra_info("peername")),
            _address(transport.get_extra_info("sockname")),
            alpn=info.alpn if info else None, authority=info.server_name if info else None,
            ssl=self.ssl_info(info) if info is not None else None, crc32c=self.crc32c)
