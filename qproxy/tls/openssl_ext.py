"""The few OpenSSL calls pyOpenSSL does not wrap.

This is the only module that touches pyOpenSSL's private binding (`OpenSSL._util`,
`Context._context`, `Connection._ssl`): if pyOpenSSL changes its internals, this is the one
place to mend.
"""

from __future__ import annotations

import ipaddress

from OpenSSL import SSL, crypto
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib


class OpenSSLCallError(ValueError):
    """OpenSSL refused a list (unknown group or signature algorithm name)."""


def _drain_error_queue() -> str:
    reasons = []
    while True:
        code = _lib.ERR_get_error()
        if code == 0:
            break
        reason = _lib.ERR_reason_error_string(code)
        reasons.append(_ffi.string(reason).decode() if reason != _ffi.NULL else hex(code))
    return "; ".join(reasons)


def set_groups(context: SSL.Context, groups: str) -> None:
    """Key-exchange groups, colon separated, in preference order (SSL_CTX_set1_groups_list)."""
    if _lib.SSL_CTX_set1_curves_list(context._context, groups.encode()) != 1:
        raise OpenSSLCallError(f"OpenSSL rejected groups {groups!r}: {_drain_error_queue()}")


def set_connection_groups(connection: SSL.Connection, groups: str) -> None:
    if _lib.SSL_set1_curves_list(connection._ssl, groups.encode()) != 1:
        raise OpenSSLCallError(f"OpenSSL rejected groups {groups!r}: {_drain_error_queue()}")


def set_sigalgs(context: SSL.Context, sigalgs: str) -> None:
    """Signature algorithms this end accepts and uses, colon separated (SSL_CTX_set1_sigalgs_list)."""
    if _lib.SSL_CTX_set1_sigalgs_list(context._context, sigalgs.encode()) != 1:
        raise OpenSSLCallError(
            f"OpenSSL rejected signature algorithms {sigalgs!r}: {_drain_error_queue()}"
        )


def negotiated_group(connection: SSL.Connection) -> str | None:
    """The key-exchange group of an established connection, e.g. 'X25519MLKEM768'."""
    name = _lib.SSL_get0_group_name(connection._ssl)
    return _ffi.string(name).decode() if name != _ffi.NULL else None


def session_reused(connection: SSL.Connection) -> bool:
    return bool(_lib.SSL_session_reused(connection._ssl))


# X509* of a presented certificate -> (its DER, a reference that keeps it alive). The handful
# of certificates a server presents are shared by every connection: looking them up by address
# spares a copy and a DER encoding (5.5 KB for ML-DSA-65) per handshake. The held reference
# keeps the address from being reused by another certificate.
_own_certificates: dict[int, tuple[bytes, crypto.X509]] = {}


def own_certificate_der(connection: SSL.Connection) -> bytes | None:
    """DER of the certificate this end presented: tells which of several pairs OpenSSL chose.

    The same bytes object is returned for every connection that presented that certificate."""
    cert = _lib.SSL_get_certificate(connection._ssl)
    if cert == _ffi.NULL:
        return None
    address = int(_ffi.cast("uintptr_t", cert))
    known = _own_certificates.get(address)
    if known is None:
        if _lib.X509_up_ref(cert) != 1:
            return None
        held = crypto.X509._from_raw_x509_ptr(cert)  # frees its reference if ever dropped
        known = (crypto.dump_certificate(crypto.FILETYPE_ASN1, held), held)
        _own_certificates[address] = known
    return known[0]


def verify_result(connection: SSL.Connection) -> int:
    """X509_V_OK (0) or the verification error code of the peer's chain."""
    return int(_lib.SSL_get_verify_result(connection._ssl))


def verify_result_string(code: int) -> str:
    return _ffi.string(_lib.X509_verify_cert_error_string(code)).decode()


def openssl_version() -> str:
    return SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()


def set_ciphersuites(context: SSL.Context, suites: str) -> None:
    """TLS 1.3 cipher suites, colon separated (pyOpenSSL only wraps the TLS 1.2 cipher list)."""
    if _lib.SSL_CTX_set_ciphersuites(context._context, suites.encode()) != 1:
        raise OpenSSLCallError(f"OpenSSL rejected cipher suites {suites!r}: {_drain_error_queue()}")


def set_verify_host(connection: SSL.Connection, name: str) -> None:
    """Make chain verification also check that the peer certificate covers `name`.

    A DNS name or an IP address literal; a mismatch shows up in `verify_result` as
    X509_V_ERR_HOSTNAME_MISMATCH / X509_V_ERR_IP_ADDRESS_MISMATCH (SSL_set1_host, SSL_set1_ip)."""
    param = _lib.SSL_get0_param(connection._ssl)
    try:
        packed = ipaddress.ip_address(name).packed
    except ValueError:
        ok = _lib.X509_VERIFY_PARAM_set1_host(param, name.encode(), 0)
    else:
        ok = _lib.X509_VERIFY_PARAM_set1_ip(param, packed, len(packed))
    if ok != 1:
        raise OpenSSLCallError(f"OpenSSL rejected host name {name!r}: {_drain_error_queue()}")


