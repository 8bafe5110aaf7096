"""The `QTLS_*` constants of the Q-TLS Python API (seed 000), and the algorithm names it uses.

Values are plain ints so that they combine with `|` as in the seed's examples. The verify
flags have OpenSSL's values (SSL_VERIFY_PEER = 1, SSL_VERIFY_FAIL_IF_NO_PEER_CERT = 2).
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final


class Mode(IntEnum):
    """Which end of the handshake a context serves."""

    CLIENT = 0
    SERVER = 1


QTLS_CLIENT_MODE: Final = Mode.CLIENT
QTLS_SERVER_MODE: Final = Mode.SERVER

# Options (set_options). At most one of HYBRID / PQC_ONLY / CLASSICAL_ONLY; REQUIRE_PQ narrows
# HYBRID to the hybrid groups only (no classical fallback).
QTLS_OP_HYBRID_MODE: Final = 0x01
"""X25519MLKEM768 first (then the other ML-KEM hybrids), classical groups allowed as fallback."""
QTLS_OP_PQC_ONLY: Final = 0x02
"""Pure ML-KEM key exchange (MLKEM1024, MLKEM768): no classical component. Experimental."""
QTLS_OP_CLASSICAL_ONLY: Final = 0x04
"""Classical ECDHE groups only (X25519, P-256, P-384)."""
QTLS_OP_REQUIRE_PQ: Final = 0x08
"""With HYBRID: refuse peers that cannot do an ML-KEM hybrid."""
QTLS_OP_NO_SESSION_TICKETS: Final = 0x10
"""Server: issue no TLS 1.3 session tickets (no resumption)."""

KEY_EXCHANGE_OPTIONS: Final = QTLS_OP_HYBRID_MODE | QTLS_OP_PQC_ONLY | QTLS_OP_CLASSICAL_ONLY
ALL_OPTIONS: Final = KEY_EXCHANGE_OPTIONS | QTLS_OP_REQUIRE_PQ | QTLS_OP_NO_SESSION_TICKETS

QTLS_VERIFY_NONE: Final = 0x00
QTLS_VERIFY_PEER: Final = 0x01
QTLS_VERIFY_FAIL_IF_NO_PEER_CERT: Final = 0x02
QTLS_VERIFY_CLIENT_ONCE: Final = 0x04
ALL_VERIFY_FLAGS: Final = QTLS_VERIFY_PEER | QTLS_VERIFY_FAIL_IF_NO_PEER_CERT | QTLS_VERIFY_CLIENT_ONCE

QTLS_FILETYPE_PEM: Final = 1
QTLS_FILETYPE_ASN1: Final = 2

# The seed's algorithm names are the pre-standard ones; FIPS 203 / 204 renamed them. The
# classes and the policy tables accept both.
QTLS_KEM_KYBER768: Final = "ML-KEM-768"
QTLS_KEM_KYBER1024: Final = "ML-KEM-1024"
QTLS_SIG_DILITHIUM2: Final = "ML-DSA-44"
QTLS_SIG_DILITHIUM3: Final = "ML-DSA-65"
QTLS_SIG_DILITHIUM5: Final = "ML-DSA-87"

SEED_NAMES: Final[dict[str, str]] = {
    "KYBER768": QTLS_KEM_KYBER768,
    "KYBER1024": QTLS_KEM_KYBER1024,
    "DILITHIUM2": QTLS_SIG_DILITHIUM2,
    "DILITHIUM3": QTLS_SIG_DILITHIUM3,
    "DILITHIUM5": QTLS_SIG_DILITHIUM5,
}
"""Seed name -> FIPS name, as the docs' mapping table shows it."""


def canonical_algorithm(name: str) -> str:
    """'KYBER1024', 'kyber1024', 'ml-kem-1024', 'MLKEM1024' -> 'ML-KEM-1024' (same for ML-DSA)."""
    compact = name.strip().upper().replace("-", "").replace("_", "")
    for seed, fips in SEED_NAMES.items():
        if compact in (seed, fips.replace("-", "")):
            return fips
    return name.strip()
