"""One client connection speaking HTTP/1.1: reads requests, answers them in turn.

Requests are parsed by `RequestReader`; each is answered by a `RequestCycle` running the
handler as one task, one request at a time in arrival order (pipelined ones wait their turn).
What the connection is reading and what it is answering are two state machines
(`proxy.http_state`). After an upgrade the `TunnelProtocol` takes the transport over.
"""

from __future__ import annotations

import asyncio
import collections
from typing import TYPE_CHECKING, Protocol

from .flow import FlowControl
from .http_state import ReadState, WriteState, check_read, check_write
from .request import PHRASES, TEXT_PLAIN, BadRequest, HttpRequest, error_body
from .request_body import CONTINUE
from .request_cycle import RequestCycle
from .request_reader import RequestReader
from .tunnel import IdleTimer, TunnelProtocol

if TYPE_CHECKING:
    from .http import HttpServer

# Pipelined requests parsed ahead of the one being answered before reading pauses.
MAX_QUEUED_REQUESTS = 16
# Input is parsed this much at a time, so that a pause takes effect within one read.
FEED_SLICE = 16 * 1024
# Why input is paused (besides each request body over its high-water mark).
_QUEUE_FULL = "queue full"
_UPGRADING = "upgrading"


class HttpTransport(Protocol):
    """The transport the connection needs: asyncio's, plus the seam to TLS
    (`tls.protocol.RequestLifecycle`, implemented by `TlsAppTransport`)."""

    def write(self, data: bytes) -> None: ...
    def is_closing(self) -> bool: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def get_extra_info(self, name: str, default: object = None) -> object: ...
    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None: ...
    def request_started(self) -> None: ...
    def request_finished(self) -> None: ...


