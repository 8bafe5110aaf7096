"""The asyncio face: `open_connection`-style streams over the same engine.

TLS runs in pyOpenSSL memory BIOs on the event loop (the sans-I/O shape of the daemon's
`qproxy.tls.machine`): ciphertext moves between asyncio's TCP streams and the BIOs, OpenSSL
never touches the socket and nothing blocks or uses a thread.

    reader, writer = await open_connection("localhost", 8443, ctx)
    writer.write(b"GET / HTTP/1.1\\r\\nHost: localhost\\r\\n\\r\\n")
    await writer.drain()
    head = await reader.readuntil(b"\\r\\n\\r\\n")
    print(writer.negotiated_group)             # X25519MLKEM768
    writer.close(); await writer.wait_closed()
"""

from __future__ import annotations

import asyncio
from typing import Any

from OpenSSL import SSL

from .failures import alert_of, handshake_error, openssl_reasons
from .negotiated import NegotiatedProperties, prepare_client
from .constants import Mode
from .context import QTLSContext
from .errors import (
    QTLSConnectionClosed, QTLSException, QTLSHandshakeError, QTLSTimeout, QTLSUsageError,
)

READ_SIZE = 65536


class _TLSPipe:
    """One pyOpenSSL connection over memory BIOs and a pair of raw asyncio streams."""

    def __init__(self, ctx: QTLSContext, raw_reader: asyncio.StreamReader,
                 raw_writer: asyncio.StreamWriter) -> None:
        self.context = ctx
        self.conn = SSL.Connection(ctx.ssl_context, None)
        self.raw_reader = raw_reader
        self.raw_writer = raw_writer

    def flush(self) -> None:
        """Queue every pending TLS record on the TCP stream."""
        while True:
            try:
                data = self.conn.bio_read(READ_SIZE)
            except SSL.WantReadError:
                return
            if not data:
                return
            self.raw_writer.write(data)

    async def handshake(self) -> None:
        while True:
            try:
                self.conn.do_handshake()
            except SSL.WantReadError:
                self.flush()
                await self.raw_writer.drain()
                data = await self.raw_reader.read(READ_SIZE)
                if not data:
                    raise QTLSConnectionClosed("the peer closed the connection during the "
                                               "handshake")
                self.conn.bio_write(data)
                continue
            except SSL.Error as exc:
                self.flush()  # our alert, so the peer learns why
                raise handshake_error(self.conn, exc, self.context.verify_mode) from None
            self.flush()
            await self.raw_writer.drain()
            return

    def decrypt(self, data: bytes) -> tuple[bytes, bool]:
        """Feed ciphertext; returns (plaintext, whether the peer sent close_notify)."""
        self.conn.bio_write(data)
        chunks = []
        closed = False
        while True:
            try:
                chunks.append(self.conn.recv(READ_SIZE))
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                closed = True
                break
            except SSL.Error as exc:
                reasons = openssl_reasons(exc)
                alert = alert_of(reasons)
                if alert is not None:
                    raise QTLSHandshakeError(f"the peer ended the connection with alert "
                                             f"'{alert}'", alert=alert,
                                             reason="; ".join(reasons)) from None
                raise QTLSException(f"TLS error while reading: {'; '.join(reasons) or exc}"
                                    ) from None
        self.flush()  # e.g. a KeyUpdate answer
        return b"".join(chunks), closed


