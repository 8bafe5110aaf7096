"""Algorithm policy: the seeds' algorithm words -> OpenSSL group, signature and cipher lists.

Pure data and functions, no OpenSSL calls. The README's algorithm reference is checked against
these tables by the tests.

Group lists use OpenSSL's tuple syntax ("a:b/c:d"): groups in an earlier tuple win over any
in a later one even when the client sent a key share only for the later one (the server then
asks for the better share with a HelloRetryRequest). Without it a client that offers
X25519MLKEM768 but sends an X25519 key share first would be served classical X25519.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

# Canonical OpenSSL names of the hybrid groups, and the standard pairing of each ML-KEM
# parameter set with a classical curve (draft-ietf-tls-ecdhe-mlkem).
HYBRID_GROUPS: dict[tuple[str, str], str] = {
    ("MLKEM768", "X25519"): "X25519MLKEM768",
    ("MLKEM768", "secp256r1"): "SecP256r1MLKEM768",
    ("MLKEM1024", "secp384r1"): "SecP384r1MLKEM1024",
}
STANDARD_PARTNER = {"MLKEM768": "X25519", "MLKEM1024": "secp384r1"}
PURE_PQ_GROUPS = ("MLKEM1024", "MLKEM768")
CLASSICAL_GROUPS = ("X25519", "secp256r1", "secp384r1", "X448", "secp521r1")
PQ_GROUPS = frozenset(HYBRID_GROUPS.values()) | frozenset(PURE_PQ_GROUPS)

DEFAULT_HYBRIDS = ("X25519MLKEM768", "SecP384r1MLKEM1024", "SecP256r1MLKEM768")
DEFAULT_CLASSICAL = ("X25519", "secp256r1", "secp384r1")

# Words the seeds and operators use for ML-KEM parameter sets and classical curves.
KEM_WORDS: dict[str, str] = {
    "kyber768": "MLKEM768", "mlkem768": "MLKEM768", "ml-kem-768": "MLKEM768",
    "kyber1024": "MLKEM1024", "mlkem1024": "MLKEM1024", "ml-kem-1024": "MLKEM1024",
}
CURVE_WORDS: dict[str, str] = {
    "x25519": "X25519", "ecdhe-x25519": "X25519",
    "x448": "X448", "ecdhe-x448": "X448",
    "p256": "secp256r1", "p-256": "secp256r1", "ecdhe-p256": "secp256r1",
    "secp256r1": "secp256r1", "prime256v1": "secp256r1",
    "p384": "secp384r1", "p-384": "secp384r1", "ecdhe-p384": "secp384r1", "secp384r1": "secp384r1",
    "p521": "secp521r1", "p-521": "secp521r1", "ecdhe-p521": "secp521r1", "secp521r1": "secp521r1",
}
# OpenSSL's own names, accepted as written (matched case-insensitively).
GROUP_NAMES: dict[str, str] = {
    name.lower(): name
    for name in (*HYBRID_GROUPS.values(), *PURE_PQ_GROUPS, *CLASSICAL_GROUPS)
}

SIGNATURE_WORDS: dict[str, tuple[str, ...]] = {
    "dilithium2": ("mldsa44",), "mldsa44": ("mldsa44",), "ml-dsa-44": ("mldsa44",),
    "dilithium3": ("mldsa65",), "mldsa65": ("mldsa65",), "ml-dsa-65": ("mldsa65",),
    "dilithium5": ("mldsa87",), "mldsa87": ("mldsa87",), "ml-dsa-87": ("mldsa87",),
    "ecdsa-p256": ("ecdsa_secp256r1_sha256",),
    "ecdsa-p384": ("ecdsa_secp384r1_sha384",),
    "ecdsa-p521": ("ecdsa_secp521r1_sha512",),
    "ecdsa": ("ecdsa_secp256r1_sha256", "ecdsa_secp384r1_sha384", "ecdsa_secp521r1_sha512"),
    "ed25519": ("ed25519",),
    "ed448": ("ed448",),
    "rsa": ("rsa_pss_rsae_sha256", "rsa_pss_rsae_sha384", "rsa_pss_rsae_sha512"),
    "rsa-pss": ("rsa_pss_rsae_sha256", "rsa_pss_rsae_sha384", "rsa_pss_rsae_sha512"),
}
for _bits in ("2048", "3072", "4096"):
    SIGNATURE_WORDS[f"rsa-{_bits}"] = SIGNATURE_WORDS["rsa"]
    SIGNATURE_WORDS[f"rsa{_bits}"] = SIGNATURE_WORDS["rsa"]

CIPHER_WORDS: dict[str, tuple[str, str]] = {
    # word -> (TLS 1.3 suite, TLS 1.2 ECDHE cipher family)
    "aes-256-gcm": ("TLS_AES_256_GCM_SHA384", "AESGCM+AES256"),
    "aes-128-gcm": ("TLS_AES_128_GCM_SHA256", "AESGCM+AES128"),
    "chacha20-poly1305": ("TLS_CHACHA20_POLY1305_SHA256", "CHACHA20"),
}
for _suite, _family in list(CIPHER_WORDS.values()):
    CIPHER_WORDS[_suite.lower()] = (_suite, _family)


class PolicyError(ValueError):
    """An algorithm list names something unknown or asks for an impossible combination.

    `index` is the position in the offending list, for the JSON path."""

    def __init__(self, field: str, index: int | None, message: str) -> None:
        self.field = field
        self.index = index
        super().__init__(message)


@dataclass(frozen=True)
class TlsPolicy:
    groups: str
    """OpenSSL group list with tuples, for SSL_CTX_set1_groups_list."""
    sigalgs: str | None
    ciphersuites: str | None
    cipher_list: str | None
    """TLS 1.2 cipher string; None keeps OpenSSL's default."""

    def group_names(self) -> list[str]:
        return [g for tuple_ in self.groups.split("/") for g in tuple_.split(":")]


