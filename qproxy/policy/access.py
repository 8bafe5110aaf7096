"""Who may connect, per listener and per route: the decisions, as one object per scope.

A connection is admitted once (its address against the listener's rules and its connection
cap) before its handshake; each request is then checked against the listener's and its
route's client-certificate allow-lists and rate limits, and the route's address rules. The
answer is a `Denial` naming the reason (the HTTP status, metric label and log field come from
it) or None. Nothing here does I/O or knows the TLS library: callers hand in the peer address
text and the verified client certificate.

Every worker keeps its own counters and buckets, each with its share of the configured
limits (`share`): see the README's "Access control" section for why and what it means.
"""

from __future__ import annotations

import enum
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Hashable

from .cidr import Action, CidrRules, IpAddress, Rule, parse_address
from .clients import ClientAllowList, identity_of
from .connections import ConnectionCounter
from .rate import ALLOWED, Limited, TokenBuckets

if TYPE_CHECKING:  # not imported: it loads OpenSSL, and the config imports this module
    from cryptography import x509


class Reason(enum.Enum):
    """Why a client was refused: the `reason` label and log field, and the HTTP answer."""

    IP = ("ip", 403)
    CLIENT_CERT = ("client_cert", 403)
    RATE = ("rate", 429)
    CONNECTION_CAP = ("connection_cap", 503)

    def __init__(self, label: str, status: int) -> None:
        self.label = label
        self.status = status


@dataclass(frozen=True, slots=True)
class Denial:
    reason: Reason
    detail: str  # one line for the log: which rule, which limit
    retry_after: int | None = None  # whole seconds, for a 429's Retry-After
    # Decided for the whole connection (at admission): it is closed after the answer.
    for_connection: bool = False


class RateKey(enum.Enum):
    ADDRESS = "address"
    IDENTITY = "identity"  # the verified client certificate; its address without one


@dataclass(frozen=True)
class RateSpec:
    requests_per_second: float
    burst: int
    key: RateKey = RateKey.ADDRESS


@dataclass(frozen=True)
class AccessSpec:
    """One scope's settings, as the config gives them (limits are totals over workers)."""

    rules: tuple[Rule, ...] = ()
    clients: ClientAllowList | None = None
    rate: RateSpec | None = None
    max_connections_per_address: int | None = None


def share(total: int, workers: int, slot: int) -> int:
    """Worker `slot`'s part of an integer limit: the parts add up to `total` (10 over 3
    workers: 4, 3, 3), except that each is at least 1 (a worker must be able to serve)."""
    workers = max(1, workers)
    part = total // workers + (1 if slot % workers < total % workers else 0)
    return max(1, part)


class ClientState:
    """What one connection's requests are checked with, worked out once per connection."""

    __slots__ = ("address_text", "address", "address_key", "version", "address_int", "cert",
                 "cert_known", "client_verdicts", "standings", "_identity")

    def __init__(self, address_text: str, address: IpAddress | None) -> None:
        self.address_text = address_text
        self.address = address
        # The address as the buckets and counters key it: normalised text (a str hashes
        # once and keeps its hash; an ipaddress object hashes anew each time).
        self.address_key = str(address) if address is not None else address_text
        self.version = address.version if address is not None else 0
        self.address_int = int(address) if address is not None else -1
        self.cert: x509.Certificate | None = None  # verified only; set after the handshake
        self.cert_known = False
        # Per-scope memo of the client-certificate verdict (the certificate cannot change).
        self.client_verdicts: dict[int, bool] = {}
        # Per-scope memo of `AccessPolicy.standing`, once the certificate is known.
        self.standings: dict[int, Denial | None] = {}
        self._identity: str | None = None

    def set_client(self, cert: x509.Certificate | None, verified: bool) -> None:
        self.cert = cert if verified else None
        self.cert_known = True

    def rate_key(self, key: RateKey) -> Hashable:
        if key is RateKey.IDENTITY and self.cert is not None:
            if self._identity is None:
                self._identity = identity_of(self.cert)
            return self._identity
        return self.address_key


