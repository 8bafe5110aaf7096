"""The TLS machine against an independent TLS stack in memory: Python's `ssl` (its own
OpenSSL binding, MemoryBIO), as mitmproxy tests its pyOpenSSL layer. No sockets."""

from __future__ import annotations

import datetime
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from qproxy.tls import openssl_ext
from qproxy.tls.machine import (
    DataReceived,
    HandshakeComplete,
    PeerClosed,
    TlsServerMachine,
    TlsState,
)


@pytest.fixture(scope="module")
def server_context() -> SSL.Context:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stdlib.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(SSL.TLS1_3_VERSION)
    context.use_certificate(cert)
    context.use_privatekey(key)
    return context


class StdlibClient:
    def __init__(self) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="stdlib.test")

    def take(self) -> bytes:
        return self.outgoing.read()


def _handshake(machine: TlsServerMachine, client: StdlibClient) -> list:
    events: list = []
    for _ in range(5):
        try:
            client.tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        else:
            events += machine.receive(client.take())
            client.incoming.write(machine.data_to_send())
            return events
        events += machine.receive(client.take())
        client.incoming.write(machine.data_to_send())
    raise AssertionError("no handshake")


def test_handshake_and_data_both_ways(server_context):
    machine, client = TlsServerMachine(server_context), StdlibClient()
    events = _handshake(machine, client)
    assert any(isinstance(e, HandshakeComplete) for e in events)
    assert machine.state is TlsState.OPEN and machine.info.version == "TLSv1.3"
    client.tls.write(b"GET / HTTP/1.1\r\n\r\n")
    got = machine.receive(client.take())
    assert b"".join(e.data for e in got if isinstance(e, DataReceived)) == b"GET / HTTP/1.1\r\n\r\n"
    machine.send(b"HTTP/1.1 200 OK\r\n\r\n")
    client.incoming.write(machine.data_to_send())
    assert client.tls.read(1000) == b"HTTP/1.1 200 OK\r\n\r\n"


def test_request_then_close_notify_is_answered_then_closed(server_context):
    """Defect 5 at the machine: after the peer's close_notify the machine can still send
    (PEER_CLOSED), then queues its own close_notify."""
    machine, client = TlsServerMachine(server_context), StdlibClient()
    _handshake(machine, client)
    client.tls.write(b"GET / HTTP/1.0\r\n\r\n")
    try:
        client.tls.unwrap()  # close_notify; waits for ours
    except ssl.SSLWantReadError:
        pass
    events = machine.receive(client.take())
    assert isinstance(events[-1], PeerClosed)
    assert machine.state is TlsState.PEER_CLOSED
    # What follows the close_notify is not kept: an attacker cannot fill our input buffer
    # while the answer is being made.
    assert machine.receive(b"\x17\x03\x03" + b"\x00" * 60_000) == []
    assert openssl_ext.pending_input(machine._conn) == 0
    machine.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    machine.close()
    assert machine.state is TlsState.CLOSED
    client.incoming.write(machine.data_to_send())
    assert client.tls.read(1000) == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    with pytest.raises(ssl.SSLZeroReturnError):
        client.tls.read(1000)  # then our close_notify
    with pytest.raises(RuntimeError):
        machine.send(b"more")  # nothing after our close_notify
