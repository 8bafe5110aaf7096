"""qproxy.proxy.upstream: ServerPool rotation and failure bookkeeping, Router matching."""

from __future__ import annotations

import pytest

from qproxy.config.model import Route
from qproxy.proxy.upstream import Router, ServerPool, ServerState, host_name


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


A, B, C = "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"


def pool(*addresses: str, max_fails: int = 1, fail_timeout: float = 10.0,
         clock: FakeClock | None = None) -> ServerPool:
    return ServerPool.from_addresses(addresses or (A, B, C), max_fails=max_fails,
                                     fail_timeout=fail_timeout, clock=clock or FakeClock())


def picks(p: ServerPool, count: int, exclude: frozenset[str] = frozenset()) -> list[str]:
    return [p.pick(exclude).address for _ in range(count)]


# --- ServerPool -----------------------------------------------------------------------------

def test_from_addresses_parses_hosts_and_ports():
    p = pool("127.0.0.1:5000", "[::1]:5001", "backend.local:80")
    assert [(s.host, s.port) for s in p.servers] == [("127.0.0.1", 5000), ("::1", 5001),
                                                     ("backend.local", 80)]
    assert [s.base_url for s in p.servers] == ["http://127.0.0.1:5000", "http://[::1]:5001",
                                               "http://backend.local:80"]


def test_from_addresses_rejects_bad_address():
    with pytest.raises(ValueError, match="host:port"):
        pool("127.0.0.1")


def test_round_robin():
    assert picks(pool(), 7) == [A, B, C, A, B, C, A]


def test_single_server_always_picked():
    assert picks(pool(A), 3) == [A, A, A]


def test_failed_server_skipped_until_fail_timeout_passes():
    clock = FakeClock()
    p = pool(clock=clock, fail_timeout=10.0)
    server_b = p.servers[1]
    assert p.failed(server_b) is True
    assert not p.is_up(server_b)
    assert server_b.down_until == clock.now + 10.0
    assert set(picks(p, 6)) == {A, C}
    clock.advance(9.9)
    assert set(picks(p, 6)) == {A, C}
    clock.advance(0.1)  # exactly fail_timeout later: back in rotation
    assert p.is_up(server_b)
    assert B in picks(p, 3)


def test_max_fails_counts_failures_before_taking_out():
    clock = FakeClock()
    p = pool(max_fails=3, clock=clock)
    server_a = p.servers[0]
    assert p.failed(server_a) is False
    assert p.failed(server_a) is False
    assert p.is_up(server_a)
    assert p.failed(server_a) is True
    assert not p.is_up(server_a)
    assert server_a.fails == 0  # the count starts again once it is back


def test_success_resets_failure_count_and_brings_server_back():
    clock = FakeClock()
    p = pool(max_fails=2, clock=clock)
    server_a = p.servers[0]
    p.failed(server_a)
    p.succeeded(server_a)
    assert p.failed(server_a) is False  # the earlier failure was forgotten
    p.failed(server_a)
    assert not p.is_up(server_a)
    p.succeeded(server_a)
    assert p.is_up(server_a)
    assert A in picks(p, 3)


def test_all_down_picks_the_one_that_returns_first():
    clock = FakeClock()
    p = pool(clock=clock, fail_timeout=10.0)
    server_a, server_b, server_c = p.servers
    p.failed(server_b)
    clock.advance(1)
    p.failed(server_c)
    clock.advance(1)
    p.failed(server_a)
    assert not any(p.is_up(s) for s in p.servers)
    assert picks(p, 3) == [B, B, B]
    clock.advance(8)  # B is back, the others are not
    assert picks(p, 3) == [B, B, B]
    clock.advance(1)  # C back too
    assert set(picks(p, 4)) == {B, C}


def test_exclude_skips_servers_already_tried():
    p = pool()
    assert picks(p, 4, frozenset({B})) == [A, C, A, C]


def test_exclude_everything_gives_none():
    p = pool(A, B)
    assert p.pick(frozenset({A, B})) is None


def test_exclude_with_the_rest_down_picks_a_down_server_not_an_excluded_one():
    clock = FakeClock()
    p = pool(clock=clock)
    p.failed(p.servers[2])  # C down
    clock.advance(1)
    p.failed(p.servers[1])  # B down, returns later than C
    assert p.pick(frozenset({A})).address == C
    assert p.pick(frozenset({A, C})).address == B


def test_server_state_defaults():
    server = ServerState("x:1", "x", 1)
    assert (server.fails, server.down_until) == (0, 0.0)


# --- Router ---------------------------------------------------------------------------------

def router(*routes: dict) -> Router:
    return Router(tuple(Route(**r) for r in routes))


def test_default_route_matches_everything():
    r = router({"upstream": "app"})
    assert r.match("example.com", "/") == "app"
    assert r.match(None, "/anything") == "app"


def test_longest_prefix_wins_regardless_of_order():
    r = router({"path_prefix": "/", "upstream": "root"},
               {"path_prefix": "/api", "upstream": "api"},
               {"path_prefix": "/api/v2", "upstream": "v2"})
    assert r.match("example.com", "/api/v2/items") == "v2"
    assert r.match("example.com", "/api/v1/items") == "api"
    assert r.match("example.com", "/index.html") == "root"


def test_host_specific_route_beats_generic_even_with_shorter_prefix():
    r = router({"path_prefix": "/api", "upstream": "generic-api"},
               {"host": "admin.example.com", "path_prefix": "/", "upstream": "admin"})
    assert r.match("admin.example.com", "/api/users") == "admin"
    assert r.match("www.example.com", "/api/users") == "generic-api"


def test_host_route_falls_through_to_generic_when_its_prefix_does_not_match():
    r = router({"host": "a.example", "path_prefix": "/only", "upstream": "a"},
               {"upstream": "fallback"})
    assert r.match("a.example", "/only/x") == "a"
    assert r.match("a.example", "/other") == "fallback"


def test_host_match_ignores_port_and_case():
    r = router({"host": "API.Example.com", "upstream": "api"})
    assert r.match("api.example.com:8443", "/") == "api"
    assert r.match("Api.EXAMPLE.com", "/") == "api"
    assert r.match("api.example.com.", "/") == "api"
    assert r.match("api.example.org:8443", "/") is None


@pytest.mark.parametrize("route_host", ["::1", "[::1]"])
def test_ipv6_host(route_host):
    r = router({"host": route_host, "upstream": "v6"}, {"host": "127.0.0.1", "upstream": "v4"})
    assert r.match("[::1]:8443", "/") == "v6"
    assert r.match("[::1]", "/") == "v6"
    assert r.match("127.0.0.1:8443", "/") == "v4"
    assert r.match("[::2]:8443", "/") is None


def test_no_match_gives_none():
    r = router({"host": "a.example", "upstream": "a"}, {"path_prefix": "/api", "upstream": "api"})
    assert r.match("b.example", "/") is None
    assert r.match(None, "/") is None
    assert r.match(None, "/api") == "api"


def test_empty_router_matches_nothing():
    assert Router(()).match("example.com", "/") is None


@pytest.mark.parametrize("host,name", [
    ("example.com", "example.com"),
    ("Example.COM:8443", "example.com"),
    ("example.com.", "example.com"),
    ("example.com.:443", "example.com"),
    ("127.0.0.1:8443", "127.0.0.1"),
    ("[::1]:8443", "::1"),
    ("[::1]", "::1"),
    ("[2001:DB8::1]:443", "2001:db8::1"),
    ("::1", "::1"),
    ("", ""),
    (None, ""),
])
def test_host_name(host, name):
    assert host_name(host) == name