class HttpConnection(asyncio.Protocol):
    __slots__ = ("server", "_loop", "transport", "remote", "_reader", "_read", "_write",
                 "_keep_alive", "flow", "_stash", "_queue", "_cycle", "_keepalive",
                 "_upgrade_bytes")

    def __init__(self, server: "HttpServer") -> None:
        self.server = server
        self._loop = asyncio.get_running_loop()
        self.transport: HttpTransport = None  # type: ignore[assignment]  # connection_made
        self.remote = "-"
        self._reader = RequestReader(self, server.section, server.body_limits)
        self._read = ReadState.IDLE
        self._write = WriteState.IDLE
        # Whether the response in hand may leave the connection open (h11 keeps this one bool
        # beside its states too): only ever goes from True to False.
        self._keep_alive = True
        self.flow: FlowControl = None  # type: ignore[assignment]
        self._stash = b""  # read while input was paused, parsed on resume
        self._queue: collections.deque[HttpRequest | BadRequest] = collections.deque()
        self._cycle: RequestCycle | None = None
        self._keepalive: IdleTimer | None = None
        self._upgrade_bytes = b""  # sent ahead of a 101, for the tunnel

    @property
    def read_state(self) -> ReadState:
        return self._read

    @property
    def write_state(self) -> WriteState:
        return self._write

    def set_read(self, new: ReadState) -> None:
        self._read = check_read(self._read, new)

    def set_write(self, new: WriteState) -> None:
        self._write = check_write(self._write, new)

    # -- asyncio side ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.flow = FlowControl(transport)  # type: ignore[arg-type]
        peer = transport.get_extra_info("peername")
        self.remote = str(peer[0]) if isinstance(peer, tuple) else "-"
        self.server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        read = self._read
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
            if self.flow.reading_paused or not self._read.parsing:  # type: ignore[attr-defined]
                # Pausing does not stop the bytes already read: keep the rest (pipelined
                # requests, say) unparsed until the queue drains; after an upgrade request
                # the rest belongs to the tunnel.
                if self._read.parsing:  # type: ignore[attr-defined]
                    self._stash = bytes(view[start:])
                elif self._read is ReadState.UPGRADING:
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
            self._keep_alive = False
            self._upgrade_bytes = data[upgrade_at:]

    def eof_received(self) -> bool:
        """No more requests; those in hand are still answered. True while something is."""
        self._end_input(ConnectionResetError("the client closed the connection"))
        if self._write is WriteState.IDLE and not self._queue:
            self.close()
            return False
        return True

    def _end_input(self, error: BaseException) -> None:
        if self._read is ReadState.ENDED:
            return
        self.set_read(ReadState.ENDED)
        parsing = self._reader.parsing
        if parsing is not None and parsing.body is not None:
            parsing.body.fail(error)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._write is WriteState.CLOSED:
            return
        self.set_write(WriteState.CLOSED)
        self._end_input(ConnectionResetError("the client closed the connection"))
        self._stop_keepalive()
        self.server.connections.discard(self)
        error = ConnectionResetError("the client closed the connection")
        cycle = self._cycle
        for item in (cycle.request if cycle else None, *self._queue):
            if isinstance(item, HttpRequest) and item.body is not None:
                item.body.fail(error)
        self._queue.clear()
        if self.flow is not None:
            self.flow.connection_lost()  # a writer waiting to drain sees the close
        task = cycle.task if cycle is not None else None
        if task is not None and not task.done() and not task.cancelling():
            # The handler stops; its backend connection is closed. (A cancel already asked
            # for, by the drain at shutdown, keeps its message.)
            task.cancel()

    def tunnel_lost(self, exc: Exception | None) -> None:
        """The connection ended while the tunnel had it."""
        self.connection_lost(exc)

    def pause_writing(self) -> None:
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()
        if self._write is WriteState.IDLE and self._queue:
            self._start_next()

    # -- TLS's deadline for a request head (tls.protocol.AppProtocol) --------------------
    def request_head_timed_out(self) -> None:
        if self._write is not WriteState.IDLE or self._queue:
            return  # a request is in hand after all
        if self._read.parsing:  # type: ignore[attr-defined]
            self.set_read(ReadState.ERROR)
        self._answer_error(BadRequest(408, "the request headers did not arrive in time"),
                           log=False)  # the TLS side's observer has logged it

    # -- flow control of the client's input -----------------------------------------------
    def pause_input(self, reason: object) -> None:
        self.flow.pause_reading(reason)

    def resume_input(self, reason: object) -> None:
        if self.flow.release(reason) and self._write is not WriteState.CLOSED:
            if self._stash:
                # The socket stays paused until what was read ahead is parsed; else the
                # stash could grow by a read per pause.
                self._loop.call_soon(self._replay_stash)
            else:
                self.flow.resume_transport()

    def _replay_stash(self) -> None:
        if self.flow.reading_paused or self._write is WriteState.CLOSED:
            return  # paused again meanwhile: the next resume replays
        data, self._stash = self._stash, b""
        if self._read.parsing:  # type: ignore[attr-defined]
            self._parse(data)
        if not self._stash:
            self.flow.resume_transport()

    def send_continue(self) -> None:
        """For a request body that is about to be read (`RequestBody.send_continue`)."""
        if self._write is WriteState.WAITING:
            self.write(CONTINUE)

    # -- what the reader tells (request_reader.RequestSink) -------------------------------
    def message_begun(self) -> None:
        # The keep-alive timer runs on: when it fires it finds the connection busy and lapses.
        self.set_read(ReadState.HEAD)

    def request_parsed(self, request: HttpRequest) -> None:
        self.set_read(ReadState.BODY if request.body is not None else ReadState.HEAD)
        self._enqueue(request)

    def message_complete(self) -> None:
        if self._read in (ReadState.HEAD, ReadState.BODY):
            self.set_read(ReadState.IDLE)

    def body_source(self) -> "HttpConnection":
        return self

    def transport_for_request(self) -> HttpTransport:
        return self.transport

    # -- requests in turn -----------------------------------------------------------------
    def _enqueue(self, item: HttpRequest | BadRequest) -> None:
        if self._write is WriteState.IDLE and not self._queue:
            self._start(item)
            return
        self._queue.append(item)
        if len(self._queue) >= MAX_QUEUED_REQUESTS:
            self.pause_input(_QUEUE_FULL)

    def _reject(self, error: BadRequest) -> None:
        """Nothing after a bad request can be trusted to be framed right: parsing ends."""
        self.set_read(ReadState.ERROR)
        parsing, self._reader.parsing = self._reader.parsing, None
        if parsing is not None and parsing.body is not None:
            # A bad body: its request is being (or will be) handled; its handler answers, and
            # its access-log line (or error line) says why.
            parsing.body.fail(error)
            return
        self._enqueue(error)

    def _start_next(self) -> None:
        item = self._queue.popleft()
        if len(self._queue) < MAX_QUEUED_REQUESTS:
            self.resume_input(_QUEUE_FULL)
        self._start(item)

    def _start(self, item: HttpRequest | BadRequest) -> None:
        if isinstance(item, BadRequest):
            self._answer_error(item, log=True)
            return
        self.set_write(WriteState.WAITING)
        self.transport.request_started()
        cycle = self._cycle = RequestCycle(self, item)
        cycle.task = self._loop.create_task(cycle.run())

    def _answer_error(self, error: BadRequest, log: bool) -> None:
        if log:
            self.server.error_logger(self.remote, error.status, str(error))
        self._keep_alive = False
        self.set_write(WriteState.WAITING)
        phrase = PHRASES.get(error.status, "Error")
        cycle = RequestCycle(self, None)
        cycle.send_response(None, error.status, phrase, TEXT_PLAIN,
                            error_body(error.status, phrase))
        self._finish()

    def cycle_ended(self, cycle: RequestCycle, cancelled: bool) -> None:
        """The handler of the request in hand returned (or failed, or was cancelled)."""
        write = self._write
        if cancelled or write is WriteState.CLOSED:
            self._keep_alive = False
        elif write is WriteState.WAITING:
            self._keep_alive = False
            cycle.answer_unhandled()
        elif write in (WriteState.SENDING, WriteState.TUNNELLING):
            self._keep_alive = False  # a streamed response left unfinished: cut it off
        request = cycle.request
        if request is not None and request.body is not None:
            request.body.close()
            self.resume_input(request.body)  # a body the handler left unread
        self._finish()

    def _finish(self) -> None:
        self._cycle = None
        self.transport.request_finished()
        if self._write is WriteState.CLOSED:
            return
        if not self._keep_alive or self.server.closing:
            self.set_write(WriteState.MUST_CLOSE)
            self.close()
            return
        self.set_write(WriteState.IDLE)
        if self._queue:
            if not self.flow.writing_paused:  # else resume_writing starts it
                self._start_next()
            return
        if self._read is not ReadState.IDLE and self._read is not ReadState.HEAD:
            self.set_write(WriteState.MUST_CLOSE)  # input ended, or was not HTTP
            self.close()
            return
        # One timer per connection, moved on only when it fires (not armed and cancelled per
        # request); it lapses while requests come.
        if self._keepalive is None:
            self._keepalive = IdleTimer(self._loop, self.server.section.keepalive_timeout,
                                        self._keepalive_expired)
        else:
            self._keepalive.touch()

    def _keepalive_expired(self) -> None:
        self._keepalive = None
        if (self._write is WriteState.IDLE and self._read is ReadState.IDLE
                and not self._queue):
            self.close()

    def _stop_keepalive(self) -> None:
        if self._keepalive is not None:
            self._keepalive.stop()
            self._keepalive = None

    # -- answering ------------------------------------------------------------------------
    def must_close(self) -> None:
        self._keep_alive = False

    def connection_header(self, request: HttpRequest | None) -> bytes | None:
        """What the response says of the connection; decides whether it is closed after."""
        if request is None or not request.keep_alive or self.server.closing or (
                not self._read.parsing and not self._queue) or (
                # An unread rest of the body would be taken for the next request.
                request.body is not None and not request.body.complete):
            self._keep_alive = False
        if not self._keep_alive:
            return b"close"
        return b"keep-alive" if request.version == "1.0" else None

    def write(self, data: bytes) -> bool:
        """True if the bytes went to a transport still open."""
        transport = self.transport
        if self._write is WriteState.CLOSED or transport.is_closing():
            return False
        transport.write(data)
        return True

    def hand_over(self, tunnel: TunnelProtocol) -> None:
        """After a 101: the tunnel's protocol reads the connection from now on, starting with
        what the client sent ahead of the 101."""
        ended = self._read is ReadState.ENDED
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
        cycle = self._cycle
        if reason is not None and cycle is not None and cycle.task is not None and (
                not cycle.task.done()):
            cycle.task.cancel(reason)
        if self._write is not WriteState.CLOSED:
            self.transport.abort()

    def close(self) -> None:
        self._stop_keepalive()
        if self._write is not WriteState.CLOSED and not self.transport.is_closing():
            self.transport.close()

    def shutdown(self) -> None:
        """Finish the request in hand (if any), then close; idle connections close now."""
        if self._write is WriteState.IDLE and not self._queue:
            self.close()
