"""`qtls-server`: with a prepared configuration, hand over to the master process."""

from __future__ import annotations

from ..keys.provider import needs_providers
from ..observability.logging import get_logger
from ..observability.metrics import Metrics
from ..tls.context import check_platform
from ..tls.fips import fips_status
from .master import Master
from .pidfile import PidFile
from .prepare import Prepared
from .status import StatusBoard, status_path

log = get_logger("qproxy.server")


def serve(prepared: Prepared, source: str) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code."""
    version = check_platform()
    log.info("starting qtls-server", openssl=version, config=source,
             openssl_conf="generated" if needs_providers(prepared.config) else "default",
             fips=fips_status(prepared.config), fips_self_tests=list(prepared.self_tests))
    for warning in prepared.warnings:
        log.warning("configuration warning", detail=warning)
    pid_file = prepared.config.server.pid_file
    if pid_file is None:
        return Master(prepared, source, Metrics()).run()
    # Taken before binding: a second instance is told who owns the file, not "address in use".
    status = StatusBoard(status_path(pid_file), source)
    with PidFile(pid_file):
        try:
            return Master(prepared, source, Metrics(), status).run()
        finally:
            status.remove()
