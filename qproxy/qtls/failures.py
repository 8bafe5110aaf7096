"""OpenSSL's failures -> QTLSException subclasses, and the socket timeouts OpenSSL can live
with. Shared by the blocking connection and the asyncio streams."""

from __future__ import annotations

import errno
import socket
import struct

from OpenSSL import SSL

from ..tls import openssl_ext
from .errors import (
    QTLSConnectionClosed, QTLSException, QTLSHandshakeError, QTLSTimeout, QTLSVerificationError,
)

# OpenSSL 4 says "tls alert ...", older releases "tlsv1 alert ..." / "sslv3 alert ...".
_ALERT_PREFIXES = ("tls alert ", "tlsv1 alert ", "sslv3 alert ", "tlsv13 alert ")


def openssl_reasons(exc: SSL.Error) -> list[str]:
    """The reason strings of a pyOpenSSL error (its args hold (lib, func, reason) tuples)."""
    reasons = []
    for entry in (exc.args[0] if exc.args and isinstance(exc.args[0], list) else []):
        if isinstance(entry, tuple) and entry:
            reasons.append(str(entry[-1]))
    return reasons


def alert_of(reasons: list[str]) -> str | None:
    """The TLS alert OpenSSL reported, e.g. 'handshake failure' from 'sslv3 alert handshake
    failure' (an alert the peer sent us)."""
    for reason in reasons:
        for prefix in _ALERT_PREFIXES:
            if reason.startswith(prefix):
                return reason[len(prefix):]
    return None


def set_socket_timeout(sock: socket.socket, seconds: float | None) -> None:
    """A per-call timeout OpenSSL can live with.

    pyOpenSSL needs a blocking socket (Python's timeout mode makes the socket non-blocking and
    OpenSSL then reports WANT_READ): the kernel's SO_RCVTIMEO / SO_SNDTIMEO bound each call
    instead, and a timeout surfaces as EAGAIN."""
    sock.settimeout(None)
    value = 0.0 if seconds is None else max(seconds, 0.001)
    packed = struct.pack("ll", int(value), int(value % 1 * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, packed)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, packed)


# On a blocking socket OpenSSL only wants more I/O when SO_RCVTIMEO / SO_SNDTIMEO expired.
WANT_IO = (SSL.WantReadError, SSL.WantWriteError)
TIMEOUT_ERRNOS = {errno.EAGAIN, errno.EWOULDBLOCK, errno.ETIMEDOUT}


def syscall_errno(exc: SSL.SysCallError) -> int | None:
    return exc.args[0] if exc.args and isinstance(exc.args[0], int) else None


def handshake_error(conn: SSL.Connection, exc: SSL.Error, verify_mode: int) -> QTLSException:
    """The QTLSException for a failed handshake: timeout, peer gone, certificate, or alert."""
    if isinstance(exc, WANT_IO):
        return QTLSTimeout("the TLS handshake timed out")
    if isinstance(exc, SSL.SysCallError) and syscall_errno(exc) in TIMEOUT_ERRNOS:
        return QTLSTimeout("the TLS handshake timed out")
    if isinstance(exc, SSL.SysCallError):
        return QTLSConnectionClosed(f"the peer closed the connection during the handshake "
                                    f"({exc.args[1] if len(exc.args) > 1 else exc})")
    reasons = openssl_reasons(exc)
    alert = alert_of(reasons)
    reason = "; ".join(reasons) or str(exc)
    code = openssl_ext.verify_result(conn)
    if code != 0 and verify_mode:
        text = openssl_ext.verify_result_string(code)
        return QTLSVerificationError(
            f"the peer's certificate did not verify: {text} (X509_V_ERR {code})",
            verify_code=code, verify_reason=text, alert=alert, reason=reason)
    return QTLSHandshakeError(f"TLS handshake failed: {reason}", alert=alert, reason=reason)
