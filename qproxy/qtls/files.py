"""Checks of certificate, key and CA files with `cryptography`, before OpenSSL loads them:
OpenSSL's own errors ("PEM lib") do not tell a person what is wrong."""

from __future__ import annotations

import os
from typing import Union

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from ..config.files import read_regular
from ..errors import ConfigError
from .constants import QTLS_FILETYPE_PEM
from .errors import QTLSConfigError

PathLike = Union[str, "os.PathLike[str]"]


def read_file(path: PathLike, what: str) -> bytes:
    """A regular file of at most 1 MiB: a key path naming /dev/zero or a FIFO must be an
    error, not a process that reads until the OOM killer comes (or waits for a writer)."""
    name = os.fspath(path)
    try:
        return read_regular(name, "", what)
    except ConfigError as exc:
        raise QTLSConfigError(exc.problem, name) from None


def check_pem_certificates(path: PathLike, what: str) -> list[x509.Certificate]:
    """The certificates of a PEM file; QTLSConfigError if it holds none."""
    data = read_file(path, what)
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise QTLSConfigError(f"{os.fspath(path)!r} holds no PEM certificate",
                              os.fspath(path)) from None


_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def leaf_public_key(path: PathLike, file_type: int) -> bytes | None:
    """SubjectPublicKeyInfo DER of the file's first certificate (None if cryptography cannot
    read it; OpenSSL then has the last word)."""
    data = read_file(path, "certificate")
    try:
        if file_type == QTLS_FILETYPE_PEM:
            leaf = x509.load_pem_x509_certificates(data)[0]
        else:
            leaf = x509.load_der_x509_certificate(data)
        return leaf.public_key().public_bytes(*_SPKI)
    except (ValueError, UnsupportedAlgorithm):
        return None


def check_private_key(path: PathLike, file_type: int) -> bytes:
    """The key's SubjectPublicKeyInfo DER; QTLSConfigError unless the file holds an
    unencrypted private key cryptography reads."""
    name = os.fspath(path)
    data = read_file(name, "private key")
    try:
        if file_type == QTLS_FILETYPE_PEM:
            key = serialization.load_pem_private_key(data, password=None)
        else:
            key = serialization.load_der_private_key(data, password=None)
    except TypeError:
        raise QTLSConfigError(f"{name!r} is encrypted: give an unencrypted key (mode 0600) "
                              "or keep it in an HSM", name) from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise QTLSConfigError(f"{name!r} is not a usable private key ({exc})", name) from None
    return key.public_key().public_bytes(*_SPKI)
