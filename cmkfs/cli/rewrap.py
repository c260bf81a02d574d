"""``cmkfs rewrap``: move existing files to a key's current version, or to another key (:mod:`cmkfs.rewrap`).

Results go to stdout, one line per file and a summary (or one JSON document with ``--json``); per-file errors go
to stderr.  Paths, key URIs, versions and messages come from storage and headers: every line goes through
:func:`.output.printable`.  The exit code is 0 when every file was re-wrapped or already current; otherwise the
code of the failures' error class if they share one, else 1.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import click

from ..config import ENV_HOME
from ..errors import CMKError, ConfigurationError
from .output import EXIT_ERROR, emit_json, exit_code_for, fail, printable
from .state import CliState, pass_state

if TYPE_CHECKING:
    from ..filesystem import CMKFileSystem
    from ..rewrap import RewrapResult

__all__ = ["command", "open_url"]

#: ``--storage-options``: fsspec options keyed by protocol.
StorageOptions = dict[str, dict[str, Any]]


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
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    if not isinstance(fs, CMKFileSystem):
        raise ConfigurationError(f"{url} does not lead to a cmk filesystem")
    return fs, str(path)


def _parse_options(text: str | None) -> StorageOptions:
    if text is None:
        return {}
    try:
        options = json.loads(text)
    except ValueError as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise click.BadParameter(f"not valid JSON ({reason})", param_hint="--storage-options") from None
    if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
        raise click.BadParameter(
            'a JSON object keyed by protocol, e.g. {"cmk": {"cache_ttl": 60}, "abfs": {...}}',
            param_hint="--storage-options",
        )
    return options


def _describe(result: RewrapResult) -> str:
    """One line for a file; the caller escapes it (paths come from storage, names from headers)."""
    old = f"{result.old_key_uri} v{result.old_version}"
    new = f"v{result.new_version}"
    if result.new_key_uri != result.old_key_uri:
        new = f"{result.new_key_uri} {new}"
    if not result.changed:
        return f"{result.path}: unchanged ({old})"
    if result.dry_run:
        return f"{result.path}: would re-wrap {old} -> {new}"
    return f"{result.path}: {old} -> {new}"


@click.command("rewrap")
@click.argument("urls", metavar="URL...", nargs=-1, required=True)
@click.option(
    "--key",
    "key",
    metavar="KEY_URI",
    default=None,
    help="Key to re-wrap under (default: the filesystem's key, i.e. $CMKFS_KEY or the default key). "
    "Another key than the files' moves them to it.",
)
@click.option("--recursive", "-r", is_flag=True, help="Re-wrap every file under a directory URL.")
@click.option("--dry-run", is_flag=True, help="Read headers and unwrap the data keys, change nothing.")
@click.option(
    "--storage-options",
    "storage_options",
    metavar="JSON",
    default=None,
    help='fsspec options keyed by protocol, e.g. \'{"abfs": {"connection_string": "..."}}\' '
    "(prefer environment variables for credentials).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of lines.")
@pass_state
def command(
    state: CliState,
    urls: tuple[str, ...],
    key: str | None,
    recursive: bool,
    dry_run: bool,
    storage_options: str | None,
    as_json: bool,
) -> None:
    """Re-wrap the data keys of encrypted files without re-encrypting them.

    URL is an fsspec URL such as cmk::file:///data/store or
    cmk::abfs://container/dir, or a local path.  Files already under the
    key's current version are left untouched.
    """
    from ..rewrap import RewrapResult, rewrap_tree

    options = _parse_options(storage_options)
    if state.home is not None:
        os.environ[ENV_HOME] = str(state.home)  # the vault and default key of --home, for this process
    results: list[RewrapResult] = []
    for url in urls:
        fs, path = open_url(url, options)
        if not recursive and fs.isdir(path):
            exc = IsADirectoryError(f"{path} is a directory; pass --recursive to re-wrap the files under it")
            results.append(RewrapResult(path, None, None, None, None, False, dry_run=dry_run, error=exc))
            _report(results[-1], as_json)
            continue
        try:
            for result in rewrap_tree(fs, path, key=key, dry_run=dry_run):
                results.append(result)
                _report(result, as_json)
        except FileNotFoundError as exc:  # only the URL itself: the walk reports missing files as results
            results.append(RewrapResult(path, None, None, None, None, False, dry_run=dry_run, error=exc))
            _report(results[-1], as_json)

    errors = [r.error for r in results if r.error is not None]
    changed = sum(1 for r in results if r.changed)
    unchanged = len(results) - changed - len(errors)
    summary = {
        "files": len(results),
        "rewrapped" if not dry_run else "would_rewrap": changed,
        "unchanged": unchanged,
        "failed": len(errors),
        "dry_run": dry_run,
        "bytes_written": sum(r.bytes_written for r in results),
    }
    if as_json:
        emit_json({"files": [r.to_dict() for r in results], "summary": summary})
    else:
        verb = "would re-wrap" if dry_run else "re-wrapped"
        click.echo(f"{verb} {changed}, unchanged {unchanged}, failed {len(errors)}")
    if errors:
        codes = {_code(e) for e in errors}
        fail(
            f"{len(errors)} of {len(results)} file(s) could not be re-wrapped",
            codes.pop() if len(codes) == 1 else EXIT_ERROR,
        )


def _code(exc: BaseException) -> int:
    return exit_code_for(exc) if isinstance(exc, CMKError) else EXIT_ERROR


def _report(result: RewrapResult, as_json: bool) -> None:
    if result.error is not None:
        message = _message(result.error)
        where = "" if result.path in message else f"{result.path}: "
        click.echo(f"cmkfs: error: {printable(where + message)}", err=True)
    elif not as_json:
        click.echo(printable(_describe(result)))


def _message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        return exc.strerror
    return str(exc) or type(exc).__name__
