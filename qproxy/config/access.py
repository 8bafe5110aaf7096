"""The `access` blocks of `server.json`: who may connect, per listener (`server.access`) and
per route (`routes[].access`). Shaped after nginx's allow/deny, limit_req and limit_conn and
ghostunnel's --allow-* flags; validated here, turned into `policy.access.AccessSpec` by
`spec()`.

    "access": {
      "rules": [{"allow": ["10.0.0.0/8", "2001:db8::/32"]}, {"deny": "all"}],
      "clients": {"cn": ["device-42"], "uri": ["spiffe://ota.example/device"]},
      "rate": {"requests_per_second": 10, "burst": 20, "key": "address"},
      "max_connections_per_address": 100
    }
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

# Nothing imported here may load OpenSSL (cryptography): the config is read before
# OPENSSL_CONF names the HSM's provider (tests/test_access_policy.py checks it).
from ..policy.access import AccessSpec, RateKey, RateSpec
from ..policy.cidr import ALL, Action, IpNetwork, Rule
from ..policy.clients import ClientAllowList, parse_dn

_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def parse_network(text: str) -> tuple[IpNetwork, ...]:
    """'all', '10.0.0.0/8', '10.1.2.3' (a /32), '2001:db8::/32', '::1' -> networks.
    IPv4-mapped IPv6 networks become the IPv4 networks they hold (clients are matched so)."""
    if text == "all":
        return ALL
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(f"{text[:80]!r} is not an IP address or CIDR network (e.g. "
                             "'10.0.0.0/8', '2001:db8::/32', '192.0.2.7' or 'all')") from None
        raise ValueError(f"{text[:80]!r} has bits set past its prefix length (did you mean "
                         f"'{loose.with_prefixlen}'?)") from exc
    if network.version == 6 and network.subnet_of(_MAPPED):  # type: ignore[arg-type]
        v4 = ipaddress.IPv4Network((int(network.network_address) & 0xFFFFFFFF,
                                    network.prefixlen - 96))
        return (v4,)
    return (network,)


def _check_network(text: str) -> str:
    parse_network(text)
    return text


def _one_or_many(value: Any) -> Any:
    # A tuple, not a list: strict validation takes what a before-validator returns as Python,
    # where only a tuple fills a tuple.
    if isinstance(value, str):
        return (value,)
    return tuple(value) if isinstance(value, list) else value


Network = Annotated[str, Field(strict=True), AfterValidator(_check_network)]
Networks = Annotated[tuple[Network, ...], BeforeValidator(_one_or_many), Field(min_length=1)]
Name = Annotated[str, Field(strict=True, min_length=1, max_length=1024)]


def _check_dn(text: str) -> str:
    try:
        parse_dn(text)
    except ValueError as exc:
        why = f" ({exc})" if str(exc) else ""
        raise ValueError(f"{text[:80]!r} is not a distinguished name such as 'CN=Device CA, "
                         f"O=Example'{why}") from None
    return text


def _check_uri(text: str) -> str:
    scheme, sep, rest = text.partition(":")
    if not sep or not scheme or not rest or any(c.isspace() for c in text):
        raise ValueError(f"{text[:80]!r} is not a URI (e.g. 'spiffe://example.org/device')")
    return text


class _Block(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IpRule(_Block):
    """One line of nginx's allow/deny: exactly one of the two keys."""

    allow: Networks | None = None
    deny: Networks | None = None

    @model_validator(mode="after")
    def _one_action(self) -> "IpRule":
        if (self.allow is None) == (self.deny is None):
            raise ValueError('give exactly one of "allow" or "deny" in each rule, e.g. '
                             '{"allow": "10.0.0.0/8"} or {"deny": "all"}')
        return self

    def rule(self) -> Rule:
        action, texts = ((Action.ALLOW, self.allow) if self.allow is not None
                         else (Action.DENY, self.deny))
        assert texts is not None
        return Rule(action, tuple(n for text in texts for n in parse_network(text)))


class ClientsBlock(_Block):
    """Verified client certificates that may pass: any listed value matching is enough."""

    cn: tuple[Name, ...] = ()
    ou: tuple[Name, ...] = ()
    dns: tuple[Name, ...] = ()
    uri: tuple[Annotated[Name, AfterValidator(_check_uri)], ...] = ()
    issuer: tuple[Annotated[Name, AfterValidator(_check_dn)], ...] = ()

    @model_validator(mode="after")
    def _something_listed(self) -> "ClientsBlock":
        if not (self.cn or self.ou or self.dns or self.uri or self.issuer):
            raise ValueError("list at least one of cn, ou, dns, uri, issuer (with none, every "
                             "client would be refused; remove \"clients\" to allow any "
                             "verified client)")
        return self

    def allow_list(self) -> ClientAllowList:
        return ClientAllowList(
            cn=frozenset(self.cn), ou=frozenset(self.ou),
            dns=frozenset(name.lower().rstrip(".") for name in self.dns),
            uri=frozenset(self.uri), issuer=frozenset(parse_dn(dn) for dn in self.issuer))


class RateBlock(_Block):
    requests_per_second: Annotated[float, Field(strict=True, gt=0, le=1_000_000,
                                                allow_inf_nan=False)]
    # Requests that may arrive at once (the bucket's size). nginx's `burst=N` is N + 1 here.
    burst: Annotated[int, Field(strict=True, ge=1, le=1_000_000)] = 1
    key: Literal["address", "identity"] = "address"

    def spec(self) -> RateSpec:
        return RateSpec(self.requests_per_second, self.burst, RateKey(self.key))


class RouteAccess(_Block):
    """`routes[].access`: checked after routing, for that route's requests only."""

    rules: tuple[IpRule, ...] = ()
    clients: ClientsBlock | None = None
    rate: RateBlock | None = None

    def spec(self) -> AccessSpec:
        return AccessSpec(
            rules=tuple(r.rule() for r in self.rules),
            clients=self.clients.allow_list() if self.clients is not None else None,
            rate=self.rate.spec() if self.rate is not None else None)


class ListenerAccess(RouteAccess):
    """`server.access` (each listener's `access`): every request on the listener; the
    address rules and the connection cap are decided when a connection arrives."""

    max_connections_per_address: Annotated[int, Field(strict=True, ge=1, le=10_000_000)] | None = None

    def spec(self) -> AccessSpec:
        spec = super().spec()
        return AccessSpec(spec.rules, spec.clients, spec.rate,
                          self.max_connections_per_address)
