"""The client connection's state as data: what it is reading, and what it is answering.

Like h11's `_state.py`, the two directions are two machines, since a pipelined request can be
read while the one before it is answered; each change goes through a table of the allowed
transitions, and anything else is a bug that raises at once instead of two flags quietly
contradicting each other.
"""

from __future__ import annotations

import enum


class ReadState(enum.Enum):
    """What the connection is reading from the client."""

    IDLE = "idle"  # between requests: waiting for a first byte (keep-alive)
    HEAD = "head"  # a request line and header fields
    BODY = "body"  # a request body
    UPGRADING = "upgrading"  # after an upgrade request: bytes are kept for the tunnel
    TUNNELLING = "tunnelling"  # the byte tunnel's protocol reads now
    ERROR = "error"  # bytes that are not HTTP: nothing after them is parsed
    ENDED = "ended"  # the client's input ended (EOF, or the connection is closing)


class WriteState(enum.Enum):
    """What the connection is answering."""

    IDLE = "idle"  # no request in hand
    WAITING = "waiting"  # a request's handler runs (waiting for the backend); nothing sent yet
    SENDING = "sending"  # a response head has gone; its body follows
    DONE = "done"  # the response is out; its handler is finishing (logging)
    TUNNELLING = "tunnelling"  # after a 101: bytes relayed both ways
    MUST_CLOSE = "must close"  # the last response is out: close, take no further request
    CLOSED = "closed"


READ_TRANSITIONS: dict[ReadState, frozenset[ReadState]] = {
    # llhttp completes an upgrade request's message before it says "upgrade".
    ReadState.IDLE: frozenset({ReadState.HEAD, ReadState.UPGRADING, ReadState.ERROR,
                               ReadState.ENDED}),
    ReadState.HEAD: frozenset({ReadState.BODY, ReadState.IDLE, ReadState.UPGRADING,
                               ReadState.ERROR, ReadState.ENDED}),
    ReadState.BODY: frozenset({ReadState.IDLE, ReadState.ERROR, ReadState.ENDED}),
    ReadState.UPGRADING: frozenset({ReadState.TUNNELLING, ReadState.ENDED}),
    ReadState.TUNNELLING: frozenset({ReadState.ENDED}),
    ReadState.ERROR: frozenset({ReadState.ENDED}),
    ReadState.ENDED: frozenset(),
}

WRITE_TRANSITIONS: dict[WriteState, frozenset[WriteState]] = {
    WriteState.IDLE: frozenset({WriteState.WAITING, WriteState.MUST_CLOSE, WriteState.CLOSED}),
    WriteState.WAITING: frozenset({WriteState.DONE, WriteState.SENDING, WriteState.TUNNELLING,
                                   WriteState.MUST_CLOSE, WriteState.CLOSED}),
    WriteState.SENDING: frozenset({WriteState.DONE, WriteState.MUST_CLOSE, WriteState.CLOSED}),
    WriteState.DONE: frozenset({WriteState.IDLE, WriteState.MUST_CLOSE, WriteState.CLOSED}),
    WriteState.TUNNELLING: frozenset({WriteState.MUST_CLOSE, WriteState.CLOSED}),
    WriteState.MUST_CLOSE: frozenset({WriteState.CLOSED}),
    WriteState.CLOSED: frozenset(),
}


class StateError(RuntimeError):
    """A transition the tables do not allow: a bug in the connection's code, not the peer's."""


def _compile(table: dict) -> None:
    # Checked several times a request: as bit masks on the members themselves (hashing an
    # Enum member runs Python code in 3.11; the tables above stay the reference).
    for bit, state in enumerate(table):
        state.bit = 1 << bit
    for state, allowed in table.items():
        state.allowed = state.bit
        for new in allowed:
            state.allowed |= new.bit


_compile(READ_TRANSITIONS)
_compile(WRITE_TRANSITIONS)
for _state in ReadState:
    # Bytes read in these states are parsed as requests.
    _state.parsing = _state in (ReadState.IDLE, ReadState.HEAD, ReadState.BODY)


def check_read(old: ReadState, new: ReadState) -> ReadState:
    if not old.allowed & new.bit:  # type: ignore[attr-defined]
        raise StateError(f"HTTP read state {old.value} -> {new.value} is not allowed")
    return new


def check_write(old: WriteState, new: WriteState) -> WriteState:
    if not old.allowed & new.bit:  # type: ignore[attr-defined]
        raise StateError(f"HTTP write state {old.value} -> {new.value} is not allowed")
    return new
