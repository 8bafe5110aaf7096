"""The servers a benchmark run starts: a static nginx backend, nginx as the classical TLS peer,
and qtls-server, all on 127.0.0.1 with ports chosen at run time."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from qproxy import pki

ROOT = Path(__file__).resolve().parents[1]
ONE_KIB = b"q" * 1024
ONE_MB = b"m" * 1_000_000  # the slow readers' object (issue 11: "a 1 MB object")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port}")


@dataclass
class Certs:
    pki: pki.DevPki
    ecdsa_p256_cert: Path
    ecdsa_p256_key: Path


def make_certs(directory: Path) -> Certs:
    dev = pki.init(directory / "pki")
    # nginx and qtls-server's classical scenario use the same ECDSA P-256 certificate.
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    inter = x509.load_pem_x509_certificate(dev.path(pki.INTERMEDIATE_CERT).read_bytes())
    inter_key = serialization.load_pem_private_key(dev.path(pki.INTERMEDIATE_KEY).read_bytes(),
                                                   None)
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = pki.issue("localhost", key.public_key(), inter.subject, inter_key, ca=False,
                     server_names=pki.DEFAULT_SERVER_NAMES)
    cert_path, key_path = directory / "p256-cert.pem", directory / "p256-key.pem"
    pki.write_certs(cert_path, leaf, inter)
    pki.write_key(key_path, key)
    return Certs(dev, cert_path, key_path)


class Process:
    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None,
                 cwd: Path = ROOT) -> None:
        self.log = log
        self._handle = log.open("wb")
        self.proc = subprocess.Popen(args, stdout=self._handle, stderr=subprocess.STDOUT,
                                     env=env, cwd=cwd, start_new_session=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._handle.close()


def _nginx_conf(directory: Path, body: str, workers: int) -> Path:
    conf = directory / "nginx.conf"
    conf.write_text(f"""
