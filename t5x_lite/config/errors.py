"""The one error type of configuration problems, and its check helper."""

from __future__ import annotations


class ConfigError(ValueError):
    """A one-line error naming the config field (or file) at fault."""


def check(cond: bool, msg: str) -> None:
    """Raise :class:`ConfigError` with ``msg`` unless ``cond``."""
    if not cond:
        raise ConfigError(msg)


ConfigError.__module__ = "t5x_lite.config"  # how tracebacks and docs name it
