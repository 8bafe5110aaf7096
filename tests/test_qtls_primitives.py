"""QTLSKyber and QTLSDilithium against independent implementations.

kyber-py and dilithium-py are pure-Python FIPS 203 / 204 implementations (test-only oracles):
keys, ciphertexts and signatures made by one side must be accepted by the other, and a seed
must derive the same key pair on both. cryptography's own classes are the second reference."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric import mldsa, mlkem
from dilithium_py.ml_dsa import ML_DSA_44, ML_DSA_65, ML_DSA_87
from kyber_py.ml_kem import ML_KEM_768, ML_KEM_1024

from qproxy.qtls import (
    QTLS_KEM_KYBER768, QTLS_KEM_KYBER1024, QTLS_SIG_DILITHIUM3, QTLSCryptoError, QTLSDilithium,
    QTLSKyber, QTLSUsageError,
)

KEM_ORACLES = {"ML-KEM-768": ML_KEM_768, "ML-KEM-1024": ML_KEM_1024}
SIG_ORACLES = {"ML-DSA-44": ML_DSA_44, "ML-DSA-65": ML_DSA_65, "ML-DSA-87": ML_DSA_87}


def test_defaults_are_the_seeds_algorithms_under_their_standard_names():
    assert QTLSKyber().algorithm == "ML-KEM-1024" == QTLS_KEM_KYBER1024
    assert QTLSDilithium().algorithm == "ML-DSA-65" == QTLS_SIG_DILITHIUM3
    assert QTLSKyber("KYBER768").algorithm == QTLS_KEM_KYBER768
    assert QTLSKyber("mlkem768").algorithm == QTLS_KEM_KYBER768
    assert QTLSDilithium("DILITHIUM5").algorithm == "ML-DSA-87"
    with pytest.raises(QTLSUsageError, match="unknown KEM"):
        QTLSKyber("KYBER512")
    with pytest.raises(QTLSUsageError, match="unknown signature"):
        QTLSDilithium("falcon-512")


# -- ML-KEM --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", KEM_ORACLES)
def test_oracle_encapsulates_to_our_public_key(name):
    oracle = KEM_ORACLES[name]
    receiver = QTLSKyber(name)
    public = receiver.keygen()
    secret, ciphertext = oracle.encaps(public)
    receiver.set_ciphertext(ciphertext)
    assert receiver.decapsulate() == secret


@pytest.mark.parametrize("name", KEM_ORACLES)
def test_we_encapsulate_to_the_oracles_public_key(name):
    oracle = KEM_ORACLES[name]
    ek, dk = oracle.keygen()
    sender = QTLSKyber(name)
    sender.set_public_key(ek)
    secret = sender.encapsulate()
    assert oracle.decaps(dk, sender.get_ciphertext()) == secret


@pytest.mark.parametrize("name", KEM_ORACLES)
def test_same_seed_same_keys_as_the_oracle(name):
    seed = os.urandom(64)  # d || z
    ours = QTLSKyber(name)
    ours.set_private_key(seed)
    ek, _dk = KEM_ORACLES[name].key_derive(seed)
    assert ours.get_public_key() == ek
    assert ours.get_private_key() == seed


def test_against_cryptography_directly():
    receiver = QTLSKyber()
    receiver.keygen()
    key = mlkem.MLKEM1024PrivateKey.from_seed_bytes(receiver.get_private_key())
    secret, ciphertext = key.public_key().encapsulate()
    assert receiver.decapsulate(ciphertext) == secret
    assert key.public_key().public_bytes_raw() == receiver.get_public_key()


def test_tampered_ciphertext_gives_a_different_secret_not_an_error():
    receiver, sender = QTLSKyber(), QTLSKyber()
    sender.set_public_key(receiver.keygen())
    secret = sender.encapsulate()
    ciphertext = bytearray(sender.get_ciphertext())
    ciphertext[100] ^= 0x01
    receiver.set_ciphertext(bytes(ciphertext))
    rejected = receiver.decapsulate()
    assert rejected != secret and len(rejected) == 32
    # FIPS 203 implicit rejection is deterministic: the oracle derives the same rejection key.
    oracle_dk = ML_KEM_1024.key_derive(receiver.get_private_key())[1]
    assert ML_KEM_1024.decaps(oracle_dk, bytes(ciphertext)) == rejected


def test_kem_bad_input_is_a_clear_error():
    kem = QTLSKyber()
    with pytest.raises(QTLSUsageError, match="set_public_key"):
        kem.encapsulate()
    with pytest.raises(QTLSUsageError, match="keygen"):
        kem.get_public_key()
    with pytest.raises(QTLSCryptoError, match="1568 bytes, got 1184"):
        kem.set_public_key(QTLSKyber("ML-KEM-768").keygen())
    with pytest.raises(QTLSCryptoError, match="ciphertext is 1568 bytes, got 10"):
        kem.set_ciphertext(b"0123456789")
    with pytest.raises(QTLSCryptoError, match="got str"):
        kem.set_ciphertext("text")  # type: ignore[arg-type]
    sender = QTLSKyber()
    sender.set_public_key(QTLSKyber().keygen())
    sender.encapsulate()
    with pytest.raises(QTLSUsageError, match="private key"):
        sender.decapsulate()  # the sender only has the peer's public key
    with pytest.raises(QTLSCryptoError, match="seed is 64 bytes"):
        kem.set_private_key(b"short")


def test_public_key_with_out_of_range_coefficients_is_refused():
    bad = b"\xff" * 1568  # every 12-bit coefficient is 4095 >= q
    with pytest.raises(QTLSCryptoError, match="not a valid ML-KEM-1024 public key"):
        QTLSKyber().set_public_key(bad)


# -- ML-DSA --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SIG_ORACLES)
def test_oracle_verifies_our_signatures(name):
    signer = QTLSDilithium(name)
    public = signer.keygen()
    signature = signer.sign(b"firmware 1.2.3")
    assert SIG_ORACLES[name].verify(public, b"firmware 1.2.3", signature)
    assert not SIG_ORACLES[name].verify(public, b"firmware 1.2.4", signature)
    with_context = signer.sign(b"m", context=b"qproxy")
    assert SIG_ORACLES[name].verify(public, b"m", with_context, ctx=b"qproxy")
    assert not SIG_ORACLES[name].verify(public, b"m", with_context)


@pytest.mark.parametrize("name", SIG_ORACLES)
def test_we_verify_the_oracles_signatures(name):
    pk, sk = SIG_ORACLES[name].keygen()
    signature = SIG_ORACLES[name].sign(sk, b"image", ctx=b"ota")
    verifier = QTLSDilithium(name)
    verifier.set_public_key(pk)
    assert verifier.verify(b"image", signature, context=b"ota")
    assert not verifier.verify(b"image", signature)


@pytest.mark.parametrize("name", SIG_ORACLES)
def test_same_seed_same_keys_as_the_oracle_sig(name):
    seed = os.urandom(32)
    ours = QTLSDilithium(name)
    ours.set_private_key(seed)
    pk, _sk = SIG_ORACLES[name].key_derive(seed)
    assert ours.get_public_key() == pk


def test_signature_against_cryptography_directly():
    signer = QTLSDilithium()
    signer.keygen()
    key = mldsa.MLDSA65PrivateKey.from_seed_bytes(signer.get_private_key())
    key.public_key().verify(signer.sign(b"x"), b"x")  # raises if invalid
    verifier = QTLSDilithium()
    verifier.set_public_key(key.public_key().public_bytes_raw())
    assert verifier.verify(b"y", key.sign(b"y"))


def test_tampered_signature_or_message_is_false_never_an_exception():
    signer = QTLSDilithium()
    verifier = QTLSDilithium()
    verifier.set_public_key(signer.keygen())
    signature = signer.sign(b"message")
    flipped = bytearray(signature)
    flipped[17] ^= 0x80
    assert verifier.verify(b"message", signature) is True
    assert verifier.verify(b"message", bytes(flipped)) is False
    assert verifier.verify(b"messagE", signature) is False
    assert verifier.verify(b"message", signature[:-1]) is False
    assert verifier.verify(b"message", b"") is False
    assert verifier.verify(b"message", b"\xff" * len(signature)) is False
    assert verifier.verify(b"message", "not bytes") is False  # type: ignore[arg-type]
    other = QTLSDilithium()
    other.set_public_key(QTLSDilithium().keygen())
    assert other.verify(b"message", signature) is False


def test_signature_bad_input_is_a_clear_error(tmp_path):
    verifier = QTLSDilithium()
    with pytest.raises(QTLSUsageError, match="set_public_key"):
        verifier.verify(b"m", b"s")
    verifier.set_public_key(QTLSDilithium().keygen())
    with pytest.raises(QTLSUsageError, match="private key"):
        verifier.sign(b"m")
    with pytest.raises(QTLSCryptoError, match="1952 bytes"):
        QTLSDilithium().set_public_key(b"short")
    with pytest.raises(QTLSCryptoError, match="at most 255"):
        signer = QTLSDilithium()
        signer.keygen()
        signer.sign(b"m", context=b"x" * 256)
    ec_pem = tmp_path / "ec.pem"
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ec_pem.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    with pytest.raises(QTLSCryptoError, match="not an ML-DSA key"):
        QTLSDilithium.load_private_key_file(ec_pem)


def test_pem_round_trip_and_key_id_from_a_certificate(dev_pki):
    signer = QTLSDilithium.load_private_key_file(dev_pki.mldsa_key)
    from_cert = QTLSDilithium.load_public_key_file(dev_pki.mldsa_cert)
    assert signer.key_id == from_cert.key_id and len(signer.key_id) == 64
    assert from_cert.verify(b"m", signer.sign(b"m"))
    again = QTLSDilithium.from_private_key_pem(signer.private_key_pem())
    assert again.get_public_key() == signer.get_public_key()
    assert QTLSDilithium.from_public_key_pem(signer.public_key_pem()).key_id == signer.key_id


# -- fuzzing: arbitrary bytes never escape as anything but the documented outcomes -----------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_RECEIVER = QTLSKyber()
_RECEIVER.keygen()
_VERIFIER = QTLSDilithium()
_VERIFIER.set_public_key(QTLSDilithium().keygen())


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.binary(max_size=2000), st.binary(min_size=1568, max_size=1568)))
def test_fuzz_ciphertexts(data):
    try:
        _RECEIVER.set_ciphertext(data)
    except QTLSCryptoError:
        assert len(data) != 1568
        return
    assert len(_RECEIVER.decapsulate()) == 32


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.binary(max_size=4000), st.binary(min_size=3309, max_size=3309)),
       st.binary(max_size=64))
def test_fuzz_signatures(signature, message):
    assert _VERIFIER.verify(message, signature) is False


@settings(max_examples=40, deadline=None)
@given(st.one_of(st.binary(max_size=2000), st.binary(min_size=1952, max_size=1952)))
def test_fuzz_public_keys(data):
    verifier = QTLSDilithium()
    try:
        verifier.set_public_key(data)
    except QTLSCryptoError:
        return
    assert verifier.verify(b"m", b"\x00" * 3309) is False


@settings(max_examples=40, deadline=None)
@given(st.one_of(st.binary(max_size=2000), st.binary(min_size=1568, max_size=1568)))
def test_fuzz_kem_public_keys(data):
    sender = QTLSKyber()
    try:
        sender.set_public_key(data)
    except QTLSCryptoError:
        return
    assert len(sender.encapsulate()) == 32 and len(sender.get_ciphertext()) == 1568
