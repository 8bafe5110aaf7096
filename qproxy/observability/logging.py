"""JSON-lines logging with structlog on top of the standard library's handlers.

The standard library owns the outputs (console, size-rotated file) so that rotation and
reopening are its well-tested code; structlog owns the shape of each line.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys

import structlog

from ..config.model import LoggingSection

_LEVELS = {"warn": "warning"}


def _formatter() -> structlog.stdlib.ProcessorFormatter:
    return structlog.stdlib.ProcessorFormatter(
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(sort_keys=False),
        ],
        foreign_pre_chain=[
            structlog.stdlib.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ],
    )


def configure_logging(section: LoggingSection, *, stream=None) -> None:
    """Route every qproxy logger to the configured outputs as JSON lines."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    formatter = _formatter()
    if section.console:
        console = logging.StreamHandler(stream or sys.stderr)
        console.setFormatter(formatter)
        root.addHandler(console)
    if section.file:
        if section.max_size_mb > 0:
            file_handler: logging.Handler = logging.handlers.RotatingFileHandler(
                section.file, maxBytes=section.max_size_mb * 1024 * 1024,
                backupCount=section.max_files, encoding="utf-8")
        else:
            # Rotation left to logrotate: reopen when the file is moved away.
            file_handler = logging.handlers.WatchedFileHandler(section.file, encoding="utf-8")
        file_handler.setFormatter(formatter)
        root.addHandler(file_handler)
    level = _LEVELS.get(section.level, section.level).upper()
    root.setLevel(level)
    # aiohttp logs each malformed request with a traceback; we log one line of our own.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    logging.getLogger("aiohttp.access").disabled = True

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.filter_by_level,
            structlog.stdlib.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)
