"""Firmware images on disk.

Layout of the storage directory::

    <version>.bin     the image, byte for byte as uploaded
    <version>.json    metadata sidecar: version, size, sha256, uploaded_at
    <version>.sig     detached ML-DSA-65 signature (optional, `qproxy firmware sign`)
    <version>.sig.json  its metadata: algorithm, key_id (the signer)
    .upload-*.part    uploads in progress (ignored by readers)

The sidecar is the commit point: a version is visible only once its JSON
exists, and the JSON is written atomically (temp file + rename), so readers
never see a half-written image or half-written metadata.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

# Big enough that hashing dominates over per-call overhead, small enough
# that a 1 GiB upload costs a few hundred KiB of memory.
CHUNK_SIZE = 256 * 1024

# Dotted integers, 1 to 4 parts. Leading zeros are refused so that every
# version has a single spelling ("1.01" and "1.1" would otherwise compare
# equal but be stored as two different files).
_VERSION_RE = re.compile(r"^(0|[1-9]\d*)(\.(0|[1-9]\d*)){0,3}$")
_MAX_VERSION_LENGTH = 64
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_TEMP_PREFIX = ".upload-"
_KEY_ID_RE = re.compile(r"^[0-9a-f]{64}$")
# Signature sizes of the algorithms `qproxy firmware` and devices understand (FIPS 204).
SIGNATURE_SIZES = {"ML-DSA-44": 2420, "ML-DSA-65": 3309, "ML-DSA-87": 4627}


class StorageError(Exception):
    """Base class for errors a client can cause (bad input, conflicts)."""


class InvalidVersion(StorageError):
    pass


class InvalidChecksum(StorageError):
    pass


class FirmwareNotFound(StorageError):
    pass


class FirmwareExists(StorageError):
    pass


class ChecksumMismatch(StorageError):
    pass


class EmptyUpload(StorageError):
    pass


class UploadInterrupted(StorageError):
    pass


class InvalidSignature(StorageError):
    """A signature upload that cannot be one (wrong size, unknown algorithm, bad key id)."""


@dataclass(frozen=True)
class SignatureInfo:
    algorithm: str
    key_id: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class FirmwareInfo:
    version: str
    size: int
    sha256: str
    uploaded_at: str

    def to_dict(self) -> dict:
        return asdict(self)


def parse_version(text: str) -> tuple[int, ...]:
    """Return the sort key of a version string, or raise InvalidVersion."""
    if len(text) > _MAX_VERSION_LENGTH or not _VERSION_RE.match(text):
        raise InvalidVersion(
            f"invalid version {text!r}: expected 1 to 4 dot-separated integers "
            "without leading zeros, e.g. 1.2.3"
        )
    return tuple(int(part) for part in text.split("."))


def normalize_sha256(text: str) -> str:
    """Accept a hex SHA-256 in any case; raise InvalidChecksum otherwise."""
    candidate = text.strip().lower()
    if not _SHA256_RE.match(candidate):
        raise InvalidChecksum(f"invalid SHA-256 {text!r}: expected 64 hex digits")
    return candidate


def copy_and_hash(stream: BinaryIO, sink: BinaryIO | None = None) -> tuple[int, str]:
    """Read ``stream`` to the end in CHUNK_SIZE pieces, optionally copying to
    ``sink``; return (byte count, hex SHA-256).

    Read errors mean the client went away or sent a malformed chunked body,
    so they become UploadInterrupted; write errors (disk full...) propagate
    unchanged because they are the server's problem.
    """
    digest = hashlib.sha256()
    size = 0
    while True:
        try:
            chunk = stream.read(CHUNK_SIZE)
        except OSError as exc:
            # No byte count in the message: werkzeug's own chunked decoder
            # miscounts when the client vanishes mid-chunk (chunked.py replaces
            # it in our dev-server handler, but other servers may have theirs).
            raise UploadInterrupted(f"request body ended early or was malformed: {exc}") from exc
        if not chunk:
            return size, digest.hexdigest()
        digest.update(chunk)
        size += len(chunk)
        if sink is not None:
            sink.write(chunk)


def _utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _fsync_dir(path: Path) -> None:
    # Makes the new directory entry survive a power loss; not possible on
    # platforms without O_DIRECTORY, where we simply skip it.
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FirmwareStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    # -- paths ---------------------------------------------------------

    def image_path(self, version: str) -> Path:
        parse_version(version)  # also guarantees no path separators
        return self.root / f"{version}.bin"

    def _meta_path(self, version: str) -> Path:
        parse_version(version)
        return self.root / f"{version}.json"

    # -- reading -------------------------------------------------------

    def get(self, version: str) -> FirmwareInfo:
        meta_path = self._meta_path(version)
        info = self._load_meta(meta_path)
        if info is None or not self.image_path(version).is_file():
            raise FirmwareNotFound(f"firmware version {version} not found")
        return info

    def versions(self) -> list[FirmwareInfo]:
        """All complete firmware versions, newest first."""
        found = []
        for meta_path in self.root.glob("*.json"):
            version = meta_path.stem
            try:
                key = parse_version(version)
            except InvalidVersion:
                continue  # not one of ours
            info = self._load_meta(meta_path)
            if info is not None and self.image_path(version).is_file():
                found.append((key, info))
        found.sort(key=lambda item: item[0], reverse=True)
        return [info for _, info in found]

    def latest(self) -> FirmwareInfo | None:
        newest_first = self.versions()
        return newest_first[0] if newest_first else None

    def _load_meta(self, meta_path: Path) -> FirmwareInfo | None:
        try:
            raw = json.loads(meta_path.read_text(encoding="utf-8"))
            info = FirmwareInfo(
                version=str(raw["version"]),
                size=int(raw["size"]),
                sha256=str(raw["sha256"]),
                uploaded_at=str(raw["uploaded_at"]),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # One damaged sidecar must not take the whole listing down.
            log.warning("ignoring unreadable firmware metadata %s: %s", meta_path, exc)
            return None
        if info.version != meta_path.stem:
            log.warning("ignoring %s: it describes version %s", meta_path, info.version)
            return None
        return info

    # -- writing -------------------------------------------------------

    def exists(self, version: str) -> bool:
        # The image path is what save() claims, so it is the authority on
        # "taken", even while the sidecar is still being written.
        return self.image_path(version).exists()

    def save(
        self,
        version: str,
        stream: BinaryIO,
        expected_sha256: str | None = None,
    ) -> FirmwareInfo:
        """Stream an image to disk and publish it under ``version``.

        Nothing is published unless the whole body arrived, was non-empty
        and matched ``expected_sha256`` (when given).
        """
        parse_version(version)
        if expected_sha256 is not None:
            expected_sha256 = normalize_sha256(expected_sha256)
        if self.exists(version):
            # Cheap early answer; the os.link below is the real guard.
            raise FirmwareExists(f"firmware version {version} already exists")

        fd, temp_name = tempfile.mkstemp(dir=self.root, prefix=_TEMP_PREFIX, suffix=".part")
        temp_path = Path(temp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                size, sha256 = copy_and_hash(stream, out)
                out.flush()
                os.fsync(out.fileno())
            if size == 0:
                raise EmptyUpload(
                    "request body is empty; send the image with Content-Length "
                    "or Transfer-Encoding: chunked"
                )
            if expected_sha256 is not None and sha256 != expected_sha256:
                raise ChecksumMismatch(
                    f"SHA-256 mismatch: X-Firmware-SHA256 says {expected_sha256}, "
                    f"received body has {sha256}"
                )
            info = FirmwareInfo(version, size, sha256, _utc_now_iso())
            self._publish(temp_path, info)
            return info
        finally:
            temp_path.unlink(missing_ok=True)

    def _publish(self, temp_path: Path, info: FirmwareInfo) -> None:
        image_path = self.image_path(info.version)
        try:
            # link() fails if the name exists, unlike rename(), so two
            # concurrent uploads of one version cannot overwrite each other.
            os.link(temp_path, image_path)
        except FileExistsError:
            raise FirmwareExists(f"firmware version {info.version} already exists") from None
        try:
            self._write_meta(info)
        except BaseException:
            image_path.unlink(missing_ok=True)  # release the claim
            raise
        _fsync_dir(self.root)

    # -- detached signatures ---------------------------------------------

    def signature_path(self, version: str) -> Path:
        parse_version(version)
        return self.root / f"{version}.sig"

    def save_signature(self, version: str, signature: bytes, algorithm: str,
                       key_id: str) -> SignatureInfo:
        """Store the detached signature of an existing version (replacing an older one:
        re-signing with a new key is how a key rotation reaches devices)."""
        self.get(version)  # FirmwareNotFound for an unknown version
        expected = SIGNATURE_SIZES.get(algorithm)
        if expected is None:
            raise InvalidSignature(f"unknown signature algorithm {algorithm!r}; known: "
                                   f"{', '.join(SIGNATURE_SIZES)}")
        if len(signature) != expected:
            raise InvalidSignature(f"an {algorithm} signature is {expected} bytes, got "
                                   f"{len(signature)}")
        key_id = key_id.strip().lower()
        if not _KEY_ID_RE.match(key_id):
            raise InvalidSignature("X-Signer-Key-Id must be the signer's key id: 64 hex digits "
                                   "(SHA-256 of its public key, as `qproxy firmware sign` prints)")
        info = SignatureInfo(algorithm, key_id)
        self._write_atomically(self.signature_path(version), signature)
        # The sidecar last: a signature is announced only once its bytes are in place.
        self._write_atomically(self.root / f"{version}.sig.json",
                               (json.dumps(info.to_dict()) + "\n").encode())
        return info

    def signature(self, version: str) -> SignatureInfo | None:
        try:
            raw = json.loads((self.root / f"{version}.sig.json").read_text(encoding="utf-8"))
            info = SignatureInfo(str(raw["algorithm"]), str(raw["key_id"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable signature metadata of %s: %s", version, exc)
            return None
        return info if self.signature_path(version).is_file() else None

    def _write_atomically(self, path: Path, data: bytes) -> None:
        fd, temp_name = tempfile.mkstemp(dir=self.root, prefix=_TEMP_PREFIX, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp_name, path)
        finally:
            Path(temp_name).unlink(missing_ok=True)

    def _write_meta(self, info: FirmwareInfo) -> None:
        fd, temp_name = tempfile.mkstemp(dir=self.root, prefix=_TEMP_PREFIX, suffix=".json.part")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(info.to_dict(), out, indent=2)
                out.write("\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp_name, self._meta_path(info.version))
        finally:
            Path(temp_name).unlink(missing_ok=True)
