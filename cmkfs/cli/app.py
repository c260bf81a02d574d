"""The root ``cmkfs`` group: ``--home``, ``--version``, and the one place where library errors become
messages and exit codes (:mod:`.output`).  Each command group lives in its own module and is added below."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .. import __version__
from ..errors import CMKError
from . import capacity, convert, demo, drill, files, keys, mount, rewrap, status
from .output import EXIT_ERROR, CommandError, exit_code_for
from .state import CliState

__all__ = ["cli", "main"]


class _Root(click.Group):
    """Maps library errors to messages and exit codes, for every subcommand."""

    def invoke(self, ctx: click.Context) -> Any:
        debug = bool(ctx.params.get("debug"))
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except CMKError as exc:
            if debug:
                raise
            raise CommandError(str(exc), exit_code_for(exc)) from exc
        except OSError as exc:
            # Storage errors (missing file, permission denied) are expected, not bugs.
            if debug:
                raise
            raise CommandError(_os_message(exc), EXIT_ERROR) from exc
        except Exception as exc:
            # Anything else is a bug (or a library we call failing its own way):
            # one line, and the traceback when asked for.
            if debug:
                raise
            message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise CommandError(f"{message} (run with --debug for the traceback)", EXIT_ERROR) from exc


def _os_message(exc: OSError) -> str:
    if exc.filename is not None and exc.strerror:
        return f"{exc.strerror}: {exc.filename}"
    return str(exc) or type(exc).__name__


@click.group(cls=_Root, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="State directory holding the embedded key vault and config.json (default: $CMKFS_HOME or ~/.cmkfs).",
)
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(__version__, "--version", prog_name="cmkfs")
@click.pass_context
def cli(ctx: click.Context, home: Path | None, debug: bool) -> None:
    """cmkfs: customer-managed-key encryption for fsspec filesystems."""
    ctx.obj = CliState(home=home)


cli.add_command(keys.command)
cli.add_command(capacity.init)
cli.add_command(capacity.capacity)
cli.add_command(demo.command)
cli.add_command(drill.command)
cli.add_command(rewrap.command)
cli.add_command(status.status)
cli.add_command(status.verify)
cli.add_command(status.clean)
for _command in (*files.COMMANDS, *convert.COMMANDS, *mount.COMMANDS):
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> int:
    """Console entry point (``cmkfs`` and ``python -m cmkfs``): run the CLI, return its exit code."""
    try:
        cli.main(args=argv, prog_name="cmkfs", standalone_mode=True)
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else EXIT_ERROR)
