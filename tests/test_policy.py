"""qproxy.tls.policy: algorithm words -> OpenSSL group, signature and cipher lists.

The last part feeds every list the policy can produce into a real OpenSSL context, so that a
name OpenSSL does not know fails here rather than at a listener's start."""

from __future__ import annotations

import itertools
import re

import pytest
from OpenSSL import SSL

from qproxy.tls import openssl_ext
from qproxy.tls.policy import (
    CIPHER_WORDS,
    CLASSICAL_GROUPS,
    CURVE_WORDS,
    DEFAULT_CLASSICAL,
    DEFAULT_HYBRIDS,
    GROUP_NAMES,
    HYBRID_GROUPS,
    KEM_WORDS,
    PQ_GROUPS,
    PURE_PQ_GROUPS,
    SIGNATURE_WORDS,
    PolicyError,
    build_ciphers,
    build_groups,
    build_policy,
    build_sigalgs,
    is_post_quantum,
    key_usable,
    sigalg_for_key,
)

HYBRID = dict(hybrid_mode=True, pqc_only=False, require_pq=False)
REQUIRE_PQ = dict(hybrid_mode=True, pqc_only=False, require_pq=True)
PQC_ONLY = dict(hybrid_mode=True, pqc_only=True, require_pq=False)
CLASSICAL = dict(hybrid_mode=False, pqc_only=False, require_pq=False)


def groups(words, **modes) -> str:
    return build_groups(tuple(words), **{**HYBRID, **modes})


def tuples(group_list: str) -> list[list[str]]:
    return [t.split(":") for t in group_list.split("/")]


# --- build_groups ---------------------------------------------------------------------------

def test_seed_words_kyber1024_p384():
    assert groups(["kyber1024", "ecdhe-p384"]) == "SecP384r1MLKEM1024/secp384r1"


def test_kyber768_x25519():
    assert groups(["kyber768", "x25519"]) == "X25519MLKEM768/X25519"


def test_empty_list_gives_defaults_pq_tuple_first():
    result = groups([])
    pq, classical = tuples(result)
    assert pq == list(DEFAULT_HYBRIDS)
    assert classical == list(DEFAULT_CLASSICAL)
    assert all(is_post_quantum(g) for g in pq)
    assert not any(is_post_quantum(g) for g in classical)


def test_kem_without_named_curve_uses_standard_partner():
    assert groups(["kyber768"]) == "X25519MLKEM768/" + ":".join(DEFAULT_CLASSICAL)
    assert groups(["kyber1024"]) == "SecP384r1MLKEM1024/" + ":".join(DEFAULT_CLASSICAL)


def test_kem_with_nonstandard_curve_falls_back_to_standard_partner():
    # There is no MLKEM768 + P-384 hybrid: the curve stays classical, the KEM pairs with X25519.
    assert groups(["kyber768", "p384"]) == "X25519MLKEM768/secp384r1"


def test_kem_pairs_with_every_named_curve_it_has_a_hybrid_for():
    assert groups(["kyber768", "x25519", "p256"]) == \
        "X25519MLKEM768:SecP256r1MLKEM768/X25519:secp256r1"


def test_seed_list_order_is_kept():
    result = groups(["kyber768", "x25519", "kyber1024", "ecdhe-p384"])
    assert result == "X25519MLKEM768:SecP384r1MLKEM1024/X25519:secp384r1"


def test_duplicates_are_removed():
    assert groups(["kyber768", "mlkem768", "ML-KEM-768", "x25519", "ecdhe-x25519"]) == \
        "X25519MLKEM768/X25519"


def test_require_pq_drops_the_classical_tuple():
    assert groups(["kyber768", "x25519"], require_pq=True) == "X25519MLKEM768"
    assert groups([], require_pq=True) == ":".join(DEFAULT_HYBRIDS)
    assert "/" not in groups(["kyber1024", "p384"], require_pq=True)


