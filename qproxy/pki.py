"""Development PKI: throw-away CAs and certificates for trying qproxy and for its tests.

Two chains, because a post-quantum client should be able to verify an all-ML-DSA chain while a
classical client (OpenSSL 3.0, browsers without ML-DSA) must see only ECDSA:

    ML-DSA-65 root  -> ML-DSA-65 intermediate  -> server (ML-DSA-65)
    ECDSA P-384 root -> ECDSA P-384 intermediate -> server (ECDSA P-384), server (RSA-3072),
                                                   client (ECDSA P-256, for mutual TLS)

Server certificate files hold the leaf followed by its intermediate (a full chain, as
`use_certificate_chain_file` wants); `ca-bundle.pem` holds both roots.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, mldsa, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_SERVER_NAMES = ("localhost", "127.0.0.1", "::1")
INTERMEDIATE_CERT = "ca-ecdsa-p384-intermediate-cert.pem"
INTERMEDIATE_KEY = "ca-ecdsa-p384-intermediate-key.pem"


@dataclass(frozen=True)
class DevPki:
    """Where `init` put everything; paths are what a config file names."""

    directory: Path

    def path(self, name: str) -> Path:
        return self.directory / name

    @property
    def ca_bundle(self) -> Path:
        return self.path("ca-bundle.pem")

    @property
    def mldsa_cert(self) -> Path:
        return self.path("server-mldsa65-cert.pem")

    @property
    def mldsa_key(self) -> Path:
        return self.path("server-mldsa65-key.pem")

    @property
    def ecdsa_cert(self) -> Path:
        return self.path("server-ecdsa-p384-cert.pem")

    @property
    def ecdsa_key(self) -> Path:
        return self.path("server-ecdsa-p384-key.pem")

    @property
    def rsa_cert(self) -> Path:
        return self.path("server-rsa3072-cert.pem")

    @property
    def rsa_key(self) -> Path:
        return self.path("server-rsa3072-key.pem")

    @property
    def client_cert(self) -> Path:
        return self.path("client-cert.pem")

    @property
    def client_key(self) -> Path:
        return self.path("client-key.pem")


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "qproxy development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _algorithm_for(signing_key) -> hashes.HashAlgorithm | None:
    # ML-DSA signs the message itself; X.509 builders take no hash for it.
    if isinstance(signing_key, mldsa.MLDSA65PrivateKey):
        return None
    if isinstance(signing_key, ec.EllipticCurvePrivateKey) and signing_key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def _san(names: tuple[str, ...]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def issue(
    subject: str,
    public_key,
    issuer_name: x509.Name,
    issuer_key,
    *,
    ca: bool,
    path_length: int | None = None,
    server_names: tuple[str, ...] = (),
    client: bool = False,
    days: int = 825,
) -> x509.Certificate:
    """Issue one certificate. Exposed for tests that need odd certificates (expired, wrong CA)."""
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False,
                key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if server_names:
            builder = builder.add_extension(_san(server_names), critical=False)
    if issuer_key.public_key() != public_key:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    return builder.sign(issuer_key, _algorithm_for(issuer_key))


def write_key(path: Path, key) -> None:
    """Write a private key as unencrypted PKCS#8 PEM, mode 0600 from the first byte."""
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)


def write_certs(path: Path, *certs: x509.Certificate) -> None:
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    os.chmod(path, 0o644)


def _chain(root_cn: str, key_factory) -> tuple[x509.Certificate, x509.Certificate, object]:
    root_key = key_factory()
    root = issue(root_cn + " Root CA", root_key.public_key(), _name(root_cn + " Root CA"),
                 root_key, ca=True, path_length=1, days=3650)
    inter_key = key_factory()
    inter = issue(root_cn + " Intermediate CA", inter_key.public_key(), root.subject, root_key,
                  ca=True, path_length=0, days=1825)
    return root, inter, inter_key


def init(directory: str | os.PathLike[str],
         server_names: tuple[str, ...] = DEFAULT_SERVER_NAMES) -> DevPki:
    """Create (or replace) a development PKI in `directory`."""
    pki = DevPki(Path(directory))
    pki.directory.mkdir(parents=True, exist_ok=True)

    pq_root, pq_inter, pq_inter_key = _chain("qproxy dev ML-DSA-65", mldsa.MLDSA65PrivateKey.generate)
    ec_root, ec_inter, ec_inter_key = _chain(
        "qproxy dev ECDSA P-384", lambda: ec.generate_private_key(ec.SECP384R1()))
    write_certs(pki.path("ca-mldsa65-cert.pem"), pq_root)
    write_certs(pki.path("ca-ecdsa-p384-cert.pem"), ec_root)
    # Kept so that `qproxy pki sign-csr` can issue certificates for keys made elsewhere (an HSM).
    write_certs(pki.path(INTERMEDIATE_CERT), ec_inter)
    write_key(pki.path(INTERMEDIATE_KEY), ec_inter_key)
    write_certs(pki.ca_bundle, pq_root, ec_root)

    servers = (
        (pki.mldsa_cert, pki.mldsa_key, mldsa.MLDSA65PrivateKey.generate(), pq_inter, pq_inter_key),
        (pki.ecdsa_cert, pki.ecdsa_key, ec.generate_private_key(ec.SECP384R1()), ec_inter, ec_inter_key),
        (pki.rsa_cert, pki.rsa_key, rsa.generate_private_key(65537, 3072), ec_inter, ec_inter_key),
    )
    primary = server_names[0] if server_names else "localhost"
    for cert_path, key_path, key, inter, inter_key in servers:
        leaf = issue(primary, key.public_key(), inter.subject, inter_key, ca=False,
                     server_names=server_names)
        write_key(key_path, key)
        write_certs(cert_path, leaf, inter)

    client_key = ec.generate_private_key(ec.SECP256R1())
    client = issue("qproxy dev client", client_key.public_key(), ec_inter.subject, ec_inter_key,
                   ca=False, client=True)
    write_key(pki.client_key, client_key)
    write_certs(pki.client_cert, client, ec_inter)
    return pki


class CsrError(ValueError):
    pass


def sign_csr(directory: str | os.PathLike[str], csr_pem: bytes,
             server_names: tuple[str, ...] = (), days: int = 825) -> bytes:
    """Issue a server certificate for a CSR with the development ECDSA intermediate CA.

    Returns the chain (leaf, intermediate) as PEM, ready for `certificates.*.cert`."""
    pki = DevPki(Path(directory))
    request = x509.load_pem_x509_csr(csr_pem)
    if not request.is_signature_valid:
        raise CsrError("the CSR's signature does not verify: it was not signed by its own key")
    inter = x509.load_pem_x509_certificate(pki.path(INTERMEDIATE_CERT).read_bytes())
    inter_key = serialization.load_pem_private_key(pki.path(INTERMEDIATE_KEY).read_bytes(), None)
    names = server_names
    if not names:
        try:
            san = request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            names = tuple(str(v) for v in san.get_values_for_type(x509.DNSName)) + tuple(
                str(v) for v in san.get_values_for_type(x509.IPAddress))
        except x509.ExtensionNotFound:
            names = DEFAULT_SERVER_NAMES
    common = request.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    leaf = issue(str(common[0].value) if common else names[0], request.public_key(),
                 inter.subject, inter_key, ca=False, server_names=names, days=days)
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, inter))
