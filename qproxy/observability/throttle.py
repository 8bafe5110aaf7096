"""At most one log line per interval for an event that can happen thousands of times a second."""

from __future__ import annotations

import time
from typing import Callable


class Throttle:
    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._last: float | None = None
        self._count = 0

    def hit(self) -> int | None:
        """Count one event; returns how many happened since the last line when one is due."""
        self._count += 1
        now = self._clock()
        if self._last is not None and now - self._last < self.interval:
            return None
        self._last = now
        count, self._count = self._count, 0
        return count
