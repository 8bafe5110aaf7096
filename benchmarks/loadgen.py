"""A load generator that speaks post-quantum TLS: pyOpenSSL clients in several processes.

Every function here runs inside a worker process of a `multiprocessing` pool and returns plain
numbers; loops are bounded by a deadline and a count.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field

from OpenSSL import SSL

from qproxy.tls import openssl_ext

MAX_ITERATIONS = 1_000_000


@dataclass(frozen=True)
class ClientSpec:
    port: int
    groups: str | None = None
    sigalgs: str | None = None
    path: str = "/1k"
    tls: bool = True


@dataclass
class Outcome:
    count: int = 0
    errors: int = 0
    bytes: int = 0
    latencies: list[float] = field(default_factory=list)
    groups: set[str] = field(default_factory=set)
    resumed: int = 0


def client_context(spec: ClientSpec) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    if spec.groups:
        openssl_ext.set_groups(ctx, spec.groups)
    if spec.sigalgs:
        openssl_ext.set_sigalgs(ctx, spec.sigalgs)
    return ctx


def _connect(spec: ClientSpec, ctx: SSL.Context, session: SSL.Session | None = None):
    sock = socket.create_connection(("127.0.0.1", spec.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if not spec.tls:
        return sock  # plain HTTP straight to the backend, for the latency baseline
    sock.settimeout(None)
    conn = SSL.Connection(ctx, sock)
    conn.set_tlsext_host_name(b"localhost")
    if session is not None:
        conn.set_session(session)
    conn.set_connect_state()
    conn.do_handshake()
    return conn


def _request(conn: SSL.Connection, path: str, close: bool = False) -> int:
    """One GET; returns the body size. Responses carry Content-Length (the peers are set up so)."""
    extra = "Connection: close\r\n" if close else ""
    conn.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response head")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(f"unexpected response {head.splitlines()[0]!r}")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    received = len(body)
    while received < length:
        chunk = conn.recv(1 << 20)
        if not chunk:
            raise ConnectionError("closed mid-body")
        received += len(chunk)
    return received


def _close(conn) -> None:
    # close_notify first: OpenSSL marks a session closed without it as not resumable, and a
    # well-behaved client (a browser) sends it.
    if isinstance(conn, SSL.Connection):
        try:
            conn.shutdown()
        except (SSL.Error, OSError):
            pass
    try:
        conn.close()  # the socket's close (pyOpenSSL delegates unknown attributes to it)
    except OSError:
        pass


def handshakes(spec: ClientSpec, seconds: float, resume: bool = False,
               request: bool = False) -> Outcome:
    """New connection after new connection: handshake (and one request) then close."""
    ctx = client_context(spec)
    out = Outcome()
    session = None
    if resume:
        first = _connect(spec, ctx)
        _request(first, spec.path)  # the ticket arrives after the handshake
        session = first.get_session()
        _close(first)
    deadline = time.perf_counter() + seconds
    for _ in range(MAX_ITERATIONS):
        start = time.perf_counter()
        if start >= deadline:
            break
        try:
            conn = _connect(spec, ctx, session)
            if request:
                out.bytes += _request(conn, spec.path, close=True)
            out.groups.add(openssl_ext.negotiated_group(conn) or "-")
            out.resumed += openssl_ext.session_reused(conn)
            _close(conn)
            out.count += 1
            out.latencies.append(time.perf_counter() - start)
        except (OSError, SSL.Error, ConnectionError):
            out.errors += 1
    return out


def keepalive(spec: ClientSpec, seconds: float, rate: float | None = None) -> Outcome:
    """Requests on one kept-alive connection; with `rate`, paced to that many per second."""
    ctx = client_context(spec)
    out = Outcome()
    conn = _connect(spec, ctx)
    interval = 1.0 / rate if rate else 0.0
    next_at = time.perf_counter()
    deadline = next_at + seconds
    for _ in range(MAX_ITERATIONS):
        now = time.perf_counter()
        if now >= deadline:
            break
        if interval and now < next_at:
            time.sleep(next_at - now)
        start = time.perf_counter()
        try:
            out.bytes += _request(conn, spec.path)
            out.count += 1
            out.latencies.append(time.perf_counter() - start)
        except (OSError, SSL.Error, ConnectionError):
            out.errors += 1
            conn = _connect(spec, ctx)
        next_at += interval
    _close(conn)
    return out


def transfer_download(spec: ClientSpec, path: str) -> Outcome:
    conn = _connect(spec, client_context(spec))
    start = time.perf_counter()
    size = _request(conn, path)
    out = Outcome(count=1, bytes=size, latencies=[time.perf_counter() - start])
    _close(conn)
    return out


def transfer_upload(spec: ClientSpec, path: str, size: int) -> Outcome:
    conn = _connect(spec, client_context(spec))
    chunk = b"\xa5" * (256 * 1024)
    start = time.perf_counter()
    sent = 0
    buf = b""
    try:
        conn.sendall(f"PUT {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {size}\r\n\r\n"
                     .encode())
        while sent < size:
            piece = chunk[: min(len(chunk), size - sent)]
            conn.sendall(piece)
            sent += len(piece)
        while b"\r\n\r\n" not in buf:
            data = conn.recv(65536)
            if not data:
                break
            buf += data
    except (OSError, SSL.Error):
        pass  # counted as an error below
    elapsed = time.perf_counter() - start
    _close(conn)
    ok = buf.startswith(b"HTTP/1.1 200")
    return Outcome(count=1 if ok else 0, errors=0 if ok else 1, bytes=sent, latencies=[elapsed])


def hold_idle(spec: ClientSpec, count: int, hold_seconds: float, ready, leave=None,
              request: bool = False) -> int:
    """Open `count` TLS connections (with `request`, one request on each first), signal
    `ready`, keep them idle until `leave` is set or `hold_seconds` pass, then close them all."""
    ctx = client_context(spec)
    held = []
    for _ in range(count):
        try:
            conn = _connect(spec, ctx)
            if request:
                _request(conn, spec.path)
            held.append(conn)
        except (OSError, SSL.Error, ConnectionError):
            break
    ready.put(len(held))
    if leave is None:
        time.sleep(hold_seconds)
    else:
        leave.wait(hold_seconds)
    for conn in held:
        _close(conn)
    return len(held)


def slow_readers(spec: ClientSpec, count: int, hold_seconds: float, ready, leave,
                 read_size: int = 1024, interval: float = 0.25) -> int:
    """`count` clients that each ask for `spec.path` and then read it at a trickle
    (`read_size` bytes every `interval` seconds, through a 4 KiB receive buffer), so the server
    holds the rest; signal `ready` once every request is sent, trickle until `leave` is set or
    `hold_seconds` pass, then leave without reading the rest (a close, as a client gives up)."""
    ctx = client_context(spec)
    held = []
    for _ in range(count):
        try:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: window
            sock.settimeout(10)
            sock.connect(("127.0.0.1", spec.port))
            sock.settimeout(None)  # pyOpenSSL has no timeouts: a timeout would raise WantRead
            conn = SSL.Connection(ctx, sock)
            conn.set_tlsext_host_name(b"localhost")
            conn.set_connect_state()
            conn.do_handshake()
            conn.sendall(f"GET {spec.path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
            sock.settimeout(0.0)  # reads below take what is there and never wait
            held.append(conn)
        except (OSError, SSL.Error):
            break
    ready.put(len(held))
    deadline = time.monotonic() + hold_seconds
    for _ in range(MAX_ITERATIONS):
        if leave.wait(interval) or time.monotonic() >= deadline:
            break
        for conn in held:
            try:
                conn.recv(read_size)
            except (SSL.WantReadError, SSL.ZeroReturnError, SSL.SysCallError, OSError):
                pass
    for conn in held:
        try:
            conn.close()
        except OSError:
            pass
    return len(held)
