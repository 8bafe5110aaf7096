"""An upload sink for the benchmarks: reads whole request bodies as fast as it can, answers 200.

nginx's static `return 200` answers before the body has arrived and then closes, which cuts a
streamed upload short; this reads every byte first (Content-Length or chunked).

    python -m benchmarks.sink PORT
"""

from __future__ import annotations

import asyncio
import sys

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\n\r\nok\n"
CHUNKED_END = b"\r\n0\r\n\r\n"


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            headers = head.lower()
            if b"content-length:" in headers:
                remaining = int(headers.split(b"content-length:")[1].split(b"\r\n")[0])
                while remaining:
                    chunk = await reader.read(min(remaining, 1 << 20))
                    if not chunk:
                        return
                    remaining -= len(chunk)
            elif b"chunked" in headers:
                tail = b""
                while not tail.endswith(CHUNKED_END):
                    chunk = await reader.read(1 << 20)
                    if not chunk:
                        return
                    tail = (tail + chunk)[-len(CHUNKED_END):]
            writer.write(OK)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port, limit=1 << 20)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        import uvloop
        uvloop.run(main(int(sys.argv[1])))
    except KeyboardInterrupt:
        pass
