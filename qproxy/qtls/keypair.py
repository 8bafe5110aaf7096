"""The key-pair half that `QTLSKyber` and `QTLSDilithium` share: a new key pair, and the raw
FIPS 203 / FIPS 204 public key and private seed in and out, checked against the parameter
set's sizes before cryptography sees them."""

from __future__ import annotations

from typing import Any, Generic, Protocol, TypeVar

from .errors import QTLSCryptoError, QTLSUsageError


class KeyParameters(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def private_class(self) -> Any: ...  # has generate() and from_seed_bytes()
    @property
    def public_class(self) -> Any: ...  # has from_public_bytes()
    @property
    def public_key_size(self) -> int: ...
    @property
    def seed_size(self) -> int: ...


class _RawPublicKey(Protocol):
    def public_bytes_raw(self) -> bytes: ...


class _RawPrivateKey(Protocol):
    def private_bytes_raw(self) -> bytes: ...
    def public_key(self) -> Any: ...


PrivateT = TypeVar("PrivateT", bound=_RawPrivateKey)
PublicT = TypeVar("PublicT", bound=_RawPublicKey)


def describe(value: object) -> str:
    """What a caller passed instead of the bytes expected, for an error message."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"{len(value)} bytes"
    return type(value).__name__


class RawKeyPair(Generic[PrivateT, PublicT]):
    """A private key (from which the public key follows) or a peer's public key alone."""

    def __init__(self, parameters: KeyParameters) -> None:
        self.parameters = parameters
        self._private: PrivateT | None = None
        self._public: PublicT | None = None

    @property
    def algorithm(self) -> str:
        return self.parameters.name

    def keygen(self) -> bytes:
        """A new key pair; returns the public key bytes."""
        private: PrivateT = self.parameters.private_class.generate()
        self._private, self._public = private, private.public_key()
        return self.get_public_key()

    def get_public_key(self) -> bytes:
        """The raw public key (for ML-KEM: the encapsulation key)."""
        if self._public is None:
            raise QTLSUsageError("no public key: call keygen() or set_public_key() first")
        return self._public.public_bytes_raw()

    def set_public_key(self, key: bytes) -> None:
        """The peer's raw public key; any private key held is dropped."""
        size = self.parameters.public_key_size
        if not isinstance(key, (bytes, bytearray, memoryview)) or len(key) != size:
            raise QTLSCryptoError(f"an {self.algorithm} public key is {size} bytes, got "
                                  f"{describe(key)}")
        try:
            self._public = self.parameters.public_class.from_public_bytes(bytes(key))
        except ValueError as exc:
            # e.g. FIPS 203's modulus check: coefficients must be below q.
            raise QTLSCryptoError(f"not a valid {self.algorithm} public key: {exc}") from None
        self._private = None

    def get_private_key(self) -> bytes:
        """The seed the key pair is derived from (ML-KEM: 64 bytes, d || z; ML-DSA: 32);
        keep it secret."""
        if self._private is None:
            raise QTLSUsageError("no private key: call keygen() or set_private_key() first")
        return self._private.private_bytes_raw()

    def set_private_key(self, seed: bytes) -> None:
        size = self.parameters.seed_size
        if not isinstance(seed, (bytes, bytearray, memoryview)) or len(seed) != size:
            raise QTLSCryptoError(f"an {self.algorithm} private key seed is {size} bytes, got "
                                  f"{describe(seed)}")
        private: PrivateT = self.parameters.private_class.from_seed_bytes(bytes(seed))
        self._private, self._public = private, private.public_key()
