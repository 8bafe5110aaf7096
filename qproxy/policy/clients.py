"""Which verified client certificates may pass (ghostunnel's --allow-cn, --allow-ou,
--allow-dns, --allow-uri, plus the issuing CA): a certificate passes when ANY listed value
matches, as in ghostunnel. Values compare exactly (DNS names without case); an issuer is a
distinguished name compared as a set of attributes, so the order it is written in (RFC 4514's
most-specific-first or OpenSSL's certificate order) does not matter.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID

DnKey = frozenset[tuple[str, str]]


def dn_key(name: x509.Name) -> DnKey:
    return frozenset((attr.oid.dotted_string, str(attr.value)) for attr in name)


def parse_dn(text: str) -> DnKey:
    """'CN=qproxy dev CA, O=qproxy development' (either order) -> its attribute set.
    Raises ValueError for text that is no distinguished name."""
    name = x509.Name.from_rfc4514_string(text.replace(", ", ","))
    if not list(name):
        raise ValueError("an empty distinguished name")
    return dn_key(name)


@dataclass(frozen=True)
class ClientAllowList:
    cn: frozenset[str] = frozenset()
    ou: frozenset[str] = frozenset()
    dns: frozenset[str] = frozenset()  # lower case
    uri: frozenset[str] = frozenset()
    issuer: frozenset[DnKey] = frozenset()

    def allows(self, cert: x509.Certificate) -> bool:
        subject = cert.subject
        if self.cn and any(str(a.value) in self.cn
                           for a in subject.get_attributes_for_oid(NameOID.COMMON_NAME)):
            return True
        if self.ou and any(str(a.value) in self.ou
                           for a in subject.get_attributes_for_oid(
                               NameOID.ORGANIZATIONAL_UNIT_NAME)):
            return True
        if self.issuer and dn_key(cert.issuer) in self.issuer:
            return True
        if self.dns or self.uri:
            try:
                san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            except (x509.ExtensionNotFound, ValueError):
                return False
            if self.dns and any(name.lower() in self.dns
                                for name in san.get_values_for_type(x509.DNSName)):
                return True
            if self.uri and any(uri in self.uri
                                for uri in san.get_values_for_type(x509.UniformResourceIdentifier)):
                return True
        return False


def identity_of(cert: x509.Certificate) -> str:
    """The key a client certificate's rate limit is counted under: its subject and issuer
    (two CAs may issue the same subject to different clients)."""
    return cert.subject.rfc4514_string() + "|" + cert.issuer.rfc4514_string()
