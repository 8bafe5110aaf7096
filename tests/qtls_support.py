"""Shared pieces of the qproxy.qtls tests: the documented examples, servers in threads, PKIs."""

from __future__ import annotations

import datetime as dt
import re
import threading
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from qproxy.qtls import QTLSConnection, QTLSServer

DOC = (Path(__file__).resolve().parents[1] / "docs" / "qtls.md").read_text()


def doc_example(heading: str, replacements: dict[str, str] | None = None) -> str:
    """The first python block after `### heading` in docs/qtls.md, with paths replaced."""
    section = DOC.split(f"### {heading}\n", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]
    for old, new in (replacements or {}).items():
        code = code.replace(old, new)
    return code


class ThreadedServer:
    """A QTLSServer whose connections each get `handler` in their own thread."""

    def __init__(self, server: QTLSServer, handler: Callable[[QTLSConnection], None]) -> None:
        self.server = server
        self.handler = handler
        self.errors: list[BaseException] = []
        self.threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    @property
    def port(self) -> int:
        return self.server.port

    def _accept(self) -> None:
        for conn in self.server.accept_connections():
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn: QTLSConnection) -> None:
        try:
            self.handler(conn)
        except BaseException as exc:  # reported by the test through .errors
            self.errors.append(exc)
        finally:
            conn.shutdown()

    def close(self) -> None:
        self.server.close()
        self._acceptor.join(10)
        for thread in self.threads:
            thread.join(10)


def echo(conn: QTLSConnection) -> None:
    data = conn.read(65536)
    conn.write(b"echo:" + data)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def write_ca_and_leaf(directory: Path, *, names: tuple[str, ...] = ("localhost",),
                      not_before: dt.datetime | None = None,
                      not_after: dt.datetime | None = None) -> dict[str, Path]:
    """A one-level test PKI (ECDSA P-256): ca.pem, cert.pem (leaf), key.pem."""
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("qtls test CA")).issuer_name(_name("qtls test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(days=400)).not_valid_after(now + dt.timedelta(days=400))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(_name(names[0])).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - dt.timedelta(days=1))
            .not_valid_after(not_after or now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"ca": directory / "ca.pem", "cert": directory / "cert.pem", "key": directory / "key.pem"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return paths
