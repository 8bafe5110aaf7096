"""Run real qtls-server and backend processes for the tests, and talk to them over real sockets."""

from __future__ import annotations

import enum
import errno
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable

from OpenSSL import SSL

from qproxy.tls import openssl_ext

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


class ServerProcess:
    """`python -m qproxy serve` with its JSON log lines collected as they come."""

    def __init__(self, config: dict[str, Any], workdir: Path) -> None:
        self.config_path = workdir / f"server-{time.monotonic_ns()}.json"
        self.config_path.write_text(json.dumps(config, indent=2))
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "qproxy", "serve", "--config", str(self.config_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=child_env(),
            cwd=ROOT)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        ready = self.wait_log(lambda e: e.get("event") == "listening", START_TIMEOUT)
        if ready is None:
            self.stop()
            raise RuntimeError("qtls-server did not start:\n" + "\n".join(self.raw[-30:]))
        self.port: int = ready["port"]
        self.metrics_port: int | None = ready["metrics_port"]
        self.worker_pids: list[int] = ready["workers"]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.raw.append(line.rstrip("\n"))
                try:
                    self.lines.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
                self._cond.notify_all()

    def wait_log(self, predicate: Callable[[dict[str, Any]], bool],
                 timeout: float = 10.0) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for entry in self.lines[seen:]:
                    if predicate(entry):
                        return entry
                seen = len(self.lines)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    return None
                self._cond.wait(min(remaining, 0.2))

    def events(self, name: str) -> list[dict[str, Any]]:
        with self._cond:
            return [e for e in self.lines if e.get("event") == name]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)
        return self.proc.returncode


def client_context(groups: str | None = None, sigalgs: str | None = None,
                   cafile: str | os.PathLike[str] | None = None,
                   cert: os.PathLike[str] | str | None = None,
                   key: os.PathLike[str] | str | None = None) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    if groups:
        openssl_ext.set_groups(ctx, groups)
    if sigalgs:
        openssl_ext.set_sigalgs(ctx, sigalgs)
    if cafile:
        ctx.load_verify_locations(str(cafile))
        ctx.set_verify(SSL.VERIFY_PEER)
    if cert:
        ctx.use_certificate_chain_file(str(cert))
        ctx.use_privatekey_file(str(key))
    ctx.set_alpn_protos([b"http/1.1"])
    return ctx


