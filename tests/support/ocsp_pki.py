"""A test CA that answers OCSP: certificates whose AIA names a local responder, and responses
made to order (good, revoked, stale, forged) by a small responder built on cryptography.

`OcspCa.write_openssl_index` also writes what Debian's `openssl ocsp` needs to answer for the
same CA (index.txt, responder certificate and key), so a test can use the real thing.
"""

from __future__ import annotations

import datetime as dt
import http.server
import threading
from dataclasses import dataclass, field
from pathlib import Path
import subprocess
import tempfile
from typing import Any, Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, mldsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

NOW = dt.datetime.now(dt.timezone.utc)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def new_key(kind: str) -> Any:
    if kind == "mldsa65":
        return mldsa.MLDSA65PrivateKey.generate()
    if kind == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    return ec.generate_private_key(ec.SECP384R1())


def _hash_for(key: Any) -> hashes.HashAlgorithm | None:
    return None if isinstance(key, mldsa.MLDSA65PrivateKey) else hashes.SHA384()


def _pem_key(key: Any) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class Leaf:
    cert: x509.Certificate
    key: Any
    cert_path: Path
    key_path: Path


@dataclass
class OcspCa:
    """A root CA (ECDSA P-384 or ML-DSA-65) issuing server certificates directly."""

    directory: Path
    url: str
    kind: str = "p384"
    cert: x509.Certificate = field(init=False)
    key: Any = field(init=False)
    leaves: dict[str, Leaf] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.key = new_key(self.kind)
        self.cert = (self._builder(_name(f"OCSP test CA {self.kind}"), self.key.public_key(),
                                   days=30)
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
                     .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                                  False, False), True)
                     .sign(self.key, _hash_for(self.key)))
        (self.directory / "ca.pem").write_bytes(_pem(self.cert))

    @property
    def ca_path(self) -> Path:
        return self.directory / "ca.pem"

    def _builder(self, subject: x509.Name, public_key: Any, days: int,
                 issuer: x509.Name | None = None) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(subject)
                .issuer_name(issuer or subject).public_key(public_key)
                .serial_number(x509.random_serial_number())
                .not_valid_before(NOW - dt.timedelta(hours=1))
                .not_valid_after(NOW + dt.timedelta(days=days)))

    def issue_leaf(self, name: str, key_kind: str = "p384", must_staple: bool = False,
                   aia: bool = True) -> Leaf:
        """A server certificate for localhost; its file holds leaf + CA (a full chain)."""
        key = new_key(key_kind)
        builder = (self._builder(_name("localhost"), key.public_key(), 10,
                                 issuer=self.cert.subject)
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]),
                                  False)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                                  False))
        if aia:
            builder = builder.add_extension(x509.AuthorityInformationAccess([
                x509.AccessDescription(AuthorityInformationAccessOID.OCSP,
                                       x509.UniformResourceIdentifier(self.url))]), False)
        if must_staple:
            builder = builder.add_extension(
                x509.TLSFeature([x509.TLSFeatureType.status_request]), False)
        cert = builder.sign(self.key, _hash_for(self.key))
        cert_path = self.directory / f"{name}-cert.pem"
        key_path = self.directory / f"{name}-key.pem"
        cert_path.write_bytes(_pem(cert) + _pem(self.cert))
        key_path.write_bytes(_pem_key(key))
        key_path.chmod(0o600)
        leaf = Leaf(cert, key, cert_path, key_path)
        self.leaves[name] = leaf
        return leaf

    def responder(self, issuer_key: Any = None, issuer_cert: x509.Certificate | None = None,
                  ocsp_signing: bool = True) -> tuple[x509.Certificate, Any]:
        """A delegated responder certificate (id-kp-OCSPSigning unless told otherwise),
        signed by this CA or by the given other one."""
        key = new_key("p256")
        builder = self._builder(_name("OCSP responder"), key.public_key(), 10,
                                issuer=(issuer_cert or self.cert).subject)
        if ocsp_signing:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), False)
        signing_key = issuer_key or self.key
        return builder.sign(signing_key, _hash_for(signing_key)), key

    def response(self, leaf: Leaf, status: str = "good", this_update: dt.datetime | None = None,
                 next_update: dt.timedelta | dt.datetime | None = dt.timedelta(hours=1),
                 signer: tuple[x509.Certificate, Any] | None = None) -> bytes:
        """A DER response about `leaf`; signed by the CA unless `signer` (cert, key) is given.
        `next_update` is a datetime, an offset from this_update, or None (left out)."""
        this_update = this_update or dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
        if isinstance(next_update, dt.timedelta):
            next_update = this_update + next_update
        cert_status = {"good": ocsp.OCSPCertStatus.GOOD, "revoked": ocsp.OCSPCertStatus.REVOKED,
                       "unknown": ocsp.OCSPCertStatus.UNKNOWN}[status]
        revoked = status == "revoked"
        builder = ocsp.OCSPResponseBuilder().add_response(
            cert=leaf.cert, issuer=self.cert, algorithm=hashes.SHA1(), cert_status=cert_status,
            this_update=this_update, next_update=next_update,
            revocation_time=this_update - dt.timedelta(days=1) if revoked else None,
            revocation_reason=x509.ReasonFlags.key_compromise if revoked else None)
        if signer is None:
            builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, self.cert)
            key = self.key
        else:
            builder = builder.responder_id(ocsp.OCSPResponderEncoding.NAME,
                                           signer[0]).certificates([signer[0]])
            key = signer[1]
        return builder.sign(key, _hash_for(key)).public_bytes(serialization.Encoding.DER)

    def write_openssl_index(self, revoked: tuple[str, ...] = ()) -> dict[str, Path]:
        """index.txt (+ responder cert and key) for `openssl ocsp -index`: every issued leaf,
        the named ones revoked."""
        lines = []
        stamp = (NOW - dt.timedelta(days=1)).strftime("%y%m%d%H%M%SZ")
        for name, leaf in self.leaves.items():
            expiry = leaf.cert.not_valid_after_utc.strftime("%y%m%d%H%M%SZ")
            serial = f"{leaf.cert.serial_number:X}"
            if len(serial) % 2:
                serial = "0" + serial
            subject = "/CN=localhost"
            if name in revoked:
                lines.append(f"R\t{expiry}\t{stamp},keyCompromise\t{serial}\tunknown\t{subject}")
            else:
                lines.append(f"V\t{expiry}\t\t{serial}\tunknown\t{subject}")
        index = self.directory / "index.txt"
        index.write_text("".join(line + "\n" for line in lines))
        rcert, rkey = self.responder()
        (self.directory / "rsigner.pem").write_bytes(_pem(rcert))
        (self.directory / "rkey.pem").write_bytes(_pem_key(rkey))
        return {"index": index, "rsigner": self.directory / "rsigner.pem",
                "rkey": self.directory / "rkey.pem", "ca": self.ca_path}


