"""Talking to the token with python-pkcs11: checks before start, and the `qproxy hsm` tools.

PKCS#11 modules are not fork-safe, so the daemon's master never calls into this module in its
own process: `check_keys_in_child` runs the checks in a short-lived child and returns what it
found. Signatures during handshakes are made by pkcs11-provider inside each worker.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import time
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa, utils

from ..errors import QProxyError
from .uri import Pkcs11Uri

EC_CURVES = {"ec-p256": "secp256r1", "ec-p384": "secp384r1"}
KEY_TYPES = ("ec-p384", "ec-p256", "rsa-3072", "ml-dsa-65")


class HsmError(QProxyError):
    """Something about the token is wrong; the message says what, never the PIN."""


@dataclass(frozen=True)
class KeyCheck:
    """One key to verify: where it is configured, its URI, and the certificate it must match."""

    json_path: str
    uri: Pkcs11Uri
    cert_pem: bytes


def _pkcs11():
    import pkcs11  # imported lazily: only HSM users need the library loaded

    return pkcs11


def open_session(library: str, token_label: str | None, pin: str | None, *, rw: bool = False):
    pkcs11 = _pkcs11()
    from pkcs11 import exceptions as p11e

    try:
        lib = pkcs11.lib(library)
    except (RuntimeError, OSError) as exc:
        raise HsmError(f"cannot load the PKCS#11 library {library!r}: {exc}") from None
    try:
        token = lib.get_token(token_label=token_label) if token_label else next(
            slot.get_token() for slot in lib.get_slots(token_present=True))
    except (p11e.NoSuchToken, StopIteration):
        raise HsmError(f"token {token_label!r} not found (is the HSM connected and the token "
                       "initialised?)") from None
    except p11e.MultipleTokensReturned:
        raise HsmError(f"several tokens are labelled {token_label!r}; name one by serial") from None
    try:
        return token.open(user_pin=pin, rw=rw)
    except p11e.PinIncorrect:
        raise HsmError(f"the PIN for token {token.label!r} was refused (wrong PIN)") from None
    except p11e.PinLocked:
        raise HsmError(f"the PIN of token {token.label!r} is locked: ask the security officer "
                       "to reset it") from None
    except p11e.PKCS11Error as exc:
        raise HsmError(f"cannot log in to token {token.label!r}: {exc.__class__.__name__}") from None


def _find(session, uri: Pkcs11Uri, object_class):
    pkcs11 = _pkcs11()
    attrs = {pkcs11.Attribute.CLASS: object_class}
    if uri.object is not None:
        attrs[pkcs11.Attribute.LABEL] = uri.object
    if uri.id is not None:
        attrs[pkcs11.Attribute.ID] = uri.id
    return list(session.get_objects(attrs))


def _public_key_der(session, uri: Pkcs11Uri, private) -> bytes | None:
    """The SubjectPublicKeyInfo of the key pair, from its public object."""
    pkcs11 = _pkcs11()
    from pkcs11.util.ec import encode_ec_public_key
    from pkcs11.util.rsa import encode_rsa_public_key

    publics = _find(session, uri, pkcs11.ObjectClass.PUBLIC_KEY)
    if not publics:
        return None
    public = publics[0]
    if private.key_type == pkcs11.KeyType.EC:
        return encode_ec_public_key(public)
    if private.key_type == pkcs11.KeyType.RSA:
        rsa_der = encode_rsa_public_key(public)
        return serialization.load_der_public_key(_rsa_spki(rsa_der)).public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return None


def _rsa_spki(pkcs1: bytes) -> bytes:
    from asn1crypto import keys

    return keys.PublicKeyInfo({
        "algorithm": {"algorithm": "rsa"},
        "public_key": keys.RSAPublicKey.load(pkcs1),
    }).dump()


def check_key(session, check: KeyCheck) -> None:
    """Raise HsmError unless the key exists, is private, non-extractable and matches its cert."""
    pkcs11 = _pkcs11()
    where = f"{check.json_path}: {check.uri}"
    found = _find(session, check.uri, pkcs11.ObjectClass.PRIVATE_KEY)
    if not found:
        raise HsmError(f"{where}: no private key with that label/id on the token (key missing)")
    if len(found) > 1:
        raise HsmError(f"{where}: {len(found)} private keys match; make the URI unique (add id=)")
    key = found[0]
    if key[pkcs11.Attribute.EXTRACTABLE] or not key[pkcs11.Attribute.SENSITIVE]:
        raise HsmError(f"{where}: the private key is extractable or not sensitive; generate it "
                       "inside the token as non-extractable (qproxy hsm keygen)")
    cert = x509.load_pem_x509_certificates(check.cert_pem)[0]
    cert_key = cert.public_key()
    expected = {pkcs11.KeyType.EC: ec.EllipticCurvePublicKey,
                pkcs11.KeyType.RSA: rsa.RSAPublicKey}.get(key.key_type)
    if expected is not None and not isinstance(cert_key, expected):
        raise HsmError(f"{where}: the token key is {key.key_type.name} but the certificate "
                       f"holds a {type(cert_key).__name__} (mismatch)")
    token_spki = _public_key_der(session, check.uri, key)
    cert_spki = cert_key.public_bytes(serialization.Encoding.DER,
                                      serialization.PublicFormat.SubjectPublicKeyInfo)
    if token_spki is not None and token_spki != cert_spki:
        raise HsmError(f"{where}: the certificate's public key does not match the token's key "
                       "pair (mismatch)")


def check_keys(library: str, token_label: str | None, pin: str | None,
               checks: list[KeyCheck]) -> list[str]:
    """All problems, one line each (empty: everything fine)."""
    problems: list[str] = []
    by_token: dict[str | None, list[KeyCheck]] = {}
    for item in checks:
        by_token.setdefault(item.uri.token or token_label, []).append(item)
    for label, items in by_token.items():
        try:
            with open_session(library, label, pin) as session:
                for item in items:
                    try:
                        check_key(session, item)
                    except HsmError as exc:
                        problems.append(str(exc))
        except HsmError as exc:
            problems.append(f"{items[0].json_path}: {exc}")
    return problems


def check_keys_in_child(library: str, token_label: str | None, pin: str | None,
                        checks: list[KeyCheck], timeout: float = 30.0) -> list[str]:
    """`check_keys` in a forked child, so this process never initialises the PKCS#11 module.

    Bounded: a token that does not answer within `timeout` is a problem, and the child is
    killed (the master runs this on SIGHUP and must come back to its loop)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: check, report, and leave without running the parent's cleanup
        os.close(read_fd)
        try:
            signal.set_wakeup_fd(-1)  # the master's wake-up pipe is not ours to write
            result = check_keys(library, token_label, pin, checks)
        except BaseException as exc:  # noqa: BLE001 - every failure is reported, none escapes
            result = [f"HSM check failed: {exc}"]
        with os.fdopen(write_fd, "wb") as out:
            out.write(json.dumps(result).encode())
        os._exit(0)
    os.close(write_fd)
    data = b""
    answered = False
    deadline = time.monotonic() + timeout
    try:
        while not answered and (remaining := deadline - time.monotonic()) > 0:
            try:
                readable, _, _ = select.select([read_fd], [], [], remaining)
            except InterruptedError:
                continue
            if readable:
                chunk = os.read(read_fd, 65536)
                data += chunk
                answered = not chunk  # EOF: the child has written all and is exiting
    finally:
        os.close(read_fd)
    if not answered:
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    if not answered:
        return [f"the HSM check did not finish within {timeout:g} s (is the token reachable?)"]
    try:
        return list(map(str, json.loads(data)))
    except ValueError:
        return ["HSM check process died before answering"]


