"""TEST-ONLY stand-in for the HTTP layer's side of the handler contract, for the backend
branch's tests until the HTTP branch is merged; once `qproxy.proxy.http` has these, every
step here is a no-op (delete the file then).

The contract: `http.SERVER_SHUTDOWN`; `HttpRequest.target` (the forwarded target) and
`.trailers` (TE: trailers); `RequestBody.buffer()` and `.length` (the body read whole, replayed
on each iteration; 100 Continue sent when the body is first read); the responder's
`end_response(trailers=None)`.
"""

from __future__ import annotations

import inspect

from qproxy.proxy import http

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def _install() -> None:
    if not hasattr(http, "SERVER_SHUTDOWN"):
        http.SERVER_SHUTDOWN = "server shutdown"
    request = http.HttpRequest
    if not hasattr(request, "target"):
        request.target = property(lambda self: self.raw_path)
    if not hasattr(request, "trailers"):
        request.trailers = property(
            lambda self: "trailers" in self.headers.get("TE", "").lower())
    if not hasattr(http.RequestBody, "buffer"):
        http.RequestBody = _BufferedBody
    end = http.HttpProtocol.end_response
    if "trailers" not in inspect.signature(end).parameters:
        def end_response(self, trailers=None, _end=end):
            _end(self)
        http.HttpProtocol.end_response = end_response


class _BufferedBody(http.RequestBody):
    __slots__ = ("_whole", "length", "_invited")

    def __init__(self, protocol) -> None:
        super().__init__(protocol)
        self._whole: list[bytes] | None = None
        self.length: int | None = None
        self._invited = False

    def _invite(self) -> None:
        if self._invited:
            return
        self._invited = True
        active = getattr(self._protocol, "_active", None)
        if (active is not None and active.version != "1.0" and self.received == 0
                and active.headers.get("Expect", "").lower() == "100-continue"):
            self._protocol.send_interim(_CONTINUE)

    async def buffer(self) -> None:
        if self._whole is not None:
            return
        self._invite()
        whole = []
        while True:
            try:
                whole.append(await super().__anext__())
            except StopAsyncIteration:
                break
        self._whole = whole
        self.length = sum(len(c) for c in whole)

    def __aiter__(self):
        if self._whole is not None:
            return _Replay(self._whole)
        return self

    async def __anext__(self) -> bytes:
        self._invite()
        return await super().__anext__()


class _Replay:
    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = iter(chunks)

    def __aiter__(self):
        return self

    async def __anext__(self) -> bytes:
        try:
            return next(self._chunks)
        except StopIteration:
            raise StopAsyncIteration from None


_install()
