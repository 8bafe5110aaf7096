"""paho-mqtt over post-quantum TLS: a `paho.mqtt.client.Client` whose socket is a
`qproxy.qtls` connection (X25519MLKEM768 where the context asks for it).

Python's `ssl` module sits on the system OpenSSL 3.0, which has no ML-KEM, so paho's own
`tls_set()` cannot offer a post-quantum group. paho 2.1 reads and writes its connection only
through an object with the `SocketLike` shape (recv, send, close, fileno, setblocking, and
`pending` when it has one, to drain buffered TLS records without waiting in select). Its one
factory for that object is `Client._create_socket()`; `QTLSMqttClient` overrides that method
and nothing else, so connect, keep-alive, QoS, reconnect and the threaded loop stay paho's.

The handshake runs blocking (bounded by the connect timeout) inside `_create_socket`, with the
context's verification, SNI and host-name check, exactly as `QTLSClient.connect` does; after it
paho switches the socket to non-blocking and `QTLSSocket` turns OpenSSL's want-read/write into
the `BlockingIOError` paho expects.
"""

from __future__ import annotations

import socket
from typing import Any

from OpenSSL import SSL
from paho.mqtt import client as paho

from qproxy.qtls import QTLSContext, QTLSException
from qproxy.qtls.failures import handshake_error, openssl_reasons, set_socket_timeout
from qproxy.qtls.negotiated import NegotiatedProperties, prepare_client


class MqttTlsError(ConnectionError):
    """Connecting or the TLS handshake to the MQTT door failed; the message says why.

    A ConnectionError (an OSError) because that is what paho's reconnect loop catches and
    retries; `tls_error` is the qtls exception behind it, if the TLS layer said no."""

    def __init__(self, message: str, tls_error: QTLSException | None = None) -> None:
        super().__init__(message)
        self.tls_error = tls_error


class QTLSSocket(NegotiatedProperties):
    """paho's SocketLike over one established pyOpenSSL connection; also tells what the
    handshake negotiated (`negotiated_group`, `peer_certificate_keys`, ...)."""

    def __init__(self, conn: SSL.Connection, sock: socket.socket) -> None:
        self._conn = conn
        self._sock = sock

    @classmethod
    def connect(cls, ctx: QTLSContext, host: str, port: int, *, server_hostname: str | None,
                timeout: float) -> QTLSSocket:
        name = server_hostname or host
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise MqttTlsError(f"cannot connect to {host}:{port}: {exc.strerror or exc}"
                               ) from None
        set_socket_timeout(sock, timeout)
        conn = SSL.Connection(ctx.ssl_context, sock)
        prepare_client(conn, name, True, None)
        try:
            conn.do_handshake()
        except SSL.Error as exc:
            sock.close()
            error = handshake_error(conn, exc, ctx.verify_mode)
            raise MqttTlsError(f"TLS to {host}:{port} failed: {error}", error) from None
        except OSError as exc:
            sock.close()
            raise MqttTlsError(f"TLS to {host}:{port} failed: {exc}") from None
        return cls(conn, sock)

    def _established(self, call: str) -> SSL.Connection:
        return self._conn

    # -- paho's SocketLike -------------------------------------------------------------

    def recv(self, bufsize: int) -> bytes:
        try:
            return self._conn.recv(bufsize)
        except (SSL.WantReadError, SSL.WantWriteError):
            raise BlockingIOError() from None
        except SSL.ZeroReturnError:
            return b""  # close_notify: paho reads b"" as "connection lost"
        except SSL.SysCallError as exc:
            raise ConnectionResetError(f"the MQTT door closed the connection ({exc})") from None
        except SSL.Error as exc:
            raise ConnectionError("TLS error on the MQTT connection: "
                                  f"{'; '.join(openssl_reasons(exc)) or exc}") from None

    def send(self, buffer: bytes) -> int:
        try:
            return self._conn.send(buffer)
        except (SSL.WantReadError, SSL.WantWriteError):
            raise BlockingIOError() from None
        except SSL.SysCallError as exc:
            raise ConnectionResetError(f"the MQTT door closed the connection ({exc})") from None
        except SSL.Error as exc:
            raise ConnectionError("TLS error on the MQTT connection: "
                                  f"{'; '.join(openssl_reasons(exc)) or exc}") from None

    def pending(self) -> int:
        """Decrypted bytes OpenSSL holds that select() on the socket cannot see."""
        return self._conn.pending()

    def fileno(self) -> int:
        return self._sock.fileno()

    def setblocking(self, flag: bool) -> None:
        self._sock.setblocking(flag)

    def close(self) -> None:
        try:
            self._conn.shutdown()  # close_notify, best effort: the peer may be gone
        except (SSL.Error, OSError):
            pass
        self._sock.close()


class QTLSMqttClient(paho.Client):
    """`paho.mqtt.client.Client` whose connections are `qproxy.qtls` TLS connections made
    with `ctx` (a client-mode QTLSContext). Every other argument is paho's."""

    def __init__(self, ctx: QTLSContext, *, server_hostname: str | None = None,
                 **kwargs: Any) -> None:
        kwargs.setdefault("callback_api_version", paho.CallbackAPIVersion.VERSION2)
        super().__init__(**kwargs)
        self.qtls_context = ctx
        self.server_hostname = server_hostname
        self.tls_socket: QTLSSocket | None = None
        """The current connection, for what its handshake negotiated."""

    def _create_socket(self) -> QTLSSocket:  # paho's hook (see the module docstring)
        self.tls_socket = QTLSSocket.connect(
            self.qtls_context, self._host, self._port, server_hostname=self.server_hostname,
            timeout=self._connect_timeout)
        return self.tls_socket
