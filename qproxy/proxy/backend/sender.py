"""Sending a request to a backend: the head, then its body (Content-Length or chunked), waiting
while the backend does not read (nginx's proxy_send_timeout)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import AsyncIterator, Protocol

_CRLF = b"\r\n"
_LAST_CHUNK = b"0\r\n\r\n"


@dataclass(slots=True)
class BackendRequest:
    head: bytes
    body: AsyncIterator[bytes] | None = None
    chunked: bool = False  # frame the body in chunks (its length is not known)
    head_only: bool = False  # HEAD: the response has no body, whatever its fields say
    upgrade: bool = False  # a 101 makes the connection a tunnel
    # The body can be iterated again from its start (buffered whole): a request sent on a
    # kept-alive connection the backend had closed may then be sent again.
    replayable: bool = False
    # server.send_proxy_protocol: the PROXY header a new connection starts with, and the
    # client connection it describes; a connection carrying one serves that client only.
    preface: bytes = b""
    client: object | None = None


class WriteFlow:
    """Whether the backend's transport takes more writes (its pause/resume_writing)."""

    __slots__ = ("paused", "_waiter")

    def __init__(self) -> None:
        self.paused = False
        self._waiter: asyncio.Future[None] | None = None

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self._wake()

    def lost(self) -> None:
        """The connection is gone: a waiting writer wakes and finds it closed."""
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def drain(self, timeout: float) -> bool:
        """False if the backend took nothing for `timeout` seconds."""
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                await self._waiter
            return True
        except TimeoutError:
            return False
        finally:
            self._waiter = None


class SendTarget(Protocol):
    """What the sender needs of its connection."""

    transport: asyncio.Transport | None
    flow: WriteFlow

    @property
    def closed(self) -> bool: ...
    @property
    def send_timeout(self) -> float: ...
    def request_sent(self) -> None: ...
    def body_failed(self, exc: BaseException) -> None: ...
    def send_failed(self, timed_out: bool) -> None: ...


async def send_request(conn: SendTarget, request: BackendRequest) -> None:
    """Write the request with its body; tell `conn` how it went (never raises but for
    cancellation: the caller closes the connection then, a half-sent body makes it useless)."""
    transport = conn.transport
    assert transport is not None and request.body is not None
    head = request.head
    if not request.replayable:
        transport.write(head)  # the client may be slow to send its body: the head goes now
        head = b""
    chunks = request.body.__aiter__()
    try:
        while True:
            try:
                chunk = await chunks.__anext__()
            except StopAsyncIteration:
                break
            except (asyncio.CancelledError, GeneratorExit):
                raise
            except Exception as exc:  # the client's body broke off or was malformed
                conn.body_failed(exc)
                return
            if conn.closed:
                return
            if not chunk:
                continue
            parts = (b"%x\r\n" % len(chunk), chunk, _CRLF) if request.chunked else (chunk,)
            if head:
                parts, head = (head, *parts), b""
            transport.writelines(parts)
            if conn.flow.paused and not await conn.flow.drain(conn.send_timeout):
                conn.send_failed(timed_out=True)
                return
        ending = _LAST_CHUNK if request.chunked else b""
        if head or ending:
            transport.write(head + ending)
        if not conn.closed:
            conn.request_sent()
    except (ConnectionError, RuntimeError):  # written to a transport already closed
        conn.send_failed(timed_out=False)


def retrieve(task: asyncio.Task[None]) -> None:
    """A done callback: keeps asyncio from logging a sender's failure as never retrieved
    (the failure is reported through the exchange)."""
    if not task.cancelled():
        task.exception()
