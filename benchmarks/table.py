"""One row of a results table: a scenario, our figures, the peer's, and how they compare."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field


def fmt(values: list[float]) -> str:
    """Median ± half the range."""
    if not values:
        return "—"
    median = statistics.median(values)
    spread = (max(values) - min(values)) / 2 if len(values) > 1 else 0.0
    return f"{median:,.1f} ± {spread:,.1f}" if median < 100 else f"{median:,.0f} ± {spread:,.0f}"


@dataclass
class Row:
    scenario: str
    unit: str
    ours: list[float] = field(default_factory=list)
    peer: list[float] = field(default_factory=list)
    bound: float | None = None  # per core
    # The same work per second of server CPU (handshake rows): what "per core" compares.
    ours_per_cpu: list[float] = field(default_factory=list)
    note: str = ""

    def markdown(self) -> str:
        ratio_peer = (f"{statistics.median(self.ours) / statistics.median(self.peer):.0%}"
                      if self.ours and self.peer and statistics.median(self.peer) else "—")
        per_core = self.ours_per_cpu or self.ours
        ratio_bound = (f"{statistics.median(per_core) / self.bound:.0%}"
                       if per_core and self.bound else "—")
        bound = f"{self.bound:,.0f}" if self.bound else "—"
        return (f"| {self.scenario} | {self.unit} | {fmt(self.ours)} | "
                f"{fmt(self.peer)} | {ratio_peer} | {bound} | {ratio_bound} | {self.note} |")


HEADER = ("| scenario | unit | qtls-server | nginx (OpenSSL 3.0) | ours/peer | crypto bound "
          "per core | ours per CPU-second / bound | note |\n|---|---|---|---|---|---|---|---|")
