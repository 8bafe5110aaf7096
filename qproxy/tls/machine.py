"""The server side of one TLS connection as a state machine with no I/O.

Ciphertext goes in with `receive()`, events come out (`HandshakeComplete`, `DataReceived`,
`PeerClosed`), and whatever OpenSSL wants sent is collected with `data_to_send()`. OpenSSL
does all the TLS: this class only pumps its memory BIOs and names what happened.
"""

from __future__ import annotations

import enum
import sys
from dataclasses import dataclass

from cryptography import x509
from OpenSSL import SSL

from . import openssl_ext
from .policy import canonical_group

# TLS alert descriptions (RFC 8446 section 6), for logs and metrics labels.
ALERT_NAMES = {
    0: "close_notify", 10: "unexpected_message", 20: "bad_record_mac", 22: "record_overflow",
    40: "handshake_failure", 42: "bad_certificate", 43: "unsupported_certificate",
    44: "certificate_revoked", 45: "certificate_expired", 46: "certificate_unknown",
    47: "illegal_parameter", 48: "unknown_ca", 49: "access_denied", 50: "decode_error",
    51: "decrypt_error", 70: "protocol_version", 71: "insufficient_security",
    80: "internal_error", 86: "inappropriate_fallback", 90: "user_canceled",
    109: "missing_extension", 110: "unsupported_extension", 112: "unrecognized_name",
    113: "bad_certificate_status_response", 115: "unknown_psk_identity",
    116: "certificate_required", 120: "no_application_protocol",
}


class TlsState(enum.Enum):
    HANDSHAKING = "handshaking"
    OPEN = "open"
    # The peer sent close_notify and will send nothing more, but it still reads: what we
    # owe it (the response to the request in hand) can go, then our close_notify (a TLS 1.3
    # half-close, RFC 8446 section 6.1).
    PEER_CLOSED = "peer closed"
    # Our close_notify is queued but the peer's has not come: it may still send (a TCP-mode
    # upstream half-closed its side, the client's side goes on; RFC 8446 section 6.1).
    WRITE_CLOSED = "write closed"
    CLOSED = "closed"  # our close_notify queued: nothing more is sent or read
    FAILED = "failed"


_TRANSITIONS = {
    TlsState.HANDSHAKING: {TlsState.OPEN, TlsState.FAILED, TlsState.CLOSED},
    TlsState.OPEN: {TlsState.PEER_CLOSED, TlsState.WRITE_CLOSED, TlsState.CLOSED,
                    TlsState.FAILED},
    TlsState.WRITE_CLOSED: {TlsState.CLOSED, TlsState.FAILED},
    TlsState.PEER_CLOSED: {TlsState.CLOSED, TlsState.FAILED},
    TlsState.CLOSED: {TlsState.CLOSED, TlsState.FAILED},
    TlsState.FAILED: set(),
}
# States in which nothing more is read.
_DEAF = frozenset({TlsState.PEER_CLOSED, TlsState.CLOSED, TlsState.FAILED})
# States in which application data may still be sent.
CAN_SEND = frozenset({TlsState.OPEN, TlsState.PEER_CLOSED})


@dataclass(frozen=True, slots=True)
class HandshakeInfo:
    version: str
    cipher: str
    group: str | None
    alpn: str | None
    resumed: bool
    server_name: str | None
    own_cert_der: bytes | None
    peer_cert: x509.Certificate | None
    peer_verified: bool


@dataclass(frozen=True)
class HandshakeComplete:
    info: HandshakeInfo


@dataclass(frozen=True)
class DataReceived:
    data: bytes


@dataclass(frozen=True)
class PeerClosed:
    """The peer sent close_notify."""


Event = HandshakeComplete | DataReceived | PeerClosed


class TlsFailure(Exception):
    """A fatal TLS error. `alert` is the alert OpenSSL sent (if any), `reason` its own words."""

    def __init__(self, reason: str, alert: str | None, during_handshake: bool) -> None:
        self.reason = reason
        self.alert = alert
        self.during_handshake = during_handshake
        super().__init__(f"{reason} (alert {alert})" if alert else reason)


def info_callback(connection: SSL.Connection, where: int, ret: int) -> None:
    """Context-wide OpenSSL info callback: records the alerts this end sends."""
    if where & SSL.SSL_CB_ALERT and where & SSL.SSL_CB_WRITE:
        machine = connection.get_app_data()
        if machine is not None:
            machine.alert_sent(ret & 0xFF)


def _reason(exc: SSL.Error) -> str:
    parts = exc.args[0] if exc.args else None
    if isinstance(parts, list) and parts:
        return "; ".join(p[2] or p[0] for p in parts if isinstance(p, tuple)) or str(exc)
    return str(exc) or exc.__class__.__name__