def tls_connect(port: int, ctx: SSL.Context | None = None, servername: str = "localhost",
                timeout: float = 10.0, session: SSL.Session | None = None) -> SSL.Connection:
    """A blocking pyOpenSSL client connection with the handshake done."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    # pyOpenSSL wants a blocking socket; the kernel's receive timeout keeps a hung test bounded.
    sock.settimeout(None)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                    struct.pack("ll", int(timeout), int(timeout % 1 * 1e6)))
    conn = SSL.Connection(ctx or client_context(), sock)
    conn.set_tlsext_host_name(servername.encode())
    if session is not None:
        conn.set_session(session)
    conn.set_connect_state()
    conn.do_handshake()
    return conn


class CloseKind(enum.Enum):
    """How a peer ended a TLS connection, as the client sees it."""

    CLOSE_NOTIFY = "close_notify"  # a TLS close_notify alert: the server closed on purpose
    EOF = "eof"  # TCP FIN with no close_notify: a truncation attack looks the same
    RESET = "reset"  # TCP RST: whatever was still in flight may be lost


_close_kinds: "weakref.WeakKeyDictionary[SSL.Connection, CloseKind]" = weakref.WeakKeyDictionary()


def close_kind(conn: SSL.Connection) -> CloseKind | None:
    """How the connection ended, once a read has seen it end (None while it is open)."""
    return _close_kinds.get(conn)


def _recv_until(conn: SSL.Connection, buf: bytearray, marker: bytes) -> int:
    while (index := buf.find(marker)) < 0:
        chunk = _recv(conn)
        if not chunk:
            raise ConnectionError("connection closed before " + repr(marker))
        buf += chunk
    return index


def _recv(conn: SSL.Connection) -> bytes:
    """Plaintext, or b"" once the connection has ended (`close_kind` then says how)."""
    try:
        return conn.recv(65536)
    except SSL.ZeroReturnError:
        _close_kinds[conn] = CloseKind.CLOSE_NOTIFY
        return b""
    except SSL.SysCallError as exc:
        if exc.args and exc.args[0] == -1:
            _close_kinds[conn] = CloseKind.EOF
            return b""
        if exc.args and exc.args[0] == errno.ECONNRESET:
            _close_kinds[conn] = CloseKind.RESET
            return b""
        raise


def read_until_closed(conn: SSL.Connection, timeout: float = 20.0) -> tuple[bytes, CloseKind]:
    """Everything the server still sends, and how it then ended the connection. Bounded by
    `timeout` (and by the socket's receive timeout per read)."""
    data = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        chunk = _recv(conn)
        if not chunk:
            kind = close_kind(conn)
            assert kind is not None
            return bytes(data), kind
        data += chunk
    raise TimeoutError(f"connection still open after {timeout}s")


class HttpResult:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        # False when the connection ended before the framing said the body was whole (a
        # chunked body without its last chunk, fewer bytes than Content-Length).
        self.complete = True

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def json(self) -> Any:
        return json.loads(self.body)


def wait_first_bytes(conn: SSL.Connection, path: str, timeout: float = 20.0) -> bytes:
    """Send a GET and return the response's first bytes: proof that the request reached the
    backend and its answer is under way (pass them on to `read_response(already=...)`)."""
    conn.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    buf = bytearray()
    deadline = time.monotonic() + timeout
    while b"\r\n\r\n" not in buf or buf.endswith(b"\r\n\r\n"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no response body to {path} after {timeout}s")
        chunk = _recv(conn)
        if not chunk:
            raise ConnectionError(f"connection closed before the response to {path}")
        buf += chunk
    return bytes(buf)


def http_request(conn: SSL.Connection, method: str = "GET", path: str = "/",
                 headers: dict[str, str] | None = None, body: bytes = b"",
                 host: str = "localhost") -> HttpResult:
    """One HTTP/1.1 exchange on an open connection (Content-Length, chunked or close framing)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body:
        lines.append(f"Content-Length: {len(body)}")
    conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    return read_response(conn, method)


def read_response(conn: SSL.Connection, method: str = "GET", already: bytes = b"") -> HttpResult:
    """One response from the connection; `already`: its first bytes, read by the caller."""
    buf = bytearray(already)
    end = _recv_until(conn, buf, b"\r\n\r\n")
    head = bytes(buf[:end]).decode("latin-1").split("\r\n")
    rest = bytearray(buf[end + 4:])
    status = int(head[0].split()[1])
    headers = [tuple(part.strip() for part in line.split(":", 1)) for line in head[1:]]
    result = HttpResult(status, headers, b"")  # type: ignore[arg-type]
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return result
    length = result.header("Content-Length")
    if length is not None:
        while len(rest) < int(length):
            chunk = _recv(conn)
            if not chunk:
                result.complete = False
                break
            rest += chunk
        result.body = bytes(rest[: int(length)])
    elif (result.header("Transfer-Encoding") or "").lower() == "chunked":
        result.body, result.complete = _read_chunked(conn, rest)
    else:
        while chunk := _recv(conn):
            rest += chunk
        result.body = bytes(rest)
    return result


def _read_chunked(conn: SSL.Connection, rest: bytearray) -> tuple[bytes, bool]:
    """The chunked body, and whether its last chunk (and trailer end) arrived."""
    body = bytearray()
    try:
        while True:
            line_end = _recv_until(conn, rest, b"\r\n")
            size = int(bytes(rest[:line_end]).split(b";")[0], 16)
            del rest[: line_end + 2]
            if size == 0:
                _recv_until(conn, rest, b"\r\n")  # the (empty) trailer section's end
                return bytes(body), True
            while len(rest) < size + 2:
                chunk = _recv(conn)
                if not chunk:
                    body += rest[:size]
                    return bytes(body), False
                rest += chunk
            body += rest[:size]
            del rest[: size + 2]
    except ConnectionError:
        return bytes(body), False
