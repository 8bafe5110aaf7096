"""When the master replaces a generation to renew its session-ticket keys.

OpenSSL makes a context's ticket keys when the context is built, and the only way to give
workers new ones through this binding (no ticket-key callback) is new contexts, i.e. a new
generation of workers: the reload path, fed the running configuration instead of the file.
A rotation that fails (a certificate file gone meanwhile) leaves the old generation serving
and is tried again after RETRY seconds.
"""

from __future__ import annotations

from typing import Iterable

from ..config.model import MIN_TICKET_KEY_LIFETIME, TlsSection

RETRY = 60.0
MIN_LIFETIME = MIN_TICKET_KEY_LIFETIME


class TicketKeyClock:
    """Monotonic deadline of the serving generation's ticket keys; None when not rotating."""

    def __init__(self) -> None:
        self._due: float | None = None

    def renewed(self, tls: TlsSection | Iterable[TlsSection], now: float) -> None:
        """A generation with fresh contexts (start, reload or rotation) began serving; `tls`
        is each listener's section, and the shortest lifetime among those that issue tickets
        sets the next rotation (every listener's contexts are renewed together)."""
        sections = [tls] if isinstance(tls, TlsSection) else list(tls)
        lifetimes = [s.ticket_key_lifetime for s in sections
                     if s.session_tickets and s.ticket_key_lifetime > 0]
        self._due = now + min(lifetimes) if lifetimes else None

    def failed(self, now: float) -> None:
        if self._due is not None:
            self._due = now + RETRY

    def due(self, now: float, draining: bool = False) -> bool:
        """Time for new keys; not while an older generation still drains, so rotations never
        stack generations of workers (a drain ends by server.shutdown_timeout)."""
        return self._due is not None and now >= self._due and not draining

    def seconds_left(self, now: float) -> float | None:
        return None if self._due is None else max(0.0, self._due - now)
