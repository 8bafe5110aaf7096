"""TCP mode (issue 14): throughput through the tunnel and the new-connection rate, qtls-server
against nginx `stream` (ssl_preread off, plain `proxy_pass`) with the same ECDSA P-256
certificate, one worker each (nginx's default worker_processes), measured in the same run.
Like for like, both with X25519 (Debian's nginx runs on the system OpenSSL 3.0, which has no
ML-KEM); qtls-server with X25519MLKEM768 is the row alongside. The client offers that one
group only, so a row cannot silently use another.

    python -m benchmarks.tcp_mode --gib 1 --seconds 5 --clients 4 --rounds 3

The backend is a small TCP server in its own process: a connection that sends b"S" and an
8-byte size gets that many bytes and then a FIN; one that sends b"E" gets b"E" back (the
new-connection scenario: handshake, one byte through the tunnel each way, close).
nginx's stream module is a separate Debian package (libnginx-mod-stream); without it the
nginx rows say so and qtls-server is measured alone.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

from OpenSSL import SSL

from qproxy.tls import openssl_ext

from . import peers

CHUNK = bytes(range(256)) * 4096  # 1 MiB
STREAM_MODULES = ("/usr/lib/nginx/modules/ngx_stream_module.so",
                  "/usr/share/nginx/modules/ngx_stream_module.so")


# -- the backend ---------------------------------------------------------------------------
def _serve_one(conn: socket.socket) -> None:
    try:
        kind = conn.recv(1)
        if kind == b"S":
            size = struct.unpack("!Q", _exactly(conn, 8))[0]
            view = memoryview(CHUNK)
            while size > 0:
                sent = conn.send(view[:min(len(CHUNK), size)])
                size -= sent
            conn.shutdown(socket.SHUT_WR)
            conn.recv(1)
        elif kind == b"E":
            conn.sendall(b"E")
            conn.recv(1)
    except OSError:
        pass
    finally:
        conn.close()


def _exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("short read")
        data += chunk
    return data


def backend_main(port: int) -> None:
    server = socket.create_server(("127.0.0.1", port), backlog=4096)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=_serve_one, args=(conn,), daemon=True).start()


# -- the clients ---------------------------------------------------------------------------
def _context(groups: str) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    openssl_ext.set_groups(ctx, groups)
    return ctx


def _connect(port: int, ctx: SSL.Context) -> SSL.Connection:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(None)
    conn = SSL.Connection(ctx, sock)
    conn.set_tlsext_host_name(b"localhost")
    conn.set_connect_state()
    conn.do_handshake()
    return conn


def throughput(port: int, groups: str, size: int) -> float:
    """MiB/s of `size` bytes from the backend through the tunnel to one client."""
    conn = _connect(port, _context(groups))
    started = time.perf_counter()
    conn.sendall(b"S" + struct.pack("!Q", size))
    received = 0
    while received < size:
        try:
            chunk = conn.recv(1 << 20)
        except (SSL.ZeroReturnError, SSL.SysCallError):
            break
        if not chunk:
            break
        received += len(chunk)
    elapsed = time.perf_counter() - started
    conn.close()
    if received != size:
        raise RuntimeError(f"received {received} of {size} bytes")
    return size / elapsed / (1 << 20)


def connections(port: int, groups: str, seconds: float) -> tuple[int, int]:
    """(completed, failed) handshake + one byte each way + close, for `seconds`."""
    ctx = _context(groups)
    done = failed = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline and done + failed < 1_000_000:
        try:
            conn = _connect(port, ctx)
            conn.sendall(b"E")
            if conn.recv(1) != b"E":
                raise ConnectionError("no echo")
            conn.shutdown()
            conn.close()
            done += 1
        except (OSError, SSL.Error, ConnectionError):
            failed += 1
    return done, failed


def connection_rate(pool, port: int, groups: str, seconds: float, clients: int) -> float:
    results = pool.starmap(connections, [(port, groups, seconds)] * clients)
    done = sum(r[0] for r in results)
    failed = sum(r[1] for r in results)
    if failed:
        print(f"  ({failed} connections failed)", file=sys.stderr)
    return done / seconds


# -- the servers ---------------------------------------------------------------------------
def start_qtls_tcp(directory: Path, certs: peers.Certs, backend: int) -> tuple[peers.Process, int]:
    port, default_port, metrics = peers.free_port(), peers.free_port(), peers.free_port()
    pair = [{"cert": str(certs.ecdsa_p256_cert), "key": str(certs.ecdsa_p256_key)}]
    config = {
        "server": {"listen_address": "127.0.0.1", "listen_port": default_port, "workers": 1,
                   "max_connections": 100000, "backlog": 4096},
        "certificates": {"keypairs": pair},
        "logging": {"level": "warning", "console": True, "access_log": False},
        "metrics": {"enabled": True, "address": "127.0.0.1", "port": metrics},
        "upstreams": {"unused": {"servers": ["127.0.0.1:9"]},
                      "backend": {"servers": [f"127.0.0.1:{backend}"]}},
        "routes": [{"path_prefix": "/", "upstream": "unused"}],
        "listeners": [{"name": "bench", "mode": "tcp", "listen_address": "127.0.0.1",
                       "listen_port": port, "upstream": "backend", "backlog": 4096}],
    }
    path = directory / "qtls-tcp.json"
    path.write_text(json.dumps(config))
    proc = peers.Process([sys.executable, "-m", "qproxy", "serve", "--config", str(path)],
                         directory / "qtls-tcp.log")
    peers.wait_port(port)
    return proc, port


def stream_module() -> str | None:
    return next((m for m in STREAM_MODULES if Path(m).exists()), None)


def start_nginx_stream(directory: Path, certs: peers.Certs, backend: int
                       ) -> tuple[peers.Process, int] | None:
    module = stream_module()
    if module is None:
        return None
    port = peers.free_port()
    conf = directory / "nginx-stream.conf"
    conf.write_text(f"""