# One buffer for every connection of the process (the event loop is single-threaded and the
# bytes are copied out at once): no 256 KiB allocation per read.
IO_BUFFER_SIZE = 256 * 1024
_io_buffer = _ffi.new_allocator(should_clear_after_alloc=False)("char[]", IO_BUFFER_SIZE)


def take_output(connection: SSL.Connection) -> bytes:
    """Everything OpenSSL has queued for the network (records, alerts); b"" if nothing.

    Unlike `Connection.bio_read`, an empty queue is not an exception: this runs after every
    write and every read."""
    bio = connection._from_ssl
    chunks = []
    while True:
        count = _lib.BIO_read(bio, _io_buffer, IO_BUFFER_SIZE)
        if count <= 0:
            break
        chunks.append(_ffi.buffer(_io_buffer, count)[:])
        if count < IO_BUFFER_SIZE:
            break
    if not chunks:
        return b""
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def pending_input(connection: SSL.Connection) -> int:
    """Bytes received and not yet consumed by OpenSSL (in the input memory BIO)."""
    pointer = _ffi.new("char **")
    return int(_lib.BIO_get_mem_data(connection._into_ssl, pointer))


def feed_ciphertext(connection: SSL.Connection, data: bytes) -> None:
    """Bytes from the network into the connection's input BIO (a memory BIO cannot refuse
    them short of running out of memory); pyOpenSSL's `bio_write` without its checks."""
    if _lib.BIO_write(connection._into_ssl, data, len(data)) != len(data):
        raise MemoryError("OpenSSL could not buffer the received bytes")


# SSL_write in pyOpenSSL's partial-write mode returns after each batch of records.
_WRITE_BATCH = 16384


def write_plaintext(connection: SSL.Connection, data: bytes) -> None:
    """Encrypt all of `data`; the records wait in the output BIO. A failure raises
    pyOpenSSL's `SSL.Error`."""
    ssl = connection._ssl
    if len(data) <= _WRITE_BATCH:
        count = _lib.SSL_write(ssl, data, len(data))
        if count <= 0:
            connection._raise_ssl_error(ssl, count)
        return
    with _ffi.from_buffer(data) as buffer:
        offset, total = 0, len(data)
        while offset < total:
            count = _lib.SSL_write(ssl, buffer + offset, total - offset)
            if count <= 0:
                connection._raise_ssl_error(ssl, count)
                return
            offset += count


def read_plaintext(connection: SSL.Connection) -> tuple[bytes, bool]:
    """Decrypt what has arrived: (application data, whether the peer sent close_notify).

    Running out of input is the normal end, not an exception as with `Connection.recv`;
    a real failure raises pyOpenSSL's `SSL.Error`."""
    ssl = connection._ssl
    chunks = []
    closed = False
    while True:
        count = _lib.SSL_read(ssl, _io_buffer, IO_BUFFER_SIZE)
        if count > 0:
            chunks.append(_ffi.buffer(_io_buffer, count)[:])
            continue
        error = _lib.SSL_get_error(ssl, count)
        if error == _lib.SSL_ERROR_WANT_READ:
            break
        if error == _lib.SSL_ERROR_ZERO_RETURN:
            closed = True
            break
        connection._raise_ssl_error(ssl, count)  # raises the matching SSL.Error
        break
    data = b"" if not chunks else chunks[0] if len(chunks) == 1 else b"".join(chunks)
    return data, closed



def _move_pending(source, target) -> None:
    while True:
        count = _lib.BIO_read(source, _io_buffer, IO_BUFFER_SIZE)
        if count <= 0:
            return
        _lib.BIO_write(target, _io_buffer, count)


def renew_memory_bios(connection: SSL.Connection) -> None:
    """Give the connection new, empty memory BIOs, carrying over any bytes still queued.

    A memory BIO keeps the capacity of the largest flight it ever held (the ClientHello with
    its key shares, our certificate flight): about 2.3 KB per classical connection and 5.3 KB
    per hybrid one that an idle connection would otherwise carry for its whole life."""
    into = _lib.BIO_new(_lib.BIO_s_mem())
    out = _lib.BIO_new(_lib.BIO_s_mem())
    if into == _ffi.NULL or out == _ffi.NULL:
        for bio in (into, out):
            if bio != _ffi.NULL:
                _lib.BIO_free(bio)
        return  # out of memory: keep the old ones, which still work
    _move_pending(connection._into_ssl, into)
    _move_pending(connection._from_ssl, out)
    _lib.SSL_set_bio(connection._ssl, into, out)  # frees the old pair
    connection._into_ssl = into
    connection._from_ssl = out