def openssl_ocsp_answerer(openssl: str, files: dict[str, Path],
                          valid_minutes: int = 5) -> Callable[[bytes], bytes]:
    """Answers with Debian's `openssl ocsp` (OpenSSL 3.0) from an index, one process per
    request (-reqin/-respout). Its own server mode binds every interface (no address option),
    and tests listen on 127.0.0.1 only: the HTTP part is ScriptedResponder's."""

    def answer(request: bytes) -> bytes:
        with tempfile.TemporaryDirectory() as work:
            req, resp = Path(work, "req.der"), Path(work, "resp.der")
            req.write_bytes(request)
            subprocess.run([openssl, "ocsp", "-index", str(files["index"]), "-rsigner",
                            str(files["rsigner"]), "-rkey", str(files["rkey"]), "-CA",
                            str(files["ca"]), "-nmin", str(valid_minutes), "-reqin", str(req),
                            "-respout", str(resp)], check=True, timeout=30,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            return resp.read_bytes()

    return answer


class ScriptedResponder:
    """An HTTP OCSP responder on 127.0.0.1 whose answer the test sets: DER bytes to send, or
    None for 'down' (HTTP 503), or `answer_with(request DER) -> response DER`. Counts the
    requests it received."""

    def __init__(self, port: int) -> None:
        self.answer: bytes | None = None
        self.answer_with: Callable[[bytes], bytes] | None = None
        self.requests = 0
        self.served: list[bytes] = []
        self.got_request = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(min(length, 65536))
                try:
                    ocsp.load_der_ocsp_request(body)
                except ValueError:
                    self.send_error(400)
                    return
                outer.requests += 1
                answer = outer.answer_with(body) if outer.answer_with else outer.answer
                if answer is None:
                    self.send_error(503)
                else:
                    outer.served.append(answer)
                    self.send_response(200)
                    self.send_header("Content-Type", "application/ocsp-response")
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                outer.got_request.set()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "ScriptedResponder":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
