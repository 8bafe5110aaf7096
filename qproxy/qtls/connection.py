"""`QTLSConnection`: one TLS connection over a blocking socket, with the seed's methods.

State is data: `ConnectionState` and the table of allowed transitions; every method checks the
state it needs, so "read before connect" or "write after shutdown" is a `QTLSStateError`, never
an OpenSSL error. One connection belongs to one thread at a time (as the seed says).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from types import TracebackType

from cryptography import x509
from OpenSSL import SSL

from ..tls import openssl_ext
from ..tls.certinfo import describe_key
from ..tls.policy import canonical_group, is_post_quantum, sigalg_for_key
from .constants import Mode
from .context import QTLSContext
from .errors import (
    QTLSConnectionClosed, QTLSException, QTLSHandshakeError, QTLSStateError, QTLSTimeout,
    QTLSUsageError, QTLSVerificationError,
)


class ConnectionState(Enum):
    NEW = "new"
    ESTABLISHED = "established"
    PEER_CLOSED = "peer closed"
    """The peer sent close_notify: reads return b"", writes still possible."""
    CLOSED = "closed"
    FAILED = "failed"


_TRANSITIONS: dict[ConnectionState, frozenset[ConnectionState]] = {
    ConnectionState.NEW: frozenset({ConnectionState.ESTABLISHED, ConnectionState.FAILED,
                                    ConnectionState.CLOSED}),
    ConnectionState.ESTABLISHED: frozenset({ConnectionState.PEER_CLOSED, ConnectionState.CLOSED,
                                            ConnectionState.FAILED}),
    ConnectionState.PEER_CLOSED: frozenset({ConnectionState.CLOSED, ConnectionState.FAILED}),
    ConnectionState.FAILED: frozenset({ConnectionState.CLOSED}),
    ConnectionState.CLOSED: frozenset(),
}

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
_WANT_IO = (SSL.WantReadError, SSL.WantWriteError)
_TIMEOUT_ERRNOS = {errno.EAGAIN, errno.EWOULDBLOCK, errno.ETIMEDOUT}


def _syscall_errno(exc: SSL.SysCallError) -> int | None:
    return exc.args[0] if exc.args and isinstance(exc.args[0], int) else None


def handshake_error(conn: SSL.Connection, exc: SSL.Error, verify_mode: int) -> QTLSException:
    """The QTLSException for a failed handshake: timeout, peer gone, certificate, or alert."""
    if isinstance(exc, _WANT_IO):
        return QTLSTimeout("the TLS handshake timed out")
    if isinstance(exc, SSL.SysCallError) and _syscall_errno(exc) in _TIMEOUT_ERRNOS:
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


def prepare_client(conn: SSL.Connection, server_hostname: str | None, check_hostname: bool,
                   session: SSL.Session | None) -> None:
    """SNI (not for IP literals), host-name verification, a session to resume; connect state."""
    if server_hostname:
        if not _is_ip_literal(server_hostname):
            conn.set_tlsext_host_name(server_hostname.encode("idna"))
        if check_hostname:
            openssl_ext.set_verify_host(conn, server_hostname)
    if session is not None:
        conn.set_session(session)
    conn.set_connect_state()


class NegotiatedProperties:
    """What a handshake settled, for sync and asyncio connections alike."""

    def _established(self, call: str) -> SSL.Connection:
        raise NotImplementedError

    def verify_peer_certificate(self) -> bool:
        """Whether the peer presented a certificate whose chain (and, for a client given a
        host name, whose name) verified against the context's trust anchors."""
        conn = self._established("verify_peer_certificate()")
        return conn.get_peer_certificate() is not None and openssl_ext.verify_result(conn) == 0

    @property
    def verify_result(self) -> tuple[int, str]:
        conn = self._established("verify_result")
        code = openssl_ext.verify_result(conn)
        return code, openssl_ext.verify_result_string(code)

    @property
    def negotiated_group(self) -> str | None:
        """The key-exchange group, e.g. 'X25519MLKEM768' or 'X25519'."""
        conn = self._established("negotiated_group")
        return canonical_group(openssl_ext.negotiated_group(conn))

    @property
    def is_post_quantum(self) -> bool:
        return is_post_quantum(self.negotiated_group)

    @property
    def cipher(self) -> str | None:
        conn = self._established("cipher")
        return conn.get_cipher_name()

    @property
    def protocol_version(self) -> str:
        conn = self._established("protocol_version")
        return conn.get_protocol_version_name()

    @property
    def peer_certificate(self) -> x509.Certificate | None:
        conn = self._established("peer_certificate")
        cert = conn.get_peer_certificate()
        return cert.to_cryptography() if cert is not None else None

    @property
    def peer_certificate_chain(self) -> list[x509.Certificate]:
        """The chain the peer sent, leaf first (a server's leaf is included either way)."""
        conn = self._established("peer_certificate_chain")
        chain = conn.get_peer_cert_chain(as_cryptography=True) or []
        leaf = self.peer_certificate
        if leaf is not None and (not chain or chain[0] != leaf):
            chain = [leaf, *chain]
        return list(chain)

    @property
    def peer_certificate_keys(self) -> list[str]:
        """The key kind of each certificate the peer sent, leaf first: 'ML-DSA-65',
        'ECDSA P-384', 'RSA-3072', ... (what a device checks to know the chain is PQ)."""
        return [describe_key(cert.public_key()) for cert in self.peer_certificate_chain]

    @property
    def peer_signature_algorithm(self) -> str | None:
        """The TLS 1.3 signature scheme of the peer's CertificateVerify, e.g. 'mldsa65'.

        Derived from the peer's key: in TLS 1.3 a key signs with exactly one scheme (RSA keys
        with RSA-PSS; the SHA-256 variant is reported)."""
        leaf = self.peer_certificate
        if leaf is None:
            return None
        return sigalg_for_key(describe_key(leaf.public_key()), self.protocol_version)

    @property
    def alpn_protocol(self) -> str | None:
        conn = self._established("alpn_protocol")
        chosen = conn.get_alpn_proto_negotiated()
        return chosen.decode("ascii") if chosen else None

    @property
    def session_resumed(self) -> bool:
        conn = self._established("session_resumed")
        return openssl_ext.session_reused(conn)


