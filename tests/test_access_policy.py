"""Access decisions in-process: the CIDR matcher against a naive first-match scan, the token
bucket against a textbook one (exact arithmetic), the connection counter against a model,
client-certificate lists, worker shares, and the config blocks' errors."""

from __future__ import annotations

import copy
import ipaddress
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qproxy import pki
from qproxy.config.access import parse_network
from qproxy.config.load import parse_config
from qproxy.errors import ConfigErrors
from qproxy.policy.access import (AccessPolicy, AccessSpec, ClientState, ListenerGate,
                                  RateKey, RateSpec, Reason, share)
from qproxy.policy.cidr import ALL, NO_RULE, Action, CidrRules, Rule, normalise, parse_address
from qproxy.policy.clients import ClientAllowList, parse_dn
from qproxy.policy.connections import ConnectionCounter
from qproxy.policy.rate import Limited, TokenBuckets

PROPERTY = settings(max_examples=300, deadline=None, derandomize=True, database=None)


# -- CIDR rules ----------------------------------------------------------------------------
def _v4_networks():
    return st.builds(lambda value, prefix: ipaddress.IPv4Network((value, prefix), strict=False),
                     st.integers(0, 2**32 - 1), st.integers(0, 32))


def _v6_networks():
    return st.builds(lambda value, prefix: ipaddress.IPv6Network((value, prefix), strict=False),
                     st.integers(0, 2**128 - 1), st.integers(0, 128))


# Addresses near each other so that rules overlap often: a small pool of prefixes.
_V4_AROUND = st.builds(lambda base, low: ipaddress.IPv4Address((base << 24) | low),
                       st.sampled_from([10, 127, 192]), st.integers(0, 2**24 - 1))


def _rules():
    network = st.one_of(
        _v4_networks(), _v6_networks(),
        st.builds(lambda a, prefix: ipaddress.IPv4Network((int(a), prefix), strict=False),
                  _V4_AROUND, st.integers(8, 32)),
    )
    rule = st.builds(Rule, st.sampled_from(list(Action)),
                     st.one_of(st.tuples(network), st.just(ALL),
                               st.lists(network, min_size=1, max_size=3).map(tuple)))
    return st.lists(rule, max_size=25)


def _naive_first(rules, address) -> int:
    for index, rule in enumerate(rules):
        if any(address.version == n.version and address in n for n in rule.networks):
            return index
    return NO_RULE


_ADDRESSES = st.one_of(
    _V4_AROUND,
    st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address),
    st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address),
)


@PROPERTY
@given(_rules(), st.lists(_ADDRESSES, min_size=1, max_size=20))
def test_cidr_first_match_agrees_with_a_linear_scan(rules, addresses):
    matcher = CidrRules(rules)
    for address in addresses:
        assert matcher.first_match(address) == _naive_first(rules, address), address
        # Network boundaries: each rule's first and last address too.
    for rule in rules:
        for network in rule.networks:
            for edge in (network.network_address, network.broadcast_address):
                assert matcher.first_match(edge) == _naive_first(rules, edge)


@PROPERTY
@given(_rules(), st.integers(0, 2**32 - 1))
def test_an_ipv4_mapped_address_is_matched_as_ipv4(rules, value):
    matcher = CidrRules(rules)
    mapped = ipaddress.IPv6Address((0xFFFF << 32) | value)
    assert matcher.first_match(normalise(mapped)) == _naive_first(
        rules, ipaddress.IPv4Address(value))


def test_nginx_style_allow_then_deny_all():
    matcher = CidrRules([Rule(Action.ALLOW, parse_network("10.0.0.0/8")),
                         Rule(Action.ALLOW, parse_network("2001:db8::/32")),
                         Rule(Action.DENY, parse_network("all"))])
    assert matcher.decide(parse_address("10.1.2.3")) == (Action.ALLOW, 0)
    assert matcher.decide(parse_address("::ffff:10.1.2.3")) == (Action.ALLOW, 0)
    assert matcher.decide(parse_address("2001:db8::7")) == (Action.ALLOW, 1)
    assert matcher.decide(parse_address("11.0.0.1")) == (Action.DENY, 2)
    assert matcher.decide(parse_address("fe80::1%eth0")) == (Action.DENY, 2)
    # No rule matching allows, as in nginx.
    assert CidrRules([Rule(Action.DENY, parse_network("10.0.0.0/8"))]).decide(
        parse_address("192.0.2.1")) == (Action.ALLOW, NO_RULE)


