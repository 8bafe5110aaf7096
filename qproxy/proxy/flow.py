"""Flow control of one client connection, both directions, in one place (uvicorn's
`flow_control.py`): who holds the client's input paused, and waiting for its output to drain."""

from __future__ import annotations

import asyncio


class FlowControl:
    """Input is read while nobody holds it paused: each holder (a request body over its
    high-water mark, a full request queue, an upgrade, a backend that is not reading the
    tunnel) pauses it for its own reason and resumes only that reason. Output: the transport
    says when its buffer is full (`pause_writing`) and drained again; writers wait with
    `drain`."""

    __slots__ = ("_transport", "_paused_by", "reading_paused", "writing_paused", "_drained")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._paused_by: set[object] = set()
        self.reading_paused = False  # whether anyone holds input paused
        self.writing_paused = False
        self._drained: asyncio.Future[None] | None = None

    # -- the client's input ----------------------------------------------------------------
    def pause_reading(self, reason: object) -> None:
        if not self._paused_by and not self._transport.is_closing():
            self._transport.pause_reading()
        self._paused_by.add(reason)
        self.reading_paused = True

    def release(self, reason: object) -> bool:
        """Drop one reason; True if that was the last one (the caller resumes reading, after
        it has parsed what it read ahead)."""
        if reason not in self._paused_by:
            return False
        self._paused_by.discard(reason)
        self.reading_paused = bool(self._paused_by)
        return not self.reading_paused

    def resume_transport(self) -> None:
        if not self._paused_by and not self._transport.is_closing():
            self._transport.resume_reading()

    # -- our output ------------------------------------------------------------------------
    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._wake()

    def connection_lost(self) -> None:
        self.writing_paused = False
        self._wake()  # the writer then finds the connection gone

    def _wake(self) -> None:
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_result(None)

    async def drain(self, timeout: float) -> bool:
        """Wait until the transport takes more; False if it did not within `timeout`."""
        if not self.writing_paused:
            return True
        self._drained = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                await self._drained
        except TimeoutError:
            return False
        finally:
            self._drained = None
        return True
