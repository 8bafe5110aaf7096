"""Command line: ``python -m examples.ota_backend --port 5000 --storage DIR``."""

from __future__ import annotations

import logging
from pathlib import Path

import click
from werkzeug.serving import run_simple

from .app import HeaderPreservingRequestHandler, create_app


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=5000,
    show_default=True,
    help="TCP port to bind.",
)
@click.option(
    "--storage",
    type=click.Path(file_okay=False, writable=True, path_type=Path),
    envvar="OTA_STORAGE",
    show_envvar=True,
    required=True,
    help="Directory holding firmware images; created if missing.",
)
@click.option(
    "--access-log/--no-access-log",
    default=False,
    show_default=True,
    help="Log every request to stderr (werkzeug format).",
)
def main(host: str, port: int, storage: Path, access_log: bool) -> None:
    """Serve the example firmware-update (OTA) API over plain HTTP."""
    app = create_app(storage)
    # Quiet by default: a parent process that pipes stderr but never reads
    # it would otherwise block us once the pipe fills with access-log lines.
    logging.getLogger("werkzeug").setLevel(logging.INFO if access_log else logging.WARNING)
    # run_simple binds and serves in one call, so this line comes just
    # before the bind; poll /healthz for real readiness.
    shown_host = f"[{host}]" if ":" in host else host  # IPv6 literal in a URL
    click.echo(f"ota_backend listening on http://{shown_host}:{port} (storage: {storage})")
    run_simple(
        host,
        port,
        app,
        threaded=True,
        request_handler=HeaderPreservingRequestHandler,
    )


if __name__ == "__main__":
    main(prog_name="python -m examples.ota_backend")
