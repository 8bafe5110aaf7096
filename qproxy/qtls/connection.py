"""`QTLSConnection`: one TLS connection over a blocking socket, with the seed's methods.

State is data: `ConnectionState` and the table of allowed transitions; every method checks the
state it needs, so "read before connect" or "write after shutdown" is a `QTLSStateError`, never
an OpenSSL error. One connection belongs to one thread at a time (as the seed says).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from types import TracebackType

from OpenSSL import SSL

from .constants import Mode
from .context import QTLSContext
from .errors import (
    QTLSConnectionClosed, QTLSException, QTLSHandshakeError, QTLSStateError, QTLSTimeout,
    QTLSUsageError,
)
from .failures import (
    TIMEOUT_ERRNOS, WANT_IO, alert_of, handshake_error, openssl_reasons, set_socket_timeout,
    syscall_errno,
)
from .negotiated import NegotiatedProperties, prepare_client


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
        except WANT_IO:
            self._fail()
            raise QTLSTimeout("read() timed out; the connection is closed") from None
        except SSL.SysCallError as exc:
            self._fail()
            if syscall_errno(exc) in TIMEOUT_ERRNOS:
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
        except WANT_IO:
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
