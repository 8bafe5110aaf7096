"""The cryptographic floor of a full TLS 1.3 handshake on the server, measured here and now.

Each scenario's handshakes/s is reported against this bound: a server can never do more full
handshakes per core than 1 / (its share of the cryptography). The same primitives OpenSSL runs
are timed through `cryptography` (which is that same OpenSSL 4): signature with the certificate
key, the server half of the key exchange, and the TLS 1.3 key schedule's HKDF work.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, mldsa, mlkem, x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

TRANSCRIPT = b"\x00" * 64  # TLS 1.3 signs a 64-byte pad + context + transcript hash
# RFC 8446 key schedule: Derive-Secret / HKDF-Expand-Label calls a server makes for a full
# handshake with one ticket (early, handshake, master secrets, traffic keys/IVs, finished,
# resumption): about 20 expands of 32-48 bytes.
HKDF_CALLS = 20


def _median_seconds(operation: Callable[[], object], seconds: float = 0.3,
                    min_runs: int = 20) -> float:
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(samples) < min_runs or time.perf_counter() < deadline:
        start = time.perf_counter()
        operation()
        samples.append(time.perf_counter() - start)
        if len(samples) > 100_000:
            break
    return statistics.median(samples)


def measure_primitives(seconds: float = 0.3) -> dict[str, float]:
    """Median seconds per operation."""
    mldsa_key = mldsa.MLDSA65PrivateKey.generate()
    p256 = ec.generate_private_key(ec.SECP256R1())
    p384 = ec.generate_private_key(ec.SECP384R1())
    kem_public = mlkem.MLKEM768PrivateKey.generate().public_key()
    kem1024_public = mlkem.MLKEM1024PrivateKey.generate().public_key()
    peer_x25519 = x25519.X25519PrivateKey.generate().public_key()
    peer_p384 = ec.generate_private_key(ec.SECP384R1()).public_key()

    def x25519_server() -> None:
        x25519.X25519PrivateKey.generate().exchange(peer_x25519)

    def p384_server() -> None:
        ec.generate_private_key(ec.SECP384R1()).exchange(ec.ECDH(), peer_p384)

    def hkdf() -> None:
        HKDFExpand(hashes.SHA384(), 48, b"tls13 derived").derive(b"\x01" * 48)

    return {
        "mldsa65_sign": _median_seconds(lambda: mldsa_key.sign(TRANSCRIPT), seconds),
        "ecdsa_p256_sign": _median_seconds(
            lambda: p256.sign(TRANSCRIPT, ec.ECDSA(hashes.SHA256())), seconds),
        "ecdsa_p384_sign": _median_seconds(
            lambda: p384.sign(TRANSCRIPT, ec.ECDSA(hashes.SHA384())), seconds),
        "mlkem768_encaps": _median_seconds(kem_public.encapsulate, seconds),
        "mlkem1024_encaps": _median_seconds(kem1024_public.encapsulate, seconds),
        "x25519_keygen_derive": _median_seconds(x25519_server, seconds),
        "p384_keygen_derive": _median_seconds(p384_server, seconds),
        "hkdf_expand": _median_seconds(hkdf, seconds),
    }


@dataclass(frozen=True)
class HandshakeCost:
    name: str
    seconds: float

    @property
    def per_second(self) -> float:
        return 1.0 / self.seconds


def handshake_costs(p: dict[str, float]) -> dict[str, HandshakeCost]:
    """Server-side cryptography per full handshake, by scenario."""
    schedule = HKDF_CALLS * p["hkdf_expand"]
    x25519mlkem = p["mlkem768_encaps"] + p["x25519_keygen_derive"]
    costs = {
        "X25519MLKEM768 + ML-DSA-65": x25519mlkem + p["mldsa65_sign"],
        "X25519MLKEM768 + ECDSA P-256": x25519mlkem + p["ecdsa_p256_sign"],
        "SecP384r1MLKEM1024 + ECDSA P-384": (p["mlkem1024_encaps"] + p["p384_keygen_derive"]
                                             + p["ecdsa_p384_sign"]),
        "X25519 + ECDSA P-256 (classical)": p["x25519_keygen_derive"] + p["ecdsa_p256_sign"],
    }
    return {name: HandshakeCost(name, cost + schedule) for name, cost in costs.items()}


if __name__ == "__main__":
    primitives = measure_primitives()
    for name, seconds in primitives.items():
        print(f"{name:24s} {seconds * 1e6:9.1f} µs")
    for cost in handshake_costs(primitives).values():
        print(f"{cost.name:36s} {cost.seconds * 1e3:7.3f} ms  -> bound {cost.per_second:8.0f}/s/core")
