"""What a handshake settled (group, cipher, peer chain, ...), for the blocking connection and
the asyncio streams alike; and the client-side settings made before a handshake."""

from __future__ import annotations

import ipaddress

from cryptography import x509
from OpenSSL import SSL

from ..tls import openssl_ext
from ..tls.certinfo import describe_key
from ..tls.policy import canonical_group, is_post_quantum, sigalg_for_key

def prepare_client(conn: SSL.Connection, server_hostname: str | None, check_hostname: bool,
                   session: SSL.Session | None) -> None:
    """SNI (not for IP literals), host-name verification, a session to resume; connect state."""
    if server_hostname:
        if not _is_ip_literal(server_hostname):
            conn.set_tlsext_host_name(server_hostname.encode("idna"))
        if check_hostname:
            openssl_ext.set_verify_host(conn, server_hostname)
    if session is not None:
        conn.set_session(session)
    conn.set_connect_state()


class NegotiatedProperties:
    """What a handshake settled, for sync and asyncio connections alike."""

    def _established(self, call: str) -> SSL.Connection:
        raise NotImplementedError

    def verify_peer_certificate(self) -> bool:
        """Whether the peer presented a certificate whose chain (and, for a client given a
        host name, whose name) verified against the context's trust anchors."""
        conn = self._established("verify_peer_certificate()")
        return conn.get_peer_certificate() is not None and openssl_ext.verify_result(conn) == 0

    @property
    def verify_result(self) -> tuple[int, str]:
        conn = self._established("verify_result")
        code = openssl_ext.verify_result(conn)
        return code, openssl_ext.verify_result_string(code)

    @property
    def negotiated_group(self) -> str | None:
        """The key-exchange group, e.g. 'X25519MLKEM768' or 'X25519'."""
        conn = self._established("negotiated_group")
        return canonical_group(openssl_ext.negotiated_group(conn))

    @property
    def is_post_quantum(self) -> bool:
        return is_post_quantum(self.negotiated_group)

    @property
    def cipher(self) -> str | None:
        conn = self._established("cipher")
        return conn.get_cipher_name()

    @property
    def protocol_version(self) -> str:
        conn = self._established("protocol_version")
        return conn.get_protocol_version_name()

    @property
    def peer_certificate(self) -> x509.Certificate | None:
        conn = self._established("peer_certificate")
        cert = conn.get_peer_certificate()
        return cert.to_cryptography() if cert is not None else None

    @property
    def peer_certificate_chain(self) -> list[x509.Certificate]:
        """The chain the peer sent, leaf first (a server's leaf is included either way)."""
        conn = self._established("peer_certificate_chain")
        chain = conn.get_peer_cert_chain(as_cryptography=True) or []
        leaf = self.peer_certificate
        if leaf is not None and (not chain or chain[0] != leaf):
            chain = [leaf, *chain]
        return list(chain)

    @property
    def peer_certificate_keys(self) -> list[str]:
        """The key kind of each certificate the peer sent, leaf first: 'ML-DSA-65',
        'ECDSA P-384', 'RSA-3072', ... (what a device checks to know the chain is PQ)."""
        return [describe_key(cert.public_key()) for cert in self.peer_certificate_chain]

    @property
    def peer_signature_algorithm(self) -> str | None:
        """The TLS 1.3 signature scheme of the peer's CertificateVerify, e.g. 'mldsa65'.

        Derived from the peer's key: in TLS 1.3 a key signs with exactly one scheme (RSA keys
        with RSA-PSS; the SHA-256 variant is reported)."""
        leaf = self.peer_certificate
        if leaf is None:
            return None
        return sigalg_for_key(describe_key(leaf.public_key()), self.protocol_version)

    @property
    def alpn_protocol(self) -> str | None:
        conn = self._established("alpn_protocol")
        chosen = conn.get_alpn_proto_negotiated()
        return chosen.decode("ascii") if chosen else None

    @property
    def session_resumed(self) -> bool:
        conn = self._established("session_resumed")
        return openssl_ext.session_reused(conn)


def _is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
