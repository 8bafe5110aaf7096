"""Accepting connections only while this worker can serve them (nginx's worker_connections).

Every worker of a generation watches the same listening sockets. A worker at its share of
`server.max_connections` stops watching them, so the kernel hands the next connection to a
worker with room; if every worker is full, connections wait in the listen queue (backlog)
instead of being accepted and reset. When the process is out of descriptors (EMFILE), accept
backs off on a timer instead of spinning on a socket that stays readable, and resumes by
itself once descriptors are free again.

Accepting ourselves, rather than through `loop.create_server`, is what makes pausing
possible: neither asyncio nor uvloop can stop a server's accepting without closing it.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import socket
from typing import Callable

BATCH = 16
"""Accepts per wake-up: enough to empty a burst, few enough to leave some to other workers."""
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 1.0
_BACKING_OFF = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
# Errors about one connection that died in the queue: take the next.
_CONNECTION_GONE = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ENETDOWN,
                    errno.ENOPROTOOPT, errno.EHOSTDOWN, errno.ENONET, errno.EHOSTUNREACH,
                    errno.EOPNOTSUPP, errno.ENETUNREACH}


class AcceptState(enum.Enum):
    ACCEPTING = "accepting"
    FULL = "full"  # at the connection limit: not watching the listeners
    BACKING_OFF = "backing_off"  # EMFILE and the like: not watching until a timer fires
    STOPPED = "stopped"


_TRANSITIONS = {
    AcceptState.ACCEPTING: {AcceptState.FULL, AcceptState.BACKING_OFF, AcceptState.STOPPED},
    AcceptState.FULL: {AcceptState.ACCEPTING, AcceptState.STOPPED},
    AcceptState.BACKING_OFF: {AcceptState.ACCEPTING, AcceptState.FULL, AcceptState.STOPPED},
    AcceptState.STOPPED: set(),
}


class Acceptor:
    def __init__(self, loop: asyncio.AbstractEventLoop, listeners: list[socket.socket],
                 make_protocol: Callable[[], asyncio.Protocol], has_room: Callable[[int], bool],
                 attach_failed: Callable[[BaseException], None],
                 paused: Callable[[AcceptState, str], None]) -> None:
        """`has_room(pending)`: whether one more connection fits, counting `pending` accepted
        sockets whose protocol is not made yet (the worker counts from `make_protocol` on)."""
        self._loop = loop
        self._listeners = listeners
        self._make_protocol = make_protocol
        self._has_room = has_room
        self._attach_failed = attach_failed
        self._paused = paused
        self._backoff = BACKOFF_FIRST
        self._timer: asyncio.TimerHandle | None = None
        self._attaching: set[asyncio.Task] = set()
        self._pending = 0
        self.state = AcceptState.FULL  # not watching yet: start() moves to ACCEPTING

    def _set(self, state: AcceptState) -> None:
        if state is self.state:
            return
        if state not in _TRANSITIONS[self.state]:
            raise RuntimeError(f"acceptor: {self.state.value} -> {state.value}")
        watching = self.state is AcceptState.ACCEPTING
        self.state = state
        if state is AcceptState.ACCEPTING and not watching:
            for sock in self._listeners:
                self._loop.add_reader(sock.fileno(), self._readable, sock)
        elif watching and state is not AcceptState.ACCEPTING:
            for sock in self._listeners:
                self._loop.remove_reader(sock.fileno())

    # -- control --------------------------------------------------------------------------
    def start(self) -> None:
        self._set(AcceptState.ACCEPTING if self._has_room(self._pending) else AcceptState.FULL)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._set(AcceptState.STOPPED)

    def room_made(self) -> None:
        """A connection closed: a full worker takes connections again."""
        if self.state is AcceptState.FULL and self._has_room(self._pending):
            self._set(AcceptState.ACCEPTING)

    # -- accepting ------------------------------------------------------------------------
    def _readable(self, sock: socket.socket) -> None:
        for _ in range(BATCH):
            if not self._has_room(self._pending):
                self._set(AcceptState.FULL)
                self._paused(AcceptState.FULL, "max_connections")
                return
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _CONNECTION_GONE:
                    continue
                # EMFILE, ENFILE, ENOBUFS, ENOMEM, or anything else: the listener stays
                # readable, so watching it now would spin. Try again in a while.
                self._back_off(exc)
                return
            self._backoff = BACKOFF_FIRST
            self._attach(conn)

    def _attach(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        if conn.family in (socket.AF_INET, socket.AF_INET6):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._pending += 1
        made = False

        def factory() -> asyncio.Protocol:
            nonlocal made
            made = True
            self._pending -= 1
            return self._make_protocol()  # counted by the worker from here on

        task = self._loop.create_task(self._loop.connect_accepted_socket(factory, conn))
        self._attaching.add(task)

        def attached(task: asyncio.Task) -> None:
            self._attaching.discard(task)
            failed = task.cancelled() or task.exception() is not None
            if failed and not made:  # once made, the protocol's connection_lost accounts for it
                self._pending -= 1
                conn.close()
                self._attach_failed(task.exception() if not task.cancelled()
                                    else asyncio.CancelledError())
                self.room_made()

        task.add_done_callback(attached)

    def _back_off(self, exc: OSError) -> None:
        self._set(AcceptState.BACKING_OFF)
        self._paused(AcceptState.BACKING_OFF, exc.strerror or str(exc))
        delay, self._backoff = self._backoff, min(BACKOFF_MAX, self._backoff * 2)
        self._timer = self._loop.call_later(delay, self._retry)

    def _retry(self) -> None:
        self._timer = None
        if self.state is AcceptState.BACKING_OFF:
            self._set(AcceptState.ACCEPTING if self._has_room(self._pending) else AcceptState.FULL)
