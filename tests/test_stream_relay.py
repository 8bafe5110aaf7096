"""The tcp-mode relay (proxy/stream.py) in-process, against mock transports: half-close each
way, back-pressure each way, idle timeout, upstream failures, the drain. Milliseconds each."""

from __future__ import annotations

import asyncio

import pytest

from qproxy.proxy.stream import (_TRANSITIONS, End, RelayState, StreamConnectError, StreamRecord,
                                 StreamRelay, UpstreamSide)


class MockTransport(asyncio.Transport):
    def __init__(self, peer=("127.0.0.1", 50000)) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.eof = False
        self.closed = False
        self.aborted = False
        self.cut = False
        self.reading = True
        self.peer = peer

    def get_extra_info(self, name, default=None):
        return {"peername": self.peer, "tls": "tls-info"}.get(name, default)

    def write(self, data) -> None:
        assert not self.eof and not self.closed, "written after its end"
        self.written.append(bytes(data))

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = self.closed = True

    def response_cut(self) -> None:
        self.cut = self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        pass

    @property
    def data(self) -> bytes:
        return b"".join(self.written)


class Session:
    """A relay between two mock transports; `connect` can be told to fail or to wait."""

    def __init__(self, idle: float = 60.0, fail: StreamConnectError | None = None,
                 preamble=None) -> None:
        self.client = MockTransport()
        self.upstream = MockTransport()
        self.side: UpstreamSide | None = None
        self.records: list[StreamRecord] = []
        self.fail = fail
        self.gate = asyncio.Event()
        self.gate.set()

        async def connect(factory):
            await self.gate.wait()
            if self.fail is not None:
                raise self.fail
            self.side = factory("127.0.0.1:1883")
            self.side.connection_made(self.upstream)
            return self.upstream, "127.0.0.1:1883"

        self.relay = StreamRelay(connect, idle, lambda relay, record: self.records.append(record),
                                 preamble)

    async def open(self) -> "Session":
        self.relay.connection_made(self.client)
        for _ in range(5):
            await asyncio.sleep(0)
        return self

    @property
    def record(self) -> StreamRecord:
        [record] = self.records
        return record


def run(coro) -> None:
    asyncio.run(asyncio.wait_for(coro, 5))


def test_transition_table_refuses_anything_not_listed():
    assert _TRANSITIONS[RelayState.CLOSED] == set()
    relay = StreamRelay(None, 1.0, lambda *a: None)  # type: ignore[arg-type]
    relay.state = RelayState.CLIENT_ENDED
    with pytest.raises(RuntimeError):
        relay._set(RelayState.UPSTREAM_ENDED)


def test_bytes_flow_both_ways_and_are_counted():
    async def main():
        s = await Session().open()
        assert s.relay.state is RelayState.OPEN
        s.relay.data_received(b"ping")
        assert s.upstream.data == b"ping"
        s.side.data_received(b"pong!")
        assert s.client.data == b"pong!"
        assert (s.relay.bytes_up, s.relay.bytes_down) == (4, 5)
    run(main())


def test_client_bytes_before_the_upstream_connects_wait_and_pause_the_client():
    async def main():
        s = Session()
        s.gate.clear()
        await s.open()
        s.relay.data_received(b"CONNECT")
        assert s.relay.state is RelayState.CONNECTING and not s.client.reading
        s.gate.set()
        for _ in range(5):
            await asyncio.sleep(0)
        assert s.upstream.data == b"CONNECT" and s.client.reading
    run(main())


def test_client_half_close_shuts_the_upstream_write_side_and_the_answer_still_comes():
    async def main():
        s = await Session().open()
        s.relay.data_received(b"request")
        assert s.relay.eof_received() is True  # keep the TLS connection's writing half
        assert s.upstream.eof and not s.upstream.closed
        s.side.data_received(b"answer after the client's FIN")
        assert s.client.data == b"answer after the client's FIN"
        assert s.side.eof_received() is False
        assert s.record.end is End.DONE
        assert s.client.closed and not s.client.cut  # close_notify: a whole stream
    run(main())


