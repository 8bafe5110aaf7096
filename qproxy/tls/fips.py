"""FIPS-approved mode: which algorithms a listener may use with `fips.enabled: true`.

What this mode is: the algorithm lists are restricted to NIST-approved algorithms and each
enabled algorithm passes a known-answer self-test (tls/kat.py) before any worker starts. What
it is not: a validated module. The OpenSSL inside `cryptography` is not FIPS 140-3 validated;
only an operator-supplied validated provider named "fips" in `openssl.providers` (loaded with
`default_properties = fips=yes`) can bring validation, and that is its vendor's certificate,
never a claim qproxy makes.

X25519MLKEM768 is refused unless `fips.allow_x25519_hybrid` is true: its ML-KEM half is
approved (FIPS 203) but X25519 is not an SP 800-56A curve, and NIST's position on hybrids with a
non-approved component has moved (the README's FIPS section cites the sources). Bare X25519,
X448 and ChaCha20-Poly1305 are never approved and always refused.

Pure data and functions over the configuration; no OpenSSL calls.
"""

from __future__ import annotations

from ..config.model import AlgorithmsSection, ProviderSpec, ServerConfig
from ..errors import ConfigError
from .policy import PolicyError, TlsPolicy, build_ciphers, build_groups, build_sigalgs, classify_kem_words

X25519_HYBRID = "X25519MLKEM768"
APPROVED_GROUPS = frozenset({
    "SecP256r1MLKEM768", "SecP384r1MLKEM1024",  # FIPS 203 + SP 800-56A curve, SP 800-227
    "MLKEM768", "MLKEM1024",                    # FIPS 203
    "secp256r1", "secp384r1", "secp521r1",      # SP 800-56A rev3 ECDH
})
APPROVED_SIGALGS = frozenset({
    "mldsa44", "mldsa65", "mldsa87",            # FIPS 204
    # FIPS 186-5. P-521 is approved too but has no known-answer test here (tls/kat.py), and
    # an algorithm is enabled in this mode only once its self-test passed.
    "ecdsa_secp256r1_sha256", "ecdsa_secp384r1_sha384",
    "rsa_pss_rsae_sha256", "rsa_pss_rsae_sha384", "rsa_pss_rsae_sha512",  # FIPS 186-5, >= 2048
})
APPROVED_SUITES = frozenset({"TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256"})  # SP 800-38D
MIN_RSA_BITS = 2048

# What an empty list means in FIPS mode (outside it: policy.DEFAULT_HYBRIDS / OpenSSL's lists).
DEFAULT_KEM = ("SecP384r1MLKEM1024", "SecP256r1MLKEM768", "secp384r1", "secp256r1")
DEFAULT_SIGNATURE = ("mldsa65", "mldsa87", "mldsa44", "ecdsa-p256", "ecdsa-p384", "rsa-pss")
DEFAULT_CIPHER = ("aes-256-gcm", "aes-128-gcm")

NOT_VALIDATED = "FIPS-approved algorithms only; not a validated module"
FIPS_PROVIDER = "fips"


def _allowed_groups(config: ServerConfig) -> frozenset[str]:
    return APPROVED_GROUPS | ({X25519_HYBRID} if config.fips.allow_x25519_hybrid else set())


def _group_refusal(group: str) -> str:
    if group == X25519_HYBRID:
        return (f"{group} is not FIPS-approved here: X25519 is no SP 800-56A curve (set "
                "fips.allow_x25519_hybrid to accept it on its ML-KEM half, or use "
                "SecP256r1MLKEM768 / SecP384r1MLKEM1024)")
    return (f"{group} is not FIPS-approved (approved: "
            f"{', '.join(sorted(APPROVED_GROUPS, key=str.lower))})")


def _check_kem(config: ServerConfig, errors: list[ConfigError]) -> tuple[str, ...]:
    words = config.algorithms.kem
    allowed = _allowed_groups(config)
    for index, word in enumerate(words):
        try:
            explicit, kems, curves = classify_kem_words((word,))
        except PolicyError:
            continue  # unknown words are reported by the policy itself
        for group in (*explicit, *curves):
            if group not in allowed:
                errors.append(ConfigError(f"algorithms.kem[{index}]", _group_refusal(group)))
    if not words:
        return ((X25519_HYBRID,) if config.fips.allow_x25519_hybrid else ()) + DEFAULT_KEM
    tls = config.tls
    try:  # a bare "kyber768" pairs with X25519 unless a FIPS curve is listed with it
        groups = build_groups(words, hybrid_mode=tls.hybrid_mode, pqc_only=tls.pqc_only,
                              require_pq=tls.require_pq)
    except PolicyError:
        return words
    implied = [g for t in groups.split("/") for g in t.split(":") if g not in allowed]
    if implied and not errors:
        errors.append(ConfigError("algorithms.kem", f"the list implies {', '.join(implied)}, "
                                  "not FIPS-approved: name the hybrids (SecP256r1MLKEM768, "
                                  "SecP384r1MLKEM1024) or list 'ecdhe-p256' / 'ecdhe-p384'"))
    return words


