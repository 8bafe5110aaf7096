"""A backend for the proxy's tests (aiohttp), run as its own process.

    python -m tests.support.backend PORT MARKER_DIR

Endpoints generate and consume bodies on the fly so that 1 GiB transfers need no disk, and
record what they saw (a client hang-up reaching the backend) as files in MARKER_DIR.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
from pathlib import Path

from aiohttp import web

CHUNK = 256 * 1024
PATTERN = bytes(range(256)) * (CHUNK // 256)


def pattern_sha256(size: int) -> str:
    digest = hashlib.sha256()
    remaining = size
    while remaining:
        piece = PATTERN[: min(CHUNK, remaining)]
        digest.update(piece)
        remaining -= len(piece)
    return digest.hexdigest()


async def stream_bytes(request: web.Request) -> web.StreamResponse:
    size = int(request.match_info["size"])
    response = web.StreamResponse()
    if request.query.get("chunked") == "1":
        response.enable_chunked_encoding()
    else:
        response.content_length = size
    response.content_type = "application/octet-stream"
    await response.prepare(request)
    if request.method == "HEAD":
        # aiohttp would send what the handler writes even for HEAD (RFC 9110 9.3.2: no body),
        # and the stray bytes poison the proxy's next request on that backend connection.
        await response.write_eof()
        return response
    remaining = size
    while remaining:
        piece = PATTERN[: min(CHUNK, remaining)]
        await response.write(piece)
        remaining -= len(piece)
    await response.write_eof()
    return response


async def sha256_body(request: web.Request) -> web.Response:
    digest = hashlib.sha256()
    length = 0
    async for chunk in request.content.iter_any():
        digest.update(chunk)
        length += len(chunk)
    return web.json_response({"sha256": digest.hexdigest(), "length": length,
                              "chunked": "chunked" in request.headers.get("Transfer-Encoding", "")})


async def echo(request: web.Request) -> web.Response:
    return web.json_response({"method": request.method, "path": request.path_qs,
                              "headers": [[k, v] for k, v in request.headers.items()]})


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("delay", "5")))
    return web.Response(text="late\n")


async def hang(request: web.Request) -> web.StreamResponse:
    """Send a little, then trickle until the proxy cancels us; record that it did."""
    marker = Path(request.app["markers"]) / f"hang-{request.query.get('id', 'x')}"
    response = web.StreamResponse()
    response.content_length = 1 << 30
    await response.prepare(request)
    try:
        for _ in range(600):
            await response.write(b"x" * 1024)
            await asyncio.sleep(0.05)
    except (ConnectionError, asyncio.CancelledError):
        marker.write_text("client went away\n")
    return response


async def trickle(request: web.Request) -> web.StreamResponse:
    """A chunked body a piece at a time until the test creates `release-ID` in the marker
    directory (bounded: 30 s), then its end: a response that spans whatever the test does
    meanwhile (a reload, a SIGTERM)."""
    release = Path(request.app["markers"]) / f"release-{request.query.get('id', 'x')}"
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    for _ in range(1500):
        await response.write(b"t" * 100)
        if release.exists():
            break
        await asyncio.sleep(0.02)
    await response.write(b"end\n")
    await response.write_eof()
    return response


async def die_after_head(request: web.Request) -> web.StreamResponse:
    """Send the head and part of the body, then drop the connection: a backend crash."""
    response = web.StreamResponse()
    if request.query.get("framing") == "chunked":
        response.enable_chunked_encoding()
    else:
        response.content_length = 100_000
    await response.prepare(request)
    await response.write(b"d" * 1000)
    await asyncio.sleep(0.2)  # the proxy has passed the head and the first bytes on
    assert request.transport is not None
    request.transport.abort()
    return response


async def websocket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(protocols=("ota.v1",))
    await ws.prepare(request)
    async for message in ws:
        if message.type == web.WSMsgType.TEXT:
            await ws.send_str("echo:" + message.data)
        elif message.type == web.WSMsgType.BINARY:
            await ws.send_bytes(message.data[::-1])
    return ws


async def healthz(request: web.Request) -> web.Response:
    """503 while the test has created `unhealthy` in the marker directory."""
    if (Path(request.app["markers"]) / "unhealthy").exists():
        return web.json_response({"status": "failing"}, status=503)
    return web.json_response({"status": "ok"})


def make_app(markers: str) -> web.Application:
    app = web.Application(client_max_size=0)
    app["markers"] = markers
    app.router.add_get("/bytes/{size:\\d+}", stream_bytes)
    app.router.add_route("*", "/sha256", sha256_body)
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/slow", slow)
    app.router.add_get("/hang", hang)
    app.router.add_get("/trickle", trickle)
    app.router.add_get("/die-after-head", die_after_head)
    app.router.add_get("/ws", websocket)
    app.router.add_get("/healthz", healthz)
    return app


if __name__ == "__main__":
    port, markers = int(sys.argv[1]), sys.argv[2]
    print(f"backend listening on {port}", flush=True)
    web.run_app(make_app(markers), host="127.0.0.1", port=port, access_log=None, print=None,
                shutdown_timeout=1)
