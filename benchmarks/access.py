"""What access control costs on keep-alive requests: qtls-server with an allow-list of 1,000
CIDRs on the listener and on the route (the route's asked on every request) plus a rate
limit (one bucket taken per request; set high enough that nothing is refused), against the
same server with no `access` at all. Both are fresh processes started in the same run, in
pairs started in turns (A B, then B A: a server's place in the start order showed as a few
per cent in an A/A run) and measured in turns (A B B A ...), so a machine that drifts weighs
on both; wrk, 64 connections, /1k from a static nginx. Worker CPU per request is the
steadier figure.

    python -m benchmarks.access [--runs 12] [--seconds 3] [--workers 1] [--pairs 2]

The target (issue 15): under 5 % fewer requests per second.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from . import peers
from .table import fmt

COST_TARGET = 0.05


def checks_microseconds(repeat: int = 20000) -> float:
    """The per-request checks alone, in-process (best of 5): the listener's rate limit and
    the route's 1,000 CIDRs for a keep-alive request from 127.0.0.1, through the same
    `RequestAccess` the handler asks. Set against worker CPU per request, this is a bound
    on the cost that the shared machine's noise cannot blur."""
    import timeit

    from qproxy.config.access import ListenerAccess, RouteAccess
    from qproxy.policy.access import ClientState
    from qproxy.policy.cidr import parse_address
    from qproxy.proxy.access import access_for

    server, routes = access_settings()

    class Route:
        access = RouteAccess.model_validate(routes[0]["access"])

    route = Route()
    access = access_for(ListenerAccess.model_validate(server["access"]), (route,), 1, 0)
    assert access is not None and access.gate is not None
    admission = access.gate.admit("127.0.0.1")

    class Transport:
        def get_extra_info(self, name, default=None):
            return admission if name == "access" else default

    class Request:
        transport = Transport()
        remote = "127.0.0.1"

    request = Request()
    assert isinstance(admission.client, ClientState) and parse_address("127.0.0.1")

    def one() -> None:
        standing = access.admission(request, None)  # type: ignore[arg-type]
        assert access.on_listener(standing) is None
        assert access.on_route(route, standing) is None

    best = min(timeit.repeat(one, number=repeat, repeat=5))
    return best / repeat * 1e6


def allow_list(count: int = 1000) -> list[dict]:
    """`count` /24s in 10.0.0.0/8 that do not hold the client, then the client, then
    deny all: the client's address is found past every other rule."""
    networks = [f"10.{i // 256}.{i % 256}.0/24" for i in range(count - 1)]
    return [{"allow": networks}, {"allow": "127.0.0.1"}, {"deny": "all"}]


def access_settings(only: str | None = None) -> tuple[dict, list]:
    """`only`: "rate" or "rules", to tell their costs apart."""
    rules = allow_list()
    rate = {"requests_per_second": 1_000_000, "burst": 1_000_000}
    listener = {"rules": rules, "rate": rate}
    if only == "nothing":  # an A/A run: both servers alike, to see the setup's own bias
        return {}, [{"path_prefix": "/", "upstream": "backend"}]
    if only == "rate":
        return {"access": {"rate": rate}}, [{"path_prefix": "/", "upstream": "backend"}]
    if only == "rules":
        listener = {"rules": rules}
    routes = [{"path_prefix": "/", "upstream": "backend", "access": {"rules": rules}}]
    return {"access": listener}, routes


