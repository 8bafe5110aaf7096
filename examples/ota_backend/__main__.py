"""Command line: ``python -m examples.ota_backend --port 5000 --storage DIR``."""

from __future__ import annotations

import logging
from pathlib import Path

import click
from werkzeug.serving import run_simple

from .app import HeaderPreservingRequestHandler, create_app
from .notify import NotifierConfigError, NotifierSettings, UpdateNotifier


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
@click.option("--mqtt-host", envvar="OTA_MQTT_HOST", show_envvar=True,
              help="MQTT broker to announce uploads to (ota/update/available, QoS 1); "
                   "no announcements without it.")
@click.option("--mqtt-port", type=click.IntRange(1, 65535), default=1883, show_default=True,
              envvar="OTA_MQTT_PORT", show_envvar=True, help="The broker's port.")
@click.option("--public-url", envvar="OTA_PUBLIC_URL", show_envvar=True,
              help="Base of the download URL announced to devices, e.g. "
                   "https://ota.example.com:8443 (qtls-server); default: the upload's own.")
def main(host: str, port: int, storage: Path, access_log: bool, mqtt_host: str | None,
         mqtt_port: int, public_url: str | None) -> None:
    """Serve the example firmware-update (OTA) API over plain HTTP."""
    notifier = None
    if mqtt_host is not None:
        try:
            settings = NotifierSettings(mqtt_host, mqtt_port, public_url=public_url)
        except NotifierConfigError as exc:
            raise click.BadParameter(str(exc)) from None
        notifier = UpdateNotifier(settings)
    app = create_app(storage, notifier=notifier)
    # Quiet by default: a parent process that pipes stderr but never reads
    # it would otherwise block us once the pipe fills with access-log lines.
    logging.getLogger("werkzeug").setLevel(logging.INFO if access_log else logging.WARNING)
    # One line per upload and per broker outage at most.
    logging.basicConfig(format="ota_backend: %(levelname)s %(message)s", level=logging.WARNING)
    logging.getLogger("ota_backend").setLevel(logging.INFO)
    # run_simple binds and serves in one call, so this line comes just
    # before the bind; poll /healthz for real readiness.
    shown_host = f"[{host}]" if ":" in host else host  # IPv6 literal in a URL
    click.echo(f"ota_backend listening on http://{shown_host}:{port} (storage: {storage})")
    if notifier is not None:
        click.echo(f"ota_backend announces uploads on {notifier.settings.topic} to "
                   f"mqtt://{mqtt_host}:{mqtt_port}")
        notifier.start()
    run_simple(
        host,
        port,
        app,
        threaded=True,
        request_handler=HeaderPreservingRequestHandler,
    )


if __name__ == "__main__":
    main(prog_name="python -m examples.ota_backend")
