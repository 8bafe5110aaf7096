"""qproxy.tls.ocsp: which responses may be stapled (no sockets)."""

from __future__ import annotations

import datetime as dt

import pytest

from qproxy.tls import ocsp as verify
from tests.support.ocsp_pki import OcspCa

URL = "http://127.0.0.1:9/"


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@pytest.fixture(scope="module", params=["p384", "mldsa65"])
def ca(request, tmp_path_factory) -> OcspCa:
    ca = OcspCa(tmp_path_factory.mktemp(f"ocsp-{request.param}"), URL, kind=request.param)
    ca.issue_leaf("server")
    ca.issue_leaf("other")
    ca.issue_leaf("staple", must_staple=True)
    return ca


def test_a_good_response_signed_by_the_issuer_verifies(ca: OcspCa) -> None:
    leaf = ca.leaves["server"]
    result = verify.verify_response(ca.response(leaf), leaf.cert, ca.cert, now())
    assert result.status is verify.CertStatus.GOOD
    assert result.signer == "issuer"
    assert result.valid_at(now())


def test_revoked_is_verified_and_kept_as_revoked(ca: OcspCa) -> None:
    leaf = ca.leaves["server"]
    result = verify.verify_response(ca.response(leaf, "revoked"), leaf.cert, ca.cert, now())
    assert result.status is verify.CertStatus.REVOKED
    assert result.revocation_time is not None


def test_a_delegated_responder_with_ocsp_signing_is_accepted(ca: OcspCa) -> None:
    leaf = ca.leaves["server"]
    der = ca.response(leaf, signer=ca.responder())
    result = verify.verify_response(der, leaf.cert, ca.cert, now())
    assert result.signer.startswith("delegated responder")


def test_a_delegated_responder_without_ocsp_signing_is_refused(ca: OcspCa) -> None:
    leaf = ca.leaves["server"]
    der = ca.response(leaf, signer=ca.responder(ocsp_signing=False))
    with pytest.raises(verify.OcspInvalid, match="id-kp-OCSPSigning") as info:
        verify.verify_response(der, leaf.cert, ca.cert, now())
    assert info.value.kind == "bad_signer"


def test_a_response_forged_by_another_ca_is_refused(ca: OcspCa, tmp_path) -> None:
    leaf = ca.leaves["server"]
    forger = OcspCa(tmp_path / "forger", URL, kind=ca.kind)
    # A responder certificate the other CA signed, claiming OCSPSigning.
    der = ca.response(leaf, signer=ca.responder(issuer_key=forger.key, issuer_cert=forger.cert))
    with pytest.raises(verify.OcspInvalid, match="not signed by the issuer"):
        verify.verify_response(der, leaf.cert, ca.cert, now())


def test_a_response_signed_with_a_wrong_key_under_the_issuers_name_is_refused(
        ca: OcspCa, tmp_path) -> None:
    leaf = ca.leaves["server"]
    forger = OcspCa(tmp_path / "forger2", URL, kind=ca.kind)
    # The forger's own certificate under the issuer's name: the responder id names the issuer.
    impostor = ca._builder(ca.cert.subject, forger.key.public_key(), 1).sign(
        forger.key, None if ca.kind == "mldsa65" else verify.hashes.SHA384())
    der = ca.response(leaf, signer=(impostor, forger.key))
    with pytest.raises(verify.OcspInvalid, match="signature does not verify"):
        verify.verify_response(der, leaf.cert, ca.cert, now())


def test_a_response_about_another_certificate_is_refused(ca: OcspCa) -> None:
    der = ca.response(ca.leaves["other"])
    with pytest.raises(verify.OcspInvalid, match="not about this certificate"):
        verify.verify_response(der, ca.leaves["server"].cert, ca.cert, now())


def test_a_stale_response_is_refused(ca: OcspCa) -> None:
    leaf = ca.leaves["server"]
    der = ca.response(leaf, this_update=now() - dt.timedelta(hours=2),
                      next_update=dt.timedelta(hours=1))
    with pytest.raises(verify.OcspInvalid, match="stale") as info:
        verify.verify_response(der, leaf.cert, ca.cert, now())
    assert info.value.kind == "stale"


def test_this_update_in_the_future_beyond_the_skew_is_refused(ca: OcspCa) -> None:
    leaf = ca.leaves["server"]
    der = ca.response(leaf, this_update=now() + dt.timedelta(hours=1))
    with pytest.raises(verify.OcspInvalid, match="in the future"):
        verify.verify_response(der, leaf.cert, ca.cert, now())
    # Within the skew allowance: accepted.
    der = ca.response(leaf, this_update=now() + dt.timedelta(minutes=2))
    verify.verify_response(der, leaf.cert, ca.cert, now())


def test_a_response_without_next_update_is_refused(ca: OcspCa) -> None:
    leaf = ca.leaves["server"]
    with pytest.raises(verify.OcspInvalid, match="no nextUpdate"):
        verify.verify_response(ca.response(leaf, next_update=None), leaf.cert, ca.cert, now())


def test_status_unknown_is_refused(ca: OcspCa) -> None:
    leaf = ca.leaves["server"]
    with pytest.raises(verify.OcspInvalid, match="unknown"):
        verify.verify_response(ca.response(leaf, "unknown"), leaf.cert, ca.cert, now())


def test_garbage_is_refused(ca: OcspCa) -> None:
    leaf = ca.leaves["server"]
    with pytest.raises(verify.OcspInvalid, match="not a DER OCSP response"):
        verify.verify_response(b"\x30\x03\x0a\x01", leaf.cert, ca.cert, now())
    with pytest.raises(verify.OcspInvalid, match="larger than"):
        verify.verify_response(b"\x00" * (verify.MAX_RESPONSE_SIZE + 1), leaf.cert, ca.cert,
                               now())


def test_refresh_at_is_half_the_validity_or_the_margin() -> None:
    start = now()
    response = verify.VerifiedResponse(b"", verify.CertStatus.GOOD, start,
                                       start + dt.timedelta(days=7), "issuer")
    assert response.refresh_at(dt.timedelta(hours=1)) == start + dt.timedelta(days=3.5)
    short = verify.VerifiedResponse(b"", verify.CertStatus.GOOD, start,
                                    start + dt.timedelta(minutes=10), "issuer")
    assert short.refresh_at(dt.timedelta(minutes=4)) == start + dt.timedelta(minutes=5)
    assert short.refresh_at(dt.timedelta(minutes=6)) == start + dt.timedelta(minutes=4)
    # A margin longer than the validity: not at once (a fetch loop), after a quarter of it.
    assert short.refresh_at(dt.timedelta(hours=1)) == start + dt.timedelta(minutes=2.5)


def test_aia_must_staple_and_issuer_are_read_from_the_certificate(ca: OcspCa) -> None:
    leaf = ca.leaves["staple"].cert
    assert verify.responder_urls(leaf) == [URL]
    assert verify.is_must_staple(leaf)
    assert not verify.is_must_staple(ca.leaves["server"].cert)
    assert verify.find_issuer(leaf, [leaf, ca.cert]) == ca.cert
    assert verify.find_issuer(leaf, [leaf]) is None
    assert verify.build_request(leaf, ca.cert)[:1] == b"\x30"