def test_upstream_half_close_sends_close_notify_and_the_client_may_still_send():
    async def main():
        s = await Session().open()
        s.side.data_received(b"banner")
        assert s.side.eof_received() is True
        assert s.client.eof and s.client.data == b"banner"  # close_notify after the data
        s.relay.data_received(b"late words")
        assert s.upstream.data == b"late words"
        assert s.relay.eof_received() is False
        assert s.record.end is End.DONE and s.record.bytes_up == 10
    run(main())


def test_back_pressure_both_ways():
    async def main():
        s = await Session().open()
        s.relay.pause_writing()  # the client's socket is full
        assert not s.upstream.reading and s.client.reading
        s.relay.resume_writing()
        assert s.upstream.reading
        s.side.pause_writing()  # the upstream's socket is full
        assert not s.client.reading and s.upstream.reading
        s.side.resume_writing()
        assert s.client.reading
    run(main())


def test_idle_session_is_closed_with_close_notify():
    async def main():
        s = await Session(idle=0.05).open()
        s.relay.data_received(b"x")
        await asyncio.sleep(0.2)
        assert s.record.end is End.IDLE_TIMEOUT
        assert s.client.closed and not s.client.cut and s.upstream.closed
    run(main())


@pytest.mark.parametrize("end", [End.UPSTREAM_REFUSED, End.CONNECT_TIMEOUT])
def test_upstream_unreachable_cuts_the_client_and_reports_once(end):
    async def main():
        s = await Session(fail=StreamConnectError(end, "connect failed", "127.0.0.1:1")).open()
        assert s.record.end is end and s.record.server == "127.0.0.1:1"
        assert s.client.cut  # no close_notify: the client can tell it was not served
        s.relay.connection_lost(None)
        assert len(s.records) == 1
    run(main())


def test_upstream_reset_cuts_the_client():
    async def main():
        s = await Session().open()
        s.side.connection_lost(ConnectionResetError(104, "Connection reset by peer"))
        assert s.record.end is End.UPSTREAM_RESET and "reset" in s.record.error
        assert s.client.cut
    run(main())


def test_client_gone_aborts_the_upstream():
    async def main():
        s = await Session().open()
        s.relay.connection_lost(ConnectionResetError())
        assert s.record.end is End.CLIENT_CLOSED and s.upstream.aborted
        s.side.connection_lost(None)
        assert len(s.records) == 1
    run(main())


def test_client_gone_while_connecting_closes_the_late_upstream():
    async def main():
        s = Session()
        s.gate.clear()
        await s.open()
        s.relay.connection_lost(None)
        assert s.record.end is End.CLIENT_CLOSED
    run(main())


def test_shutdown_closes_cleanly_after_what_was_sent():
    async def main():
        s = await Session().open()
        s.side.data_received(b"last")
        s.relay.shutdown()
        assert s.record.end is End.SHUTDOWN and s.client.data == b"last"
        assert s.client.closed and not s.client.cut and s.upstream.closed
        assert s.record.tls == "tls-info" and s.record.client == "127.0.0.1:50000"
    run(main())


def test_preamble_goes_to_the_upstream_before_any_client_byte():
    async def main():
        s = Session(preamble=lambda client: b"PROXY " + client.get_extra_info("tls").encode())
        s.gate.clear()
        await s.open()
        s.relay.data_received(b"first")
        s.gate.set()
        for _ in range(5):
            await asyncio.sleep(0)
        assert s.upstream.written == [b"PROXY tls-info", b"first"]
        assert s.relay.bytes_up == 5  # the client's bytes only
    run(main())


