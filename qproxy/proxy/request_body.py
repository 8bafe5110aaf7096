"""A request body: streamed as it arrives (with back-pressure on the client), or buffered
whole first, in memory and then in a nameless temp file, before any backend is involved.

Buffering is nginx's `proxy_request_buffering on`: a client trickling its body then holds no
backend connection, only its own bytes. `Expect: 100-continue` is answered by the body itself,
the first time someone asks for it (uvicorn's way): a request refused before that (413, 404)
never invites the body.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import tempfile
from dataclasses import dataclass
from typing import IO, Protocol

from .request import BadRequest

# A streamed body stops being read from the client once this much waits for the backend.
BODY_HIGH_WATER = 256 * 1024
# A buffered body is replayed this much at a time.
REPLAY_CHUNK = 64 * 1024
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


@dataclass(frozen=True, slots=True)
class BodyLimits:
    """From the `server` section: max_size 0 means no limit; temp_dir None the system's."""

    max_size: int
    memory_size: int
    temp_dir: str | None
    timeout: float


class BodySource(Protocol):
    """What a body needs of its connection."""

    def pause_input(self, reason: object) -> None: ...
    def resume_input(self, reason: object) -> None: ...
    def send_continue(self) -> None: ...


class BodyState(enum.Enum):
    ARRIVING = "arriving"
    COMPLETE = "complete"  # all of it has arrived (possibly not yet read)
    FAILED = "failed"


class BodySpool:
    """A whole body: the first `memory_size` bytes in memory, the rest in a temp file that has
    no name (O_TMPFILE, or unlinked as soon as made) and mode 0600, so nothing is left behind
    even if the worker dies."""

    __slots__ = ("_memory", "_file", "_limits", "size")

    def __init__(self, limits: BodyLimits) -> None:
        self._memory = bytearray()
        self._file: IO[bytes] | None = None
        self._limits = limits
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)
        room = self._limits.memory_size - len(self._memory)
        if self._file is None and len(data) <= room:
            self._memory += data
            return
        if self._file is None:
            self._memory += data[:room]
            data = data[room:]
            # Blocking writes, as nginx's: a page-cache write costs less than a thread hop.
            self._file = tempfile.TemporaryFile(dir=self._limits.temp_dir, buffering=0)
        self._file.write(data)

    def chunks(self):
        """The body from the start, in bounded pieces."""
        memory = self._memory
        for start in range(0, len(memory), REPLAY_CHUNK):
            yield bytes(memory[start:start + REPLAY_CHUNK])
        if self._file is not None:
            self._file.seek(0)
            while piece := self._file.read(REPLAY_CHUNK):
                yield piece

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._memory = bytearray()


class RequestBody:
    """`async for chunk in body` streams (or, after `await body.buffer()`, replays from the
    start each time it is iterated). `length` is the size once buffered."""

    __slots__ = ("_source", "_limits", "_chunks", "_queued", "_waiter", "_state", "error",
                 "received", "_expect_continue", "_spool", "_replay", "length")

    def __init__(self, source: BodySource, limits: BodyLimits, expect_continue: bool) -> None:
        self._source = source
        self._limits = limits
        self._chunks: collections.deque[bytes] = collections.deque()
        self._queued = 0
        self._waiter: asyncio.Future[None] | None = None
        self._state = BodyState.ARRIVING
        self.error: BaseException | None = None
        self.received = 0
        self._expect_continue = expect_continue
        self._spool: BodySpool | None = None
        self._replay = None
        self.length: int | None = None

    @property
    def state(self) -> BodyState:
        return self._state

    @property
    def complete(self) -> bool:
        return self._state is BodyState.COMPLETE

    # -- what the connection feeds ---------------------------------------------------------
    def feed(self, chunk: bytes) -> None:
        if self._state is not BodyState.ARRIVING:
            return
        self.received += len(chunk)
        limit = self._limits.max_size
        if limit and self.received > limit:
            raise BadRequest(413, f"request body larger than client_max_body_size ({limit})")
        self._chunks.append(chunk)
        self._queued += len(chunk)
        if self._queued > BODY_HIGH_WATER:
            self._source.pause_input(self)
        self._wake()

    def finish(self) -> None:
        if self._state is BodyState.ARRIVING:
            self._state = BodyState.COMPLETE
            self._wake()

    def fail(self, error: BaseException) -> None:
        if self._state is BodyState.ARRIVING:
            self._state = BodyState.FAILED
            self.error = error
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- what the handler calls ------------------------------------------------------------
    def send_continue(self) -> None:
        """Invite the body (Expect: 100-continue), once, if nothing of it has come yet."""
        if self._expect_continue:
            self._expect_continue = False
            if self.received == 0 and self._state is BodyState.ARRIVING:
                self._source.send_continue()

    async def buffer(self) -> None:
        """Read the whole body now. Raises BadRequest: 413 past client_max_body_size, 408 if it
        stops arriving, 400 if malformed; ConnectionError if the client left."""
        if self._spool is not None:
            return
        spool = BodySpool(self._limits)
        try:
            while (chunk := await self._next_arrived()) is not None:
                spool.write(chunk)
        except OSError as exc:
            spool.close()
            if isinstance(exc, ConnectionError):
                raise
            # The temp directory is full or unwritable: nginx's answer is 500 as well.
            raise BadRequest(500, f"the request body could not be buffered in "
                                  f"client_body_temp_path ({exc})") from None
        except BaseException:
            spool.close()
            raise
        self._spool = spool
        self.length = spool.size

    def close(self) -> None:
        """Drop a buffered copy (its temp file) once the request is done."""
        if self._spool is not None:
            self._spool.close()
        self._replay = None

    def __aiter__(self) -> "RequestBody":
        if self._spool is not None:
            self._replay = self._spool.chunks()  # from the start, each time (a retry)
        return self

    async def __anext__(self) -> bytes:
        if self._spool is not None:
            if self._replay is None:
                self._replay = self._spool.chunks()
            piece = next(self._replay, None)
            if piece is None:
                raise StopAsyncIteration
            return piece
        chunk = await self._next_arrived()
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    async def _next_arrived(self) -> bytes | None:
        if self._expect_continue:
            self.send_continue()
        while True:
            if self._chunks:
                chunks = self._chunks
                data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self._queued = 0
                self._source.resume_input(self)
                return data
            if self.error is not None:
                raise self.error
            if self._state is BodyState.COMPLETE:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(self._limits.timeout):
                    await self._waiter
            except TimeoutError:
                self.fail(BadRequest(408, "the request body stopped arriving"))
            finally:
                self._waiter = None

