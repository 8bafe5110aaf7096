"""Which certificates get an OCSP staple, and the workers' side of stapling.

The master's fetcher (daemon/ocsp_fetcher.py) publishes each verified response as a DER file
named after its certificate in a private 0700 directory, replacing it atomically (rename).
Workers read that file, at most once every RECHECK seconds per certificate, from the OCSP
server callback: a handshake that asks for a staple costs a clock read and a dict lookup, and
once a second a stat(). Why files and not a pipe or a new generation of workers: a file needs
no event-loop code in the worker, survives a worker respawn and a reload (the new generation
finds the last good response at once), and a refresh every few hours does not deserve the
full handshake per client that a new generation (new ticket keys) costs.

A worker also checks nextUpdate itself, so a response is never stapled past it even if the
fetcher is stopped or slow to withdraw it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import stat
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

from cryptography import x509
from cryptography.x509 import ocsp as x509_ocsp

from ..config.files import read_regular
from ..config.model import ServerConfig
from ..errors import ConfigError
from . import openssl_ext
from .ocsp import MAX_RESPONSE_SIZE, OcspInvalid, find_issuer, is_must_staple, responder_urls
from .ocsp import verify_response

if TYPE_CHECKING:
    from OpenSSL import SSL

    from .context import LoadedPair, ServerTls

RECHECK = 1.0
"""Seconds a worker trusts what it read of a certificate's response file before a stat()."""


@dataclass(frozen=True)
class OcspSettings:
    """The certificates section's OCSP timings, carried by each target: a listener with its own
    certificates section has its own."""

    timeout: float = 10.0
    retry_interval: float = 60.0
    refresh_margin: float = 3600.0


@dataclass(frozen=True)
class OcspTarget:
    """One certificate to staple for: where its responses come from and how to check them."""

    label: str
    """The `cert` metric label: the certificate file's name (as the expiry gauges use)."""
    json_path: str
    leaf: x509.Certificate
    leaf_der: bytes
    issuer: x509.Certificate
    url: str | None
    """The responder asked; None when the response comes from `response_file`."""
    response_file: str | None
    must_staple: bool
    settings: OcspSettings = OcspSettings()
    cert_path: str = ""
    """The certificate file, to tell apart files of one name on different listeners."""

    @property
    def file_name(self) -> str:
        return hashlib.sha256(self.leaf_der).hexdigest()[:40] + ".der"


def _pair_file_path(json_path: str) -> str:
    if json_path.startswith("certificates.server_key"):
        return "certificates.ocsp_response_file"
    return f"{json_path}.ocsp_response_file"


def _issuer_of(pair: "LoadedPair", config: ServerConfig) -> x509.Certificate | None:
    candidates: list[x509.Certificate] = []
    for path, json_path in ((pair.cert_path, pair.json_path),
                            (config.certificates.ca_bundle, "certificates.ca_bundle")):
        if not path:
            continue
        try:
            candidates += x509.load_pem_x509_certificates(
                read_regular(path, json_path, "certificate"))
        except (ConfigError, ValueError):
            continue  # context.py reports unreadable files; here they only yield no issuer
    return find_issuer(pair.leaf, [c for c in candidates if c != pair.leaf])