def test_a_thousand_rules_stay_a_handful_of_ranges_per_lookup():
    rules = [Rule(Action.ALLOW, (ipaddress.IPv4Network((0x0A000000 + (i << 8), 24)),))
             for i in range(1000)] + [Rule(Action.DENY, ALL)]
    matcher = CidrRules(rules)
    assert matcher.decide(parse_address("10.0.3.9")) == (Action.ALLOW, 3)
    assert matcher.decide(parse_address("10.3.232.1")) == (Action.DENY, 1000)
    # Adjacent /24s with the same owner are not merged (different rules) but the table is
    # linear in the rules: one bisect over ~2,000 starts.
    assert len(matcher._v4.starts) <= 2 * len(rules) + 1


def test_mapped_networks_in_the_config_become_ipv4():
    assert parse_network("::ffff:10.0.0.0/104") == (ipaddress.IPv4Network("10.0.0.0/8"),)
    assert parse_network("192.0.2.7") == (ipaddress.IPv4Network("192.0.2.7/32"),)


# -- token buckets -------------------------------------------------------------------------
class _Clock:
    def __init__(self) -> None:
        self.now = Fraction(0)

    def __call__(self) -> Fraction:
        return self.now


class _TextbookBucket:
    def __init__(self, rate: Fraction, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.tokens: Fraction = Fraction(burst)
        self.last = Fraction(0)

    def take(self, now: Fraction) -> bool:
        self.tokens = min(Fraction(self.burst), self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@PROPERTY
@given(st.integers(1, 50), st.integers(1, 10), st.integers(1, 20),
       st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 2)), max_size=60))
def test_token_bucket_agrees_with_the_textbook_one(rate_num, rate_den, burst, steps):
    rate = Fraction(rate_num, rate_den)
    clock = _Clock()
    buckets = TokenBuckets(rate, burst, clock=clock)  # type: ignore[arg-type]
    reference = {key: _TextbookBucket(rate, burst) for key in range(3)}
    for advance_ms, key in steps:
        clock.now += Fraction(advance_ms, 1000)
        outcome = buckets.take(key)
        allowed = reference[key].take(clock.now)
        assert (not isinstance(outcome, Limited)) == allowed
        if isinstance(outcome, Limited):
            # Retry-After is exact: one token back at that time, not before.
            assert outcome.retry_after > 0
            assert reference[key].tokens + outcome.retry_after * rate == 1


def test_token_bucket_sweeps_full_buckets_past_its_key_bound():
    clock = _Clock()
    buckets = TokenBuckets(Fraction(1), 2, clock=clock, max_keys=3)  # type: ignore[arg-type]
    for key in range(3):
        buckets.take(key)
    clock.now += 5  # every bucket full again
    buckets.take("new")
    assert len(buckets) == 1


# -- connections and shares ----------------------------------------------------------------
@PROPERTY
@given(st.integers(1, 4), st.lists(st.tuples(st.booleans(), st.integers(0, 2)), max_size=80))
def test_connection_counter_never_passes_its_limit(limit, steps):
    counter = ConnectionCounter(limit)
    model: dict[int, int] = {}
    for opening, key in steps:
        if opening:
            admitted = counter.open(key)
            assert admitted == (model.get(key, 0) < limit)
            if admitted:
                model[key] = model.get(key, 0) + 1
        elif model.get(key):
            counter.close(key)
            model[key] -= 1
        assert counter.count(key) == model.get(key, 0)
    assert len(counter) == sum(1 for v in model.values() if v)


@given(st.integers(1, 10_000), st.integers(1, 64))
def test_worker_shares_add_up_to_the_limit(total, workers):
    parts = [share(total, workers, slot) for slot in range(workers)]
    assert sum(parts) == max(total, workers)  # each at least 1, else exactly the total
    assert min(parts) >= 1


def test_rate_and_cap_are_divided_between_workers():
    spec = AccessSpec(rate=RateSpec(10, 5), max_connections_per_address=5)
    gates = [ListenerGate(spec, workers=2, slot=slot) for slot in range(2)]
    assert [g.connection_cap for g in gates] == [3, 2]
    assert [g.policy._buckets.burst for g in gates] == [3, 2]
    assert [g.policy._buckets.rate for g in gates] == [5, 5]


def test_admission_counts_until_released():
    gate = ListenerGate(AccessSpec(max_connections_per_address=1))
    first = gate.admit("192.0.2.1")
    assert first.refused is None
    second = gate.admit("::ffff:192.0.2.1")  # the same client, through a dual-stack socket
    assert second.refused.reason is Reason.CONNECTION_CAP and second.refused.for_connection
    assert gate.admit("192.0.2.2").refused is None
    second.release()  # a refused connection was never counted
    first.release()
    first.release()  # idempotent
    assert gate.admit("192.0.2.1").refused is None