class TlsServerMachine:
    __slots__ = ("_conn", "_state", "last_alert", "info", "_renew_bios")

    def __init__(self, context: SSL.Context) -> None:
        self._conn = SSL.Connection(context, None)
        self._conn.set_accept_state()
        self._conn.set_app_data(self)
        self._state = TlsState.HANDSHAKING
        self.last_alert: str | None = None
        self.info: HandshakeInfo | None = None
        self._renew_bios = True

    @property
    def state(self) -> TlsState:
        return self._state

    def _set_state(self, new: TlsState) -> None:
        if new not in _TRANSITIONS[self._state]:
            raise RuntimeError(f"TLS state {self._state.value} -> {new.value} is not allowed")
        self._state = new

    def alert_sent(self, code: int) -> None:
        self.last_alert = ALERT_NAMES.get(code, f"alert_{code}")

    def _fail(self, exc: SSL.Error | str) -> TlsFailure:
        during = self._state is TlsState.HANDSHAKING
        self._set_state(TlsState.FAILED)
        reason = exc if isinstance(exc, str) else _reason(exc)
        return TlsFailure(reason, self.last_alert, during)

    def receive(self, data: bytes) -> list[Event]:
        """Feed ciphertext from the peer; returns what it amounted to.

        Raises TlsFailure on a fatal error; the alert (if OpenSSL made one) is then waiting in
        `data_to_send()`.
        """
        if self._state in _DEAF:
            # Nothing can follow a close_notify: bytes the peer sends after its own (or after
            # ours) are dropped, not kept in the input BIO while the answer is still going out.
            return []
        if data:
            openssl_ext.feed_ciphertext(self._conn, data)
        events: list[Event] = []
        if self._state is TlsState.HANDSHAKING:
            try:
                self._conn.do_handshake()
            except SSL.WantReadError:
                return events
            except SSL.Error as exc:
                raise self._fail(exc) from None
            self._set_state(TlsState.OPEN)
            self.info = self._describe()
            events.append(HandshakeComplete(self.info))
        if self._state in (TlsState.OPEN, TlsState.WRITE_CLOSED):
            self._read_plaintext(events)
        return events

    def _read_plaintext(self, events: list[Event]) -> None:
        try:
            data, closed = openssl_ext.read_plaintext(self._conn)
        except SSL.Error as exc:
            raise self._fail(exc) from None
        if data:
            events.append(DataReceived(data))
        if closed:
            self._set_state(TlsState.CLOSED if self._state is TlsState.WRITE_CLOSED
                            else TlsState.PEER_CLOSED)
            events.append(PeerClosed())

    def send(self, plaintext: bytes) -> None:
        """Encrypt application data; the records wait in `data_to_send()`."""
        if self._state not in CAN_SEND:
            raise RuntimeError(f"cannot send application data in TLS state {self._state.value}")
        try:
            openssl_ext.write_plaintext(self._conn, plaintext)
        except SSL.Error as exc:
            raise self._fail(exc) from None

    def close_write(self) -> None:
        """Queue close_notify and go on reading: the half-close a byte relay passes on when
        its upstream ends its side first. After the peer's close_notify it is a full close."""
        if self._state is TlsState.OPEN:
            try:
                self._conn.shutdown()
            except SSL.Error:
                pass
            self._set_state(TlsState.WRITE_CLOSED)
        else:
            self.close()

    def close(self) -> None:
        """Queue close_notify (also after the peer's: that is what answers it)."""
        if self._state is TlsState.WRITE_CLOSED:
            self._set_state(TlsState.CLOSED)  # ours went already
        elif self._state in (TlsState.OPEN, TlsState.HANDSHAKING, TlsState.PEER_CLOSED):
            try:
                self._conn.shutdown()
            except SSL.Error:
                pass
            self._set_state(TlsState.CLOSED)

    def release(self) -> None:
        """The connection is gone: drop the SSL object's reference back to us (set for the
        info callback), so both are freed by reference counting."""
        self._conn.set_app_data(None)

    def data_to_send(self) -> bytes:
        out = openssl_ext.take_output(self._conn)
        if self._renew_bios and self._state is not TlsState.HANDSHAKING:
            # The handshake's flights (and the session tickets) have just left: drop the
            # buffers they grew, which an idle connection would otherwise keep.
            self._renew_bios = False
            openssl_ext.renew_memory_bios(self._conn)
        return out

    def _describe(self) -> HandshakeInfo:
        conn = self._conn
        alpn = conn.get_alpn_proto_negotiated()
        name = conn.get_servername()
        peer = conn.get_peer_certificate()
        return HandshakeInfo(
            # Interned: a handful of distinct values, held by every open connection.
            version=sys.intern(conn.get_protocol_version_name()),
            cipher=sys.intern(conn.get_cipher_name() or ""),
            group=canonical_group(openssl_ext.negotiated_group(conn)),
            alpn=alpn.decode() if alpn else None,
            resumed=openssl_ext.session_reused(conn),
            server_name=name.decode("ascii", "replace") if name else None,
            own_cert_der=openssl_ext.own_certificate_der(conn),
            peer_cert=peer.to_cryptography() if peer is not None else None,
            peer_verified=peer is not None and openssl_ext.verify_result(conn) == 0,
        )
