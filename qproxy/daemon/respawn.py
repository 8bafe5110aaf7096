"""When to start a dead child again: at once after a long life, with back-off when it keeps
dying (a worker that crashes at start must not make the master fork in a tight loop)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

METRICS_SLOT = -1
"""The metrics process's place in the queue (workers have slots 0 … n-1)."""
OCSP_SLOT = -2
"""The OCSP fetcher's; like the metrics process it outlives generations."""
QUICK_DEATH = 10.0
"""A child that lived less than this many seconds died quickly."""
FIRST_DELAY = 0.25
MAX_DELAY = 30.0


@dataclass(frozen=True)
class Respawn:
    slot: int
    due: float


class RespawnQueue:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._queue: list[Respawn] = []
        self._quick_deaths: dict[int, int] = {}  # slot -> consecutive quick deaths

    def schedule(self, slot: int, lived: float) -> float:
        """Queue `slot`; returns the delay: 0, or 0.25 s doubling to 30 s after quick deaths."""
        quick = self._quick_deaths.get(slot, 0) + 1 if lived < QUICK_DEATH else 0
        self._quick_deaths[slot] = quick
        delay = 0.0 if quick == 0 else min(MAX_DELAY, FIRST_DELAY * 2 ** (quick - 1))
        self._queue.append(Respawn(slot, self._clock() + delay))
        return delay

    def due(self) -> list[int]:
        """Slots whose time has come, taken off the queue."""
        now = self._clock()
        ready = [r.slot for r in self._queue if r.due <= now]
        self._queue = [r for r in self._queue if r.due > now]
        return ready

    def seconds_to_next(self) -> float | None:
        if not self._queue:
            return None
        return max(0.0, min(r.due for r in self._queue) - self._clock())

    def new_generation(self) -> None:
        """Workers of the old generation are not respawned; the metrics process still is."""
        self._queue = [r for r in self._queue if r.slot < 0]
        self._quick_deaths = {s: n for s, n in self._quick_deaths.items() if s < 0}
