"""Known-answer self-tests of the algorithms a FIPS-mode listener uses.

Each test runs the OpenSSL the daemon serves with (cryptography's bundled OpenSSL, the same
library pyOpenSSL's TLS uses) on fixed inputs and compares with answers from elsewhere:
ML-KEM and ML-DSA answers from independent implementations (kat_vectors.py, see
tests/support/kat_vectors.py), ECDSA P-256 from RFC 6979, ECDSA P-384 and RSA-PSS made once and checked with Debian's
OpenSSL, AES-GCM from the GCM
specification's test cases, HKDF from RFC 5869. They run in the master before any worker is
forked and in --test-config; a failure stops the start (FIPS 140-3 asks a module to run its
self-tests before first use; this is the same idea, not a validated module's self-test).

The test hook QTLS_FIPS_KAT_CORRUPT=<name> flips one bit of that test's expected answer, so a
test can show that a failing self-test stops the start.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Callable, Iterable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, mldsa, mlkem, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import QProxyError
from .kat_vectors import MESSAGE, VECTORS

CORRUPT_ENV = "QTLS_FIPS_KAT_CORRUPT"


class SelfTestError(QProxyError):
    """A known-answer test gave the wrong answer: this OpenSSL must not be used in FIPS mode."""

    def __init__(self, algorithm: str, detail: str) -> None:
        self.algorithm = algorithm
        super().__init__(f"FIPS self-test failed: {algorithm}: {detail}; refusing to start "
                         "(reinstall qproxy's dependencies, or turn fips.enabled off)")


def _expected(name: str, value: bytes) -> bytes:
    """The answer, with one bit flipped when the test hook names this test."""
    if os.environ.get(CORRUPT_ENV, "").lower() == name:
        return bytes([value[0] ^ 0x01]) + value[1:]
    return value


def _field(name: str, key: str) -> bytes:
    return bytes.fromhex(VECTORS[name][key])


def _check(name: str, got: bytes, want: bytes, what: str) -> None:
    if got != _expected(name, want):
        raise SelfTestError(name, f"{what} differs from the known answer")


# -- ML-KEM (FIPS 203): keygen from seed, decapsulation, implicit rejection -------------------
_MLKEM: dict[str, type[mlkem.MLKEM768PrivateKey] | type[mlkem.MLKEM1024PrivateKey]] = {
    "mlkem768": mlkem.MLKEM768PrivateKey, "mlkem1024": mlkem.MLKEM1024PrivateKey}


def _mlkem(name: str) -> None:
    key = _MLKEM[name].from_seed_bytes(_field(name, "seed"))
    ek = key.public_key().public_bytes_raw()
    if hashlib.sha256(ek).hexdigest() != VECTORS[name]["ek_sha256"]:
        raise SelfTestError(name, "key generation from the seed gave another public key")
    ciphertext = _field(name, "ciphertext")
    _check(name, key.decapsulate(ciphertext), _field(name, "shared"), "decapsulated secret")
    bad = bytes([ciphertext[0] ^ 1]) + ciphertext[1:]
    if key.decapsulate(bad) != _field(name, "rejected"):
        raise SelfTestError(name, "implicit rejection of a modified ciphertext differs")


# -- ML-DSA (FIPS 204): keygen from seed, verify a fixed signature, refuse a modified one ----
_MLDSA: dict[str, type[mldsa.MLDSA44PrivateKey] | type[mldsa.MLDSA65PrivateKey]
             | type[mldsa.MLDSA87PrivateKey]] = {"mldsa44": mldsa.MLDSA44PrivateKey, "mldsa65": mldsa.MLDSA65PrivateKey,
          "mldsa87": mldsa.MLDSA87PrivateKey}


def _mldsa(name: str) -> None:
    key = _MLDSA[name].from_seed_bytes(_field(name, "seed"))
    public = key.public_key()
    if public.public_bytes_raw() != _field(name, "public"):
        raise SelfTestError(name, "key generation from the seed gave another public key")
    signature = _expected(name, _field(name, "signature"))
    try:
        public.verify(signature, MESSAGE)
    except InvalidSignature:
        raise SelfTestError(name, "the known signature does not verify") from None
    _must_not_verify(name, lambda: public.verify(signature, MESSAGE + b"!"))


def _must_not_verify(name: str, verify: Callable[[], None]) -> None:
    try:
        verify()
    except InvalidSignature:
        return
    raise SelfTestError(name, "a signature over another message verified")


# -- ECDSA (FIPS 186-5) ------------------------------------------------------------------------
# RFC 6979 A.2.5: P-256, SHA-256, message "sample".
_P256 = {
    "x": "60FED4BA255A9D31C961EB74C6356D68C049B8923B61FA6CE669622E60F29FB6",
    "y": "7903FE1008B8BC99A41AE9E95628BC64F2F1B20C2D7E9F5177A3C294D4462299",
    "r": "EFD48B2AACB6A8FD1140DD9CD45E81D69D2C877B56AAF991C34D0EA84EAF3716",
    "s": "F7CB1C942D657C41D436C7A1B6E29F65F3E900DBB9AFF4064DC4AB2F843ACDA8",
}


def _ecdsa_p256(name: str) -> None:
    public = ec.EllipticCurvePublicNumbers(int(_P256["x"], 16), int(_P256["y"], 16),
                                           ec.SECP256R1()).public_key()
    r = int.from_bytes(_expected(name, bytes.fromhex(_P256["r"])), "big")
    signature = encode_dss_signature(r, int(_P256["s"], 16))
    try:
        public.verify(signature, b"sample", ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise SelfTestError(name, "the RFC 6979 signature does not verify") from None
    _must_not_verify(name, lambda: public.verify(signature, b"sample!", ec.ECDSA(hashes.SHA256())))


def _ecdsa_p384(name: str) -> None:
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP384R1(), _field(name, "public"))
    signature = _expected(name, _field(name, "signature"))
    try:
        public.verify(signature, MESSAGE, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise SelfTestError(name, "the known signature does not verify") from None


# -- RSA-PSS (FIPS 186-5), the scheme every TLS 1.3 RSA certificate signs with ----------------
def _rsa_pss(name: str) -> None:
    public = serialization.load_der_public_key(_field(name, "public"))
    if not isinstance(public, rsa.RSAPublicKey):
        raise SelfTestError(name, "the known public key is not RSA")
    signature = _expected(name, _field(name, "signature"))
    pss = padding.PSS(padding.MGF1(hashes.SHA256()), 32)
    try:
        public.verify(signature, MESSAGE, pss, hashes.SHA256())
    except InvalidSignature:
        raise SelfTestError(name, "the known signature does not verify") from None
    _must_not_verify(name, lambda: public.verify(signature, MESSAGE + b"!", pss, hashes.SHA256()))


# -- AES-GCM (SP 800-38D): the GCM specification's test cases 2 (AES-128) and 14 (AES-256) ----
_GCM = {
    "aes-128-gcm": (bytes(16), "0388dace60b6a392f328c2b971b2fe78ab6e47d42cec13bdf53a67b21257bddf"),
    "aes-256-gcm": (bytes(32), "cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919"),
}


def _aes_gcm(name: str) -> None:
    key, answer = _GCM[name]
    aead = AESGCM(key)
    want = bytes.fromhex(answer)
    _check(name, aead.encrypt(bytes(12), bytes(16), None), want, "ciphertext and tag")
    if aead.decrypt(bytes(12), want, None) != bytes(16):
        raise SelfTestError(name, "decryption of the known ciphertext differs")


# -- HKDF with SHA-256 (SP 800-56C, the TLS 1.3 key schedule): RFC 5869 A.1 -------------------
def _hkdf_sha256(name: str) -> None:
    okm = HKDF(hashes.SHA256(), 42, bytes(range(13)), bytes(range(0xF0, 0xFA))).derive(
        b"\x0b" * 22)
    _check(name, okm, bytes.fromhex(
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"),
        "derived key")


@dataclass(frozen=True)
class SelfTest:
    name: str
    run: Callable[[str], None]


SELF_TESTS: dict[str, SelfTest] = {t.name: t for t in (
    SelfTest("mlkem768", _mlkem), SelfTest("mlkem1024", _mlkem),
    SelfTest("mldsa44", _mldsa), SelfTest("mldsa65", _mldsa), SelfTest("mldsa87", _mldsa),
    SelfTest("ecdsa-p256", _ecdsa_p256), SelfTest("ecdsa-p384", _ecdsa_p384),
    SelfTest("rsa-pss-2048", _rsa_pss),
    SelfTest("aes-128-gcm", _aes_gcm), SelfTest("aes-256-gcm", _aes_gcm),
    SelfTest("hkdf-sha256", _hkdf_sha256),
)}


def run_self_tests(names: Iterable[str]) -> list[str]:
    """Run the named tests (unknown names are a programming error); return the names run."""
    ran = []
    for name in dict.fromkeys(names):
        test = SELF_TESTS[name]
        try:
            test.run(name)
        except SelfTestError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of the library is a failed test
            raise SelfTestError(name, f"{type(exc).__name__}: {exc}") from None
        ran.append(name)
    return ran