# -- qproxy hsm tools ---------------------------------------------------------------------

def keygen(session, label: str, key_type: str, key_id: bytes):
    """Generate a sensitive, non-extractable key pair inside the token; returns the public key."""
    pkcs11 = _pkcs11()
    from pkcs11 import Attribute, KeyType, Mechanism

    private_template = {Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False,
                        Attribute.SIGN: True, Attribute.TOKEN: True, Attribute.PRIVATE: True}
    public_template = {Attribute.VERIFY: True, Attribute.TOKEN: True}
    if _find(session, Pkcs11Uri(object=label), pkcs11.ObjectClass.PRIVATE_KEY):
        raise HsmError(f"a private key labelled {label!r} already exists on the token")
    if key_type in EC_CURVES:
        from pkcs11.util.ec import encode_named_curve_parameters

        params = session.create_domain_parameters(
            KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters(EC_CURVES[key_type])},
            local=True)
        public, _ = params.generate_keypair(store=True, label=label, id=key_id,
                                            private_template=private_template,
                                            public_template=public_template)
    elif key_type == "rsa-3072":
        public, _ = session.generate_keypair(KeyType.RSA, 3072, store=True, label=label,
                                             id=key_id, private_template=private_template,
                                             public_template=public_template)
    elif key_type == "ml-dsa-65":
        if Mechanism.ML_DSA_KEY_PAIR_GEN not in session.token.slot.get_mechanisms():
            raise HsmError("this token does not offer ML-DSA (CKM_ML_DSA_KEY_PAIR_GEN); SoftHSM2 "
                           "2.6 has none, Luna firmware 7.9+ does")
        public, _ = session.generate_keypair(KeyType.ML_DSA, store=True, label=label, id=key_id,
                                             private_template=private_template,
                                             public_template=public_template)
    else:
        raise HsmError(f"unknown key type {key_type!r}; use one of {', '.join(KEY_TYPES)}")
    return public


