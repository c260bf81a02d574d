"""``cmkfs rewrap``: move existing files to their key's current version, or to another key (:mod:`cmkfs.rewrap`).

Results go to stdout: a summary of the outcomes (one line per file too with ``--verbose``), or one JSON document
listing every file with ``--json``; per-file errors go to stderr, one line each; a progress bar goes to stderr when
it is a terminal.  Paths, key URIs, versions and messages come from storage and headers: every line goes through
:func:`.output.printable`.  The exit code is 0 when every file was re-wrapped or already current (in a dry run:
proved readable); otherwise the code of the failures' error class if they share one, else 1.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import click

from ..config import ENV_HOME
from ..errors import CMKError, ConfigurationError
from .keys import existing_home
from .options import StorageOptions, key_uri_option, parse_storage_options
from .output import EXIT_ERROR, emit_json, exit_code_for, fail, printable
from .state import CliState, pass_state

if TYPE_CHECKING:
    from ..filesystem import CMKFileSystem
    from ..rewrap import RewrapResult

__all__ = ["command", "open_url"]

#: ``--storage-options``: fsspec options keyed by protocol.


def open_url(url: str, storage_options: StorageOptions | None = None) -> tuple[CMKFileSystem, str]:
    """``(CMKFileSystem, path)`` for ``url``.

    ``cmk::PROTOCOL://...`` is used as is; any other fsspec URL is read through ``cmk::`` (``abfs://c/d`` means
    ``cmk::abfs://c/d``); a plain path is a local one (``cmk::file://ABSOLUTE``).
    """
    import fsspec

    from ..filesystem import CMKFileSystem

    if "://" not in url and "::" not in url:
        url = "cmk::file://" + os.path.abspath(url)
    elif not url.startswith(("cmk::", "cmk://")):
        url = "cmk::" + url
    try:
        fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    except ImportError as exc:  # a backend this install lacks: the message says what to install
        raise ConfigurationError(f"{url}: {exc}") from exc
    if not isinstance(fs, CMKFileSystem):
        raise ConfigurationError(f"{url} does not lead to a cmk filesystem")
    return fs, str(path)


def _capacity_roots(state: CliState, urls: tuple[str, ...]) -> tuple[str, ...]:
    """A capacity name stands for its root (an existing local path of that name wins)."""
    if all("://" in u or os.path.exists(u) for u in urls):
        return urls
    from ..policy import load_policy

    capacities = load_policy(state.home).capacities
    return tuple(capacities[u].url if u in capacities and not os.path.exists(u) else u for u in urls)


def _describe(result: RewrapResult) -> str:
    """One line for a file; the caller escapes it (paths come from storage, names from headers)."""
    old = f"{result.old_key_uri} v{result.old_version}"
    new = f"v{result.new_version}"
    if result.new_key_uri != result.old_key_uri:
        new = f"{result.new_key_uri} {new}"
    proved = ", authenticated" if result.verified else ""
    if result.skipped_symlink:
        return f"{result.path}: skipped_symlink (a symbolic link is left as it is)"
    if not result.changed:
        return f"{result.path}: unchanged ({old}{proved})"
    if result.dry_run:
        return f"{result.path}: would re-wrap {old} -> {new}{proved}"
    return f"{result.path}: {old} -> {new}"


@click.command("rewrap")
@click.argument("urls", metavar="URL...", nargs=-1, required=True)
@click.option(
    "--key",
    "key",
    metavar="KEY",
    default=None,
    help="Move the files to this key (NAME for local://NAME, or a key URI).  Default: each file stays with "
    "the key it names and moves to that key's current version.",
)
@click.option(
    "--override-policy",
    is_flag=True,
    help="With --key: re-wrap files of a capacity under KEY even though the policy gives the capacity another key.",
)
@click.option("--recursive", "-r", is_flag=True, help="Re-wrap every file under a directory URL.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Change nothing, but unwrap every data key and authenticate every file (reads all of it).",
)
@click.option(
    "--storage-options",
    "storage_options",
    metavar="JSON",
    default=None,
    help='fsspec options keyed by protocol, e.g. \'{"abfs": {"connection_string": "..."}}\' '
    "(prefer environment variables for credentials).",
)
@click.option("--verbose", "-v", is_flag=True, help="Print one line per file, not only the summary.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document listing every file.")
@pass_state
def command(
    state: CliState,
    urls: tuple[str, ...],
    key: str | None,
    override_policy: bool,
    recursive: bool,
    dry_run: bool,
    storage_options: str | None,
    verbose: bool,
    as_json: bool,
) -> None:
    """Re-wrap the data keys of encrypted files without re-encrypting them.

    URL is a capacity name, an fsspec URL such as cmk::file:///data/store
    or cmk::abfs://container/dir, or a local path.  Each file moves to the
    current version of the key it already uses; files already there are
    left untouched.  Only --key moves files to another key.  A killed run
    leaves every file readable; run it again to finish.
    """
    from ..rewrap import RewrapResult, rewrap_tree

    options = parse_storage_options(storage_options)
    if state.home is not None:
        existing_home(state)  # a mistyped --home is an error, not "key not found" for every file
        os.environ[ENV_HOME] = str(state.home)  # the vault and default key of --home, for this process
    urls = _capacity_roots(state, urls)
    key = key_uri_option(key)
    if key is not None and not override_policy:
        for url in urls:
            _check_policy_key(state, url, key)  # before any file is touched
    results: list[RewrapResult] = []

    def record(result: RewrapResult) -> None:
        results.append(result)
        _report(result, verbose and not as_json)

    for url in urls:
        fs, path = open_url(url, options)
        if not recursive and fs.isdir(path):
            exc = IsADirectoryError(f"{path} is a directory; pass --recursive to re-wrap the files under it")
            record(RewrapResult(path, None, None, None, None, False, dry_run=dry_run, error=exc))
            continue
        try:
            with _progress(url) as progress:
                for result in rewrap_tree(fs, path, key=key, dry_run=dry_run, progress=progress):
                    record(result)
        except FileNotFoundError as exc:  # only the URL itself: the walk reports missing files as results
            record(RewrapResult(path, None, None, None, None, False, dry_run=dry_run, error=exc))

    counts = Counter(r.outcome for r in results)
    failed = counts["failed"]
    changed = counts["would_rewrap" if dry_run else "rewrapped"]
    summary = {
        "files": len(results),
        "rewrapped" if not dry_run else "would_rewrap": changed,
        "unchanged": counts["unchanged"],
        "skipped_symlink": counts["skipped_symlink"],
        "failed": failed,
        "dry_run": dry_run,
        "bytes_written": sum(r.bytes_written for r in results),
    }
    if as_json:
        emit_json({"files": [r.to_dict() for r in results], "summary": summary})
    else:
        verb = "would re-wrap" if dry_run else "re-wrapped"
        proved = f"; {len(results) - failed} file(s) unwrapped and authenticated" if dry_run else ""
        skipped = counts["skipped_symlink"]
        links = f", symlinks skipped {skipped}" if skipped else ""
        click.echo(f"{verb} {changed}, unchanged {counts['unchanged']}{links}, failed {failed}{proved}")
    if failed:
        codes = {_code(r.error) for r in results if r.error is not None}
        what = "proved readable" if dry_run else "re-wrapped"
        fail(f"{failed} of {len(results)} file(s) could not be {what}", codes.pop() if len(codes) == 1 else EXIT_ERROR)


def _check_policy_key(state: CliState, url: str, key: str) -> None:
    """Refuse ``--key`` for a URL in (or holding) a capacity whose policy key is another one."""
    from ..policy import load_policy, normalize_url
    from ..providers.base import split_key_uri

    policy = load_policy(state.home)
    where = normalize_url(url)
    wanted = split_key_uri(key)[0]
    for capacity in policy.capacities.values():
        if not (capacity.contains(where) or where == capacity.url or capacity.url.startswith(where + "/")):
            continue
        given = policy.key_for(capacity)
        if given is None or split_key_uri(given)[0] == wanted:
            continue
        name = capacity.name
        raise ConfigurationError(
            f"{url} is in capacity {name}, whose key is {given}, not {key}: to move the capacity to {key}, "
            f"change the policy first (cmkfs capacity assign {name} {key}), or pass --override-policy "
            "to re-wrap under it anyway"
        )


@contextmanager
def _progress(url: str) -> Iterator[Callable[[int, int], None] | None]:
    """A done/total bar on stderr while the walk runs, only when stderr is a terminal."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(escape(printable(url)), total=None)  # a URL is text, not rich markup

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _code(exc: BaseException | None) -> int:
    return exit_code_for(exc) if isinstance(exc, CMKError) else EXIT_ERROR


def _report(result: RewrapResult, verbose: bool) -> None:
    if result.error is not None:
        message = _message(result.error)
        where = "" if result.path in message else f"{result.path}: "
        click.echo(f"cmkfs: error: {printable(where + message)}", err=True)
    elif verbose:
        click.echo(printable(_describe(result)))
    elif result.skipped_symlink:
        click.echo(f"cmkfs: warning: {printable(result.path)}: a symbolic link, skipped", err=True)


def _message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        return exc.strerror
    return str(exc) or type(exc).__name__
