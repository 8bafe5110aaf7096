"""The firmware signature format shared by `qproxy firmware sign` and devices.

ML-DSA (pure, empty context) over `SIGNED_PREFIX + SHA-256(image)`: the image is hashed as a
stream, the device verifies over the digest it computed anyway, and the prefix keeps a
firmware signature from being valid for anything else the key signs.
"""

from __future__ import annotations

from .sig import QTLSDilithium

SIGNED_PREFIX = b"qproxy firmware v1 sha256\0"


def signed_message(sha256: bytes) -> bytes:
    if len(sha256) != 32:
        raise ValueError("a SHA-256 digest is 32 bytes")
    return SIGNED_PREFIX + sha256


def verify_firmware_signature(public: QTLSDilithium, sha256: bytes, signature: bytes) -> bool:
    """Whether `signature` is the key's firmware signature over an image with this digest."""
    return public.verify(signed_message(sha256), signature)