def _hybrids_from_words(words: tuple[str, ...]) -> tuple[list[str], list[str], list[str]]:
    """Split the `kem` list into hybrid groups, pure ML-KEM sets and classical curves."""
    explicit: list[str] = []
    kems: list[str] = []
    curves: list[str] = []
    for index, raw in enumerate(words):
        word = raw.strip().lower()
        if "+" in word:
            parts = [p.strip() for p in word.split("+")]
            kem = next((KEM_WORDS[p] for p in parts if p in KEM_WORDS), None)
            curve = next((CURVE_WORDS[p] for p in parts if p in CURVE_WORDS), None)
            if len(parts) != 2 or kem is None or curve is None:
                raise PolicyError("kem", index, f"{raw!r} is not 'ml-kem + curve'")
            group = HYBRID_GROUPS.get((kem, curve))
            if group is None:
                raise PolicyError("kem", index, f"no standard hybrid group for {raw!r}; "
                                  f"known: {', '.join(HYBRID_GROUPS.values())}")
            explicit.append(group)
        elif word in GROUP_NAMES:
            name = GROUP_NAMES[word]
            if name in HYBRID_GROUPS.values():
                explicit.append(name)
            elif name in PURE_PQ_GROUPS:
                kems.append(name)
            else:
                curves.append(name)
        elif word in KEM_WORDS:
            kems.append(KEM_WORDS[word])
        elif word in CURVE_WORDS:
            curves.append(CURVE_WORDS[word])
        else:
            known = sorted({*KEM_WORDS, *CURVE_WORDS, *GROUP_NAMES.values()})
            raise PolicyError("kem", index, f"unknown key-exchange algorithm {raw!r}; "
                              f"known: {', '.join(known)}")
    return explicit, _unique(kems), _unique(curves)


def classify_kem_words(words: tuple[str, ...]) -> tuple[list[str], list[str], list[str]]:
    """The `kem` words as (named hybrid groups, pure ML-KEM sets, classical curves)."""
    return _hybrids_from_words(words)


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def build_groups(kem_words: tuple[str, ...], *, hybrid_mode: bool, pqc_only: bool,
                 require_pq: bool) -> str:
    """The group list for the listener, post-quantum tuple first."""
    explicit, kems, curves = _hybrids_from_words(kem_words)
    if not kem_words:
        hybrids, kems, curves = list(DEFAULT_HYBRIDS), [], list(DEFAULT_CLASSICAL)
    else:
        hybrids = list(explicit)
        for kem in kems:
            partners = [c for c in curves if (kem, c) in HYBRID_GROUPS] or [STANDARD_PARTNER[kem]]
            hybrids.extend(HYBRID_GROUPS[(kem, c)] for c in partners)
        hybrids = _unique(hybrids)
    if pqc_only:
        # Pure ML-KEM: the sets named, else both; no classical component anywhere.
        pure = [g for g in PURE_PQ_GROUPS if g in kems] or list(PURE_PQ_GROUPS)
        return ":".join(pure)
    if not hybrid_mode:
        if require_pq:
            raise PolicyError("kem", None, "require_pq with hybrid_mode off leaves no group: "
                              "turn hybrid_mode on or use pqc_only")
        return ":".join(curves or DEFAULT_CLASSICAL)
    if not hybrids:
        raise PolicyError("kem", None, "hybrid_mode is on but the list names no ML-KEM "
                          "(add e.g. 'kyber768' or 'X25519MLKEM768')")
    if require_pq:
        return ":".join(hybrids)
    classical = curves or list(DEFAULT_CLASSICAL)
    return ":".join(hybrids) + "/" + ":".join(classical)


