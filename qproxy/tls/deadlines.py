"""Many connections' deadlines on one event-loop timer.

Every idle TLS connection waits for its first request under a deadline. A `TimerHandle` per
connection costs about 580 bytes (the handle, its libuv timer and a copied context): a
fortieth of an idle connection. Here a connection costs one entry in a set, and deadlines fire
up to `RESOLUTION` seconds late, which is fine for timeouts counted in seconds.
"""

from __future__ import annotations

import asyncio
import math
import weakref
from typing import Protocol

RESOLUTION = 0.25


class Expiring(Protocol):
    def deadline_passed(self) -> None: ...


class Deadlines:
    def __init__(self, loop: asyncio.AbstractEventLoop, resolution: float = RESOLUTION) -> None:
        self._loop = loop
        self._resolution = resolution
        self._buckets: dict[float, set[Expiring]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def add(self, delay: float, target: Expiring) -> float:
        """Call `target.deadline_passed()` after `delay` seconds (a little later, at most
        `resolution`). Returns the key to `remove` it with."""
        step = self._resolution
        key = math.ceil((self._loop.time() + delay) / step) * step
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = set()
        bucket.add(target)
        if key < self._timer_at:
            self._arm(key)
        return key

    def remove(self, key: float, target: Expiring) -> None:
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.discard(target)
            if not bucket:
                del self._buckets[key]

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self._buckets.values())

    def targets(self) -> list[Expiring]:
        """Everything waiting on a deadline (at shutdown: the connections yet to send a request)."""
        return [target for bucket in self._buckets.values() for target in bucket]

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer, self._timer_at = None, math.inf
        now = self._loop.time()
        for key in sorted(k for k in self._buckets if k <= now):
            for target in self._buckets.pop(key, ()):
                target.deadline_passed()
        if self._buckets:
            self._arm(min(self._buckets))


_per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Deadlines] = (
    weakref.WeakKeyDictionary())


# The last loop asked about and its Deadlines: every keep-alive request arms and cancels its
# header deadline, and a worker has one loop, so the weak dictionary's look-up (a weak
# reference made and hashed each time, about 1 % of a worker's time) is skipped. It keeps
# no loop alive that `_per_loop` does not (a Deadlines holds its loop).
_last: tuple[asyncio.AbstractEventLoop, Deadlines] | None = None


def for_running_loop() -> Deadlines:
    global _last
    loop = asyncio.get_running_loop()
    last = _last
    if last is not None and last[0] is loop:
        return last[1]
    deadlines = _per_loop.get(loop)
    if deadlines is None:
        deadlines = _per_loop[loop] = Deadlines(loop)
    _last = (loop, deadlines)
    return deadlines
