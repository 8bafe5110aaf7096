"""The `listeners` list (issue 14): the schema, what a listener inherits, and each refusal
naming its JSON path."""

from __future__ import annotations

import json
from typing import Any

import pytest

from qproxy.config.listeners import listeners_of, with_listener_tls
from qproxy.config.load import parse_config
from qproxy.config.model import ServerSection
from qproxy.errors import ConfigError, ConfigErrors

BASE: dict[str, Any] = {
    "certificates": {"keypairs": [{"cert": "server.pem", "key": "server.key"}]},
    "upstreams": {"app": {"servers": ["127.0.0.1:5000"]},
                  "mosquitto": {"servers": ["127.0.0.1:1883"]}},
}
MQTT = {"name": "mqtt", "mode": "tcp", "listen_address": "::", "listen_port": 8883,
        "upstream": "mosquitto"}


def doc(*listeners: dict[str, Any], **sections: Any) -> dict[str, Any]:
    return {**json.loads(json.dumps(BASE)), "listeners": list(listeners), **sections}


def errors_of(document: dict[str, Any]) -> list[ConfigError]:
    with pytest.raises(ConfigErrors) as info:
        parse_config(document, "server.json", {})
    return info.value.errors


def test_a_config_without_listeners_is_one_default_http_listener():
    document = {**BASE, "upstreams": {"app": {"servers": ["127.0.0.1:5000"]}}}
    [default] = listeners_of(parse_config(document, environ={}))
    assert (default.name, default.mode, default.address) == ("default", "http", ("0.0.0.0", 8443))
    assert default.routes[0].upstream == "app"


def test_a_tcp_listener_inherits_tls_and_certificates():
    config = parse_config(doc(MQTT, tls={"require_pq": True}), environ={})
    default, mqtt = listeners_of(config)
    assert (mqtt.name, mqtt.mode, mqtt.upstream, mqtt.address) == (
        "mqtt", "tcp", "mosquitto", ("::", 8883))
    assert mqtt.tls.require_pq and mqtt.certificates is config.certificates
    assert mqtt.idle_timeout == 600.0 and mqtt.routes == ()
    # The tcp upstream is not a candidate for the default routes: one http upstream is left.
    assert default.routes[0].upstream == "app"
    # Its view differs only in ALPN: none, where the HTTP door's is http/1.1.
    view = with_listener_tls(config, mqtt)
    assert view.tls.alpn == () and view.certificates is config.certificates


def test_a_listener_with_its_own_tls_gets_its_own_view_and_error_paths():
    own = {**MQTT, "tls": {"pqc_only": True},
           "certificates": {"keypairs": [{"cert": "m.pem", "key": "m.key"}]}}
    config = parse_config(doc(own), environ={})
    _, mqtt = listeners_of(config)
    view = with_listener_tls(config, mqtt)
    assert view.tls.pqc_only and view.certificates.keypairs[0].cert == "m.pem"
    assert not config.tls.pqc_only
    assert mqtt.config_path("certificates.keypairs[0].key") == \
        "listeners[0].certificates.keypairs[0].key"
    assert mqtt.config_path("algorithms.kem[0]") == "algorithms.kem[0]"


def test_http_listener_with_its_own_routes_and_limits():
    extra = {"name": "admin", "listen_address": "127.0.0.1", "listen_port": 9443,
             "keepalive_timeout": 5, "routes": [{"path_prefix": "/", "upstream": "app"}]}
    config = parse_config(doc(extra, routes=[{"path_prefix": "/", "upstream": "app"}]),
                          environ={})
    _, admin = listeners_of(config)
    assert admin.mode == "http" and admin.settings.keepalive_timeout == 5
    assert admin.routes[0].upstream == "app"


def test_process_wide_settings_stay_in_server_only():
    assert "workers" in ServerSection.model_fields and "max_connections" in ServerSection.model_fields
    [error] = errors_of(doc({**MQTT, "workers": 2}))
    assert error.path == "listeners[0].workers"
    # The master's pid file is one per process: on a listener it was accepted and ignored.
    [error] = errors_of(doc({**MQTT, "pid_file": "/run/other.pid"}))
    assert error.path == "listeners[0].pid_file"


