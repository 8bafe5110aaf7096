"""The client HTTP/1.1 connection in-process: a mock transport, the real event loop, no
sockets, milliseconds each (uvicorn's tests/protocols/test_http.py style)."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from qproxy.proxy.http import SERVER_SHUTDOWN, BadRequest, HttpProtocol, HttpRequest
from qproxy.proxy.http_state import (
    READ_TRANSITIONS,
    WRITE_TRANSITIONS,
    ReadState,
    StateError,
    WriteState,
    check_read,
    check_write,
)
from qproxy.proxy.request_body import BodyLimits, BodySpool
from tests.support.http_mock import Harness, responses

TEXT = [(b"Content-Type", b"text/plain")]


async def echo(request: HttpRequest, responder: HttpProtocol) -> None:
    """Answers with what it saw: method, target, and the body's length and digest."""
    digest, length = hashlib.sha256(), 0
    if request.body is not None:
        try:
            await request.body.buffer()
        except BadRequest as exc:
            responder.send_response(request, exc.status, "Refused", TEXT, str(exc).encode())
            return
        async for chunk in request.body:
            digest.update(chunk)
            length += len(chunk)
        assert length == request.body.length
    text = f"{request.method} {request.raw_path} {length} {digest.hexdigest()[:16]}"
    responder.send_response(request, 200, "OK", TEXT, text.encode())


def run(coro) -> None:
    asyncio.run(asyncio.wait_for(coro, 5))


GET = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"


# -- the states as data -------------------------------------------------------------------------
def test_state_tables_refuse_anything_not_listed():
    for old, allowed in READ_TRANSITIONS.items():
        for new in ReadState:
            if new is old or new in allowed:
                assert check_read(old, new) is new
            else:
                with pytest.raises(StateError):
                    check_read(old, new)
    for old, allowed in WRITE_TRANSITIONS.items():
        for new in WriteState:
            if new is not old and new not in allowed:
                with pytest.raises(StateError):
                    check_write(old, new)
    assert WRITE_TRANSITIONS[WriteState.CLOSED] == frozenset()
    assert READ_TRANSITIONS[ReadState.ENDED] == frozenset()


# -- idle -> head -> idle, waiting -> done -> idle -----------------------------------------
def test_keep_alive_request_is_answered_and_the_connection_goes_idle():
    async def main():
        h = Harness(echo)
        assert (h.protocol.read_state, h.protocol.write_state) == (ReadState.IDLE,
                                                                    WriteState.IDLE)
        h.feed(GET)
        assert h.protocol.write_state is WriteState.WAITING
        assert h.transport.started == 1
        await h.until(lambda: h.protocol.write_state is WriteState.IDLE)
        [response] = responses(h.transport.take())
        assert response.status == 200 and response.body.startswith(b"GET /a 0 ")
        assert "connection" not in response.headers
        assert h.transport.finished == 1 and not h.transport.closed
        assert h.protocol.read_state is ReadState.IDLE
    run(main())


def test_a_request_split_byte_by_byte_is_the_same_request():
    async def main():
        whole, split = Harness(echo), Harness(echo)
        raw = b"POST /p?q=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello" + GET
        whole.feed(raw)
        for i in range(len(raw)):
            split.feed(raw[i:i + 1])
        await whole.until(lambda: whole.transport.finished == 2)
        await split.until(lambda: split.transport.finished == 2)
        a, b = responses(whole.transport.take()), responses(split.transport.take())
        assert [(r.status, r.body) for r in a] == [(r.status, r.body) for r in b]
        assert a[0].body.startswith(b"POST /p?q=1 5 ") and len(a) == 2
    run(main())


def test_pipelined_requests_are_answered_in_order():
    async def main():
        h = Harness(echo)
        h.feed(b"".join(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(5)))
        await h.until(lambda: h.transport.finished == 5)
        assert [r.body.split()[1] for r in responses(h.transport.take())] == [
            b"/%d" % i for i in range(5)]
        assert h.transport.started == 5
    run(main())


def test_http10_request_gets_its_answer_then_the_close():
    async def main():
        h = Harness(echo)
        h.feed(b"GET / HTTP/1.0\r\n\r\n")
        await h.until(lambda: h.transport.closed)
        [response] = responses(h.transport.take())
        assert response.headers["connection"] == "close"
        await h.settle()
        assert h.protocol.write_state is WriteState.CLOSED
    run(main())


