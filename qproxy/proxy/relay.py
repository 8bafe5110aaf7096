"""A backend response relayed to the client: whole in one write when it can be, else streamed
in bounded pieces (so a slow client holds no large object), or a tunnel after a 101."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from .backend import BackendError, BackendResponse, FailureKind, Framing
from .headers import DEFAULT_RESPONSE_HEADERS, ResponseHeaders, downstream_response_fields
from .http import HttpProtocol, HttpRequest

if TYPE_CHECKING:
    from .handler import Exchange

CLIENT_CLOSED_REQUEST = 499  # nginx's status for "the client went away first"
# What one write to the client carries at most: one TLS record's worth. Larger writes make
# large objects (here, in the TLS buffers and the socket's queue) that a slow client pins.
PIECE = 16 * 1024


async def relay(request: HttpRequest, responder: HttpProtocol, response: BackendResponse,
                exchange: "Exchange", cut: Callable[[BackendError], None],
                headers: ResponseHeaders = DEFAULT_RESPONSE_HEADERS) -> None:
    """Raises BackendError only while nothing has been sent to the client (it can still be
    answered 502/504); a failure after that cuts the client's connection, as nginx does, and
    is reported to `cut`."""
    try:
        await _relay(request, responder, response, exchange, cut, headers)
    finally:
        response.release()


async def _relay(request: HttpRequest, responder: HttpProtocol, response: BackendResponse,
                 exchange: "Exchange", cut: Callable[[BackendError], None],
                 headers: ResponseHeaders) -> None:
    head = response.head
    fields = headers.apply(head.status, downstream_response_fields(head.fields))
    if response.upgraded:
        fields.append((b"Connection", b"upgrade"))
        fields.append((b"Upgrade", response.headers.get("Upgrade", "websocket").encode(
            "utf-8", "surrogateescape")))
        exchange.status = 101
        responder.send_response(request, 101, head.reason or "Switching Protocols", fields, b"")
        exchange.bytes_in, exchange.bytes_out = await response.tunnel(responder)
        return
    if head.framing is Framing.NONE:
        exchange.status = head.status
        responder.send_response(request, head.status, head.reason, fields, b"")
        return
    if head.codings:
        # Relayed still coded (RFC 9112 6.1: codings besides chunked are end to end here):
        # the client is told them, then chunked is applied over them.
        if request.version == "1.0":
            raise BackendError(FailureKind.MALFORMED, "the backend's response has a transfer "
                               "coding an HTTP/1.0 client cannot be sent")
        fields.append((b"Transfer-Encoding", b", ".join(head.codings)))
    else:
        # nginx's postpone_output: a head that came alone waits for the first body bytes (or
        # the end), so that a small response leaves in one write, one TLS record.
        if not response.complete:
            await response.wait_for_body()
        if not (response.trailers and request.trailers):
            whole = response.whole_body()
            if whole is not None:
                exchange.status = head.status
                sent = responder.send_response(request, head.status, head.reason, fields, whole)
                exchange.bytes_out = len(whole) if sent is None else sent
                return
    exchange.status = head.status
    responder.start_response(request, head.status, head.reason, fields,
                             head.length if head.framing is Framing.LENGTH else None)
    while True:
        try:
            piece = await response.read(PIECE)
        except BackendError as error:
            # The head is gone already: all we can do is cut the client off.
            exchange.failed(error)
            exchange.error = f"backend failed mid-response ({error})"
            cut(error)
            return  # unfinished: the client's connection is closed
        if not piece:
            break
        try:
            await responder.write_body(piece)
        except ConnectionError as exc:
            # The client went away (or stopped reading); the unfinished backend connection
            # is closed on release, which cancels the backend's work.
            exchange.status = CLIENT_CLOSED_REQUEST
            exchange.error = str(exc) or "client closed the connection"
            return
        exchange.bytes_out += len(piece)
    responder.end_response(response.trailers)
