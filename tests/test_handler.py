"""The proxy handler in-process: a mock responder and request, the real upstream and backend
connections against a scripted asyncio server on 127.0.0.1, in the test's own loop."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

import pytest
from multidict import CIMultiDict

from qproxy.config.model import Route, UpstreamSection
from qproxy.proxy.handler import Exchange, ProxyHandler
from qproxy.proxy.http import SERVER_SHUTDOWN, BadRequest
from qproxy.proxy.upstream import Router, Upstream


class Body:
    """A request body as the HTTP layer gives it: buffered whole on request, replayed."""

    def __init__(self, chunks: list[bytes], error: BaseException | None = None) -> None:
        self._chunks = chunks
        self._error = error
        self.length: int | None = None
        self.buffered = False

    async def buffer(self) -> None:
        if self._error is not None:
            raise self._error
        self.buffered = True
        self.length = sum(map(len, self._chunks))

    def __aiter__(self):
        return self._iterate()

    async def _iterate(self):
        for chunk in self._chunks:
            yield chunk


class Request:
    def __init__(self, method: str = "GET", target: str = "/", headers: dict | None = None,
                 body: Body | None = None, version: str = "1.1", trailers: bool = False,
                 raw_path: str | None = None) -> None:
        self.method = method
        self.target = target
        self.raw_path = raw_path or target
        self.path = target.partition("?")[0]
        self.version = version
        self.headers = CIMultiDict({"Host": "localhost", **(headers or {})})
        self.keep_alive = True
        self.upgrade = False
        self.body = body
        self.remote = "127.0.0.1"
        self.transport = self
        self.trailers = trailers

    @property
    def host(self) -> str:
        return self.headers["Host"]

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class Responder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.body = b""
        self.write_gate: asyncio.Event | None = None

    def send_interim(self, head: bytes) -> None:
        self.calls.append(("interim", head))

    def send_response(self, request, status, reason, fields, body) -> int:
        self.calls.append(("send", status, list(fields), body))
        return len(body)

    def start_response(self, request, status, reason, fields, length) -> None:
        self.calls.append(("start", status, list(fields), length))

    async def write_body(self, data: bytes) -> None:
        self.calls.append(("write", len(data)))
        self.body += data
        if self.write_gate is not None:
            await self.write_gate.wait()

    def end_response(self, trailers=None) -> None:
        self.calls.append(("end", trailers))

    @property
    def kinds(self) -> list[str]:
        return [call[0] for call in self.calls]


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head, await reader.readexactly(length) if length else b""


class Rig:
    def __init__(self, script: Script, routes: tuple[Route, ...] | None = None,
                 **section: Any) -> None:
        self.script = script
        self.routes = routes or (Route(upstream="app"),)
        self.section = section
        self.logged: list[Exchange] = []
        self.states: list[tuple] = []
        self.connections = 0

    async def __aenter__(self) -> "Rig":
        async def handle(reader, writer):
            self.connections += 1
            try:
                await self.script(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        section = UpstreamSection(servers=(f"127.0.0.1:{port}",), **{
            "read_timeout": 5, "connect_timeout": 2, **self.section})
        self.upstream = Upstream("app", section, lambda *state: self.states.append(state))
        self.handler = ProxyHandler({"app": self.upstream}, Router(self.routes),
                                    lambda exchange, info: self.logged.append(exchange),
                                    lambda info: None)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.upstream.close()
        self.server.close()

    async def __call__(self, request: Request) -> Responder:
        responder = Responder()
        await self.handler(request, responder)
        return responder


def run(test: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        await asyncio.wait_for(test(), 10)
    asyncio.run(main())


def answer(data: bytes) -> Script:
    async def script(reader, writer):
        for _ in range(10):
            await read_request(reader)
            writer.write(data)
            await writer.drain()
    return script


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-App: 1\r\n\r\nok"


def test_a_whole_answer_leaves_in_one_send() -> None:
    async def test():
        async with Rig(answer(OK)) as rig:
            responder = await rig(Request())
            assert responder.kinds == ["send"]
            _, status, fields, body = responder.calls[0]
            assert (status, body) == (200, b"ok") and (b"X-App", b"1") in fields
            assert rig.logged[0].status == 200 and rig.logged[0].bytes_out == 2
    run(test)


def test_a_head_that_comes_alone_waits_for_its_body_and_leaves_in_one_send() -> None:
    # nginx's postpone_output; the example Flask backend writes head and body apart.
    async def script(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"hello")
        await writer.drain()
        await reader.read()

    async def test():
        async with Rig(script) as rig:
            responder = await rig(Request())
            assert responder.kinds == ["send"] and responder.calls[0][3] == b"hello"
    run(test)


def test_a_buffered_body_goes_with_its_length_the_normalised_target_and_no_expect() -> None:
    seen: list[bytes] = []

    async def script(reader, writer):
        head, body = await read_request(reader)
        seen.extend((head, body))
        writer.write(OK)
        await writer.drain()
        await reader.read()

    async def test():
        async with Rig(script) as rig:
            body = Body([b"hello ", b"world"])
            request = Request("POST", "/a/b?q=1", {"Transfer-Encoding": "chunked",
                                                   "Expect": "100-continue"}, body,
                              raw_path="/a/./x/../b?q=1")
            responder = await rig(request)
            assert responder.kinds == ["send"] and body.buffered
            head, sent = seen
            assert head.startswith(b"POST /a/b?q=1 HTTP/1.1\r\n")
            assert b"\r\nContent-Length: 11\r\n" in head
            assert b"transfer-encoding" not in head.lower() and b"expect" not in head.lower()
            assert sent == b"hello world" and rig.logged[0].bytes_in == 11
    run(test)


def test_a_route_without_request_buffering_streams_the_body_chunked() -> None:
    seen: list[bytes] = []

    async def script(reader, writer):
        seen.append(await reader.readuntil(b"0\r\n\r\n"))
        writer.write(OK)
        await writer.drain()
        await reader.read()

    async def test():
        routes = (Route(upstream="app", request_buffering=False),)
        async with Rig(script, routes) as rig:
            body = Body([b"abc"])
            responder = await rig(Request("POST", "/", {"Transfer-Encoding": "chunked"}, body))
            assert responder.kinds == ["send"] and not body.buffered
            assert seen[0].endswith(b"\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
            assert b"transfer-encoding: chunked" in seen[0].lower()
    run(test)


@pytest.mark.parametrize("status", [413, 408, 400])
def test_a_body_refused_while_buffering_is_answered_and_no_backend_is_involved(status) -> None:
    async def test():
        async with Rig(answer(OK)) as rig:
            request = Request("POST", "/", {"Content-Length": "10"},
                              Body([], BadRequest(status, "refused")))
            responder = await rig(request)
            assert responder.kinds == ["send"] and responder.calls[0][1] == status
            assert rig.connections == 0 and rig.logged[0].status == status
            assert rig.logged[0].error_kind is None  # not the backend's doing
    run(test)


def test_a_client_gone_while_buffering_is_a_499_with_no_answer() -> None:
    async def test():
        async with Rig(answer(OK)) as rig:
            request = Request("POST", "/", {"Content-Length": "10"},
                              Body([], ConnectionResetError("gone")))
            responder = await rig(request)
            assert responder.calls == [] and rig.connections == 0
            assert rig.logged[0].status == 499
    run(test)


CHUNKED_WITH_TRAILERS = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"2\r\nok\r\n0\r\nX-Checksum: 1\r\nSet-Cookie: a=b\r\n\r\n")


def test_trailers_go_to_end_response_for_a_client_that_takes_them() -> None:
    async def test():
        async with Rig(answer(CHUNKED_WITH_TRAILERS)) as rig:
            responder = await rig(Request(trailers=True))
            assert responder.kinds == ["start", "write", "end"]
            assert responder.calls[0][3] is None  # no length: chunked
            assert all(name.lower() != b"set-cookie" for name, _ in responder.calls[0][2])
            assert responder.calls[-1] == ("end", [(b"X-Checksum", b"1"),
                                                   (b"Set-Cookie", b"a=b")])
            assert responder.body == b"ok"
    run(test)


def test_trailers_are_dropped_for_a_client_that_does_not_take_them() -> None:
    async def test():
        async with Rig(answer(CHUNKED_WITH_TRAILERS)) as rig:
            responder = await rig(Request())
            assert responder.kinds == ["send"]
            assert all(name.lower() != b"set-cookie" for name, _ in responder.calls[0][2])
    run(test)


def test_a_head_answer_keeps_its_length_and_sends_no_body() -> None:
    async def test():
        async with Rig(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n")) as rig:
            responder = await rig(Request("HEAD"))
            assert responder.kinds == ["send"]
            _, status, fields, body = responder.calls[0]
            assert (status, body) == (200, b"") and (b"Content-Length", b"99") in fields
    run(test)


def test_a_large_body_is_written_in_bounded_pieces() -> None:
    big = bytes(range(256)) * 4096  # 1 MiB

    async def test():
        async with Rig(answer(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                              % (len(big), big))) as rig:
            responder = await rig(Request())
            assert responder.kinds[0] == "start" and responder.kinds[-1] == "end"
            assert responder.body == big
            assert max(call[1] for call in responder.calls if call[0] == "write") <= 16384
    run(test)


@pytest.mark.parametrize("script_answer,status,kind", [
    (b"", 502, "closed"),
    (b"garbage\r\n\r\n", 502, "malformed"),
    (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 20000 + b"\r\n\r\n", 502, "header_too_big"),
])
def test_backend_failures_are_answered_with_their_status_and_labelled_by_kind(
        script_answer, status, kind) -> None:
    async def script(reader, writer):
        await read_request(reader)
        writer.write(script_answer)
        await writer.drain()

    async def test():
        async with Rig(script) as rig:
            responder = await rig(Request())
            assert responder.kinds == ["send"] and responder.calls[0][1] == status
            assert rig.logged[0].error_kind == kind
            assert [state[2:] for state in rig.states] == [(False, rig.logged[0].error)]
    run(test)


def test_a_backend_that_does_not_answer_in_time_is_a_504() -> None:
    async def script(reader, writer):
        await read_request(reader)
        await asyncio.sleep(1)

    async def test():
        async with Rig(script, read_timeout=0.05) as rig:
            responder = await rig(Request())
            assert responder.calls[0][1] == 504 and rig.logged[0].error_kind == "read_timeout"
    run(test)


def test_a_backend_cut_mid_body_cuts_the_client_and_takes_the_server_out() -> None:
    async def script(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 20000)
        await writer.drain()

    async def test():
        async with Rig(script) as rig:
            responder = await rig(Request())
            assert responder.kinds[0] == "start" and "end" not in responder.kinds
            assert rig.logged[0].status == 200 and "mid-response" in rig.logged[0].error
            assert rig.logged[0].error_kind == "closed"
            assert rig.states[-1][2] is False
    run(test)


@pytest.mark.parametrize("message,status,error", [
    (SERVER_SHUTDOWN, 200, "cut by the server"),
    (None, 499, "client closed"),
])
def test_a_download_cut_by_the_shutdown_drain_is_not_logged_as_the_client_leaving(
        message, status, error) -> None:
    async def script(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 50000)
        await writer.drain()
        await asyncio.sleep(5)

    async def test():
        async with Rig(script) as rig:
            responder = Responder()
            responder.write_gate = asyncio.Event()  # a client that stopped reading
            task = asyncio.get_running_loop().create_task(rig.handler(Request(), responder))
            while "write" not in responder.kinds:
                await asyncio.sleep(0.01)
            task.cancel(message)
            with pytest.raises(asyncio.CancelledError):
                await task
            assert rig.logged[0].status == status and error in rig.logged[0].error
    run(test)


def test_no_route_is_a_404() -> None:
    async def test():
        routes = (Route(path_prefix="/api/", upstream="app"),)
        async with Rig(answer(OK), routes) as rig:
            responder = await rig(Request(target="/other"))
            assert responder.calls[0][1] == 404 and rig.connections == 0
    run(test)


def test_a_stale_kept_alive_connection_is_replaced_even_for_a_buffered_body() -> None:
    # The backend closes its idle connection just as the next request goes out: nothing of
    # it was acted on, and a buffered body can be sent again.
    async def script(reader, writer):
        await read_request(reader)
        writer.write(OK)
        await writer.drain()
        await read_request(reader)  # the next request: dropped unanswered

    async def test():
        async with Rig(script) as rig:
            assert (await rig(Request())).calls[0][1] == 200
            responder = await rig(Request("POST", "/", {"Content-Length": "3"}, Body([b"abc"])))
            assert responder.calls[0][1] == 200 and rig.connections == 2
            assert rig.states == []  # not the server's failure
    run(test)


@pytest.mark.parametrize("always,hsts_sent", [(True, True), (False, False)])
def test_a_routes_refusal_carries_its_headers_when_they_go_on_every_status(
        always, hsts_sent) -> None:
    """README: add_headers_always adds `add_headers` and `hsts` "on every status, errors
    included"; a 403 or 429 decided by the route's own access block left them out."""
    from qproxy.proxy.access import access_for

    async def test():
        route = Route(upstream="app", access={"rules": [{"deny": "all"}]}, hsts={},
                      add_headers={"X-Frame-Options": "DENY"}, add_headers_always=always)
        async with Rig(answer(OK), (route,)) as rig:
            handler = ProxyHandler({"app": rig.upstream}, Router((route,)),
                                   lambda exchange, info: None, lambda info: None,
                                   access=access_for(None, (route,), 1, 0))
            responder = Responder()
            await handler(Request(), responder)
            [(kind, status, fields, _)] = responder.calls
            assert (kind, status, rig.connections) == ("send", 403, 0)
            assert ((b"Strict-Transport-Security", b"max-age=31536000") in fields) is hsts_sent
            assert ((b"X-Frame-Options", b"DENY") in fields) is hsts_sent
            assert (b"Content-Type", b"text/plain") in fields
    run(test)