@pytest.mark.parametrize("listener, path, words", [
    ({**MQTT, "upstream": None}, "listeners[0].upstream", "tcp mode needs upstream"),
    ({k: v for k, v in MQTT.items() if k != "upstream"}, "listeners[0].upstream", "needs upstream"),
    ({**MQTT, "upstream": "nope"}, "listeners[0].upstream", "no upstream named 'nope'"),
    ({**MQTT, "mode": "http"}, "listeners[0].upstream", "upstream is for mode tcp"),
    ({**MQTT, "routes": [{"upstream": "app"}]}, "listeners[0].routes", "for mode http"),
    ({"name": "web", "listen_port": 9443, "idle_timeout": 5}, "listeners[0].idle_timeout",
     "for mode tcp"),
    ({"name": "web", "listen_port": 9443, "routes": [{"upstream": "gone"}]},
     "listeners[0].routes[0].upstream", "no upstream named 'gone'"),
    ({**MQTT, "name": "bad name"}, "listeners[0].name", "only letters, digits"),
    ({**MQTT, "name": "default"}, "listeners[0].name", "taken (by server)"),
    ({**MQTT, "mode": "udp"}, "listeners[0].mode", 'expected "http" or "tcp"'),
    ({**MQTT, "listen_port": 70000}, "listeners[0].listen_port", "65535"),
    ({**MQTT, "listen_address": "not a host"}, "listeners[0].listen_address", "neither"),
    ({**MQTT, "listen_port": 8443, "listen_address": "0.0.0.0"}, "listeners[0].listen_port",
     "already server's address"),
    # The default listener holds 0.0.0.0:8443: every IPv4 address, and "::" every address.
    ({**MQTT, "listen_port": 8443, "listen_address": "127.0.0.1"},
     "listeners[0].listen_address", "overlaps server's 0.0.0.0:8443"),
    ({**MQTT, "listen_port": 8443, "listen_address": "::"}, "listeners[0].listen_address",
     "overlaps server's 0.0.0.0:8443"),
    ({**MQTT, "bogus": 1}, "listeners[0].bogus", "unknown key"),
    ({**MQTT, "tls": {"pqc_only": True, "protocol_version": "1.2"}}, "listeners[0].tls",
     "pqc_only needs TLS 1.3"),
])
def test_bad_listener_is_refused_at_its_path(listener, path, words):
    errors = errors_of(doc(listener))
    assert [e.path for e in errors] == [path], errors
    assert words in str(errors[0])
    assert str(errors[0]).startswith(path + ": ")


def test_a_listener_without_a_port_is_refused():
    listener = {k: v for k, v in MQTT.items() if k != "listen_port"}
    assert [e.path for e in errors_of(doc(listener))] == ["listeners[0].listen_port"]


def test_names_and_addresses_are_unique_across_listeners():
    second = {**MQTT, "listen_port": 8884}
    [error] = errors_of(doc(MQTT, second))
    assert error.path == "listeners[1].name" and "taken (by listeners[0])" in str(error)
    same_port = {**MQTT, "name": "mqtt2", "listen_address": "0:0::0"}
    [error] = errors_of(doc(MQTT, same_port))
    assert error.path == "listeners[1].listen_port" and "listeners[0]'s address" in str(error)


def test_ipv4_and_ipv6_on_one_port_are_two_listeners():
    v4 = {**MQTT, "name": "mqtt4", "listen_address": "127.0.0.1"}
    v6 = {**MQTT, "name": "mqtt6", "listen_address": "::1"}
    config = parse_config(doc(v4, v6), environ={})
    assert [l.address for l in listeners_of(config)][1:] == [("127.0.0.1", 8883), ("::1", 8883)]


def test_route_naming_a_missing_upstream_is_reported_at_the_route():
    [error] = errors_of(doc(routes=[{"upstream": "app"}, {"upstream": "zzz"}]))
    assert error.path == "routes[1].upstream"



def test_alpn_other_than_http1_only_on_tcp_listeners():
    own = {**MQTT, "tls": {"alpn": ["mqtt"]}}
    bare = {**MQTT, "name": "bare", "listen_port": 8884}
    config = parse_config(doc(own, bare), environ={})
    _, door, plain = listeners_of(config)
    assert with_listener_tls(config, door).tls.alpn == ("mqtt",)
    assert with_listener_tls(config, plain).tls.alpn == ()  # not the HTTP door's http/1.1
    http = {"name": "web", "listen_port": 9443, "tls": {"alpn": ["h2"]}}
    [error] = errors_of(doc(MQTT, http))
    assert error.path == "listeners[1].tls.alpn" and "on an http listener" in str(error)
    [error] = errors_of(doc(MQTT, tls={"alpn": ["mqtt"]}))
    assert error.path == "tls.alpn"
    [error] = errors_of(doc({**MQTT, "tls": {"alpn": ["a b"]}}))
    assert "not an ALPN protocol name" in str(error)
