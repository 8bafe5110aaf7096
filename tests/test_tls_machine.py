"""The TLS state machine in memory: a pyOpenSSL client and our server machine, no sockets."""

from __future__ import annotations

import ssl

import pytest
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL

from qproxy.tls import openssl_ext
from qproxy.tls.machine import (
    DataReceived,
    HandshakeComplete,
    PeerClosed,
    TlsFailure,
    TlsServerMachine,
    TlsState,
    info_callback,
)
from tests.support import memory_tls


@pytest.fixture(scope="module")
def server_context() -> SSL.Context:
    context = memory_tls.server_context("machine.test")
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


# -- against an independent TLS stack: Python's ssl (the system OpenSSL) over memory BIOs ------
# Where the algorithms overlap (classical groups, an ECDSA certificate: the stdlib has no PQC),
# as mitmproxy tests its pyOpenSSL layer. Two TLS implementations, no sockets.

@pytest.fixture(scope="module")
def stdlib_pair(tmp_path_factory):
    """(server SSL.Context, client ssl.SSLContext trusting its certificate)."""
    cert, key = memory_tls.self_signed("machine.test")
    server = SSL.Context(SSL.TLS_METHOD)
    server.set_min_proto_version(SSL.TLS1_3_VERSION)
    server.use_certificate(cert)
    server.use_privatekey(key)
    openssl_ext.set_groups(server, "X25519MLKEM768:X25519:P-256")
    server.set_info_callback(info_callback)  # as the daemon's contexts do: names sent alerts
    server.set_alpn_select_callback(lambda conn, protos: b"http/1.1" if b"http/1.1" in protos
                                    else SSL.NO_OVERLAPPING_PROTOCOLS)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(cadata=cert.public_bytes(serialization.Encoding.PEM).decode())
    client.set_alpn_protocols(["http/1.1"])
    return server, client


class StdlibClient:
    def __init__(self, context: ssl.SSLContext) -> None:
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="machine.test")

    def handshake(self, machine: TlsServerMachine) -> list:
        events = []
        for _ in range(10):  # TLS 1.3: two flights each way at most
            try:
                self.tls.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            events += machine.receive(self.outgoing.read())
            self.incoming.write(machine.data_to_send())
            if done:
                return events
        raise AssertionError("handshake did not finish")

    def read_all(self) -> bytes:
        out = bytearray()
        while True:
            try:
                out += self.tls.read(65536)
            except ssl.SSLWantReadError:
                return bytes(out)


def _handshaken(stdlib_pair) -> tuple[TlsServerMachine, StdlibClient, list]:
    server_context, client_context = stdlib_pair
    machine, client = TlsServerMachine(server_context), StdlibClient(client_context)
    return machine, client, client.handshake(machine)


def test_stdlib_client_handshake_agrees_on_what_was_negotiated(stdlib_pair):
    machine, client, events = _handshaken(stdlib_pair)
    assert machine.state is TlsState.OPEN
    info = next(e.info for e in events if isinstance(e, HandshakeComplete))
    assert info.version == client.tls.version() == "TLSv1.3"
    assert info.cipher == client.tls.cipher()[0]
    assert info.group == "X25519"  # the stdlib's OpenSSL offers no hybrid group
    assert info.alpn == client.tls.selected_alpn_protocol() == "http/1.1"
    assert info.server_name == "machine.test"
    assert not info.resumed and info.peer_cert is None


@pytest.mark.parametrize("size", [1, 16384, 16385, 200_000])
def test_stdlib_client_and_machine_carry_data_both_ways(stdlib_pair, size):
    machine, client, _ = _handshaken(stdlib_pair)
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    client.tls.write(payload)
    assert _received(machine.receive(client.outgoing.read())) == payload
    machine.send(payload[::-1])
    client.incoming.write(machine.data_to_send())
    assert client.read_all() == payload[::-1]


def test_close_notify_from_the_stdlib_client_is_peer_closed(stdlib_pair):
    machine, client, _ = _handshaken(stdlib_pair)
    client.read_all()  # the session tickets
    with pytest.raises(ssl.SSLWantReadError):  # ours sent, it waits for the server's
        client.tls.unwrap()
    events = machine.receive(client.outgoing.read())
    assert [type(e) for e in events] == [PeerClosed]
    # Closed by the peer only: we may still send (the answer in hand), then our close_notify.
    assert machine.state is TlsState.PEER_CLOSED


def test_close_notify_is_answered_with_close_notify(stdlib_pair):
    machine, client, _ = _handshaken(stdlib_pair)
    client.read_all()
    with pytest.raises(ssl.SSLWantReadError):
        client.tls.unwrap()
    machine.receive(client.outgoing.read())
    machine.close()  # what TlsServerProtocol does on PeerClosed
    client.incoming.write(machine.data_to_send())
    client.tls.unwrap()  # completes only with the server's close_notify


def test_close_notify_from_the_machine_ends_the_stdlib_reader_cleanly(stdlib_pair):
    machine, client, _ = _handshaken(stdlib_pair)
    machine.send(b"last words")
    machine.close()
    assert machine.state is TlsState.CLOSED
    client.incoming.write(machine.data_to_send())
    assert client.tls.read(1024) == b"last words"
    # b"" is the stdlib's answer to close_notify; a bare end raises SSLEOFError instead.
    client.incoming.write_eof()
    assert client.tls.read(1024) == b""


def test_corrupted_record_fails_with_bad_record_mac_and_the_client_hears_it(stdlib_pair):
    machine, client, _ = _handshaken(stdlib_pair)
    client.read_all()
    client.tls.write(b"GET / HTTP/1.1\r\n\r\n")
    record = bytearray(client.outgoing.read())
    record[-1] ^= 0x01  # in the AEAD tag
    with pytest.raises(TlsFailure) as failure:
        machine.receive(bytes(record))
    assert failure.value.alert == "bad_record_mac" and not failure.value.during_handshake
    assert machine.state is TlsState.FAILED
    client.incoming.write(machine.data_to_send())
    with pytest.raises(ssl.SSLError) as heard:
        client.tls.read(1024)
    assert "BAD_RECORD_MAC" in str(heard.value).upper()
    assert machine.receive(b"more") == []  # a failed machine takes nothing further


def test_request_then_close_notify_is_answered_then_closed(stdlib_pair):
    """Issue 11 defect 5 at the machine: after the peer's close_notify (a TLS 1.3 half-close)
    it can still send (PEER_CLOSED), then queues its own close_notify."""
    machine, client, _ = _handshaken(stdlib_pair)
    client.read_all()
    client.tls.write(b"GET / HTTP/1.0\r\n\r\n")
    with pytest.raises(ssl.SSLWantReadError):
        client.tls.unwrap()  # close_notify; waits for ours
    events = machine.receive(client.outgoing.read())
    assert _received(events) == b"GET / HTTP/1.0\r\n\r\n" and isinstance(events[-1], PeerClosed)
    assert machine.state is TlsState.PEER_CLOSED
    # What follows the close_notify is not kept: a peer cannot fill our input buffer while
    # the answer is being made.
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
