"""A recording backend that expects a PROXY header at the start of every connection.

Real sockets, served from a thread of the test process. Each accepted connection's header is
decoded with qproxy's parser and kept in `records` (in order; `wait_records(n)` blocks until
n connections have been seen). In HTTP mode (default) it then answers every request with 200
and a JSON body naming the connection (`connection`: its index in `records`) and what its
header said; in echo mode (`http=False`, for TCP listeners) it sends back what it receives.
A connection whose header is missing or malformed is recorded with `error` and closed.

    with RecordingBackend() as backend:
        ... upstream "127.0.0.1:%d" % backend.port ...
        record = backend.wait_records(1)[0]
        record.parsed.tlv(PP2_TYPE_AUTHORITY)
"""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass, field

import h11

from qproxy.proxy.proxy_protocol import (
    PP2_TYPE_SSL, NeedMore, Parsed, ProxyHeaderError, ProxyHeaderParser, parse_ssl_tlv,
)

WAIT_SECONDS = 20.0


@dataclass
class ProxyRecord:
    index: int
    parsed: Parsed | None = None
    error: str | None = None
    requests: list[str] = field(default_factory=list)  # request targets, in order
    closed: bool = False  # the proxy's side of the connection has ended

    def summary(self) -> dict:
        parsed = self.parsed
        if parsed is None:
            return {"connection": self.index, "error": self.error}
        ssl = parsed.tlv(PP2_TYPE_SSL)
        return {"connection": self.index, "version": parsed.version,
                "command": parsed.command.value, "source": parsed.source,
                "destination": parsed.destination,
                "tlvs": {f"0x{t:02x}": v.hex() for t, v in parsed.tlvs},
                "ssl": parse_ssl_tlv(ssl).__dict__ if ssl is not None else None}


class RecordingBackend:
    def __init__(self, http: bool = True, host: str = "127.0.0.1") -> None:
        self.http = http
        self._listener = socket.create_server((host, 0))
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self.address = f"{host}:{self.port}"
        self.records: list[ProxyRecord] = []
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept_loop, daemon=True)
        self._accepter.start()

    def __enter__(self) -> "RecordingBackend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._accepter.join(5)
        self._listener.close()
        for thread in self._threads:
            thread.join(5)

    def wait_records(self, count: int, timeout: float = WAIT_SECONDS) -> list[ProxyRecord]:
        with self._changed:
            def decoded() -> bool:  # n connections, each with its header read (or refused)
                return len(self.records) >= count and all(
                    r.parsed is not None or r.error is not None for r in self.records[:count])
            if not self._changed.wait_for(decoded, timeout):
                raise TimeoutError(f"{len(self.records)} connections seen, {count} expected")
            return list(self.records)

    # -- serving ----------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            with self._changed:
                record = ProxyRecord(len(self.records))
                self.records.append(record)
                self._changed.notify_all()
            thread = threading.Thread(target=self._serve, args=(conn, record), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _recv(self, conn: socket.socket) -> bytes:
        while not self._stop.is_set():
            try:
                return conn.recv(65536)
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return b""
        return b""

    def wait_closed(self, index: int, timeout: float = WAIT_SECONDS) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: self.records[index].closed, timeout):
                raise TimeoutError(f"backend connection {index} is still open")

    def _serve(self, conn: socket.socket, record: ProxyRecord) -> None:
        try:
            self._serve_one(conn, record)
        finally:
            with self._changed:
                record.closed = True
                self._changed.notify_all()

    def _serve_one(self, conn: socket.socket, record: ProxyRecord) -> None:
        conn.settimeout(0.2)
        with conn:
            parser = ProxyHeaderParser()
            try:
                result: NeedMore | Parsed = NeedMore()
                while isinstance(result, NeedMore):
                    data = self._recv(conn)
                    if not data:
                        parser.eof()
                    result = parser.feed(data)
            except ProxyHeaderError as error:
                with self._changed:
                    record.error = str(error)
                    self._changed.notify_all()
                return
            with self._changed:
                record.parsed = result
                self._changed.notify_all()
            if self.http:
                self._serve_http(conn, record, result.rest)
            else:
                self._echo(conn, result.rest)

    def _echo(self, conn: socket.socket, first: bytes) -> None:
        data = first
        while True:
            if data:
                conn.sendall(data)
            data = self._recv(conn)
            if not data:
                return

    def _serve_http(self, conn: socket.socket, record: ProxyRecord, first: bytes) -> None:
        http = h11.Connection(h11.SERVER)
        if first:  # (h11 reads b"" as the end of the connection)
            http.receive_data(first)
        while True:
            event = http.next_event()
            if event is h11.NEED_DATA:
                data = self._recv(conn)
                http.receive_data(data)
                if not data:
                    return
                continue
            if isinstance(event, h11.Request):
                record.requests.append(event.target.decode())
                body = json.dumps(record.summary()).encode()
                headers = [("Content-Type", "application/json"),
                           ("Content-Length", str(len(body))),
                           ("X-Proxy-Connection", str(record.index))]
                conn.sendall(http.send(h11.Response(status_code=200, headers=headers))
                             + http.send(h11.Data(data=body)) + http.send(h11.EndOfMessage()))
            elif isinstance(event, h11.EndOfMessage):
                if http.our_state is h11.MUST_CLOSE:
                    return
                try:
                    http.start_next_cycle()
                except h11.LocalProtocolError:
                    return
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return