def test_pqc_only_gives_pure_mlkem_only():
    assert groups(["kyber768", "x25519"], pqc_only=True) == "MLKEM768"
    assert groups(["kyber1024", "kyber768"], pqc_only=True) == "MLKEM1024:MLKEM768"
    # Nothing named: both parameter sets.
    assert groups([], pqc_only=True) == ":".join(PURE_PQ_GROUPS)
    for words in ([], ["kyber768", "x25519"], ["X25519MLKEM768"]):
        names = groups(words, pqc_only=True).split(":")
        assert set(names) <= set(PURE_PQ_GROUPS)


def test_hybrid_mode_off_gives_classical_only():
    assert groups(["kyber768", "x25519", "p384"], hybrid_mode=False) == "X25519:secp384r1"
    assert groups([], hybrid_mode=False) == ":".join(DEFAULT_CLASSICAL)
    assert groups(["kyber768"], hybrid_mode=False) == ":".join(DEFAULT_CLASSICAL)


def test_hybrid_mode_off_with_require_pq_is_an_error():
    with pytest.raises(PolicyError) as info:
        groups(["kyber768"], hybrid_mode=False, require_pq=True)
    assert info.value.field == "kem"
    assert info.value.index is None


def test_hybrid_mode_with_only_curves_is_an_error():
    with pytest.raises(PolicyError, match="names no ML-KEM") as info:
        groups(["x25519", "p256"])
    assert info.value.field == "kem"


@pytest.mark.parametrize("written", ["X25519MLKEM768", "x25519mlkem768", "X25519mlkem768"])
def test_openssl_hybrid_names_accepted_case_insensitively(written):
    assert groups([written, "X25519"]) == "X25519MLKEM768/X25519"


def test_openssl_names_for_every_kind():
    assert groups(["SECP384R1MLKEM1024", "SecP384r1"]) == "SecP384r1MLKEM1024/secp384r1"
    assert groups(["mlkem1024"], pqc_only=True) == "MLKEM1024"
    assert groups(["MLKEM768", "x448"]) == "X25519MLKEM768/X448"


@pytest.mark.parametrize("written", ["kyber768+x25519", "x25519+kyber768", " Kyber768 + X25519 ",
                                     "ml-kem-768+ecdhe-x25519"])
def test_explicit_plus_form(written):
    assert groups([written]) == "X25519MLKEM768/" + ":".join(DEFAULT_CLASSICAL)


def test_explicit_plus_form_p256_and_p384():
    assert groups(["kyber768+p256", "kyber1024+p-384", "p256"]) == \
        "SecP256r1MLKEM768:SecP384r1MLKEM1024/secp256r1"


@pytest.mark.parametrize("written,problem", [
    ("kyber768+p384", "no standard hybrid group"),
    ("kyber768+kyber1024", "is not 'ml-kem + curve'"),
    ("x25519+p256", "is not 'ml-kem + curve'"),
    ("kyber768+x25519+p256", "is not 'ml-kem + curve'"),
    ("kyber768+", "is not 'ml-kem + curve'"),
])
def test_bad_explicit_plus_form(written, problem):
    with pytest.raises(PolicyError, match=re.escape(problem)) as info:
        groups(["kyber1024", written])
    assert (info.value.field, info.value.index) == ("kem", 1)


@pytest.mark.parametrize("words,index", [
    (["kyber512"], 0),
    (["kyber768", "x25519", "frodo640"], 2),
    (["kyber768", ""], 1),
])
def test_unknown_kem_word_names_field_and_index(words, index):
    with pytest.raises(PolicyError) as info:
        groups(words)
    assert info.value.field == "kem"
    assert info.value.index == index
    assert "unknown key-exchange algorithm" in str(info.value)
    assert "kyber768" in str(info.value)  # the message lists what is known


def test_policy_error_is_a_value_error():
    assert issubclass(PolicyError, ValueError)


# --- build_sigalgs --------------------------------------------------------------------------

def test_sigalgs_empty_keeps_openssl_default():
    assert build_sigalgs(()) is None


def test_sigalgs_dilithium3():
    assert build_sigalgs(("dilithium3",)) == "mldsa65"


def test_sigalgs_dilithium_family_and_aliases():
    assert build_sigalgs(("Dilithium2", "ML-DSA-65", "mldsa87")) == "mldsa44:mldsa65:mldsa87"


