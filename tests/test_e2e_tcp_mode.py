"""TCP mode and several listeners end to end (issue 14): the real qtls-server, real TLS with
X25519MLKEM768 over real sockets on 127.0.0.1 and ::1, a real TCP backend."""

from __future__ import annotations

import json
import signal
import socket
import struct
import subprocess
import sys
import time
from typing import Any

import pytest
from OpenSSL import SSL

from tests.conftest import make_config
from tests.support.harness import (ROOT, CloseKind, child_env, client_context, free_port,
                                   read_until_closed)
from tests.support.harness import _recv
from tests.support.tcp_backend import TcpBackend

PQ = "X25519MLKEM768"


@pytest.fixture
def tcp_backend():
    backend = TcpBackend()
    yield backend
    backend.close()


def tcp_config(dev_pki, backend_address: str, tcp_address: str, *listeners: dict[str, Any],
               **sections: Any) -> dict[str, Any]:
    config = make_config(dev_pki, backend_address, **sections)
    config["upstreams"]["echo"] = {"servers": [tcp_address], "connect_timeout": 2}
    config["routes"] = [{"path_prefix": "/", "upstream": "app"}]
    config["listeners"] = list(listeners)
    return config


def echo_listener(name: str = "echo4", address: str = "127.0.0.1", **extra: Any) -> dict[str, Any]:
    return {"name": name, "mode": "tcp", "listen_address": address, "listen_port": 0,
            "upstream": "echo", **extra}


def ports(server) -> dict[str, int]:
    event = [e for e in server.lines if e.get("event") in ("listening", "reloaded")][-1]
    return event["listeners"]


def connect(port: int, host: str = "127.0.0.1", groups: str = PQ) -> SSL.Connection:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect((host, port))
    sock.settimeout(None)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 10, 0))
    conn = SSL.Connection(client_context(groups=groups), sock)
    conn.set_tlsext_host_name(b"localhost")
    conn.set_connect_state()
    conn.do_handshake()
    return conn


