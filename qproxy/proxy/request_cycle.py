"""One request's answer: the responder the handler writes to (uvicorn's
`RequestResponseCycle`). The connection (`proxy.connection`) decides when a cycle starts and
what happens after it; the cycle frames one response."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from .headers import Fields, encode_response_head
from .http_state import StateError, WriteState
from .request import PHRASES, TEXT_PLAIN, HttpDate, HttpRequest, error_body
from .tunnel import TunnelPeer, TunnelProtocol

if TYPE_CHECKING:
    from .answering import Answering

LAST_CHUNK = b"0\r\n\r\n"

# Fields that must not be sent as trailers, or that a recipient may not act on there (RFC 9110
# 6.5.1: framing, routing, request modifiers, authentication, response control, caching,
# content handling): a trailer can never change how the message was framed or processed.
FORBIDDEN_TRAILERS = frozenset({
    b"content-length", b"transfer-encoding", b"trailer", b"te", b"host", b"connection",
    b"keep-alive", b"upgrade", b"proxy-connection", b"content-type", b"content-encoding",
    b"content-range", b"content-location", b"set-cookie", b"cookie", b"location",
    b"authorization", b"proxy-authorization", b"www-authenticate", b"proxy-authenticate",
    b"authentication-info", b"proxy-authentication-info", b"cache-control", b"expires",
    b"pragma", b"age", b"vary", b"date", b"retry-after", b"etag", b"last-modified",
    b"max-forwards", b"expect", b"range", b"if-match", b"if-none-match",
    b"if-modified-since", b"if-unmodified-since", b"if-range", b"warning", b"refresh",
    b"alt-svc", b"strict-transport-security",
})


def allowed_trailers(trailers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(name, value) for name, value in trailers
            if name.strip().lower() not in FORBIDDEN_TRAILERS and b"\r" not in value
            and b"\n" not in value and name.strip()]


class RequestCycle:
    """The responder: `send_response` for a whole response; or `start_response`, then
    `write_body` (awaited: it waits while the client is not reading), then `end_response`;
    or `send_response(101)` then `tunnel`. Exported as `proxy.http.HttpProtocol`."""

    __slots__ = ("_conn", "request", "task", "_chunked", "_tunnel", "body_bytes_sent")

    def __init__(self, conn: "Answering", request: HttpRequest | None) -> None:
        self._conn = conn
        self.request = request
        self.task: asyncio.Task[None] | None = None
        self._chunked = False
        self._tunnel: TunnelProtocol | None = None
        self.body_bytes_sent = 0  # response body bytes handed to a transport still open

    async def run(self) -> None:
        conn = self._conn
        request = self.request
        assert request is not None
        cancelled = False
        try:
            await conn.server.handler(request, self)
        except asyncio.CancelledError:
            cancelled = True  # the client went away, or the drain at shutdown ran out
            raise
        except Exception as exc:  # a bug in the handler: answer 500, keep the worker
            conn.server.error_logger(request.remote, 500, f"handler failed: {exc!r}")
        finally:
            conn.cycle_ended(self, cancelled)

    def answer_unhandled(self) -> None:
        """The handler ended without answering: 500."""
        self.send_response(self.request, 500, PHRASES[500], TEXT_PLAIN,
                           error_body(500, PHRASES[500]))

    # -- whole responses -----------------------------------------------------------------
    def send_interim(self, head: bytes) -> None:
        """An informational response before the real one. A 100 Continue is the request
        body's to send (once, when the body is first read), so it is left to it."""
        request = self.request
        if head.startswith(b"HTTP/1.1 100 ") and request is not None and request.body:
            request.body.send_continue()
        elif self._conn.write_state is WriteState.WAITING:
            self._conn.write(head)

    def close_after_response(self) -> None:
        """The connection closes once this response is sent ("Connection: close")."""
        self._conn.must_close()

    def send_response(self, request: HttpRequest | None, status: int, reason: str,
                      fields: Fields, body: bytes) -> int:
        """A whole response: head and body leave in one write, one TLS record. Returns how
        many body bytes went to the client (0 if it had gone)."""
        conn = self._conn
        if conn.write_state is not WriteState.WAITING:
            if conn.write_state is WriteState.CLOSED:
                return 0
            raise StateError(f"a second response in HTTP write state {conn.write_state.value}")
        head_only = request is not None and request.method == "HEAD"
        no_body = status in (204, 304) or status < 200
        conn.set_write(WriteState.TUNNELLING if status == 101 else WriteState.DONE)
        head = encode_response_head(
            status, reason, fields, content_length=None if no_body else len(body),
            chunked=False, date=HttpDate.now(), keep_length=head_only or no_body,
            # A 101's own headers say "Connection: upgrade".
            connection=None if status == 101 else conn.connection_header(request))
        if head_only or no_body:
            conn.write(head)
            return 0
        sent = conn.write(head + body)
        if sent:
            self.body_bytes_sent += len(body)
        return len(body) if sent else 0

    # -- streamed responses ----------------------------------------------------------------
    def start_response(self, request: HttpRequest, status: int, reason: str,
                       fields: Fields, length: int | None) -> None:
        """A response whose body follows through `write_body`. Without a length it is sent
        chunked (HTTP/1.1) or delimited by closing the connection (HTTP/1.0)."""
        conn = self._conn
        if conn.write_state is not WriteState.WAITING:
            if conn.write_state is WriteState.CLOSED:
                return
            raise StateError(f"a second response in HTTP write state {conn.write_state.value}")
        conn.set_write(WriteState.SENDING)
        no_body = request.method == "HEAD" or status in (204, 304)
        chunked = length is None and not no_body and request.version != "1.0"
        if length is None and not no_body and not chunked:
            conn.must_close()
        self._chunked = chunked
        head = encode_response_head(
            status, reason, fields, content_length=length, chunked=chunked,
            connection=conn.connection_header(request), date=HttpDate.now(),
            keep_length=no_body)
        conn.write(head)

    async def write_body(self, data: bytes) -> None:
        """Raises ConnectionError once the client has gone, or has not taken what we sent
        within send_timeout. Returns once the connection can take more (so that no more than
        the transport's high-water mark and this chunk wait per connection)."""
        conn = self._conn
        if conn.write_state is not WriteState.SENDING:
            if conn.write_state is WriteState.CLOSED:
                raise ConnectionResetError("the client closed the connection")
            raise StateError(f"write_body in HTTP write state {conn.write_state.value}")
        if not data:
            return
        if self._chunked:
            sent = conn.write(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            sent = conn.write(data)
        if not sent:
            raise ConnectionResetError("the client closed the connection")
        self.body_bytes_sent += len(data)
        if not await conn.flow.drain(conn.server.section.send_timeout):
            conn.abort()
            raise ConnectionResetError("the client stopped taking the response")
        if conn.write_state is WriteState.CLOSED:
            raise ConnectionResetError("the client closed the connection")

    def end_response(self, trailers: list[tuple[bytes, bytes]] | None = None) -> None:
        """The streamed body is complete. `trailers` (a chunked backend response's) go on only
        in a chunked response to a client that said `TE: trailers`, without the fields RFC 9110
        forbids there; otherwise they are dropped. Never into the header section."""
        conn = self._conn
        if conn.write_state is not WriteState.SENDING:
            return
        conn.set_write(WriteState.DONE)
        if not self._chunked:
            return
        request = self.request
        kept = allowed_trailers(trailers) if trailers and request is not None and (
            request.trailers) else None
        if kept:
            conn.write(b"0\r\n" + b"".join(b"%s: %s\r\n" % (n.strip(), v.strip())
                                            for n, v in kept) + b"\r\n")
        else:
            conn.write(LAST_CHUNK)

    # -- tunnels -------------------------------------------------------------------------
    async def tunnel(self, peer: TunnelPeer, leftover: bytes, idle_timeout: float
                     ) -> tuple[int, int]:
        """After a 101: relay bytes both ways until either side closes, or no byte has gone
        either way for `idle_timeout` seconds. Returns (bytes from the client, bytes to it)."""
        conn = self._conn
        if conn.write_state is not WriteState.TUNNELLING:
            peer.close()
            if conn.write_state is WriteState.CLOSED:
                return 0, 0  # the client left before the tunnel began
            raise StateError(f"a tunnel in HTTP write state {conn.write_state.value} "
                             "(send_response(101) first)")
        tunnel = TunnelProtocol(conn.transport, peer, idle_timeout, conn.tunnel_lost)
        self._tunnel = tunnel
        conn.hand_over(tunnel)
        if leftover:
            tunnel.write_to_client(leftover)
        if peer.closed:
            tunnel.end()
        await tunnel.done
        return tunnel.bytes_in, tunnel.bytes_out

    # What the far end of a tunnel (the backend connection) calls.
    def tunnel_write(self, data: bytes) -> None:
        if self._tunnel is not None:
            self._tunnel.write_to_client(data)

    def tunnel_closed(self) -> None:
        if self._tunnel is not None:
            self._tunnel.end()

    def pause_input(self, reason: object) -> None:
        if self._tunnel is not None:
            self._tunnel.pause_client()
        else:
            self._conn.pause_input(reason)

    def resume_input(self, reason: object) -> None:
        if self._tunnel is not None:
            self._tunnel.resume_client()
        else:
            self._conn.resume_input(reason)