def _sign(session, uri: Pkcs11Uri, tbs: bytes) -> tuple[bytes, str]:
    """Sign `tbs` with the token key; returns (DER signature, X.509 algorithm name)."""
    pkcs11 = _pkcs11()
    from pkcs11 import KeyType, Mechanism

    keys = _find(session, uri, pkcs11.ObjectClass.PRIVATE_KEY)
    if not keys:
        raise HsmError(f"{uri}: no such private key on the token")
    key = keys[0]
    if key.key_type == KeyType.EC:
        # Raw ECDSA over our own digest: every token has CKM_ECDSA, not all the hashed forms.
        digest, algorithm = ((hashlib.sha384(tbs).digest(), "sha384_ecdsa")
                             if _curve_bits(key) >= 384
                             else (hashlib.sha256(tbs).digest(), "sha256_ecdsa"))
        raw = key.sign(digest, mechanism=Mechanism.ECDSA)
        half = len(raw) // 2
        signature = utils.encode_dss_signature(int.from_bytes(raw[:half], "big"),
                                               int.from_bytes(raw[half:], "big"))
        return signature, algorithm
    if key.key_type == KeyType.RSA:
        return key.sign(tbs, mechanism=Mechanism.SHA256_RSA_PKCS), "sha256_rsa"
    raise HsmError(f"{uri}: signing CSRs with {key.key_type.name} keys is not supported")


def _curve_bits(key) -> int:
    pkcs11 = _pkcs11()
    from asn1crypto.keys import ECDomainParameters

    name = ECDomainParameters.load(key[pkcs11.Attribute.EC_PARAMS]).chosen.native
    return {"secp256r1": 256, "secp384r1": 384, "secp521r1": 521}.get(name, 256)


