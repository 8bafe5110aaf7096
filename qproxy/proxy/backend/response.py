"""A backend response as the handler sees it: its head (status, fields, framing), its body
through a bounded buffer with back-pressure on the backend, and its trailers once whole.

The buffer is nginx's `proxy_buffers`: past `limit` bytes waiting for the client, reading from
the backend pauses, so a slow client holds at most that much of a download in the worker.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import re
from typing import TYPE_CHECKING, NamedTuple, Protocol

from multidict import CIMultiDict

from .errors import BackendError, FailureKind

if TYPE_CHECKING:
    from .connection import BackendConnection

Fields = list[tuple[bytes, bytes]]

# RFC 9112 7: transfer-coding = token *( OWS ";" OWS token "=" ( token / quoted-string ) ).
_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
# RFC 9112 4: reason-phrase = 1*( HTAB / SP / VCHAR / obs-text ); llhttp lets other bytes by.
_REASON = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
_CODING = re.compile(rb"%s(?:[ \t]*;[ \t]*%s=(?:%s|\"[^\"\\]*\"))*" % (_TOKEN, _TOKEN, _TOKEN))


class Framing(enum.Enum):
    """How the end of a response body is found (RFC 9112 section 6.3)."""

    NONE = "none"  # no body: a HEAD answer, 1xx, 204, 304
    LENGTH = "length"  # Content-Length
    CHUNKED = "chunked"  # chunked is the final transfer coding
    CLOSE = "close"  # read until the backend closes


class ResponseHead(NamedTuple):  # a NamedTuple: a frozen dataclass's __init__ costs ~2 us
    status: int
    reason: str
    fields: Fields  # as received: the client's head is made from these bytes
    framing: Framing
    length: int | None = None  # with Framing.LENGTH
    # Transfer codings applied besides chunked (`gzip` of `Transfer-Encoding: gzip, chunked`,
    # or of a close-delimited `Transfer-Encoding: gzip`): the body is relayed still coded, so
    # the client must be told them.
    codings: tuple[bytes, ...] = ()
    # A bodiless answer (HEAD, 204, 304) whose fields announce a body anyway: a backend may
    # send that body regardless (aiohttp does after HEAD), so its connection is not reused.
    announces_body: bool = False


def response_head(status: int, reason: bytes, fields: Fields, head_only: bool) -> ResponseHead:
    """The framing of a response from its fields, as llhttp applies it. Raises BackendError
    for a coding list a proxy cannot relay (chunked applied, then something else)."""
    length: int | None = None
    codings: list[bytes] = []
    for name, value in fields:
        size = len(name)  # most names are neither: their length says so without lower()
        if size == 14 and name.lower() == b"content-length":
            length = int(value.strip())  # llhttp has checked the digits and duplicates
        elif size == 17 and name.lower() == b"transfer-encoding":
            codings += (c.strip().lower() for c in value.split(b",") if c.strip())
    # A reason with bytes a client may choke on is dropped (it carries no meaning).
    text = reason.decode("latin-1") if _REASON.fullmatch(reason) else ""
    if head_only or status in (204, 304) or status < 200:
        return ResponseHead(status, text, fields, Framing.NONE,
                            announces_body=bool(codings) or bool(length))
    if codings:
        if not all(_CODING.fullmatch(coding) for coding in codings):
            raise BackendError(FailureKind.MALFORMED, "the backend sent a transfer coding that "
                               "is not a token")
        if b"chunked" in codings[:-1]:
            raise BackendError(FailureKind.MALFORMED, "the backend applied a transfer coding "
                               "after chunked")
        if codings[-1] == b"chunked":
            return ResponseHead(status, text, fields, Framing.CHUNKED, codings=tuple(codings[:-1]))
        return ResponseHead(status, text, fields, Framing.CLOSE, codings=tuple(codings))
    if length is not None:
        return ResponseHead(status, text, fields, Framing.LENGTH, length)
    return ResponseHead(status, text, fields, Framing.CLOSE)


class TunnelClient(Protocol):
    """The client side of a tunnel (the responder)."""

    async def tunnel(self, peer: "BackendConnection", leftover: bytes, idle_timeout: float
                     ) -> tuple[int, int]: ...
    def tunnel_write(self, data: bytes) -> None: ...
    def tunnel_closed(self) -> None: ...
    def pause_input(self, reason: object) -> None: ...
    def resume_input(self, reason: object) -> None: ...


class BackendResponse:
    """One response. The connection feeds it (`feed`, `finish`, `fail`); the handler reads it
    (`whole_body`, `wait_for_body`, `read`, `trailers`), then `release`s the connection."""

    __slots__ = ("_conn", "head", "_chunks", "_size", "_limit", "paused", "_waiter",
                 "_outcome", "trailers", "_headers")

    def __init__(self, conn: "BackendConnection", head: ResponseHead, limit: int) -> None:
        self._conn = conn
        self.head = head
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._limit = limit
        self.paused = False  # reading from the backend stopped: the buffer is full
        self._waiter: asyncio.Future[None] | None = None
        # None while the body arrives; True once whole; the BackendError that cut it.
        self._outcome: bool | BackendError | None = None
        self.trailers: Fields | None = None
        self._headers: CIMultiDict[str] | None = None

    # -- the head ----------------------------------------------------------------------
    @property
    def status(self) -> int:
        return self.head.status

    @property
    def reason(self) -> str:
        return self.head.reason

    @property
    def fields(self) -> Fields:
        return self.head.fields

    @property
    def headers(self) -> CIMultiDict[str]:
        if self._headers is None:
            self._headers = CIMultiDict(
                (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
                for name, value in self.head.fields)
        return self._headers

    # -- what the connection feeds -------------------------------------------------------
    def room(self) -> int:
        return self._limit - self._size

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size >= self._limit and not self.paused:
            self.paused = True
            self._conn.pause_body()
        self._wake()

    def finish(self, trailers: Fields | None) -> None:
        if self._outcome is None:
            self._outcome = True
            self.trailers = trailers
            self._wake()

    def fail(self, error: BackendError) -> None:
        if self._outcome is None:
            self._outcome = error
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- what the handler reads ------------------------------------------------------------
    @property
    def complete(self) -> bool:
        return self._outcome is True

    @property
    def drained(self) -> bool:
        return not self._chunks

    def whole_body(self) -> bytes | None:
        """The entire body if it has already arrived (a small response usually comes with
        its head; it is at most the buffer's size), else None."""
        if self._outcome is not True:
            return None
        chunks = self._chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._size = 0
        return data

    async def wait_for_body(self) -> None:
        """Until the first body bytes or the end have arrived (nginx's postpone_output: the
        head then leaves with them). Bounded by the backend read timeout, which fails the
        response; raises its BackendError."""
        while not self._chunks and self._outcome is None:
            await self._wait()
        if isinstance(self._outcome, BackendError) and not self._chunks:
            raise self._outcome.copy()

    async def read(self, most: int) -> bytes:
        """At most `most` bytes of the body; b"" at its end. Raises the BackendError that cut
        it, once the bytes before the cut have been read."""
        while True:
            chunks = self._chunks
            if chunks:
                first = chunks[0]
                if len(first) <= most:
                    chunks.popleft()
                else:
                    chunks[0] = first[most:]
                    first = first[:most]
                self._size -= len(first)
                if self.paused and self._size <= self._limit // 2:
                    self.paused = False
                    self._conn.resume_body()
                return first
            outcome = self._outcome
            if outcome is True:
                return b""
            if outcome is not None:
                raise outcome.copy()
            await self._wait()

    async def _wait(self) -> None:
        self._waiter = self._conn.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    # -- the connection ---------------------------------------------------------------------
    @property
    def upgraded(self) -> bool:
        """A 101 to an upgrade request: the connection now carries the new protocol."""
        return self.head.status == 101

    async def tunnel(self, client: TunnelClient) -> tuple[int, int]:
        """Relay bytes between the client and the backend until one of them closes, or the
        tunnel has been silent for the read timeout."""
        return await self._conn.start_tunnel(client)

    def release(self) -> None:
        """Back to the pool if the exchange ended cleanly and its body was read, else closed."""
        self._conn.release(self)