worker_processes {workers};
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
daemon off;
events {{ worker_connections 20000; }}
http {{
    access_log off;
    client_body_temp_path {directory}/body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    keepalive_requests 1000000;
{body}
}}
""")
    return conf


def start_sink(directory: Path) -> tuple[Process, int]:
    port = free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    proc = Process([sys.executable, "-m", "benchmarks.sink", str(port)], directory / "sink.log",
                   env)
    wait_port(port)
    return proc, port


def start_backend(directory: Path, big_size: int, sink: int) -> tuple[Process, int]:
    """Static nginx (every core): the thing behind both proxies, never the bottleneck.
    Uploads go on to `sink`, which reads every byte before answering."""
    root = directory / "www"
    root.mkdir(parents=True, exist_ok=True)
    (root / "1k").write_bytes(ONE_KIB)
    (root / "1m").write_bytes(ONE_MB)
    with (root / "big").open("wb") as handle:
        handle.truncate(big_size)  # sparse: no disk cost
    for path in (directory, root, root / "1k", root / "1m", root / "big"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    port = free_port()
    conf = _nginx_conf(directory, f"""
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {root};
        location = /1k {{ default_type application/octet-stream; }}
        location = /1m {{ default_type application/octet-stream; }}
        location = /big {{ default_type application/octet-stream; }}
        location = /upload {{
            client_max_body_size 0;
            proxy_request_buffering off;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://127.0.0.1:{sink};
        }}
    }}""", workers=os.cpu_count() or 1)
    proc = Process([_nginx(), "-c", str(conf)], directory / "backend.log")
    wait_port(port)
    return proc, port


def start_nginx_peer(directory: Path, certs: Certs, backend: int, workers: int,
                     buffering: bool = True, idle_timeout: float | None = None
                     ) -> tuple[Process, int]:
    """nginx at its defaults for what it does with a response and a request body
    (`proxy_buffering on`, `proxy_request_buffering on`); `buffering=False` turns both off, as
    the peer ran before: it halves nginx's download throughput, so it is only an extra row.
    What differs from the defaults, and why: no body size limit (the upload scenario sends
    1 GiB), keep-alive to the backend (qtls-server keeps its backend connections), TLS 1.3 with
    tickets for an hour (as qtls-server). `idle_timeout` (seconds) lengthens how long a quiet
    client connection is kept, before its request and between requests: the memory scenarios
    hold thousands of connections for longer than the defaults."""
    port = free_port()
    streaming = "" if buffering else """
        proxy_request_buffering off;
        proxy_buffering off;"""
    conf = _nginx_conf(directory, f"""
    upstream backend {{ server 127.0.0.1:{backend}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port} ssl backlog=4096;
        ssl_certificate {certs.ecdsa_p256_cert};
        ssl_certificate_key {certs.ecdsa_p256_key};
        ssl_protocols TLSv1.3;
        ssl_session_tickets on;
        ssl_session_timeout 1h;
        client_max_body_size 0;{streaming}{_idle_nginx(idle_timeout)}
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}""", workers=workers)
    proc = Process([_nginx(), "-c", str(conf)], directory / "nginx-peer.log")
    wait_port(port)
    return proc, port


def _has_server_key(name: str) -> bool:
    """Whether this tree's configuration has `server.<name>` (a key another checkout, run in
    an A/B, may not know)."""
    from qproxy.config.model import ServerSection

    return name in ServerSection.model_fields


def _idle_nginx(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return f"""
        client_header_timeout {seconds:.0f}s;
        keepalive_timeout {seconds:.0f}s;"""


def start_qtls(directory: Path, pairs: list[tuple[Path, Path]], backend: int, workers: int,
               name: str, source: Path = ROOT, groups: tuple[str, ...] = (
                   "kyber768", "x25519", "kyber1024", "ecdhe-p384"),
               idle_timeout: float | None = None, server: dict | None = None,
               routes: list | None = None) -> tuple[Process, int, int]:
    """qtls-server from the source tree `source` (another checkout for an A/B run);
    `idle_timeout` as for nginx (start_nginx_peer); `server` keys added to its `server`
    section and `routes` (to the upstream "backend") for scenarios that need them."""
    port, metrics = free_port(), free_port()
    config = {
        "server": {"listen_address": "127.0.0.1", "listen_port": port, "workers": workers,
                   "max_connections": 100000, "backlog": 4096},
        "certificates": {"keypairs": [{"cert": str(c), "key": str(k)} for c, k in pairs]},
        "algorithms": {"kem": list(groups)},
        "logging": {"level": "info", "console": True, "access_log": False},
        "metrics": {"enabled": True, "address": "127.0.0.1", "port": metrics},
        "upstreams": {"backend": {"servers": [f"127.0.0.1:{backend}"], "keepalive": 64}},
    }
    if idle_timeout is not None:
        config["server"].update(client_header_timeout=idle_timeout, keepalive_timeout=idle_timeout)
    if source == ROOT and _has_server_key("client_max_body_size"):
        config["server"]["client_max_body_size"] = 0  # no limit, as the nginx peer's 0
    config["server"].update(server or {})
    if routes is not None:
        config["routes"] = routes
    path = directory / f"{name}.json"
    path.write_text(json.dumps(config))
    proc = Process([sys.executable, "-m", "qproxy", "serve", "--config", str(path)],
                   directory / f"{name}.log", source_env(source), cwd=source)
    try:
        wait_port(port)
        wait_port(metrics)
    except TimeoutError:
        proc.stop()
        raise RuntimeError(f"qtls-server did not start; its log: {proc.log}") from None
    return proc, port, metrics


def source_env(source: Path) -> dict[str, str]:
    """The environment that makes `python -m qproxy` import the package under `source`."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(source)
    return env


def check_source(source: Path) -> Path:
    """`source`, once a Python started with `source_env` is seen to import qproxy from it (an
    editable install of this checkout must not win over the other tree's path)."""
    source = source.resolve()
    found = subprocess.run([sys.executable, "-c", "import qproxy; print(qproxy.__file__)"],
                           env=source_env(source), cwd=source, capture_output=True, text=True,
                           timeout=60)
    where = Path(found.stdout.strip() or "?").resolve()
    if found.returncode != 0 or source not in where.parents:
        raise RuntimeError(f"{source}: python imports qproxy from {where}, not from this tree "
                           f"({found.stderr.strip()[-300:]})")
    return source


def worker_pids(master_pid: int) -> list[int]:
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children")
    return [int(p) for p in children.read_text().split()] if children.exists() else []


def qtls_worker_pids(log: Path, timeout: float = 30.0) -> list[int]:
    """The workers qtls-server's master announced (its other child serves metrics)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if '"listening"' in line:
                return list(json.loads(line)["workers"])
        time.sleep(0.05)
    raise TimeoutError(f"qtls-server did not log its workers in {log}")


def client_connections(pid: int, port: int) -> int:
    """How many TCP connections to local port `port` process `pid` holds open (its backend
    connections and listeners not counted): what a memory scenario waits on."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:
            next(handle)
            for line in handle:
                fields = line.split()
                # local address "0100007F:1F90", state 0A = LISTEN, inode in field 9
                if (fields[9] in inodes and fields[3] != "0A"
                        and int(fields[1].rsplit(":", 1)[1], 16) == port):
                    count += 1
    return count


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _nginx() -> str:
    path = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(path).exists():
        raise RuntimeError("nginx is not installed: `make bench` installs it (Debian nginx-light)")
    return path