def main(argv: list[str] | None = None) -> int:
    from .run import server_cpu, wrk_rate

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--pairs", type=int, default=2,
                        help="pairs of servers, started in turns (A B, B A): runs rotate "
                             "between them")
    parser.add_argument("--only", choices=("rate", "rules", "nothing"),
                        help="configure only the rate limit, or only the CIDR lists, or "
                             "nothing (an A/A run: what differs is the setup's bias)")
    args = parser.parse_args(argv)
    figures = {label: {"rps": [], "cpu": []} for label in ("no access", "1,000 CIDRs + rate")}
    with tempfile.TemporaryDirectory(prefix="qtls-access-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)
        certs = peers.make_certs(work)
        (work / "backend").mkdir()
        sink_proc, sink = peers.start_sink(work / "backend")
        backend_proc, backend = peers.start_backend(work / "backend", 1 << 20, sink)
        started = [backend_proc, sink_proc]
        try:
            server, routes = access_settings(args.only)
            settings = {"no access": {}, "1,000 CIDRs + rate": {"server": server,
                                                                "routes": routes}}
            # Pairs started A B, then B A, ...: a server's place in the start order (its
            # ports, its memory, where the scheduler puts it) then weighs on both sides.
            pairs = []
            for pair in range(args.pairs):
                labels = list(settings) if pair % 2 == 0 else list(settings)[::-1]
                side = {}
                for label in labels:
                    index = len(started) - 2
                    proc, port, _ = peers.start_qtls(
                        work, [(certs.pki.mldsa_cert, certs.pki.mldsa_key),
                               (certs.ecdsa_p256_cert, certs.ecdsa_p256_key)], backend,
                        args.workers, f"access-{index}", **settings[label])
                    started.append(proc)
                    side[label] = (port, peers.qtls_worker_pids(proc.log), proc.log)
                pairs.append([(label, *side[label]) for label in settings])
            for run in range(args.runs):
                sides = pairs[run % len(pairs)]
                for label, port, pids, _ in (sides if (run // len(pairs)) % 2 == 0
                                             else sides[::-1]):
                    before, begun = server_cpu(pids), time.perf_counter()
                    rate = wrk_rate(port, args.seconds, 64)
                    wall = time.perf_counter() - begun
                    if not rate:
                        print("wrk gave no figure (is it installed?)", file=sys.stderr)
                        return 1
                    figures[label]["rps"].append(rate)
                    figures[label]["cpu"].append((server_cpu(pids) - before) / (rate * wall) * 1e6)
                print(f"run {run + 1}/{args.runs} (pair {run % len(pairs) + 1}): " + "; ".join(
                    f"{label}: {figures[label]['rps'][-1]:,.0f} req/s" for label, *_ in sides)
                    + f"  (load average {os.getloadavg()[0]:.1f})", flush=True)
            refused = sum(log.read_text().count('"access denied"')
                          for pair in pairs for label, _, _, log in pair
                          if label != "no access")
        finally:
            for process in reversed(started):
                process.stop()
    base, access = figures["no access"], figures["1,000 CIDRs + rate"]
    cost = 1 - statistics.median(access["rps"]) / statistics.median(base["rps"])
    cpu_cost = statistics.median(access["cpu"]) / statistics.median(base["cpu"]) - 1
    print(f"\nAccess control cost on {dt.date.today().isoformat()}, {args.workers} worker(s), "
          f"{args.runs} alternating runs of {args.seconds:g} s, medians ± half the range:\n")
    print("| figure | no access | 1,000 CIDRs (listener + route) + rate limit | change |")
    print("|---|---|---|---|")
    print(f"| keep-alive requests/s (wrk, 64 connections) | {fmt(base['rps'])} | "
          f"{fmt(access['rps'])} | {-cost:+.1%} |")
    print(f"| worker CPU per request (µs) | {fmt(base['cpu'])} | {fmt(access['cpu'])} | "
          f"{cpu_cost:+.1%} |")
    # Each run measures both servers back to back: the ratio within a run is steadier than
    # the medians when the machine's load drifts between runs.
    paired = statistics.median(a / b for a, b in zip(access["rps"], base["rps"])) - 1
    print(f"| keep-alive requests/s, median of per-run ratios | — | — | {paired:+.1%} |")
    micro = checks_microseconds()
    print(f"| the checks alone, in-process (µs per request) | — | {micro:.2f} | "
          f"{micro / statistics.median(base['cpu']):+.1%} of the worker CPU per request |")
    print(f"\nrequests refused by access control during the run: {refused} (must be 0)")
    verdict = "within" if cost < COST_TARGET and refused == 0 else "NOT within"
    print(f"cost {cost:.1%} of requests/s: {verdict} the {COST_TARGET:.0%} target")
    return 0 if refused == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
