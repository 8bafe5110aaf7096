"""Build the listener's OpenSSL contexts from a validated configuration.

Everything that can be checked without binding a socket is checked here, so that
`qtls-server --test-config` and a reload find the same problems a start would: files readable,
certificates and keys parse, each key matches its certificate, algorithm names known, every
certificate usable under the configured signature algorithms.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import Callable

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL

from ..config.files import read_regular
from ..config.model import AlgorithmsSection, CertificatesSection, KeyPair, ServerConfig
from ..errors import ConfigError, ConfigErrors, PlatformError
from ..keys import uri as pkcs11_uri
from ..keys.provider import memory_file, pem_uri
from ..keys.uri import Pkcs11Uri
from . import fips, openssl_ext
from .certinfo import describe_key
from .policy import PolicyError, TlsPolicy, build_policy, key_usable, unknown_words

ALPN_HTTP1 = b"http/1.1"
SESSION_ID_CONTEXT = b"qproxy"



def _openssl_slot(key_kind: str) -> str:
    """OpenSSL keeps one certificate per key type: a second one of a type replaces the first."""
    for family in ("ECDSA", "RSA"):
        if key_kind.startswith(family):
            return family
    return key_kind


@dataclass(frozen=True)
class LoadedPair:
    cert_path: str
    key_path: str
    key_kind: str
    leaf: x509.Certificate
    leaf_der: bytes
    json_path: str = ""
    key_uri: Pkcs11Uri | None = None
    """Set for keys in an HSM: `key_path` is then the provider's PEM form of the URI."""
    ocsp_response_file: str | None = None

    @property
    def key_source(self) -> str:
        return "hsm" if self.key_uri is not None else "file"


@dataclass
class ServerTls:
    """The contexts a listener serves with: a default and one per SNI name."""

    default: SSL.Context
    by_name: dict[str, SSL.Context]
    policy: TlsPolicy
    pairs: list[LoadedPair]
    warnings: list[str] = field(default_factory=list)
    deferred: list[tuple[SSL.Context, LoadedPair]] = field(default_factory=list)
    """HSM keys to load after fork, in each worker (PKCS#11 modules are not fork-safe)."""
    _by_der: dict[bytes, LoadedPair] = field(default_factory=dict)
    ocsp: list = field(default_factory=list)
    """tls.stapling.OcspTarget per certificate to staple (set by daemon.prepare)."""

    def context_for(self, server_name: str | None) -> SSL.Context:
        if not server_name or not self.by_name:
            return self.default
        name = server_name.lower().rstrip(".")
        if name in self.by_name:
            return self.by_name[name]
        _, _, parent = name.partition(".")
        return self.by_name.get("*." + parent, self.default)

    def pair_of(self, leaf_der: bytes | None) -> LoadedPair | None:
        """Which pair signed: maps the certificate OpenSSL chose back to its pair."""
        if leaf_der is None:
            return None
        if not self._by_der:
            self._by_der = {p.leaf_der: p for p in self.pairs}
        return self._by_der.get(leaf_der)

    def key_kind_of(self, leaf_der: bytes | None) -> str | None:
        pair = self.pair_of(leaf_der)
        return pair.key_kind if pair else None

    @property
    def uses_hsm(self) -> bool:
        return any(p.key_uri is not None for p in self.pairs)

    def load_hsm_keys(self) -> None:
        """In a worker, after fork: put the HSM-backed keys into the inherited contexts."""
        for ctx, pair in self.deferred:
            try:
                ctx.use_privatekey_file(pair.key_path)
                ctx.check_privatekey()
            except SSL.Error as exc:
                raise ConfigError(pair.json_path, f"the HSM key {pair.key_uri} could not be "
                                  f"used through pkcs11-provider: {exc}") from None


def check_platform() -> str:
    """Refuse to run on an OpenSSL without ML-KEM hybrids and ML-DSA; return its version."""
    probe = SSL.Context(SSL.TLS_METHOD)
    version = openssl_ext.openssl_version()
    try:
        openssl_ext.set_groups(probe, "X25519MLKEM768")
        openssl_ext.set_sigalgs(probe, "mldsa65")
    except openssl_ext.OpenSSLCallError as exc:
        raise PlatformError(
            f"{version} cannot do post-quantum TLS ({exc}); qproxy needs OpenSSL >= 3.5, which "
            "the pinned 'cryptography' wheel (>= 50) bundles: reinstall qproxy's dependencies"
        ) from None
    return version


def member_path(pair_path: str, member: str) -> str:
    """Where a pair's cert or key is written in the operator's file. An element of `keypairs` or
    `sni` has members (`certificates.keypairs[1].key`); the seed's pair is two keys of the
    section itself, named by its key's key (`certificates.server_key` or `server_key_uri`):
    an error must name a path the operator can find, not `certificates.server_cert.key`."""
    if pair_path in SEED_PAIR_PATHS:
        return "certificates.server_cert" if member == "cert" else pair_path
    return f"{pair_path}.{member}"


