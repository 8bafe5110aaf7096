"""Response header hygiene (issue 15, point 9): the backend's Server and X-Powered-By stay
behind qproxy unless a route passes them; a route's security headers (HSTS and others) are
added on 2xx/3xx answers as nginx's add_header, on every status with add_headers_always.
Pure functions first, then qtls-server in front of the real Flask OTA backend, which sends
`Server: Werkzeug/... Python/...`."""

from __future__ import annotations

import subprocess
import sys

import pytest

from qproxy.config.load import parse_config
from qproxy.config.model import Route
from qproxy.errors import ConfigErrors
from qproxy.proxy.headers import ResponseHeaders, response_headers
from tests.conftest import make_config
from tests.support.harness import (ROOT, child_env, client_context, free_port, http_request,
                                   tls_connect, wait_for_port)

BACKEND = [(b"Server", b"Werkzeug/3.1.3 Python/3.11.2"), (b"X-Powered-By", b"Flask"),
           (b"Content-Type", b"application/json"), (b"X-AspNet-Version", b"4.0.30319"),
           (b"ETag", b'"abc"')]


def names(fields) -> list[bytes]:
    return [name for name, _ in fields]


def route(**keys) -> Route:
    return Route(upstream="ota", **keys)


def test_by_default_the_backends_software_fields_are_dropped_and_nothing_added():
    out = response_headers(route()).apply(200, BACKEND)
    assert names(out) == [b"Content-Type", b"ETag"]


def test_pass_headers_lets_a_named_field_through_in_any_case():
    out = response_headers(route(pass_headers=["server"])).apply(200, BACKEND)
    assert (b"Server", b"Werkzeug/3.1.3 Python/3.11.2") in out
    assert b"X-Powered-By" not in names(out)


def test_hide_headers_drops_more():
    out = response_headers(route(hide_headers=["ETag"])).apply(200, BACKEND)
    assert names(out) == [b"Content-Type"]


@pytest.mark.parametrize("status,added", [(200, True), (204, True), (206, True), (301, True),
                                          (304, True), (308, True), (404, False),
                                          (500, False), (502, False), (101, False)])
def test_added_headers_follow_nginx_add_header_statuses(status, added):
    policy = response_headers(route(add_headers={"X-Content-Type-Options": "nosniff"}))
    out = policy.apply(status, BACKEND)
    assert ((b"X-Content-Type-Options", b"nosniff") in out) is added


def test_always_adds_on_every_status():
    policy = response_headers(route(add_headers={"X-Frame-Options": "DENY"},
                                    add_headers_always=True))
    assert (b"X-Frame-Options", b"DENY") in policy.apply(502, [])


def test_an_added_field_replaces_the_backends_own():
    policy = ResponseHeaders(add=((b"Content-Type", b"text/plain"),))
    out = policy.apply(200, BACKEND)
    assert [v for n, v in out if n.lower() == b"content-type"] == [b"text/plain"]


@pytest.mark.parametrize("hsts,value", [
    ({}, b"max-age=31536000"),
    ({"max_age": 300, "include_subdomains": True}, b"max-age=300; includeSubDomains"),
    ({"max_age": 63072000, "include_subdomains": True, "preload": True},
     b"max-age=63072000; includeSubDomains; preload"),
])
def test_hsts_shortcut(hsts, value):
    policy = response_headers(route(hsts=hsts))
    assert (b"Strict-Transport-Security", value) in policy.apply(200, [])


def base_document(**route_keys) -> dict:
    return {"certificates": {"server_cert": "c.pem", "server_key": "k.pem"},
            "upstreams": {"ota": {"servers": ["127.0.0.1:5000"]}},
            "routes": [{"upstream": "ota", **route_keys}]}


@pytest.mark.parametrize("keys,path,words", [
    ({"add_headers": {"Bad Name": "x"}}, "routes[0].add_headers.Bad Name", "not a header name"),
    ({"add_headers": {"X-A": "a\r\nInjected: 1"}}, "routes[0].add_headers.X-A", "one line"),
    ({"add_headers": {"Content-Length": "0"}}, "routes[0].add_headers.Content-Length",
     "written by qproxy"),
    ({"pass_headers": ["Server:"]}, "routes[0].pass_headers[0]", "not a header name"),
    ({"hsts": {"preload": True}}, "routes[0].hsts", "preload needs include_subdomains"),
    ({"hsts": {"max_age": "1y"}}, "routes[0].hsts.max_age", "expected a whole number"),
    ({"hsts": {}, "add_headers": {"strict-transport-security": "max-age=1"}}, "routes[0]",
     "not both"),
])
def test_header_settings_are_checked(keys, path, words):
    with pytest.raises(ConfigErrors) as info:
        parse_config(base_document(**keys), environ={})
    [error] = info.value.errors
    assert error.path == path and words in error.problem, str(error)


# --- end to end: qtls-server in front of the Flask OTA backend --------------------------------

@pytest.fixture
def ota_backend(tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "examples.ota_backend", "--port", str(port),
                             "--storage", str(tmp_path / "firmware")], cwd=ROOT, env=child_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def test_werkzeug_stays_behind_qproxy_and_security_headers_reach_clients(
        start_server, dev_pki, ota_backend):
    config = make_config(dev_pki, ota_backend, routes=[
        {"path_prefix": "/api/", "upstream": "app",
         "add_headers": {"X-Content-Type-Options": "nosniff"},
         "hsts": {"max_age": 31536000, "include_subdomains": True}},
        {"path_prefix": "/", "upstream": "app", "pass_headers": ["Server"]},
    ])
    server = start_server(config)
    conn = tls_connect(server.port, client_context(cafile=dev_pki.ca_bundle))
    healthy = http_request(conn, "GET", "/healthz")
    assert healthy.status == 200
    assert healthy.header("Server").startswith("Werkzeug/")  # passed on this route
    assert healthy.header("Strict-Transport-Security") is None

    listed = http_request(conn, "GET", "/api/firmware")
    assert listed.status == 200
    assert listed.header("Server") is None and listed.header("X-Powered-By") is None
    assert listed.header("X-Content-Type-Options") == "nosniff"
    assert listed.header("Strict-Transport-Security") == "max-age=31536000; includeSubDomains"

    missing = http_request(conn, "GET", "/api/firmware/9.9.9")
    assert missing.status == 404
    assert missing.header("Server") is None
    assert missing.header("Strict-Transport-Security") is None  # nginx: not on errors
