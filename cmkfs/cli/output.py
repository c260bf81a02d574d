"""What the CLI prints, and the code it exits with.

The exit codes are documented in docs/KEYS.md ("Exit codes"); keep the two in step.
"""

from __future__ import annotations

import json
from typing import IO, Any, NoReturn

import click

from ..errors import (
    ConfigurationError,
    FormatError,
    IntegrityError,
    KeyNotFoundError,
    KeyRevokedError,
    VaultUnavailableError,
)

__all__ = [
    "EXIT_CODES",
    "EXIT_CONFIG",
    "EXIT_ERROR",
    "EXIT_FORMAT",
    "EXIT_INTEGRITY",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_REVOKED",
    "EXIT_USAGE",
    "EXIT_VAULT",
    "CommandError",
    "emit_json",
    "exit_code_for",
    "fail",
    "message_for",
    "printable",
    "NO_KEY_ADVICE",
]

EXIT_OK = 0
EXIT_ERROR = 1  # any other error, including a declined confirmation
EXIT_USAGE = 2  # click's own code for a bad option or argument
EXIT_NOT_FOUND = 3
EXIT_REVOKED = 4
EXIT_VAULT = 5
EXIT_INTEGRITY = 6
EXIT_CONFIG = 7
EXIT_FORMAT = 8

# The library's "no key configured" says how to pass a key in Python; a command-line user gets the CLI's ways.
NO_KEY_PREFIX = "no key configured"
NO_KEY_ADVICE = (
    "no key configured: pass --key NAME (a key of the embedded vault) or --key KEY_URI, set $CMKFS_KEY, "
    "or make a key the default with `cmkfs keys create NAME --default` (or `cmkfs keys default NAME`)"
)

#: Error class -> exit code; the first match wins (the classes are disjoint).
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (KeyNotFoundError, EXIT_NOT_FOUND),
    (KeyRevokedError, EXIT_REVOKED),
    (VaultUnavailableError, EXIT_VAULT),
    (IntegrityError, EXIT_INTEGRITY),
    (ConfigurationError, EXIT_CONFIG),
    (FormatError, EXIT_FORMAT),
)


def exit_code_for(exc: BaseException) -> int:
    for cls, code in EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return EXIT_ERROR


def printable(text: str) -> str:
    """``text`` fit for a terminal.

    Every character a terminal could act on (controls, escapes, bidi and other format characters, line
    separators) is shown as a Python escape, and so is a backslash, so that an escape in the output never
    comes from the text itself.  Printable non-ASCII stays.
    """
    return "".join(ch if ch.isprintable() and ch != "\\" else ascii(ch)[1:-1] for ch in str(text))


def message_for(exc: BaseException) -> str:
    """What the command line says for a library error (the library's text, in the CLI's terms)."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, ConfigurationError) and text.startswith(NO_KEY_PREFIX):
        return NO_KEY_ADVICE
    return text


class CommandError(click.ClickException):
    """An expected failure: one line on stderr, no traceback, a distinct exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        # click declares exit_code a ClassVar but reads it from the instance: one class serves every code.
        self.exit_code = exit_code  # type: ignore[misc]

    def show(self, file: IO[Any] | None = None) -> None:
        # Messages quote paths and header fields: escape them here, once, for every command.
        message = self.format_message()
        cause = self.__cause__
        if cause is not None and message == str(cause):
            message = message_for(cause)  # a library error passed on as it is: in the CLI's terms
        click.echo(f"cmkfs: error: {printable(message)}", err=True, file=file)


def fail(message: str, exit_code: int = EXIT_ERROR) -> NoReturn:
    """Stop the command with ``message`` on stderr and ``exit_code``."""
    raise CommandError(message, exit_code)


def emit_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))