def test_client_eof_with_a_request_in_hand_still_answers_it():
    async def main():
        h = Harness(echo)
        h.feed(GET)
        assert h.protocol.eof_received() is True  # keep our side open: an answer is due
        assert h.protocol.read_state is ReadState.ENDED
        await h.until(lambda: h.transport.closed)
        [response] = responses(h.transport.take())
        assert response.status == 200 and response.headers["connection"] == "close"
    run(main())


def test_client_eof_when_idle_closes():
    async def main():
        h = Harness(echo)
        assert h.protocol.eof_received() is False
        assert h.transport.closed
    run(main())


# -- error -> must close ------------------------------------------------------------------------
@pytest.mark.parametrize("raw,status", [
    (b"\x01garbage\r\n\r\n", 400),
    (b"GET /pathHTTP/1.1\r\nHost: x\r\n\r\n", 400),  # llhttp's "HTTP/0.9"
    (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 9000 + b"\r\n\r\n", 431),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
])
def test_bad_request_gets_its_status_and_the_close(raw, status):
    async def main():
        h = Harness(echo)
        h.feed(raw)
        await h.until(lambda: h.transport.closed)
        [response] = responses(h.transport.take())
        assert response.status == status
        assert response.headers["connection"] == "close"
        assert h.errors and h.errors[0][0] == status
        assert h.protocol.read_state in (ReadState.ERROR, ReadState.ENDED)
    run(main())


def test_bad_request_after_a_good_one_answers_both_in_order():
    async def main():
        h = Harness(echo)
        h.feed(GET + b"\x01bad\r\n\r\n")
        await h.until(lambda: h.transport.closed)
        assert [r.status for r in responses(h.transport.take())] == [200, 400]
    run(main())


def test_handler_that_fails_gets_500_and_the_close():
    async def broken(request, responder):
        raise ValueError("bug")

    async def main():
        h = Harness(broken)
        h.feed(GET)
        await h.until(lambda: h.transport.closed)
        [response] = responses(h.transport.take())
        assert response.status == 500 and h.errors[0][0] == 500
    run(main())


def test_handler_that_returns_without_answering_gets_500():
    async def silent(request, responder):
        return None

    async def main():
        h = Harness(silent)
        h.feed(GET)
        await h.until(lambda: h.transport.closed)
        assert responses(h.transport.take())[0].status == 500
    run(main())


# -- sending: streamed responses, flow control, trailers ------------------------------------
def test_streamed_response_waits_while_the_client_is_not_reading():
    gate: list[str] = []

    async def streaming(request, responder):
        responder.start_response(request, 200, "OK", TEXT, None)
        gate.append("started")
        await responder.write_body(b"a" * 10)
        gate.append("first written")
        await responder.write_body(b"b" * 10)
        responder.end_response()

    async def main():
        h = Harness(streaming)
        h.protocol.pause_writing()
        h.feed(GET)
        await h.until(lambda: "started" in gate)
        await h.settle()
        assert gate == ["started"] and h.protocol.write_state is WriteState.SENDING
        h.protocol.resume_writing()
        await h.until(lambda: h.protocol.write_state is WriteState.IDLE)
        [response] = responses(h.transport.take())
        assert response.body == b"a" * 10 + b"b" * 10
        assert response.headers["transfer-encoding"] == "chunked"
    run(main())


def test_client_that_never_drains_is_cut_after_send_timeout():
    failures: list[BaseException] = []

    async def streaming(request, responder):
        responder.start_response(request, 200, "OK", TEXT, 100)
        try:
            await responder.write_body(b"a" * 10)
        except ConnectionError as exc:
            failures.append(exc)

    async def main():
        h = Harness(streaming, send_timeout=0.05)
        h.protocol.pause_writing()
        h.feed(GET)
        await h.until(lambda: h.transport.aborted)
        await h.until(lambda: bool(failures))
    run(main())


def _trailer_handler(trailers):
    async def handler(request, responder):
        responder.start_response(request, 200, "OK", TEXT, None)
        await responder.write_body(b"data")
        responder.end_response(trailers)
    return handler


TRAILERS = [(b"X-Checksum", b"abc"), (b"Set-Cookie", b"injected=1"),
            (b"Content-Type", b"text/html"), (b"Location", b"https://evil/"),
            (b"Content-Length", b"1")]


def test_trailers_go_to_a_client_that_takes_them_without_forbidden_fields():
    async def main():
        h = Harness(_trailer_handler(TRAILERS))
        h.feed(b"GET / HTTP/1.1\r\nHost: x\r\nTE: gzip;q=1, Trailers\r\n\r\n")
        await h.until(lambda: h.transport.finished == 1)
        [response] = responses(h.transport.take())
        assert response.body == b"data"  # a Content-Length trailer truncates nothing
        assert response.trailers == {"x-checksum": "abc"}
        assert "set-cookie" not in response.headers and "location" not in response.headers
        assert response.headers["content-type"] == "text/plain"
    run(main())


