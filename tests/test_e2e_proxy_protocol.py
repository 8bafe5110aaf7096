"""PROXY protocol end to end with a real qtls-server: v2 to a recording backend (every TLV,
the post-quantum group included) and v1/v2 from a load balancer in front of it."""

from __future__ import annotations

import socket
import struct
import urllib.request

import pytest
from OpenSSL import SSL

from qproxy.proxy import proxy_protocol as pp
from tests.conftest import make_config
from tests.support.harness import client_context, http_request, tls_connect
from tests.support.proxy_backend import RecordingBackend


@pytest.fixture
def recording():
    with RecordingBackend() as backend:
        yield backend


# ---------------------------------------------------------------- out: to the backend

def test_backend_gets_every_tlv_of_a_post_quantum_mtls_connection(start_server, dev_pki,
                                                                 recording):
    server = start_server(make_config(
        dev_pki, recording.address,
        server={"send_proxy_protocol": {"version": "v2", "crc32c": True}},
        certificates={"ca_bundle": str(dev_pki.ca_bundle), "verify_client": True}))
    ctx = client_context(groups="X25519MLKEM768", sigalgs="mldsa65:ecdsa_secp256r1_sha256",
                         cert=dev_pki.client_cert, key=dev_pki.client_key)
    conn = tls_connect(server.port, ctx)
    client_port = conn.getsockname()[1]
    assert http_request(conn, "GET", "/first").status == 200

    [record] = recording.wait_records(1)
    parsed = record.parsed
    assert record.error is None and parsed is not None
    assert (parsed.version, parsed.command) == (2, pp.Command.PROXY)
    assert parsed.source == ("127.0.0.1", client_port)
    assert parsed.destination == ("127.0.0.1", server.port)
    assert parsed.tlv(pp.PP2_TYPE_ALPN) == b"http/1.1"
    assert parsed.tlv(pp.PP2_TYPE_AUTHORITY) == b"localhost"
    assert parsed.tlv(pp.PP2_TYPE_CRC32C) is not None   # and it matched: the parser checks it
    raw_ssl = parsed.tlv(pp.PP2_TYPE_SSL)
    assert raw_ssl[0] == pp.PP2_CLIENT_SSL | pp.PP2_CLIENT_CERT_CONN | pp.PP2_CLIENT_CERT_SESS
    ssl = pp.parse_ssl_tlv(raw_ssl)
    assert ssl.group == "X25519MLKEM768"
    assert ssl.version == "TLSv1.3"
    assert ssl.cipher and ssl.cipher.startswith("TLS_AES_")
    assert ssl.sig_alg == "ML-DSA-65" and ssl.key_alg == "ML-DSA-65"
    assert ssl.sig_scheme == "mldsa65"
    assert ssl.client_cn == "qproxy dev client"
    assert ssl.verify == 0


def test_classical_client_without_certificate(start_server, dev_pki, recording):
    server = start_server(make_config(dev_pki, recording.address,
                                      server={"send_proxy_protocol": "v2"}))
    conn = tls_connect(server.port, client_context(groups="secp384r1",
                                                   sigalgs="ecdsa_secp384r1_sha384"))
    assert http_request(conn, "GET", "/").status == 200
    parsed = recording.wait_records(1)[0].parsed
    assert parsed.tlv(pp.PP2_TYPE_CRC32C) is None
    raw_ssl = parsed.tlv(pp.PP2_TYPE_SSL)
    assert raw_ssl[0] == pp.PP2_CLIENT_SSL
    ssl = pp.parse_ssl_tlv(raw_ssl)
    assert (ssl.group, ssl.sig_scheme, ssl.key_alg) == (
        "secp384r1", "ecdsa_secp384r1_sha384", "ECDSA P-384")
    assert ssl.client_cn is None and ssl.verify != 0


