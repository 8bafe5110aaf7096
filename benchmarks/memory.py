"""Worker memory, each scenario in a FRESH server (1 worker): a worker that already ran every
other scenario has grown its heap and pools, which hides part of what a connection costs.

- idle TLS connections (handshake only), classical and post-quantum, in a fresh worker and
  again in the same worker once warmed by a burst of handshakes and requests;
- idle connections after one request (issue 11);
- slow readers: clients that ask for a 1 MB object and read it at a trickle: worker RSS per
  reader while they read, and what the worker still holds once they have left.

Every figure is the worker's RSS (`/proc/<pid>/status`) over what it held just before the
clients came. nginx (OpenSSL 3.0, classical only) runs the same scenarios, also fresh.

    python -m benchmarks.memory [--idle 10000] [--slow-readers 300]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import loadgen, peers
from .loadgen import ClientSpec
from .table import Row

CLASSICAL = ("X25519", "ecdsa_secp256r1_sha256")
PQ = ("X25519MLKEM768", "mldsa65")
# Once the connection count says every connection is in (or out), RSS catches up in this time.
SETTLE_SECONDS = 0.5
CONNECTION_WAIT_SECONDS = 60.0
# Opening 10,000 post-quantum connections from one client process takes about a minute: the
# first must not meet the servers' header timeout (30 s ours, 60 s nginx's) before the last.
IDLE_TIMEOUT = 900.0


@dataclass(frozen=True)
class Server:
    """A running server under test: its worker and the port clients use."""
    worker: int
    port: int


def wait_clients(server: Server, predicate: Callable[[int], bool],
                 timeout: float = CONNECTION_WAIT_SECONDS) -> int:
    """Poll how many client connections the worker holds until `predicate` holds."""
    deadline = time.monotonic() + timeout
    count = peers.client_connections(server.worker, server.port)
    while not predicate(count) and time.monotonic() < deadline:
        time.sleep(0.1)
        count = peers.client_connections(server.worker, server.port)
    return count


def hold(server: Server, spec: ClientSpec, count: int, request: bool = False) -> float:
    """Bytes of worker RSS per connection while `count` connections sit idle."""
    ctx = mp.get_context("fork")
    ready, leave = ctx.Queue(), ctx.Event()
    before = peers.rss_bytes(server.worker)
    holder = ctx.Process(target=loadgen.hold_idle,
                         args=(spec, count, 900, ready, leave, request))
    holder.start()
    try:
        opened = ready.get(timeout=900)
        wait_clients(server, lambda n: n >= opened)
        time.sleep(SETTLE_SECONDS)
        after = peers.rss_bytes(server.worker)
        held = peers.client_connections(server.worker, server.port)
    finally:
        leave.set()
        holder.join(120)
        if holder.is_alive():
            holder.terminate()
            holder.join(10)
    wait_clients(server, lambda n: n == 0)
    if held < count:
        print(f"  warning: {held} of {count} connections held ({opened} opened)",
              file=sys.stderr)
    return (after - before) / max(1, held)


@dataclass(frozen=True)
class SlowReaders:
    per_reader: float  # bytes of RSS per reader while they read
    left_behind: float  # bytes of RSS over the fresh worker's once they have gone
    readers: int


def slow_readers(server: Server, spec: ClientSpec, count: int, seconds: float) -> SlowReaders:
    ctx = mp.get_context("fork")
    ready, leave = ctx.Queue(), ctx.Event()
    before = peers.rss_bytes(server.worker)
    readers = ctx.Process(target=loadgen.slow_readers,
                          args=(spec, count, seconds + 600, ready, leave))
    readers.start()
    try:
        opened = ready.get(timeout=600)
        peak = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            peak = max(peak, peers.rss_bytes(server.worker))
            time.sleep(0.1)
    finally:
        leave.set()
        readers.join(120)
        if readers.is_alive():
            readers.terminate()
            readers.join(10)
    wait_clients(server, lambda n: n == 0)
    time.sleep(2 * SETTLE_SECONDS)
    after = peers.rss_bytes(server.worker)
    return SlowReaders((peak - before) / max(1, opened), after - before, opened)


def warm(server: Server, spec: ClientSpec, seconds: float) -> None:
    """What a worker goes through in the other scenarios, in short: handshakes of both
    kinds, requests on kept-alive connections (64 at once with wrk, as the keep-alive
    scenario), a few MB of downloads."""
    from .run import wrk_rate  # run imports this module

    wrk_rate(server.port, seconds, 64)
    jobs = [(loadgen.handshakes, (ClientSpec(server.port, *CLASSICAL), seconds, False, True)),
            (loadgen.keepalive, (ClientSpec(server.port, *CLASSICAL), seconds)),
            (loadgen.keepalive, (ClientSpec(server.port, *CLASSICAL, path="/1m"), seconds))]
    if spec.groups == PQ[0]:
        jobs.append((loadgen.handshakes, (spec, seconds)))
    with mp.get_context("fork").Pool(len(jobs)) as pool:
        waiting = [pool.apply_async(function, args) for function, args in jobs]
        for job in waiting:
            job.get(timeout=seconds + 300)
    wait_clients(server, lambda n: n == 0)


@contextmanager
def fresh_qtls(work: Path, certs: peers.Certs, backend: int, name: str, source: Path
               ) -> Iterator[Server]:
    proc, port, _ = peers.start_qtls(work, [(certs.pki.mldsa_cert, certs.pki.mldsa_key),
                                            (certs.ecdsa_p256_cert, certs.ecdsa_p256_key)],
                                     backend, 1, name, source=source,
                                     idle_timeout=IDLE_TIMEOUT)
    try:
        yield Server(peers.qtls_worker_pids(proc.log)[0], port)
    finally:
        proc.stop()


@contextmanager
def fresh_nginx(work: Path, certs: peers.Certs, backend: int, name: str) -> Iterator[Server]:
    directory = work / name
    directory.mkdir()
    proc, port = peers.start_nginx_peer(directory, certs, backend, 1,
                                        idle_timeout=IDLE_TIMEOUT)
    try:
        yield Server(peers.worker_pids(proc.proc.pid)[0], port)
    finally:
        proc.stop()


def rows(work: Path, certs: peers.Certs, backend: int, idle: int, readers: int,
         warm_seconds: float = 2.0, read_seconds: float = 5.0, source: Path = peers.ROOT
         ) -> list[Row]:
    """Every memory scenario, each in fresh servers; rows printed as they finish."""
    out: list[Row] = []

    def done(row: Row) -> None:
        out.append(row)
        print(row.markdown(), flush=True)

    if idle:
        for label, (groups, sigalgs) in (("classical", CLASSICAL),
                                         ("X25519MLKEM768 + ML-DSA-65", PQ)):
            fresh = Row(f"memory per idle TLS connection, {label}, fresh worker "
                        f"({idle:,} held)", "bytes")
            warmed = Row(f"memory per idle TLS connection, {label}, warmed worker "
                         f"({idle:,} held)", "bytes")
            # Warmed is a second fresh server put through warm() first: measured after the
            # fresh figure in the same server, the held connections would reuse the heap the
            # first batch freed, and nginx would show 16 B per connection.
            for warmed_first, values in ((False, fresh), (True, warmed)):
                servers = [(fresh_qtls(work, certs, backend, f"mem-qtls-{groups}-{warmed_first}",
                                       source), values.ours, (groups, sigalgs))]
                if label == "classical":  # nginx has no ML-KEM: its classical figure is its row
                    servers.append((fresh_nginx(work, certs, backend,
                                                f"mem-nginx-idle-{warmed_first}"),
                                    values.peer, CLASSICAL))
                for started, figures, (g, s) in servers:
                    with started as server:
                        spec = ClientSpec(server.port, g, s)
                        if warmed_first:
                            warm(server, spec, warm_seconds)
                        figures.append(hold(server, spec, idle))
            if label != "classical":
                fresh.note = warmed.note = "nginx (OpenSSL 3.0) has no ML-KEM: see the row above"
            done(fresh)
            done(warmed)

        row = Row(f"memory per idle connection after one 1 KiB request, fresh worker "
                  f"({idle:,} held)", "bytes")
        with fresh_qtls(work, certs, backend, "mem-qtls-request", source) as server:
            row.ours.append(hold(server, ClientSpec(server.port, *CLASSICAL), idle, True))
        with fresh_nginx(work, certs, backend, "mem-nginx-request") as server:
            row.peer.append(hold(server, ClientSpec(server.port, *CLASSICAL), idle, True))
        done(row)

    if readers:
        during = Row(f"memory per slow reader of a 1 MB object ({readers} readers, "
                     f"{read_seconds:g} s at 4 KB/s)", "bytes")
        after = Row(f"worker RSS left once the {readers} slow readers have gone", "MiB")
        with fresh_qtls(work, certs, backend, "mem-qtls-slow", source) as server:
            ours = slow_readers(server, ClientSpec(server.port, *CLASSICAL, path="/1m"),
                                readers, read_seconds)
        with fresh_nginx(work, certs, backend, "mem-nginx-slow") as server:
            peer = slow_readers(server, ClientSpec(server.port, *CLASSICAL, path="/1m"),
                                readers, read_seconds)
        during.ours, during.peer = [ours.per_reader], [peer.per_reader]
        after.ours, after.peer = [ours.left_behind / 2**20], [peer.left_behind / 2**20]
        after.note = "over the fresh worker's RSS before the readers came"
        if min(ours.readers, peer.readers) < readers:
            during.note = f"readers connected: ours {ours.readers}, nginx {peer.readers}"
        done(during)
        done(after)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=int, default=10000, help="idle connections (0: skip)")
    parser.add_argument("--slow-readers", type=int, default=300, help="slow readers (0: skip)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="qtls-mem-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)
        certs = peers.make_certs(work)
        (work / "backend").mkdir()
        sink_proc, sink = peers.start_sink(work / "backend")
        backend_proc, backend = peers.start_backend(work / "backend", 1 << 20, sink)
        try:
            rows(work, certs, backend, args.idle, args.slow_readers)
        finally:
            backend_proc.stop()
            sink_proc.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
