"""Logs an operator can read (issue 15, point 6): console lines at a terminal and JSON
otherwise (`logging.format`), levels that match severity (a classical client, an unused
pre-connection or a client that went away is counted and logged at debug, not warned about),
and health-check lines that say why a server was taken out and when it came back."""

from __future__ import annotations

import asyncio
import io
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from qproxy.config.model import HealthCheck, LoggingSection, UpstreamSection
from qproxy.daemon.observer import Observer, ConnectionCount
from qproxy.observability.logging import configure_logging, get_logger
from qproxy.observability.metrics import Metrics
from qproxy.proxy.upstream import Upstream, health_check_failure
from qproxy.tls.machine import HandshakeInfo
from qproxy.tls.protocol import Limits, TlsServerProtocol
from tests.conftest import make_config
from tests.support import memory_tls
from tests.support.harness import ROOT, child_env, free_port
from tests.test_tls_protocol import SocketTransport


# --- the console format ------------------------------------------------------------------

class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _one_line(stream: io.StringIO, section: LoggingSection) -> str:
    configure_logging(section, stream=stream)
    get_logger("qproxy.test").warning("backend server taken out of rotation", upstream="ota")
    return stream.getvalue()


def test_json_when_stderr_is_no_terminal():
    line = _one_line(io.StringIO(), LoggingSection())
    assert json.loads(line)["event"] == "backend server taken out of rotation"


def test_console_lines_with_colors_at_a_terminal():
    text = _one_line(Terminal(), LoggingSection())
    assert "\x1b[" in text  # colored
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
    assert "backend server taken out of rotation" in plain and "upstream=ota" in plain
    with pytest.raises(ValueError):
        json.loads(text)


def test_console_asked_for_without_a_terminal_has_no_colors():
    text = _one_line(io.StringIO(), LoggingSection(format="console"))
    assert "warning" in text and "upstream=ota" in text and "\x1b[" not in text


def test_console_lines_escape_the_control_characters_a_client_chose():
    """A client picks its SNI (OpenSSL takes ESC in it) and the access log shows it: at a
    terminal in console format, 'evil\\x1b]0;owned\\x07' retitled the operator's window and
    '\\x1b[2J' cleared it. Escaped as JSON escapes them; qproxy's own colors stay."""
    stream = Terminal()
    configure_logging(LoggingSection(), stream=stream)
    get_logger("qproxy.test").info("request", ssl_server_name="evil\x1b]0;owned\x07\x1b[2J",
                                   path="/a\rb")
    text = stream.getvalue()
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)  # the renderer's colors
    assert "\x1b" not in plain and "\x07" not in plain and "\r" not in plain
    assert "evil\\x1b]0;owned\\x07\\x1b[2J" in plain and "/a\\rb" in plain


def test_json_asked_for_at_a_terminal():
    assert json.loads(_one_line(Terminal(), LoggingSection(format="json")))["upstream"] == "ota"


def test_the_daemon_writes_console_lines_to_a_terminal(tmp_path, dev_pki, backend):
    """qtls-server started as a person would, stderr on a terminal (a pty)."""
    config = make_config(dev_pki, backend["address"])
    path = tmp_path / "server.json"
    path.write_text(json.dumps(config))
    main, secondary = pty.openpty()
    proc = subprocess.Popen([str(Path(sys.executable).with_name("qtls-server")), "-c", str(path)],
                            cwd=ROOT, env=child_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=secondary)
    os.close(secondary)
    seen = b""
    try:
        deadline = time.monotonic() + 60
        while b"worker started" not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 1.0)
            if ready:
                try:
                    seen += os.read(main, 65536)
                except OSError:
                    break
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        os.close(main)
    text = seen.decode("utf-8", "replace")
    assert "worker started" in text, text
    assert '"event"' not in text  # not JSON
    assert "\x1b[" in text


# --- levels -------------------------------------------------------------------------------

