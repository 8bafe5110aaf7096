"""Access control for HTTP requests: the listener's verdict on the connection, then the
listener's and the route's per-request checks (`policy.access`), turned into a refusal the
handler answers (403, 429 with Retry-After, 503) and the observer logs and counts.

A TCP listener asks the same `ListenerGate`: `Admission.refused` before its relay starts,
`gate.policy.check_client` after the handshake; a refusal there closes the connection.
"""

from __future__ import annotations

from typing import Any, Callable

from ..policy.access import OPEN_DOOR, AccessPolicy, Admission, ClientState, Denial, ListenerGate
from ..policy.cidr import parse_address
from ..tls.machine import HandshakeInfo
from .request import HttpRequest


class RequestAccess:
    """Asks the listener's and the routes' policies about one request."""

    __slots__ = ("gate", "routes")

    def __init__(self, gate: ListenerGate | None, routes: dict[int, AccessPolicy]) -> None:
        self.gate = gate
        # id(route) -> its policy: routes are frozen config objects living as long as this.
        self.routes = routes

    def admission(self, request: HttpRequest, info: HandshakeInfo | None) -> Admission:
        """The connection's standing with its listener, asked once per request (the
        listener's and the route's checks both read it)."""
        admission: Admission | None = request.transport.get_extra_info("access")
        if admission is None:  # not admitted by the TLS side (in-process tests): decide now
            client = ClientState(request.remote, parse_address(request.remote))
            refused = self.gate.policy.check_address(client) if self.gate is not None else None
            admission = Admission(client, refused)
        client = admission.client
        if not client.cert_known and info is not None:
            client.set_client(info.peer_cert, info.peer_verified)
        return admission

    def on_listener(self, admission: Admission) -> Denial | None:
        if self.gate is None:
            return None
        if admission.refused is not None:
            return admission.refused
        policy = self.gate.policy
        return policy.check_client(admission.client) or policy.take_request(admission.client)

    def on_route(self, route: Any, admission: Admission) -> Denial | None:
        policy = self.routes.get(id(route))
        if policy is None:
            return None
        return policy.check_request(admission.client)


def access_for(listener: Any, routes: tuple[Any, ...], workers: int, slot: int,
               clock: Callable[[], float] | None = None) -> RequestAccess | None:
    """`listener`: the listener's `ListenerAccess` (or None); `routes`: the routes it serves.
    None when neither sets access: then nothing is asked per connection or request."""
    policies = {id(route): AccessPolicy(route.access.spec(), workers, slot, clock)
                for route in routes if route.access is not None}
    if listener is None and not policies:
        return None
    # Even with no listener settings, a gate gives each connection one `ClientState` (its
    # address parsed once, its certificate's verdicts remembered) for the routes' checks.
    spec = listener.spec() if listener is not None else OPEN_DOOR
    return RequestAccess(ListenerGate(spec, workers, slot, clock), policies)


class StreamGate:
    """A tcp listener's gate (`tls.protocol.AdmissionGate` in stream mode): the listener's
    decisions, with a refusal closing the connection, as nginx's stream `deny` does. Before
    the handshake: the address rules and the connection cap. Right after it: the client
    certificate lists, and the rate limit, which counts connections here (a byte stream has
    no requests)."""

    __slots__ = ("gate", "_denied")

    def __init__(self, gate: ListenerGate, denied: Callable[[str, Denial], None]) -> None:
        self.gate = gate
        self._denied = denied

    def admit(self, address: str) -> Admission:
        return self.gate.admit(address)

    def refuses_now(self, admission: Admission) -> bool:
        if admission.refused is None:
            return False
        self._denied(admission.client.address_text, admission.refused)
        return True

    def refuses_established(self, admission: Admission | None, info: HandshakeInfo) -> bool:
        if admission is None:
            return False
        client = admission.client
        client.set_client(info.peer_cert, info.peer_verified)
        policy = self.gate.policy
        denial = policy.check_client(client) or policy.take_request(client)
        if denial is None:
            return False
        self._denied(client.address_text, denial)
        return True
