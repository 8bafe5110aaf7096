"""`QTLSDilithium`: ML-DSA (FIPS 204) signatures with the seed's method names.

The seed calls it DILITHIUM3; the standard name is ML-DSA-65 (the default here); ML-DSA-44 and
ML-DSA-87 are selectable. All arithmetic is cryptography's (OpenSSL's) ML-DSA.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Union

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import mldsa

from .constants import QTLS_SIG_DILITHIUM2, QTLS_SIG_DILITHIUM3, QTLS_SIG_DILITHIUM5
from .constants import canonical_algorithm
from .errors import QTLSCryptoError, QTLSUsageError
from .files import read_file
from .keypair import RawKeyPair

PrivateKey = Union[mldsa.MLDSA44PrivateKey, mldsa.MLDSA65PrivateKey, mldsa.MLDSA87PrivateKey]
PublicKey = Union[mldsa.MLDSA44PublicKey, mldsa.MLDSA65PublicKey, mldsa.MLDSA87PublicKey]


@dataclass(frozen=True)
class SignatureParameters:
    name: str
    private_class: (type[mldsa.MLDSA44PrivateKey] | type[mldsa.MLDSA65PrivateKey]
                    | type[mldsa.MLDSA87PrivateKey])
    public_class: (type[mldsa.MLDSA44PublicKey] | type[mldsa.MLDSA65PublicKey]
                   | type[mldsa.MLDSA87PublicKey])
    public_key_size: int
    signature_size: int
    seed_size: int = 32


SIGNATURE_PARAMETERS: dict[str, SignatureParameters] = {
    QTLS_SIG_DILITHIUM2: SignatureParameters(QTLS_SIG_DILITHIUM2, mldsa.MLDSA44PrivateKey,
                                             mldsa.MLDSA44PublicKey, 1312, 2420),
    QTLS_SIG_DILITHIUM3: SignatureParameters(QTLS_SIG_DILITHIUM3, mldsa.MLDSA65PrivateKey,
                                             mldsa.MLDSA65PublicKey, 1952, 3309),
    QTLS_SIG_DILITHIUM5: SignatureParameters(QTLS_SIG_DILITHIUM5, mldsa.MLDSA87PrivateKey,
                                             mldsa.MLDSA87PublicKey, 2592, 4627),
}
MAX_CONTEXT = 255  # FIPS 204: the context string is at most 255 bytes


def _parameters(algorithm: str) -> SignatureParameters:
    found = SIGNATURE_PARAMETERS.get(canonical_algorithm(algorithm))
    if found is None:
        raise QTLSUsageError(f"unknown signature algorithm {algorithm!r}; use one of "
                             f"{', '.join(SIGNATURE_PARAMETERS)} (or DILITHIUM2/3/5)")
    return found


def key_id(public_key_der: bytes) -> str:
    """A key's identifier: SHA-256 of its SubjectPublicKeyInfo DER, lowercase hex."""
    return hashlib.sha256(public_key_der).hexdigest()


class QTLSDilithium(RawKeyPair[PrivateKey, PublicKey]):
    """An ML-DSA key pair (to sign) or public key (to verify)."""

    parameters: SignatureParameters

    def __init__(self, algorithm: str = QTLS_SIG_DILITHIUM3) -> None:
        super().__init__(_parameters(algorithm))

    def sign(self, message: bytes, context: bytes = b"") -> bytes:
        """The signature of `message` (FIPS 204 ML-DSA.Sign, hedged, optional context)."""
        if self._private is None:
            raise QTLSUsageError("sign() needs the private key: call keygen() or "
                                 "load_private_key_file() first")
        if len(context) > MAX_CONTEXT:
            raise QTLSCryptoError(f"the context string is at most {MAX_CONTEXT} bytes")
        return self._private.sign(message, context or None)

    def verify(self, message: bytes, signature: bytes, context: bytes = b"") -> bool:
        """Whether `signature` is valid for `message` under the public key. A malformed or
        tampered signature is simply False."""
        if self._public is None:
            raise QTLSUsageError("verify() needs the public key: call set_public_key() first")
        if not isinstance(signature, (bytes, bytearray, memoryview)):
            return False
        if len(signature) != self.parameters.signature_size or len(context) > MAX_CONTEXT:
            return False
        try:
            self._public.verify(bytes(signature), message, context or None)
        except (InvalidSignature, ValueError):
            return False
        return True

    # -- interchange with files and certificates -------------------------------------------

    @property
    def key_id(self) -> str:
        """SHA-256 of the public key's SubjectPublicKeyInfo, hex: names the signer."""
        return key_id(self.public_key_der())

    def public_key_der(self) -> bytes:
        if self._public is None:
            raise QTLSUsageError("no public key")
        return self._public.public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)

    def public_key_pem(self) -> bytes:
        if self._public is None:
            raise QTLSUsageError("no public key")
        return self._public.public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)

    def private_key_pem(self) -> bytes:
        if self._private is None:
            raise QTLSUsageError("no private key")
        return self._private.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption())

    @classmethod
    def from_private_key_pem(cls, data: bytes) -> QTLSDilithium:
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise QTLSCryptoError(f"not an unencrypted PEM private key: {exc}") from None
        return cls._from_key(key, private=True)

    @classmethod
    def from_public_key_pem(cls, data: bytes) -> QTLSDilithium:
        """A public key from PEM: a SubjectPublicKeyInfo or a certificate."""
        key: object
        try:
            if b"CERTIFICATE" in data:
                from cryptography import x509

                key = x509.load_pem_x509_certificate(data).public_key()
            else:
                key = serialization.load_pem_public_key(data)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise QTLSCryptoError(f"not a PEM public key or certificate: {exc}") from None
        return cls._from_key(key, private=False)

    @classmethod
    def load_private_key_file(cls, path: str | os.PathLike[str]) -> QTLSDilithium:
        return cls.from_private_key_pem(_read(path))

    @classmethod
    def load_public_key_file(cls, path: str | os.PathLike[str]) -> QTLSDilithium:
        return cls.from_public_key_pem(_read(path))

    @classmethod
    def _from_key(cls, key: object, *, private: bool) -> QTLSDilithium:
        for params in SIGNATURE_PARAMETERS.values():
            if isinstance(key, params.private_class if private else params.public_class):
                instance = cls(params.name)
                if private:
                    instance._private = key  # type: ignore[assignment]
                    instance._public = instance._private.public_key()  # type: ignore[union-attr]
                else:
                    instance._public = key  # type: ignore[assignment]
                return instance
        raise QTLSCryptoError(f"the key is {type(key).__name__}, not an ML-DSA key")


def _read(path: str | os.PathLike[str]) -> bytes:
    return read_file(path, "key file")  # bounded, regular files only