@pytest.mark.parametrize("te", [b"", b"TE: x-trailers-not\r\n", b"TE: gzip\r\n"])
def test_trailers_are_dropped_for_a_client_that_did_not_ask(te):
    async def main():
        h = Harness(_trailer_handler(TRAILERS))
        h.feed(b"GET / HTTP/1.1\r\nHost: x\r\n" + te + b"\r\n")
        await h.until(lambda: h.transport.finished == 1)
        raw = h.transport.take()
        assert raw.endswith(b"\r\n0\r\n\r\n")
        [response] = responses(raw)
        assert response.trailers == {} and "set-cookie" not in response.headers
    run(main())


def test_unfinished_streamed_response_closes_the_connection():
    async def broken_backend(request, responder):
        responder.start_response(request, 200, "OK", TEXT, 100)
        await responder.write_body(b"a" * 10)

    async def main():
        h = Harness(broken_backend)
        h.feed(GET + GET)
        await h.until(lambda: h.transport.closed)
        assert h.transport.started == 1  # the pipelined second one is not started
    run(main())


# -- the request body: buffered, limits, 100 Continue --------------------------------------
def test_content_length_over_the_limit_is_413_before_any_100_continue():
    called: list[HttpRequest] = []

    async def handler(request, responder):
        called.append(request)
        await echo(request, responder)

    async def main():
        h = Harness(handler, client_max_body_size=1000)
        h.feed(b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n"
               b"Expect: 100-continue\r\n\r\n")
        await h.until(lambda: h.transport.closed)
        raw = h.transport.take()
        assert b"100 Continue" not in raw
        assert [r.status for r in responses(raw)] == [413]
        assert not called
    run(main())