class QTLSConnection(NegotiatedProperties):
    """A TLS connection on `sock` (a connected stream socket), client or server by context."""

    def __init__(self, ctx: QTLSContext, sock: socket.socket | None = None, *,
                 server_hostname: str | None = None, check_hostname: bool = True,
                 session: SSL.Session | None = None) -> None:
        if not isinstance(ctx, QTLSContext):
            raise QTLSUsageError(f"ctx must be a QTLSContext, not {type(ctx).__name__}")
        self.context = ctx
        self._sock = sock
        if sock is not None and sock.fileno() >= 0 and sock.gettimeout() is not None:
            # A timeout becomes the kernel's; a non-blocking socket (timeout 0) becomes a
            # blocking one, which is what this API is.
            set_socket_timeout(sock, sock.gettimeout() or None)
        self._state = ConnectionState.NEW
        self._conn: SSL.Connection | None = None
        self.server_hostname = server_hostname
        self.check_hostname = check_hostname
        # OpenSSL must never see one SSL object from two threads at once: a second thread
        # gets a QTLSStateError instead of corrupted state (shutdown() is the exception).
        self._busy = threading.Lock()
        self._session = session

    # -- state -----------------------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        return self._state

    def _set_state(self, new: ConnectionState) -> None:
        if new is self._state:
            return
        if new not in _TRANSITIONS[self._state]:
            raise QTLSStateError(f"connection cannot go from {self._state.value} to {new.value}")
        self._state = new

    def _require(self, *states: ConnectionState, call: str) -> SSL.Connection:
        if self._state not in states:
            if self._state is ConnectionState.NEW:
                hint = "call connect() (client) or accept() (server) first"
            elif self._state is ConnectionState.CLOSED:
                raise QTLSConnectionClosed(f"{call}: the connection is closed")
            else:
                hint = "the connection failed earlier; open a new one"
            raise QTLSStateError(f"{call} is not possible in state '{self._state.value}': {hint}")
        assert self._conn is not None
        return self._conn

    @contextmanager
    def _exclusive(self, call: str) -> Iterator[None]:
        if not self._busy.acquire(blocking=False):
            raise QTLSStateError(f"{call}: another thread is using this connection; use one "
                                 "connection per thread or synchronise the calls")
        try:
            yield
        finally:
            self._busy.release()

    # -- handshake -------------------------------------------------------------------------

    def connect(self) -> None:
        """Client handshake. Raises QTLSHandshakeError / QTLSVerificationError on failure."""
        self.context.require_mode(Mode.CLIENT, "connect()")
        self._handshake()

    def accept(self) -> None:
        """Server handshake on an accepted socket."""
        self.context.require_mode(Mode.SERVER, "accept()")
        self._handshake()

    def _handshake(self) -> None:
        with self._exclusive("the handshake"):
            self._handshake_exclusive()

    def _handshake_exclusive(self) -> None:
        if self._state is not ConnectionState.NEW:
            raise QTLSStateError(f"the handshake was already done (state '{self._state.value}')")
        if self._sock is None:
            raise QTLSStateError("no socket: pass a connected socket to QTLSConnection(ctx, sock)")
        if self._sock.fileno() < 0:
            self._set_state(ConnectionState.CLOSED)
            raise QTLSConnectionClosed("the socket is closed")
        conn = SSL.Connection(self.context.ssl_context, self._sock)
        self._conn = conn
        if self.context.mode is Mode.CLIENT:
            prepare_client(conn, self.server_hostname, self.check_hostname, self._session)
        else:
            conn.set_accept_state()
        try:
            conn.do_handshake()
        except SSL.Error as exc:
            self._fail()
            raise handshake_error(conn, exc, self.context.verify_mode) from None
        except (socket.timeout, TimeoutError):
            self._fail()
            raise QTLSTimeout("the TLS handshake timed out") from None
        except OSError as exc:
            self._fail()
            raise QTLSConnectionClosed(f"the socket failed during the handshake: {exc}") from None
        self._set_state(ConnectionState.ESTABLISHED)

    def _fail(self) -> None:
        self._set_state(ConnectionState.FAILED)
        self._close_socket()

    def set_timeout(self, seconds: float | None) -> None:
        """Bound each later read, write and handshake step (None: wait forever)."""
        if self._sock is not None and self._state is not ConnectionState.CLOSED:
            set_socket_timeout(self._sock, seconds)

    # -- data ------------------------------------------------------------------------------

    def read(self, num: int = 4096) -> bytes:
        """Up to `num` bytes of application data; b"" once the peer has closed cleanly."""
        if num <= 0:
            raise QTLSUsageError("num must be positive")
        with self._exclusive("read()"):
            return self._read(num)

    def _read(self, num: int) -> bytes:
        conn = self._require(ConnectionState.ESTABLISHED, ConnectionState.PEER_CLOSED,
                             call="read()")
        if self._state is ConnectionState.PEER_CLOSED:
            return b""
        try:
            return conn.recv(num)
        except SSL.ZeroReturnError:
            self._set_state(ConnectionState.PEER_CLOSED)
            return b""
        except _WANT_IO:
            self._fail()
            raise QTLSTimeout("read() timed out; the connection is closed") from None
        except SSL.SysCallError as exc:
            self._fail()
            if _syscall_errno(exc) in _TIMEOUT_ERRNOS:
                raise QTLSTimeout("read() timed out; the connection is closed") from None
            raise QTLSConnectionClosed(f"the peer closed the connection without close_notify "
                                       f"({exc.args[1] if len(exc.args) > 1 else exc})") from None
        except SSL.Error as exc:
            self._fail()
            reasons = openssl_reasons(exc)
            alert = alert_of(reasons)
            reason = "; ".join(reasons) or str(exc)
            if alert is not None:
                # In TLS 1.3 a server refuses a client certificate after the client's side of
                # the handshake is done: the alert arrives with the first read.
                raise QTLSHandshakeError(f"the peer ended the connection with alert '{alert}'",
                                         alert=alert, reason=reason) from None
            raise QTLSException(f"TLS error while reading: {reason}") from None
        except (socket.timeout, TimeoutError):
            self._fail()
            raise QTLSTimeout("read() timed out") from None
        except OSError as exc:
            self._fail()
            raise QTLSConnectionClosed(f"read() failed: {exc}") from None

    def write(self, data: bytes) -> int:
        """Send all of `data`; returns its length."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise QTLSUsageError(f"write() takes bytes, not {type(data).__name__} (encode text "
                                 "first, e.g. text.encode('utf-8'))")
        with self._exclusive("write()"):
            return self._write(memoryview(data))

    def _write(self, view: memoryview) -> int:
        conn = self._require(ConnectionState.ESTABLISHED, ConnectionState.PEER_CLOSED,
                             call="write()")
        try:
            conn.sendall(view)
        except _WANT_IO:
            self._fail()
            raise QTLSTimeout("write() timed out; the connection is closed") from None
        except SSL.Error as exc:
            self._fail()
            raise QTLSConnectionClosed(f"write() failed, the connection is closed: {exc}") from None
        except (socket.timeout, TimeoutError):
            self._fail()
            raise QTLSTimeout("write() timed out") from None
        except OSError as exc:
            self._fail()
            raise QTLSConnectionClosed(f"write() failed: {exc}") from None
        return len(view)

    def shutdown(self) -> None:
        """Send close_notify (best effort) and close the socket. Safe to call twice, and from
        another thread to interrupt a blocked read()."""
        if not self._busy.acquire(blocking=False):
            # Another thread is blocked in read() or write(): cut the socket under it, so that
            # it returns (with QTLSConnectionClosed), then finish here.
            if self._sock is not None:
                try:
                    self._sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            if not self._busy.acquire(timeout=10):
                raise QTLSStateError("shutdown(): another thread does not let go of this "
                                     "connection")
        try:
            self._shutdown_exclusive()
        finally:
            self._busy.release()

    def _shutdown_exclusive(self) -> None:
        if self._state is ConnectionState.CLOSED:
            return
        if self._conn is not None and self._state in (ConnectionState.ESTABLISHED,
                                                      ConnectionState.PEER_CLOSED):
            self._session = self._conn.get_session() or self._session
            try:
                self._conn.shutdown()
            except (SSL.Error, OSError):
                pass  # the peer may already be gone; closing is all that is left to do
        self._close_socket()
        self._set_state(ConnectionState.CLOSED)

    close = shutdown

    def _close_socket(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass

    def __enter__(self) -> QTLSConnection:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.shutdown()

    def _established(self, call: str) -> SSL.Connection:
        return self._require(ConnectionState.ESTABLISHED, ConnectionState.PEER_CLOSED, call=call)

    @property
    def session(self) -> SSL.Session | None:
        """The session to resume with on a later connection (client)."""
        if self._conn is not None and self._state in (ConnectionState.ESTABLISHED,
                                                      ConnectionState.PEER_CLOSED):
            return self._conn.get_session() or self._session
        return self._session

    @property
    def socket(self) -> socket.socket | None:
        return self._sock


def _is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