def _check_words(words: tuple[str, ...], field: str, names_of, approved: frozenset[str],
                 default: tuple[str, ...], errors: list[ConfigError]) -> tuple[str, ...]:
    for index, word in enumerate(words):
        try:
            names = names_of(word)
        except PolicyError:
            continue
        refused = [n for n in names if n not in approved]
        if refused:
            errors.append(ConfigError(f"algorithms.{field}[{index}]", f"{word!r} "
                                      f"({', '.join(refused)}) is not FIPS-approved; approved: "
                                      f"{', '.join(sorted(approved))}"))
    return words or default


def effective_algorithms(config: ServerConfig) -> tuple[AlgorithmsSection, list[ConfigError]]:
    """The algorithm lists a listener uses, and every non-approved name (with its JSON path)
    when FIPS mode is on. Empty lists become the FIPS defaults."""
    if not config.fips.enabled:
        return config.algorithms, []
    errors: list[ConfigError] = []
    kem = _check_kem(config, errors)
    signature = _check_words(config.algorithms.signature, "signature",
                             lambda w: (build_sigalgs((w,)) or "").split(":"),
                             APPROVED_SIGALGS, DEFAULT_SIGNATURE, errors)
    cipher = _check_words(config.algorithms.cipher, "cipher",
                          lambda w: [build_ciphers((w,))[0] or ""],
                          APPROVED_SUITES, DEFAULT_CIPHER, errors)
    return AlgorithmsSection(kem=kem, signature=signature, cipher=cipher), errors


def key_refusal(key_kind: str) -> str | None:
    """Why a certificate key of this kind cannot serve in FIPS mode, or None."""
    if key_kind.startswith("RSA-"):
        bits = int(key_kind.removeprefix("RSA-"))
        if bits < MIN_RSA_BITS:
            return f"an {key_kind} key is not FIPS-approved (RSA needs at least {MIN_RSA_BITS} bits)"
        return None
    if key_kind.startswith("ML-DSA-") or key_kind in ("ECDSA P-256", "ECDSA P-384"):
        return None
    return (f"a {key_kind} key is not allowed in FIPS mode (ML-DSA, ECDSA P-256/P-384 or "
            f"RSA >= {MIN_RSA_BITS} with PSS)")


def self_test_names(groups: list[str], sigalgs: list[str], suites: list[str]) -> list[str]:
    """The known-answer tests (tls/kat.py) the enabled algorithms need."""
    names = ["hkdf-sha256"]  # the TLS 1.3 key schedule, always
    for group in groups:
        if "MLKEM768" in group:
            names.append("mlkem768")
        if "MLKEM1024" in group:
            names.append("mlkem1024")
    for sigalg in sigalgs:
        if sigalg.startswith("mldsa"):
            names.append(sigalg)
        elif sigalg.startswith("ecdsa_secp256r1"):
            names.append("ecdsa-p256")
        elif sigalg.startswith("ecdsa_secp384r1"):
            names.append("ecdsa-p384")
        elif sigalg.startswith("rsa_pss"):
            names.append("rsa-pss-2048")
    names += ["aes-256-gcm" if "AES_256" in suite else "aes-128-gcm" for suite in suites if suite]
    return list(dict.fromkeys(names))


def fips_provider(config: ServerConfig) -> ProviderSpec | None:
    """The operator's provider named "fips" in openssl.providers, if any."""
    return next((p for p in config.openssl.providers if p.name == FIPS_PROVIDER), None)


def fips_status(config: ServerConfig) -> str:
    """One line for the startup log, --test-config and --version. Never claims validation."""
    if not config.fips.enabled:
        return "FIPS mode: off"
    provider = fips_provider(config)
    if provider is None:
        return f"FIPS mode: {NOT_VALIDATED}"
    module = provider.module or "fips.so in OpenSSL's module directory"
    return (f"FIPS mode: FIPS-approved algorithms only, through the operator's provider "
            f"'{provider.name}' ({module}) with default_properties fips=yes; its validation "
            "is its vendor's certificate, not qproxy's (this OpenSSL binding cannot read the "
            "provider's version: `openssl list -providers` with the same configuration shows it)")


def run_self_tests(config: ServerConfig, policy: TlsPolicy) -> list[str]:
    """The known-answer tests of every algorithm `policy` enables; raises kat.SelfTestError."""
    from .kat import run_self_tests as run

    if not config.fips.enabled:
        return []
    groups = policy.group_names()
    sigalgs = (policy.sigalgs or "").split(":")
    suites = (policy.ciphersuites or "").split(":")
    return run(self_test_names(groups, sigalgs, suites))