def test_a_backend_connection_serves_one_client_connection_only(start_server, dev_pki,
                                                              recording):
    server = start_server(make_config(dev_pki, recording.address,
                                      server={"send_proxy_protocol": "v2"}))
    first, second = tls_connect(server.port), tls_connect(server.port)
    seen = {}
    for round_ in range(3):
        for name, conn in (("first", first), ("second", second)):
            result = http_request(conn, "GET", f"/{name}/{round_}")
            seen.setdefault(name, set()).add(result.header("X-Proxy-Connection"))
    # Kept alive for its own client (one backend connection each), never shared.
    assert len(seen["first"]) == 1 and len(seen["second"]) == 1
    assert seen["first"] != seen["second"]
    records = recording.wait_records(2)
    assert len(records) == 2
    assert {r.parsed.source[1] for r in records} == {first.getsockname()[1],
                                                     second.getsockname()[1]}
    assert {tuple(r.requests) for r in records} == {
        ("/first/0", "/first/1", "/first/2"), ("/second/0", "/second/1", "/second/2")}
    # A client that leaves takes its (idle) backend connection with it: closed at the next
    # release on that server; the next client gets a new one that names the new client.
    first_backend = int(next(iter(seen["first"])))
    first.shutdown()
    first.close()
    third = tls_connect(server.port)
    result = http_request(third, "GET", "/third")
    http_request(third, "GET", "/third/again")  # another release on that server
    record = recording.records[int(result.header("X-Proxy-Connection"))]
    assert record.index not in (0, 1)
    assert record.parsed.source[1] == third.getsockname()[1]
    recording.wait_closed(first_backend, timeout=5)
    assert not recording.records[1 - first_backend].closed  # the second client's stays


# ---------------------------------------------------------------- in: from a load balancer

