"""What the click commands share: the project's errors shown as one line and exit code 1,
never a traceback (library code raises; only the command line decides exit codes)."""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

import click

from .errors import QProxyError

F = TypeVar("F", bound=Callable[..., Any])


def one_line_errors(func: F) -> F:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except QProxyError as exc:
            raise click.ClickException(str(exc)) from None
    return wrapper  # type: ignore[return-value]