def make_csr(session, uri: Pkcs11Uri, subject: x509.Name, public_der: bytes,
             dns_names: list[str]) -> bytes:
    """A PEM PKCS#10 request whose signature is made inside the token."""
    from asn1crypto import csr, keys, pem, x509 as ax509

    attributes = []
    if dns_names:
        extensions = ax509.Extensions([{
            "extn_id": "subject_alt_name", "critical": False,
            "extn_value": [ax509.GeneralName(name="dns_name", value=n) for n in dns_names],
        }])
        attributes.append({"type": "extension_request", "values": [extensions]})
    info = csr.CertificationRequestInfo({
        "version": "v1",
        "subject": ax509.Name.load(subject.public_bytes()),
        "subject_pk_info": keys.PublicKeyInfo.load(public_der),
        "attributes": attributes,
    })
    signature, algorithm = _sign(session, uri, info.dump())
    request = csr.CertificationRequest({
        "certification_request_info": info,
        "signature_algorithm": {"algorithm": algorithm},
        "signature": signature,
    })
    return pem.armor("CERTIFICATE REQUEST", request.dump())


def public_key_der(session, uri: Pkcs11Uri) -> bytes:
    pkcs11 = _pkcs11()
    keys = _find(session, uri, pkcs11.ObjectClass.PRIVATE_KEY)
    if not keys:
        raise HsmError(f"{uri}: no such private key on the token")
    der = _public_key_der(session, uri, keys[0])
    if der is None:
        raise HsmError(f"{uri}: the token holds no public key object for this key")
    return der


def import_certificate(session, label: str, key_id: bytes | None, cert: x509.Certificate) -> None:
    """Store `cert` next to its key: same label and, unless given, the key's CKA_ID."""
    from pkcs11 import Attribute, CertificateType, ObjectClass

    if key_id is None:
        keys = _find(session, Pkcs11Uri(object=label), ObjectClass.PRIVATE_KEY)
        key_id = bytes(keys[0][Attribute.ID]) if keys else None

    session.create_object({
        Attribute.CLASS: ObjectClass.CERTIFICATE,
        Attribute.CERTIFICATE_TYPE: CertificateType.X_509,
        Attribute.TOKEN: True,
        Attribute.LABEL: label,
        Attribute.ID: key_id or b"",
        Attribute.SUBJECT: cert.subject.public_bytes(),
        Attribute.VALUE: cert.public_bytes(serialization.Encoding.DER),
    })


def list_objects(session) -> list[dict[str, str]]:
    from pkcs11 import Attribute, ObjectClass

    rows = []
    for object_class in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY, ObjectClass.CERTIFICATE):
        for obj in session.get_objects({Attribute.CLASS: object_class}):
            row = {"class": object_class.name.lower(), "label": obj[Attribute.LABEL],
                   "id": bytes(obj[Attribute.ID]).hex()}
            if object_class == ObjectClass.PRIVATE_KEY:
                row["type"] = obj.key_type.name
                row["extractable"] = str(bool(obj[Attribute.EXTRACTABLE])).lower()
            rows.append(row)
    return rows


def token_status(library: str) -> list[dict[str, object]]:
    """Slots, tokens and the mechanisms that matter for TLS."""
    pkcs11 = _pkcs11()
    from pkcs11 import Mechanism

    interesting = {Mechanism.ECDSA: "ECDSA", Mechanism.EC_KEY_PAIR_GEN: "EC keygen",
                   Mechanism.RSA_PKCS_PSS: "RSA-PSS", Mechanism.RSA_PKCS_KEY_PAIR_GEN: "RSA keygen",
                   Mechanism.ML_DSA: "ML-DSA", Mechanism.ML_DSA_KEY_PAIR_GEN: "ML-DSA keygen",
                   Mechanism.ML_KEM: "ML-KEM"}
    try:
        lib = pkcs11.lib(library)
    except (RuntimeError, OSError) as exc:
        raise HsmError(f"cannot load the PKCS#11 library {library!r}: {exc}") from None
    out = []
    for slot in lib.get_slots(token_present=True):
        token = slot.get_token()
        mechanisms = set(slot.get_mechanisms())
        out.append({"slot": slot.slot_id, "token": token.label, "manufacturer": token.manufacturer_id,
                    "model": token.model, "serial": token.serial.decode(errors="replace")
                    if isinstance(token.serial, bytes) else str(token.serial),
                    "mechanisms": [name for mech, name in interesting.items() if mech in mechanisms]})
    return out

