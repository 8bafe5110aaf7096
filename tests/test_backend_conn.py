"""The backend connection in-process: a mock transport, bytes delivered as the event loop
would (into the buffer the protocol hands out), every transition of its state table."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from qproxy.proxy.backend import (BackendConnection, BackendError, BackendRequest,
                                  BackendSettings, BackendState, FailureKind, Framing,
                                  ServerConnections, StateError)
from qproxy.proxy.backend.connection import MIN_READ, READ_SIZE
from qproxy.proxy.backend.state import TRANSITIONS, check_transition

S = BackendState
GET = b"GET / HTTP/1.1\r\nHost: b\r\n\r\n"


class MockTransport(asyncio.Transport):
    def __init__(self, protocol: BackendConnection) -> None:
        super().__init__()
        self.protocol = protocol
        self.written: list[bytes] = []
        self.reading = True
        self.closed = False

    def write(self, data) -> None:
        assert not self.closed, "write after close"
        self.written.append(bytes(data))

    def writelines(self, parts) -> None:
        self.write(b"".join(parts))

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    @property
    def sent(self) -> bytes:
        return b"".join(self.written)


class Rig:
    """A connection on a mock transport, in a pool that never connects."""

    def __init__(self, read_timeout: float = 5.0, max_head: int = 16384,
                 body_buffer: int = 65536, keepalive: int = 4, idle_timeout: float = 30.0):
        self.settings = BackendSettings(read_timeout, max_head, body_buffer)
        self.pool = ServerConnections("127.0.0.1", 9, keepalive, idle_timeout, 1.0,
                                      self.settings)
        self.conn = BackendConnection(self.pool, self.settings)
        self.transport = MockTransport(self.conn)
        self.conn.connection_made(self.transport)
        self.reads: list[int] = []

    def deliver(self, data: bytes, until_paused: bool = False) -> int:
        """As the loop reads: at most the buffer the protocol hands out, per read. Returns
        how much was read (with `until_paused`, the rest stays "in the socket")."""
        view = memoryview(data)
        done = 0
        while view:
            if until_paused and not self.transport.reading:
                break
            assert self.transport.reading, "read while reading is paused"
            buffer = self.conn.get_buffer(-1)
            size = min(len(buffer), len(view))
            buffer[:size] = view[:size]
            self.reads.append(size)
            view = view[size:]
            done += size
            self.conn.buffer_updated(size)
        return done

    def eof(self) -> None:
        self.conn.eof_received()
        self.conn.connection_lost(None)

    async def exchange(self, request: BackendRequest | bytes = GET) -> "asyncio.Task":
        if isinstance(request, bytes):
            request = BackendRequest(request)
        task = asyncio.get_running_loop().create_task(self.conn.exchange(request))
        await asyncio.sleep(0)
        return task


def run(test) -> None:
    async def main() -> None:
        await asyncio.wait_for(test(), 5)
    asyncio.run(main())


async def read_all(response) -> bytes:
    data = b""
    while piece := await response.read(65536):
        data += piece
    return data


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


# -- the table ------------------------------------------------------------------------------

def test_the_table_refuses_what_it_does_not_list() -> None:
    for old, new in itertools.product(BackendState, BackendState):
        if new in TRANSITIONS[old]:
            check_transition(old, new)
        else:
            with pytest.raises(StateError):
                check_transition(old, new)
    assert TRANSITIONS[S.CLOSED] == TRANSITIONS[S.FAILED] == frozenset()


# -- the common path ------------------------------------------------------------------------

def test_idle_awaiting_head_reading_body_complete_idle() -> None:
    async def test():
        rig = Rig()
        assert rig.conn.state is S.IDLE
        task = await rig.exchange()
        assert rig.conn.state is S.AWAITING_HEAD and rig.transport.sent == GET
        rig.deliver(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel")
        response = await task
        assert rig.conn.state is S.READING_BODY and response.head.framing is Framing.LENGTH
        rig.deliver(b"lo")
        assert rig.conn.state is S.COMPLETE
        assert response.whole_body() == b"hello" and response.trailers is None
        response.release()
        assert rig.conn.state is S.IDLE and rig.pool.take_idle() is rig.conn
        assert rig.conn.reused
    run(test)


def test_a_whole_response_in_one_read_is_complete_when_the_head_is_handed_over() -> None:
    async def test():
        rig = Rig()
        task = await rig.exchange()
        rig.deliver(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\n\r\nok")
        response = await task
        assert response.complete and response.whole_body() == b"ok"
        assert response.fields == [(b"Content-Length", b"2"), (b"X-A", b"1")]
    run(test)


def test_informational_answers_are_skipped() -> None:
    async def test():
        rig = Rig()
        task = await rig.exchange()
        rig.deliver(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
                    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n")
        response = await task
        assert response.status == 204 and response.fields == []
        assert rig.conn.state is S.COMPLETE
    run(test)


# -- sending a body ---------------------------------------------------------------------------

async def parts(*chunks: bytes, gate: asyncio.Event | None = None, error=None):
    for index, chunk in enumerate(chunks):
        if gate is not None and index == len(chunks) - 1:
            await gate.wait()
        yield chunk
    if error is not None:
        raise error


def test_sending_then_awaiting_head_with_a_chunked_body() -> None:
    async def test():
        rig = Rig()
        task = await rig.exchange(BackendRequest(b"POST / HTTP/1.1\r\n\r\n",
                                                 parts(b"ab", b"", b"c"), chunked=True))
        await settle()
        assert rig.conn.state is S.AWAITING_HEAD
        assert rig.transport.sent == b"POST / HTTP/1.1\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\n"
        rig.deliver(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
        response = await task
        assert response.status == 201 and rig.conn.state is S.COMPLETE
        response.release()
        assert rig.conn.state is S.IDLE
    run(test)


def test_a_buffered_body_goes_with_the_head_in_one_write() -> None:
    async def test():
        rig = Rig()
        await rig.exchange(BackendRequest(b"PUT / HTTP/1.1\r\nContent-Length: 3\r\n\r\n",
                                          parts(b"abc"), replayable=True))
        await settle()
        assert rig.transport.written == [b"PUT / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"]
    run(test)


def test_an_early_answer_while_sending_then_release_closes() -> None:
    # An early 413, say: the answer comes while the body still goes; the connection cannot be
    # reused with a body half sent.
    async def test():
        rig = Rig()
        gate = asyncio.Event()
        task = await rig.exchange(BackendRequest(b"POST / HTTP/1.1\r\n\r\n",
                                                 parts(b"a", b"b", gate=gate), chunked=True))
        await settle()
        assert rig.conn.state is S.SENDING
        rig.deliver(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
        response = await task
        assert response.status == 413 and rig.conn.state is S.COMPLETE
        response.release()
        assert rig.conn.state is S.CLOSED and rig.transport.closed
    run(test)


def test_sending_a_client_body_that_breaks_off_fails_with_its_status() -> None:
    class TooLarge(Exception):
        status = 413

    async def test():
        rig = Rig()
        task = await rig.exchange(BackendRequest(b"POST / HTTP/1.1\r\n\r\n",
                                                 parts(b"a", error=TooLarge("big")),
                                                 chunked=True))
        with pytest.raises(BackendError) as failure:
            await task
        assert failure.value.kind is FailureKind.CLIENT_BODY and failure.value.status == 413
        assert not failure.value.kind.blames_backend
        assert rig.conn.state is S.FAILED and rig.transport.closed
    run(test)


def test_a_backend_that_stops_reading_the_body_fails_with_a_send_timeout() -> None:
    async def test():
        rig = Rig(read_timeout=0.05)
        rig.conn.pause_writing()
        task = await rig.exchange(BackendRequest(b"POST / HTTP/1.1\r\n\r\n", parts(b"a", b"b"),
                                                 chunked=True))
        with pytest.raises(BackendError) as failure:
            await task
        assert failure.value.kind is FailureKind.SEND_TIMEOUT and failure.value.status == 504
        assert rig.conn.state is S.FAILED
    run(test)


def test_cancelled_while_sending_closes() -> None:
    async def test():
        rig = Rig()
        gate = asyncio.Event()
        task = await rig.exchange(BackendRequest(b"POST / HTTP/1.1\r\n\r\n",
                                                 parts(b"a", b"b", gate=gate)))
        await settle()
        assert rig.conn.state is S.SENDING
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert rig.conn.state is S.CLOSED and rig.transport.closed
    run(test)


# -- failures awaiting the head ---------------------------------------------------------------

@pytest.mark.parametrize("answer,kind", [
    (b"SMTP ready\r\n\r\n", FailureKind.MALFORMED),
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
     FailureKind.INVALID_ANSWER),  # unasked
    (b"HTTP/1.1 600 Odd\r\nContent-Length: 0\r\n\r\n", FailureKind.INVALID_ANSWER),
    (b"HTTP/1.1 999 Odd\r\nContent-Length: 0\r\n\r\n", FailureKind.INVALID_ANSWER),
    (b"HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n", FailureKind.INVALID_ANSWER),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", FailureKind.MALFORMED),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
     FailureKind.MALFORMED),
])
def test_awaiting_head_then_failed(answer, kind) -> None:
    async def test():
        rig = Rig()
        task = await rig.exchange()
        rig.deliver(answer)
        with pytest.raises(BackendError) as failure:
            await task
        assert failure.value.kind is kind and rig.conn.state is S.FAILED
        assert rig.transport.closed
    run(test)


def test_a_silent_backend_fails_with_a_read_timeout() -> None:
    async def test():
        rig = Rig(read_timeout=0.05)
        task = await rig.exchange()
        with pytest.raises(BackendError) as failure:
            await task
        assert failure.value.kind is FailureKind.READ_TIMEOUT and failure.value.status == 504
    run(test)


@pytest.mark.parametrize("reused,received,retryable", [
    (True, b"", True), (False, b"", False), (True, b"HTTP/1.1 2", False)])
def test_closed_before_answering_is_retryable_only_on_a_reused_silent_connection(
        reused, received, retryable) -> None:
    async def test():
        rig = Rig()
        rig.conn.reused = reused
        task = await rig.exchange()
        if received:
            rig.deliver(received)
        rig.eof()
        with pytest.raises(BackendError) as failure:
            await task
        assert failure.value.kind is FailureKind.CLOSED
        assert failure.value.retryable is retryable
    run(test)


def test_cancelled_awaiting_the_head_closes() -> None:
    async def test():
        rig = Rig()
        task = await rig.exchange()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert rig.conn.state is S.CLOSED and rig.transport.closed
    run(test)


# -- the response head's limit ----------------------------------------------------------------

def test_a_head_over_the_limit_fails_whatever_the_reads() -> None:
    head = b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 3000 + b"\r\nContent-Length: 0\r\n\r\n"
    for split in (1, 7, 100, 2048, len(head)):
        async def test():
            rig = Rig(max_head=2048)
            task = await rig.exchange()
            for start in range(0, len(head), split):
                if rig.conn.closed:
                    break
                rig.deliver(head[start:start + split])
            with pytest.raises(BackendError, match="too big header") as failure:
                await task
            assert failure.value.kind is FailureKind.HEAD_TOO_BIG
        run(test)


def test_a_body_read_with_the_head_does_not_count_against_the_head_limit() -> None:
    async def test():
        rig = Rig(max_head=1024)
        task = await rig.exchange()
        rig.deliver(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"b" * 5000)
        response = await task
        assert len(await read_all(response)) == 5000
    run(test)


# -- trailers ---------------------------------------------------------------------------------

CHUNKED = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Head: 1\r\n\r\n"
           b"3\r\nabc\r\n2\r\nde\r\n0\r\nSet-Cookie: injected=1\r\nContent-Length: 1\r\n"
           b"Location: /evil\r\n\r\n")


def test_trailers_are_kept_apart_from_the_head_however_the_bytes_are_split() -> None:
    for split in range(1, len(CHUNKED) + 1):
        async def test():
            rig = Rig()
            task = await rig.exchange()
            response = None
            for start in range(0, len(CHUNKED), split):
                rig.deliver(CHUNKED[start:start + split])
                await asyncio.sleep(0)  # the exchange returns as soon as the head is whole
                if response is None and task.done():
                    response = task.result()
                    fields = list(response.fields)
            response = response or await task
            assert fields == response.fields == [(b"Transfer-Encoding", b"chunked"),
                                                 (b"X-Head", b"1")]
            assert await read_all(response) == b"abcde"
            assert response.trailers == [(b"Set-Cookie", b"injected=1"),
                                         (b"Content-Length", b"1"), (b"Location", b"/evil")]
            response.release()
            assert rig.conn.state is S.IDLE  # still in step: reusable
        run(test)


def test_a_broken_trailer_section_keeps_the_body_and_drops_the_connection() -> None:
    async def test():
        rig = Rig()
        task = await rig.exchange()
        rig.deliver(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"2\r\nok\r\n0\r\nBad Trailer\r\n\r\n")
        response = await task
        assert response.complete and await read_all(response) == b"ok"
        assert response.trailers is None
        response.release()
        assert rig.conn.state is S.CLOSED
    run(test)


# -- reading the body ---------------------------------------------------------------------------

def test_close_delimited_body_completes_at_the_close_with_its_codings() -> None:
    async def test():
        rig = Rig()
        task = await rig.exchange()
        rig.deliver(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n\x1f\x8bcoded")
        response = await task
        assert response.head.framing is Framing.CLOSE and response.head.codings == (b"gzip",)
        assert rig.conn.state is S.READING_BODY
        rig.eof()
        assert rig.conn.state is S.CLOSED and response.complete
        assert await read_all(response) == b"\x1f\x8bcoded"
    run(test)


def test_reading_body_then_failed_when_cut() -> None:
    async def test():
        rig = Rig()
        task = await rig.exchange()
        rig.deliver(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        response = await task
        rig.eof()
        assert rig.conn.state is S.FAILED
        assert await response.read(100) == b"abc"  # what came before the cut is kept
        with pytest.raises(BackendError, match="middle of the response"):
            await response.read(100)
    run(test)


def test_reading_body_then_closed_when_released_early() -> None:
    async def test():
        rig = Rig()
        task = await rig.exchange()
        rig.deliver(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        (await task).release()
        assert rig.conn.state is S.CLOSED and rig.transport.closed
    run(test)


def test_a_slow_reader_holds_at_most_the_buffer_and_reading_pauses() -> None:
    async def test():
        rig = Rig(body_buffer=65536)
        task = await rig.exchange()
        rig.deliver(b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n")
        response = await task
        body = bytes(range(256)) * 4096
        sent = 0
        while rig.transport.reading and sent < len(body):
            rig.deliver(body[sent:sent + 1000])
            sent += 1000
        assert not rig.transport.reading
        assert 65536 <= sent <= 65536 + MIN_READ
        assert all(size <= READ_SIZE for size in rig.reads)
        received = b""
        while len(received) < len(body):
            piece = await response.read(16384)
            assert len(piece) <= 16384
            received += piece
            if rig.transport.reading and sent < len(body):
                sent += rig.deliver(body[sent:sent + 20000], until_paused=True)
        assert received == body and rig.conn.state is S.COMPLETE
    run(test)


def test_the_read_timeout_does_not_run_while_the_client_is_slow() -> None:
    async def test():
        rig = Rig(read_timeout=0.05, body_buffer=4096)
        task = await rig.exchange()
        rig.deliver(b"HTTP/1.1 200 OK\r\nContent-Length: 10000\r\n\r\n" + b"x" * 5000)
        response = await task
        assert not rig.transport.reading
        await asyncio.sleep(0.15)  # three read timeouts with nobody reading the body
        assert rig.conn.state is S.READING_BODY
        await response.read(100000)
        await asyncio.sleep(0.15)  # reading again, and the backend silent: now it is its fault
        assert rig.conn.state is S.FAILED
    run(test)


# -- HEAD, and bytes where no answer is due -----------------------------------------------------

@pytest.mark.parametrize("answer,reused", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", True),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n", False),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", False),
])
def test_a_head_answer_ends_with_its_head_and_is_reused_only_if_it_announced_no_body(
        answer, reused) -> None:
    async def test():
        rig = Rig()
        task = await rig.exchange(BackendRequest(b"HEAD / HTTP/1.1\r\n\r\n", head_only=True))
        rig.deliver(answer)
        response = await task
        assert response.head.framing is Framing.NONE and response.complete
        response.release()
        assert rig.conn.state is (S.IDLE if reused else S.CLOSED)
    run(test)


def test_bytes_past_the_response_are_no_response_and_the_connection_is_dropped() -> None:
    async def test():
        rig = Rig()
        task = await rig.exchange()
        rig.deliver(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
                    b"HTTP/1.1 302 Found\r\nSet-Cookie: a=b\r\n\r\n")
        response = await task
        assert response.fields == [(b"Content-Length", b"2")] and response.whole_body() == b"hi"
        response.release()
        assert rig.conn.state is S.CLOSED
    run(test)


def test_bytes_after_complete_before_release_drop_the_connection() -> None:
    async def test():
        rig = Rig()
        task = await rig.exchange()
        rig.deliver(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
        response = await task
        rig.deliver(b"junk")
        response.whole_body()
        response.release()
        assert rig.conn.state is S.CLOSED
    run(test)


def test_connection_close_answer_is_not_reused() -> None:
    async def test():
        rig = Rig()
        task = await rig.exchange()
        rig.deliver(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        (await task).release()
        assert rig.conn.state is S.CLOSED
    run(test)


# -- idle ---------------------------------------------------------------------------------------

def test_idle_then_closed_by_bytes_eof_or_the_idle_timeout() -> None:
    async def test():
        for ending in ("bytes", "eof", "timeout"):
            rig = Rig(idle_timeout=0.05)
            rig.pool.release(rig.conn)
            assert rig.pool.idle_count == 1
            if ending == "bytes":
                rig.deliver(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
            elif ending == "eof":
                rig.eof()
            else:
                await asyncio.sleep(0.1)
            await settle()
            assert rig.conn.state is S.CLOSED and rig.pool.idle_count == 0, ending
    run(test)


def test_a_full_pool_closes_what_it_cannot_keep() -> None:
    async def test():
        rig = Rig(keepalive=0)
        task = await rig.exchange()
        rig.deliver(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        (await task).release()
        assert rig.conn.state is S.CLOSED
    run(test)


# -- tunnels --------------------------------------------------------------------------------------

class TunnelClient:
    def __init__(self) -> None:
        self.to_client: list[bytes] = []
        self.closed = asyncio.Event()
        self.paused = False

    async def tunnel(self, peer, leftover: bytes, idle_timeout: float):
        self.peer = peer
        if leftover:
            self.to_client.append(leftover)
        peer.write(b"from client")
        await self.closed.wait()
        return 11, sum(map(len, self.to_client))

    def tunnel_write(self, data: bytes) -> None:
        self.to_client.append(data)

    def tunnel_closed(self) -> None:
        self.closed.set()

    def pause_input(self, reason) -> None:
        self.paused = True

    def resume_input(self, reason) -> None:
        self.paused = False


def test_awaiting_head_then_tunnelling_then_closed() -> None:
    async def test():
        rig = Rig()
        task = await rig.exchange(BackendRequest(b"GET /ws HTTP/1.1\r\n\r\n", upgrade=True))
        rig.deliver(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\n\r\nearly frame")
        response = await task
        assert response.upgraded and rig.conn.state is S.TUNNELLING
        rig.deliver(b" and more")
        client = TunnelClient()
        tunnel = asyncio.get_running_loop().create_task(response.tunnel(client))
        await settle()
        assert b"".join(client.to_client) == b"early frame and more"
        assert rig.transport.written[-1] == b"from client"
        rig.conn.pause_writing()
        assert client.paused
        rig.conn.resume_writing()
        rig.deliver(b"!")
        rig.eof()
        assert await tunnel == (11, 21)
        assert rig.conn.state is S.CLOSED
    run(test)
