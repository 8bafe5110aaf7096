"""`QTLSClient`: connect by host name, with SNI, host-name verification and resumption."""

from __future__ import annotations

import socket
from types import TracebackType

from OpenSSL import SSL
from cryptography import x509

from .constants import Mode
from .context import QTLSContext
from .connection import QTLSConnection
from .failures import set_socket_timeout
from .errors import QTLSConnectionClosed, QTLSStateError, QTLSTimeout


class QTLSClient:
    """One connection at a time to a server; a later `connect()` to the same host and port
    offers the previous session for resumption (no second full PQ handshake)."""

    def __init__(self, ctx: QTLSContext, *, timeout: float | None = 30.0,
                 verify_hostname: bool = True) -> None:
        ctx.require_mode(Mode.CLIENT, "QTLSClient")
        self.context = ctx
        self.timeout = timeout
        self.verify_hostname = verify_hostname
        self._connection: QTLSConnection | None = None
        self._key: tuple[str, int] | None = None
        """(server name, port) of `_connection`: where its session may be resumed."""
        self._sessions: dict[tuple[str, int], SSL.Session] = {}

    def connect(self, host: str, port: int = 8443, *, server_hostname: str | None = None,
                source_address: tuple[str, int] | None = None) -> QTLSConnection:
        """TCP connect and handshake. `server_hostname` (default: `host`) is sent as SNI and,
        with verify_hostname, must be covered by the server's certificate."""
        if self._connection is not None:
            self.shutdown()
            self._connection = self._key = None
        try:
            sock = socket.create_connection((host, port), timeout=self.timeout,
                                            source_address=source_address)
        except (socket.timeout, TimeoutError):
            raise QTLSTimeout(f"connecting to {host}:{port} timed out") from None
        except OSError as exc:
            raise QTLSConnectionClosed(f"cannot connect to {host}:{port}: {exc.strerror or exc}"
                                       ) from None
        set_socket_timeout(sock, self.timeout)
        name = server_hostname or host
        conn = QTLSConnection(self.context, sock, server_hostname=name,
                              check_hostname=self.verify_hostname,
                              session=self._sessions.get((name, port)))
        conn.connect()
        self._connection, self._key = conn, (name, port)
        return conn

    @property
    def connection(self) -> QTLSConnection:
        if self._connection is None:
            raise QTLSStateError("not connected: call connect(host, port) first")
        return self._connection

    def read(self, num: int = 4096) -> bytes:
        return self.connection.read(num)

    def write(self, data: bytes) -> int:
        return self.connection.write(data)

    def verify_peer_certificate(self) -> bool:
        return self.connection.verify_peer_certificate()

    @property
    def peer_certificate(self) -> x509.Certificate | None:
        return self.connection.peer_certificate

    def _save_session(self) -> None:
        if self._connection is not None and self._key is not None:
            session = self._connection.session
            if session is not None:
                self._sessions[self._key] = session

    def shutdown(self) -> None:
        """Close the connection (close_notify); the session is kept for the next connect()."""
        if self._connection is not None:
            self._save_session()
            self._connection.shutdown()

    close = shutdown

    def __enter__(self) -> QTLSClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.shutdown()

