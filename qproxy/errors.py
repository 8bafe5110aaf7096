"""Error types. Each carries a message a person can act on; only the CLI turns them into exit codes."""

from __future__ import annotations


class QProxyError(Exception):
    """Base of every error qproxy raises on purpose."""


class ConfigError(QProxyError):
    """The configuration is wrong. `path` is the JSON path of the offending value."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path else problem)


class ConfigErrors(QProxyError):
    """Several configuration problems found in one pass, reported together."""

    def __init__(self, source: str, errors: list[ConfigError]) -> None:
        self.source = source
        self.errors = errors
        lines = "\n".join(f"  {e}" for e in errors)
        super().__init__(f"{source}: {len(errors)} problem(s)\n{lines}")


class PlatformError(QProxyError):
    """The OpenSSL in use cannot do what qproxy needs (no ML-KEM, no ML-DSA)."""
