"""A/B: this source tree against another (say the previous main, checked out elsewhere), on the
two scenarios where a change in the request or handshake path shows first: keep-alive requests
(wrk, 64 connections) and post-quantum full handshakes (X25519MLKEM768 + ML-DSA-65). Both
servers run side by side and are measured in turns, A then B then B then A ..., so that a
machine that slows down or speeds up during the run weighs on both alike. Worker CPU per
request and handshakes per CPU-second are the steadiest figures on a shared machine.

    git archive 1586a67 | tar -x -C /tmp/qproxy-prev     # the other tree (same venv)
    python -m benchmarks.run --ab /tmp/qproxy-prev --runs 8 --seconds 4 --workers 1
"""

from __future__ import annotations

import datetime as dt
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import peers
from .loadgen import ClientSpec
from .table import fmt


@dataclass
class Figures:
    """One tree's measurements, a value per run."""
    label: str
    keepalive: list[float] = field(default_factory=list)  # req/s
    cpu_per_request: list[float] = field(default_factory=list)  # µs of worker CPU
    handshakes: list[float] = field(default_factory=list)  # hs/s
    handshakes_per_cpu: list[float] = field(default_factory=list)  # hs per CPU-second


@dataclass
class Side:
    figures: Figures
    port: int
    workers: list[int]


def measure(side: Side, pool, clients: int, seconds: float) -> None:
    from .run import handshake_rate, server_cpu, wrk_rate  # run imports this module

    before = server_cpu(side.workers)
    started = time.perf_counter()
    rate = wrk_rate(side.port, seconds, 64)
    wall = time.perf_counter() - started
    if rate:
        side.figures.keepalive.append(rate)
        side.figures.cpu_per_request.append(
            (server_cpu(side.workers) - before) / (rate * wall) * 1e6)
    rate, busy, _ = handshake_rate(pool, clients, ClientSpec(side.port, "X25519MLKEM768",
                                                             "mldsa65"), seconds, side.workers)
    side.figures.handshakes.append(rate)
    side.figures.handshakes_per_cpu.append(rate / busy if busy else 0.0)


def compare(a: list[float], b: list[float]) -> str:
    """A's median against B's, and whether the ranges overlap (then it is within the noise)."""
    if not a or not b:
        return "—"
    change = statistics.median(a) / statistics.median(b) - 1
    overlap = min(max(a), max(b)) >= max(min(a), min(b))
    return f"{change:+.1%}" + (" (ranges overlap: noise)" if overlap else " (ranges apart)")


def table(a: Figures, b: Figures) -> str:
    lines = [f"| figure | A: {a.label} | B: {b.label} | A against B |",
             "|---|---|---|---|"]
    for name, attribute in (("keep-alive requests/s (wrk, 64 connections)", "keepalive"),
                            ("worker CPU per request (µs)", "cpu_per_request"),
                            ("PQ full handshakes/s (X25519MLKEM768 + ML-DSA-65)", "handshakes"),
                            ("PQ full handshakes per CPU-second", "handshakes_per_cpu")):
        values_a, values_b = getattr(a, attribute), getattr(b, attribute)
        lines.append(f"| {name} | {fmt(values_a)} | {fmt(values_b)} | "
                     f"{compare(values_a, values_b)} |")
    return "\n".join(lines)


def main(args) -> int:
    other = peers.check_source(args.ab)
    this = peers.check_source(peers.ROOT)
    workers = args.workers[0]
    clients = args.clients or 2 * (os.cpu_count() or 1)
    # Each of the two servers is measured runs × 2 scenarios × seconds, plus starts.
    print(f"estimated duration: {(2 * args.runs * 2 * (args.seconds + 1) + 30) / 60:.0f} min",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="qtls-ab-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)
        certs = peers.make_certs(work)
        (work / "backend").mkdir()
        sink_proc, sink = peers.start_sink(work / "backend")
        backend_proc, backend = peers.start_backend(work / "backend", 1 << 20, sink)
        started: list[peers.Process] = [backend_proc, sink_proc]
        try:
            sides = []
            # Labels without absolute paths: the table is pasted into RESULTS.md, which is committed.
            for label, source in (("this tree", this), (f"other tree ({Path(other).name})", other)):
                proc, port, _ = peers.start_qtls(
                    work, [(certs.pki.mldsa_cert, certs.pki.mldsa_key),  # wrk: classical
                           (certs.ecdsa_p256_cert, certs.ecdsa_p256_key)], backend, workers,
                    f"ab-{len(sides)}", source=source)
                started.append(proc)
                sides.append(Side(Figures(label), port, peers.qtls_worker_pids(proc.log)))
            with mp.get_context("fork").Pool(clients) as pool:
                for run in range(args.runs):
                    for side in (sides if run % 2 == 0 else sides[::-1]):
                        measure(side, pool, clients, args.seconds)
                    print(f"run {run + 1}/{args.runs}: " + "; ".join(
                        f"{s.figures.label}: {fmt(s.figures.keepalive[-1:])} req/s, "
                        f"{s.figures.handshakes[-1]:,.0f} hs/s" for s in sides), flush=True)
        finally:
            for process in reversed(started):
                process.stop()
    print(f"\nA/B on {dt.date.today().isoformat()}, {os.cpu_count()} cores, {workers} "
          f"worker(s), {args.runs} alternating runs of {args.seconds:g} s, medians ± half the "
          f"range (`python -m benchmarks.run {' '.join(sys.argv[1:])}`):\n")
    print(table(sides[0].figures, sides[1].figures))
    return 0


if __name__ == "__main__":
    sys.exit(main(None))