SEED_PAIR_PATHS = ("certificates.server_key", "certificates.server_key_uri")


def _read(path: str, json_path: str, what: str) -> bytes:
    # Regular files only, and bounded: OpenSSL opens the same paths by name afterwards.
    return read_regular(path, json_path, what)


def _load_leaf(pair: KeyPair, json_path: str) -> x509.Certificate:
    cert_data = _read(pair.cert, member_path(json_path, "cert"), "certificate")
    try:
        return x509.load_pem_x509_certificates(cert_data)[0]
    except ValueError:
        raise ConfigError(member_path(json_path, "cert"), f"{pair.cert!r} holds no PEM certificate") from None


_HSM_KEY_FILES: dict[str, str] = {}


def _hsm_key_file(uri: str) -> str:
    """The memory file holding pkcs11-provider's PEM form of `uri`, one per URI for the life of
    the process: every generation's workers inherit it, and a file per reload would leak one
    descriptor each time (the master cannot tell when the last worker that reads it is gone)."""
    path = _HSM_KEY_FILES.get(uri)
    if path is None:
        path = _HSM_KEY_FILES[uri] = memory_file("qtls-hsm-key", pem_uri(uri))
    return path


def load_hsm_pair(pair: KeyPair, json_path: str, hsm_enabled: bool) -> LoadedPair:
    """A certificate whose key stays in the HSM; the key itself is checked with python-pkcs11."""
    if not hsm_enabled:
        raise ConfigError(member_path(json_path, "key"), "a pkcs11: key needs the hsm section "
                          "(hsm.enabled: true, hsm.pkcs11_library, a PIN)")
    try:
        uri = pkcs11_uri.parse(pair.key)
    except pkcs11_uri.UriError as exc:
        raise ConfigError(member_path(json_path, "key"), str(exc)) from None
    leaf = _load_leaf(pair, json_path)
    key_path = _hsm_key_file(pair.key)
    return LoadedPair(pair.cert, key_path, describe_key(leaf.public_key()), leaf,
                      leaf.public_bytes(serialization.Encoding.DER), json_path, uri,
                      pair.ocsp_response_file)


def load_pair(pair: KeyPair, json_path: str, warnings: list[str],
              hsm_enabled: bool = False) -> LoadedPair:
    """Parse one certificate chain and key with `cryptography`, for errors a person can act on."""
    if pkcs11_uri.is_pkcs11_uri(pair.key):
        return load_hsm_pair(pair, json_path, hsm_enabled)
    leaf = _load_leaf(pair, json_path)
    key_data = _read(pair.key, member_path(json_path, "key"), "private key")
    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except TypeError:
        raise ConfigError(member_path(json_path, "key"), f"{pair.key!r} is encrypted; give an "
                          "unencrypted key (mode 0600) or keep it in an HSM") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError(member_path(json_path, "key"), f"{pair.key!r} is not a usable PEM private key "
                          f"({exc})") from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise ConfigError(member_path(json_path, "key"), f"{pair.key!r} does not match the certificate in "
                          f"{pair.cert!r} (subject {leaf.subject.rfc4514_string()})")
    mode = stat.S_IMODE(os.stat(pair.key).st_mode)
    if mode & 0o077:
        warnings.append(f"{member_path(json_path, 'key')}: {pair.key!r} is readable by others (mode {mode:04o}); "
                        "chmod 600 it")
    # Expiry (past or near) is warned about by observability.cert_expiry, for every pair.
    return LoadedPair(pair.cert, pair.key, describe_key(leaf.public_key()), leaf,
                      leaf.public_bytes(serialization.Encoding.DER), json_path,
                      ocsp_response_file=pair.ocsp_response_file)


def _alpn_select(connection: SSL.Connection, offered: list[bytes]) -> bytes:
    return ALPN_HTTP1 if ALPN_HTTP1 in offered else SSL.NO_OVERLAPPING_PROTOCOLS


def _alpn_selector(protocols: tuple[str, ...]) -> Callable[[SSL.Connection, list[bytes]], bytes]:
    """Ours in order, the first the client offers (a tcp listener's `tls.alpn`)."""
    ours = [protocol.encode() for protocol in protocols]

    def select(connection: SSL.Connection, offered: list[bytes]) -> bytes:
        return next((p for p in ours if p in offered), SSL.NO_OVERLAPPING_PROTOCOLS)

    return select


