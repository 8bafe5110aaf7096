"""Token buckets per key (nginx's `limit_req` with `nodelay`): `burst` requests may come at
once, then one every 1/rate seconds; a request finding the bucket empty is refused with how
long until a token is back (the 429's Retry-After).

Kept as GCRA (the "virtual scheduling" form of a token bucket): one number per key, the time
at which the bucket would be full again. A key whose bucket is full carries no information
and is dropped when the table is swept, so memory follows the keys active within the last
burst/rate seconds, bounded by `max_keys`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Hashable


@dataclass(frozen=True, slots=True)
class Allowed:
    pass


@dataclass(frozen=True, slots=True)
class Limited:
    retry_after: float  # seconds until the next request from this key would pass


ALLOWED = Allowed()

MAX_KEYS = 100_000
"""Keys tracked at most per bucket table (about 100 bytes each). Past it, a sweep drops the
keys whose bucket is full; if none is, the oldest keys are forgotten (they start again with a
full bucket: the table errs towards letting a request through, never towards refusing)."""


class TokenBuckets:
    __slots__ = ("rate", "burst", "_interval", "_tolerance", "_full_at", "_clock", "max_keys")

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = MAX_KEYS) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs a rate > 0 and a burst >= 1")
        self.rate = rate
        self.burst = burst
        self._interval = 1 / rate
        # How far ahead of now the bucket's "full again" time may be: burst - 1 tokens spent.
        self._tolerance = (burst - 1) * self._interval
        self._full_at: dict[Hashable, float] = {}
        self._clock = clock
        self.max_keys = max_keys

    def take(self, key: Hashable) -> Allowed | Limited:
        now = self._clock()
        full_at = self._full_at.get(key, now)
        if full_at < now:
            full_at = now
        waiting = full_at - now - self._tolerance
        if waiting > 0:
            return Limited(waiting)
        if len(self._full_at) >= self.max_keys and key not in self._full_at:
            self._sweep(now)
        self._full_at[key] = full_at + self._interval
        return ALLOWED

    def _sweep(self, now: float) -> None:
        table = self._full_at
        for key in [k for k, full_at in table.items() if full_at <= now]:
            del table[key]
        if len(table) >= self.max_keys:
            for key in list(table)[: len(table) - self.max_keys + 1]:
                del table[key]

    def __len__(self) -> int:
        return len(self._full_at)