def recv_exactly(conn: SSL.Connection, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = _recv(conn)
        assert chunk, f"closed after {len(data)} of {size} bytes"
        data += chunk
    return bytes(data)


def session_logs(server, **match: Any) -> list[dict[str, Any]]:
    return [e for e in server.events("session") + server.events("session failed")
            if all(e.get(k) == v for k, v in match.items())]


def wait_session(server, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
    entry = server.wait_log(lambda e: e.get("event") == "session"
                            and all(e.get(k) == v for k, v in match.items()), timeout)
    assert entry is not None, f"no session line with {match}"
    return entry


def metrics(server) -> str:
    import urllib.request
    return urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics",
                                  timeout=10).read().decode()


def test_echo_round_trip_over_ipv4_and_ipv6_with_x25519mlkem768(start_server, dev_pki, backend,
                                                                 tcp_backend):
    server = start_server(tcp_config(dev_pki, backend["address"], tcp_backend.address,
                                     echo_listener("echo4"), echo_listener("echo6", "::1")))
    for name, host in (("echo4", "127.0.0.1"), ("echo6", "::1")):
        conn = connect(ports(server)[name], host)
        message = b"hello over " + name.encode()
        conn.sendall(message)
        assert recv_exactly(conn, len(message)) == message
        conn.shutdown()  # close_notify: the backend sees a FIN and answers
        data, kind = read_until_closed(conn)
        assert data == b"EOF-SEEN:16" and kind is CloseKind.CLOSE_NOTIFY
        conn.close()
        line = wait_session(server, listener=name)
        assert line["ssl_curve"] == PQ and line["end"] == "done"
        assert (line["bytes_received"], line["bytes_sent"]) == (16, 27)
        assert line["upstream_addr"] == tcp_backend.address and line["upstream"] == "echo"
        assert line["ssl_sigalg"] and line["session_time_ms"] >= 0
    text = metrics(server)
    assert 'qtls_stream_sessions_total{end="done",listener="echo6"} 1.0' in text
    assert 'qtls_stream_bytes_total{direction="up",listener="echo4"} 16.0' in text
    assert 'listener="echo6",result="ok"' in text
    # The HTTP door is still there, on its own port.
    assert server.port not in (ports(server)["echo4"], ports(server)["echo6"])


def test_upstream_half_close_reaches_the_client_which_can_still_send(start_server, dev_pki,
                                                                     backend, tcp_backend):
    server = start_server(tcp_config(dev_pki, backend["address"], tcp_backend.address,
                                     echo_listener()))
    conn = connect(ports(server)["echo4"])
    conn.sendall(b"CLOSE\n")
    data, kind = read_until_closed(conn)  # the backend's FIN became our close_notify
    assert data == b"" and kind is CloseKind.CLOSE_NOTIFY
    conn.sendall(b"still talking")
    conn.shutdown()
    assert tcp_backend.after_close_done.wait(10)
    assert b"".join(tcp_backend.received_after_close) == b"still talking"
    assert wait_session(server)["end"] == "done"


def test_big_transfer_to_a_slow_reader_keeps_memory_bounded(start_server, dev_pki, backend,
                                                            tcp_backend):
    size = 64 * 1024 * 1024
    server = start_server(tcp_config(dev_pki, backend["address"], tcp_backend.address,
                                     echo_listener()))
    [worker] = server.worker_pids
    conn = connect(ports(server)["echo4"])
    before = rss_kib(worker)
    conn.sendall(b"BIG %d\n" % size)
    time.sleep(1.5)  # the client reads nothing: the relay must stop reading the backend
    stalled = rss_kib(worker)
    received = 0
    while received < size:
        chunk = _recv(conn)
        assert chunk, f"closed after {received} bytes"
        received += len(chunk)
    assert received == size
    conn.shutdown()
    read_until_closed(conn)
    line = wait_session(server)
    assert line["bytes_sent"] == size + len(b"EOF-SEEN:") + len(str(len(b"BIG %d\n" % size)))
    assert stalled - before < 8 * 1024, f"worker grew {stalled - before} KiB while stalled"


def rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_upstream_down_closes_the_client_and_logs_once(start_server, dev_pki, backend):
    dead = f"127.0.0.1:{free_port()}"
    server = start_server(tcp_config(dev_pki, backend["address"], dead, echo_listener()))
    conn = connect(ports(server)["echo4"])
    data, kind = read_until_closed(conn)
    assert data == b"" and kind is not CloseKind.CLOSE_NOTIFY  # cut, not a finished stream
    line = wait_session(server, end="upstream_refused")
    assert line["upstream_addr"] == dead and "connect failed" in line["error"]
    time.sleep(0.3)
    assert len(session_logs(server)) == 1
    # Everyone else is still served.
    assert connect(server.port, groups=PQ).get_protocol_version_name() == "TLSv1.3"


def test_upstream_reset_cuts_the_client_and_logs_once(start_server, dev_pki, backend,
                                                      tcp_backend):
    server = start_server(tcp_config(dev_pki, backend["address"], tcp_backend.address,
                                     echo_listener()))
    conn = connect(ports(server)["echo4"])
    conn.sendall(b"RESET\n")
    data, kind = read_until_closed(conn)
    assert data == b"" and kind is not CloseKind.CLOSE_NOTIFY
    line = wait_session(server, end="upstream_reset")
    assert line["bytes_received"] == 6
    time.sleep(0.3)
    assert len(session_logs(server)) == 1
    other = connect(ports(server)["echo4"])  # the next session is served
    other.sendall(b"hi")
    assert recv_exactly(other, 2) == b"hi"


def test_idle_session_is_closed_with_close_notify(start_server, dev_pki, backend, tcp_backend):
    server = start_server(tcp_config(dev_pki, backend["address"], tcp_backend.address,
                                     echo_listener(idle_timeout=0.5)))
    conn = connect(ports(server)["echo4"])
    conn.sendall(b"x")
    assert recv_exactly(conn, 1) == b"x"
    started = time.monotonic()
    data, kind = read_until_closed(conn)
    assert kind is CloseKind.CLOSE_NOTIFY and time.monotonic() - started < 5
    assert wait_session(server)["end"] == "idle_timeout"


def test_session_survives_sighup_and_sigterm_closes_it_cleanly(start_server, dev_pki, backend,
                                                               tcp_backend):
    config = tcp_config(dev_pki, backend["address"], tcp_backend.address, echo_listener())
    config["server"]["shutdown_timeout"] = 2
    server = start_server(config)
    port = ports(server)["echo4"]
    conn = connect(port)
    conn.sendall(b"one")
    assert recv_exactly(conn, 3) == b"one"
    server.proc.send_signal(signal.SIGHUP)
    assert server.wait_log(lambda e: e.get("event") == "reloaded", 20)
    assert ports(server)["echo4"] == port  # the socket was kept
    conn.sendall(b"two")  # served by the old generation still
    assert recv_exactly(conn, 3) == b"two"
    fresh = connect(port)  # a new connection goes to the new generation
    fresh.sendall(b"new")
    assert recv_exactly(fresh, 3) == b"new"
    fresh.shutdown()
    read_until_closed(fresh)
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    data, kind = read_until_closed(conn, timeout=15)
    assert kind is CloseKind.CLOSE_NOTIFY
    assert 1.0 < time.monotonic() - started < 10
    assert server.proc.wait(15) == 0
    assert any(e["end"] == "shutdown" for e in session_logs(server))


def test_listeners_added_and_removed_on_sighup(start_server, dev_pki, backend, tcp_backend):
    config = tcp_config(dev_pki, backend["address"], tcp_backend.address)
    server = start_server(config)
    assert list(ports(server)) == ["default"]
    port = free_port()
    config["listeners"] = [{**echo_listener(), "listen_port": port}]
    server.config_path.write_text(json.dumps(config))
    server.proc.send_signal(signal.SIGHUP)
    assert server.wait_log(lambda e: e.get("event") == "reloaded", 20)
    conn = connect(port)
    conn.sendall(b"added")
    assert recv_exactly(conn, 5) == b"added"
    conn.shutdown()
    read_until_closed(conn)
    config["listeners"] = []
    server.config_path.write_text(json.dumps(config))
    server.proc.send_signal(signal.SIGHUP)
    assert server.wait_log(lambda e: e.get("event") == "reloaded"
                           and "echo4" not in e["listeners"], 20)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    assert connect(server.port).get_protocol_version_name() == "TLSv1.3"


def test_a_port_that_cannot_be_bound_fails_the_reload(start_server, dev_pki, backend,
                                                      tcp_backend):
    config = tcp_config(dev_pki, backend["address"], tcp_backend.address, echo_listener())
    server = start_server(config)
    busy = socket.create_server(("127.0.0.1", 0))
    try:
        changed = json.loads(json.dumps(config))
        changed["listeners"].append({**echo_listener("taken"),
                                     "listen_port": busy.getsockname()[1]})
        server.config_path.write_text(json.dumps(changed))
        server.proc.send_signal(signal.SIGHUP)
        failed = server.wait_log(lambda e: e.get("event", "").startswith("reload failed"), 20)
        assert failed is not None
        assert any(p.startswith("listeners[1].listen_port: cannot listen on")
                   for p in failed["errors"]), failed
    finally:
        busy.close()
    conn = connect(ports(server)["echo4"])  # the old configuration serves on
    conn.sendall(b"ok")
    assert recv_exactly(conn, 2) == b"ok"


def test_bad_listener_refused_on_start_and_on_sighup(start_server, dev_pki, backend,
                                                     tcp_backend, tmp_path):
    bad = tcp_config(dev_pki, backend["address"], tcp_backend.address,
                     echo_listener(upstream="nowhere"))
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    result = subprocess.run([sys.executable, "-m", "qproxy", "serve", "--config", str(path)],
                            capture_output=True, text=True, env=child_env(), cwd=ROOT,
                            timeout=60)
    assert result.returncode != 0
    assert "listeners[0].upstream: no upstream named 'nowhere'" in result.stderr
    tested = subprocess.run([sys.executable, "-m", "qproxy", "check-config",
                             "--config", str(path)], capture_output=True, text=True,
                            env=child_env(), cwd=ROOT, timeout=60)
    assert tested.returncode != 0 and "listeners[0].upstream" in tested.stderr

    good = tcp_config(dev_pki, backend["address"], tcp_backend.address, echo_listener())
    server = start_server(good)
    broken = json.loads(json.dumps(good))
    broken["listeners"][0]["certificates"] = {"keypairs": [{"cert": "/nonexistent.pem",
                                                            "key": "/nonexistent.key"}]}
    server.config_path.write_text(json.dumps(broken))
    server.proc.send_signal(signal.SIGHUP)
    failed = server.wait_log(lambda e: e.get("event", "").startswith("reload failed"), 20)
    assert failed is not None
    assert any(p.startswith("listeners[0].certificates.keypairs[0].cert")
               for p in failed["errors"]), failed
    conn = connect(ports(server)["echo4"])
    conn.sendall(b"still")
    assert recv_exactly(conn, 5) == b"still"


def test_proxy_protocol_in_and_out_on_a_tcp_listener(start_server, dev_pki, backend):
    """Behind a balancer (PROXY v2 in, trusted 127.0.0.0/8) and in front of a backend that
    wants PROXY v2: the header the backend gets names the balancer's client and carries the
    post-quantum group; the session's access line names that client too."""
    from qproxy.proxy import proxy_protocol as pp
    from tests.support.proxy_backend import RecordingBackend

    with RecordingBackend(http=False) as recording:
        listener = echo_listener(proxy_protocol={"accept": ["v2"], "trusted": ["127.0.0.0/8"]},
                                 send_proxy_protocol="v2")
        server = start_server(tcp_config(dev_pki, backend["address"], recording.address,
                                         listener))
        port = ports(server)["echo4"]
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(pp.build_v2(("203.0.113.9", 4242), ("192.0.2.1", 8883), alpn=None,
                                 authority=None, ssl=None, crc32c=False))
        sock.settimeout(None)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 10, 0))
        conn = SSL.Connection(client_context(groups=PQ), sock)
        conn.set_tlsext_host_name(b"localhost")
        conn.set_connect_state()
        conn.do_handshake()
        conn.sendall(b"ping")
        assert recv_exactly(conn, 4) == b"ping"
        [record] = recording.wait_records(1)
        assert record.error is None and record.parsed is not None
        assert record.parsed.source == ("203.0.113.9", 4242)
        assert record.parsed.tlv(pp.PP2_TYPE_AUTHORITY) == b"localhost"
        assert pp.parse_ssl_tlv(record.parsed.tlv(pp.PP2_TYPE_SSL)).group == PQ
        conn.shutdown()
        read_until_closed(conn)
        line = wait_session(server)
        assert line["client"] == "203.0.113.9:4242" and line["bytes_received"] == 4