# -- client certificates -------------------------------------------------------------------
@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    from cryptography import x509
    from tests.support.client_certs import mint_client

    dev = pki.init(tmp_path_factory.mktemp("pki"))
    directory = tmp_path_factory.mktemp("clients")

    def load(*args, **kwargs):
        cert_path, _ = mint_client(dev, directory, *args, **kwargs)
        return x509.load_pem_x509_certificate(cert_path.read_bytes())

    return {
        "plain": load("device-1", ou="fleet-a"),
        "spiffe": load("device-2", uri=("spiffe://ota.test/device/2",), dns=("Dev2.OTA.test",)),
        "issuer": "CN=qproxy dev ECDSA P-384 Intermediate CA, O=qproxy development",
    }


def test_client_lists_any_match_passes(certs):
    plain, spiffe = certs["plain"], certs["spiffe"]
    assert ClientAllowList(cn=frozenset({"device-1"})).allows(plain)
    assert not ClientAllowList(cn=frozenset({"device-1"})).allows(spiffe)
    assert ClientAllowList(ou=frozenset({"fleet-a"})).allows(plain)
    assert ClientAllowList(uri=frozenset({"spiffe://ota.test/device/2"})).allows(spiffe)
    assert ClientAllowList(dns=frozenset({"dev2.ota.test"})).allows(spiffe)
    assert not ClientAllowList(uri=frozenset({"spiffe://ota.test/device/2"})).allows(plain)
    # The issuer, written in either order.
    issuer = certs["issuer"]
    reversed_dn = ", ".join(reversed(issuer.split(", ")))
    assert ClientAllowList(issuer=frozenset({parse_dn(issuer)})).allows(plain)
    assert ClientAllowList(issuer=frozenset({parse_dn(reversed_dn)})).allows(spiffe)
    assert not ClientAllowList(issuer=frozenset({parse_dn("CN=Other CA")})).allows(plain)


def test_unverified_or_absent_certificate_fails_an_allow_list(certs):
    policy = AccessPolicy(AccessSpec(clients=ClientAllowList(cn=frozenset({"device-1"}))))
    unverified = ClientState("192.0.2.1", parse_address("192.0.2.1"))
    unverified.set_client(certs["plain"], verified=False)
    assert policy.check_client(unverified).reason is Reason.CLIENT_CERT
    verified = ClientState("192.0.2.1", parse_address("192.0.2.1"))
    verified.set_client(certs["plain"], verified=True)
    assert policy.check_client(verified) is None


def test_rate_by_identity_follows_the_certificate_not_the_address(certs):
    clock = _Clock()
    policy = AccessPolicy(AccessSpec(rate=RateSpec(1, 1, RateKey.IDENTITY)), clock=clock)
    clients = []
    for address in ("192.0.2.1", "192.0.2.2"):
        client = ClientState(address, parse_address(address))
        client.set_client(certs["plain"], verified=True)
        clients.append(client)
    assert policy.take_request(clients[0]) is None
    denial = policy.take_request(clients[1])  # same device, another address
    assert denial.reason is Reason.RATE and denial.retry_after == 1
    anonymous = ClientState("192.0.2.1", parse_address("192.0.2.1"))
    anonymous.set_client(None, verified=False)
    assert policy.take_request(anonymous) is None  # no certificate: keyed by address


def test_a_connections_standing_is_decided_once_its_certificate_is_known(certs, monkeypatch):
    """Keep-alive requests do not search the rules again (the benchmark's 1,000 CIDRs), but
    nothing is remembered before the handshake says who the client is."""
    rules = (Rule(Action.DENY, (ipaddress.ip_network("10.0.0.0/8"),)),)
    policy = AccessPolicy(AccessSpec(rules=rules,
                                     clients=ClientAllowList(cn=frozenset({"device-1"}))))
    lookups = []
    decide = CidrRules.decide_int
    monkeypatch.setattr(CidrRules, "decide_int",
                        lambda self, *a: lookups.append(a) or decide(self, *a))
    client = ClientState("192.0.2.1", parse_address("192.0.2.1"))
    assert policy.check_request(client).reason is Reason.CLIENT_CERT  # not known yet
    client.set_client(certs["plain"], verified=True)
    for _ in range(3):
        assert policy.check_request(client) is None
    assert len(lookups) == 2  # once before the certificate was known, once after
    denied = ClientState("10.1.2.3", parse_address("10.1.2.3"))
    denied.set_client(certs["plain"], verified=True)
    assert policy.check_request(denied).reason is Reason.IP
    assert policy.check_request(denied).reason is Reason.IP


