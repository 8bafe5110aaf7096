"""Property fuzzing of the client HTTP/1.1 side, in-process, differential against h11.

Any byte stream, split anywhere, gives the same responses; and each response is either the
answer to a request exactly as h11 (an independent parser) reads it, or a 4xx after which the
connection closes. Never an exception, never a hang. `make fuzz` runs the deep profile
(QPROXY_FUZZ=deep); `make test` the bounded one.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re

import h11
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from qproxy.proxy.http import BadRequest, HttpRequest
from qproxy.proxy.http_state import WriteState
from tests.support.http_mock import Harness, Response, responses

settings.register_profile("bounded", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("deep", max_examples=3000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("QPROXY_FUZZ", "bounded"))

TEXT = [(b"Content-Type", b"text/plain")]


def summary(method: str | bytes, target: str | bytes, body: bytes) -> bytes:
    method = method.decode() if isinstance(method, bytes) else method
    target = target.decode("latin-1") if isinstance(target, bytes) else target
    return f"{method} {target} {len(body)} {hashlib.sha256(body).hexdigest()[:16]}".encode(
        "utf-8", "surrogateescape")


async def echo(request: HttpRequest, responder) -> None:
    body = b""
    if request.body is not None:
        try:
            await request.body.buffer()
        except BadRequest as exc:
            responder.send_response(request, exc.status, "Refused", TEXT, b"refused")
            return
        body = b"".join([chunk async for chunk in request.body])
    text = summary(request.method, request.raw_path, body)
    responder.send_response(request, 200, "OK", TEXT, text)


# -- byte streams ------------------------------------------------------------------------
_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=8)
_value = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789 ;=,/", max_size=16).map(str.strip)
_path = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789/._-%?=&", max_size=20).map(
    lambda p: "/" + p)


@st.composite
def request_bytes(draw) -> bytes:
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]))
    version = draw(st.sampled_from(["1.1", "1.1", "1.1", "1.0"]))
    lines = [f"{method} {draw(_path)} HTTP/{version}"]
    if version == "1.1" or draw(st.booleans()):
        lines.append("Host: example")
    for _ in range(draw(st.integers(0, 3))):
        name = "x-" + draw(_token)
        lines.append(f"{name}: {draw(_value)}")
    body = draw(st.binary(max_size=300)) if method in ("POST", "PUT", "PATCH") else b""
    framing = draw(st.sampled_from(["length", "chunked"])) if body else "none"
    if framing == "length":
        lines.append(f"Content-Length: {len(body)}")
        payload = body
    elif framing == "chunked" and version == "1.1":
        lines.append("Transfer-Encoding: chunked")
        cut = draw(st.integers(0, len(body)))
        pieces = [p for p in (body[:cut], body[cut:]) if p]
        payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    else:
        payload = b""
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


def _mutate(data: bytes, where: int, byte: int, drop: bool) -> bytes:
    if not data:
        return data
    where %= len(data)
    return data[:where] + data[where + 1:] if drop else data[:where] + bytes([byte]) + data[
        where + 1:]


streams = st.one_of(
    st.lists(request_bytes(), min_size=1, max_size=4).map(b"".join),
    st.tuples(st.lists(request_bytes(), min_size=1, max_size=3).map(b"".join),
              st.integers(0, 10_000), st.integers(0, 255), st.booleans()).map(
        lambda t: _mutate(*t)),
    st.tuples(st.lists(request_bytes(), max_size=2).map(b"".join),
              st.binary(min_size=1, max_size=60)).map(lambda t: t[0] + t[1]),
)


# -- running a stream ----------------------------------------------------------------------
def _quiet(h: Harness) -> bool:
    conn = h.protocol
    if conn.write_state in (WriteState.CLOSED, WriteState.MUST_CLOSE) or h.transport.closed:
        return True
    if conn.write_state is WriteState.IDLE:
        return not conn.answers.busy
    cycle = conn.answers.cycle
    # A handler waiting for the rest of a body that is not in the stream.
    return (conn.write_state is WriteState.WAITING and cycle is not None
            and cycle.request is not None and cycle.request.body is not None
            and not cycle.request.body.complete)


def serve(data: bytes, cuts: list[int]) -> tuple[bytes, bool]:
    """The bytes written back for `data` fed in the pieces `cuts` makes, and whether the
    connection was closed."""
    async def main() -> tuple[bytes, bool]:
        h = Harness(echo)
        points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
        for start, end in zip(points, points[1:]):
            if h.transport.closed:
                break
            h.feed(data[start:end])
            await asyncio.sleep(0)
        # A hang is a failure: everything settles within a second.
        await h.until(lambda: _quiet(h), timeout=1.0)
        await h.settle()
        return re.sub(rb"\r\nDate: [^\r]*", b"", h.transport.take()), h.transport.closed
    return asyncio.run(main())


def h11_requests(data: bytes) -> tuple[list[bytes], bool]:
    """What h11 reads in `data`: each complete request's summary, and whether it refused
    something."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    out: list[bytes] = []
    current: list = []
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            return out, True
        if event is h11.NEED_DATA:
            return out, False
        if event is h11.PAUSED:
            if conn.their_state is h11.DONE and conn.our_state is h11.SEND_RESPONSE:
                conn.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
                conn.send(h11.EndOfMessage())
                if conn.our_state is h11.MUST_CLOSE:
                    return out, False
                conn.start_next_cycle()
                continue
            return out, False
        if isinstance(event, h11.Request):
            current = [event.method, event.target, b""]
        elif isinstance(event, h11.Data):
            current[2] += event.data
        elif isinstance(event, h11.EndOfMessage):
            out.append(summary(*current))
        elif isinstance(event, h11.ConnectionClosed):
            return out, False


@given(data=streams, cuts=st.lists(st.integers(0, 2000), max_size=8))
def test_any_stream_split_anywhere_gives_the_same_answers(data, cuts):
    whole, whole_closed = serve(data, [])
    split, split_closed = serve(data, cuts)
    assert whole == split and whole_closed == split_closed


@given(data=streams)
def test_answers_are_requests_as_h11_reads_them_or_a_4xx_and_close(data):
    # One leniency we keep on purpose, with llhttp and nginx (RFC 9112 section 3 allows it):
    # more than one space between the request line's parts. h11 refuses it.
    assume(not re.search(rb" {2,}(/|HTTP/)", data))
    written, closed = serve(data, [])
    got: list[Response] = responses(written)
    expected, h11_refused = h11_requests(data)
    answered = [r for r in got if r.status == 200]
    assert [r.body for r in answered] == expected[:len(answered)]
    refusals = [r for r in got if r.status != 200]
    if refusals:
        # One refusal, the last answer, a client error (or 501 for a transfer coding we do not
        # take, 505 for a version other than HTTP/1.x), and the connection closes.
        assert len(refusals) == 1 and got[-1] is refusals[0]
        assert (400 <= refusals[0].status < 500 or refusals[0].status in (501, 505)) and closed
        assert refusals[0].headers.get("connection") == "close"
    else:
        # Without a refusal we answered exactly what h11 read: nothing dropped, nothing more.
        assert [r.body for r in answered] == expected
