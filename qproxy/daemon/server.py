"""`qtls-server`: check the platform and configuration, then hand over to the master process."""

from __future__ import annotations

from ..config.model import ServerConfig
from ..observability.logging import get_logger
from ..observability.metrics import Metrics
from ..tls.context import check_platform
from .master import Master
from .worker import build_tls

log = get_logger("qproxy.server")


def serve(config: ServerConfig, source: str) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code."""
    version = check_platform()
    server_tls = build_tls(config, source)
    log.info("starting qtls-server", openssl=version, config=source)
    for warning in server_tls.warnings:
        log.warning("configuration warning", detail=warning)
    return Master(config, source, server_tls, Metrics()).run()
