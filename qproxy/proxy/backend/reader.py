"""Response bytes from a backend, parsed by httptools (llhttp), turned into calls on a sink:
the head, body pieces, the end with its trailers, a failure, or the switch to a tunnel.

Two things llhttp cannot be told are handled here: the response head is bounded as a whole
(llhttp holds a header line until it ends, so one endless line would grow without bound:
nginx's `proxy_buffer_size`), and a response to HEAD ends with its head whatever its fields
announce. Trailer fields are collected apart from the head's, never appended to them.
"""

from __future__ import annotations

import enum
from typing import Protocol

import httptools

from .errors import BackendError, FailureKind
from .response import Fields, Framing, ResponseHead, response_head


class ResponseSink(Protocol):
    def head_parsed(self, head: ResponseHead) -> None: ...
    def body_parsed(self, data: bytes) -> None: ...
    def message_parsed(self, trailers: Fields | None) -> None: ...
    def reader_failed(self, error: BackendError) -> None: ...
    def switched(self, leftover: bytes) -> None: ...


class Phase(enum.Enum):
    HEAD = "head"  # status line and fields (of 1xx answers too)
    BODY = "body"
    LAST_CHUNK = "last chunk"  # a chunk header with no data yet: the last chunk's trailers
    DONE = "done"


class _Gone:
    """The sink of a closed reader: whatever still reports goes nowhere."""

    def __getattr__(self, name: str):
        return lambda *args: None


class _PastResponse(Exception):
    """Bytes after the response: stop parsing them (they are never a response of their own)."""


class ResponseReader:
    __slots__ = ("_parser", "_sink", "_limit", "_head_bytes", "_reason", "_fields",
                 "_trailers", "_head_only", "_expect_upgrade", "_phase", "_framing",
                 "keep_alive", "received")

    def __init__(self, sink: ResponseSink, head_limit: int) -> None:
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self._sink = sink
        self._limit = head_limit
        self.start(head_only=False, expect_upgrade=False)

    def start(self, head_only: bool, expect_upgrade: bool) -> None:
        """A request has gone out: read its response."""
        self._head_bytes = 0
        self._reason = b""
        self._fields: Fields = []
        self._trailers: Fields = []
        self._head_only = head_only
        self._expect_upgrade = expect_upgrade
        self._phase = Phase.HEAD
        self._framing = Framing.NONE
        self.keep_alive = False
        self.received = False  # any byte of this response: a failure then is not retryable

    def close(self) -> None:
        """The connection is gone: let go of the parser (it holds this reader's methods) and
        the sink, so that refcounting frees them at once rather than a full GC, later."""
        self._parser = None
        self._sink = _Gone()

    @property
    def framing(self) -> Framing:
        return self._framing

    @property
    def in_last_chunk(self) -> bool:
        return self._phase is Phase.LAST_CHUNK

    def feed(self, data: bytes | memoryview) -> None:
        self.received = True
        if self._phase is Phase.HEAD:
            budget = self._limit - self._head_bytes
            if len(data) > budget:
                self._head_bytes = self._limit
                if not self._feed(data[:budget]):
                    return
                if self._phase is Phase.HEAD:
                    self._sink.reader_failed(BackendError(
                        FailureKind.HEAD_TOO_BIG, f"upstream sent too big header (over "
                        f"{self._limit} bytes: the upstream's max_response_head_size)"))
                    return
                data = data[budget:]
            else:
                self._head_bytes += len(data)
        self._feed(data)

    def _feed(self, data: bytes | memoryview) -> bool:
        """False once parsing has stopped (an error, a tunnel, or bytes past the response)."""
        parser = self._parser
        if parser is None:
            return False
        try:
            parser.feed_data(data)
            return True
        except httptools.HttpParserUpgrade as exc:
            offset = exc.args[0] if exc.args else len(data)
            self._sink.switched(bytes(data[offset:]))
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, BackendError):
                self._sink.reader_failed(cause)
            elif not isinstance(cause, _PastResponse):
                self._malformed(cause or exc)
        except httptools.HttpParserError as exc:
            self._malformed(exc)
        return False

    def _malformed(self, exc: BaseException) -> None:
        if self._phase is Phase.DONE:
            self.keep_alive = False  # garbage after the response: the connection is not reused
            return
        if self._phase is Phase.LAST_CHUNK:
            # The body is whole (its last chunk came); only its trailer section is broken.
            # The trailers are dropped, the response kept.
            self.keep_alive = False
            self._end(None)
            return
        self._sink.reader_failed(BackendError(
            FailureKind.MALFORMED, f"the backend sent a malformed response ({exc})"))

    def eof(self) -> bool:
        """The backend closed: True if that ends the response (a body delimited by the close,
        RFC 9112 6.3 rule 8: whatever transfer coding it has besides chunked)."""
        if self._phase is Phase.BODY and self._framing is Framing.CLOSE:
            self._end(None)
            return True
        return False

    def _end(self, trailers: Fields | None) -> None:
        if self._framing is Framing.CHUNKED and self._parser is not None:
            self._parser.set_dangerous_leniencies(lenient_chunked_length=False)
        self._phase = Phase.DONE
        self._sink.message_parsed(trailers)

    # -- httptools callbacks ------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._phase is Phase.DONE:
            self.keep_alive = False
            raise _PastResponse()

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._phase is Phase.HEAD:
            self._fields.append((name, value))
        else:
            self._trailers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert parser is not None
        status = parser.get_status_code()
        if not 100 <= status <= 599:
            # nginx: "upstream sent invalid status"; RFC 9110 15 defines 100-599 only.
            raise BackendError(FailureKind.INVALID_ANSWER,
                               f"the backend sent an invalid status {status}")
        if status < 200 and not (status == 101 and self._expect_upgrade):
            if status == 101:
                raise BackendError(FailureKind.INVALID_ANSWER,
                                   "the backend switched protocols unasked")
            # 103 Early Hints, a stray 100 Continue: informational, the real answer follows.
            self._fields, self._reason = [], b""
            return
        head = response_head(status, self._reason, self._fields, self._head_only)
        self._framing = head.framing
        self.keep_alive = parser.should_keep_alive() and not head.announces_body
        if head.framing is Framing.CHUNKED:
            # llhttp refuses a Content-Length among the trailers as if it were in the head;
            # there it means nothing (RFC 9110 6.5.1) and must not cut the response.
            parser.set_dangerous_leniencies(lenient_chunked_length=True)
        self._phase = Phase.BODY
        self._sink.head_parsed(head)
        if head.framing is Framing.NONE and status != 101:
            self._end(None)
        elif status == 101:
            self._phase = Phase.DONE

    def on_chunk_header(self) -> None:
        if self._phase is Phase.BODY:
            self._phase = Phase.LAST_CHUNK  # until data of this chunk shows it is not

    def on_body(self, body: bytes) -> None:
        phase = self._phase
        if phase is Phase.DONE:
            self.keep_alive = False  # a body after a bodiless answer
            return
        if phase is Phase.LAST_CHUNK:
            self._phase = Phase.BODY
        self._sink.body_parsed(body)

    def on_message_complete(self) -> None:
        if self._phase is Phase.HEAD or self._phase is Phase.DONE:
            return  # the end of an informational answer, or of a bodiless one already ended
        self._end(self._trailers or None)