def test_sigalgs_rsa_4096_is_rsa_pss():
    result = build_sigalgs(("rsa-4096",)).split(":")
    assert result and all(s.startswith("rsa_pss_rsae_") for s in result)
    assert result == ["rsa_pss_rsae_sha256", "rsa_pss_rsae_sha384", "rsa_pss_rsae_sha512"]


def test_sigalgs_order_kept_and_deduplicated():
    assert build_sigalgs(("dilithium3", "ecdsa-p384", "ecdsa", "mldsa65")) == \
        "mldsa65:ecdsa_secp384r1_sha384:ecdsa_secp256r1_sha256:ecdsa_secp521r1_sha512"


def test_sigalgs_unknown_names_index():
    with pytest.raises(PolicyError) as info:
        build_sigalgs(("dilithium3", "ecdsa-p384", "falcon512"))
    assert (info.value.field, info.value.index) == ("signature", 2)
    assert "falcon512" in str(info.value)


# --- build_ciphers --------------------------------------------------------------------------

def test_ciphers_empty_keeps_defaults():
    assert build_ciphers(()) == (None, None)


def test_ciphers_words_and_suite_names():
    suites, families = build_ciphers(("aes-256-gcm", "CHACHA20-POLY1305", "tls_aes_256_gcm_sha384"))
    assert suites == "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
    assert families == "ECDHE+AESGCM+AES256:ECDHE+CHACHA20"


def test_ciphers_suite_name_accepted():
    assert build_ciphers(("TLS_AES_128_GCM_SHA256",)) == \
        ("TLS_AES_128_GCM_SHA256", "ECDHE+AESGCM+AES128")


def test_ciphers_unknown_names_index():
    with pytest.raises(PolicyError) as info:
        build_ciphers(("aes-128-gcm", "rc4"))
    assert (info.value.field, info.value.index) == ("cipher", 1)
    # The list of known names shows the words, not the suite-name aliases.
    assert "aes-256-gcm" in str(info.value)
    assert "tls_aes" not in str(info.value)


def test_build_policy_combines_everything():
    policy = build_policy(("kyber768", "x25519"), ("dilithium3",), ("aes-256-gcm",))
    assert policy.groups == "X25519MLKEM768/X25519"
    assert policy.group_names() == ["X25519MLKEM768", "X25519"]
    assert policy.sigalgs == "mldsa65"
    assert policy.ciphersuites == "TLS_AES_256_GCM_SHA384"
    assert policy.cipher_list == "ECDHE+AESGCM+AES256"


# --- sigalg_for_key, key_usable, is_post_quantum --------------------------------------------

@pytest.mark.parametrize("kind,sigalg", [
    ("ML-DSA-44", "mldsa44"),
    ("ML-DSA-65", "mldsa65"),
    ("ML-DSA-87", "mldsa87"),
    ("ECDSA P-256", "ecdsa_secp256r1_sha256"),
    ("ECDSA P-384", "ecdsa_secp384r1_sha384"),
    ("ECDSA P-521", "ecdsa_secp521r1_sha512"),
    ("Ed25519", "ed25519"),
    ("Ed448", "ed448"),
    ("RSA-2048", "rsa_pss_rsae_sha256"),
    ("RSA-3072", "rsa_pss_rsae_sha256"),
])
def test_sigalg_for_key(kind, sigalg):
    assert sigalg_for_key(kind) == sigalg


def test_sigalg_for_rsa_key_in_tls12():
    assert sigalg_for_key("RSA-3072", "TLSv1.2") == "rsa"


def test_sigalg_for_unknown_key_kind_is_the_kind():
    assert sigalg_for_key("DSA-2048") == "DSA-2048"


def test_key_usable_without_list_is_always_true():
    for kind in ("ML-DSA-65", "ECDSA P-384", "RSA-3072", "DSA-2048"):
        assert key_usable(kind, None)


@pytest.mark.parametrize("kind,words,usable", [
    ("ML-DSA-65", ("dilithium3",), True),
    ("ML-DSA-65", ("dilithium5",), False),
    ("ECDSA P-384", ("dilithium3",), False),
    ("ECDSA P-384", ("dilithium3", "ecdsa-p384"), True),
    ("ECDSA P-384", ("ecdsa-p256",), False),
    ("ECDSA P-256", ("ecdsa",), True),
    ("RSA-3072", ("rsa-4096",), True),
    ("RSA-3072", ("dilithium3", "ecdsa"), False),
    ("Ed25519", ("ed25519",), True),
    ("Ed25519", ("ed448",), False),
])
def test_key_usable(kind, words, usable):
    assert key_usable(kind, build_sigalgs(words)) is usable