class QTLSStreamWriter(NegotiatedProperties):
    """asyncio.StreamWriter's interface over TLS, plus what the handshake negotiated."""

    def __init__(self, pipe: _TLSPipe, pump: asyncio.Task[None]) -> None:
        self._pipe = pipe
        self._pump = pump
        self._closing = False

    def _established(self, call: str) -> SSL.Connection:
        return self._pipe.conn

    def write(self, data: bytes) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise QTLSUsageError(f"write() takes bytes, not {type(data).__name__}")
        if self._closing:
            raise QTLSConnectionClosed("write() after close()")
        if self._pipe.raw_writer.is_closing():
            raise QTLSConnectionClosed("the connection is closed")
        view = memoryview(data)
        while view:
            sent = self._pipe.conn.send(view[:16384])
            view = view[sent:]
        self._pipe.flush()

    def writelines(self, data: list[bytes]) -> None:
        for item in data:
            self.write(item)

    async def drain(self) -> None:
        try:
            await self._pipe.raw_writer.drain()
        except (ConnectionError, OSError) as exc:
            raise QTLSConnectionClosed(f"the connection failed: {exc}") from None

    def can_write_eof(self) -> bool:
        return False

    def is_closing(self) -> bool:
        return self._closing or self._pipe.raw_writer.is_closing()

    def close(self) -> None:
        """Send close_notify and close the TCP stream."""
        if self._closing:
            return
        self._closing = True
        try:
            self._pipe.conn.shutdown()
            self._pipe.flush()
        except SSL.Error:
            pass  # the connection already failed; closing is all that is left
        self._pipe.raw_writer.close()

    async def wait_closed(self) -> None:
        try:
            await self._pipe.raw_writer.wait_closed()
        except (ConnectionError, OSError):
            pass
        if not self._pump.done():
            self._pump.cancel()
            try:
                await self._pump
            except asyncio.CancelledError:
                pass

    async def __aenter__(self) -> QTLSStreamWriter:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._pipe.conn
        if name == "negotiated_group":
            return self.negotiated_group
        return self._pipe.raw_writer.get_extra_info(name, default)

    @property
    def session(self) -> SSL.Session | None:
        return self._pipe.conn.get_session()


async def _pump(pipe: _TLSPipe, reader: asyncio.StreamReader) -> None:
    """Ciphertext from the socket -> plaintext into `reader`, until EOF or an error."""
    try:
        while True:
            data = await pipe.raw_reader.read(READ_SIZE)
            if not data:
                reader.feed_eof()
                return
            plaintext, closed = pipe.decrypt(data)
            if plaintext:
                reader.feed_data(plaintext)
            if closed:
                reader.feed_eof()
                return
    except QTLSException as exc:
        reader.set_exception(exc)
    except (ConnectionError, OSError) as exc:
        reader.set_exception(QTLSConnectionClosed(f"the connection failed: {exc}"))


async def open_connection(host: str, port: int, ctx: QTLSContext, *,
                          server_hostname: str | None = None, check_hostname: bool = True,
                          session: SSL.Session | None = None, timeout: float | None = 30.0,
                          limit: int = 2 ** 16,
                          ) -> tuple[asyncio.StreamReader, QTLSStreamWriter]:
    """Connect, do the handshake, return (reader, writer) like `asyncio.open_connection`.

    Errors are the same QTLSException subclasses as the blocking API; `timeout` bounds
    connecting plus the handshake."""
    ctx.require_mode(Mode.CLIENT, "open_connection()")
    name = server_hostname or host
    try:
        async with asyncio.timeout(timeout):
            try:
                raw_reader, raw_writer = await asyncio.open_connection(host, port)
            except OSError as exc:
                raise QTLSConnectionClosed(f"cannot connect to {host}:{port}: "
                                           f"{exc.strerror or exc}") from None
            pipe = _TLSPipe(ctx, raw_reader, raw_writer)
            prepare_client(pipe.conn, name, check_hostname, session)
            try:
                await pipe.handshake()
            except BaseException:
                raw_writer.close()
                raise
    except TimeoutError:
        raise QTLSTimeout(f"connecting to {host}:{port} and the TLS handshake took longer "
                          f"than {timeout}s") from None
    reader = asyncio.StreamReader(limit=limit)
    pump = asyncio.get_running_loop().create_task(_pump(pipe, reader))
    return reader, QTLSStreamWriter(pipe, pump)


__all__ = ["QTLSStreamWriter", "open_connection"]