def test_chunked_body_growing_past_the_limit_is_413():
    async def main():
        h = Harness(echo, client_max_body_size=1000)
        h.feed(b"PUT / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(3):
            h.feed(b"200\r\n" + b"x" * 512 + b"\r\n")
        await h.until(lambda: h.transport.closed)
        assert [r.status for r in responses(h.transport.take())] == [413]
    run(main())


def test_100_continue_is_sent_when_the_body_is_first_read_and_not_for_a_refusal():
    async def refuse(request, responder):
        responder.send_response(request, 404, "Not Found", TEXT, b"no")

    async def main():
        h = Harness(echo)
        h.feed(b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
        await h.until(lambda: b"100 Continue" in h.transport.written)
        h.feed(b"abc")
        await h.until(lambda: h.transport.finished == 1)
        assert [r.status for r in responses(h.transport.take())] == [100, 200]

        refused = Harness(refuse)
        refused.feed(b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        await refused.until(lambda: refused.transport.finished == 1)
        raw = refused.transport.take()
        assert b"100 Continue" not in raw and responses(raw)[0].status == 404
        # Its body was never invited: the connection cannot be reused.
        assert responses(raw)[0].headers["connection"] == "close"
    run(main())


def test_buffered_body_past_the_memory_part_goes_to_a_nameless_file_and_replays(tmp_path):
    async def main():
        limits = BodyLimits(max_size=0, memory_size=1000, temp_dir=str(tmp_path), timeout=5)
        spool = BodySpool(limits)
        data = os.urandom(300_000)
        for i in range(0, len(data), 7000):
            spool.write(data[i:i + 7000])
        assert spool.size == len(data)
        assert list(tmp_path.iterdir()) == []  # never had a name there to leak
        for _ in range(2):
            pieces = list(spool.chunks())
            assert b"".join(pieces) == data and max(map(len, pieces)) <= 64 * 1024
        spool.close()

        h = Harness(echo, client_body_buffer_size=1000, client_body_temp_path=str(tmp_path))
        h.feed(b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(data))
        for i in range(0, len(data), 10_000):
            h.feed(data[i:i + 10_000])
        await h.until(lambda: h.transport.finished == 1)
        [response] = responses(h.transport.take())
        assert response.body.split()[2] == str(len(data)).encode()
        assert response.body.split()[3] == hashlib.sha256(data).hexdigest()[:16].encode()
    run(main())


def test_body_that_stops_arriving_is_408():
    async def main():
        h = Harness(echo, client_body_timeout=0.05)
        h.feed(b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        await h.until(lambda: h.transport.closed)
        assert [r.status for r in responses(h.transport.take())] == [408]
    run(main())


def test_streamed_body_pauses_reading_past_the_high_water_mark():
    async def slow_reader(request, responder):
        await asyncio.sleep(0.05)
        total = 0
        async for chunk in request.body:
            total += len(chunk)
        responder.send_response(request, 200, "OK", TEXT, b"%d" % total)

    async def main():
        h = Harness(slow_reader)
        h.feed(b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 600000\r\n\r\n")
        h.feed(b"x" * 300_000)
        assert not h.transport.reading
        h.feed(b"x" * 300_000)  # read while pausing: stashed, parsed on resume
        await h.until(lambda: h.transport.finished == 1)
        assert responses(h.transport.take())[0].body == b"600000"
        assert h.transport.reading
    run(main())


# -- tunnelling ---------------------------------------------------------------------------
class Peer:
    def __init__(self) -> None:
        self.closed = False
        self.received = bytearray()
        self.paused = False

    def write(self, data: bytes) -> None:
        self.received += data

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def close(self) -> None:
        self.closed = True


def test_upgrade_hands_the_connection_to_a_tunnel_protocol():
    peer = Peer()
    result: list[tuple[int, int]] = []

    async def upgrade(request, responder):
        responder.send_response(request, 101, "Switching Protocols",
                                [(b"Upgrade", b"websocket"), (b"Connection", b"upgrade")], b"")
        result.append(await responder.tunnel(peer, b"from backend", 5.0))

    async def main():
        h = Harness(upgrade)
        h.feed(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
               b"\r\nearly")
        await h.until(lambda: h.transport.protocol is not h.protocol)
        assert h.protocol.write_state is WriteState.TUNNELLING
        assert h.protocol.read_state is ReadState.TUNNELLING
        h.feed(b" more")
        assert bytes(peer.received) == b"early more"
        h.transport.protocol.pause_writing()
        assert peer.paused
        h.transport.protocol.eof_received()
        await h.until(lambda: bool(result))
        assert peer.closed and result == [(10, 12)]
        raw = h.transport.take()
        assert raw.startswith(b"HTTP/1.1 101 ") and raw.endswith(b"from backend")
        await h.until(lambda: h.transport.closed)
        await h.settle()
        assert h.protocol.write_state is WriteState.CLOSED
        assert h.server.connections == set()
    run(main())


def test_upgrade_refused_by_the_backend_closes_after_the_answer():
    async def refuse(request, responder):
        responder.send_response(request, 404, "Not Found", TEXT, b"no")

    async def main():
        h = Harness(refuse)
        h.feed(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
        await h.until(lambda: h.transport.closed)
        assert responses(h.transport.take())[0].headers["connection"] == "close"
    run(main())


# -- timers, the close, the drain ---------------------------------------------------------
def test_request_head_deadline_answers_408_from_the_http_side():
    async def main():
        h = Harness(echo)
        h.feed(b"GET / HTTP/1.1\r\nHost: x\r\n")
        h.protocol.request_head_timed_out()
        await h.until(lambda: h.transport.closed)
        assert [r.status for r in responses(h.transport.take())] == [408]
        assert h.errors == []  # logged once, by the TLS side's observer
    run(main())


def test_idle_keep_alive_connection_closes_after_the_timeout():
    async def main():
        h = Harness(echo, keepalive_timeout=0.05)
        h.feed(GET)
        await h.until(lambda: h.transport.finished == 1)
        await h.until(lambda: h.transport.closed)
    run(main())


def test_client_gone_cancels_the_handler():
    cancelled: list[BaseException] = []

    async def hang(request, responder):
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError as exc:
            cancelled.append(exc)
            raise

    async def main():
        h = Harness(hang)
        h.feed(GET)
        await h.settle()
        h.protocol.connection_lost(ConnectionResetError())
        await h.until(lambda: bool(cancelled))
        assert h.protocol.write_state is WriteState.CLOSED
        assert cancelled[0].args == ()  # the client's doing: no message
    run(main())


def test_drain_that_runs_out_cancels_the_handler_with_server_shutdown():
    cancelled: list[BaseException] = []

    async def hang(request, responder):
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError as exc:
            cancelled.append(exc)
            raise

    async def main():
        h = Harness(hang)
        idle = Harness(echo)
        idle.server = h.server
        h.feed(GET)
        await h.settle()
        await h.server.shutdown(0.05)
        await h.until(lambda: bool(cancelled))
        assert cancelled[0].args == (SERVER_SHUTDOWN,)
        assert h.transport.aborted
    run(main())


def test_shutdown_closes_idle_connections_and_answers_the_busy_with_close():
    release = asyncio.Event

    async def main():
        gate = release()

        async def wait(request, responder):
            await gate.wait()
            responder.send_response(request, 200, "OK", TEXT, b"ok")

        h = Harness(wait)
        h.feed(GET)
        await h.settle()
        drain = asyncio.ensure_future(h.server.shutdown(2))
        await h.settle()
        assert not h.transport.closed
        gate.set()
        await drain
        assert h.transport.closed and not h.transport.aborted
        assert responses(h.transport.take())[0].headers["connection"] == "close"
    run(main())



def test_shutdown_finishes_a_request_whose_head_is_arriving():
    """A request head split over two reads (two TLS records, two segments) with the drain
    starting in between: the connection was not 'busy' yet, so it was closed as idle and the
    request lost. It is answered now, with Connection: close; an idle keep-alive connection
    still closes at once."""
    async def main():
        h = Harness(echo)
        h.feed(GET[:10])
        await h.settle()
        drain = asyncio.ensure_future(h.server.shutdown(2))
        await h.settle()
        assert not h.transport.closed
        h.feed(GET[10:])
        await drain
        got = responses(h.transport.take())
        assert [r.status for r in got] == [200]
        assert got[0].headers["connection"] == "close" and h.transport.closed

        idle = Harness(echo)
        idle.feed(GET)
        await idle.until(lambda: idle.transport.finished == 1)
        await idle.server.shutdown(2)
        assert idle.transport.closed and not idle.transport.aborted
    run(main())


def test_head_then_get_on_one_connection():
    async def main():
        h = Harness(echo)
        for _ in range(20):
            h.feed(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n" + GET)
        await h.until(lambda: h.transport.finished == 40)
        got = responses(h.transport.take(), [b"HEAD", b"GET"] * 20)
        assert [r.status for r in got] == [200] * 40
        assert all(r.body == b"" for r in got[::2]) and all(r.body for r in got[1::2])
    run(main())


def test_a_pipelined_head_that_stalls_is_408_at_the_keep_alive_timeout():
    async def main():
        h = Harness(echo, keepalive_timeout=0.05)
        h.feed(GET + b"GET /next HTTP/1.1\r\nHost")
        await h.until(lambda: h.transport.closed)
        assert [r.status for r in responses(h.transport.take())] == [200, 408]
    run(main())


def test_a_second_response_is_a_state_error_not_garbage_on_the_wire():
    errors: list[BaseException] = []

    async def twice(request, responder):
        responder.send_response(request, 200, "OK", TEXT, b"one")
        try:
            responder.send_response(request, 200, "OK", TEXT, b"two")
        except StateError as exc:
            errors.append(exc)

    async def main():
        h = Harness(twice)
        h.feed(GET)
        await h.until(lambda: h.transport.finished == 1)
        assert [r.body for r in responses(h.transport.take())] == [b"one"] and errors
    run(main())


def test_unwritable_temp_dir_is_500_not_a_handler_crash(tmp_path):
    async def main():
        h = Harness(echo, client_body_buffer_size=10,
                    client_body_temp_path=str(tmp_path / "missing"))
        h.feed(b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"x" * 100)
        await h.until(lambda: h.transport.finished == 1)
        [response] = responses(h.transport.take())
        assert response.status == 500 and b"client_body_temp_path" in response.body
    run(main())



def test_tunnel_without_a_101_is_a_state_error_and_closes_the_peer():
    peer = Peer()
    errors: list[BaseException] = []

    async def confused(request, responder):
        try:
            await responder.tunnel(peer, b"", 5.0)
        except StateError as exc:
            errors.append(exc)
        responder.send_response(request, 502, "Bad Gateway", TEXT, b"no")

    async def main():
        h = Harness(confused)
        h.feed(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
        await h.until(lambda: h.transport.closed)
        assert errors and peer.closed
        assert responses(h.transport.take())[0].status == 502
    run(main())


def test_a_streamed_response_left_unfinished_is_reported_cut_and_a_whole_one_is_not():
    # The TLS transport closes a cut response without close_notify (tests/test_e2e_hostile.py).
    async def cut(request, responder):
        responder.start_response(request, 200, "OK", TEXT, 100)
        await responder.write_body(b"a" * 10)  # then returns: the backend failed mid-body

    async def main():
        h = Harness(cut)
        h.feed(GET)
        await h.until(lambda: h.transport.finished == 1)
        assert h.transport.cut == 1 and h.transport.closed
        whole = Harness(_trailer_handler(None))
        whole.feed(GET)
        await whole.until(lambda: whole.transport.finished == 1)
        assert whole.transport.cut == 0
    run(main())
