"""OCSP responses checked before they are stapled (RFC 6960), with no I/O.

A response is stapled only if all of this holds, so a client that trusts the staple as much as
a fresh query to the CA is never misled by us:

- it is a successful response that names *this* certificate (serial, issuer name hash and
  issuer key hash under the response's own hash algorithm);
- it is signed by the issuer itself, or by a delegated responder certificate that the issuer
  signed directly, that carries id-kp-OCSPSigning and is valid now (RFC 6960 4.2.2.2);
- `thisUpdate <= now + skew` and `now < nextUpdate`; a response without nextUpdate says nothing
  about when it goes stale, so it is refused rather than stapled forever;
- the status is good or revoked (revoked is stapled: it is the truth, and the client must hear
  it); unknown is refused.

The signature check follows the signer's key type, so a CA that signs with ML-DSA works the
same as one with ECDSA or RSA.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID
from cryptography.x509.oid import SignatureAlgorithmOID

CLOCK_SKEW = dt.timedelta(minutes=5)
"""How far in the future a thisUpdate may be: the responder's clock and ours differ."""
MAX_RESPONSE_SIZE = 64 * 1024
"""Bigger than any real response (an ML-DSA-87 signature plus a delegated responder
certificate is about 12 KiB); a responder that sends more is not read further."""


class OcspInvalid(ValueError):
    """A response that must not be stapled; the message says why, for the log line."""

    def __init__(self, reason: str, kind: str) -> None:
        super().__init__(reason)
        self.kind = kind
        """A short fixed word for the failure counter's label (bounded cardinality)."""


class CertStatus(enum.Enum):
    GOOD = "good"
    REVOKED = "revoked"


@dataclass(frozen=True)
class VerifiedResponse:
    der: bytes
    status: CertStatus
    this_update: dt.datetime
    next_update: dt.datetime
    signer: str
    """'issuer' or 'delegated responder <subject>'."""
    revocation_time: dt.datetime | None = None

    def valid_at(self, now: dt.datetime) -> bool:
        return self.this_update - CLOCK_SKEW <= now < self.next_update

    def refresh_at(self, margin: dt.timedelta) -> dt.datetime:
        """When to ask for the next one: half way through the validity, or `margin` before
        nextUpdate if that is earlier, so a failed fetch leaves time to retry; but never
        before a quarter of the validity has passed, so a response that lives shorter than
        the margin is not fetched again in a loop."""
        validity = self.next_update - self.this_update
        wanted = min(self.this_update + validity / 2, self.next_update - margin)
        return max(wanted, self.this_update + validity / 4)


def responder_urls(leaf: x509.Certificate) -> list[str]:
    """The OCSP URLs of the certificate's Authority Information Access extension."""
    try:
        aia = leaf.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return []
    return [d.access_location.value for d in aia
            if d.access_method == AuthorityInformationAccessOID.OCSP
            and isinstance(d.access_location, x509.UniformResourceIdentifier)]


def is_must_staple(leaf: x509.Certificate) -> bool:
    """The TLS Feature extension asks for status_request (RFC 7633, "OCSP Must-Staple")."""
    try:
        features = leaf.extensions.get_extension_for_class(x509.TLSFeature).value
    except x509.ExtensionNotFound:
        return False
    return x509.TLSFeatureType.status_request in features


def find_issuer(leaf: x509.Certificate, candidates: list[x509.Certificate]) -> x509.Certificate | None:
    """The candidate that signed `leaf` (by name, then by signature)."""
    for cert in candidates:
        if cert.subject != leaf.issuer:
            continue
        try:
            leaf.verify_directly_issued_by(cert)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            continue
        return cert
    return None


def build_request(leaf: x509.Certificate, issuer: x509.Certificate) -> bytes:
    """A DER OCSPRequest for `leaf`. SHA-1 CertIDs are what every responder answers (RFC
    5019 2.1.1; `openssl ocsp` matches its index by them); the hash only names the
    certificate, it secures nothing."""
    builder = ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, hashes.SHA1())
    return builder.build().public_bytes(serialization.Encoding.DER)