# -- config --------------------------------------------------------------------------------
BASE = {"certificates": {"server_cert": "c.pem", "server_key": "k.pem"},
        "upstreams": {"app": {"servers": ["127.0.0.1:5000"]}}}


def _errors(server_access=None, route_access=None, **certificates) -> list[str]:
    document = copy.deepcopy(BASE)
    document["certificates"].update(certificates)
    if server_access is not None:
        document["server"] = {"access": server_access}
    if route_access is not None:
        document["routes"] = [{"upstream": "app", "access": route_access}]
    try:
        parse_config(document)
    except ConfigErrors as exc:
        return [str(e) for e in exc.errors]
    return []


def test_config_errors_name_their_json_path():
    errors = _errors({"rules": [{"allow": "10.0.0.1/8"}, {"deny": ["all", "nope"]},
                                {"allow": "10.0.0.0/8", "deny": "all"}],
                      "rate": {"requests_per_second": "10", "burst": 0, "key": "ip"},
                      "max_connections_per_address": 0})
    # One string written: the error names the key the operator wrote, not an index.
    text = "\n".join(errors)
    assert "server.access.rules[0].allow: '10.0.0.1/8' has bits set past its prefix " \
           "length (did you mean '10.0.0.0/8'?)" in text
    assert "server.access.rules[1].deny[1]: 'nope' is not an IP address" in text
    assert "server.access.rules[2]: give exactly one of" in text
    assert "server.access.rate.requests_per_second" in text  # "10" is a string, not coerced
    assert "server.access.rate.burst" in text
    assert "server.access.rate.key" in text
    assert "server.access.max_connections_per_address" in text


def test_config_refuses_lists_no_client_could_pass():
    assert any("list at least one of cn, ou, dns, uri, issuer" in e
               for e in _errors({"clients": {}}, ca_bundle="ca.pem", verify_client=True))
    assert any("server.access.clients: needs certificates.verify_client" in e
               for e in _errors({"clients": {"cn": ["x"]}}))
    assert any("routes[0].access.clients: needs certificates.verify_client" in e
               for e in _errors(route_access={"clients": {"uri": ["spiffe://x/y"]}}))
    assert any("issuer[0]: 'Device CA' is not a distinguished name" in e
               for e in _errors({"clients": {"issuer": ["Device CA"]}}, ca_bundle="ca.pem",
                                verify_client="optional"))
    # The connection cap belongs to listeners.
    assert any(e.startswith("routes[0].access.max_connections_per_address")
               for e in _errors(route_access={"max_connections_per_address": 3}))


def test_a_valid_block_loads():
    assert _errors({"rules": [{"allow": ["10.0.0.0/8", "::1"]}, {"deny": "all"}],
                    "clients": {"cn": ["a"], "issuer": ["CN=Device CA, O=Example"]},
                    "rate": {"requests_per_second": 0.5, "burst": 3, "key": "identity"},
                    "max_connections_per_address": 10},
                   ca_bundle="ca.pem", verify_client=True) == []


def test_reading_access_settings_does_not_load_openssl():
    """The master reads the config before it points OPENSSL_CONF at the HSM's provider;
    anything that loads OpenSSL first (cryptography's bindings) leaves the provider out, and
    HSM keys then fail in the workers ('DECODER routines::unsupported'). Validating an issuer
    DN with cryptography did exactly that."""
    import subprocess
    import sys

    from tests.support.harness import ROOT, child_env

    script = """
import sys
import qproxy.cli
from qproxy.config.load import parse_config
parse_config({"certificates": {"server_cert": "c", "server_key": "k", "ca_bundle": "ca",
                               "verify_client": True},
              "upstreams": {"app": {"servers": ["127.0.0.1:1"]}},
              "server": {"access": {"rules": [{"allow": "10.0.0.0/8"}],
                                    "clients": {"cn": ["x"], "issuer": ["CN=A, O=B"]},
                                    "rate": {"requests_per_second": 1}}}})
print(sorted(m for m in sys.modules if m.startswith("cryptography.hazmat.bindings")))
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=child_env(),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_dn_parsing_matches_cryptography():
    from cryptography import x509

    from qproxy.policy.clients import dn_key

    for text in ("CN=Device CA,O=Example", "O=Example, CN=Device CA", "CN=a\\,b+OU=x",
                 "1.2.840.113549.1.9.1=ops@example.org,CN=ops", "DC=example,DC=org,CN=ca"):
        assert parse_dn(text) == dn_key(x509.Name.from_rfc4514_string(text.replace(", ", ","))), text
    for bad in ("Device CA", "CN=", "XX=1", ""):
        with pytest.raises(ValueError):
            parse_dn(bad)