class AccessPolicy:
    """One scope (a listener or a route) in one worker."""

    __slots__ = ("spec", "_rules", "_buckets", "_rate_key")

    def __init__(self, spec: AccessSpec, workers: int = 1, slot: int = 0,
                 clock: Callable[[], float] | None = None) -> None:
        self.spec = spec
        self._rules = CidrRules(spec.rules) if spec.rules else None
        self._buckets: TokenBuckets | None = None
        self._rate_key = RateKey.ADDRESS
        if spec.rate is not None:
            workers = max(1, workers)
            self._buckets = TokenBuckets(spec.rate.requests_per_second / workers,
                                         share(spec.rate.burst, workers, slot),
                                         clock or time.monotonic)
            self._rate_key = spec.rate.key

    def check_address(self, client: ClientState) -> Denial | None:
        if self._rules is None:
            return None
        if client.address is None:
            return Denial(Reason.IP, f"client address {client.address_text!r} is not an IP "
                          "address and address rules are set")
        action, index = self._rules.decide_int(client.version, client.address_int)
        if action is Action.DENY:
            return Denial(Reason.IP, f"rules[{index}] denies {client.address}")
        return None

    def check_client(self, client: ClientState) -> Denial | None:
        allowed = self.spec.clients
        if allowed is None:
            return None
        verdict = client.client_verdicts.get(id(self))
        if verdict is None:
            verdict = client.cert is not None and allowed.allows(client.cert)
            if client.cert_known:  # before the handshake's answer, nothing is settled
                client.client_verdicts[id(self)] = verdict
        if verdict:
            return None
        if client.cert is None:
            return Denial(Reason.CLIENT_CERT, "no verified client certificate, and clients "
                          "lists who may connect")
        return Denial(Reason.CLIENT_CERT, "client certificate "
                      f"{client.cert.subject.rfc4514_string()!r} is not on the clients lists")

    def take_request(self, client: ClientState) -> Denial | None:
        buckets = self._buckets
        if buckets is None:
            return None
        key = (client.address_key if self._rate_key is RateKey.ADDRESS
               else client.rate_key(self._rate_key))
        outcome = buckets.take(key)
        if outcome is not ALLOWED:
            assert isinstance(outcome, Limited)
            return Denial(Reason.RATE, f"over {buckets.rate:g} requests/s (burst "
                          f"{buckets.burst}) in this worker",
                          retry_after=max(1, math.ceil(outcome.retry_after)))
        return None

    def standing(self, client: ClientState) -> Denial | None:
        """The address rules and the certificate lists: neither the connection's address
        nor its certificate changes, so once the certificate is known the answer is kept
        on the connection's `ClientState` and its next requests pay one dict look-up (a
        route's 1,000 CIDRs are otherwise searched again on every keep-alive request)."""
        if not client.cert_known:
            return self.check_address(client) or self.check_client(client)
        standings = client.standings
        key = id(self)
        if key in standings:
            return standings[key]
        found = standings[key] = self.check_address(client) or self.check_client(client)
        return found

    def check_request(self, client: ClientState) -> Denial | None:
        """Address, certificate, then rate (a refused request takes no token)."""
        return self.standing(client) or self.take_request(client)


class ListenerGate:
    """A listener's scope in one worker: the per-request checks of `AccessPolicy`, plus the
    admission of connections (address rules and the per-address cap) before the handshake."""

    __slots__ = ("policy", "_counter")

    def __init__(self, spec: AccessSpec, workers: int = 1, slot: int = 0,
                 clock: Callable[[], float] | None = None) -> None:
        self.policy = AccessPolicy(spec, workers, slot, clock)
        cap = spec.max_connections_per_address
        self._counter = ConnectionCounter(share(cap, workers, slot)) if cap else None

    @property
    def connection_cap(self) -> int | None:
        return self._counter.limit if self._counter is not None else None

    def admit(self, address_text: str) -> "Admission":
        client = ClientState(address_text, parse_address(address_text))
        denial = self.policy.check_address(client)
        counted = False
        if denial is None and self._counter is not None:
            counted = self._counter.open(client.address_key)
            if not counted:
                denial = Denial(Reason.CONNECTION_CAP, f"{self._counter.limit} connections "
                                "from this address are open in this worker")
        if denial is not None:
            denial = Denial(denial.reason, denial.detail, for_connection=True)
        return Admission(client, denial, self if counted else None)

    def release(self, admission: "Admission") -> None:
        if self._counter is not None:
            self._counter.close(admission.client.address_key)


@dataclass(slots=True)
class Admission:
    """One connection's standing with its listener: its client, and the refusal decided
    before the handshake (answered to its first request: HTTP has no earlier way to say)."""

    client: ClientState
    refused: Denial | None
    _counted_by: ListenerGate | None = None

    def release(self) -> None:
        """The connection closed (idempotent)."""
        gate, self._counted_by = self._counted_by, None
        if gate is not None:
            gate.release(self)


OPEN_DOOR = AccessSpec()
"""No access settings: everyone, unlimited."""