load_module {module};
pid {directory}/nginx-stream.pid;
error_log {directory}/nginx-stream-error.log warn;
daemon off;
events {{ worker_connections 20000; }}
stream {{
    upstream backend {{ server 127.0.0.1:{backend}; }}
    server {{
        listen 127.0.0.1:{port} ssl backlog=4096;
        ssl_certificate {certs.ecdsa_p256_cert};
        ssl_certificate_key {certs.ecdsa_p256_key};
        ssl_protocols TLSv1.3;
        # Debian's nginx runs on the system OpenSSL 3.0: no ML-KEM, X25519 is its best group.
        ssl_ecdh_curve X25519;
        proxy_pass backend;
    }}
}}
""")
    proc = peers.Process([peers._nginx(), "-c", str(conf)], directory / "nginx-stream.log")
    peers.wait_port(port)
    return proc, port


def nginx_openssl() -> str:
    """The OpenSSL nginx runs with (`nginx -V` says what it was built with and runs with)."""
    import subprocess
    out = subprocess.run([peers._nginx(), "-V"], capture_output=True, text=True,
                         timeout=30).stderr
    line = next((l for l in out.splitlines() if "OpenSSL" in l), "OpenSSL ?")
    return line.strip()


def _spread(values: list[float]) -> str:
    """Median, and the range, of one row's rounds."""
    return (f"{statistics.median(values):8.0f} [{min(values):.0f}-{max(values):.0f}]"
            if values else "       —")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=1.0, help="bytes through the tunnel")
    parser.add_argument("--seconds", type=float, default=5.0, help="per connection-rate run")
    parser.add_argument("--clients", type=int, default=4, help="connecting processes")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds; each measures every row once, in turns (the order "
                             "reversed every other round), so a drifting machine weighs on all")
    args = parser.parse_args(argv)
    size = int(args.gib * (1 << 30))
    with tempfile.TemporaryDirectory(prefix="qproxy-tcp-bench-") as temp:
        directory = Path(temp)
        certs = peers.make_certs(directory)
        backend_port = peers.free_port()
        backend = mp.Process(target=backend_main, args=(backend_port,), daemon=True)
        backend.start()
        peers.wait_port(backend_port)
        started = [start_qtls_tcp(directory, certs, backend_port)]
        # Like for like first: both with X25519; qtls-server's hybrid group is an extra row.
        rows = [("qtls-server tcp", started[0][1], "X25519")]
        nginx = start_nginx_stream(directory, certs, backend_port)
        if nginx is not None:
            started.append(nginx)
            rows.append(("nginx stream", nginx[1], "X25519"))
        rows.append(("qtls-server tcp", started[0][1], "X25519MLKEM768"))
        figures: dict[tuple[str, str], dict[str, list[float]]] = {
            (name, group): {"mib": [], "conn": []} for name, _, group in rows}
        try:
            with mp.get_context("fork").Pool(args.clients) as pool:
                for round_ in range(args.rounds):
                    for name, port, group in (rows if round_ % 2 == 0 else rows[::-1]):
                        figures[name, group]["mib"].append(throughput(port, group, size))
                        figures[name, group]["conn"].append(
                            connection_rate(pool, port, group, args.seconds, args.clients))
                    print(f"round {round_ + 1}/{args.rounds}: " + "; ".join(
                        f"{n} {g}: {figures[n, g]['mib'][-1]:.0f} MiB/s, "
                        f"{figures[n, g]['conn'][-1]:.0f} conn/s" for n, _, g in rows),
                        flush=True)
        finally:
            for proc, _ in started:
                proc.stop()
            backend.terminate()
    print(f"\nTCP mode, {args.gib:g} GiB per throughput run, {args.clients} connecting "
          f"processes for {args.seconds:g} s per rate run, {args.rounds} rounds "
          "(median [range]); one worker each, ECDSA P-256 certificate, TLS 1.3")
    print(f"nginx: {nginx_openssl()}\n")
    print(f"| {'server':<16} | {'group':<15} | {'MiB/s through the tunnel':>26} | "
          f"{'new connections/s':>26} |")
    print(f"|{'-' * 18}|{'-' * 17}|{'-' * 28}|{'-' * 28}|")
    for name, _, group in rows:
        row = figures[name, group]
        print(f"| {name:<16} | {group:<15} | {_spread(row['mib']):>26} | "
              f"{_spread(row['conn']):>26} |")
    if nginx is None:
        print("nginx stream: not measured (no ngx_stream_module.so: install the "
              "Debian package libnginx-mod-stream)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
