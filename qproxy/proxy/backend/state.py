"""The states of one backend connection and the transitions between them, as a table (like
`tls.machine` and h11's `_state.py`): one value in place of flags that could contradict."""

from __future__ import annotations

import enum


class BackendState(enum.Enum):
    IDLE = "idle"  # connected, no request out: in the pool, or just opened
    SENDING = "sending"  # the request's body is still going out; no response head yet
    AWAITING_HEAD = "awaiting head"  # the request is out; its response head is not yet whole
    READING_BODY = "reading body"  # the head is handed over; the body is arriving
    COMPLETE = "complete"  # the response is whole; the connection may go back to the pool
    TUNNELLING = "tunnelling"  # after a 101: bytes relayed both ways, no more HTTP
    CLOSED = "closed"  # closed between exchanges, or abandoned by the caller
    FAILED = "failed"  # the exchange failed; the connection is closed


S = BackendState

TRANSITIONS: dict[BackendState, frozenset[BackendState]] = {
    S.IDLE: frozenset({S.SENDING, S.AWAITING_HEAD, S.CLOSED}),
    # The backend may answer before it has read the whole body (an early 413, say).
    S.SENDING: frozenset({S.AWAITING_HEAD, S.READING_BODY, S.FAILED, S.CLOSED}),
    # A bodiless answer (HEAD, 204, 304) passes through READING_BODY at once.
    S.AWAITING_HEAD: frozenset({S.READING_BODY, S.TUNNELLING, S.FAILED, S.CLOSED}),
    S.READING_BODY: frozenset({S.COMPLETE, S.FAILED, S.CLOSED}),
    S.COMPLETE: frozenset({S.IDLE, S.CLOSED}),
    S.TUNNELLING: frozenset({S.CLOSED}),
    S.CLOSED: frozenset(),
    S.FAILED: frozenset(),
}

# A request is out and its response not yet whole: what the read timer watches.
IN_EXCHANGE = frozenset({S.SENDING, S.AWAITING_HEAD, S.READING_BODY})
ENDED = frozenset({S.CLOSED, S.FAILED})

# The table again as bits on the members, for the per-request path: in Python 3.11 hashing an
# Enum member (a set lookup) runs Python code, an attribute read does not.
for _index, _state in enumerate(BackendState):
    _state.bit = 1 << _index
for _state in BackendState:
    _state.allowed = sum(new.bit for new in TRANSITIONS[_state])
    _state.ended = _state in ENDED
    _state.in_exchange = _state in IN_EXCHANGE


class StateError(RuntimeError):
    """A transition the table does not allow: a bug in qproxy, never the backend's doing."""


def check_transition(old: BackendState, new: BackendState) -> None:
    if not new.bit & old.allowed:  # type: ignore[attr-defined]
        raise StateError(f"backend connection: {old.value} -> {new.value} is not a transition")
