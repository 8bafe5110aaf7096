"""Signed firmware: `qproxy firmware keygen|sign|verify` with ML-DSA-65 (file or HSM key).

What is signed is defined in `qproxy.qtls.firmware` (devices use the same code): ML-DSA over
a prefix and the image's SHA-256, so images are hashed as a stream. The signature is
detached: `<image>.sig` holds its raw bytes.
A signer is named by its key id, the SHA-256 of its SubjectPublicKeyInfo (hex).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import click

from .config.files import read_regular
from .command_errors import one_line_errors
from .errors import ConfigError, QProxyError
from .keys import uri as pkcs11_uri

if TYPE_CHECKING:
    from .qtls.sig import QTLSDilithium


def _dilithium() -> type[QTLSDilithium]:
    # Imported when used: `qproxy.qtls` configures OpenSSL's providers on import, which the
    # other `qproxy` commands (serve, hsm) must be left to do their own way.
    from .qtls.sig import QTLSDilithium

    return QTLSDilithium

SIGNATURE_SUFFIX = ".sig"
ALGORITHM = "ML-DSA-65"
_CHUNK = 1 << 20
SIGNATURE_LIMIT = 64 * 1024
"""Bytes of a signature file read at most (ML-DSA-87's signature is 4,627 bytes)."""


class FirmwareError(QProxyError):
    """A firmware image, key or signature could not be used; the message says which."""


class VerificationFailed(FirmwareError):
    """The image does not match its signature (or its expected digest)."""


def sha256_file(path: str | Path) -> tuple[str, int]:
    """(hex SHA-256, size) of a file, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    size = 0
    try:
        with open(path, "rb") as stream:
            while chunk := stream.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except OSError as exc:
        raise FirmwareError(f"cannot read {str(path)!r}: {exc.strerror}") from None
    return digest.hexdigest(), size


def signed_message(sha256_hex: str) -> bytes:
    from .qtls.firmware import signed_message

    return signed_message(bytes.fromhex(sha256_hex))


class Signer(Protocol):
    key_id: str

    def sign(self, message: bytes) -> bytes: ...


class FileSigner:
    """An ML-DSA-65 private key in a PEM file."""

    def __init__(self, path: str | Path) -> None:
        try:
            self._key = _dilithium().load_private_key_file(path)
        except QProxyError as exc:
            raise FirmwareError(f"signing key {str(path)!r}: {exc}") from None
        if self._key.algorithm != ALGORITHM:
            raise FirmwareError(f"signing key {str(path)!r} is {self._key.algorithm}; firmware "
                                f"is signed with {ALGORITHM}")
        self.key_id = self._key.key_id

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)


class HsmSigner:
    """An ML-DSA-65 key inside a PKCS#11 token (CKM_ML_DSA), used through python-pkcs11."""

    def __init__(self, uri: str, library: str, token: str | None, pin: str | None) -> None:
        from .keys import pkcs11

        try:
            self.uri = pkcs11_uri.parse(uri)
        except pkcs11_uri.UriError as exc:
            raise FirmwareError(str(exc)) from None
        self._library, self._token, self._pin = library, self.uri.token or token, pin
        with pkcs11.open_session(library, self._token, pin) as session:
            self.key_id = hashlib.sha256(pkcs11.public_key_der(session, self.uri)).hexdigest()

    def sign(self, message: bytes) -> bytes:
        from pkcs11 import KeyType, Mechanism, ObjectClass

        from .keys import pkcs11

        with pkcs11.open_session(self._library, self._token, self._pin) as session:
            mechanisms = session.token.slot.get_mechanisms()
            if Mechanism.ML_DSA not in mechanisms:
                raise FirmwareError("this token does not offer ML-DSA signing (CKM_ML_DSA); "
                                    "sign with a key file or a token that does")
            keys = pkcs11._find(session, self.uri, ObjectClass.PRIVATE_KEY)
            if not keys:
                raise FirmwareError(f"{self.uri}: no such private key on the token")
            if keys[0].key_type != KeyType.ML_DSA:
                raise FirmwareError(f"{self.uri} is a {keys[0].key_type.name} key, not ML-DSA")
            return keys[0].sign(message, mechanism=Mechanism.ML_DSA)


@dataclass(frozen=True)
class SignatureInfo:
    """What a device needs besides the signature bytes (the OTA metadata carries it)."""

    algorithm: str
    key_id: str
    sha256: str
    size: int

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def signature_path(image: str | Path) -> Path:
    return Path(str(image) + SIGNATURE_SUFFIX)


def sign_image(image: str | Path, signer: Signer, out: str | Path | None = None
               ) -> tuple[Path, SignatureInfo]:
    """Sign `image`; writes the detached signature (default `<image>.sig`)."""
    sha256, size = sha256_file(image)
    signature = signer.sign(signed_message(sha256))
    target = Path(out) if out is not None else signature_path(image)
    target.write_bytes(signature)
    return target, SignatureInfo(ALGORITHM, signer.key_id, sha256, size)


def verify_digest(sha256_hex: str, signature: bytes, public: QTLSDilithium) -> None:
    """Raise VerificationFailed unless `signature` is the signer's over this digest."""
    if not public.verify(signed_message(sha256_hex), signature):
        raise VerificationFailed(f"the ML-DSA signature does not match (image SHA-256 "
                                 f"{sha256_hex}, signer {public.key_id[:16]}…)")


def verify_image(image: str | Path, signature: bytes, public: QTLSDilithium,
                 expected_sha256: str | None = None) -> SignatureInfo:
    sha256, size = sha256_file(image)
    if expected_sha256 is not None and expected_sha256.lower() != sha256:
        raise VerificationFailed(f"SHA-256 mismatch: expected {expected_sha256}, image has {sha256}")
    verify_digest(sha256, signature, public)
    return SignatureInfo(ALGORITHM, public.key_id, sha256, size)


def load_verification_key(path: str | Path) -> QTLSDilithium:
    """The signer's public key from a PEM public key or certificate."""
    try:
        key = _dilithium().load_public_key_file(path)
    except QProxyError as exc:
        raise FirmwareError(f"verification key {str(path)!r}: {exc}") from None
    if key.algorithm != ALGORITHM:
        raise FirmwareError(f"{str(path)!r} holds an {key.algorithm} key; firmware is signed "
                            f"with {ALGORITHM}")
    return key


# -- qproxy firmware ... -------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def firmware() -> None:
    """Sign firmware images with ML-DSA-65 and verify them (detached <image>.sig)."""


@firmware.command("keygen")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Private key (PEM PKCS#8, written mode 0600)")
@click.option("--pub", "pub_out", type=click.Path(dir_okay=False),
              help="Public key (PEM) for the devices; default: OUT with .pub.pem")
@one_line_errors
def firmware_keygen(out: str, pub_out: str | None) -> None:
    """A new ML-DSA-65 signing key; prints its key id."""
    key = _dilithium()(ALGORITHM)
    key.keygen()
    target = Path(out)
    if target.exists():
        raise FirmwareError(f"{out!r} exists; refusing to overwrite a signing key")
    target.touch(mode=0o600)
    target.write_bytes(key.private_key_pem())
    public = Path(pub_out) if pub_out else target.with_suffix(".pub.pem")
    public.write_bytes(key.public_key_pem())
    click.echo(key.key_id)


@firmware.command("sign")
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.option("--key", "key", required=True,
              help="ML-DSA-65 private key: a PEM file or a pkcs11: URI (HSM)")
@click.option("--out", type=click.Path(dir_okay=False), help="Signature file (default IMAGE.sig)")
@click.option("--library", envvar="QTLS_PKCS11_LIBRARY",
              help="PKCS#11 module for a pkcs11: key; env QTLS_PKCS11_LIBRARY")
@click.option("--token", envvar="QTLS_HSM_TOKEN", help="Token label; env QTLS_HSM_TOKEN")
@click.option("--pin-file", envvar="QTLS_HSM_PIN_FILE", type=click.Path(dir_okay=False),
              help="File holding the user PIN; env QTLS_HSM_PIN_FILE (or QTLS_HSM_PIN)")
@one_line_errors
def firmware_sign(image: str, key: str, out: str | None, library: str | None,
                  token: str | None, pin_file: str | None) -> None:
    """Sign IMAGE; writes the detached signature and prints its metadata as JSON."""
    if pkcs11_uri.is_pkcs11_uri(key):
        if not library:
            raise FirmwareError("a pkcs11: key needs --library (or QTLS_PKCS11_LIBRARY)")
        from .config.model import HsmSection
        from .keys import provider

        signer: Signer = HsmSigner(key, library, token,
                                   provider.resolve_pin(HsmSection(pin_file=pin_file)))
    else:
        signer = FileSigner(key)
    path, info = sign_image(image, signer, out)
    click.echo(json.dumps({**info.to_dict(), "signature": str(path)}))


@firmware.command("verify")
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.option("--pubkey", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The signer's public key or certificate (PEM)")
@click.option("--sig", "sig_path", type=click.Path(dir_okay=False),
              help="Signature file (default IMAGE.sig)")
@click.option("--sha256", "expected", help="Also require this SHA-256 (hex)")
@one_line_errors
def firmware_verify(image: str, pubkey: str, sig_path: str | None, expected: str | None) -> None:
    """Exit 0 if IMAGE carries a valid signature by PUBKEY, 1 otherwise."""
    sig_file = Path(sig_path) if sig_path else signature_path(image)
    try:
        # Bounded: an ML-DSA signature is a few KB; --sig /dev/zero read until the OOM killer.
        signature = read_regular(str(sig_file), "", "the signature", limit=SIGNATURE_LIMIT)
    except ConfigError as exc:
        raise FirmwareError(exc.problem) from None
    info = verify_image(image, signature, load_verification_key(pubkey), expected)
    click.echo(f"OK {image}: sha256 {info.sha256}, signed by {info.key_id}")
