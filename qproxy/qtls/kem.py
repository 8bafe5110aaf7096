"""`QTLSKyber`: ML-KEM (FIPS 203) key encapsulation with the seed's method names.

The seed calls it KYBER1024; the standard name is ML-KEM-1024 (the default here), ML-KEM-768
is selectable. All arithmetic is cryptography's (OpenSSL's) ML-KEM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from cryptography.hazmat.primitives.asymmetric import mlkem

from .constants import QTLS_KEM_KYBER768, QTLS_KEM_KYBER1024, canonical_algorithm
from .errors import QTLSCryptoError, QTLSUsageError
from .keypair import RawKeyPair, describe

PrivateKey = Union[mlkem.MLKEM768PrivateKey, mlkem.MLKEM1024PrivateKey]
PublicKey = Union[mlkem.MLKEM768PublicKey, mlkem.MLKEM1024PublicKey]


@dataclass(frozen=True)
class KemParameters:
    name: str
    private_class: type[mlkem.MLKEM768PrivateKey] | type[mlkem.MLKEM1024PrivateKey]
    public_class: type[mlkem.MLKEM768PublicKey] | type[mlkem.MLKEM1024PublicKey]
    public_key_size: int
    ciphertext_size: int
    shared_secret_size: int = 32
    seed_size: int = 64


KEM_PARAMETERS: dict[str, KemParameters] = {
    QTLS_KEM_KYBER768: KemParameters(QTLS_KEM_KYBER768, mlkem.MLKEM768PrivateKey,
                                     mlkem.MLKEM768PublicKey, 1184, 1088),
    QTLS_KEM_KYBER1024: KemParameters(QTLS_KEM_KYBER1024, mlkem.MLKEM1024PrivateKey,
                                      mlkem.MLKEM1024PublicKey, 1568, 1568),
}


def _parameters(algorithm: str) -> KemParameters:
    found = KEM_PARAMETERS.get(canonical_algorithm(algorithm))
    if found is None:
        raise QTLSUsageError(f"unknown KEM {algorithm!r}; use one of "
                             f"{', '.join(KEM_PARAMETERS)} (or KYBER768 / KYBER1024)")
    return found


class QTLSKyber(RawKeyPair[PrivateKey, PublicKey]):
    """One party of an ML-KEM exchange.

    Receiver: keygen() -> get_public_key() -> ... set_ciphertext(ct) -> decapsulate().
    Sender: set_public_key(pk) -> encapsulate() (the shared secret) -> get_ciphertext()."""

    parameters: KemParameters

    def __init__(self, algorithm: str = QTLS_KEM_KYBER1024) -> None:
        super().__init__(_parameters(algorithm))
        self._ciphertext: bytes | None = None

    def encapsulate(self) -> bytes:
        """A fresh shared secret for the holder of the public key; the ciphertext to send
        them is then `get_ciphertext()`."""
        if self._public is None:
            raise QTLSUsageError("encapsulate() needs the peer's public key: call "
                                 "set_public_key() first")
        secret, self._ciphertext = self._public.encapsulate()
        return secret

    def get_ciphertext(self) -> bytes:
        if self._ciphertext is None:
            raise QTLSUsageError("no ciphertext: call encapsulate() or set_ciphertext() first")
        return self._ciphertext

    def set_ciphertext(self, ciphertext: bytes) -> None:
        size = self.parameters.ciphertext_size
        if not isinstance(ciphertext, (bytes, bytearray, memoryview)) or len(ciphertext) != size:
            raise QTLSCryptoError(f"an {self.algorithm} ciphertext is {size} bytes, got "
                                  f"{describe(ciphertext)}")
        self._ciphertext = bytes(ciphertext)

    def decapsulate(self, ciphertext: bytes | None = None) -> bytes:
        """The shared secret from the ciphertext (given here or by set_ciphertext()).

        A tampered ciphertext of the right size yields a different, pseudo-random secret
        (FIPS 203 implicit rejection), never an error: the mismatch shows when the secrets
        are used."""
        if ciphertext is not None:
            self.set_ciphertext(ciphertext)
        if self._private is None:
            raise QTLSUsageError("decapsulate() needs the private key: call keygen() first "
                                 "(on the side that published the public key)")
        if self._ciphertext is None:
            raise QTLSUsageError("no ciphertext: call set_ciphertext() first")
        return self._private.decapsulate(self._ciphertext)
