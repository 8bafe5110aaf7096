"""Why an exchange with a backend failed, as data: a kind with the status the client gets
(h11's `error_status_hint`) and whether the backend server is to blame (health marking)."""

from __future__ import annotations

import enum


class FailureKind(enum.Enum):
    # value: (metrics label, status for the client, blames the backend server)
    CONNECT = ("connect", 502, True)
    CONNECT_TIMEOUT = ("connect_timeout", 504, True)
    SEND_TIMEOUT = ("send_timeout", 504, True)  # it stopped reading the request body
    READ_TIMEOUT = ("read_timeout", 504, True)
    CLOSED = ("closed", 502, True)  # it closed before its response was whole
    MALFORMED = ("malformed", 502, True)  # not HTTP/1.1 as RFC 9112 frames it
    HEAD_TOO_BIG = ("header_too_big", 502, True)  # nginx: "upstream sent too big header"
    # Well framed but not an answer we can relay (a status outside 100-599, a 101 nobody asked
    # for): the application is at fault, not the server, which stays in rotation.
    INVALID_ANSWER = ("invalid_answer", 502, False)
    CLIENT_BODY = ("client_body", 400, False)  # the client's streamed body failed
    CLIENT_GONE = ("client_gone", 499, False)

    def __init__(self, label: str, status: int, blames_backend: bool) -> None:
        self.label = label
        self.status = status
        self.blames_backend = blames_backend


class BackendError(Exception):
    """The exchange with a backend failed.

    `retryable`: nothing of the request can have been acted on (a kept-alive connection the
    backend had closed before answering a byte), so it may be sent again on a new connection.
    `cause`: for CLIENT_BODY, what went wrong with the client's body (a `BadRequest` carries
    the status to answer). `server`: the backend server's address, once known."""

    def __init__(self, kind: FailureKind, message: str, retryable: bool = False,
                 cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.retryable = retryable
        self.cause = cause
        self.server: str | None = None

    def copy(self) -> "BackendError":
        """A new one to raise: an error that is kept (in a response, in a future) and raised
        gets the raising frames in its traceback, and they hold what keeps it: a reference
        cycle that only a full garbage collection frees, with the whole connection in it."""
        error = BackendError(self.kind, str(self), self.retryable, self.cause)
        error.server = self.server
        return error

    @property
    def status(self) -> int:
        """What the client is answered (if it can still be answered)."""
        if self.kind is FailureKind.CLIENT_BODY:
            status = getattr(self.cause, "status", None)
            if isinstance(status, int):
                return status
            return FailureKind.CLIENT_GONE.status
        return self.kind.status
