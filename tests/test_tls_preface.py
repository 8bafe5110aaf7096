"""A load balancer's PROXY header read before TLS (server.proxy_protocol), in-process: the
real TlsServerProtocol with a mock socket transport and a pyOpenSSL client in memory."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from OpenSSL import SSL

from qproxy.proxy import proxy_protocol as pp
from qproxy.proxy.proxy_accept import ProxyHeaderPolicy
from qproxy.tls import openssl_ext
from qproxy.tls.protocol import Limits, Phase, TlsServerProtocol
from tests.support import memory_tls
from tests.test_tls_protocol import RecordingApp, SocketTransport

CLIENT = ("203.0.113.7", 40000)
LISTENER = ("127.0.0.1", 8443)


@pytest.fixture(scope="module")
def server_context() -> SSL.Context:
    return memory_tls.server_context("preface.test")


class Observer:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple]] = []

    def __getattr__(self, name: str):
        return lambda *args: self.calls.append((name, args))

    def named(self, name: str) -> list[tuple]:
        return [args for called, args in self.calls if called == name]


def policy(trusted: str = "127.0.0.0/8", accept=frozenset({1, 2}), timeout: float = 5.0):
    return ProxyHeaderPolicy(accept, (ipaddress.ip_network(trusted),), timeout)


class Connection:
    def __init__(self, server_context, preface_policy) -> None:
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_min_proto_version(SSL.TLS1_3_VERSION)
        self.tls = SSL.Connection(context, None)
        self.tls.set_connect_state()
        self.observer = Observer()
        self.app = RecordingApp()
        self.protocol = TlsServerProtocol(lambda: server_context, lambda: self.app,
                                          self.observer, Limits(5.0, 30.0, preface_policy))
        self.socket = SocketTransport()
        self.socket.protocol = self.protocol
        self.protocol.connection_made(self.socket)
        self._seen = 0

    def client_hello(self) -> bytes:
        try:
            self.tls.do_handshake()
        except SSL.WantReadError:
            pass
        return openssl_ext.take_output(self.tls)

    def finish_handshake(self) -> None:
        for _ in range(5):
            data = bytes(self.socket.written[self._seen:])
            self._seen = len(self.socket.written)
            if data:
                self.tls.bio_write(data)
            try:
                self.tls.do_handshake()
                break
            except SSL.WantReadError:
                self.protocol.data_received(openssl_ext.take_output(self.tls))
        self.protocol.data_received(openssl_ext.take_output(self.tls))

    def request(self) -> None:
        self.tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.protocol.data_received(openssl_ext.take_output(self.tls))


V2 = pp.build_v2(CLIENT, LISTENER, alpn=None, authority=None, ssl=None, crc32c=False)
V1 = pp.build_v1(CLIENT, LISTENER)


@pytest.mark.parametrize("header", [V1, V2], ids=["v1", "v2"])
def test_header_then_tls_in_one_read_sets_the_client_address(server_context, header):
    async def main():
        conn = Connection(server_context, policy())
        assert conn.protocol.phase is Phase.PREFACE
        conn.protocol.data_received(header + conn.client_hello())
        conn.finish_handshake()
        conn.request()
        assert conn.protocol.client_address == CLIENT
        assert conn.app.transport.get_extra_info("peername") == CLIENT
        assert conn.app.transport.get_extra_info("sockname") == LISTENER
        assert conn.observer.named("handshake_done")[0][0] == "203.0.113.7:40000"
        assert not conn.observer.named("preface_refused")
    asyncio.run(main())


def test_header_split_byte_by_byte_and_tls_after_it(server_context):
    async def main():
        conn = Connection(server_context, policy())
        for byte in V2:
            conn.protocol.data_received(bytes([byte]))
        assert conn.protocol.phase is Phase.NEW
        hello = conn.client_hello()
        conn.protocol.data_received(hello[:3])
        conn.protocol.data_received(hello[3:])
        conn.finish_handshake()
        conn.request()
        assert conn.app.calls[:2] == ["made", "data"]
        assert conn.protocol.client_address == CLIENT
    asyncio.run(main())


def test_local_command_keeps_the_socket_address(server_context):
    async def main():
        conn = Connection(server_context, policy())
        local = pp.build_v2(None, None, alpn=None, authority=None, ssl=None, crc32c=False)
        conn.protocol.data_received(local + conn.client_hello())
        conn.finish_handshake()
        conn.request()
        assert conn.protocol.client_address == ("127.0.0.1", 50000)
        assert conn.app.transport.get_extra_info("sockname") is None  # the mock socket's
    asyncio.run(main())


def _refused(conn: Connection) -> list[tuple]:
    assert conn.socket.closed, "the connection is closed"
    assert conn.app.calls == [], "nothing reaches the application"
    assert not conn.observer.named("handshake_done")
    return conn.observer.named("preface_refused")


@pytest.mark.parametrize("data, reason", [
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "malformed"),   # TLS with no header
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "malformed"),
    (pp.V2_SIGNATURE + b"\x21\x11\xff\xff", "malformed"),            # past the length bound
    (b"PROXY TCP9 garbage garbage garbage garbage garbage garbage garbage garbage garbage "
     b"garbage garbage", "malformed"),                                 # no CRLF in 107 bytes
])
def test_garbage_closes_with_one_refusal(server_context, data, reason):
    async def main():
        conn = Connection(server_context, policy())
        conn.protocol.data_received(data)
        conn.protocol.data_received(b"more bytes after the refusal are dropped")
        refusals = _refused(conn)
        assert len(refusals) == 1 and refusals[0][1] == reason
        await asyncio.sleep(0)
        assert conn.protocol.phase is Phase.CLOSED
    asyncio.run(main())


def test_version_not_accepted(server_context):
    async def main():
        conn = Connection(server_context, policy(accept=frozenset({2})))
        conn.protocol.data_received(V1)
        assert [r[1] for r in _refused(conn)] == ["version"]
    asyncio.run(main())


@pytest.mark.parametrize("sent, reason", [(V2[:20], "truncated"), (b"", "missing")])
def test_peer_closing_before_the_header_ends(server_context, sent, reason):
    async def main():
        conn = Connection(server_context, policy())
        if sent:
            conn.protocol.data_received(sent)
        assert conn.protocol.eof_received() is False
        assert [r[1] for r in _refused(conn)] == [reason]
    asyncio.run(main())


def test_untrusted_peer_is_refused_before_reading(server_context):
    async def main():
        conn = Connection(server_context, policy(trusted="10.0.0.0/8"))
        assert [r[1] for r in _refused(conn)] == ["untrusted"]
        conn.protocol.data_received(V2)  # a header arriving anyway changes nothing
        assert conn.protocol.client_address == ("127.0.0.1", 50000)
    asyncio.run(main())


def test_no_header_within_the_timeout(server_context):
    async def main():
        conn = Connection(server_context, policy(timeout=0.05))
        conn.protocol.data_received(V2[:5])
        async with asyncio.timeout(2):
            while not conn.socket.closed:
                await asyncio.sleep(0.01)
        assert [r[1] for r in _refused(conn)] == ["timeout"]
    asyncio.run(main())


def test_without_a_policy_there_is_no_preface_phase(server_context):
    async def main():
        conn = Connection(server_context, None)
        assert conn.protocol.phase is Phase.NEW
        conn.protocol.data_received(V2)   # a header where none is expected is not TLS
        assert not conn.observer.named("preface_refused")
        assert conn.observer.named("handshake_failed")
    asyncio.run(main())


def test_ipv4_mapped_peer_matches_ipv4_networks():
    assert policy().trusts("::ffff:127.0.0.1")
    assert not policy().trusts("::1") and not policy().trusts("not an address")


# ---------------------------------------------------------------- configuration

def _server(**section):
    from qproxy.config.model import ServerSection
    return ServerSection(**section)


def test_config_accept_needs_trusted_networks_and_checks_them():
    from pydantic import ValidationError
    with pytest.raises(ValidationError, match="trusted"):
        _server(proxy_protocol={"accept": ["v2"]})
    with pytest.raises(ValidationError, match="host bits set"):
        _server(proxy_protocol={"accept": ["v2"], "trusted": ["10.0.0.1/8"]})
    with pytest.raises(ValidationError, match="without accept"):
        _server(proxy_protocol={"trusted": ["10.0.0.0/8"]})
    with pytest.raises(ValidationError):
        _server(proxy_protocol={"accept": ["v3"], "trusted": ["10.0.0.0/8"]})
    section = _server(handshake_timeout=7, proxy_protocol={
        "accept": ["v1", "v2"], "trusted": ["10.0.0.0/8", "fd00::/8", "192.0.2.1"]})
    built = ProxyHeaderPolicy.from_section(section.proxy_protocol, section.handshake_timeout)
    assert built.accept == {1, 2} and built.timeout == 7
    assert built.trusts("fd00::5") and built.trusts("192.0.2.1") and not built.trusts("192.0.2.2")
    assert ProxyHeaderPolicy.from_section(_server().proxy_protocol, 7) is None
    # A listener's refusal names that listener's setting, not the default one's.
    mqtt = ProxyHeaderPolicy.from_section(section.proxy_protocol, 7, "listeners[0].proxy_protocol")
    assert mqtt.reader(("203.0.113.1", 1)).detail == \
        "203.0.113.1 is not in listeners[0].proxy_protocol.trusted"


def test_config_send_proxy_protocol_shorthand_and_object():
    assert _server().send_proxy_protocol is None
    assert _server(send_proxy_protocol="v2").send_proxy_protocol.crc32c is False
    assert _server(send_proxy_protocol={"version": "v2", "crc32c": True}).send_proxy_protocol.crc32c


def test_readme_documents_the_sub_keys():
    from pathlib import Path
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for key in ('"accept"', '"trusted"', '"timeout"', '"version"', '"crc32c"'):
        assert key in readme


# ---------------------------------------------------------------- fuzzing the seam


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(header=st.sampled_from([V1, V2]), cuts=st.lists(st.integers(1, 400), max_size=6))
def test_any_split_of_header_and_client_hello_gives_the_same_connection(server_context, header,
                                                                        cuts):
    async def main():
        conn = Connection(server_context, policy())
        stream = header + conn.client_hello()
        positions = sorted({c for c in cuts if c < len(stream)})
        for start, end in zip([0, *positions], [*positions, len(stream)]):
            conn.protocol.data_received(stream[start:end])
        conn.finish_handshake()
        conn.request()
        assert conn.protocol.client_address == CLIENT
        assert conn.app.calls[:2] == ["made", "data"]
        assert not conn.observer.named("preface_refused")
    asyncio.run(main())
