"""Client certificates minted for a test from the development PKI's ECDSA intermediate CA
(the one `pki init` keeps for `pki sign-csr`): any subject CN / OU, DNS and URI SANs."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from qproxy import pki


def mint_client(dev: pki.DevPki, directory: Path, cn: str, *, ou: str | None = None,
                dns: tuple[str, ...] = (), uri: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """(certificate chain file, key file) for a client certificate the dev CA vouches for."""
    inter = x509.load_pem_x509_certificate(dev.path(pki.INTERMEDIATE_CERT).read_bytes())
    inter_key = serialization.load_pem_private_key(dev.path(pki.INTERMEDIATE_KEY).read_bytes(),
                                                   None)
    key = ec.generate_private_key(ec.SECP256R1())
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "qproxy tests")]
    if ou:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou))
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder().subject_name(x509.Name(attributes))
        .issuer_name(inter.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns]
    names += [x509.UniformResourceIdentifier(u) for u in uri]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(inter_key, hashes.SHA384())
    directory.mkdir(parents=True, exist_ok=True)
    stem = directory / cn.replace(" ", "_")
    cert_path, key_path = stem.with_suffix(".cert.pem"), stem.with_suffix(".key.pem")
    pki.write_certs(cert_path, cert, inter)
    pki.write_key(key_path, key)
    return cert_path, key_path
