"""A backend that answers with scripted bytes, for the faults a real framework never makes:
trailers, endless heads, bodies after a HEAD answer, odd transfer codings, heads that come
alone. Threads and blocking sockets on 127.0.0.1, in the test's own process.

    with ScriptedBackend({"/x": script}) as backend:  # script(conn, request) -> None
        ...backend.address...

A script writes with `conn.send`, may `conn.sleep`, read the next request on the same
connection (`conn.next_request`), or `conn.close()`; returning leaves the connection open for
the next request. Unknown paths get a 404.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Request:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]


class Conn:
    def __init__(self, sock: socket.socket, backend: "ScriptedBackend") -> None:
        self.sock = sock
        self._backend = backend
        self._buffer = b""
        self.closed = False

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError:
            self.closed = True

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def _read_more(self) -> bool:
        try:
            data = self.sock.recv(65536)
        except OSError:
            return False
        self._buffer += data
        return bool(data)

    def next_request(self, timeout: float = 10.0) -> Request | None:
        """The next request on this connection; None if it closes (or nothing comes)."""
        self.sock.settimeout(timeout)
        while b"\r\n\r\n" not in self._buffer:
            if not self._read_more():
                return None
        head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = [tuple(p.strip() for p in line.split(":", 1)) for line in lines[1:]]
        request = Request(method, target, headers, b"")  # type: ignore[arg-type]
        length = request.header("Content-Length")
        if length is not None:
            while len(self._buffer) < int(length):
                if not self._read_more():
                    return None
            request.body, self._buffer = self._buffer[:int(length)], self._buffer[int(length):]
        elif (request.header("Transfer-Encoding") or "").lower() == "chunked":
            body = b""
            while True:
                while b"\r\n" not in self._buffer:
                    if not self._read_more():
                        return None
                line, _, self._buffer = self._buffer.partition(b"\r\n")
                size = int(line.split(b";")[0], 16)
                while len(self._buffer) < size + 2:
                    if not self._read_more():
                        return None
                body += self._buffer[:size]
                self._buffer = self._buffer[size + 2:]
                if size == 0:
                    break
            request.body = body
        self._backend.requests.append(request)
        return request


Script = Callable[[Conn, Request], None]


def not_found(conn: Conn, request: Request) -> None:
    conn.send(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")


@dataclass
class ScriptedBackend:
    scripts: dict[str, Script]
    port: int = 0
    requests: list[Request] = field(default_factory=list)
    connections: int = 0

    def __post_init__(self) -> None:
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", self.port))
        self.port = self._listener.getsockname()[1]
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> "ScriptedBackend":
        self._listener.listen(128)
        self._listener.settimeout(0.2)
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopped.set()
        self._listener.close()
        for sock in list(self._socks):
            try:
                sock.close()
            except OSError:
                pass
        for thread in self._threads:
            thread.join(5)

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                sock, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.connections += 1
            self._socks.append(sock)
            thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, sock: socket.socket) -> None:
        conn = Conn(sock, self)
        try:
            for _ in range(1000):
                if conn.closed or self._stopped.is_set():
                    break
                request = conn.next_request()
                if request is None:
                    break
                self.scripts.get(request.path, not_found)(conn, request)
        except OSError:
            pass
        finally:
            sock.close()