def test_is_post_quantum():
    for group in (*HYBRID_GROUPS.values(), *PURE_PQ_GROUPS):
        assert is_post_quantum(group)
    for group in (*CLASSICAL_GROUPS, None, "", "x25519mlkem768"):
        assert not is_post_quantum(group)


# --- OpenSSL accepts every list the policy can produce --------------------------------------

MODES = {"hybrid": HYBRID, "require_pq": REQUIRE_PQ, "pqc_only": PQC_ONLY, "classical": CLASSICAL}


def _group_lists() -> dict[str, str]:
    """Every distinct group list reachable from single words, KEM+curve pairs (both as two words
    and in the '+' form) and OpenSSL names, under each mode, plus the defaults."""
    inputs: list[tuple[str, ...]] = [()]
    inputs += [(w,) for w in (*KEM_WORDS, *CURVE_WORDS, *GROUP_NAMES)]
    inputs += [(k, c) for k, c in itertools.product(KEM_WORDS, CURVE_WORDS)]
    inputs += [(f"{k}+{c}",) for k, c in itertools.product(KEM_WORDS, CURVE_WORDS)]
    inputs += [(*KEM_WORDS, *CURVE_WORDS)]
    produced: dict[str, str] = {}
    for words, (mode, flags) in itertools.product(inputs, MODES.items()):
        try:
            result = build_groups(words, **flags)
        except PolicyError:
            continue
        produced.setdefault(result, f"{mode} {list(words)}")
    return produced


GROUP_LISTS = _group_lists()


def test_group_table_covers_every_group_name():
    names = {g for result in GROUP_LISTS for t in tuples(result) for g in t}
    assert names == set(GROUP_NAMES.values())
    assert PQ_GROUPS <= names


@pytest.mark.parametrize("group_list", sorted(GROUP_LISTS), ids=lambda g: g)
def test_openssl_accepts_group_list(group_list):
    ctx = SSL.Context(SSL.TLS_METHOD)
    openssl_ext.set_groups(ctx, group_list)


@pytest.mark.parametrize("word", sorted(SIGNATURE_WORDS))
def test_openssl_accepts_signature_word(word):
    ctx = SSL.Context(SSL.TLS_METHOD)
    openssl_ext.set_sigalgs(ctx, build_sigalgs((word,)))


def test_openssl_accepts_all_signature_words_together():
    ctx = SSL.Context(SSL.TLS_METHOD)
    openssl_ext.set_sigalgs(ctx, build_sigalgs(tuple(SIGNATURE_WORDS)))


@pytest.mark.parametrize("word", sorted(CIPHER_WORDS))
def test_openssl_accepts_cipher_word(word):
    suites, families = build_ciphers((word,))
    ctx = SSL.Context(SSL.TLS_METHOD)
    openssl_ext.set_ciphersuites(ctx, suites)
    ctx.set_cipher_list(families.encode())


def test_openssl_accepts_all_cipher_words_together():
    suites, families = build_ciphers(tuple(CIPHER_WORDS))
    ctx = SSL.Context(SSL.TLS_METHOD)
    openssl_ext.set_ciphersuites(ctx, suites)
    ctx.set_cipher_list(families.encode())


def test_openssl_rejects_unknown_names():
    """The acceptance tests above mean something only if OpenSSL does refuse bad names."""
    ctx = SSL.Context(SSL.TLS_METHOD)
    with pytest.raises(openssl_ext.OpenSSLCallError):
        openssl_ext.set_groups(ctx, "X25519MLKEM512")
    with pytest.raises(openssl_ext.OpenSSLCallError):
        openssl_ext.set_sigalgs(ctx, "mldsa66")
    with pytest.raises(openssl_ext.OpenSSLCallError):
        openssl_ext.set_ciphersuites(ctx, "TLS_AES_512_GCM_SHA384")
