"""An ordered allow/deny list of networks, first match wins (nginx's `allow` / `deny`).

The rules are flattened once into disjoint integer ranges per address family, each range
carrying the index of the first rule that covers it; a lookup is one `bisect` over a list of
ints, whatever the number of rules (1,000 CIDRs cost the same as 3). IPv4-mapped IPv6
addresses (`::ffff:10.0.0.1`, what a dual-stack socket reports for an IPv4 client) are
matched as the IPv4 address they carry.
"""

from __future__ import annotations

import enum
import heapq
import ipaddress
from bisect import bisect_right
from dataclasses import dataclass
from typing import Iterable

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Action(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"


@dataclass(frozen=True, slots=True)
class Rule:
    """One `allow` or `deny` entry; it may name several networks (`"all"` is two)."""

    action: Action
    networks: tuple[IpNetwork, ...]


ALL = (ipaddress.IPv4Network("0.0.0.0/0"), ipaddress.IPv6Network("::/0"))


NO_RULE = -1


def normalise(address: IpAddress) -> IpAddress:
    """An IPv4-mapped IPv6 address is the IPv4 address it carries."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_address(text: str) -> IpAddress | None:
    """A peer address as a socket reports it ('10.0.0.1', '::1', 'fe80::1%eth0',
    '::ffff:10.0.0.1'), normalised; None for anything else (a UNIX socket's '')."""
    try:
        return normalise(ipaddress.ip_address(text.partition("%")[0]))
    except ValueError:
        return None


class _Ranges:
    """One family's address space cut into ranges; `owner[i]` is the first rule covering
    [starts[i], starts[i+1])."""

    __slots__ = ("starts", "owner")

    def __init__(self, spans: list[tuple[int, int, int]]) -> None:
        # spans: (first address, last address, rule index). Sweep the boundaries, keeping the
        # covering rules in a heap (lowest index = first match) with lazy removal.
        events: dict[int, tuple[list[int], list[int]]] = {0: ([], [])}
        for lo, hi, index in spans:
            events.setdefault(lo, ([], []))[0].append(index)
            events.setdefault(hi + 1, ([], []))[1].append(index)
        active: list[int] = []
        ended: dict[int, int] = {}
        self.starts: list[int] = []
        self.owner: list[int] = []
        for point in sorted(events):
            added, removed = events[point]
            for index in removed:
                ended[index] = ended.get(index, 0) + 1
            for index in added:
                heapq.heappush(active, index)
            while active and ended.get(active[0], 0):
                ended[active[0]] -= 1
                heapq.heappop(active)
            first = active[0] if active else NO_RULE
            if self.owner and self.owner[-1] == first:
                continue  # same owner as the range before: one range
            self.starts.append(point)
            self.owner.append(first)

    def first(self, value: int) -> int:
        return self.owner[bisect_right(self.starts, value) - 1]


class CidrRules:
    """First-match lookup over an ordered list of rules."""

    __slots__ = ("rules", "_v4", "_v6")

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules = tuple(rules)
        v4: list[tuple[int, int, int]] = []
        v6: list[tuple[int, int, int]] = []
        for index, rule in enumerate(self.rules):
            for network in rule.networks:
                span = (int(network.network_address), int(network.broadcast_address), index)
                (v4 if network.version == 4 else v6).append(span)
        self._v4 = _Ranges(v4)
        self._v6 = _Ranges(v6)

    def first_match(self, address: IpAddress) -> int:
        """Index of the first rule whose network holds `address` (normalised), or NO_RULE."""
        return (self._v4 if address.version == 4 else self._v6).first(int(address))

    def decide(self, address: IpAddress) -> tuple[Action, int]:
        """(action, rule index); no rule matching allows, as in nginx."""
        return self.decide_int(address.version, int(address))

    def decide_int(self, version: int, value: int) -> tuple[Action, int]:
        """`decide` for an address already as (version, integer): a connection's requests
        convert it once."""
        index = (self._v4 if version == 4 else self._v6).first(value)
        if index == NO_RULE:
            return Action.ALLOW, NO_RULE
        return self.rules[index].action, index
