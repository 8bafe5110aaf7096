"""The answering side of one client connection: requests answered one at a time in arrival
order (pipelined ones wait their turn), whether the connection stays open after each, and the
keep-alive timer between them. The reading side is `proxy.connection.HttpConnection`."""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING

from .http_state import ReadState, WriteState, check_write
from .request import PHRASES, TEXT_PLAIN, BadRequest, HttpRequest, error_body
from .request_body import CONTINUE
from .request_cycle import RequestCycle
from .tunnel import IdleTimer, TunnelProtocol

if TYPE_CHECKING:
    from .connection import HttpConnection
    from .flow import FlowControl
    from .http import HttpServer

# Pipelined requests parsed ahead of the one being answered before reading pauses.
MAX_QUEUED_REQUESTS = 16
QUEUE_FULL = "queue full"  # why input is paused


def _client_left_mid_body(request: HttpRequest | None) -> bool:
    """The client closed its side (a TLS close_notify, a FIN) before its body was whole: the
    handler had nobody to answer and logged 499. A 500 on the half-open connection would tell
    the client the server failed, and contradict that log line; the connection just closes."""
    body = request.body if request is not None else None
    return body is not None and isinstance(body.error, ConnectionError)


class Answering:
    """What a `RequestCycle` (the responder) answers through."""

    __slots__ = ("_conn", "server", "write_state", "_keep_alive", "_queue", "cycle", "_keepalive")

    def __init__(self, conn: "HttpConnection", server: "HttpServer") -> None:
        self._conn = conn
        self.server = server
        self.write_state = WriteState.IDLE  # changed only through set_write
        # Whether the response in hand may leave the connection open (h11 keeps this one bool
        # beside its states too): only ever goes from True to False.
        self._keep_alive = True
        self._queue: collections.deque[HttpRequest | BadRequest] = collections.deque()
        self.cycle: RequestCycle | None = None
        self._keepalive: IdleTimer | None = None

    def set_write(self, new: WriteState) -> None:
        if not self.write_state.allowed & new.bit:  # type: ignore[attr-defined]  # (http_state)
            check_write(self.write_state, new)  # raises StateError
        self.write_state = new

    @property
    def flow(self) -> "FlowControl":
        return self._conn.flow

    @property
    def transport(self):
        return self._conn.transport

    @property
    def busy(self) -> bool:
        """A request in hand or waiting its turn."""
        return self.write_state is not WriteState.IDLE or bool(self._queue)

    def queued(self) -> list[HttpRequest | BadRequest]:
        return list(self._queue)

    # -- requests in turn -----------------------------------------------------------------
    def enqueue(self, item: HttpRequest | BadRequest) -> None:
        if self.write_state is WriteState.IDLE and not self._queue:
            self._start(item)
            return
        self._queue.append(item)
        if len(self._queue) >= MAX_QUEUED_REQUESTS:
            self._conn.pause_input(QUEUE_FULL)

    def start_next(self) -> None:
        if self.write_state is not WriteState.IDLE or not self._queue:
            return
        item = self._queue.popleft()
        if len(self._queue) < MAX_QUEUED_REQUESTS:
            self._conn.resume_input(QUEUE_FULL)
        self._start(item)

    def _start(self, item: HttpRequest | BadRequest) -> None:
        if isinstance(item, BadRequest):
            self.answer_error(item, log=True)
            return
        self.set_write(WriteState.WAITING)
        self._conn.lifecycle.request_started()
        cycle = self.cycle = RequestCycle(self, item)
        cycle.task = self._conn.loop.create_task(cycle.run())

    def answer_error(self, error: BadRequest, log: bool) -> None:
        if log:
            self.server.error_logger(self._conn.remote, error.status, str(error))
        self._keep_alive = False
        self.set_write(WriteState.WAITING)
        phrase = PHRASES.get(error.status, "Error")
        RequestCycle(self, None).send_response(None, error.status, phrase, TEXT_PLAIN,
                                               error_body(error.status, phrase))
        self._finish()

    def cycle_ended(self, cycle: RequestCycle, cancelled: bool) -> None:
        """The handler of the request in hand returned (or failed, or was cancelled)."""
        write = self.write_state
        if cancelled or write is WriteState.CLOSED:
            self._keep_alive = False
        elif write is WriteState.WAITING:
            self._keep_alive = False
            if not _client_left_mid_body(cycle.request):
                cycle.answer_unhandled()
        elif write is WriteState.SENDING:
            self._keep_alive = False  # a streamed response left unfinished: cut it off,
            self._conn.lifecycle.response_cut()  # without the close_notify of a whole one
        elif write is WriteState.TUNNELLING:
            self._keep_alive = False
        request = cycle.request
        if request is not None and request.body is not None:
            request.body.close()
            self._conn.resume_input(request.body)  # a body the handler left unread
        self._finish()

    def _finish(self) -> None:
        conn = self._conn
        self.cycle = None
        conn.lifecycle.request_finished()
        if self.write_state is WriteState.CLOSED:
            return
        if not self._keep_alive or self.server.closing:
            self.set_write(WriteState.MUST_CLOSE)
            conn.close()
            return
        self.set_write(WriteState.IDLE)
        if self._queue:
            if not conn.flow.writing_paused:  # else resume_writing starts it
                self.start_next()
            return
        read = conn.read_state
        if read is not ReadState.IDLE and read is not ReadState.HEAD:
            self.set_write(WriteState.MUST_CLOSE)  # input ended, or was not HTTP
            conn.close()
            return
        # One timer per connection, moved on only when it fires (not armed and cancelled per
        # request); it lapses while requests come.
        if self._keepalive is None:
            self._keepalive = IdleTimer(conn.loop, self.server.section.keepalive_timeout,
                                        self._keepalive_expired)
        else:
            self._keepalive.touch()

    def _keepalive_expired(self) -> None:
        self._keepalive = None
        if self.busy:
            return
        if self._conn.read_state is ReadState.IDLE:
            self._conn.close()
        elif self._conn.read_state is ReadState.HEAD:
            # The next request's head began before this one ended (so TLS's head deadline
            # did not start for it) and has stalled since: the slowloris answer.
            self._conn.request_head_timed_out()

    def stop_keepalive(self) -> None:
        if self._keepalive is not None:
            self._keepalive.stop()
            self._keepalive = None

    def connection_lost(self) -> list[HttpRequest | BadRequest | None]:
        """The requests whose bodies must now fail: the one in hand and those queued."""
        self.stop_keepalive()
        if self.write_state is not WriteState.CLOSED:
            self.set_write(WriteState.CLOSED)
        cycle = self.cycle
        lost = [cycle.request if cycle else None, *self._queue]
        self._queue.clear()
        task = cycle.task if cycle is not None else None
        if task is not None and not task.done() and not task.cancelling():
            # The handler stops; its backend connection is closed. (A cancel already asked
            # for, by the drain at shutdown, keeps its message.)
            task.cancel()
        return lost

    # -- what the responder asks -----------------------------------------------------------
    def must_close(self) -> None:
        self._keep_alive = False

    def connection_header(self, request: HttpRequest | None) -> bytes | None:
        """What the response says of the connection; decides whether it is closed after."""
        if request is None or not request.keep_alive or self.server.closing or (
                not self._conn.read_state.parsing and not self._queue) or (  # type: ignore[attr-defined]
                # An unread rest of the body would be taken for the next request.
                request.body is not None and not request.body.complete):
            self._keep_alive = False
        if not self._keep_alive:
            return b"close"
        return b"keep-alive" if request.version == "1.0" else None

    def write(self, data: bytes) -> bool:
        """True if the bytes went to a transport still open."""
        transport = self._conn.transport
        if self.write_state is WriteState.CLOSED or transport.is_closing():
            return False
        transport.write(data)
        return True

    def send_continue(self) -> None:
        """For a request body that is about to be read (`RequestBody.send_continue`)."""
        if self.write_state is WriteState.WAITING:
            self.write(CONTINUE)

    def abort(self) -> None:
        self._conn.abort()

    def hand_over(self, tunnel: TunnelProtocol) -> None:
        self._conn.hand_over(tunnel)

    def tunnel_lost(self, exc: Exception | None) -> None:
        self._conn.connection_lost(exc)

    def pause_input(self, reason: object) -> None:
        self._conn.pause_input(reason)

    def resume_input(self, reason: object) -> None:
        self._conn.resume_input(reason)
