"""What slow readers cost a worker: RSS before, while N clients each hold a download of a large
object without reading it, and after they leave (issue 11, defect 3; nginx's proxy_buffers).

    python -m benchmarks.slow_readers [--clients 300] [--size 1048576] [--nginx]

One qtls-server worker (static nginx behind it as the backend), N pyOpenSSL clients with
small receive buffers that read the first bytes of the answer and then stop. Loopback only;
every wait is bounded. With --nginx, the same against nginx with its default proxy buffering.
"""

from __future__ import annotations

import argparse
import socket
import struct
import tempfile
import time
from pathlib import Path

from OpenSSL import SSL

from . import peers

CLIENT_RCVBUF = 4096


def settle(pid: int, timeout: float = 15.0) -> int:
    """RSS once it has stopped moving (three samples within 1 %), or at the timeout."""
    deadline = time.monotonic() + timeout
    samples = [peers.rss_bytes(pid)]
    while time.monotonic() < deadline:
        time.sleep(0.5)
        samples.append(peers.rss_bytes(pid))
        last = samples[-3:]
        if len(last) == 3 and max(last) - min(last) <= max(last) // 100:
            break
    return samples[-1]


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def open_reader(port: int, path: str, close: bool = False
                ) -> tuple[SSL.Connection, socket.socket]:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CLIENT_RCVBUF)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    sock.settimeout(None)
    # pyOpenSSL wants a blocking socket; the kernel's receive timeout keeps a read bounded.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 10, 0))
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    conn = SSL.Connection(ctx, sock)
    conn.set_tlsext_host_name(b"localhost")
    conn.set_connect_state()
    conn.do_handshake()
    extra = "Connection: close\r\n" if close else ""
    conn.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n".encode())
    first = conn.recv(4096)  # the answer has started; from here on, nobody reads
    if not first.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"unexpected answer: {first[:80]!r}")
    return conn, sock


def full_download(port: int, path: str, size: int) -> None:
    conn, sock = open_reader(port, path, close=True)
    received = 4096  # about what open_reader read: the head and the body's first bytes
    for _ in range(size // 1024 + 100):  # each read bounded by the socket timeout
        try:
            data = conn.recv(65536)
        except (SSL.ZeroReturnError, SSL.SysCallError):
            break
        if not data:
            break
        received += len(data)
    sock.close()
    if received < size - 4096:
        raise RuntimeError(f"download cut at {received} of {size} bytes")


def measure(port: int, pid: int, clients: int, size: int, path: str = "/big") -> dict:
    for _ in range(10):
        full_download(port, path, size)
    before, fds_before = settle(pid), open_fds(pid)
    readers = [open_reader(port, path) for _ in range(clients)]
    during, fds_during = settle(pid), open_fds(pid)
    for _, sock in readers:
        sock.close()
    readers.clear()
    after, fds_after = settle(pid), open_fds(pid)
    return {"before": before, "during": during, "after": after,
            "fds": (fds_before, fds_during, fds_after)}


def report(name: str, clients: int, rss: dict) -> str:
    mib = 1024 * 1024
    per = (rss["during"] - rss["before"]) / clients / 1024
    return (f"{name}: {clients} slow readers: RSS before {rss['before'] / mib:.1f} MiB, "
            f"during {rss['during'] / mib:.1f} MiB (+{(rss['during'] - rss['before']) / mib:.1f}"
            f" MiB, {per:.0f} KiB per reader), after they left {rss['after'] / mib:.1f} MiB "
            f"(+{(rss['after'] - rss['before']) / mib:.1f} MiB kept); worker fds "
            f"{'/'.join(map(str, rss['fds']))}")


def nginx_peer(directory: Path, certs: peers.Certs, backend: int) -> tuple[peers.Process, int]:
    """nginx with its default proxy buffering (proxy_buffers 8 4k|8k, then temp files)."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    port = peers.free_port()
    conf = peers._nginx_conf(directory, f"""
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {certs.ecdsa_p256_cert};
        ssl_certificate_key {certs.ecdsa_p256_key};
        ssl_protocols TLSv1.3;
        location / {{ proxy_pass http://127.0.0.1:{backend}; proxy_http_version 1.1; }}
    }}""", workers=1)
    proc = peers.Process([peers._nginx(), "-c", str(conf)], directory / "nginx-peer.log")
    peers.wait_port(port)
    return proc, port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=300)
    parser.add_argument("--size", type=int, default=1024 * 1024)
    parser.add_argument("--rounds", type=int, default=1,
                        help="bursts in a row (memory kept after one is reused by the next?)")
    parser.add_argument("--nginx", action="store_true", help="measure nginx too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="qtls-slow-") as tmp:
        directory = Path(tmp)
        certs = peers.make_certs(directory)
        backend, backend_port = peers.start_backend(directory, args.size, peers.free_port())
        started = [backend]
        try:
            qtls, port, _ = peers.start_qtls(
                directory, [(certs.ecdsa_p256_cert, certs.ecdsa_p256_key)], backend_port, 1,
                "qtls")
            started.append(qtls)
            pid = peers.qtls_worker_pids(qtls.log)[0]
            for round_ in range(1, args.rounds + 1):
                print(report(f"qtls-server worker, round {round_}", args.clients,
                             measure(port, pid, args.clients, args.size)), flush=True)
            if args.nginx:
                nginx, nginx_port = nginx_peer(directory / "peer", certs, backend_port)
                started.append(nginx)
                nginx_pid = peers.worker_pids(nginx.proc.pid)[0]
                print(report("nginx worker", args.clients,
                             measure(nginx_port, nginx_pid, args.clients, args.size)),
                      flush=True)
        except BaseException:
            for proc in started:
                print(f"--- {proc.log}:\n" + proc.log.read_text()[-3000:])
            raise
        finally:
            for proc in reversed(started):
                proc.stop()


if __name__ == "__main__":
    main()
