"""qproxy.qtls: the Q-TLS Python API (post-quantum TLS clients and servers, ML-KEM, ML-DSA).

The same engine as qtls-server: OpenSSL (inside `cryptography`) through pyOpenSSL, the same
algorithm policy tables. Nothing here implements cryptography or TLS. See docs/qtls.md.
"""

from __future__ import annotations

# Must run before OpenSSL is first imported: OpenSSL reads OPENSSL_CONF once.
from .hsm import configure_quietly as _configure_hsm

_configure_hsm()

from .aio import QTLSStreamWriter, open_connection  # noqa: E402
from .client import QTLSClient  # noqa: E402
from .connection import ConnectionState, QTLSConnection  # noqa: E402
from .constants import (  # noqa: E402
    QTLS_CLIENT_MODE, QTLS_FILETYPE_ASN1, QTLS_FILETYPE_PEM, QTLS_KEM_KYBER768,
    QTLS_KEM_KYBER1024, QTLS_OP_CLASSICAL_ONLY, QTLS_OP_HYBRID_MODE, QTLS_OP_NO_SESSION_TICKETS,
    QTLS_OP_PQC_ONLY, QTLS_OP_REQUIRE_PQ, QTLS_SERVER_MODE, QTLS_SIG_DILITHIUM2,
    QTLS_SIG_DILITHIUM3, QTLS_SIG_DILITHIUM5, QTLS_VERIFY_CLIENT_ONCE,
    QTLS_VERIFY_FAIL_IF_NO_PEER_CERT, QTLS_VERIFY_NONE, QTLS_VERIFY_PEER, SEED_NAMES, Mode,
)
from .context import QTLSContext  # noqa: E402
from .errors import (  # noqa: E402
    ErrorCode, QTLSConfigError, QTLSConnectionClosed, QTLSCryptoError, QTLSException,
    QTLSHandshakeError, QTLSHSMError, QTLSModeError, QTLSStateError, QTLSTimeout,
    QTLSUsageError, QTLSVerificationError,
)
from .kem import QTLSKyber  # noqa: E402
from .server import QTLSServer  # noqa: E402
from .sig import QTLSDilithium  # noqa: E402

__all__ = [
    "ConnectionState", "ErrorCode", "Mode", "QTLSClient", "QTLSConfigError",
    "QTLSConnection", "QTLSConnectionClosed", "QTLSContext", "QTLSCryptoError",
    "QTLSDilithium", "QTLSException", "QTLSHSMError", "QTLSHandshakeError", "QTLSKyber",
    "QTLSModeError", "QTLSServer", "QTLSStateError", "QTLSTimeout", "QTLSUsageError",
    "QTLSStreamWriter", "QTLSVerificationError", "QTLS_CLIENT_MODE", "QTLS_FILETYPE_ASN1", "QTLS_FILETYPE_PEM",
    "QTLS_KEM_KYBER1024", "QTLS_KEM_KYBER768", "QTLS_OP_CLASSICAL_ONLY", "QTLS_OP_HYBRID_MODE",
    "QTLS_OP_NO_SESSION_TICKETS", "QTLS_OP_PQC_ONLY", "QTLS_OP_REQUIRE_PQ", "QTLS_SERVER_MODE",
    "QTLS_SIG_DILITHIUM2", "QTLS_SIG_DILITHIUM3", "QTLS_SIG_DILITHIUM5",
    "QTLS_VERIFY_CLIENT_ONCE", "QTLS_VERIFY_FAIL_IF_NO_PEER_CERT", "QTLS_VERIFY_NONE",
    "QTLS_VERIFY_PEER", "SEED_NAMES", "open_connection",
]
