"""Who may connect, end to end: the real qtls-server with 2 workers in front of the test
backend; address rules over IPv4 and IPv6, client-certificate allow-lists, a rate limit with
burst, the per-address connection cap; each refusal's status, log line, access-log field and
metric."""

from __future__ import annotations

import re
import socket
import struct
import time
import urllib.request

import pytest
from OpenSSL import SSL

from tests.conftest import make_config
from tests.support.client_certs import mint_client
from tests.support.harness import CloseKind, client_context, http_request, read_until_closed, tls_connect

WORKERS = 2


def _metric(server, name: str, labels: str = "") -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics",
                                  timeout=10).read().decode()
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def _config(dev_pki, backend, access=None, routes=None, **sections):
    server = {"workers": WORKERS}
    server.update(sections.pop("server", {}))
    if access is not None:
        server["access"] = access
    config = make_config(dev_pki, backend["address"], server=server, **sections)
    if routes is not None:
        config["routes"] = routes
    return config


def tls_connect6(port: int, ctx: SSL.Context | None = None, timeout: float = 10.0
                 ) -> SSL.Connection:
    sock = socket.create_connection(("::1", port), timeout=timeout)
    sock.settimeout(None)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", int(timeout), 0))
    conn = SSL.Connection(ctx or client_context(), sock)
    conn.set_tlsext_host_name(b"localhost")
    conn.set_connect_state()
    conn.do_handshake()
    return conn


def _denied_line(server, reason: str, path: str | None = None):
    return server.wait_log(lambda e: e.get("event") == "access denied"
                           and e.get("reason") == reason
                           and (path is None or e.get("path") == path))


def _access_line(server, status: int, path: str):
    return server.wait_log(lambda e: e.get("event") == "request" and e.get("status") == status
                           and e.get("path") == path)


def test_listener_rules_deny_ipv4_and_allow_ipv6_first_match_wins(start_server, dev_pki,
                                                                   backend):
    # One dual-stack socket: the IPv4 client arrives as ::ffff:127.0.0.1 and is matched as
    # 127.0.0.1 by the IPv4 rule.
    server = start_server(_config(dev_pki, backend, server={"listen_address": "::"}, access={
        "rules": [{"deny": "127.0.0.0/8"}, {"allow": "::1"}, {"deny": "all"}]}))
    conn = tls_connect(server.port)
    refused = http_request(conn, "GET", "/echo?v4")
    assert refused.status == 403
    assert refused.header("Connection") == "close"
    assert read_until_closed(conn)[1] is CloseKind.CLOSE_NOTIFY
    line = _denied_line(server, "ip")
    assert line is not None and line["detail"] == "rules[0] denies 127.0.0.1"
    assert line["status"] == 403 and line["scope"] == "listener"
    access = _access_line(server, 403, "/echo?v4")
    assert access["access_denied"] == "ip" and access["upstream"] == "-"

    allowed = http_request(tls_connect6(server.port), "GET", "/echo?v6")
    assert allowed.status == 200
    assert allowed.json()["path"] == "/echo?v6"
    assert _metric(server, "qtls_access_denied_total", '{reason="ip"}') == 1.0


def test_route_rules_apply_after_routing(start_server, dev_pki, backend):
    server = start_server(_config(dev_pki, backend, routes=[
        {"path_prefix": "/admin", "upstream": "app",
         "access": {"rules": [{"allow": "10.0.0.0/8"}, {"deny": "all"}]}},
        {"path_prefix": "/", "upstream": "app",
         "access": {"rules": [{"allow": ["192.0.2.0/24", "127.0.0.1"]}, {"deny": "all"}]}},
    ]))
    conn = tls_connect(server.port)
    denied = http_request(conn, "GET", "/admin/keys")
    assert denied.status == 403
    assert denied.header("Connection") is None  # a route's refusal keeps the connection
    assert http_request(conn, "GET", "/echo").status == 200
    line = _denied_line(server, "ip", "/admin/keys")
    assert line["scope"] == "route" and line["detail"] == "rules[1] denies 127.0.0.1"
    assert _access_line(server, 403, "/admin/keys")["upstream"] == "app"


@pytest.fixture(scope="module")
def device_certs(dev_pki, tmp_path_factory):
    directory = tmp_path_factory.mktemp("clients")
    return {
        "allowed": mint_client(dev_pki, directory, "device-allowed"),
        "other": mint_client(dev_pki, directory, "device-other"),
        "spiffe": mint_client(dev_pki, directory, "device-spiffe",
                              uri=("spiffe://qproxy.test/ota",)),
    }


def test_client_certificate_allow_lists(start_server, dev_pki, backend, device_certs):
    server = start_server(_config(
        dev_pki, backend,
        certificates={"ca_bundle": str(dev_pki.ca_bundle), "verify_client": "optional"},
        access={"clients": {"cn": ["device-allowed"], "uri": ["spiffe://qproxy.test/ota"]}}))

    def status(which: str | None) -> int:
        cert, key = device_certs[which] if which else (None, None)
        conn = tls_connect(server.port, client_context(cert=cert, key=key))
        return http_request(conn, "GET", f"/echo?{which}").status

    assert status("allowed") == 200
    assert status("spiffe") == 200
    assert status("other") == 403
    assert status(None) == 403  # no certificate at all, with an allow-list: refused
    other = _denied_line(server, "client_cert", "/echo?other")
    assert "device-other" in other["detail"]
    assert _denied_line(server, "client_cert", "/echo?None") is not None
    assert _access_line(server, 403, "/echo?other")["access_denied"] == "client_cert"
    assert _metric(server, "qtls_access_denied_total", '{reason="client_cert"}') == 2.0


