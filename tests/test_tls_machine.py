"""The TLS state machine in memory: a pyOpenSSL client and our server machine, no sockets."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from qproxy.tls import openssl_ext
from qproxy.tls.machine import DataReceived, HandshakeComplete, TlsServerMachine, TlsState


@pytest.fixture(scope="module")
def server_context() -> SSL.Context:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "machine.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(SSL.TLS1_3_VERSION)
    context.use_certificate(cert)
    context.use_privatekey(key)
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    openssl_ext.set_groups(context, "X25519MLKEM768:X25519")
    return context


def _client() -> SSL.Connection:
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(SSL.TLS1_3_VERSION)
    client = SSL.Connection(context, None)
    client.set_connect_state()
    return client


def _client_output(client: SSL.Connection) -> bytes:
    try:
        client.do_handshake()
    except SSL.WantReadError:
        pass
    return openssl_ext.take_output(client)


def _received(events) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, DataReceived))


def test_request_sent_with_the_client_finished_is_delivered_and_answered(server_context):
    machine, client = TlsServerMachine(server_context), _client()
    assert machine.receive(_client_output(client)) == []
    client.bio_write(machine.data_to_send())
    client.do_handshake()
    client.send(b"GET / HTTP/1.1\r\n\r\n")
    # Finished and the first request in one read, as browsers send them.
    events = machine.receive(openssl_ext.take_output(client))
    assert isinstance(events[0], HandshakeComplete) and events[0].info.group == "X25519MLKEM768"
    assert _received(events) == b"GET / HTTP/1.1\r\n\r\n"
    assert machine.state is TlsState.OPEN
    client.bio_write(machine.data_to_send())  # session tickets, from the new BIOs onward
    for size in (1, 5000, 40000):  # small, one record, several records
        machine.send(b"r" * size)
        client.bio_write(machine.data_to_send())
        assert openssl_ext.read_plaintext(client) == (b"r" * size, False)
        view = memoryview(b"q" * size)
        while view:
            view = view[client.send(view):]
        assert _received(machine.receive(openssl_ext.take_output(client))) == b"q" * size


def test_renewing_the_bios_carries_queued_bytes_over(server_context):
    machine, client = TlsServerMachine(server_context), _client()
    hello = _client_output(client)
    server = machine._conn
    server.bio_write(hello)  # queued, not yet processed
    openssl_ext.renew_memory_bios(server)
    events = machine.receive(b"")
    assert events == []  # the ClientHello was processed from the new BIO
    client.bio_write(machine.data_to_send())
    client.do_handshake()
    events = machine.receive(openssl_ext.take_output(client))
    assert isinstance(events[0], HandshakeComplete)
