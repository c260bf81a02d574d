"""``cmkfs demo``: the main job on the embedded default, end to end (the workload is :mod:`.demo_job`)."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

import click

from .output import emit_json, fail
from .state import CliState, pass_state

__all__ = ["command", "default_directory"]


def default_directory() -> Path:
    """Outside any checkout, in the user's cache: ``${XDG_CACHE_HOME:-~/.cache}/cmkfs-demo``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cmkfs-demo"


def _show_status(home: Path) -> None:
    """``cmkfs status`` of every capacity, as the command prints it, for the demo's home."""
    from .status import status

    click.echo(f"\n$ cmkfs --home {shlex.quote(str(home))} status")
    with click.Context(status, obj=CliState(home=home)) as ctx:
        ctx.invoke(status, target=None, storage_options=None, as_json=False, all_files=False)
    click.echo("")


def _shown(path: Path) -> str:
    """``path`` as a person would type it here: relative when it is below the current directory."""
    try:
        return shlex.quote(str(path.relative_to(Path.cwd())))
    except ValueError:
        return shlex.quote(str(path))


def _python_command() -> str:
    """The Python that has cmkfs, pandas and pyarrow: this one (``.venv/bin/python`` after demo.sh)."""
    return _shown(Path(sys.executable).absolute())


def _cmkfs_command() -> str:
    """How this user starts cmkfs: by name when that is this cmkfs, else by the path it was started by."""
    started = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    on_path = shutil.which("cmkfs")
    if started is not None and started.name == "cmkfs" and started.is_file():
        if on_path is not None and Path(on_path).resolve() == started:
            return "cmkfs"
        return _shown(started)  # e.g. .venv/bin/cmkfs from a checkout
    return "cmkfs" if on_path else f"{shlex.quote(sys.executable)} -m cmkfs"


def _next_steps(directory: Path, home: Path) -> None:
    cmkfs = _cmkfs_command()
    sales = shlex.quote(str(directory / "store" / "sales" / "dataset"))
    click.echo(f"\nEverything is in {directory}: home/ (vault, policy, audit.log) and store/ (the ciphertext).")
    click.echo("Next, try:")
    click.echo("  1. open the data in pandas (reads decrypt; the keys come from the demo's home):")
    click.echo(f"       export CMKFS_HOME={shlex.quote(str(home))}")
    click.echo(
        f'       {_python_command()} -c "import fsspec, pandas as pd; '
        "fs = fsspec.filesystem('cmk', target_protocol='file'); "
        f"print(pd.read_parquet('{sales}', filesystem=fs, columns=['region', 'revenue'])"
        ".groupby('region').sum())\""
    )
    click.echo("  2. in the same shell, see which key protects which files, per capacity and workspace:")
    click.echo(f"       {cmkfs} status          (and {cmkfs} verify to authenticate every byte)")
    click.echo("  3. measure revocation with reader processes, and keep the report as evidence:")
    click.echo(f"       {cmkfs} drill")


@click.command("demo")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the demo keeps its scratch home and store [default: ~/.cache/cmkfs-demo]. A re-run starts afresh.",
)
@click.option(
    "--rows",
    type=click.IntRange(100, 50_000_000),
    default=300_000,
    show_default=True,
    help="Rows in the sales dataset (hr gets one row for every 15).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON instead of the story.")
@pass_state
def command(state: CliState, directory: Path | None, rows: int, as_json: bool) -> None:
    """Refresh two encrypted capacities on local disk, read their reports, revoke one key.

    An analytics service refreshes data for a customer who holds the keys: a
    `sales` capacity under the tenant key (CMK) and an `hr` capacity under its
    own key (BYOK).  Each gets a partitioned Parquet dataset, a VertiPaq-style
    model and rendered report images, all through cmk:: only.  Then the hr key
    is disabled: hr becomes unreadable within the short TTL, sales does not.

    The demo uses a scratch home of its own (keys and policy in DIR/home) and
    never touches your keys or $CMKFS_HOME.
    """
    from .demo_job import run_demo  # pyarrow, pandas and matplotlib are loaded only for this command

    del state  # the demo's home is its own, whatever --home says
    directory = directory if directory is not None else default_directory()

    def quiet(_message: str) -> None:
        pass

    result = run_demo(
        directory,
        rows=rows,
        say=quiet if as_json else click.echo,
        show_status=None if as_json else _show_status,
    )
    if as_json:
        emit_json(result.to_dict())
    else:
        click.echo(f"\ndone in {result.seconds:.0f} s.")
        _next_steps(Path(result.directory), Path(result.home))
    problems = [name for name, c in result.capacities.items() if not c.model_reads_back_equal]
    if problems:
        fail(f"the model of {', '.join(problems)} did not read back equal to the table")
    if not (result.revocation_held and result.hr_restored_after_enable):
        fail("revoking the hr key did not behave as promised")
