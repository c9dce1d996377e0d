"""The one error type of configuration problems, its check helper, and the command
lines' argument parser whose usage errors are one line too."""

from __future__ import annotations

import argparse
from typing import NoReturn


class ConfigError(ValueError):
    """A one-line error naming the config field (or file) at fault."""


def check(cond: bool, msg: str) -> None:
    """Raise :class:`ConfigError` with ``msg`` unless ``cond``."""
    if not cond:
        raise ConfigError(msg)


ConfigError.__module__ = "t5x_lite.config"  # how tracebacks and docs name it


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one line and status 2, as the
    commands' ConfigErrors: ``python -m t5x_lite.export --workdir=runs/x`` prints
    ``error: python -m t5x_lite.export: the following arguments are required: --format,
    --out (see --help)`` instead of the usage block and the message."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")
