"""A request body in ``Transfer-Encoding: chunked``, decoded for the WSGI app.

Replaces werkzeug's dev-server ``DechunkedInput`` (3.1): when the client stops in the middle
of a chunk, its ``readinto`` shrinks the caller's buffer yet reports the full size as read, and
CPython 3.11's ``RawIOBase.read`` then copies that many bytes out of the shrunken buffer: a
heap over-read of up to the declared chunk size (memory garbage handed to the app, or
SIGSEGV: one request with a large chunk size and a short body killed the whole server).
Here every read goes into a fixed-size view of the caller's buffer, and a body that ends
early is an ``OSError``, as a vanished client is for the rest of WSGI input.
"""

from __future__ import annotations

import io
from typing import BinaryIO

# Generous for "<hex size>;<extensions>\r\n" and one trailer field; longer is malformed.
MAX_LINE = 8192
MAX_TRAILER_LINES = 64
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")


class ChunkedBody(io.RawIOBase):
    def __init__(self, rfile: BinaryIO) -> None:
        self._rfile = rfile
        self._left_in_chunk = 0
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(view) and not self._done:
            if self._left_in_chunk == 0:
                self._left_in_chunk = self._next_chunk_size()
                if self._left_in_chunk == 0:
                    self._skip_trailers()
                    self._done = True
                    break
            want = min(len(view) - filled, self._left_in_chunk)
            got = self._rfile.readinto(view[filled:filled + want])
            if not got:
                raise OSError("request body ended in the middle of a chunk")
            filled += got
            self._left_in_chunk -= got
            if self._left_in_chunk == 0:
                self._expect_line_end()
        return filled

    def _line(self) -> bytes:
        line = self._rfile.readline(MAX_LINE)
        if not line.endswith(b"\n"):
            raise OSError("request body ended early or has an over-long chunk line")
        return line

    def _next_chunk_size(self) -> int:
        text = self._line().split(b";", 1)[0].strip(b" \t\r\n")
        # int() would also take "+5", "-5" and "0x5"; the grammar is HEXDIG only.
        if not text or not set(text) <= _HEX_DIGITS:
            raise OSError(f"invalid chunk size line {text[:40]!r}")
        return int(text, 16)

    def _expect_line_end(self) -> None:
        if self._line().strip(b"\r\n"):
            raise OSError("chunk data longer than its declared size")

    def _skip_trailers(self) -> None:
        for _ in range(MAX_TRAILER_LINES):
            if not self._line().strip(b"\r\n"):
                return
        raise OSError(f"more than {MAX_TRAILER_LINES} trailer lines")
