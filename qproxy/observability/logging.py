"""JSON-lines logging with structlog on top of the standard library's handlers.

The standard library owns the outputs (console, size-rotated file) so that rotation and
reopening are its well-tested code; structlog owns the shape of each line.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog

from ..config.model import LoggingSection
from .logfile import LineFileHandler

_LEVELS = {"warn": "warning"}


def _add_pid(_logger, _method, event_dict):
    # Several worker processes share one output: say which one wrote the line.
    event_dict["pid"] = os.getpid()
    return event_dict


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or closed
        return False


def console_format(section: LoggingSection, stream: Any) -> str:
    """The format of the console output: the configured one, else "console" for a person at a
    terminal and "json" for whatever reads a pipe (journald, a container runtime)."""
    if section.format is not None:
        return section.format
    return "console" if _is_terminal(stream) else "json"


def _control_escaped(text: str) -> str:
    """`text` with control characters as escapes ('\\x1b'): what a client chose (its SNI, a
    path) must not move the operator's cursor, retitle the terminal or hide a line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _escape_controls(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    # JSON escapes them itself; console lines are written as they are, colors and all.
    return {key: _control_escaped(value) if isinstance(value, str) else value
            for key, value in event.items()}


def _formatter(fmt: str = "json", colors: bool = False) -> structlog.stdlib.ProcessorFormatter:
    renderer: Any
    if fmt == "console":
        # Colors only for a terminal: escape codes in a file or the journal are noise.
        renderer = structlog.dev.ConsoleRenderer(colors=colors, sort_keys=False)
        exc_info: list[Any] = [_escape_controls]  # it formats tracebacks itself
    else:
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
        exc_info = [structlog.processors.format_exc_info]
    return structlog.stdlib.ProcessorFormatter(
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *exc_info,
            renderer,
        ],
        foreign_pre_chain=[
            structlog.stdlib.add_log_level,
            _add_pid,
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
        out = stream or sys.stderr
        console = logging.StreamHandler(out)
        fmt = console_format(section, out)
        console.setFormatter(formatter if fmt == "json" else
                             _formatter(fmt, colors=_is_terminal(out)))
        root.addHandler(console)
    # A handler that cannot write says nothing per record (no "--- Logging error ---"
    # traceback on stderr); the file handler counts and reports its own failures.
    logging.raiseExceptions = False
    if section.file:
        # Every process appends whole lines (O_APPEND, one write per record, a short write cut
        # back) and reopens the file when it is moved away; the master rotates by size, or
        # logrotate does and sends SIGUSR1.
        file_handler = LineFileHandler(section.file)
        # A file is read by programs: JSON unless console lines were asked for by name.
        file_handler.setFormatter(_formatter("console") if section.format == "console"
                                  else formatter)
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
            _add_pid,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)


def reopen_log_files() -> None:
    """SIGUSR1: open the configured file again (after logrotate), letting go of the old one
    even if it was only deleted or truncated."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, LineFileHandler):
            handler.reopen()


def rotate_by_size(path: str, max_bytes: int, keep: int) -> bool:
    """Rotate `path` to `path.1` … `path.<keep>` when it has grown past `max_bytes`.

    Run by the master only; every process's file handler notices the move and reopens."""
    try:
        if max_bytes <= 0 or os.stat(path).st_size < max_bytes:
            return False
    except FileNotFoundError:
        return False
    if keep <= 0:
        os.unlink(path)
        return True
    for index in range(keep - 1, 0, -1):
        older = f"{path}.{index}"
        if os.path.exists(older):
            os.replace(older, f"{path}.{index + 1}")
    os.replace(path, f"{path}.1")
    return True
