"""When the master replaces a generation to renew its session-ticket keys.

OpenSSL makes a context's ticket keys when the context is built, and the only way to give
workers new ones through this binding (no ticket-key callback) is new contexts, i.e. a new
generation of workers: the reload path, fed the running configuration instead of the file.
A rotation that fails (a certificate file gone meanwhile) leaves the old generation serving
and is tried again after RETRY seconds.
"""

from __future__ import annotations

from ..config.model import TlsSection

RETRY = 60.0


class TicketKeyClock:
    """Monotonic deadline of the serving generation's ticket keys; None when not rotating."""

    def __init__(self) -> None:
        self._due: float | None = None

    def renewed(self, tls: TlsSection, now: float) -> None:
        """A generation with fresh contexts (start, reload or rotation) began serving."""
        lifetime = tls.ticket_key_lifetime if tls.session_tickets else 0
        self._due = now + lifetime if lifetime > 0 else None

    def failed(self, now: float) -> None:
        if self._due is not None:
            self._due = now + RETRY

    def due(self, now: float) -> bool:
        return self._due is not None and now >= self._due

    def seconds_left(self, now: float) -> float | None:
        return None if self._due is None else max(0.0, self._due - now)