def _new_context(config: ServerConfig, policy: TlsPolicy,
                 info_callback: Callable[[SSL.Connection, int, int], None] | None) -> SSL.Context:
    tls, certs = config.tls, config.certificates
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION if tls.protocol_version == "1.3"
                              else SSL.TLS1_2_VERSION)
    ctx.set_options(SSL.OP_NO_RENEGOTIATION | SSL.OP_NO_COMPRESSION
                    | SSL.OP_CIPHER_SERVER_PREFERENCE | SSL.OP_IGNORE_UNEXPECTED_EOF)
    if not tls.session_tickets:
        ctx.set_options(SSL.OP_NO_TICKET)
    # Idle connections then hold no 16 KiB read/write buffers.
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    ctx.set_timeout(tls.session_timeout)
    ctx.set_session_id(SESSION_ID_CONTEXT)
    openssl_ext.set_groups(ctx, policy.groups)
    if policy.sigalgs:
        openssl_ext.set_sigalgs(ctx, policy.sigalgs)
    if policy.ciphersuites:
        openssl_ext.set_ciphersuites(ctx, policy.ciphersuites)
    if policy.cipher_list and tls.protocol_version == "1.2":
        ctx.set_cipher_list(policy.cipher_list.encode())
    if tls.alpn is None or tls.alpn == (ALPN_HTTP1.decode(),):
        ctx.set_alpn_select_callback(_alpn_select)
    elif tls.alpn:
        ctx.set_alpn_select_callback(_alpn_selector(tls.alpn))
    if info_callback is not None:
        ctx.set_info_callback(info_callback)
    if certs.verify_client:
        assert certs.ca_bundle is not None
        mode = SSL.VERIFY_PEER | SSL.VERIFY_CLIENT_ONCE
        if certs.verify_client is True:
            mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
        ctx.set_verify(mode)
        ctx.set_verify_depth(certs.verify_depth)
        ctx.load_verify_locations(certs.ca_bundle)
        ctx.load_client_ca(certs.ca_bundle.encode())
    return ctx


def _install_pairs(ctx: SSL.Context, pairs: list[LoadedPair],
                   deferred: list[tuple[SSL.Context, LoadedPair]]) -> None:
    for pair in pairs:
        try:
            ctx.use_certificate_chain_file(pair.cert_path)
            if pair.key_uri is not None:
                deferred.append((ctx, pair))
                continue
            ctx.use_privatekey_file(pair.key_path)
            ctx.check_privatekey()
        except SSL.Error as exc:
            raise ConfigError(pair.json_path, f"OpenSSL refused {pair.cert_path!r} / "
                              f"{pair.key_path!r}: {exc}") from None


def _load_set(pairs: tuple[KeyPair, ...], paths: list[str], policy: TlsPolicy | None,
              errors: list[ConfigError], warnings: list[str], hsm_enabled: bool,
              fips_mode: bool = False) -> list[LoadedPair]:
    loaded: list[LoadedPair] = []
    slots: dict[str, str] = {}
    for pair, path in zip(pairs, paths):
        try:
            item = load_pair(pair, path, warnings, hsm_enabled)
        except ConfigError as exc:
            errors += [exc, *_key_too(pair, path, exc)]
            continue
        slot = _openssl_slot(item.key_kind)
        if slot in slots:
            errors.append(ConfigError(path, f"a second {slot} certificate on the same listener "
                                      f"would replace {slots[slot]}; one per key type (use "
                                      "certificates.sni for per-name certificates)"))
            continue
        refusal = fips.key_refusal(item.key_kind) if fips_mode else None
        if refusal:
            errors.append(ConfigError(member_path(path, "cert"), refusal))
            continue
        if policy is not None and not key_usable(item.key_kind, policy.sigalgs):
            errors.append(ConfigError(path, f"{item.key_kind} certificate can never be used: "
                                      f"algorithms.signature allows only {policy.sigalgs}"))
            continue
        slots[slot] = path
        loaded.append(item)
    return loaded


def named_pairs(certs: CertificatesSection) -> list[tuple[KeyPair, str]]:
    """Every certificate pair with the JSON path errors about it name: the default set (the
    seed's pair, then `keypairs`), then each `sni` name's."""
    pairs = certs.default_pairs()
    offset = 1 if certs.server_cert else 0
    seed_path = "certificates.server_key" if certs.server_key else "certificates.server_key_uri"
    paths = ([seed_path] if certs.server_cert else []) + [
        f"certificates.keypairs[{i}]" for i in range(len(pairs) - offset)]
    named = list(zip(pairs, paths))
    for name, sni_pairs in certs.sni.items():
        named += [(pair, f"certificates.sni.{name}[{i}]") for i, pair in enumerate(sni_pairs)]
    return named


def check_pair_files(certs: CertificatesSection) -> list[ConfigError]:
    """Certificates, keys and the CA bundle read, parsed and matched, without building a
    context (for a configuration whose other sections are wrong)."""
    errors = []
    for pair, path in named_pairs(certs):
        try:
            if pkcs11_uri.is_pkcs11_uri(pair.key):
                _load_leaf(pair, path)
            else:
                load_pair(pair, path, [])
        except ConfigError as exc:
            errors += [exc, *_key_too(pair, path, exc)]
    errors += _check_ca_bundle(certs)
    return errors