def test_tcp_upstream_health_check_is_a_connect_and_connector_skips_a_dead_server():
    """The stream connector and health check on real sockets on 127.0.0.1: a refused server
    leaves rotation and the next one is used; its TCP-connect health check brings it back."""
    import socket

    from qproxy.config.model import UpstreamSection
    from qproxy.proxy.stream_server import connector
    from qproxy.proxy.upstream import Rotation, Upstream

    async def main():
        live = socket.create_server(("127.0.0.1", 0))
        dead = socket.create_server(("127.0.0.1", 0))
        dead_port = dead.getsockname()[1]
        dead.close()
        section = UpstreamSection(servers=(f"127.0.0.1:{dead_port}",
                                           f"127.0.0.1:{live.getsockname()[1]}"),
                                  health_check={"interval": 0.05, "timeout": 1})
        changes = []
        upstream = Upstream("mqtt", section, lambda *a: changes.append(a), stream=True)
        transport, server = await connector(upstream)(lambda server: asyncio.Protocol())
        transport.close()
        assert server.endswith(str(live.getsockname()[1]))
        assert upstream.pool.servers[0].rotation is Rotation.OUT
        revived = socket.create_server(("127.0.0.1", dead_port))
        upstream.start()
        for _ in range(100):
            if upstream.pool.servers[0].rotation is Rotation.IN:
                break
            await asyncio.sleep(0.02)
        assert upstream.pool.servers[0].rotation is Rotation.IN
        assert ("mqtt", f"127.0.0.1:{dead_port}", True, "its health check (TCP connect) passed") in changes
        await upstream.close()
        live.close()
        revived.close()
    run(main())


def test_a_server_that_speaks_first_is_heard_over_real_sockets():
    """A backend that greets on accept (SMTP's banner, a broker's hello): its first bytes can
    arrive before the connector's await returns; they reach the client all the same."""
    import uvloop

    from qproxy.config.model import UpstreamSection
    from qproxy.proxy.stream_server import connector
    from qproxy.proxy.upstream import Upstream

    async def main():
        async def greet(reader, writer):
            writer.write(b"220 hello\r\n")
            await reader.read()  # until the relay closes
            writer.close()

        banner = await asyncio.start_server(greet, "127.0.0.1", 0)
        port = banner.sockets[0].getsockname()[1]
        upstream = Upstream("smtp", UpstreamSection(servers=(f"127.0.0.1:{port}",)),
                            lambda *a: None, stream=True)
        heard = []
        for _ in range(10):  # it was lost every time on loopback: 10 tries leave no doubt
            client, records = MockTransport(), []
            relay = StreamRelay(connector(upstream), 10.0, lambda r, rec: records.append(rec))
            relay.connection_made(client)
            for _ in range(200):
                if client.data or records:
                    break
                await asyncio.sleep(0.005)
            heard.append(client.data)
            relay.shutdown()
            assert records[-1].server == f"127.0.0.1:{port}"
        assert heard == [b"220 hello\r\n"] * 10
        banner.close()
        await upstream.close()

    uvloop.run(asyncio.wait_for(main(), 30))


def test_an_upstream_full_at_once_keeps_the_client_paused():
    """What waited for the connection can fill the upstream's buffer on the first write
    (asyncio says pause_writing inside that write, once): the client must stay paused until
    the upstream drains, or a backend that never reads is fed without bound."""
    async def main():
        s = Session()
        s.gate.clear()
        await s.open()
        s.relay.data_received(b"x" * 100_000)
        real_write = s.upstream.write

        def write(data):
            real_write(data)
            if len(s.upstream.data) > 64 * 1024 and s.side is not None:
                s.side.pause_writing()

        s.upstream.write = write
        s.gate.set()
        for _ in range(5):
            await asyncio.sleep(0)
        assert s.relay.state is RelayState.OPEN and not s.client.reading
        s.side.resume_writing()
        assert s.client.reading
    run(main())


def test_a_client_full_before_the_upstream_connects_keeps_the_upstream_paused():
    async def main():
        s = Session()
        s.gate.clear()
        await s.open()
        s.relay.pause_writing()  # the client's buffer is past its high-water mark already
        s.gate.set()
        for _ in range(5):
            await asyncio.sleep(0)
        assert s.relay.state is RelayState.OPEN and not s.upstream.reading
        s.relay.resume_writing()
        assert s.upstream.reading
    run(main())
