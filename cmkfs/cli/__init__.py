"""The ``cmkfs`` command line: a thin front-end over the library (README "Command line", docs/KEYS.md)."""

from .app import cli, main

__all__ = ["cli", "main"]