def _key_too(pair: KeyPair, path: str, failed: ConfigError) -> list[ConfigError]:
    """When the certificate of a pair failed, whether its key file is readable: both go in
    the same run's list (a missing certificate usually comes with a missing key)."""
    if failed.path != member_path(path, "cert") or pkcs11_uri.is_pkcs11_uri(pair.key):
        return []
    try:
        _read(pair.key, member_path(path, "key"), "private key")
    except ConfigError as exc:
        return [exc]
    return []


def _check_ca_bundle(certs: CertificatesSection) -> list[ConfigError]:
    if not certs.ca_bundle:
        return []
    try:
        x509.load_pem_x509_certificates(_read(certs.ca_bundle, "certificates.ca_bundle",
                                              "CA bundle"))
    except ConfigError as exc:
        return [exc]
    except ValueError:
        return [ConfigError("certificates.ca_bundle",
                            f"{certs.ca_bundle!r} holds no PEM certificate")]
    return []


def _policy_path(exc: PolicyError) -> str:
    return f"algorithms.{exc.field}" + (f"[{exc.index}]" if exc.index is not None else "")


def policy_word_errors(algorithms: AlgorithmsSection) -> list[ConfigError]:
    """Every algorithm name no table knows, each at its JSON path."""
    return [ConfigError(_policy_path(e), str(e))
            for e in unknown_words(algorithms.kem, algorithms.signature, algorithms.cipher)]


def _policy(config: ServerConfig, algorithms: AlgorithmsSection) -> TlsPolicy:
    tls = config.tls
    unknown = policy_word_errors(algorithms)
    if unknown:
        raise ConfigErrors("", unknown)
    try:
        return build_policy(algorithms.kem, algorithms.signature, algorithms.cipher,
                            hybrid_mode=tls.hybrid_mode, pqc_only=tls.pqc_only,
                            require_pq=tls.require_pq)
    except PolicyError as exc:
        raise ConfigError(_policy_path(exc), str(exc)) from None




def build_server_tls(config: ServerConfig, source: str = "<config>",
                     info_callback: Callable[[SSL.Connection, int, int], None] | None = None,
                     ) -> ServerTls:
    """All contexts for the listener, or ConfigErrors listing every problem found."""
    algorithms, errors = fips.effective_algorithms(config)
    warnings: list[str] = []
    # A policy problem does not stop the certificates from being checked: one run of
    # --test-config lists both.
    policy: TlsPolicy | None = None
    try:
        policy = _policy(config, algorithms)
    except ConfigError as exc:
        errors.append(exc)
    except ConfigErrors as exc:
        errors += exc.errors
    certs = config.certificates
    errors += _check_ca_bundle(certs)

    default_pairs = certs.default_pairs()
    default_paths = [path for _, path in named_pairs(certs)][:len(default_pairs)]
    hsm = config.hsm.enabled
    fips_mode = config.fips.enabled
    loaded_default = _load_set(default_pairs, default_paths, policy, errors, warnings, hsm,
                               fips_mode)
    loaded_sni: dict[str, list[LoadedPair]] = {}
    for name, pairs in certs.sni.items():
        paths = [f"certificates.sni.{name}[{i}]" for i in range(len(pairs))]
        loaded_sni[name.lower()] = _load_set(pairs, paths, policy, errors, warnings, hsm,
                                             fips_mode)
    if errors:
        raise ConfigErrors(source, errors)
    assert policy is not None  # else _policy had added to errors

    deferred: list[tuple[SSL.Context, LoadedPair]] = []
    try:
        default = _new_context(config, policy, info_callback)
        _install_pairs(default, loaded_default, deferred)
        by_name = {}
        for name, pairs in loaded_sni.items():
            ctx = _new_context(config, policy, info_callback)
            _install_pairs(ctx, pairs, deferred)
            by_name[name] = ctx
    except ConfigError as exc:
        raise ConfigErrors(source, [exc]) from None
    except (SSL.Error, openssl_ext.OpenSSLCallError) as exc:
        raise ConfigErrors(source, [ConfigError("tls", f"OpenSSL refused the settings: {exc}")]) from None

    all_pairs = loaded_default + [p for pairs in loaded_sni.values() for p in pairs]
    server_tls = ServerTls(default, by_name, policy, all_pairs, warnings, deferred)
    if by_name:
        def choose(connection: SSL.Connection) -> None:
            name = connection.get_servername()
            chosen = server_tls.context_for(name.decode("ascii", "replace") if name else None)
            if chosen is not server_tls.default:
                connection.set_context(chosen)
        default.set_tlsext_servername_callback(choose)
    return server_tls
