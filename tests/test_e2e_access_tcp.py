"""Access control on tcp listeners, end to end (2 workers): a refused client is closed, not
answered: before the handshake for its address or the connection cap, right after it for its
certificate; one 'access denied' line and a count each."""

from __future__ import annotations

import socket
import struct

import pytest
from OpenSSL import SSL

from tests.support.client_certs import mint_client
from tests.support.harness import CloseKind, client_context, read_until_closed
from tests.test_e2e_access import _metric
from tests.test_e2e_tcp_mode import (connect, echo_listener, ports, recv_exactly, tcp_config,
                                     tcp_backend)  # noqa: F401 (fixture)


def _echo(conn: SSL.Connection) -> bool:
    conn.sendall(b"ping")
    return recv_exactly(conn, 4) == b"ping"


def _denied(server, reason: str, listener: str):
    line = server.wait_log(lambda e: e.get("event") == "access denied"
                           and e.get("reason") == reason and e.get("listener") == listener)
    assert line is not None, f"no 'access denied' line for {reason} on {listener}"
    return line


def test_tcp_listener_address_rules_close_before_the_handshake(start_server, dev_pki, backend,
                                                               tcp_backend):
    rules = {"rules": [{"deny": "127.0.0.0/8"}, {"allow": "all"}]}
    server = start_server(tcp_config(
        dev_pki, backend["address"], tcp_backend.address,
        echo_listener("echo4", access=rules), echo_listener("echo6", "::1", access=rules),
        server={"workers": 2}))
    with pytest.raises(SSL.Error):  # closed before any TLS byte: no ServerHello
        connect(ports(server)["echo4"])
    line = _denied(server, "ip", "echo4")
    assert line["detail"] == "rules[0] denies 127.0.0.1" and line["status"] is None
    assert _echo(connect(ports(server)["echo6"], "::1"))  # ::1 is not in 127.0.0.0/8
    assert _metric(server, "qtls_access_denied_total", '{reason="ip"}') == 1.0
    assert all(e["listener"] == "echo6" for e in server.events("session"))


def _connect_with(port: int, cert, key) -> SSL.Connection:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.settimeout(None)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 10, 0))
    conn = SSL.Connection(client_context(cert=cert, key=key), sock)
    conn.set_tlsext_host_name(b"localhost")
    conn.set_connect_state()
    conn.do_handshake()
    return conn


def test_tcp_listener_client_lists_close_after_the_handshake(start_server, dev_pki, backend,
                                                             tcp_backend, tmp_path):
    allowed = mint_client(dev_pki, tmp_path, "sensor-7", uri=("spiffe://qproxy.test/mqtt",))
    other = mint_client(dev_pki, tmp_path, "sensor-8")
    server = start_server(tcp_config(
        dev_pki, backend["address"], tcp_backend.address,
        echo_listener("mqtt", access={"clients": {"uri": ["spiffe://qproxy.test/mqtt"]}},
                      certificates={"keypairs": [{"cert": str(dev_pki.ecdsa_cert),
                                                  "key": str(dev_pki.ecdsa_key)}],
                                    "ca_bundle": str(dev_pki.ca_bundle),
                                    "verify_client": True}),
        server={"workers": 2}))
    port = ports(server)["mqtt"]
    assert _echo(_connect_with(port, *allowed))
    refused = _connect_with(port, *other)  # TLS 1.3: the handshake ends on the client first
    data, kind = read_until_closed(refused)
    assert data == b"" and kind is CloseKind.CLOSE_NOTIFY
    line = _denied(server, "client_cert", "mqtt")
    assert "sensor-8" in line["detail"]
    assert _metric(server, "qtls_access_denied_total", '{reason="client_cert"}') == 1.0


def test_tcp_listener_connection_cap(start_server, dev_pki, backend, tcp_backend):
    server = start_server(tcp_config(
        dev_pki, backend["address"], tcp_backend.address,
        echo_listener("echo4", access={"max_connections_per_address": 2}),
        server={"workers": 2}))
    port = ports(server)["echo4"]
    held, refused = [], 0
    for _ in range(6):
        try:
            conn = connect(port)
            assert _echo(conn)
        except (SSL.Error, AssertionError):  # closed before the handshake, or right at it
            refused += 1
        else:
            held.append(conn)
    assert 1 <= len(held) <= 2 and refused == 6 - len(held)
    _denied(server, "connection_cap", "echo4")
    assert _metric(server, "qtls_access_denied_total", '{reason="connection_cap"}') == refused
