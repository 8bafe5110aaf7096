"""Plain-text facts about X.509 certificates, for the probe's summary and the server's logs.

Works on `cryptography.x509.Certificate` only; no OpenSSL calls. Key descriptions use the words
`policy.sigalg_for_key` understands ("ML-DSA-65", "ECDSA P-384", "RSA-3072", "Ed25519").
"""

from __future__ import annotations

import ipaddress

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import (
    dsa, ec, ed448, ed25519, mldsa, rsa, x448, x25519,
)

# NIST names for the curves TLS uses; any other curve keeps its SEC/OpenSSL name.
_NIST_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}

_FIXED_KINDS: tuple[tuple[type, str], ...] = (
    (mldsa.MLDSA44PublicKey, "ML-DSA-44"),
    (mldsa.MLDSA65PublicKey, "ML-DSA-65"),
    (mldsa.MLDSA87PublicKey, "ML-DSA-87"),
    (ed25519.Ed25519PublicKey, "Ed25519"),
    (ed448.Ed448PublicKey, "Ed448"),
    (x25519.X25519PublicKey, "X25519"),
    (x448.X448PublicKey, "X448"),
)


def describe_key(public_key: object) -> str:
    """'ML-DSA-65', 'ECDSA P-384', 'RSA-3072', 'Ed25519', ... for a cryptography public key."""
    for kind, name in _FIXED_KINDS:
        if isinstance(public_key, kind):
            return name
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return "ECDSA " + _NIST_CURVES.get(public_key.curve.name, public_key.curve.name)
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"RSA-{public_key.key_size}"
    if isinstance(public_key, dsa.DSAPublicKey):
        return f"DSA-{public_key.key_size}"
    return type(public_key).__name__


def certificate_key(cert: x509.Certificate) -> str:
    """describe_key of the certificate's key, or a placeholder when cryptography cannot load it.

    A summary of someone else's chain must not fail on an algorithm this build lacks."""
    try:
        return describe_key(cert.public_key())
    except (UnsupportedAlgorithm, ValueError):
        return f"unsupported key ({cert.public_key_algorithm_oid.dotted_string})"


def subject_string(cert: x509.Certificate) -> str:
    """The subject in certificate order, e.g. 'O=qproxy development, CN=localhost'.

    `Name.rfc4514_string` reverses the order (RFC 4514 puts the most specific part first);
    certificate order is what `openssl x509 -subject` and s_client show."""
    return ", ".join(rdn.rfc4514_string() for rdn in cert.subject.rdns)


def san_list(cert: x509.Certificate) -> list[str]:
    """DNS names and IP addresses of the subjectAltName extension, in certificate order."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    names: list[str] = []
    for entry in san:
        if isinstance(entry, x509.DNSName):
            names.append(entry.value)
        elif isinstance(entry, x509.IPAddress):
            names.append(_ip_text(entry.value))
    return names


def _ip_text(value: object) -> str:
    # IPAddress entries may hold networks (name constraints); a leaf carries plain addresses.
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return value.with_prefixlen
    return str(value)


def sha256_fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, lowercase hex without colons."""
    return cert.fingerprint(hashes.SHA256()).hex()
