"""The worker's acceptor in-process, on a real listening socket and a uvloop loop: a full
worker stops accepting (connections wait in the queue, not reset) and takes them again when a
slot frees; EMFILE backs off instead of spinning."""

from __future__ import annotations

import asyncio
import errno
import socket

import uvloop

from qproxy.daemon.acceptor import AcceptState, Acceptor


class Counting(asyncio.Protocol):
    def __init__(self, made: list) -> None:
        self.made = made

    def connection_made(self, transport) -> None:
        self.made.append(transport)


class FlakyListener:
    """A real listener whose accept() fails with `errno_` the first `failures` times."""

    def __init__(self, sock: socket.socket, failures: int, errno_: int = errno.EMFILE) -> None:
        self.sock, self.failures, self.errno, self.calls = sock, failures, errno_, 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def accept(self):
        self.calls += 1
        if self.calls <= self.failures:
            raise OSError(self.errno, "Too many open files")
        return self.sock.accept()


def listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    return sock


def test_full_worker_stops_accepting_and_resumes_when_room_is_made():
    async def main():
        loop = asyncio.get_running_loop()
        sock = listener()
        made: list = []
        opened: list = []  # counted when the protocol is made, as the worker's factory does
        pauses: list = []
        limit = [1]

        def factory() -> Counting:
            opened.append(1)
            return Counting(made)

        acceptor = Acceptor(loop, [sock], factory, lambda pending: len(opened) + pending < limit[0],
                            lambda e: None, lambda state, reason: pauses.append(state))
        acceptor.start()
        clients = [socket.create_connection(sock.getsockname()) for _ in range(3)]
        for _ in range(50):
            await asyncio.sleep(0.01)
        assert len(made) == 1 and acceptor.state is AcceptState.FULL
        assert pauses and pauses[0] is AcceptState.FULL
        for client in clients[1:]:  # waiting in the listen queue, not reset
            client.setblocking(False)
            try:
                assert client.recv(1) != b""
            except BlockingIOError:
                pass
        limit[0] = 4
        acceptor.room_made()
        for _ in range(100):
            if len(made) == 3:
                break
            await asyncio.sleep(0.01)
        assert len(made) == 3 and acceptor.state is AcceptState.ACCEPTING
        acceptor.stop()
        for transport in made:
            transport.close()
        for client in clients:
            client.close()
        sock.close()

    uvloop.run(main())


def test_emfile_backs_off_instead_of_spinning_then_serves():
    async def main():
        loop = asyncio.get_running_loop()
        sock = listener()
        flaky = FlakyListener(sock, failures=4)
        made: list = []
        pauses: list = []
        acceptor = Acceptor(loop, [flaky], lambda: Counting(made), lambda pending: True,
                            lambda e: None, lambda state, reason: pauses.append(reason))
        acceptor.start()
        client = socket.create_connection(sock.getsockname())
        for _ in range(200):
            if made:
                break
            await asyncio.sleep(0.01)
        # 4 failures back off 50 + 100 + 200 + 400 ms; a spinning loop would call thousands of times
        assert len(made) == 1
        assert flaky.calls <= 7, flaky.calls
        assert pauses[:1] == ["Too many open files"]
        acceptor.stop()
        made[0].close()
        client.close()
        sock.close()

    uvloop.run(main())
