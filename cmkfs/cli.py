"""The ``cmkfs`` command line: a thin front-end over the library.

The root group holds what every command shares: ``--home``, ``--version``,
output helpers (:func:`printable` escapes text that comes from files, so a
hostile path or header cannot drive the terminal), and the one place where
library errors become messages and exit codes.  Each command group lives in
its own module, listed in :data:`COMMAND_MODULES`; a module exposes
``command`` (a click command or group) and is imported when the CLI starts.

Exit codes (also in docs/KEYS.md):

====  ==========================================================
code  meaning
====  ==========================================================
0     success
1     any other error (including a declined confirmation)
2     usage error (bad option or argument)
3     key or key version not found            (KeyNotFoundError)
4     key revoked, disabled or destroyed      (KeyRevokedError)
5     key vault unavailable or damaged        (VaultUnavailableError)
6     integrity failure: tampered or wrong key (IntegrityError)
7     configuration error                     (ConfigurationError)
8     not a cmkfs file, or unsupported format (FormatError)
====  ==========================================================
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from . import __version__
from .errors import (
    CMKError,
    ConfigurationError,
    FormatError,
    IntegrityError,
    KeyNotFoundError,
    KeyRevokedError,
    VaultUnavailableError,
)

__all__ = ["cli", "main", "CliState", "pass_state", "emit_json", "fail", "printable", "EXIT_CODES", "COMMAND_MODULES"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_REVOKED = 4
EXIT_VAULT = 5
EXIT_INTEGRITY = 6
EXIT_CONFIG = 7
EXIT_FORMAT = 8

#: Error class -> exit code; the first match wins (the classes are disjoint).
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (KeyNotFoundError, EXIT_NOT_FOUND),
    (KeyRevokedError, EXIT_REVOKED),
    (VaultUnavailableError, EXIT_VAULT),
    (IntegrityError, EXIT_INTEGRITY),
    (ConfigurationError, EXIT_CONFIG),
    (FormatError, EXIT_FORMAT),
)

#: Modules that each add one command or group to ``cmkfs``.
COMMAND_MODULES: tuple[str, ...] = ("cmkfs.cli_keys", "cmkfs.cli_demo", "cmkfs.cli_rewrap")


class CommandError(click.ClickException):
    """An expected failure: one line on stderr, no traceback, a distinct exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file=None) -> None:
        # Messages quote paths and header fields: escape them here, once, for every command.
        click.echo(f"cmkfs: error: {printable(self.format_message())}", err=True, file=file)


def printable(text: str) -> str:
    """``text`` fit for a terminal: every character a terminal could act on
    (controls, escapes, bidi and other format characters, line separators)
    is shown as a Python escape, and so is a backslash, so that an escape in
    the output never comes from the text itself.  Printable non-ASCII stays."""
    return "".join(ch if ch.isprintable() and ch != "\\" else ascii(ch)[1:-1] for ch in str(text))


def exit_code_for(exc: BaseException) -> int:
    for cls, code in EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return EXIT_ERROR


def fail(message: str, exit_code: int = EXIT_ERROR):
    """Stop the command with ``message`` on stderr and ``exit_code``."""
    raise CommandError(message, exit_code)


class _Root(click.Group):
    """Maps library errors to messages and exit codes, for every subcommand."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CMKError as exc:
            raise CommandError(str(exc), exit_code_for(exc)) from exc
        except OSError as exc:
            # Storage errors (missing file, permission denied) are expected, not bugs.
            raise CommandError(_os_message(exc), EXIT_ERROR) from exc


def _os_message(exc: OSError) -> str:
    if exc.filename is not None and exc.strerror:
        return f"{exc.strerror}: {exc.filename}"
    return str(exc) or type(exc).__name__


@dataclass
class CliState:
    """What the root options decided, passed to every command."""

    home: Path | None = None

    def vault(self, passphrase: str | None = None):
        from .providers.local import LocalVaultProvider

        return LocalVaultProvider(self.home, passphrase=passphrase)


pass_state = click.make_pass_decorator(CliState, ensure=True)


def emit_json(data) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def passphrase_from_env(var: str | None) -> str | None:
    """The passphrase in environment variable ``var`` (never taken on the command line)."""
    if var is None:
        return None
    value = os.environ.get(var)
    if not value:
        raise ConfigurationError(f"environment variable {var} is not set or empty")
    return value


@click.group(cls=_Root, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="State directory holding the embedded key vault and config.json (default: $CMKFS_HOME or ~/.cmkfs).",
)
@click.version_option(__version__, "--version", prog_name="cmkfs")
@click.pass_context
def cli(ctx: click.Context, home: Path | None) -> None:
    """cmkfs: customer-managed-key encryption for fsspec filesystems."""
    ctx.obj = CliState(home=home)


def _register() -> None:
    for name in COMMAND_MODULES:
        cli.add_command(importlib.import_module(name).command)


def main(argv: list[str] | None = None) -> int:
    """Console entry point (``cmkfs`` and ``python -m cmkfs``)."""
    try:
        cli.main(args=argv, prog_name="cmkfs", standalone_mode=True)
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else EXIT_ERROR)
    return EXIT_OK


_register()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
