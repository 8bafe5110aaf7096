"""The metrics process: serves the sum of every worker's metrics on the pre-bound socket."""

from __future__ import annotations

import asyncio
import signal
import socket

from aiohttp import web

from ..observability.logging import reopen_log_files
from ..observability.metrics import CONTENT_TYPE_LATEST, render_multiprocess


async def _serve(sock: socket.socket, path: str) -> None:
    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=render_multiprocess(),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get(path, metrics)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # It holds the log file it inherited: SIGUSR1 lets logrotate's old file go here too.
    loop.add_signal_handler(signal.SIGUSR1, reopen_log_files)
    await stop.wait()
    await runner.cleanup()


def metrics_main(sock: socket.socket, path: str) -> int:
    import uvloop

    uvloop.run(_serve(sock, path))
    return 0
