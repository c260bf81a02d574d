"""``cmkfs drill``: a revocation drill on a scratch key, measured, with a report to keep (docs/DRILL.md).

The work is :func:`cmkfs.admin.drill.run_drill`; this module reads the options, prints the
table or the JSON report, writes the report file and sets the exit code.

The hidden option ``--reader-ttl S`` is for testing the drill itself: it gives the readers
a key cache TTL longer than the drill's (``--ttl``), so that a drill can be shown to fail
when a reader keeps keys past the bound.  A shorter one is refused (exit 7): the report
would pass a TTL the readers never used.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .options import parse_storage_options
from .output import EXIT_ERROR, emit_json, fail, printable
from .state import CliState, pass_state

if TYPE_CHECKING:
    from ..admin.drill import AgentFigures, DrillResult

__all__ = ["command"]

_HEADERS = ("agent", "kind", "pid", "ok before", "ok after disable", "refused after", "last data after", "verdict")


@click.command("drill")
@click.option(
    "--readers", type=click.IntRange(1, 32), default=3, show_default=True, help="Reader processes (or Dask tasks)."
)
@click.option("--dask", "use_dask", is_flag=True, help="Run the readers as tasks on a Dask LocalCluster.")
@click.option(
    "--mount",
    "through_mount",
    is_flag=True,
    help="Mount the canary folder (cmkfs mount, FUSE) and have the readers and the writer use it with plain "
    "file I/O: revocation measured through the kernel (needs /dev/fuse, fuse3 and mfusepy).",
)
@click.option(
    "--ttl",
    type=click.FloatRange(1, 3600),
    default=10.0,
    show_default=True,
    help="Key cache TTL of every agent, in seconds: the bound measured is TTL + 1 s.",
)
@click.option("--reader-ttl", type=click.FloatRange(0, 3600), default=None, hidden=True)
@click.option(
    "--target",
    metavar="URL",
    default=None,
    help="Where the canaries go, in a new folder cmkfs-drill-ID/ (default: a temporary local directory).",
)
@click.option(
    "--storage-options",
    "storage_options",
    metavar="JSON",
    default=None,
    help='fsspec options for the target keyed by protocol, e.g. \'{"abfs": {"account_name": "..."}}\' '
    "(never written to the report).",
)
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to write the JSON report (default: HOME/drills/drill-<UTC time>-<id>.json).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of the table.")
@pass_state
def command(
    state: CliState,
    readers: int,
    use_dask: bool,
    through_mount: bool,
    ttl: float,
    reader_ttl: float | None,
    target: str | None,
    storage_options: str | None,
    report_path: Path | None,
    as_json: bool,
) -> None:
    """Disable a scratch key while readers and a writer use it; measure when each is refused.

    A fresh key in a scratch vault (never one of yours), canary files in a new
    folder of the target, N readers and one writer in their own processes.
    Once all of them have used the key, it is disabled; the drill passes if
    every agent is refused in an attempt begun within TTL + 1 s of the
    disable call's return and none gets data (or publishes a file) in an
    attempt begun later.  The key, the canaries and the scratch vault are
    removed afterwards, also when interrupted (Ctrl-C, SIGTERM, SIGHUP).

    With --mount the canary folder is mounted (cmkfs mount, its cache TTL the
    readers') and every agent reads or writes through the mountpoint with
    plain file I/O; the mount is always unmounted afterwards.

    Exit 0 when the drill passed, 1 when it failed or could not finish.
    """
    from ..admin.drill import DrillConfig, DrillError, default_report_path, run_drill, termination_interrupts
    from ..config import cmkfs_home

    config = DrillConfig(
        readers=readers,
        use_dask=use_dask,
        mount=through_mount,
        ttl=ttl,
        reader_ttl=reader_ttl,
        target=target,
        storage_options=parse_storage_options(storage_options),
    )

    def say(message: str) -> None:
        # After a hang-up the terminal is gone and writing to it fails: the clean-up must go on regardless.
        with contextlib.suppress(OSError):
            click.echo(printable(f"drill: {message}"), err=True)

    try:
        with termination_interrupts():
            result = run_drill(config, say=say)
    except KeyboardInterrupt:
        fail("drill interrupted: no verdict (the scratch key and the canaries were removed)", EXIT_ERROR)
    except DrillError as exc:
        fail(f"drill stopped without a verdict: {exc}", EXIT_ERROR)
    path = report_path or default_report_path(cmkfs_home(state.home), result)
    written = _write(result, path)
    if as_json:
        emit_json(result.to_dict())
        click.echo(printable(f"report: {written}"), err=True)
    else:
        _print_table(result)
        click.echo(printable(f"report: {written}"))
    if not result.passed:
        fail(_failure_line(result), EXIT_ERROR)


def _write(result: DrillResult, path: Path) -> Path:
    from ..admin.drill import write_report

    return write_report(result, path)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _row(agent: AgentFigures) -> list[str]:
    verdict = "pass" if agent.passed else "FAIL: " + ", ".join(agent.failures)
    return [
        agent.name,
        agent.kind,
        "-" if agent.pid is None else str(agent.pid),
        str(agent.ok_before),
        str(agent.ok_after),
        _seconds(agent.refused_after),
        _seconds(agent.last_data_after),
        verdict,
    ]


def _print_table(result: DrillResult) -> None:
    rows = [list(_HEADERS), *(_row(a) for a in result.agents)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_HEADERS))]
    for row in rows:
        cells = [c.ljust(w) if i in (0, 1, 7) else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        click.echo(printable("  ".join(cells).rstrip()))
    if result.config.mount:
        writes = result.mount_writes
        click.echo(
            f"through a FUSE mount (cache TTL {result.config.reader_cache_ttl:g} s); writes closed without error: "
            f"{writes.get('closed_ok', 0)}, of them in the store: {writes.get('closed_ok_found', 0)}"
        )
    click.echo(result.summary())


def _failure_line(result: DrillResult) -> str:
    named = "; ".join(f"{a.name} ({a.kind}): {', '.join(a.failures)}" for a in result.failed_agents)
    return f"drill failed, bound {result.bound:g} s after the disable call returned: {named}"
