"""Which verified client certificates may pass (ghostunnel's --allow-cn, --allow-ou,
--allow-dns, --allow-uri, plus the issuing CA): a certificate passes when ANY listed value
matches, as in ghostunnel. Values compare exactly (DNS names without case); an issuer is a
distinguished name compared as a set of attributes, so the order it is written in (RFC 4514's
most-specific-first or OpenSSL's certificate order) does not matter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

# cryptography loads OpenSSL when imported, and `parse_dn` runs while the config is read,
# before OPENSSL_CONF (the HSM's provider) is set: cryptography is imported where it is used.
if TYPE_CHECKING:
    from cryptography import x509

DnKey = frozenset[tuple[str, str]]

# RFC 4514's attribute names (and OpenSSL's usual ones) -> dotted OIDs.
_ATTRIBUTE_OIDS = {
    "CN": "2.5.4.3", "C": "2.5.4.6", "L": "2.5.4.7", "ST": "2.5.4.8", "STREET": "2.5.4.9",
    "O": "2.5.4.10", "OU": "2.5.4.11", "SERIALNUMBER": "2.5.4.5", "TITLE": "2.5.4.12",
    "DC": "0.9.2342.19200300.100.1.25", "UID": "0.9.2342.19200300.100.1.1",
    "EMAILADDRESS": "1.2.840.113549.1.9.1", "E": "1.2.840.113549.1.9.1",
}
_DOTTED = re.compile(r"^[0-2](\.[0-9]+)+$")
_SEPARATOR = re.compile(r"(?<!\\)[,+]")  # a comma or plus not escaped


def dn_key(name: "x509.Name") -> DnKey:
    return frozenset((attr.oid.dotted_string, str(attr.value)) for attr in name)


def parse_dn(text: str) -> DnKey:
    """'CN=qproxy dev CA, O=qproxy development' (RFC 4514 order or certificate order: the
    attributes are compared as a set) -> its (OID, value) pairs. Raises ValueError for text
    that is no distinguished name."""
    pairs = set()
    for part in _SEPARATOR.split(text):
        kind, sep, value = part.strip().partition("=")
        kind = kind.strip()
        oid = _ATTRIBUTE_OIDS.get(kind.upper()) or (kind if _DOTTED.match(kind) else None)
        if not sep or oid is None:
            raise ValueError(f"{part.strip()[:40]!r} is not TYPE=value with a known type "
                             f"({', '.join(list(_ATTRIBUTE_OIDS)[:7])}, ... or a dotted OID)")
        value = re.sub(r"\\(.)", r"\1", value.strip())
        if not value:
            raise ValueError(f"{kind}= has no value")
        pairs.add((oid, value))
    return frozenset(pairs)


@dataclass(frozen=True)
class ClientAllowList:
    cn: frozenset[str] = frozenset()
    ou: frozenset[str] = frozenset()
    dns: frozenset[str] = frozenset()  # lower case
    uri: frozenset[str] = frozenset()
    issuer: frozenset[DnKey] = frozenset()

    def allows(self, cert: "x509.Certificate") -> bool:
        from cryptography import x509
        from cryptography.x509.oid import NameOID

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


def identity_of(cert: "x509.Certificate") -> str:
    """The key a client certificate's rate limit is counted under: its subject and issuer
    (two CAs may issue the same subject to different clients)."""
    return cert.subject.rfc4514_string() + "|" + cert.issuer.rfc4514_string()