def _alpn_after(port: int, offered: list[bytes]) -> bytes:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.settimeout(None)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 10, 0))
    ctx = client_context(groups=PQ)
    ctx.set_alpn_protos(offered)
    conn = SSL.Connection(ctx, sock)
    conn.set_tlsext_host_name(b"localhost")
    conn.set_connect_state()
    conn.do_handshake()
    chosen = conn.get_alpn_proto_negotiated()
    conn.shutdown()
    conn.close()
    return chosen


def test_tcp_listener_alpn_is_its_own_list_never_http(start_server, dev_pki, backend,
                                                      tcp_backend):
    """An MQTT device offering "mqtt" (and a client offering http/1.1) on a tcp listener:
    the listener's tls.alpn is what it selects from; without one it selects nothing. The
    HTTP door still says http/1.1."""
    server = start_server(tcp_config(
        dev_pki, backend["address"], tcp_backend.address,
        echo_listener("mqtt", tls={"alpn": ["mqtt", "x-other"]}), echo_listener("plain")))
    mqtt, plain = ports(server)["mqtt"], ports(server)["plain"]
    assert _alpn_after(mqtt, [b"http/1.1", b"x-other", b"mqtt"]) == b"mqtt"
    assert _alpn_after(mqtt, [b"http/1.1"]) == b""  # no overlap: on without ALPN
    assert _alpn_after(plain, [b"mqtt", b"http/1.1"]) == b""
    assert _alpn_after(server.port, [b"mqtt", b"http/1.1"]) == b"http/1.1"


def test_a_backend_that_speaks_first_is_heard(start_server, dev_pki, backend):
    """SMTP-like: the backend greets on accept, before the client says anything; the
    greeting crosses the tunnel (it was read while the relay was still connecting, and
    dropped)."""
    greeter = TcpBackend(greeting=b"220 ready\r\n")
    try:
        server = start_server(tcp_config(dev_pki, backend["address"], greeter.address,
                                         echo_listener()))
        for _ in range(3):
            conn = connect(ports(server)["echo4"])
            assert recv_exactly(conn, 11) == b"220 ready\r\n"
            conn.sendall(b"QUIT")
            assert recv_exactly(conn, 4) == b"QUIT"
            conn.shutdown()
            read_until_closed(conn)
            conn.close()
        line = wait_session(server, bytes_received=4)
        assert line["bytes_sent"] >= 15 and line["end"] == "done"
    finally:
        greeter.close()
