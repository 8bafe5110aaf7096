"""`QTLSContext`: the settings connections are made from, on one pyOpenSSL `SSL.Context`.

Options map to the daemon's policy words through `qproxy.tls.policy`, so a `QTLSContext` and
a `qtls-server` listener given the same words offer the same groups in the same order.
A context may be shared by any number of threads: setters take a lock, and OpenSSL's SSL_CTX
is safe to create connections from concurrently.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

from OpenSSL import SSL, crypto

from ..keys import uri as pkcs11_uri
from ..tls import openssl_ext
from ..tls.policy import PolicyError, build_groups, build_sigalgs
from . import files, hsm
from .constants import (
    ALL_OPTIONS, ALL_VERIFY_FLAGS, KEY_EXCHANGE_OPTIONS, QTLS_FILETYPE_ASN1, QTLS_FILETYPE_PEM,
    QTLS_OP_CLASSICAL_ONLY, QTLS_OP_HYBRID_MODE, QTLS_OP_NO_SESSION_TICKETS, QTLS_OP_PQC_ONLY,
    QTLS_OP_REQUIRE_PQ, QTLS_VERIFY_CLIENT_ONCE, QTLS_VERIFY_FAIL_IF_NO_PEER_CERT,
    QTLS_VERIFY_PEER, Mode,
)
from .errors import QTLSConfigError, QTLSHSMError, QTLSModeError, QTLSUsageError
from .files import PathLike

SESSION_ID_CONTEXT = b"qproxy.qtls"

_VERIFY_FLAGS = {
    QTLS_VERIFY_PEER: SSL.VERIFY_PEER,
    QTLS_VERIFY_FAIL_IF_NO_PEER_CERT: SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
    QTLS_VERIFY_CLIENT_ONCE: SSL.VERIFY_CLIENT_ONCE,
}
_FILETYPES = {QTLS_FILETYPE_PEM: crypto.FILETYPE_PEM, QTLS_FILETYPE_ASN1: crypto.FILETYPE_ASN1}


def groups_for_options(options: int, kem_words: Sequence[str] = ()) -> str:
    """The OpenSSL group list (policy tuple syntax) for a set of `QTLS_OP_*` flags."""
    exchange = options & KEY_EXCHANGE_OPTIONS
    if exchange not in (0, QTLS_OP_HYBRID_MODE, QTLS_OP_PQC_ONLY, QTLS_OP_CLASSICAL_ONLY):
        raise QTLSUsageError("choose one of QTLS_OP_HYBRID_MODE, QTLS_OP_PQC_ONLY and "
                             "QTLS_OP_CLASSICAL_ONLY, not several")
    try:
        return build_groups(tuple(kem_words), hybrid_mode=exchange != QTLS_OP_CLASSICAL_ONLY,
                            pqc_only=exchange == QTLS_OP_PQC_ONLY,
                            require_pq=bool(options & QTLS_OP_REQUIRE_PQ))
    except PolicyError as exc:
        raise QTLSUsageError(str(exc)) from None


class QTLSContext:
    """Certificates, keys, trust anchors and algorithm policy for one side of a connection."""

    def __init__(self, mode: Mode | int = Mode.CLIENT) -> None:
        try:
            self.mode = Mode(mode)
        except ValueError:
            raise QTLSUsageError(f"mode must be QTLS_CLIENT_MODE or QTLS_SERVER_MODE, not "
                                 f"{mode!r}") from None
        self._lock = threading.Lock()
        self._ctx = SSL.Context(SSL.TLS_METHOD)
        self._options = QTLS_OP_HYBRID_MODE
        self._kem_words: tuple[str, ...] = ()
        self._verify_mode = QTLS_VERIFY_PEER if self.mode is Mode.CLIENT else 0
        # Certificates and keys come in pairs (one per key type), in either order: the
        # public key of a half whose other half has not come yet, and which half it is.
        # OpenSSL's own check_privatekey cannot tell: it looks at the slot of the key's type.
        self._pending: tuple[str, bytes | None] | None = None
        self._ctx.set_options(SSL.OP_NO_RENEGOTIATION | SSL.OP_NO_COMPRESSION
                              | SSL.OP_IGNORE_UNEXPECTED_EOF)
        if self.mode is Mode.SERVER:
            self._ctx.set_options(SSL.OP_CIPHER_SERVER_PREFERENCE)
            self._ctx.set_session_id(SESSION_ID_CONTEXT)
        else:
            self._ctx.set_session_cache_mode(SSL.SESS_CACHE_CLIENT)
        self._apply_options()
        self._apply_verify()

    # -- algorithm policy ------------------------------------------------------------------

    @property
    def options(self) -> int:
        return self._options

    def set_options(self, options: int) -> int:
        """Set `QTLS_OP_*` flags (added to those set before, like SSL_CTX_set_options, except
        that a key-exchange flag replaces the previous one). Returns the flags now in force."""
        if options & ~ALL_OPTIONS:
            raise QTLSUsageError(f"unknown option bits {options & ~ALL_OPTIONS:#x}")
        with self._lock:
            merged = self._options | options
            if options & KEY_EXCHANGE_OPTIONS:
                merged = (merged & ~KEY_EXCHANGE_OPTIONS) | (options & KEY_EXCHANGE_OPTIONS)
            previous, self._options = self._options, merged
            try:
                self._apply_options()
            except QTLSUsageError:
                self._options = previous
                raise
            return self._options

    def clear_options(self, options: int) -> int:
        if options & QTLS_OP_NO_SESSION_TICKETS:
            # OpenSSL's option bit cannot be cleared through pyOpenSSL.
            raise QTLSUsageError("QTLS_OP_NO_SESSION_TICKETS cannot be cleared; make a new "
                                 "context instead")
        with self._lock:
            self._options &= ~options
            self._apply_options()
            return self._options

    def set_kem_algorithms(self, names: Iterable[str]) -> None:
        """Key-exchange words as the daemon's `algorithms.kem` takes them ('kyber768',
        'KYBER1024', 'x25519', 'X25519MLKEM768', ...); the options decide the combination."""
        with self._lock:
            previous, self._kem_words = self._kem_words, tuple(names)
            try:
                self._apply_options()
            except QTLSUsageError:
                self._kem_words = previous
                raise

    def set_signature_algorithms(self, names: Iterable[str]) -> None:
        """Signature words as in the daemon's `algorithms.signature` ('dilithium3',
        'ML-DSA-65', 'ecdsa-p384', 'rsa', ...): what this end accepts and signs with."""
        try:
            sigalgs = build_sigalgs(tuple(n.lower() for n in names))
        except PolicyError as exc:
            raise QTLSUsageError(str(exc)) from None
        if sigalgs:
            with self._lock:
                openssl_ext.set_sigalgs(self._ctx, sigalgs)

    @property
    def groups(self) -> str:
        """The OpenSSL group list in force, e.g. 'X25519MLKEM768:.../X25519:...'."""
        return groups_for_options(self._options, self._kem_words)

    def _apply_options(self) -> None:
        groups = groups_for_options(self._options, self._kem_words)
        openssl_ext.set_groups(self._ctx, groups)
        only_tls13 = bool(self._options & (QTLS_OP_PQC_ONLY | QTLS_OP_REQUIRE_PQ))
        self._ctx.set_min_proto_version(SSL.TLS1_3_VERSION if only_tls13 else SSL.TLS1_2_VERSION)
        if self._options & QTLS_OP_NO_SESSION_TICKETS:
            self._ctx.set_options(SSL.OP_NO_TICKET)

    # -- verification ----------------------------------------------------------------------

    @property
    def verify_mode(self) -> int:
        return self._verify_mode

    def set_verify_mode(self, mode: int) -> None:
        """`QTLS_VERIFY_NONE` or `QTLS_VERIFY_PEER` with optional `..._FAIL_IF_NO_PEER_CERT`
        (server: require a client certificate) and `..._CLIENT_ONCE`."""
        if mode & ~ALL_VERIFY_FLAGS:
            raise QTLSUsageError(f"unknown verify flags {mode & ~ALL_VERIFY_FLAGS:#x}")
        if mode and not mode & QTLS_VERIFY_PEER:
            raise QTLSUsageError("QTLS_VERIFY_FAIL_IF_NO_PEER_CERT and QTLS_VERIFY_CLIENT_ONCE "
                                 "need QTLS_VERIFY_PEER")
        with self._lock:
            self._verify_mode = mode
            self._apply_verify()

    def _apply_verify(self) -> None:
        flags = 0
        for qtls_flag, ssl_flag in _VERIFY_FLAGS.items():
            if self._verify_mode & qtls_flag:
                flags |= ssl_flag
        self._ctx.set_verify(flags or SSL.VERIFY_NONE)

    def load_verify_locations(self, ca_file: PathLike | None = None,
                              ca_path: PathLike | None = None) -> None:
        """Trust anchors: a PEM bundle and/or an OpenSSL hashed directory. A server also names
        the bundle's subjects as acceptable client-certificate issuers."""
        if ca_file is None and ca_path is None:
            raise QTLSUsageError("give ca_file, ca_path or both")
        if ca_file is not None:
            files.check_pem_certificates(ca_file, "CA bundle")
        if ca_path is not None and not Path(ca_path).is_dir():
            raise QTLSConfigError(f"CA directory {os.fspath(ca_path)!r} does not exist",
                                  os.fspath(ca_path))
        with self._lock:
            try:
                self._ctx.load_verify_locations(
                    os.fspath(ca_file) if ca_file is not None else None,
                    os.fspath(ca_path) if ca_path is not None else None)
                if ca_file is not None and self.mode is Mode.SERVER:
                    self._ctx.load_client_ca(os.fsencode(ca_file))
            except SSL.Error as exc:
                raise QTLSConfigError(f"OpenSSL refused the CA locations: {exc}") from None

    def load_default_verify_paths(self) -> None:
        """The system's trust store (for public servers)."""
        with self._lock:
            self._ctx.set_default_verify_paths()

    # -- own certificate and key -----------------------------------------------------------

    def use_certificate_file(self, path: PathLike, file_type: int = QTLS_FILETYPE_PEM) -> None:
        """This end's certificate. A PEM file may hold the full chain, leaf first."""
        if file_type not in _FILETYPES:
            raise QTLSUsageError("file_type must be QTLS_FILETYPE_PEM or QTLS_FILETYPE_ASN1")
        name = os.fspath(path)
        if not Path(name).is_file():
            raise QTLSConfigError(f"certificate file {name!r} does not exist", name)
        with self._lock:
            try:
                if file_type == QTLS_FILETYPE_PEM:
                    self._ctx.use_certificate_chain_file(name)
                else:
                    self._ctx.use_certificate_file(name, crypto.FILETYPE_ASN1)
            except SSL.Error as exc:
                raise QTLSConfigError(f"OpenSSL refused the certificate {name!r}: {exc}",
                                      name) from None
            self._half_loaded("certificate", files.leaf_public_key(name, file_type), name)

    def use_private_key_file(self, path: PathLike, file_type: int = QTLS_FILETYPE_PEM) -> None:
        """This end's private key (unencrypted); it must match the certificate when both are
        loaded."""
        if file_type not in _FILETYPES:
            raise QTLSUsageError("file_type must be QTLS_FILETYPE_PEM or QTLS_FILETYPE_ASN1")
        name = os.fspath(path)
        public = files.check_private_key(name, file_type)
        with self._lock:
            try:
                self._ctx.use_privatekey_file(name, _FILETYPES[file_type])
            except SSL.Error as exc:
                raise QTLSConfigError(f"OpenSSL refused the private key {name!r}: {exc}",
                                      name) from None
            self._half_loaded("key", public, name)

    def _half_loaded(self, half: str, public: bytes | None, name: str) -> None:
        """One half of a pair is in: complete the pending pair (they must match) or wait."""
        pending, self._pending = self._pending, None
        if pending is None or pending[0] == half:
            self._pending = (half, public)
            return
        if public is not None and pending[1] is not None and public != pending[1]:
            raise QTLSConfigError(f"{name!r} does not match the {pending[0]} loaded before it "
                                  "(different public keys)", name)

    def use_hsm_key(self, uri: str) -> None:
        """This end's private key stays in an HSM: `pkcs11:token=...;object=...;type=private`.

        Signing goes through pkcs11-provider inside OpenSSL, configured when `qproxy.qtls` is
        imported with `QTLS_PKCS11_LIBRARY` and `QTLS_HSM_PIN_FILE` (or `QTLS_HSM_PIN`) set."""
        try:
            pkcs11_uri.parse(uri)
        except pkcs11_uri.UriError as exc:
            raise QTLSHSMError(str(exc)) from None
        if hsm.setup_problem is not None:
            raise QTLSHSMError(f"pkcs11-provider could not be set up: {hsm.setup_problem}")
        if not os.environ.get("OPENSSL_CONF"):
            raise QTLSHSMError(
                "pkcs11-provider is not loaded in this process: set QTLS_PKCS11_LIBRARY and "
                "QTLS_HSM_PIN_FILE (or QTLS_HSM_PIN) in the environment before the program "
                "first imports qproxy.qtls, cryptography or OpenSSL")
        fd = hsm.key_file_for_uri(uri)
        try:
            with self._lock:
                self._ctx.use_privatekey_file(f"/proc/self/fd/{fd}")
                # The key never leaves the token: OpenSSL compares it with the certificate.
                if self._pending is not None and self._pending[0] == "certificate":
                    self._pending = None
                    self._ctx.check_privatekey()
        except SSL.Error as exc:
            raise QTLSHSMError(f"the HSM key {uri} could not be used through pkcs11-provider "
                               f"(token present? PIN right? key matches the certificate?): "
                               f"{exc}") from None
        finally:
            os.close(fd)

    def set_alpn_protocols(self, protocols: Sequence[str]) -> None:
        """Client: protocols to offer, in order. Server: protocols to accept, in preference
        order; a client offering none of them is refused (no_application_protocol)."""
        encoded = [p.encode("ascii") for p in protocols]
        with self._lock:
            if self.mode is Mode.CLIENT:
                self._ctx.set_alpn_protos(encoded)
            else:
                def select(_conn: SSL.Connection, offered: list[bytes]):  # type: ignore[no-untyped-def]
                    # bytes, or pyOpenSSL's private marker type that refuses the handshake
                    for protocol in encoded:
                        if protocol in offered:
                            return protocol
                    return SSL.NO_OVERLAPPING_PROTOCOLS
                self._ctx.set_alpn_select_callback(select)

    def require_mode(self, mode: Mode, call: str) -> None:
        if self.mode is not mode:
            raise QTLSModeError(f"{call} needs a {mode.name.lower()} context "
                                f"(QTLS_{mode.name}_MODE); this one is "
                                f"QTLS_{self.mode.name}_MODE")

    @property
    def ssl_context(self) -> SSL.Context:
        """The underlying pyOpenSSL context (for settings this API does not cover)."""
        return self._ctx
