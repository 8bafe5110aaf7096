"""Backends that fail in ways the client must be told about: an active health check that takes
a server out and brings it back, and a backend that dies after the response head was sent."""

from __future__ import annotations

import pytest

from tests.conftest import make_config
from tests.support.harness import close_kind, http_request, tls_connect


def _served_by(server, conn, path: str) -> str:
    """Which backend server answered (from the access log line of the request)."""
    assert http_request(conn, "GET", path).status == 200
    line = server.wait_log(lambda e: e.get("event") == "request" and e.get("path") == path)
    assert line is not None, f"no access log line for {path}"
    return line["upstream_addr"]


def test_health_check_takes_a_failing_server_out_and_brings_it_back(start_server, start_backend,
                                                                     dev_pki):
    """Server b keeps answering requests; only its /healthz fails. So only the active health
    check can take it out, and (with fail_timeout far away) only the check brings it back."""
    a, b = start_backend(), start_backend()
    server = start_server(make_config(dev_pki, a["address"], upstreams={"app": {
        "servers": [a["address"], b["address"]], "fail_timeout": 60,
        "health_check": {"path": "/healthz", "interval": 0.2, "timeout": 1}}}))
    conn = tls_connect(server.port)
    assert {_served_by(server, conn, f"/echo?warm={i}") for i in range(4)} == {
        a["address"], b["address"]}

    (b["markers"] / "unhealthy").touch()
    out = server.wait_log(lambda e: e.get("event") == "backend server taken out of rotation"
                          and e.get("server") == b["address"], 10)
    assert out is not None
    assert {_served_by(server, conn, f"/echo?out={i}") for i in range(6)} == {a["address"]}

    (b["markers"] / "unhealthy").unlink()
    back = False
    for attempt in range(100):  # the check runs every 0.2 s: back within a few rounds
        if _served_by(server, conn, f"/echo?back={attempt}") == b["address"]:
            back = True
            break
        server.wait_log(lambda e: False, 0.05)
    assert back, "the server was not brought back once its health check passed"


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
def test_backend_dying_after_the_head_is_a_truncation_the_client_sees(server, framing):
    """The status line is gone already, so the client can only be told by the framing: a
    chunked body without its last chunk, or fewer bytes than Content-Length, then the close."""
    conn = tls_connect(server.port, timeout=5)
    query = "chunked" if framing == "chunked" else "length"
    response = http_request(conn, "GET", f"/die-after-head?framing={query}")
    assert response.status == 200
    if framing == "chunked":
        assert response.header("Transfer-Encoding") == "chunked"
    else:
        assert response.header("Content-Length") == "100000"
    assert not response.complete
    assert 0 < len(response.body) < 100_000
    assert close_kind(conn) is not None  # closed, not kept alive as if the body were whole
    line = server.wait_log(lambda e: e.get("event") == "request"
                           and e.get("path") == f"/die-after-head?framing={query}")
    assert line is not None and "mid-response" in str(line.get("error"))
    assert http_request(tls_connect(server.port), "GET", "/echo").status == 200
