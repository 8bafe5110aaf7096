"""Prometheus metrics, held in one object that is passed to whoever counts.

Label names follow what operators already know: Envoy counts `ssl.curves.<group>` and
`ssl.sigalgs.<sigalg>`, nginx logs `$ssl_curve` / `$ssl_sigalg`.
"""

from __future__ import annotations

import glob
import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess
from prometheus_client import CONTENT_TYPE_LATEST, disable_created_metrics

# The *_created series double the output and no dashboard reads them.
disable_created_metrics()

HANDSHAKE_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.handshakes = Counter(
            "qtls_handshakes", "TLS handshakes by outcome, group and signature algorithm",
            ["result", "group", "sigalg", "resumed", "listener"], registry=r)
        self.handshake_seconds = Histogram(
            "qtls_handshake_duration_seconds", "Time from first byte to handshake completion",
            ["group", "sigalg", "key_source"], buckets=HANDSHAKE_BUCKETS, registry=r)
        self.handshake_failures = Counter(
            "qtls_handshake_failures", "Failed handshakes by reason class and alert sent",
            ["reason", "alert"], registry=r)
        self.proxy_protocol_rejected = Counter(
            "qtls_proxy_protocol_rejected",
            "Connections closed for their PROXY header (server.proxy_protocol) by reason",
            ["reason"], registry=r)
        self.classical_fallbacks = Counter(
            "qtls_classical_fallbacks",
            "Handshakes that ended with a classical (not post-quantum) group", ["group"], registry=r)
        self.alerts_sent = Counter("qtls_alerts_sent", "TLS alerts sent", ["alert"], registry=r)
        # `listener`: a configured listener's name ("default" for the top-level one), so a
        # handful of values.
        self.connections_open = Gauge("qtls_connections_open", "Open client connections",
                                      ["listener"], registry=r, multiprocess_mode="livesum")
        self.connections = Counter("qtls_connections", "Client connections accepted",
                                   ["listener"], registry=r)
        self.stream_sessions = Counter(
            "qtls_stream_sessions", "TCP-mode sessions by listener and how they ended",
            ["listener", "end"], registry=r)
        self.stream_bytes = Counter(
            "qtls_stream_bytes", "TCP-mode bytes relayed (direction up: client to upstream)",
            ["listener", "direction"], registry=r)
        self.connections_refused = Counter(
            "qtls_connections_refused", "Connections refused by limits", ["limit"], registry=r)
        self.access_denied = Counter(
            "qtls_access_denied", "Requests refused by access control: ip, client_cert (403), "
            "rate (429), connection_cap (503)", ["reason"], registry=r)
        self.rate_limited = Counter(
            "qtls_rate_limited", "Requests refused by a rate limit (429)", registry=r)
        self.accept_paused = Counter(
            "qtls_accept_paused", "Times a worker stopped accepting: at its share of "
            "max_connections (reason max_connections) or out of descriptors (the OS error)",
            ["reason"], registry=r)
        self.requests = Counter("qtls_http_requests", "HTTP requests by status and upstream",
                                ["status", "upstream"], registry=r)
        self.upstream_seconds = Histogram(
            "qtls_upstream_response_seconds", "Time to the backend's response headers",
            ["upstream"], buckets=LATENCY_BUCKETS, registry=r)
        self.request_bytes = Counter("qtls_http_request_body_bytes", "Request body bytes proxied",
                                     ["upstream"], registry=r)
        self.response_bytes = Counter("qtls_http_response_body_bytes",
                                      "Response body bytes proxied", ["upstream"], registry=r)
        self.upstream_errors = Counter("qtls_upstream_errors", "Backend failures by kind",
                                       ["upstream", "kind"], registry=r)
        self.upstream_up = Gauge("qtls_upstream_server_up",
                                 "1 when a backend server is in rotation (in every live worker)",
                                 ["upstream", "server"], registry=r, multiprocess_mode="livemin")

        self.hsm_errors = Counter("qtls_hsm_errors", "Handshakes that failed with an internal "
                                  "error while HSM keys are in use", registry=r)
        self.reloads = Counter("qtls_config_reloads", "Configuration reloads (SIGHUP) by result",
                               ["result"], registry=r)
        self.ticket_key_rotations = Counter(
            "qtls_ticket_key_rotations", "New generations started to renew session-ticket keys "
            "(tls.ticket_key_lifetime), by result", ["result"], registry=r)
        self.generation = Gauge("qtls_config_generation", "Configuration generation serving",
                                registry=r, multiprocess_mode="livemax")
        self.workers = Gauge("qtls_workers", "Worker processes of the serving generation",
                             registry=r, multiprocess_mode="livemax")
        self.certificate_not_after = Gauge(
            "qtls_certificate_not_after_seconds",
            "notAfter of each served certificate, as a Unix time", ["listener", "cert", "key_type"],
            registry=r, multiprocess_mode="livemax")
        self.worker_restarts = Counter("qtls_worker_restarts",
                                       "Workers that died unexpectedly and were respawned",
                                       registry=r)

        # Set by the master's OCSP fetcher process; `cert` is the certificate file's name.
        self.ocsp_fetch_failures = Counter(
            "qtls_ocsp_fetch_failures", "OCSP responses that could not be fetched or did not "
            "verify, by certificate and reason", ["cert", "reason"], registry=r)
        self.ocsp_response_valid = Gauge(
            "qtls_ocsp_response_valid", "1 while a verified OCSP response is stapled for the "
            "certificate", ["cert"], registry=r, multiprocess_mode="livemax")
        self.ocsp_next_update = Gauge(
            "qtls_ocsp_next_update_seconds", "nextUpdate of the stapled OCSP response (Unix "
            "time; 0: none)", ["cert"], registry=r, multiprocess_mode="livemax")

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _SettledFiles(multiprocess.MultiProcessCollector):
    """prometheus_client's collector without its two races with the processes that write:
    a value file is created empty and sized a moment later (a scrape in between failed with
    struct.error: HTTP 500), and the master deletes a dead process's live-gauge files (one
    gone between the listing and the open failed with FileNotFoundError). Empty files are
    skipped; a vanished one makes the merge start over (three times at most)."""

    def collect(self):  # type: ignore[no-untyped-def]
        for attempt in range(3):
            files = []
            for name in glob.glob(os.path.join(self._path, "*.db")):
                try:
                    if os.stat(name).st_size > 0:
                        files.append(name)
                except FileNotFoundError:
                    pass
            try:
                return self.merge(files, accumulate=True)
            except FileNotFoundError:
                if attempt == 2:
                    raise
        return []


def render_multiprocess() -> bytes:
    """The sum over every process's values (PROMETHEUS_MULTIPROC_DIR), for /metrics."""
    registry = CollectorRegistry()
    _SettledFiles(registry)
    return generate_latest(registry)


def mark_process_dead(pid: int) -> None:
    multiprocess.mark_process_dead(pid)