def verify_response(der: bytes, leaf: x509.Certificate, issuer: x509.Certificate,
                    now: dt.datetime) -> VerifiedResponse:
    """The response if it may be stapled for `leaf` at `now`; OcspInvalid saying why not."""
    if len(der) > MAX_RESPONSE_SIZE:
        raise OcspInvalid(f"response of {len(der)} bytes is larger than {MAX_RESPONSE_SIZE}",
                          "malformed")
    try:
        response = ocsp.load_der_ocsp_response(der)
    except ValueError as exc:
        raise OcspInvalid(f"not a DER OCSP response ({exc})", "malformed") from None
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise OcspInvalid(f"the responder answered {response.response_status.name}", "refused")
    single = _single_for(response, leaf, issuer)
    signer, signer_text = _signer(response, issuer, now)
    _check_signature(response, signer)
    this_update = single.this_update_utc
    next_update = single.next_update_utc
    if next_update is None:
        raise OcspInvalid("the response has no nextUpdate, so nothing says when it goes "
                          "stale", "stale")
    if this_update - CLOCK_SKEW > now:
        raise OcspInvalid(f"thisUpdate {this_update:%Y-%m-%d %H:%M:%S} UTC is in the future",
                          "not_yet_valid")
    if now >= next_update:
        raise OcspInvalid(f"stale: nextUpdate {next_update:%Y-%m-%d %H:%M:%S} UTC has passed",
                          "stale")
    status = single.certificate_status
    if status == ocsp.OCSPCertStatus.UNKNOWN:
        raise OcspInvalid("the responder does not know this certificate (status unknown)",
                          "unknown")
    if status == ocsp.OCSPCertStatus.REVOKED:
        return VerifiedResponse(der, CertStatus.REVOKED, this_update, next_update, signer_text,
                                single.revocation_time_utc)
    return VerifiedResponse(der, CertStatus.GOOD, this_update, next_update, signer_text)


def _single_for(response: ocsp.OCSPResponse, leaf: x509.Certificate,
                issuer: x509.Certificate) -> ocsp.OCSPSingleResponse:
    for single in response.responses:
        if single.serial_number != leaf.serial_number:
            continue
        expected = ocsp.OCSPRequestBuilder().add_certificate(
            leaf, issuer, single.hash_algorithm).build()
        if (single.issuer_key_hash == expected.issuer_key_hash
                and single.issuer_name_hash == expected.issuer_name_hash):
            return single
    raise OcspInvalid(f"the response is not about this certificate (serial "
                      f"{leaf.serial_number:x}, issuer {issuer.subject.rfc4514_string()})",
                      "wrong_certificate")


def _key_hash(cert: x509.Certificate) -> bytes:
    # RFC 6960 ResponderID byKey: SHA-1 of the subjectPublicKey BIT STRING, which is what
    # RFC 5280's key identifier method 1 computes.
    return x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest  # type: ignore[arg-type]


def _names_signer(response: ocsp.OCSPResponse, cert: x509.Certificate) -> bool:
    if response.responder_name is not None:
        return response.responder_name == cert.subject
    return response.responder_key_hash == _key_hash(cert)


def _signer(response: ocsp.OCSPResponse, issuer: x509.Certificate,
            now: dt.datetime) -> tuple[x509.Certificate, str]:
    if _names_signer(response, issuer):
        return issuer, "issuer"
    for cert in response.certificates:
        if not _names_signer(response, cert):
            continue
        subject = cert.subject.rfc4514_string()
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            raise OcspInvalid(f"the responder certificate {subject!r} is not signed by the "
                              "issuer", "bad_signer") from None
        try:
            usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            usages = x509.ExtendedKeyUsage([])
        if ExtendedKeyUsageOID.OCSP_SIGNING not in usages:
            raise OcspInvalid(f"the responder certificate {subject!r} lacks "
                              "id-kp-OCSPSigning", "bad_signer")
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise OcspInvalid(f"the responder certificate {subject!r} is not valid now",
                              "bad_signer")
        return cert, f"delegated responder {subject}"
    raise OcspInvalid("signed by neither the issuer nor a responder certificate the issuer "
                      "signed", "bad_signer")


def _check_signature(response: ocsp.OCSPResponse, signer: x509.Certificate) -> None:
    key = signer.public_key()
    signature, data = response.signature, response.tbs_response_bytes
    algorithm = response.signature_hash_algorithm
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            assert algorithm is not None
            key.verify(signature, data, ec.ECDSA(algorithm))
        elif isinstance(key, rsa.RSAPublicKey):
            assert algorithm is not None
            if response.signature_algorithm_oid == SignatureAlgorithmOID.RSASSA_PSS:
                pad: padding.AsymmetricPadding = padding.PSS(padding.MGF1(algorithm),
                                                             padding.PSS.AUTO)
            else:
                pad = padding.PKCS1v15()
            key.verify(signature, data, pad, algorithm)
        else:  # Ed25519, Ed448, ML-DSA: the algorithm is the key's own
            key.verify(signature, data)  # type: ignore[union-attr, call-arg]
    except InvalidSignature:
        raise OcspInvalid("the signature does not verify", "bad_signature") from None
    except (AssertionError, TypeError, ValueError, UnsupportedAlgorithm) as exc:
        raise OcspInvalid(f"cannot check a {response.signature_algorithm_oid.dotted_string} "
                          f"signature ({exc})", "bad_signature") from None