def build_sigalgs(words: tuple[str, ...]) -> str | None:
    if not words:
        return None
    names: list[str] = []
    for index, raw in enumerate(words):
        found = SIGNATURE_WORDS.get(raw.strip().lower())
        if found is None:
            raise PolicyError("signature", index, f"unknown signature algorithm {raw!r}; known: "
                              f"{', '.join(sorted(SIGNATURE_WORDS))}")
        names.extend(found)
    return ":".join(_unique(names))


def build_ciphers(words: tuple[str, ...]) -> tuple[str | None, str | None]:
    if not words:
        return None, None
    suites: list[str] = []
    families: list[str] = []
    for index, raw in enumerate(words):
        found = CIPHER_WORDS.get(raw.strip().lower())
        if found is None:
            known = sorted(w for w in CIPHER_WORDS if not w.startswith("tls_"))
            raise PolicyError("cipher", index, f"unknown cipher {raw!r}; known: {', '.join(known)}")
        suites.append(found[0])
        families.append("ECDHE+" + found[1])
    return ":".join(_unique(suites)), ":".join(_unique(families))


def _suggest(word: str, known: list[str]) -> str:
    match = difflib.get_close_matches(word.strip().lower(), [k.lower() for k in known], n=1,
                                      cutoff=0.6)
    if not match:
        return ""
    return f"; did you mean {next(k for k in known if k.lower() == match[0])!r}?"


def unknown_words(kem: tuple[str, ...], signature: tuple[str, ...],
                  cipher: tuple[str, ...]) -> list[PolicyError]:
    """Every algorithm word no table knows, each with the closest known one: build_policy
    stops at the first problem, a configuration test should name them all."""
    kem_known = sorted({*KEM_WORDS, *CURVE_WORDS, *GROUP_NAMES.values()})
    lists = (
        ("kem", kem, lambda w: "+" in w or w in KEM_WORDS or w in CURVE_WORDS or w in GROUP_NAMES,
         kem_known, "key-exchange algorithm"),
        ("signature", signature, lambda w: w in SIGNATURE_WORDS, sorted(SIGNATURE_WORDS),
         "signature algorithm"),
        ("cipher", cipher, lambda w: w in CIPHER_WORDS,
         sorted(w for w in CIPHER_WORDS if not w.startswith("tls_")), "cipher"),
    )
    errors = []
    for field_name, words, known, names, what in lists:
        for index, raw in enumerate(words):
            if not known(raw.strip().lower()):
                errors.append(PolicyError(field_name, index, f"unknown {what} {raw!r}"
                                          + (_suggest(raw, names) or
                                             f"; known: {', '.join(names)}")))
    return errors


def build_policy(kem: tuple[str, ...], signature: tuple[str, ...], cipher: tuple[str, ...], *,
                 hybrid_mode: bool = True, pqc_only: bool = False,
                 require_pq: bool = False) -> TlsPolicy:
    suites, cipher_list = build_ciphers(cipher)
    return TlsPolicy(
        groups=build_groups(kem, hybrid_mode=hybrid_mode, pqc_only=pqc_only, require_pq=require_pq),
        sigalgs=build_sigalgs(signature),
        ciphersuites=suites,
        cipher_list=cipher_list,
    )


def canonical_group(name: str | None) -> str | None:
    """OpenSSL reports classical groups in lower case ('x25519'); use the names of our tables."""
    if name is None:
        return None
    return GROUP_NAMES.get(name.lower(), name)


def is_post_quantum(group: str | None) -> bool:
    return group in PQ_GROUPS


SIGALG_OF_KEY = {
    "ML-DSA-44": "mldsa44", "ML-DSA-65": "mldsa65", "ML-DSA-87": "mldsa87",
    "ECDSA P-256": "ecdsa_secp256r1_sha256", "ECDSA P-384": "ecdsa_secp384r1_sha384",
    "ECDSA P-521": "ecdsa_secp521r1_sha512", "Ed25519": "ed25519", "Ed448": "ed448",
    # In TLS 1.3 an RSA key always signs with RSA-PSS; the hash follows the client's order,
    # which is SHA-256 first for every mainstream client.
    "RSA": "rsa_pss_rsae_sha256",
}


def sigalg_for_key(key_kind: str, tls_version: str = "TLSv1.3") -> str:
    """The TLS 1.3 signature scheme a key of this kind signs handshakes with."""
    if key_kind.startswith("RSA"):
        return SIGALG_OF_KEY["RSA"] if tls_version == "TLSv1.3" else "rsa"
    return SIGALG_OF_KEY.get(key_kind, key_kind)


def key_usable(key_kind: str, sigalgs: str | None) -> bool:
    """Whether a certificate with this key can sign under the configured signature list."""
    if sigalgs is None:
        return True
    allowed = set(sigalgs.split(":"))
    if key_kind.startswith("RSA"):
        return any(s.startswith("rsa_pss") for s in allowed)
    return SIGALG_OF_KEY.get(key_kind) in allowed
