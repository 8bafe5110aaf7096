"""Open connections per client address (nginx's `limit_conn` keyed by `$binary_remote_addr`).

Only addresses with a connection open are kept: the table's size is the number of distinct
clients connected, which `server.max_connections` already bounds.
"""

from __future__ import annotations

from typing import Hashable


class ConnectionCounter:
    __slots__ = ("limit", "_open")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a connection cap needs a limit >= 1")
        self.limit = limit
        self._open: dict[Hashable, int] = {}

    def open(self, key: Hashable) -> bool:
        """Count one more connection from `key`; False (and nothing counted) past the limit."""
        count = self._open.get(key, 0)
        if count >= self.limit:
            return False
        self._open[key] = count + 1
        return True

    def close(self, key: Hashable) -> None:
        """A connection `open` admitted has closed."""
        count = self._open.get(key, 0) - 1
        if count > 0:
            self._open[key] = count
        else:
            self._open.pop(key, None)

    def count(self, key: Hashable) -> int:
        return self._open.get(key, 0)

    def __len__(self) -> int:
        return len(self._open)
