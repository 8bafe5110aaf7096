"""One client connection speaking HTTP/1.1: its reading side.

Requests are parsed by `RequestReader` and handed to the answering side (`Answering`), which
answers them in turn, each through a `RequestCycle` running the handler as one task. What the
connection is reading and what it is answering are two state machines (`proxy.http_state`).
After an upgrade the `TunnelProtocol` takes the transport over (`transport.set_protocol`).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from .answering import Answering
from .flow import FlowControl
from .http_state import ReadState, WriteState, check_read
from .request import BadRequest, HttpRequest
from .request_reader import RequestReader
from .tunnel import TunnelProtocol

if TYPE_CHECKING:
    from .http import HttpServer

# Input is parsed this much at a time, so that a pause takes effect within one read.
FEED_SLICE = 16 * 1024
_UPGRADING = "upgrading"  # why input is paused between an upgrade request and its answer


@runtime_checkable
class RequestLifecycle(Protocol):
    """What the connection tells a transport that wants to know when a request is in hand
    (the seam HTTP -> TLS: `TlsAppTransport` stops its request-head deadline meanwhile). A
    transport without it (a plain one, in tests) is told nothing."""

    def request_started(self) -> None: ...
    def request_finished(self) -> None: ...
    def response_cut(self) -> None: ...  # close now, saying the response is not whole


class _Untold:
    __slots__ = ()

    def request_started(self) -> None:
        pass

    def request_finished(self) -> None:
        pass

    def response_cut(self) -> None:
        pass


_UNTOLD = _Untold()


class HttpConnection(asyncio.Protocol):
    __slots__ = ("server", "loop", "transport", "lifecycle", "remote", "_reader", "read_state",
                 "flow", "_stash", "_upgrade_bytes", "answers")

    def __init__(self, server: "HttpServer") -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # connection_made
        self.lifecycle: RequestLifecycle = _UNTOLD
        self.remote = "-"
        self._reader = RequestReader(self, server.section, server.body_limits)
        self.read_state = ReadState.IDLE  # changed only through set_read
        self.flow: FlowControl = None  # type: ignore[assignment]
        self._stash = b""  # read while input was paused, parsed on resume
        self._upgrade_bytes = b""  # sent ahead of a 101, for the tunnel
        self.answers = Answering(self, server)

    @property
    def write_state(self) -> WriteState:
        return self.answers.write_state

    def set_read(self, new: ReadState) -> None:
        if not self.read_state.allowed & new.bit:  # type: ignore[attr-defined]  # (http_state)
            check_read(self.read_state, new)  # raises StateError
        self.read_state = new

    # -- asyncio side ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if isinstance(transport, RequestLifecycle):
            self.lifecycle = transport
        self.flow = FlowControl(transport)  # type: ignore[arg-type]
        peer = transport.get_extra_info("peername")
        self.remote = str(peer[0]) if isinstance(peer, tuple) else "-"
        self.server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        read = self.read_state
        if read.parsing:  # type: ignore[attr-defined]
            if self._stash or self.flow.reading_paused:
                # Reading is paused but a read was already under way: parse it on resume.
                self._stash += data
                return
            self._parse(data)
        elif read is ReadState.UPGRADING:
            self._upgrade_bytes += data
            self.pause_input(_UPGRADING)
        # ERROR, ENDED: a bad request ended parsing (its answer is queued), or input ended.

    def _parse(self, data: bytes) -> None:
        if len(data) <= FEED_SLICE:
            self._feed(data)
            return
        view = memoryview(data)
        for start in range(0, len(data), FEED_SLICE):
            if self.flow.reading_paused or not self.read_state.parsing:  # type: ignore[attr-defined]
                # Pausing does not stop the bytes already read: keep the rest (pipelined
                # requests, say) unparsed until the queue drains; after an upgrade request
                # the rest belongs to the tunnel.
                if self.read_state.parsing:  # type: ignore[attr-defined]
                    self._stash = bytes(view[start:])
                elif self.read_state is ReadState.UPGRADING:
                    self._upgrade_bytes += bytes(view[start:])
                return
            self._feed(bytes(view[start:start + FEED_SLICE]))

    def _feed(self, data: bytes) -> None:
        try:
            upgrade_at = self._reader.feed(data)
        except BadRequest as error:
            self._reject(error)
            return
        if upgrade_at is not None:
            self.set_read(ReadState.UPGRADING)
            self.answers.must_close()
            self._upgrade_bytes = data[upgrade_at:]

    def eof_received(self) -> bool:
        """No more requests; those in hand are still answered. True while something is."""
        self._end_input(ConnectionResetError("the client closed the connection"))
        if not self.answers.busy:
            self.close()
            return False
        return True

    def _end_input(self, error: BaseException) -> None:
        if self.read_state is ReadState.ENDED:
            return
        self.set_read(ReadState.ENDED)
        parsing = self._reader.parsing
        if parsing is not None and parsing.body is not None:
            parsing.body.fail(error)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.answers.write_state is WriteState.CLOSED:
            return
        error = ConnectionResetError("the client closed the connection")
        self._end_input(error)
        self.server.connections.discard(self)
        for item in self.answers.connection_lost():
            if isinstance(item, HttpRequest) and item.body is not None:
                item.body.fail(error)
        if self.flow is not None:
            self.flow.connection_lost()  # a writer waiting to drain sees the close

    def pause_writing(self) -> None:
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()
        self.answers.start_next()

    # -- TLS's deadline for a request head (tls.protocol.AppProtocol) --------------------
    def request_head_timed_out(self) -> None:
        if self.answers.busy:
            return  # a request is in hand after all
        if self.read_state.parsing:  # type: ignore[attr-defined]
            self.set_read(ReadState.ERROR)
        self.answers.answer_error(BadRequest(408, "the request headers did not arrive in "
                                             "time"), log=False)  # TLS's observer logged it

    # -- flow control of the client's input -----------------------------------------------
    def pause_input(self, reason: object) -> None:
        self.flow.pause_reading(reason)

    def resume_input(self, reason: object) -> None:
        if self.flow.release(reason) and self.answers.write_state is not WriteState.CLOSED:
            if self._stash:
                # The socket stays paused until what was read ahead is parsed; else the
                # stash could grow by a read per pause.
                self.loop.call_soon(self._replay_stash)
            else:
                self.flow.resume_transport()

    def _replay_stash(self) -> None:
        if self.flow.reading_paused or self.answers.write_state is WriteState.CLOSED:
            return  # paused again meanwhile: the next resume replays
        data, self._stash = self._stash, b""
        if self.read_state.parsing:  # type: ignore[attr-defined]
            self._parse(data)
        if not self._stash:
            self.flow.resume_transport()

    # -- what the reader tells (request_reader.RequestSink) -------------------------------
    def message_begun(self) -> None:
        # The keep-alive timer runs on: when it fires it finds the connection busy and lapses.
        self.set_read(ReadState.HEAD)

    def request_parsed(self, request: HttpRequest) -> None:
        self.set_read(ReadState.BODY if request.body is not None else ReadState.HEAD)
        self.answers.enqueue(request)

    def message_complete(self) -> None:
        if self.read_state is ReadState.HEAD or self.read_state is ReadState.BODY:
            self.set_read(ReadState.IDLE)

    def _reject(self, error: BadRequest) -> None:
        """Nothing after a bad request can be trusted to be framed right: parsing ends."""
        self.set_read(ReadState.ERROR)
        parsing, self._reader.parsing = self._reader.parsing, None
        if parsing is not None and parsing.body is not None:
            # A bad body: its request is being (or will be) handled; its handler answers, and
            # its access-log line (or error line) says why.
            parsing.body.fail(error)
            return
        self.answers.enqueue(error)

    # -- the tunnel -------------------------------------------------------------------------
    def hand_over(self, tunnel: TunnelProtocol) -> None:
        """After a 101: the tunnel's protocol reads the connection from now on, starting with
        what the client sent ahead of the 101."""
        ended = self.read_state is ReadState.ENDED
        if not ended:
            self.set_read(ReadState.TUNNELLING)
        self.transport.set_protocol(tunnel)
        if self.flow.writing_paused:
            tunnel.pause_writing()
        data, self._upgrade_bytes = self._upgrade_bytes, b""
        if data:
            tunnel.data_received(data)
        if ended:
            tunnel.end()
        else:
            self.resume_input(_UPGRADING)
            self.flow.resume_transport()

    # -- closing --------------------------------------------------------------------------
    def abort(self, reason: str | None = None) -> None:
        """Cut the connection; the handler still running is cancelled with `reason`."""
        cycle = self.answers.cycle
        if reason is not None and cycle is not None and cycle.task is not None and (
                not cycle.task.done()):
            cycle.task.cancel(reason)
        if self.answers.write_state is not WriteState.CLOSED:
            self.transport.abort()

    def close(self) -> None:
        self.answers.stop_keepalive()
        if self.answers.write_state is not WriteState.CLOSED and not self.transport.is_closing():
            self.transport.close()

    def shutdown(self) -> None:
        """Finish the request in hand, or the one whose head is arriving (bounded by the
        request-head deadline and the drain's shutdown_timeout), then close; a connection
        idle between requests closes now. (A connection that has sent no request byte yet
        has no HTTP side: the worker's drain gives those their grace, worker.py.)"""
        if not self.answers.busy and self.read_state is not ReadState.HEAD:
            self.close()
