"""`QTLSServer`: a listening socket whose accepted connections have done the TLS handshake."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from types import TracebackType

from .constants import Mode
from .context import QTLSContext
from .connection import QTLSConnection
from .failures import set_socket_timeout
from .errors import QTLSConfigError, QTLSConnectionClosed, QTLSException, QTLSStateError

log = logging.getLogger("qproxy.qtls.server")


class QTLSServer:
    """Listen on (host, port); `accept_connections()` yields established connections.

    A client whose handshake fails costs one log line, never the server. `port=0` picks a free
    port (see `.port`)."""

    def __init__(self, ctx: QTLSContext, host: str = "0.0.0.0", port: int = 8443, *,
                 backlog: int = 128, handshake_timeout: float | None = 10.0,
                 io_timeout: float | None = None) -> None:
        ctx.require_mode(Mode.SERVER, "QTLSServer")
        self.context = ctx
        self.handshake_timeout = handshake_timeout
        self.io_timeout = io_timeout
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind((host, port))
            self._listener.listen(backlog)
        except OSError as exc:
            self._listener.close()
            raise QTLSConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self._closed = threading.Event()
        self.host, self.port = self._listener.getsockname()[:2]

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def accept(self) -> QTLSConnection:
        """The next client with its handshake done; handshake errors are raised to the caller."""
        sock, _peer = self._next_socket()
        return self._handshake(sock)

    def _next_socket(self) -> tuple[socket.socket, str]:
        if self.closed:
            raise QTLSStateError("the server is closed")
        try:
            sock, address = self._listener.accept()
        except OSError as exc:
            if self.closed:
                raise QTLSConnectionClosed("the server is closed") from None
            raise QTLSConnectionClosed(f"accept() failed: {exc}") from None
        return sock, f"{address[0]}:{address[1]}"

    def _handshake(self, sock: socket.socket) -> QTLSConnection:
        set_socket_timeout(sock, self.handshake_timeout)
        conn = QTLSConnection(self.context, sock)
        conn.accept()
        conn.set_timeout(self.io_timeout)
        return conn

    def accept_connections(self) -> Iterator[QTLSConnection]:
        """Established connections, one at a time, until `close()`. A client whose handshake
        fails is logged (one line, on the `qproxy.qtls.server` logger) and skipped."""
        while True:
            try:
                sock, peer = self._next_socket()
            except (QTLSConnectionClosed, QTLSStateError) as exc:
                if self.closed:
                    return
                # Out of file descriptors and the like: the listener is fine, the moment is
                # not. Wait a little (or until close()) and go on serving.
                log.warning("qtls accept failed: %s", exc)
                self._closed.wait(0.1)
                continue
            try:
                conn = self._handshake(sock)
            except QTLSException as exc:
                log.info("qtls handshake with %s failed (%s): %s", peer,
                         type(exc).__name__, exc)
                continue
            yield conn

    def close(self) -> None:
        """Stop listening; a thread blocked in accept_connections() returns."""
        if self._closed.is_set():
            return
        self._closed.set()
        try:
            # Wakes a thread blocked in accept(); close() alone does not on Linux.
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()

    def __enter__(self) -> QTLSServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
