"""1 GiB bodies both ways through the proxy, with the server's memory watched."""

from __future__ import annotations

import hashlib
import threading

import psutil
import pytest

from tests.support.backend import CHUNK, PATTERN, pattern_sha256
from tests.support.harness import read_response, tls_connect

GIB = 1 << 30
RSS_GROWTH_LIMIT = 64 << 20


class RssWatcher:
    """Samples a process's RSS every 50 ms while a transfer runs."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.baseline = self.process.memory_info().rss
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> "RssWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


def _warm_up(port: int) -> None:
    # Let the allocator and the backend pool reach steady state before the baseline.
    conn = tls_connect(port)
    conn.sendall(b"GET /bytes/4194304 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert len(read_response(conn).body) == 4 << 20


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_1gib_download_streams_with_bounded_memory(server, chunked):
    _warm_up(server.port)
    conn = tls_connect(server.port, timeout=60)
    query = "?chunked=1" if chunked else ""
    conn.sendall(f"GET /bytes/{GIB}{query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    digest = hashlib.sha256()
    received = 0
    head = b""
    with RssWatcher(server.worker_pids[0]) as rss:
        while b"\r\n\r\n" not in head:
            head += conn.recv(65536)
        header_block, _, rest = head.partition(b"\r\n\r\n")
        assert header_block.startswith(b"HTTP/1.1 200")
        # Decode chunked framing incrementally only in the chunked case.
        if chunked:
            assert b"transfer-encoding: chunked" in header_block.lower()
            buffer = bytearray(rest)
            while True:
                while b"\r\n" not in buffer:
                    buffer += conn.recv(1 << 20)
                line, _, tail = bytes(buffer).partition(b"\r\n")
                size = int(line, 16)
                buffer = bytearray(tail)
                if size == 0:
                    break
                while len(buffer) < size + 2:
                    buffer += conn.recv(1 << 20)
                digest.update(buffer[:size])
                received += size
                del buffer[: size + 2]
        else:
            digest.update(rest)
            received = len(rest)
            while received < GIB:
                chunk = conn.recv(1 << 20)
                assert chunk, f"connection closed after {received} bytes"
                digest.update(chunk)
                received += len(chunk)
    assert received == GIB
    assert digest.hexdigest() == pattern_sha256(GIB)
    assert rss.growth < RSS_GROWTH_LIMIT, f"RSS grew by {rss.growth >> 20} MiB"


def test_1gib_upload_streams_with_bounded_memory(server):
    _warm_up(server.port)
    conn = tls_connect(server.port, timeout=60)
    conn.sendall(f"PUT /sha256 HTTP/1.1\r\nHost: x\r\nContent-Length: {GIB}\r\n\r\n".encode())
    with RssWatcher(server.worker_pids[0]) as rss:
        sent = 0
        while sent < GIB:
            piece = PATTERN[: min(CHUNK, GIB - sent)]
            conn.sendall(piece)
            sent += len(piece)
        result = read_response(conn)
    assert result.status == 200
    assert result.json() == {"sha256": pattern_sha256(GIB), "length": GIB, "chunked": False}
    assert rss.growth < RSS_GROWTH_LIMIT, f"RSS grew by {rss.growth >> 20} MiB"
