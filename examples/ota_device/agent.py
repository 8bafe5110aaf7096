"""The update check: PQ TLS to the OTA service, metadata, image, SHA-256, ML-DSA signature.

Every step that can fail raises `UpdateRefused` with the reason; nothing is written to the
install directory unless the image is verified.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from qproxy.qtls import (
    QTLS_CLIENT_MODE, QTLS_OP_HYBRID_MODE, QTLS_OP_REQUIRE_PQ, QTLS_VERIFY_FAIL_IF_NO_PEER_CERT,
    QTLS_VERIFY_PEER, QTLSClient, QTLSContext, QTLSDilithium, QTLSException,
)
from qproxy.qtls.firmware import verify_firmware_signature

from . import http
from .announcement import Announcement, BadAnnouncement

EXPECTED_GROUP = "X25519MLKEM768"
EXPECTED_KEY = "ML-DSA-65"
MAX_IMAGE = 256 * 1024 * 1024
MAX_JSON = 64 * 1024


def device_context(ca_file: str) -> QTLSContext:
    """The device's TLS for HTTPS and MQTT alike: hybrid ML-KEM or nothing, and only an
    ML-DSA-65 certificate chain that verifies against `ca_file` is acceptable."""
    context = QTLSContext(mode=QTLS_CLIENT_MODE)
    context.load_verify_locations(ca_file)
    context.set_options(QTLS_OP_HYBRID_MODE | QTLS_OP_REQUIRE_PQ)
    context.set_kem_algorithms([EXPECTED_GROUP])
    context.set_signature_algorithms(["ML-DSA-65"])
    context.set_verify_mode(QTLS_VERIFY_PEER | QTLS_VERIFY_FAIL_IF_NO_PEER_CERT)
    return context


class UpdateRefused(Exception):
    """The update was not installed; the message says why."""


@dataclass
class Report:
    status: str            # "installed" or "up-to-date"
    version: str
    sha256: str | None
    signer_key_id: str
    group: str
    server_signature: str
    server_chain: list[str]
    path: str | None

    def to_json(self) -> str:
        return json.dumps(asdict(self))


@dataclass
class Agent:
    host: str
    port: int
    ca_file: str
    signer_key: str
    """PEM public key (or certificate) of the firmware signer the device trusts."""
    install_dir: str
    server_name: str | None = None
    current_version: str | None = None

    def __post_init__(self) -> None:
        self.context = device_context(self.ca_file)
        self.signer = QTLSDilithium.load_public_key_file(self.signer_key)
        self.client = QTLSClient(self.context)
        self._seen: dict[str, object] = {}

    def _get(self, path: str, max_body: int) -> http.Response:
        try:
            conn = self.client.connect(self.host, self.port, server_hostname=self.server_name)
            group, chain = conn.negotiated_group, conn.peer_certificate_keys
            if group != EXPECTED_GROUP:
                raise UpdateRefused(f"key exchange was {group}, not {EXPECTED_GROUP}")
            if not chain or any(kind != EXPECTED_KEY for kind in chain):
                raise UpdateRefused(f"the server's chain is {chain}, not all {EXPECTED_KEY}")
            self._seen = {"group": group, "server_signature": conn.peer_signature_algorithm,
                          "server_chain": chain}
            response = http.get(self.client, self.server_name or self.host, path, max_body)
        except QTLSException as exc:
            raise UpdateRefused(f"TLS to {self.host}:{self.port} failed: {exc}") from None
        except http.HttpError as exc:
            raise UpdateRefused(f"GET {path}: {exc}") from None
        finally:
            self.client.shutdown()
        if response.status != 200:
            raise UpdateRefused(f"GET {path} answered {response.status}")
        return response

    def _json(self, path: str) -> dict:
        try:
            return json.loads(self._get(path, MAX_JSON).body)
        except ValueError:
            raise UpdateRefused(f"GET {path} did not return JSON") from None

    def check_and_install(self) -> Report:
        """Install the latest firmware the server lists (or report it is current)."""
        meta = self._json("/api/firmware/latest")
        return self._install(str(meta.get("version")), meta.get("sha256"), str(meta["url"]),
                             meta)

    def install_announced(self, announcement: Announcement) -> Report:
        """Install the firmware an MQTT announcement names. The announcement only says what
        to fetch: the image must come from this agent's server, match the announced SHA-256
        and the server's metadata, and carry the trusted signer's signature."""
        try:
            download_path = announcement.download_path(self.server_name or self.host, self.port)
        except BadAnnouncement as exc:
            raise UpdateRefused(str(exc)) from None
        meta = self._json(f"/api/firmware/{announcement.version}")
        if meta.get("sha256") != announcement.sha256:
            raise UpdateRefused(f"the announcement of {announcement.version} says SHA-256 "
                                f"{announcement.sha256}, the server's metadata "
                                f"{meta.get('sha256')}")
        return self._install(announcement.version, announcement.sha256, download_path, meta,
                             size=announcement.size)

    def _install(self, version: str, sha256: object, download_path: str, meta: dict,
                 size: int | None = None) -> Report:
        signature_meta = meta.get("signature") or {}
        if signature_meta.get("key_id") != self.signer.key_id:
            raise UpdateRefused(f"firmware {version} is not signed by the trusted key "
                                f"{self.signer.key_id[:16]}… (metadata names "
                                f"{str(signature_meta.get('key_id'))[:16]}…)")
        if version == self.current_version:
            return Report("up-to-date", version, None, self.signer.key_id, path=None,
                          **self._seen)  # type: ignore[arg-type]
        limit = MAX_IMAGE if size is None else min(size, MAX_IMAGE)
        image = self._get(download_path, limit).body
        if size is not None and len(image) != size:
            raise UpdateRefused(f"the download of {version} is {len(image)} bytes, the "
                                f"announcement says {size}")
        digest = hashlib.sha256(image).digest()
        if digest.hex() != sha256:
            raise UpdateRefused(f"SHA-256 of the download {digest.hex()} differs from the "
                                f"expected {sha256}")
        signature = self._get(str(signature_meta["url"]), 16 * 1024).body
        if not verify_firmware_signature(self.signer, digest, signature):
            raise UpdateRefused(f"the ML-DSA signature of firmware {version} does not verify")
        target = Path(self.install_dir) / f"firmware-{version}.bin"
        temporary = target.with_suffix(".part")
        temporary.write_bytes(image)
        os.replace(temporary, target)
        self.current_version = version
        return Report("installed", version, digest.hex(), self.signer.key_id, path=str(target),
                      **self._seen)  # type: ignore[arg-type]
