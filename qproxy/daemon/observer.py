"""Turns connection and request events into log lines and metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping


from ..policy.access import Denial, Reason
from ..proxy.handler import Exchange
from ..proxy.request import HttpRequest
from ..proxy.stream import End, StreamRecord
from ..tls import certinfo
from ..tls.context import ServerTls
from ..tls.machine import HandshakeInfo
from ..tls.policy import is_post_quantum, sigalg_for_key
from ..observability.metrics import Metrics

# Headers carrying the verified client identity to the backend (nginx's $ssl_client_* family).
IDENTITY_HEADERS = {
    "subject": "X-Client-Cert-Subject",
    "san": "X-Client-Cert-SAN",
    "fingerprint": "X-Client-Cert-Fingerprint-SHA256",
    "key": "X-Client-Cert-Key-Algorithm",
}


def client_identity(info: HandshakeInfo | None) -> Mapping[str, str] | None:
    if info is None or info.peer_cert is None or not info.peer_verified:
        return None
    cert = info.peer_cert
    return {
        IDENTITY_HEADERS["subject"]: certinfo.subject_string(cert),
        IDENTITY_HEADERS["san"]: ", ".join(certinfo.san_list(cert)),
        IDENTITY_HEADERS["fingerprint"]: certinfo.sha256_fingerprint(cert),
        IDENTITY_HEADERS["key"]: certinfo.describe_key(cert.public_key()),
    }


# Ends that are the upstream's failure (also logged with the access log off).
STREAM_FAILURES = frozenset({End.UPSTREAM_REFUSED, End.CONNECT_TIMEOUT, End.UPSTREAM_RESET})


def _reason_class(reason: str) -> str:
    """A bounded label for the failure metric (OpenSSL's reason strings are open-ended)."""
    text = reason.lower()
    for needle, label in (
        ("timed out", "timeout"), ("before sending anything", "unused"),
        ("during the handshake", "client_closed"),
        ("key share", "no_shared_group"), ("no shared", "no_shared_cipher"),
        ("version", "protocol_version"), ("certificate", "certificate"),
        ("application protocol", "alpn"), ("packet length", "not_tls"),
        ("record", "bad_record"), ("http request", "plain_http"),
    ):
        if needle in text:
            return label
    return "other"


# Handshake failures that are no fault of anyone's: a browser's unused pre-connection (closed
# before its first byte) and a client that went away mid-handshake. Counted, logged at debug.
QUIET_FAILURES = frozenset({"unused", "client_closed"})


def handshake_failure_level(reason_class: str, alert: str | None) -> str:
    """How loud a failed handshake is: clients that cannot or will not talk to us are the
    internet's normal noise (info, as nginx logs SSL_do_handshake failures); an internal_error
    is ours (an HSM that failed to sign, say)."""
    if reason_class in QUIET_FAILURES:
        return "debug"
    if alert == "internal_error":
        return "error"
    return "info"


@dataclass
class ConnectionCount:
    """Open client connections across configuration generations (for max_connections)."""

    open: int = 0
    on_closed: Callable[[], None] | None = None
    """Told when a connection closes (a worker at its limit accepts again)."""


class Observer:
    def __init__(self, metrics: Metrics, logger, access_logger, server_tls: ServerTls,
                 connections: ConnectionCount, access_log: bool = True,
                 listener: str = "default") -> None:
        self.listener = listener
        self.metrics = metrics
        self.log = logger
        self.access = access_logger
        self.server_tls = server_tls
        self.access_log = access_log
        self.connections = connections
        self._children: dict[tuple, Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, looked up once: labels() costs more than the update
        itself, and every label here takes few values (status codes, upstream and group names)."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # -- connections (ConnectionObserver) ------------------------------------------------
    def connection_opened(self) -> None:
        self.connections.open += 1
        self._child(self.metrics.connections, self.listener).inc()
        self._child(self.metrics.connections_open, self.listener).inc()

    def connection_closed(self) -> None:
        self.connections.open -= 1
        self._child(self.metrics.connections_open, self.listener).dec()
        if self.connections.on_closed is not None:
            self.connections.on_closed()

    def sigalg(self, info: HandshakeInfo) -> str | None:
        if info.resumed:
            return None  # a resumed handshake has no certificate signature
        kind = self.server_tls.key_kind_of(info.own_cert_der)
        return sigalg_for_key(kind, info.version) if kind else None

    def _key_source(self, info: HandshakeInfo) -> str | None:
        pair = None if info.resumed else self.server_tls.pair_of(info.own_cert_der)
        return pair.key_source if pair else None

    def handshake_done(self, peer: str, info: HandshakeInfo, seconds: float) -> None:
        sigalg = self.sigalg(info)
        group = info.group or "-"
        m = self.metrics
        self._child(m.handshakes, "ok", group, sigalg or "-", str(info.resumed).lower(),
                    self.listener).inc()
        key_source = self._key_source(info) or "none"
        self._child(m.handshake_seconds, group, sigalg or "-", key_source).observe(seconds)
        if not is_post_quantum(info.group):
            self._child(m.classical_fallbacks, group).inc()
            # Counted above (qtls_classical_fallbacks): one line per classical client at info
            # would be most of the log on a public port.
            self.log.debug("classical key exchange", client=peer, ssl_curve=group,
                           tls_version=info.version)

    def handshake_failed(self, peer: str, reason: str, alert: str | None, seconds: float) -> None:
        m = self.metrics
        reason_class = _reason_class(reason)
        self._child(m.handshakes, "failed", "-", "-", "false", self.listener).inc()
        self._child(m.handshake_failures, reason_class, alert or "none").inc()
        if alert:
            self._child(m.alerts_sent, alert).inc()
        if alert == "internal_error" and self.server_tls.uses_hsm:
            # With an HSM, an internal error is almost always the token failing to sign.
            m.hsm_errors.inc()
        level = handshake_failure_level(reason_class, alert)
        getattr(self.log, level)("handshake failed", listener=self.listener, client=peer,
                                 reason=reason, alert=alert,
                                 duration_ms=round(seconds * 1000, 2))

    def tls_error(self, peer: str, reason: str, alert: str | None) -> None:
        if alert:
            self._child(self.metrics.alerts_sent, alert).inc()
        # A client's garbage or broken record: its problem, one line at info (as nginx).
        self.log.info("TLS error on an established connection", listener=self.listener,
                      client=peer, reason=reason, alert=alert)

    def plain_http(self, peer: str) -> None:
        self._child(self.metrics.handshake_failures, "plain_http", "none").inc()
        self.log.info("plain HTTP request on the TLS port", listener=self.listener, client=peer,
                      status=400)

    def preface_refused(self, peer: str, reason: str, detail: str) -> None:
        self._child(self.metrics.proxy_protocol_rejected, reason).inc()
        self.log.warning("PROXY header refused", listener=self.listener, client=peer,
                         reason=reason, detail=detail)

    def request_timeout(self, peer: str, info: HandshakeInfo | None) -> None:
        self._child(self.metrics.requests, "408", "-").inc()
        self.log.info("request headers timed out", listener=self.listener, client=peer,
                      status=408)

    def refused(self, limit: str) -> None:
        self._child(self.metrics.connections_refused, limit).inc()

    def accept_paused(self, reason: str) -> None:
        self._child(self.metrics.accept_paused, reason).inc()

    # -- requests ------------------------------------------------------------------------
    def access_denied(self, request: HttpRequest, denial: Denial, scope: str) -> None:
        """One line per refusal (nginx's "access forbidden by rule", "limiting requests"),
        with what decided it; the request's access-log line carries the reason too."""
        self._denied(request.remote, denial, scope, method=request.method,
                     path=request.raw_path[:200])

    def connection_denied(self, client: str, denial: Denial) -> None:
        """A tcp listener's refusal: the connection is closed, nothing is answered."""
        self._denied(client, denial, "listener", status=None)

    def _denied(self, client: str, denial: Denial, scope: str, **fields: Any) -> None:
        m = self.metrics
        self._child(m.access_denied, denial.reason.label).inc()
        if denial.reason is Reason.RATE:
            m.rate_limited.inc()
        fields.setdefault("status", denial.reason.status)
        self.log.warning("access denied", client=client, listener=self.listener,
                         reason=denial.reason.label, scope=scope, detail=denial.detail,
                         **fields)

    def bad_request(self, client: str, status: int, reason: str) -> None:
        self._child(self.metrics.requests, str(status), "-").inc()
        self.log.info("bad request", listener=self.listener, client=client, status=status,
                      reason=reason[:200])

    def exchange_done(self, exchange: Exchange, info: HandshakeInfo | None) -> None:
        m = self.metrics
        status = str(exchange.status)
        self._child(m.requests, status, exchange.upstream).inc()
        if exchange.upstream_seconds is not None:
            self._child(m.upstream_seconds, exchange.upstream).observe(exchange.upstream_seconds)
        if exchange.bytes_in:
            self._child(m.request_bytes, exchange.upstream).inc(exchange.bytes_in)
        if exchange.bytes_out:
            self._child(m.response_bytes, exchange.upstream).inc(exchange.bytes_out)
        if exchange.error_kind:
            self._child(m.upstream_errors, exchange.upstream, exchange.error_kind).inc()
        if not self.access_log:
            if exchange.error:
                # Like nginx's error_log: failures are logged even with the access log off.
                # A backend's failure is the operator's to look at; a client's is not.
                level = ("warning" if exchange.error_kind else
                         "debug" if exchange.status == 499 else "info")
                getattr(self.log, level)("request failed", client=exchange.request.remote,
                                 method=exchange.request.method, path=exchange.request.raw_path,
                                 status=exchange.status, upstream=exchange.upstream,
                                 upstream_addr=exchange.server, error=exchange.error)
            return
        request = exchange.request
        fields = {
            "client": request.remote,
            "method": request.method,
            "path": request.raw_path,
            "host": request.headers.get("Host"),
            "status": exchange.status,
            "bytes_sent": exchange.bytes_out,
            "bytes_received": exchange.bytes_in,
            "request_time_ms": round((time.monotonic() - exchange.started) * 1000, 2),
            "upstream": exchange.upstream,
            "upstream_addr": exchange.server,
            "upstream_time_ms": (round(exchange.upstream_seconds * 1000, 2)
                                 if exchange.upstream_seconds is not None else None),
        }
        if info is not None:
            fields.update(
                tls_version=info.version,
                ssl_curve=info.group,
                ssl_sigalg=self.sigalg(info),
                ssl_key_source=self._key_source(info),
                ssl_cipher=info.cipher,
                ssl_session_reused=info.resumed,
                ssl_server_name=info.server_name,
                ssl_client_subject=(certinfo.subject_string(info.peer_cert)
                                    if info.peer_cert is not None else None),
            )
        if exchange.error:
            fields["error"] = exchange.error
        if exchange.denied:
            fields["access_denied"] = exchange.denied
        self.access.info("request", **fields)

    # -- tcp mode ------------------------------------------------------------------------
    def stream_done(self, record: StreamRecord, upstream: str | None = None) -> None:
        """One line per tcp-mode session (nginx's stream access log), and its metrics.
        `upstream`: the name of the listener's upstream (record.server is the address)."""
        m = self.metrics
        self._child(m.stream_sessions, self.listener, record.end.value).inc()
        if record.bytes_up:
            self._child(m.stream_bytes, self.listener, "up").inc(record.bytes_up)
        if record.bytes_down:
            self._child(m.stream_bytes, self.listener, "down").inc(record.bytes_down)
        failed = record.end in STREAM_FAILURES
        if not self.access_log and not failed:
            return
        info: HandshakeInfo | None = record.tls
        fields: dict[str, Any] = {
            "listener": self.listener,
            "client": record.client,
            "upstream": upstream,
            "upstream_addr": record.server,
            "bytes_sent": record.bytes_down,
            "bytes_received": record.bytes_up,
            "session_time_ms": round(record.seconds * 1000, 2),
            "end": record.end.value,
        }
        if info is not None:
            fields.update(
                tls_version=info.version, ssl_curve=info.group, ssl_sigalg=self.sigalg(info),
                ssl_session_reused=info.resumed, ssl_server_name=info.server_name,
                ssl_client_subject=(certinfo.subject_string(info.peer_cert)
                                    if info.peer_cert is not None and info.peer_verified
                                    else None))
        if record.error:
            fields["error"] = record.error[:300]
        if self.access_log:
            self.access.info("session", **fields)
        else:  # like nginx's error_log: failures are logged even with the access log off
            self.log.warning("session failed", **fields)
