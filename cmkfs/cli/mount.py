"""``cmkfs mount`` and ``cmkfs unmount``: a ``cmk`` store as a directory, through FUSE (docs/MOUNT.md).

The work is :mod:`cmkfs.mount`; this module reads the options and reports.  In the foreground the
command serves until the mount goes (Ctrl-C, SIGTERM, ``cmkfs unmount``); without ``--foreground``
it starts a detached mount process and returns once the mountpoint is mounted, printing its pid.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import click

from .files import load_policy_for
from .options import key_uri_option, parse_storage_options, secret_option_names
from .output import EXIT_CONFIG, EXIT_ERROR, EXIT_NOT_FOUND, fail, printable
from .state import CliState, pass_state

if TYPE_CHECKING:
    from ..mount.runner import MountSpec

__all__ = ["COMMANDS", "mount", "unmount"]


@click.command("mount")
@click.argument("places", nargs=-1, metavar="[URL] MOUNTPOINT")
@click.option("--capacity", metavar="NAME", default=None, help="Mount the root of this capacity (then no URL).")
@click.option("--read-only", "read_only", is_flag=True, help="Refuse every change (EROFS).")
@click.option(
    "--foreground", "-f", is_flag=True, help="Serve in this process until Ctrl-C, SIGTERM or `cmkfs unmount`."
)
@click.option(
    "--key",
    metavar="KEY_URI",
    default=None,
    help="Key new files are encrypted under (default: the key the policy gives the path, else the default key).",
)
@click.option(
    "--cache-ttl",
    "cache_ttl",
    type=click.FloatRange(0, 3600),
    default=None,
    help="Seconds a data key is used before the vault is asked again: reads through the mount stop within "
    "this long after the key is disabled (default: the policy's, else 900).",
)
@click.option(
    "--storage-options",
    "storage_options",
    metavar="JSON|@FILE|-",
    default=None,
    help='fsspec options keyed by protocol, e.g. \'{"abfs": {"account_name": "..."}}\'; '
    "@FILE reads them from FILE, - from stdin.  Credentials belong there or in environment "
    "variables: a foreground mount's command line is readable by every user.",
)
@click.option(
    "--log-file",
    "log_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Where a background mount logs (default: nowhere).  In the foreground the log goes to stderr.",
)
@pass_state
def mount(
    state: CliState,
    places: tuple[str, ...],
    capacity: str | None,
    read_only: bool,
    foreground: bool,
    key: str | None,
    cache_ttl: float | None,
    storage_options: str | None,
    log_file: str | None,
) -> None:
    """Mount URL (any cmk:: URL, plain URL or path) or a capacity at MOUNTPOINT.

    Programs read and write plaintext there; the store gets only ciphertext.  A
    file written there appears in the store, whole, when the program closes it.
    Appending, writing anywhere but at the end and truncating to a length other
    than 0 fail with EOPNOTSUPP; reads fail with EACCES within the key cache
    TTL after the key is disabled.  See docs/MOUNT.md.
    """
    from ..mount.runner import MountError, MountSpec

    if capacity is not None:
        if len(places) != 1:
            raise click.UsageError("with --capacity, give only the MOUNTPOINT")
        target, mountpoint = capacity, places[0]
        policy = load_policy_for(state)
        policy.get(capacity)  # an unknown name is an error that lists the known ones
    else:
        if len(places) != 2:
            raise click.UsageError("give a URL and a MOUNTPOINT (or --capacity NAME and a MOUNTPOINT)")
        target, mountpoint = places
        load_policy_for(state)
    options = parse_storage_options(storage_options)
    if storage_options is not None and storage_options != "-" and not storage_options.startswith("@"):
        secrets = secret_option_names(options)
        if secrets:
            # The command line of a running process is readable by every user (/proc/PID/cmdline).
            click.echo(
                printable(
                    f"cmkfs: warning: --storage-options on the command line holds {', '.join(secrets)}: "
                    "any user can read it while the mount runs; pass --storage-options @FILE or - (stdin), "
                    "or use environment variables"
                ),
                err=True,
            )
    spec = MountSpec(
        target=target,
        mountpoint=mountpoint,
        read_only=read_only,
        key=key_uri_option(key),
        cache_ttl=cache_ttl,
        storage_options=options,
        log_file=log_file,
    )
    try:
        if foreground:
            _foreground(spec)
            return
        from ..mount.runner import start_background

        pid = start_background(spec)
    except ImportError as exc:
        fail(str(exc), EXIT_CONFIG)
    except MountError as exc:
        fail(str(exc), EXIT_ERROR)
    click.echo(
        printable(f"mounted {target} at {spec.mountpoint} (pid {pid}); `cmkfs unmount {spec.mountpoint}` stops it")
    )


class _Printable(logging.Formatter):
    """Log lines quote paths from programs and the store: escaped for the terminal, as every line the CLI prints."""

    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record))


def _foreground(spec: MountSpec) -> None:
    from ..mount.runner import check_mountpoint, exit_process, load_fuse, open_target, serve

    load_fuse()  # a missing package is reported before anything is touched
    handler = logging.StreamHandler()
    handler.setFormatter(_Printable("cmkfs mount: %(message)s"))
    log = logging.getLogger("cmkfs.mount")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    spec.mountpoint = check_mountpoint(spec.mountpoint)
    fs, root = open_target(spec)
    mode = " read-only" if spec.read_only else ""

    def ready() -> None:
        log.info(
            "mounted %s%s at %s (pid %d); Ctrl-C or `cmkfs unmount` unmounts",
            spec.target,
            mode,
            spec.mountpoint,
            os.getpid(),
        )

    serve(fs, root, spec.mountpoint, read_only=spec.read_only, on_ready=ready)
    exit_process(0)  # unmounted: done (see exit_process for why not a normal return)


@click.command("unmount")
@click.argument("mountpoint", metavar="MOUNTPOINT")
def unmount(mountpoint: str) -> None:
    """Unmount a cmkfs mount.

    Fails (exit 1) if programs still have files open under it, and says so:
    close them, or send the mount process SIGTERM (it refuses new opens and
    unmounts once they are closed).  Exit 3 if nothing is mounted there.
    """
    from ..mount.runner import MountError, NotMountedError
    from ..mount.runner import unmount as unmount_path

    try:
        unmount_path(mountpoint)
    except NotMountedError as exc:
        fail(str(exc), EXIT_NOT_FOUND)
    except MountError as exc:
        fail(str(exc), EXIT_ERROR)
    click.echo(printable(f"unmounted {os.path.realpath(mountpoint)}"))


COMMANDS = (mount, unmount)
