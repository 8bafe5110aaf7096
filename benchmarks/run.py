"""`make bench`: qtls-server against the crypto bound and against nginx, in one run.

    python -m benchmarks.run [--workers 1 2] [--runs 5] [--seconds 3] [--write]
    python -m benchmarks.run --ab OTHER_TREE [--runs 8] [--seconds 4] [--workers 1]

Loopback only; every loop is bounded in time and count. Prints a table per worker count, the
memory scenarios (each in fresh servers, benchmarks/memory.py) and the verdicts against the
targets; with --write, prepends them to benchmarks/RESULTS.md with the date, the machine and
the command, and rewrites the README's performance table from them. nginx runs at its
defaults for buffering (benchmarks/peers.py says what else is set and why). --ab compares this
tree with another checkout instead (benchmarks/ab.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing as mp
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import ab, crypto_bound, loadgen, memory, openssl_floor, peers, verdicts
from .loadgen import ClientSpec
from .table import HEADER, Row

GROUPS_PQ = "X25519MLKEM768"
SIGALGS = {"mldsa": "mldsa65", "p256": "ecdsa_secp256r1_sha256", "p384": "ecdsa_secp384r1_sha384"}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(p) for p in pids)


def parallel(pool: mp.pool.Pool, function, args: list[tuple]) -> list[loadgen.Outcome]:
    return pool.starmap(function, args)


def handshake_rate(pool, clients: int, spec: ClientSpec, seconds: float, server_pids: list[int],
                   resume: bool = False, request: bool = False) -> tuple[float, float, set[str]]:
    """(per second, server CPU share used, groups seen)."""
    cpu_before, start = server_cpu(server_pids), time.perf_counter()
    results = parallel(pool, loadgen.handshakes, [(spec, seconds, resume, request)] * clients)
    wall = time.perf_counter() - start
    busy = (server_cpu(server_pids) - cpu_before) / wall
    count = sum(r.count for r in results)
    errors = sum(r.errors for r in results)
    if errors:
        print(f"  warning: {errors} errors", file=sys.stderr)
    if resume and sum(r.resumed for r in results) < count:
        print("  warning: not every connection resumed", file=sys.stderr)
    return count / wall, busy, set().union(*(r.groups for r in results))


def wrk_rate(port: int, seconds: float, connections: int) -> float | None:
    wrk = shutil.which("wrk")
    if wrk is None:
        return None
    threads = max(1, min(connections, os.cpu_count() or 1))
    out = subprocess.run([wrk, f"-t{threads}", f"-c{connections}", f"-d{max(1, int(seconds))}s",
                          f"https://127.0.0.1:{port}/1k"], capture_output=True, text=True,
                         timeout=seconds + 60).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return float(match.group(1)) if match else None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency(pool, clients: int, spec: ClientSpec, rate: float, seconds: float
            ) -> tuple[float, float]:
    results = parallel(pool, loadgen.keepalive, [(spec, seconds, rate / clients)] * clients)
    samples = [x for r in results for x in r.latencies]
    return percentile(samples, 0.5) * 1000, percentile(samples, 0.99) * 1000


@dataclass(frozen=True)
class Endpoint:
    """A server under load: the port clients use and the worker processes behind it."""
    port: int
    pids: list[int]


def transfer_rows(size: int, runs: int, ours: Endpoint, nginx: Endpoint, streaming: Endpoint
                  ) -> list[Row]:
    """One big download and one big upload, through qtls-server and nginx in turn; the download
    also through nginx with buffering off (`streaming`), as an extra row."""
    label = (f"{size >> 30} GiB" if size % (1 << 30) == 0 else
             f"{size >> 20} MiB" if size >= 1 << 20 else f"{size:,} B")
    rows = []
    for direction in ("download", "upload"):
        row = Row(f"1 transfer of {label}, {direction}", "MB/s")
        extra = Row(f"1 transfer of {label}, {direction}, nginx with proxy_buffering off",
                    "MB/s")
        targets = [(row.ours, ours), (row.peer, nginx)]
        if direction == "download":
            targets.append((extra.peer, streaming))
        growth = []
        for _ in range(runs):
            for figures, endpoint in targets:
                before = max(peers.rss_bytes(p) for p in endpoint.pids)
                spec = ClientSpec(endpoint.port, "X25519", SIGALGS["p256"])
                out = (loadgen.transfer_download(spec, "/big") if direction == "download"
                       else loadgen.transfer_upload(spec, "/upload", size))
                if out.errors:
                    print(f"  warning: {direction} to port {endpoint.port} failed",
                          file=sys.stderr)
                figures.append(out.bytes / out.latencies[0] / 1e6)
                if endpoint is ours:
                    growth.append(max(peers.rss_bytes(p) for p in endpoint.pids) - before)
        row.note = f"worker RSS growth ≤ {max(growth) >> 20} MiB; nginx at its defaults"
        rows.append(row)
        if extra.peer:
            extra.ours = list(row.ours)
            extra.note = "the peer as it ran before: not nginx's default"
            rows.append(extra)
    return rows


def run_for_workers(workers: int, args, work: Path, certs: peers.Certs, backend: int,
                    bounds: dict[str, crypto_bound.HandshakeCost]) -> list[Row]:
    started: list[peers.Process] = []
    rows: list[Row] = []
    try:
        qtls, port, _ = peers.start_qtls(work, [(certs.pki.mldsa_cert, certs.pki.mldsa_key),
                                                (certs.ecdsa_p256_cert, certs.ecdsa_p256_key)],
                                         backend, workers, f"qtls-w{workers}")
        started.append(qtls)
        qtls384, port384, _ = peers.start_qtls(work, [(certs.pki.ecdsa_cert, certs.pki.ecdsa_key)],
                                               backend, workers, f"qtls384-w{workers}")
        started.append(qtls384)
        nginx_dir = work / f"nginx-w{workers}"
        nginx_dir.mkdir()
        nginx, nginx_port = peers.start_nginx_peer(nginx_dir, certs, backend, workers)
        started.append(nginx)
        ours = peers.qtls_worker_pids(qtls.log)
        ours384 = peers.qtls_worker_pids(qtls384.log)
        nginx_workers = peers.worker_pids(nginx.proc.pid)
        clients = args.clients or 2 * (os.cpu_count() or 1)
        busy_notes: dict[str, list[float]] = {}

        with mp.get_context("fork").Pool(clients) as pool:
            def hs_row(name, groups, sigalg, bound_key, pair, our_port, our_pids, peer=False):
                row = Row(f"full handshakes: {name}", "hs/s",
                          bound=bounds[bound_key].per_second)
                floor = 1.0 / openssl_floor.handshake_seconds(*pair, groups, sigalg)
                peer_per_cpu = []
                for _ in range(args.runs):
                    rate, busy, seen = handshake_rate(pool, clients, ClientSpec(
                        our_port, groups, sigalg), args.seconds, our_pids)
                    row.ours.append(rate)
                    row.ours_per_cpu.append(rate / busy if busy else 0.0)
                    busy_notes.setdefault(row.scenario, []).append(busy / workers)
                    if peer:
                        rate, busy, _ = handshake_rate(pool, clients, ClientSpec(
                            nginx_port, "X25519", sigalg), args.seconds, nginx_workers)
                        row.peer.append(rate)
                        peer_per_cpu.append(rate / busy if busy else 0.0)
                cpu = statistics.median(busy_notes[row.scenario])
                per_cpu = statistics.median(row.ours_per_cpu)
                row.note = (f"server CPU {cpu:.0%} of {workers} core(s); per CPU-second "
                            f"{per_cpu:,.0f} = {per_cpu / floor:.0%} of OpenSSL's own "
                            f"handshake ({floor:,.0f}/s in-process)")
                if peer_per_cpu:
                    nginx = statistics.median(peer_per_cpu)
                    row.note += f"; nginx {nginx:,.0f} per CPU-second ({per_cpu / nginx:.0%})"
                rows.append(row)
                print(row.markdown(), flush=True)

            mldsa = (certs.pki.mldsa_cert, certs.pki.mldsa_key)
            p256 = (certs.ecdsa_p256_cert, certs.ecdsa_p256_key)
            p384 = (certs.pki.ecdsa_cert, certs.pki.ecdsa_key)
            hs_row("X25519MLKEM768 + ML-DSA-65", GROUPS_PQ, SIGALGS["mldsa"],
                   "X25519MLKEM768 + ML-DSA-65", mldsa, port, ours)
            hs_row("X25519MLKEM768 + ECDSA P-256", GROUPS_PQ, SIGALGS["p256"],
                   "X25519MLKEM768 + ECDSA P-256", p256, port, ours)
            hs_row("SecP384r1MLKEM1024 + ECDSA P-384", "SecP384r1MLKEM1024", SIGALGS["p384"],
                   "SecP384r1MLKEM1024 + ECDSA P-384", p384, port384, ours384)
            hs_row("X25519 + ECDSA P-256 (classical; peer nginx)", "X25519", SIGALGS["p256"],
                   "X25519 + ECDSA P-256 (classical)", p256, port, ours, peer=True)

            # Like for like: both classical (nginx's OpenSSL 3.0 has no ML-KEM); ours with
            # X25519MLKEM768 is an extra row, set against the same nginx figures.
            row = Row("resumed handshakes (PSK, X25519 both)", "hs/s")
            pq = Row("resumed handshakes (PSK, ours X25519MLKEM768, nginx X25519)", "hs/s")
            for _ in range(args.runs):
                row.ours.append(handshake_rate(pool, clients, ClientSpec(port, "X25519"),
                                               args.seconds, ours, resume=True)[0])
                row.peer.append(handshake_rate(pool, clients, ClientSpec(nginx_port, "X25519"),
                                               args.seconds, nginx_workers, resume=True)[0])
                pq.ours.append(handshake_rate(pool, clients, ClientSpec(port, GROUPS_PQ),
                                              args.seconds, ours, resume=True)[0])
            pq.peer = list(row.peer)
            pq.note = "not like for like: the ML-KEM share is in every resumed handshake too"
            rows += [row, pq]

            row = Row("new connection per request (classical, 1 KiB)", "req/s")
            for _ in range(args.runs):
                spec = ClientSpec(port, "X25519", SIGALGS["p256"])
                row.ours.append(handshake_rate(pool, clients, spec, args.seconds, ours,
                                               request=True)[0])
                spec = ClientSpec(nginx_port, "X25519", SIGALGS["p256"])
                row.peer.append(handshake_rate(pool, clients, spec, args.seconds, nginx_workers,
                                               request=True)[0])
            rows.append(row)

            row = Row("keep-alive requests, 64 connections, 1 KiB (wrk)", "req/s")
            for _ in range(args.runs):
                ours_rate, peer_rate = wrk_rate(port, args.seconds, 64), wrk_rate(
                    nginx_port, args.seconds, 64)
                if ours_rate is not None and peer_rate is not None:
                    row.ours.append(ours_rate)
                    row.peer.append(peer_rate)
            row.note = "" if row.ours else "wrk not installed"
            rows.append(row)

            # Latency added by the proxy at half of its keep-alive peak, vs the backend direct.
            peak = statistics.median(row.ours) if row.ours else 1000.0
            row = Row(f"p50 / p99 latency at {peak / 2:,.0f} req/s (ms)", "ms")
            p50s, p99s, d50s, d99s = [], [], [], []
            for _ in range(args.runs):
                p50, p99 = latency(pool, clients, ClientSpec(port, "X25519", SIGALGS["p256"]),
                                   peak / 2, args.seconds)
                d50, d99 = latency(pool, clients, ClientSpec(backend, tls=False), peak / 2,
                                   args.seconds)
                p50s.append(p50), p99s.append(p99), d50s.append(d50), d99s.append(d99)
            row.ours = [statistics.median(p50s), statistics.median(p99s)]
            row.note = (f"p50 {statistics.median(p50s):.2f} / p99 {statistics.median(p99s):.2f} "
                        f"through qtls-server vs p50 {statistics.median(d50s):.2f} / p99 "
                        f"{statistics.median(d99s):.2f} direct: added p99 "
                        f"{statistics.median(p99s) - statistics.median(d99s):.2f} ms")
            row.ours = []
            rows.append(row)

        # nginx at its defaults (proxy_buffering on) is the comparison; the same nginx with
        # buffering off, as the peer ran before, is an extra download row.
        streaming_dir = work / f"nginx-streaming-w{workers}"
        streaming_dir.mkdir()
        streaming, streaming_port = peers.start_nginx_peer(streaming_dir, certs, backend,
                                                           workers, buffering=False)
        started.append(streaming)
        rows += transfer_rows(args.big, max(1, args.runs // 2), Endpoint(port, ours),
                              Endpoint(nginx_port, nginx_workers),
                              Endpoint(streaming_port, peers.worker_pids(streaming.proc.pid)))
    finally:
        for process in reversed(started):
            process.stop()
    return rows


def estimate_seconds(args) -> float:
    """What a run with these arguments takes on a 2-core machine, roughly (measured smoke runs
    plus the time each scenario is told to take)."""
    per_workers = (args.runs * args.seconds * (5 + 3 + 2 + 2 + 2)  # handshakes .. latency
                   + args.runs * 2 * 1.0  # wrk rounds up and starts
                   + 4 * 1.5  # OpenSSL's in-process floor, per handshake row
                   + max(1, args.runs // 2) * 5 * (args.big / 250e6 + 0.5)  # transfers
                   + 12)  # three servers started and stopped
    memory_part = 0.0
    if args.idle:
        # One client process opens them: measured on this machine while shared, ~450 classical
        # handshakes/s, ~180/s with ML-KEM and ML-DSA-65. 4 classical holds (ours and nginx,
        # fresh and warmed), 2 post-quantum, 2 after a request; warm-ups; 8 fresh servers.
        memory_part += args.idle * (4 / 450 + 2 / 180 + 2 / 400) + 3 * 4.0 + 8 * 1.5
    if args.slow_readers:
        memory_part += 2 * (args.slow_readers / 300 + 5.0 + 2.0)
    return len(args.workers) * per_workers + memory_part + 10  # crypto bound, certificates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=0, help="load processes (default 2×cores)")
    parser.add_argument("--big", type=int, default=1 << 30, help="transfer size in bytes")
    parser.add_argument("--idle", type=int, default=10000,
                        help="idle connections per memory scenario (0: skip)")
    parser.add_argument("--slow-readers", type=int, default=300,
                        help="slow readers of a 1 MB object (0: skip)")
    parser.add_argument("--write", action="store_true",
                        help="prepend the tables to RESULTS.md and rewrite the README's table")
    parser.add_argument("--ab", type=Path, metavar="OTHER_TREE",
                        help="instead: keep-alive and PQ handshakes, this tree against the "
                             "qproxy source tree OTHER_TREE, in alternating runs")
    args = parser.parse_args(argv)
    if args.ab:
        return ab.main(args)
    started_at = time.monotonic()
    print(f"estimated duration on 2 cores: {estimate_seconds(args) / 60:.0f} min", flush=True)

    primitives = crypto_bound.measure_primitives()
    bounds = crypto_bound.handshake_costs(primitives)
    lines = [f"## {dt.date.today().isoformat()} — {os.cpu_count()} cores, {platform.machine()}, "
             f"Python {platform.python_version()}",
             "", f"Command: `python -m benchmarks.run {' '.join(argv or sys.argv[1:])}`", "",
             "Crypto per full handshake (server side, this machine): " + ", ".join(
                 f"{c.name} {c.seconds * 1e3:.2f} ms" for c in bounds.values()), ""]
    tables: list[str] = []
    with tempfile.TemporaryDirectory(prefix="qtls-bench-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # nginx's workers (www-data when started as root) read files here
        certs = peers.make_certs(work)
        (work / "backend").mkdir()
        sink_proc, sink = peers.start_sink(work / "backend")
        backend_proc, backend = peers.start_backend(work / "backend", args.big, sink)
        try:
            for workers in args.workers:
                rows = run_for_workers(workers, args, work, certs, backend, bounds)
                tables += [f"### {workers} worker(s)", "", HEADER,
                           *(r.markdown() for r in rows), ""]
                print("\n".join(tables[-len(rows) - 4:]), flush=True)
            if args.idle or args.slow_readers:
                rows = memory.rows(work, certs, backend, args.idle, args.slow_readers)
                section = [verdicts.MEMORY_HEADING, "", " ".join(memory.__doc__.split("\n\n")[1]
                                                                .split()), "", HEADER,
                           *(r.markdown() for r in rows), ""]
                tables += section
                print("\n".join(section), flush=True)
        finally:
            backend_proc.stop()
            sink_proc.stop()
    targets = verdicts.targets_table("\n".join(tables), previous=verdicts.newest_run(
        verdicts.RESULTS.read_text()) if verdicts.RESULTS.exists() else "")
    lines += ["Against the issue's targets (1 worker):", "", targets, "", *tables]
    report = "\n".join(lines) + "\n"
    print(targets)
    print(f"took {(time.monotonic() - started_at) / 60:.1f} min", flush=True)
    if args.write:
        verdicts.write(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
