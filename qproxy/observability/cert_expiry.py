"""When each served certificate expires: gauges, start/reload warnings, check-config lines.

An expired certificate is loaded and served, with an error-level warning, as nginx does: the
devices this daemon fronts (ESP32s without a battery-backed clock, seed 002) often cannot tell
the date, and refusing to start would take every client down for the ones that can. The alarm
is the gauge (`qtls_certificate_not_after_seconds - time() < 0`) and the log line.

Label values are bounded by the configuration: `cert` is the certificate file's name (not its
directory), `key_type` the key kind ("ML-DSA-65", "ECDSA P-384"), `listener` the listener's name.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Protocol

if TYPE_CHECKING:  # importing cryptography initialises OpenSSL: not before OPENSSL_CONF is set
    from cryptography import x509

DEFAULT_LISTENER = "default"
SECONDS_PER_DAY = 86400


class ServedPair(Protocol):
    """What this module needs of a loaded certificate pair (tls.context.LoadedPair)."""

    cert_path: str
    key_kind: str
    leaf: x509.Certificate
    json_path: str


@dataclass(frozen=True)
class CertificateExpiry:
    listener: str
    cert: str
    key_type: str
    subject: str
    not_after: dt.datetime
    json_path: str

    def seconds_left(self, now: dt.datetime) -> float:
        return (self.not_after - now).total_seconds()

    def days_left(self, now: dt.datetime) -> int:
        """Whole days, rounded down."""
        return int(self.seconds_left(now) // SECONDS_PER_DAY)

    def time_left(self, now: dt.datetime) -> str:
        """'in 364 day(s)', or in hours on the last day ('in 0 days' would read as expired)."""
        seconds = self.seconds_left(now)
        if seconds >= SECONDS_PER_DAY:
            return f"in {self.days_left(now)} day(s)"
        return f"in {max(0, int(seconds // 3600))} hour(s)"


def cert_label(cert_path: str) -> str:
    """The `cert` label: the file name, stable across reloads and short."""
    return os.path.basename(cert_path) or cert_path


def cert_labels(paths: Iterable[str]) -> dict[str, str]:
    """Each distinct path's label: its file name, or when several files share that name (Let's
    Encrypt's .../live/<name>/fullchain.pem), as many trailing directories as tell them apart."""
    distinct = list(dict.fromkeys(paths))
    split = {path: path.rstrip("/").split("/") for path in distinct}

    def tail(path: str, depth: int) -> str:
        return "/".join(split[path][-depth:])

    labels = {}
    for path in distinct:
        depth = 1
        while depth < len(split[path]) and any(
                other != path and tail(other, depth) == tail(path, depth) for other in distinct):
            depth += 1
        labels[path] = tail(path, depth) or path
    return labels


def _subject(cert: x509.Certificate) -> str:
    return ", ".join(rdn.rfc4514_string() for rdn in cert.subject.rdns) or "(empty subject)"


def expiry_of(pairs: Iterable[ServedPair], listener: str = DEFAULT_LISTENER,
              ) -> list[CertificateExpiry]:
    """One entry per distinct certificate file (an SNI set may repeat a default pair); files
    that share a name get labels that tell them apart (cert_labels)."""
    pairs = list(pairs)
    labels = cert_labels(pair.cert_path for pair in pairs)
    seen: dict[tuple[str, str], CertificateExpiry] = {}
    for pair in pairs:
        entry = CertificateExpiry(listener, labels[pair.cert_path], pair.key_kind,
                                  _subject(pair.leaf), pair.leaf.not_valid_after_utc,
                                  pair.json_path)
        seen.setdefault((pair.cert_path, entry.key_type), entry)
    return list(seen.values())


def expiry_warnings(entries: Iterable[CertificateExpiry], warn_days: int,
                    now: dt.datetime | None = None) -> list[str]:
    """One line per certificate expired or expiring within `warn_days`, naming its JSON path."""
    now = now or dt.datetime.now(dt.timezone.utc)
    lines = []
    for entry in entries:
        when = f"{entry.not_after:%Y-%m-%d %H:%M} UTC"
        where = f"{entry.json_path}.cert" if "[" in entry.json_path else "certificates.server_cert"
        if entry.seconds_left(now) <= 0:
            lines.append(f"{where}: certificate {entry.cert!r} ({entry.subject}) EXPIRED on "
                         f"{when}; it is still served, but clients that check dates refuse it: "
                         "renew it and reload (SIGHUP)")
        elif entry.days_left(now) < warn_days:
            lines.append(f"{where}: certificate {entry.cert!r} ({entry.subject}) expires "
                         f"{entry.time_left(now)}, on {when} (certificates.warn_days is "
                         f"{warn_days}): renew it and reload (SIGHUP)")
    return lines


def describe(entries: Iterable[CertificateExpiry], now: dt.datetime | None = None) -> list[str]:
    """`qproxy check-config` lines: subject, key type and expiry of each served chain."""
    now = now or dt.datetime.now(dt.timezone.utc)
    lines = []
    for entry in entries:
        left = "EXPIRED" if entry.seconds_left(now) <= 0 else entry.time_left(now)
        lines.append(f"certificate {entry.cert} [{entry.listener}]: {entry.subject}; "
                     f"key {entry.key_type}; expires {entry.not_after:%Y-%m-%d %H:%M} UTC "
                     f"({left})")
    return lines


def publish(gauge, entries: Iterable[CertificateExpiry]) -> None:
    """Set `qtls_certificate_not_after_seconds{listener,cert,key_type}`. Called in each worker
    of a generation: the gauge is `livemax`, so a retired generation's certificates leave the
    output when its workers exit."""
    for entry in entries:
        gauge.labels(entry.listener, entry.cert, entry.key_type).set(entry.not_after.timestamp())
