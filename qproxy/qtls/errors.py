"""Exceptions of `qproxy.qtls`: one base the seed names, subclasses a caller can act on.

Every exception carries `error_code` (a stable small int, the seed's attribute) and a message
that says what to do. OpenSSL's and pyOpenSSL's own exceptions never leak out of the API.
"""

from __future__ import annotations

from enum import IntEnum

from ..errors import QProxyError


class ErrorCode(IntEnum):
    GENERIC = 1
    USAGE = 2          # wrong mode, wrong state, bad argument
    CONFIG = 3         # certificate, key or CA file unusable
    HANDSHAKE = 4
    VERIFICATION = 5
    CLOSED = 6
    HSM = 7
    CRYPTO = 8         # KEM / signature input of the wrong size or kind
    TIMEOUT = 9


class QTLSException(QProxyError):
    """Base of every error `qproxy.qtls` raises. `error_code` is an `ErrorCode`."""

    error_code: ErrorCode = ErrorCode.GENERIC

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


class QTLSUsageError(QTLSException):
    """The call does not fit the object: wrong mode, wrong state, or a bad argument."""

    error_code = ErrorCode.USAGE


class QTLSModeError(QTLSUsageError):
    """A client-only call on a server context or connection, or the other way round."""


class QTLSStateError(QTLSUsageError):
    """The connection is not in a state that allows this call (e.g. read before connect)."""


class QTLSConfigError(QTLSException):
    """A certificate, key or CA location could not be loaded; `path` names it."""

    error_code = ErrorCode.CONFIG

    def __init__(self, message: str, path: str | None = None) -> None:
        self.path = path
        super().__init__(message)


class QTLSHandshakeError(QTLSException):
    """The TLS handshake failed. `alert` is the TLS alert description when OpenSSL gave one
    (e.g. 'handshake failure'), `reason` OpenSSL's reason string."""

    error_code = ErrorCode.HANDSHAKE

    def __init__(self, message: str, *, alert: str | None = None,
                 reason: str | None = None) -> None:
        self.alert = alert
        self.reason = reason
        super().__init__(message)


class QTLSVerificationError(QTLSHandshakeError):
    """The peer's certificate chain or name did not verify. `verify_code` is OpenSSL's
    X509_V_ERR_* number, `verify_reason` its text (e.g. 'certificate has expired')."""

    error_code = ErrorCode.VERIFICATION

    def __init__(self, message: str, *, verify_code: int, verify_reason: str,
                 alert: str | None = None, reason: str | None = None) -> None:
        self.verify_code = verify_code
        self.verify_reason = verify_reason
        super().__init__(message, alert=alert, reason=reason)


class QTLSConnectionClosed(QTLSException):
    """The connection or its socket is closed (by us, by the peer, or never opened)."""

    error_code = ErrorCode.CLOSED


class QTLSTimeout(QTLSConnectionClosed):
    """The socket timed out; the connection cannot be used any more."""

    error_code = ErrorCode.TIMEOUT


class QTLSHSMError(QTLSException):
    """A key in an HSM could not be used (provider not loaded, token, PIN, key missing)."""

    error_code = ErrorCode.HSM


class QTLSCryptoError(QTLSException):
    """A KEM or signature input has the wrong size or kind, or a key is missing."""

    error_code = ErrorCode.CRYPTO