def test_rate_limit_answers_429_after_the_burst_and_recovers(start_server, dev_pki, backend):
    # 2 requests/s with a burst of 4 over 2 workers: each worker 1/s with a burst of 2.
    server = start_server(_config(dev_pki, backend, access={
        "rate": {"requests_per_second": 2, "burst": 4}}))
    conn = tls_connect(server.port)  # one connection: one worker, so its share
    statuses = []
    started = time.monotonic()
    for index in range(8):
        result = http_request(conn, "GET", f"/echo?burst={index}")
        statuses.append(result.status)
        if result.status == 429:
            break
    elapsed = time.monotonic() - started
    assert statuses[-1] == 429, statuses
    passed = statuses.count(200)
    assert 2 <= passed <= 2 + int(elapsed * 1) + 1, (statuses, elapsed)
    assert result.header("Retry-After") == "1"
    line = _denied_line(server, "rate")
    assert line["status"] == 429
    assert _access_line(server, 429, f"/echo?burst={len(statuses) - 1}")["access_denied"] == "rate"
    # Recovery: a token comes back within Retry-After (1 s); ask a bounded number of times.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        retry = http_request(conn, "GET", "/echo?recovered")
        if retry.status == 200:
            break
        time.sleep(float(retry.header("Retry-After") or 1) / 4)
    assert retry.status == 200
    assert _metric(server, "qtls_rate_limited_total") >= 1.0


def test_rate_limit_holds_across_workers(start_server, dev_pki, backend):
    """Fresh connections land on either worker; what passes stays within the configured
    burst plus the rate over the time taken (each worker has half of each)."""
    server = start_server(_config(dev_pki, backend, access={
        "rate": {"requests_per_second": 2, "burst": 4}}))
    started = time.monotonic()
    statuses = [http_request(tls_connect(server.port), "GET", "/echo").status
                for _ in range(16)]
    elapsed = time.monotonic() - started
    passed = statuses.count(200)
    assert set(statuses) <= {200, 429}
    assert 2 <= passed <= 4 + 2 * elapsed + 1, (statuses, elapsed)
    assert _metric(server, "qtls_rate_limited_total") == statuses.count(429)


def test_connection_cap_per_address(start_server, dev_pki, backend):
    # 2 connections per address over 2 workers: 1 in each.
    server = start_server(_config(dev_pki, backend, access={"max_connections_per_address": 2}))
    conns = [tls_connect(server.port) for _ in range(6)]
    results = [http_request(conn, "GET", f"/echo?c={i}") for i, conn in enumerate(conns)]
    statuses = [r.status for r in results]
    assert set(statuses) <= {200, 503}
    assert 1 <= statuses.count(200) <= 2, statuses
    refused = [r for r in results if r.status == 503]
    assert all(r.header("Connection") == "close" for r in refused)
    line = _denied_line(server, "connection_cap")
    assert line["status"] == 503
    assert _access_line(server, 503, line["path"])["access_denied"] == "connection_cap"
    assert _metric(server, "qtls_access_denied_total",
                   '{reason="connection_cap"}') == len(refused)
    for conn in conns:
        conn.close()
    # Closed connections give their places back: a new one is served again (bounded).
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if http_request(tls_connect(server.port), "GET", "/echo?again").status == 200:
            break
    else:
        pytest.fail("no connection admitted after the others closed")


def _tls_after_proxy_header(port: int, header: bytes) -> SSL.Connection:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(header)
    sock.settimeout(None)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 10, 0))
    conn = SSL.Connection(client_context(), sock)
    conn.set_tlsext_host_name(b"localhost")
    conn.set_connect_state()
    conn.do_handshake()
    return conn


def test_rules_see_the_client_a_proxy_header_names(start_server, dev_pki, backend):
    """Behind a load balancer (server.proxy_protocol), the rules judge the client the PROXY
    header names, not the balancer's address (TlsServerProtocol.client_address)."""
    server = start_server(_config(dev_pki, backend, server={
        "proxy_protocol": {"accept": ["v1"], "trusted": ["127.0.0.1/32"]}},
        access={"rules": [{"deny": "203.0.113.0/24"}, {"allow": "all"}]}))
    refused = _tls_after_proxy_header(
        server.port, b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 8443\r\n")
    assert http_request(refused, "GET", "/echo?far").status == 403
    assert _denied_line(server, "ip")["detail"] == "rules[0] denies 203.0.113.9"
    served = _tls_after_proxy_header(
        server.port, b"PROXY TCP4 198.51.100.2 127.0.0.1 40001 8443\r\n")
    result = http_request(served, "GET", "/echo?near")
    assert result.status == 200
    assert dict((k.lower(), v) for k, v in result.json()["headers"])["x-real-ip"] == "198.51.100.2"