class Lines:
    """A logger that keeps (level, event, fields)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str):
        return lambda event, **fields: self.lines.append((level, event, fields))


class NoTls:
    uses_hsm = False

    def key_kind_of(self, der):
        return None

    def pair_of(self, der):
        return None


@pytest.fixture
def observed():
    metrics = Metrics(CollectorRegistry())
    lines = Lines()
    return Observer(metrics, lines, Lines(), NoTls(), ConnectionCount()), lines, metrics


def _value(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def _info(group: str) -> HandshakeInfo:
    return HandshakeInfo(version="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384", group=group,
                         resumed=False, server_name=None, alpn=None, peer_cert=None,
                         peer_verified=False, own_cert_der=None)


def test_a_classical_handshake_is_counted_and_logged_at_debug(observed):
    observer, lines, metrics = observed
    observer.handshake_done("192.0.2.1:5000", _info("X25519"), 0.01)
    assert [level for level, _, _ in lines.lines] == ["debug"]
    assert _value(metrics, "qtls_classical_fallbacks_total", group="X25519") == 1
    observer.handshake_done("192.0.2.1:5000", _info("X25519MLKEM768"), 0.01)
    assert len(lines.lines) == 1


@pytest.mark.parametrize("reason,alert,level,label", [
    ("client closed the connection before sending anything", None, "debug", "unused"),
    ("client closed the connection during the handshake", None, "debug", "client_closed"),
    ("no suitable key share", "handshake_failure", "info", "no_shared_group"),
    ("handshake timed out", None, "info", "timeout"),
    ("signing failed", "internal_error", "error", "other"),
])
def test_handshake_failures_are_as_loud_as_they_are_serious(observed, reason, alert, level,
                                                            label):
    observer, lines, metrics = observed
    observer.handshake_failed("192.0.2.1:5000", reason, alert, 0.01)
    assert [(lvl, event) for lvl, event, _ in lines.lines] == [(level, "handshake failed")]
    assert _value(metrics, "qtls_handshake_failures_total", reason=label,
                  alert=alert or "none") == 1


def test_client_mistakes_are_info_not_warnings(observed):
    observer, lines, _ = observed
    observer.bad_request("192.0.2.1:5000", 400, "bad header")
    observer.plain_http("192.0.2.1:5000")
    observer.request_timeout("192.0.2.1:5000", None)
    observer.tls_error("192.0.2.1:5000", "bad record mac", "bad_record_mac")
    assert {level for level, _, _ in lines.lines} == {"info"}


@pytest.fixture
def server_context():
    return memory_tls.server_context("levels.test")


class Failures:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def handshake_failed(self, peer, reason, alert, seconds) -> None:
        self.reasons.append(reason)

    def __getattr__(self, name):
        return lambda *args: None


async def _closed_after(server_context, data: bytes) -> list[str]:
    failures = Failures()
    protocol = TlsServerProtocol(lambda: server_context, lambda: None, failures,
                                 Limits(5.0, 5.0))
    transport = SocketTransport()
    transport.protocol = protocol
    protocol.connection_made(transport)
    if data:
        protocol.data_received(data)
    protocol.eof_received()
    protocol.connection_lost(None)
    return failures.reasons


def test_a_connection_closed_before_its_first_byte_is_an_unused_preconnection(server_context):
    reasons = asyncio.run(_closed_after(server_context, b""))
    assert reasons == ["client closed the connection before sending anything"]
    reasons = asyncio.run(_closed_after(server_context, b"\x16\x03\x01\x02\x00\x01"))
    assert reasons == ["client closed the connection during the handshake"]


# --- health checks ----------------------------------------------------------------------------

async def _serve(answer: bytes | None) -> tuple[asyncio.AbstractServer, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        if answer is None:
            await asyncio.sleep(30)  # never answers
        writer.write(answer or b"")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _outcome(port: int, timeout: float = 0.3) -> int | BaseException:
    async with aiohttp.ClientSession() as session:
        try:
            async with session.get(f"http://127.0.0.1:{port}/healthz",
                                   timeout=aiohttp.ClientTimeout(total=timeout)) as response:
                return response.status
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return exc


def test_health_check_failures_say_why():
    async def main() -> list[str | None]:
        refused = await _outcome(free_port())
        silent, silent_port = await _serve(None)
        unhealthy, unhealthy_port = await _serve(b"HTTP/1.1 503 Service Unavailable\r\n"
                                                 b"Content-Length: 0\r\n\r\n")
        healthy, healthy_port = await _serve(b"HTTP/1.1 204 No Content\r\n\r\n")
        try:
            outcomes = [refused, await _outcome(silent_port), await _outcome(unhealthy_port),
                        await _outcome(healthy_port)]
        finally:
            for server in (silent, unhealthy, healthy):
                server.close()
        return [health_check_failure(o, "/healthz", 0.3) for o in outcomes]

    refused, timeout, status, passed = asyncio.run(main())
    assert refused == "its health check /healthz could not connect: connection refused"
    assert timeout == "its health check /healthz got no answer within 0.3 s (timeout)"
    assert status == "its health check /healthz answered status 503"
    assert passed is None


def test_a_server_taken_out_by_its_health_check_is_logged_with_why_and_when_back():
    async def main() -> list[tuple[bool, str | None]]:
        changes: list[tuple[bool, str | None]] = []
        answers = [b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
                   b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"]
        changed = asyncio.Event()

        async def handle(reader, writer) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answers[0] if len(changes) < 2 else answers[1])
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        section = UpstreamSection(servers=(f"127.0.0.1:{port}",), keepalive=0,
                                  health_check=HealthCheck(interval=0.05, timeout=2))

        def record(upstream: str, address: str, up: bool, cause: str | None) -> None:
            changes.append((up, cause))
            changed.set()

        upstream = Upstream("ota", section, record)
        upstream.start()
        try:
            for _ in range(50):
                if len(changes) >= 3:
                    break
                changed.clear()
                await asyncio.wait_for(changed.wait(), 5)
        finally:
            await upstream.close()
            server.close()
        return changes

    changes = asyncio.run(main())
    assert changes[:3] == [(True, None),
                           (False, "its health check /healthz answered status 503"),
                           (True, "its health check /healthz passed")]


def test_unused_preconnections_are_counted_not_logged_at_info(start_server, dev_pki, backend):
    """A browser opens connections it may never use and closes them without a byte: the
    daemon at level info says nothing about them, and counts them."""
    import socket
    import urllib.request

    from tests.support.harness import http_request, tls_connect

    server = start_server(make_config(dev_pki, backend["address"]))
    for _ in range(3):
        socket.create_connection(("127.0.0.1", server.port), timeout=10).close()
    assert http_request(tls_connect(server.port), "GET", "/healthz").status == 200
    assert server.wait_log(lambda e: e.get("event") == "request")

    def unused() -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics",
                                      timeout=10).read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("qtls_handshake_failures_total{")
                   and 'reason="unused"' in line)

    deadline = time.monotonic() + 10
    while unused() < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert unused() == 3
    assert server.events("handshake failed") == []
    assert not [e for e in server.lines if e.get("level") in ("warning", "error")]


def test_connection_lines_name_their_listener():
    """A refusal on the MQTT door and one on the HTTPS door must be told apart in the log:
    every line about a connection says which listener it came in on."""
    lines = Lines()
    observer = Observer(Metrics(CollectorRegistry()), lines, Lines(), NoTls(),
                        ConnectionCount(), listener="mqtt")
    observer.handshake_failed("192.0.2.1:5000", "no suitable key share", "handshake_failure",
                              0.01)
    observer.tls_error("192.0.2.1:5000", "bad record mac", "bad_record_mac")
    observer.plain_http("192.0.2.1:5000")
    observer.preface_refused("192.0.2.1:5000", "malformed", "not a PROXY header")
    observer.request_timeout("192.0.2.1:5000", None)
    observer.bad_request("192.0.2.1:5000", 400, "bad header")
    assert [(event, fields.get("listener")) for _, event, fields in lines.lines] == [
        ("handshake failed", "mqtt"), ("TLS error on an established connection", "mqtt"),
        ("plain HTTP request on the TLS port", "mqtt"), ("PROXY header refused", "mqtt"),
        ("request headers timed out", "mqtt"), ("bad request", "mqtt")]