def _connect_after(port: int, preface: bytes, ctx=None) -> SSL.Connection:
    """A TLS client connection whose first bytes are `preface` (what a balancer sends)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(preface)
    sock.settimeout(None)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 10, 0))
    conn = SSL.Connection(ctx or client_context(), sock)
    conn.set_tlsext_host_name(b"localhost")
    conn.set_connect_state()
    conn.do_handshake()
    return conn


def _closed_without_answer(port: int, data: bytes, then_close: bool = False) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        if then_close:
            sock.shutdown(socket.SHUT_WR)
        try:
            return sock.recv(100)
        except ConnectionResetError:
            return b""


def _metric(server, name: str) -> str:
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics",
                                  timeout=10).read().decode()
    return "\n".join(line for line in text.splitlines() if line.startswith(name))


def _headers(result) -> dict[str, str]:
    return {k.lower(): v for k, v in result.json()["headers"]}


@pytest.fixture
def behind_balancer(start_server, dev_pki, backend):
    return start_server(make_config(dev_pki, backend["address"], server={
        "proxy_protocol": {"accept": ["v1", "v2"], "trusted": ["127.0.0.0/8", "::1/128"],
                           "timeout": 3}}))


@pytest.mark.parametrize("client, preface", [
    (("203.0.113.9", 4242), pp.build_v2(("203.0.113.9", 4242), ("192.0.2.1", 443),
                                        alpn=None, authority=None, ssl=None, crc32c=True)),
    (("2001:db8::7", 5151), pp.build_v1(("2001:db8::7", 5151), ("2001:db8::1", 443))),
], ids=["v2-ipv4", "v1-ipv6"])
def test_header_from_trusted_balancer_sets_the_client(behind_balancer, client, preface):
    server = behind_balancer
    conn = _connect_after(server.port, preface)
    result = http_request(conn, "GET", "/echo?via=balancer",
                          headers={"X-Forwarded-For": "198.51.100.66"})
    seen = _headers(result)
    assert seen["x-forwarded-for"] == f"198.51.100.66, {client[0]}"
    assert seen["x-real-ip"] == client[0]
    access = server.wait_log(lambda e: e.get("event") == "request"
                             and e.get("path") == "/echo?via=balancer")
    assert access["client"] == client[0]


def test_garbage_truncated_and_missing_headers_are_refused_and_others_served(behind_balancer):
    server = behind_balancer
    good = pp.build_v2(("203.0.113.5", 1000), ("192.0.2.1", 443), alpn=None, authority=None,
                       ssl=None, crc32c=False)
    assert _closed_without_answer(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == b""
    assert _closed_without_answer(server.port, good[:20], then_close=True) == b""
    assert _closed_without_answer(server.port, b"", then_close=True) == b""
    with pytest.raises((SSL.Error, OSError)):
        tls_connect(server.port)      # TLS straight away: not a header, so refused
    for reason in ("malformed", "truncated", "missing"):
        line = server.wait_log(lambda e, r=reason: e.get("event") == "PROXY header refused"
                               and e.get("reason") == r)
        assert line is not None and line["client"].startswith("127.0.0.1:")
    # The same worker serves a well-behaved balancer connection, split over two writes.
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(good[:7])
    conn = _connect_after_socket(sock, good[7:])
    assert _headers(http_request(conn, "GET", "/echo"))["x-real-ip"] == "203.0.113.5"
    metric = _metric(server, "qtls_proxy_protocol_rejected_total")
    assert 'reason="malformed"' in metric and 'reason="truncated"' in metric


def _connect_after_socket(sock: socket.socket, rest: bytes) -> SSL.Connection:
    sock.sendall(rest)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 10, 0))
    sock.settimeout(None)
    conn = SSL.Connection(client_context(), sock)
    conn.set_tlsext_host_name(b"localhost")
    conn.set_connect_state()
    conn.do_handshake()
    return conn


def test_header_from_an_untrusted_address_is_refused(start_server, dev_pki, backend):
    server = start_server(make_config(dev_pki, backend["address"], server={
        "proxy_protocol": {"accept": ["v2"], "trusted": ["10.0.0.0/8"]}}))
    preface = pp.build_v2(("203.0.113.9", 4242), ("192.0.2.1", 443), alpn=None,
                          authority=None, ssl=None, crc32c=False)
    with pytest.raises((SSL.Error, OSError)):
        http_request(_connect_after(server.port, preface), "GET", "/echo")
    line = server.wait_log(lambda e: e.get("event") == "PROXY header refused"
                           and e.get("reason") == "untrusted")
    assert line is not None
    assert not server.events("request")


def test_health_checks_send_a_local_header(start_server, dev_pki, recording):
    """A backend that requires a header on every connection must not fail our health checks
    (HAProxy's check-send-proxy): they start with a LOCAL header."""
    server = start_server(make_config(dev_pki, recording.address, server={
        "send_proxy_protocol": {"version": "v2", "crc32c": True}}, upstreams={
        "app": {"servers": [recording.address], "health_check": {
            "path": "/healthz", "interval": 0.2, "timeout": 2}}}))
    checks = recording.wait_records(2)[:2]
    for record in checks:
        assert record.error is None
        assert record.parsed.command is pp.Command.LOCAL and record.parsed.source is None
        assert record.parsed.tlv(pp.PP2_TYPE_CRC32C) is not None
    recording.wait_closed(checks[0].index, timeout=5)
    with recording._changed:
        recording._changed.wait_for(lambda: checks[0].requests, 5)
    assert checks[0].requests == ["/healthz"]
    assert not server.events("backend server taken out of rotation")
    assert http_request(tls_connect(server.port), "GET", "/after-checks").status == 200


def test_sighup_turns_the_header_requirement_on(start_server, dev_pki, backend):
    """server.proxy_protocol applies on reload, to the new generation's connections."""
    import json
    import signal

    config = make_config(dev_pki, backend["address"])
    server = start_server(config)
    assert http_request(tls_connect(server.port), "GET", "/echo?before").status == 200
    config["server"]["proxy_protocol"] = {"accept": ["v2"], "trusted": ["127.0.0.0/8"]}
    server.config_path.write_text(json.dumps(config))
    server.proc.send_signal(signal.SIGHUP)
    assert server.wait_log(lambda e: e.get("event") == "reloaded", 20) is not None
    with pytest.raises((SSL.Error, OSError)):
        http_request(tls_connect(server.port), "GET", "/echo?bare")
    preface = pp.build_v2(("203.0.113.44", 1), ("192.0.2.1", 443), alpn=None, authority=None,
                          ssl=None, crc32c=False)
    result = http_request(_connect_after(server.port, preface), "GET", "/echo?after")
    assert _headers(result)["x-real-ip"] == "203.0.113.44"


def test_chained_balancer_addresses_are_relayed_to_the_backend(start_server, dev_pki,
                                                              recording):
    """In and out together (HAProxy's PX1 -> PX2 -> SRV): the backend's header carries what
    the balancer's header said, the destination included."""
    server = start_server(make_config(dev_pki, recording.address, server={
        "proxy_protocol": {"accept": ["v2"], "trusted": ["127.0.0.0/8"]},
        "send_proxy_protocol": "v2"}))
    preface = pp.build_v2(("203.0.113.9", 4242), ("192.0.2.1", 443), alpn=None,
                          authority=None, ssl=None, crc32c=False)
    conn = _connect_after(server.port, preface, client_context(groups="X25519MLKEM768"))
    assert http_request(conn, "GET", "/chained").status == 200
    parsed = recording.wait_records(1)[0].parsed
    assert parsed.source == ("203.0.113.9", 4242)
    assert parsed.destination == ("192.0.2.1", 443)
    assert pp.parse_ssl_tlv(parsed.tlv(pp.PP2_TYPE_SSL)).group == "X25519MLKEM768"
