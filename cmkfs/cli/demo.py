"""``cmkfs demo``: the main job on the embedded default, end to end (the workload is :mod:`.demo_job`)."""

from __future__ import annotations

from pathlib import Path

import click

from .output import emit_json, fail
from .state import CliState, pass_state

__all__ = ["command"]


@click.command("demo")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("cmkfs-demo"),
    show_default=True,
    help="Where the encrypted store is written.",
)
@click.option(
    "--rows",
    type=click.IntRange(1, 50_000_000),
    default=200_000,
    show_default=True,
    help="Rows in the refreshed sales dataset.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@pass_state
def command(state: CliState, directory: Path, rows: int, as_json: bool) -> None:
    """Refresh an encrypted dataset on local disk, read it back, run a revocation drill.

    Uses the default key if one is configured (and is a local:// key), else
    creates local://demo in the embedded vault.
    """
    from .demo_job import run_demo  # pyarrow is loaded only for this command

    def quiet(_message: str) -> None:
        pass

    say = quiet if as_json else click.echo
    result = run_demo(directory, rows=rows, home=str(state.home) if state.home else None, say=say)
    if as_json:
        emit_json(result.__dict__)
    if not (result.refused_after_disable and result.restored_after_enable):
        fail("the revocation drill did not behave as promised")
