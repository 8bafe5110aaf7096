"""A real TCP backend on 127.0.0.1 for tcp-mode tests: echoes, and obeys a few commands.

- anything: echoed back;
- the client's FIN: answered with b"EOF-SEEN:<bytes received>", then our FIN;
- b"RESET\\n": a TCP reset;
- b"CLOSE\\n": our FIN at once (shutdown SHUT_WR), then everything that still comes is
  recorded in `received_after_close` until the client's FIN;
- b"BIG <n>\\n": n bytes of a repeating pattern, as fast as the socket takes them.
`greeting`: bytes it sends on accept, before reading anything (a server that speaks first).
"""

from __future__ import annotations

import socket
import struct
import threading


class TcpBackend:
    def __init__(self, greeting: bytes = b"") -> None:
        self.greeting = greeting
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.received_after_close: list[bytes] = []
        self.after_close_done = threading.Event()
        self.connections = 0
        self._threads: list[threading.Thread] = []
        self._stop = False
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(60)
        total = 0
        try:
            if self.greeting:
                conn.sendall(self.greeting)
            while True:
                data = conn.recv(65536)
                if not data:
                    conn.sendall(b"EOF-SEEN:%d" % total)
                    conn.shutdown(socket.SHUT_WR)
                    return
                total += len(data)
                if data.startswith(b"RESET\n"):  # SO_LINGER 0: close() sends an RST
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                    struct.pack("ii", 1, 0))
                    return
                if data.startswith(b"CLOSE\n"):
                    conn.shutdown(socket.SHUT_WR)
                    self._record_until_eof(conn)
                    return
                if data.startswith(b"BIG "):
                    size = int(data.split()[1])
                    pattern = bytes(range(256)) * 256
                    sent = 0
                    while sent < size:
                        chunk = pattern[:min(len(pattern), size - sent)]
                        conn.sendall(chunk)
                        sent += len(chunk)
                    continue
                conn.sendall(data)
        except OSError:
            pass
        finally:
            conn.close()

    def _record_until_eof(self, conn: socket.socket) -> None:
        while True:
            data = conn.recv(65536)
            if not data:
                break
            self.received_after_close.append(data)
        self.after_close_done.set()

    def close(self) -> None:
        self._stop = True
        self.sock.close()