def stapling_targets(config: ServerConfig, pairs: Iterable["LoadedPair"],
                     warnings: list[str]) -> list[OcspTarget]:
    """A target per distinct certificate that is to be stapled; a warning for each one that
    cannot be (no responder URL, no issuer, a Must-Staple certificate with stapling off, a
    response file that does not verify now). An unreadable response file is a ConfigError."""
    certs = config.certificates
    settings = OcspSettings(certs.ocsp_timeout, certs.ocsp_retry_interval,
                            certs.ocsp_refresh_margin)
    targets: dict[bytes, OcspTarget] = {}
    now = dt.datetime.now(dt.timezone.utc)
    for pair in pairs:
        if pair.leaf_der in targets:
            continue
        label = os.path.basename(pair.cert_path) or pair.cert_path
        must = is_must_staple(pair.leaf)
        file_path = _pair_file_path(pair.json_path)
        response_file = pair.ocsp_response_file
        if response_file is not None:
            read_regular(response_file, file_path, "OCSP response file", MAX_RESPONSE_SIZE)
        url = None
        if response_file is None:
            if not certs.ocsp_stapling:
                if must:
                    warnings.append(f"{pair.json_path}: {label} is a Must-Staple certificate "
                                    "but certificates.ocsp_stapling is off: clients that "
                                    "enforce Must-Staple will refuse it")
                continue
            urls = [u for u in responder_urls(pair.leaf) if u.startswith("http://")]
            url = certs.ocsp_responder or (urls[0] if urls else None)
            if url is None:
                warnings.append(f"{pair.json_path}: {label} names no http:// OCSP responder "
                                "(AIA) and certificates.ocsp_responder is not set; it is not "
                                "stapled" + (" although it is Must-Staple" if must else ""))
                continue
        issuer = _issuer_of(pair, config)
        if issuer is None:
            warnings.append(f"{pair.json_path}: the issuer of {label} is neither in its chain "
                            "file nor in certificates.ca_bundle, so OCSP responses cannot be "
                            "checked; it is not stapled")
            continue
        target = OcspTarget(label, pair.json_path, pair.leaf, pair.leaf_der, issuer, url,
                            response_file, must, settings, pair.cert_path)
        if response_file is not None:
            try:
                verify_response(read_regular(response_file, file_path, "OCSP response file",
                                             MAX_RESPONSE_SIZE), pair.leaf, issuer, now)
            except OcspInvalid as exc:
                warnings.append(f"{file_path}: {response_file!r} is not stapled now: {exc}"
                                + (" (a Must-Staple certificate)" if must else ""))
        targets[pair.leaf_der] = target
    return list(targets.values())


class PublishedResponse:
    """One certificate's response file as a worker sees it."""

    def __init__(self, path: str, serial: int) -> None:
        self.path = path
        self.serial = serial
        self._der = b""
        self._next_update = 0.0
        self._checked = -RECHECK
        self._seen: tuple[int, int, int] | None = None

    def current(self, wall: float, monotonic: float) -> bytes:
        if monotonic - self._checked >= RECHECK:
            self._checked = monotonic
            self._reload()
        return self._der if wall < self._next_update else b""

    def _reload(self) -> None:
        try:
            info = os.stat(self.path)
        except OSError:
            self._der, self._seen = b"", None
            return
        seen = (info.st_ino, info.st_mtime_ns, info.st_size)
        if seen == self._seen or not stat.S_ISREG(info.st_mode):
            return
        self._seen = seen
        self._der, self._next_update = b"", 0.0
        try:
            with open(self.path, "rb") as file:
                der = file.read(MAX_RESPONSE_SIZE + 1)
            for single in x509_ocsp.load_der_ocsp_response(der).responses:
                if single.serial_number == self.serial and single.next_update_utc:
                    self._der, self._next_update = der, single.next_update_utc.timestamp()
        except (OSError, ValueError):
            pass  # the fetcher replaces it whole; a bad file is no staple, not a failure


class Stapler:
    """The OCSP server callback: the response for the certificate OpenSSL chose, or b""."""

    def __init__(self, directory: str, targets: Iterable[OcspTarget]) -> None:
        self.responses = {t.leaf_der: PublishedResponse(os.path.join(directory, t.file_name),
                                                        t.leaf.serial_number)
                          for t in targets}

    def __call__(self, connection: "SSL.Connection", _data: object) -> bytes:
        try:
            chosen = self.responses.get(openssl_ext.own_certificate_der(connection) or b"")
            if chosen is None:
                return b""
            return chosen.current(time.time(), time.monotonic())
        except Exception:  # noqa: BLE001 - an exception here would fail the handshake
            return b""


def attach(server_tls: "ServerTls", directory: str) -> Stapler | None:
    """Install the callback on every context of a generation (before any connection uses
    them, so in the master, before fork)."""
    if not server_tls.ocsp:
        return None
    stapler = Stapler(directory, server_tls.ocsp)
    for context in (server_tls.default, *server_tls.by_name.values()):
        context.set_ocsp_server_callback(stapler)
    return stapler
