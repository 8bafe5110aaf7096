"""One TCP connection to a backend server: one request at a time, its state one value of
`BackendState` moved only along the table in `state`.

Reads go into one buffer shared by every backend connection of the worker (BufferedProtocol:
the bytes are parsed before the next read, and httptools copies what it keeps), never more
than the response buffer has room for: a slow client holds at most `body_buffer` bytes of a
download here, and no read makes one large object.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import BackendError, FailureKind
from .reader import ResponseReader
from .response import BackendResponse, Fields, ResponseHead, TunnelClient
from .sender import BackendRequest, WriteFlow, retrieve, send_request
from .state import BackendState, check_transition

if TYPE_CHECKING:
    from .pool import ServerConnections

S = BackendState
READ_SIZE = 64 * 1024
# A read never shrinks below this, even when the response buffer is nearly full.
MIN_READ = 4 * 1024
_READ_BUFFER = memoryview(bytearray(READ_SIZE))


@dataclass(frozen=True, slots=True)
class BackendSettings:
    """Per upstream (config `upstreams.NAME`)."""

    read_timeout: float = 60.0  # nginx's proxy_read_timeout (and proxy_send_timeout)
    max_head: int = 16 * 1024  # nginx's proxy_buffer_size: the response head's limit
    body_buffer: int = 64 * 1024  # nginx's proxy_buffers: body held for a slow client


class BackendConnection(asyncio.BufferedProtocol):
    """The asyncio protocol of one backend connection and the state it moves through.

    Past ~250 lines because it is the one object every callback of the connection lands on
    (reads, the reader's reports, the sender's, the response buffer's, the tunnel's, the
    timer): the jobs themselves live in `reader`, `response`, `sender` and `pool`, and what is
    left here is dispatch on the state. Splitting the dispatch would add an object and a call
    per event on every pooled connection and every request."""

    __slots__ = ("_pool", "_settings", "loop", "transport", "_state", "reused", "_reader",
                 "_response", "_head_waiter", "_sender", "flow", "_timer", "_since",
                 "_tunnel_client", "_leftover", "client", "_preface")

    def __init__(self, pool: "ServerConnections", settings: BackendSettings,
                 preface: bytes = b"", client: object | None = None) -> None:
        self._pool = pool
        self._settings = settings
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._state = S.IDLE
        self.reused = False
        self._reader = ResponseReader(self, settings.max_head)
        self._response: BackendResponse | None = None
        self._head_waiter: asyncio.Future[BackendResponse] | None = None
        self._sender: asyncio.Task[None] | None = None
        self.flow = WriteFlow()
        # One timer, moved on only when it fires: the idle timeout in the pool, the read
        # timeout in an exchange (from `_since`: went idle, or the last read).
        self._timer: asyncio.TimerHandle | None = None
        self._since = 0.0
        self._tunnel_client: TunnelClient | None = None
        self._leftover = b""  # read after a 101, before the tunnel started
        # The client connection a PROXY header tied this connection to (None: any client).
        self.client = client
        self._preface = preface

    @property
    def state(self) -> BackendState:
        return self._state

    @property
    def closed(self) -> bool:
        return self._state.ended

    @property
    def send_timeout(self) -> float:
        return self._settings.read_timeout

    def _set_state(self, new: BackendState) -> None:
        old = self._state
        if not new.bit & old.allowed:  # check_transition, inlined: the per-request path
            check_transition(old, new)
        self._state = new

    # -- asyncio side ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self._preface:  # before any request byte (the PROXY header)
            transport.write(self._preface)  # type: ignore[attr-defined]
            self._preface = b""

    def get_buffer(self, sizehint: int) -> memoryview:
        response = self._response
        if response is not None and self._state is S.READING_BODY:
            room = response.room()
            if room < READ_SIZE:
                return _READ_BUFFER[:max(room, MIN_READ)]
        return _READ_BUFFER

    def buffer_updated(self, nbytes: int) -> None:
        state = self._state
        if state is S.READING_BODY or state is S.AWAITING_HEAD or state is S.SENDING:
            self._since = self.loop.time()
            self._reader.feed(_READ_BUFFER[:nbytes])
        elif state is S.TUNNELLING:
            data = bytes(_READ_BUFFER[:nbytes])
            if self._tunnel_client is not None:
                self._tunnel_client.tunnel_write(data)
            else:
                self._leftover += data  # the tunnel is about to start
        elif state is S.IDLE:
            self.close()  # bytes while no request is out: the backend broke HTTP
        elif state is S.COMPLETE:
            self._reader.keep_alive = False  # bytes past the response: not reused

    def eof_received(self) -> bool:
        state = self._state
        if state is S.TUNNELLING:
            if self._tunnel_client is not None:
                self._tunnel_client.tunnel_closed()
        elif state.in_exchange:
            self._backend_closed()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.flow.lost()
        state = self._state
        if state.in_exchange:
            self._backend_closed()
        client, self._tunnel_client = self._tunnel_client, None
        if not self._state.ended:
            self._set_state(S.CLOSED)
        self._shut()
        self.transport = None
        if client is not None:
            client.tunnel_closed()

    def _backend_closed(self) -> None:
        if self._state is S.READING_BODY and self._reader.eof():
            return  # the body was delimited by the close
        answered = self._state is S.READING_BODY
        retryable = self.reused and not self._reader.received
        what = "in the middle of the response" if answered else "before answering"
        self._fail(BackendError(FailureKind.CLOSED, f"the backend closed the connection {what}",
                                retryable))

    def pause_writing(self) -> None:
        self.flow.pause()
        if self._tunnel_client is not None:
            self._tunnel_client.pause_input(self)

    def resume_writing(self) -> None:
        self.flow.resume()
        if self._tunnel_client is not None:
            self._tunnel_client.resume_input(self)

    # -- what the response reader reports -------------------------------------------------
    def head_parsed(self, head: ResponseHead) -> None:
        response = BackendResponse(self, head, self._settings.body_buffer)
        self._response = response
        if head.status == 101:
            self._set_state(S.TUNNELLING)
        else:
            self._set_state(S.READING_BODY)
            self._arm(self._since + self._settings.read_timeout)
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    def body_parsed(self, data: bytes) -> None:
        assert self._response is not None
        self._response.feed(data)

    def message_parsed(self, trailers: Fields | None) -> None:
        assert self._response is not None
        self._set_state(S.COMPLETE)
        self._response.finish(trailers)

    def reader_failed(self, error: BackendError) -> None:
        self._fail(error)

    def switched(self, leftover: bytes) -> None:
        self._leftover = leftover

    # -- what the response buffer asks ------------------------------------------------------
    def pause_body(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_body(self) -> None:
        if self.transport is not None and not self.closed:
            self._since = self.loop.time()  # the read timeout counts from here again
            self.transport.resume_reading()

    # -- the exchange -----------------------------------------------------------------------
    async def exchange(self, request: BackendRequest) -> BackendResponse:
        """Send a request; returns once the response head has arrived. Raises BackendError;
        cancelled (the client left), it closes the connection, which tells the backend to
        stop working."""
        assert self.transport is not None
        self._set_state(S.SENDING if request.body is not None else S.AWAITING_HEAD)
        self._reader.start(request.head_only, request.upgrade)
        waiter = self.loop.create_future()
        self._head_waiter = waiter
        if request.body is None:
            self.transport.write(request.head)
            self._since = self.loop.time()
            self._arm(self._since + self._settings.read_timeout)
        else:
            self._sender = self.loop.create_task(send_request(self, request))
            self._sender.add_done_callback(retrieve)
        try:
            return await waiter
        except BaseException:
            self.close()
            raise
        finally:
            self._head_waiter = None
            del waiter  # the raised error's traceback keeps this frame: not the future too

    # What the request sender reports.
    def request_sent(self) -> None:
        self._sender = None
        if self._state is S.SENDING:
            self._set_state(S.AWAITING_HEAD)
            # Like nginx's proxy_read_timeout: counted from the end of the send.
            self._since = self.loop.time()
            self._arm(self._since + self._settings.read_timeout)

    def body_failed(self, exc: BaseException) -> None:
        self._fail(BackendError(FailureKind.CLIENT_BODY, f"the client's request body failed "
                                f"({exc})", cause=exc))

    def send_failed(self, timed_out: bool) -> None:
        if timed_out:
            self._fail(BackendError(FailureKind.SEND_TIMEOUT, "the backend stopped reading "
                                    "the request body"))
        else:
            self._fail(BackendError(FailureKind.CLOSED, "the backend closed the connection "
                                    "while the request body was being sent"))

    def _fail(self, error: BackendError) -> None:
        if self._state.ended or self._state is S.COMPLETE:
            return
        self._set_state(S.FAILED)
        self._wake_with(error)
        self._shut()

    def _wake_with(self, error: BackendError) -> None:
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error.copy())
        if self._response is not None:
            self._response.fail(error)

    def release(self, response: BackendResponse) -> None:
        """The caller is done with `response`: pool the connection or close it."""
        if response is not self._response:
            return
        if not (self._state is S.COMPLETE and self._reader.keep_alive and self._sender is None
                and response.drained):
            self.close()
            return
        self._response = None
        self._set_state(S.IDLE)
        self._pool.release(self)

    async def start_tunnel(self, client: TunnelClient) -> tuple[int, int]:
        self._tunnel_client = client
        leftover, self._leftover = self._leftover, b""
        return await client.tunnel(self, leftover, self._settings.read_timeout)

    # What the client side of a tunnel calls (`TunnelPeer`).
    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    # -- the pool -----------------------------------------------------------------------------
    def went_idle(self, idle_timeout: float) -> None:
        self._since = self.loop.time()
        self._arm(self._since + idle_timeout)

    def take(self) -> None:
        self.reused = True

    # -- the timer ----------------------------------------------------------------------------
    def _arm(self, when: float) -> None:
        timer = self._timer
        if timer is not None:
            if timer.when() <= when:
                return  # it fires first and moves itself on
            timer.cancel()
        self._timer = self.loop.call_at(when, self._timer_due)

    def _timer_due(self) -> None:
        self._timer = None
        state = self._state
        now = self.loop.time()
        if state is S.IDLE:
            due = self._since + self._pool.idle_timeout
            if now >= due:
                self.close()
                return
        elif state is S.AWAITING_HEAD or state is S.READING_BODY:
            if self._response is not None and self._response.paused:
                # We stopped reading because the client is slow to take the body: not the
                # backend's silence (nginx stops its read timer then too).
                self._since = now
            due = self._since + self._settings.read_timeout
            if now >= due:
                what = "answer" if state is S.AWAITING_HEAD else "send the rest of its response"
                self._fail(BackendError(FailureKind.READ_TIMEOUT,
                                        f"the backend did not {what} in time"))
                return
        else:
            return  # nothing to time: the timer lapses
        self._timer = self.loop.call_at(due, self._timer_due)

    # -- closing ------------------------------------------------------------------------------
    def close(self) -> None:
        state = self._state
        if state.ended:
            return
        self._set_state(S.CLOSED)
        if state.in_exchange:
            self._wake_with(BackendError(FailureKind.CLOSED, "the backend connection was "
                                         "closed before the response was whole"))
        self._shut()

    def _shut(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        sender, self._sender = self._sender, None
        if sender is not None and sender is not asyncio.current_task():
            sender.cancel()
        self.flow.lost()
        self._pool.forget(self)
        # No cycles left to wait for a full GC: the reader lets go of its parser and of us,
        # we of the response (its reader keeps what it needs).
        self._reader.close()
        self._response = None
        if self.transport is not None:
            self.transport.close()
