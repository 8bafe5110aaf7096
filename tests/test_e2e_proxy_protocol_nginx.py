"""Our PROXY v2 header read by an independent implementation: nginx's `listen ...
proxy_protocol` as the backend, answering with what it parsed from the header."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import make_config
from tests.support.harness import client_context, free_port, http_request, tls_connect, wait_for_port

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
pytestmark = pytest.mark.skipif(not Path(NGINX).exists(),
                                reason="nginx-light is installed by `make test`")


@pytest.fixture
def nginx_backend(tmp_path):
    port = free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log info;
daemon off;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {tmp_path}/body;
    proxy_temp_path {tmp_path}/proxy;
    fastcgi_temp_path {tmp_path}/fastcgi;
    uwsgi_temp_path {tmp_path}/uwsgi;
    scgi_temp_path {tmp_path}/scgi;
    server {{
        listen 127.0.0.1:{port} proxy_protocol;
        location / {{
            return 200 "$proxy_protocol_addr $proxy_protocol_port $proxy_protocol_server_addr $proxy_protocol_server_port";
        }}
    }}
}}
""")
    proc = subprocess.Popen([NGINX, "-p", str(tmp_path), "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)  # (a bare connect: nginx logs a broken header and closes it)
        yield {"address": f"127.0.0.1:{port}", "error_log": tmp_path / "error.log"}
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("crc32c", [False, True])
def test_nginx_reads_our_header_with_all_tlvs(start_server, dev_pki, nginx_backend, crc32c):
    server = start_server(make_config(dev_pki, nginx_backend["address"], server={
        "send_proxy_protocol": {"version": "v2", "crc32c": crc32c}}))
    conn = tls_connect(server.port, client_context(groups="X25519MLKEM768"))
    result = http_request(conn, "GET", "/")
    assert result.status == 200, result.body
    assert result.body.decode() == (f"127.0.0.1 {conn.getsockname()[1]} "
                                     f"127.0.0.1 {server.port}")
    # Kept alive for this client: a second request on the same connection works too.
    assert http_request(conn, "GET", "/again").status == 200
