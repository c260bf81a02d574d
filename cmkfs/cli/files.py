"""``cmkfs ls | cat | get | put | cp``: everyday file commands over ``cmk``.

A TARGET is a ``cmk::`` URL, a capacity name, or a plain URL or path (read and written through ``cmk`` for you);
files written are encrypted under ``--key``, else the key the policy gives the path, else the default key.  The
library side is :mod:`cmkfs.admin.convert`; the user's view is docs/KEYS.md ("Encrypt, decrypt and file commands").

``cat`` writes plaintext to stdout.  To a terminal it writes only text (UTF-8 without control characters other than
tab, newline and carriage return) and stops at the first chunk that is not, unless ``--force``: a decrypted file must
not drive the terminal any more than a hostile file name may.
"""

from __future__ import annotations

import codecs
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from ..config import ENV_HOME
from ..errors import CMKError
from .options import key_uri_option, parse_storage_options
from .output import EXIT_ERROR, emit_json, exit_code_for, fail, printable
from .state import CliState, pass_state

if TYPE_CHECKING:
    from ..admin.convert import FileResult, Location
    from ..policy import Policy

__all__ = [
    "ls_command",
    "cat_command",
    "get_command",
    "put_command",
    "cp_command",
    "load_policy_for",
    "progress",
    "report_results",
    "run_export",
]

# Plaintext per write to stdout.
CAT_CHUNK = 1024 * 1024
# Control characters text may contain on a terminal.
_TEXT_CONTROLS = frozenset("\t\n\r")


# -- shared by the file and conversion commands ------------------------------------


def load_policy_for(state: CliState) -> Policy:
    """The policy of ``--home``; the filesystem's default key comes from the same home."""
    from ..policy import load_policy

    if state.home is not None:
        os.environ[ENV_HOME] = str(state.home)  # for this process: the vault and default key of --home
    return load_policy(state.home)


def key_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--key",
        metavar="KEY_URI",
        default=None,
        help="Key new files are encrypted under (default: the key the policy gives the path, else the default key).",
    )(f)


def storage_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--storage-options",
        "storage_options",
        metavar="JSON",
        default=None,
        help='fsspec options keyed by protocol, e.g. \'{"abfs": {"account_name": "..."}}\' '
        "(prefer environment variables for credentials).",
    )(f)


def json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")(f)


def recursive_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--recursive", "-r", is_flag=True, help="Every file under a directory.")(f)


@contextmanager
def progress(total: int, label: str) -> Iterator[Callable[[], None]]:
    """A ``done/total`` bar on stderr while the block runs, only if stderr is a terminal; yields ``advance()``."""
    if total <= 1 or not sys.stderr.isatty():
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    with bar:
        task = bar.add_task(label, total=total)
        yield lambda: bar.advance(task)


def report_results(results: Iterable[FileResult], total: int, label: str) -> list[FileResult]:
    """Collect ``results`` with a progress bar; each problem goes to stderr as one line when it happens."""
    collected = []
    with progress(total, label) as advance:
        for result in results:
            collected.append(result)
            if not result.ok:
                click.echo(f"cmkfs: error: {printable(result.message())}", err=True)
            advance()
    return sorted(collected, key=lambda r: r.path)


def fail_for(results: list[FileResult], what: str) -> None:
    """Exit with the failures' shared code (else 1) if any file did not make it."""
    bad = [r for r in results if not r.ok]
    if not bad:
        return
    codes = {exit_code_for(r.error) if isinstance(r.error, CMKError) else EXIT_ERROR for r in bad}
    fail(f"{len(bad)} of {len(results)} file(s) {what}", codes.pop() if len(codes) == 1 else EXIT_ERROR)


def _open(state: CliState, target: str, key: str | None, storage_options: str | None, *, new: bool = False) -> Location:
    from ..admin.convert import open_location

    return open_location(
        target,
        load_policy_for(state),
        key=key_uri_option(key),
        storage_options=parse_storage_options(storage_options),
        new=new,
    )


def run_export(
    state: CliState,
    src: str,
    dest: str,
    *,
    recursive: bool,
    force: bool,
    as_json: bool,
    workers: int,
    storage_options: str | None,
) -> None:
    """``get`` and ``decrypt``: plaintext to local files, never over or beside the source."""
    from ..admin.convert import check_export_destination, export_files, files_under, open_location, plan_transfer

    policy = load_policy_for(state)
    loc = open_location(src, policy, storage_options=parse_storage_options(storage_options))
    local = check_export_destination(loc, dest, policy)
    files = files_under(loc, recursive=recursive)
    pairs = plan_transfer(
        loc.path, files, local, dest_is_dir=os.path.isdir(local) or dest.endswith(("/", os.sep)), sep=os.sep
    )
    results = report_results(
        export_files(loc, pairs, dest_root=local, policy=policy, overwrite=force, workers=workers),
        len(pairs),
        "decrypt",
    )
    done = sum(1 for r in results if r.ok)
    if as_json:
        emit_json({"files": [r.to_dict() for r in results], "summary": {"files": len(results), "decrypted": done}})
    else:
        click.echo(f"decrypted {done} of {len(results)} file(s) to {printable(dest)}")
    fail_for(results, "could not be decrypted")


# -- ls ------------------------------------------------------------------------------------


def _listed(entry: dict[str, Any]) -> dict[str, Any]:
    """What ``ls`` shows of a listing entry: plaintext size, and encrypted or not (None for a damaged file)."""
    is_file = entry.get("type") == "file"
    return {
        "name": entry["name"],
        "type": "file" if is_file else "directory",
        "size": entry.get("size") if is_file else None,
        "encrypted": entry.get("encrypted") if is_file else None,
        "damaged": bool(entry.get("damaged")),
    }


def _state_of(item: dict[str, Any]) -> str:
    if item["type"] != "file":
        return "dir"
    if item["damaged"]:
        return "damaged"
    return "encrypted" if item["encrypted"] else "PLAINTEXT"


@click.command("ls")
@click.argument("targets", metavar="TARGET...", nargs=-1, required=True)
@recursive_option
@storage_option
@json_option
@pass_state
def ls_command(
    state: CliState, targets: tuple[str, ...], recursive: bool, storage_options: str | None, as_json: bool
) -> None:
    """List files with their plaintext sizes and whether each is encrypted.

    TARGET is a cmk:: URL, a capacity name, or a plain URL or path.
    """
    listing: list[dict[str, Any]] = []
    for target in targets:
        loc = _open(state, target, None, storage_options)
        if recursive:
            found = loc.fs.find(loc.path, withdirs=True, detail=True)
            entries = [found[name] for name in sorted(found) if name != loc.path]
        else:
            entries = sorted(loc.fs.ls(loc.path, detail=True), key=lambda e: str(e["name"]))
        listing.extend(_listed(entry) for entry in entries)
    if as_json:
        emit_json(listing)
        return
    for item in listing:
        size = "" if item["size"] is None else str(item["size"])
        click.echo(f"{size:>14}  {_state_of(item):<9}  {printable(item['name'])}")


# -- cat -----------------------------------------------------------------------------------


def _terminal_safe(decoder: codecs.IncrementalDecoder, chunk: bytes, final: bool) -> bool:
    try:
        text = decoder.decode(chunk, final)
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in _TEXT_CONTROLS or ch == " " for ch in text)


@click.command("cat")
@click.argument("targets", metavar="TARGET...", nargs=-1, required=True)
@click.option("--force", is_flag=True, help="Write to a terminal even what is not plain text.")
@storage_option
@pass_state
def cat_command(state: CliState, targets: tuple[str, ...], force: bool, storage_options: str | None) -> None:
    """Decrypt files to stdout.

    To a terminal only plain text is written (no control or escape characters); redirect the output, or pass
    --force, for anything else.
    """
    out = sys.stdout.buffer
    guard = not force and sys.stdout.isatty()
    for target in targets:
        loc = _open(state, target, None, storage_options)
        decoder = codecs.getincrementaldecoder("utf-8")()
        with loc.fs.open(loc.path, "rb") as f:
            while True:
                chunk = f.read(CAT_CHUNK)
                if guard and not _terminal_safe(decoder, chunk, final=not chunk):
                    out.flush()
                    fail(f"{target} is not plain text: redirect the output or pass --force to write it to a terminal")
                if not chunk:
                    break
                out.write(chunk)
        out.flush()


# -- get, put, cp ----------------------------------------------------------------------------


@click.command("get")
@click.argument("src", metavar="SRC")
@click.argument("dest", metavar="DEST")
@recursive_option
@click.option("--force", is_flag=True, help="Overwrite existing local files.")
@storage_option
@json_option
@pass_state
def get_command(
    state: CliState, src: str, dest: str, recursive: bool, force: bool, storage_options: str | None, as_json: bool
) -> None:
    """Decrypt SRC to the local path DEST (into it, if DEST is a directory).

    Each file appears whole or not at all.  DEST may not overlap SRC or lie in a capacity (as for decrypt).
    """
    from ..admin.convert import WORKERS

    run_export(
        state,
        src,
        dest,
        recursive=recursive,
        force=force,
        as_json=as_json,
        workers=WORKERS,
        storage_options=storage_options,
    )


def _transfer_summary(results: list[FileResult], verb: str, as_json: bool) -> None:
    done = sum(1 for r in results if r.ok)
    if as_json:
        emit_json({"files": [r.to_dict() for r in results], "summary": {"files": len(results), verb: done}})
    else:
        for r in results:
            if r.ok:
                click.echo(printable(f"{r.path} -> {r.dest}"))
        click.echo(f"{verb} {done} of {len(results)} file(s)")


@click.command("put")
@click.argument("src", metavar="LOCAL", type=click.Path(exists=True, path_type=str))
@click.argument("dest", metavar="TARGET")
@recursive_option
@key_option
@storage_option
@json_option
@pass_state
def put_command(
    state: CliState,
    src: str,
    dest: str,
    recursive: bool,
    key: str | None,
    storage_options: str | None,
    as_json: bool,
) -> None:
    """Encrypt the local file (or, with -r, tree) LOCAL to TARGET (into it, if TARGET is a directory)."""
    from ..admin.convert import WORKERS, plan_transfer, put_files

    dst = _open(state, dest, key, storage_options, new=True)
    local = os.path.abspath(src)
    if os.path.isdir(local):
        if not recursive:
            fail(f"{src} is a directory (pass --recursive)")
        files = sorted(os.path.join(d, n) for d, _, names in os.walk(local) for n in names)
        rel = [os.path.relpath(f, local).replace(os.sep, "/") for f in files]
        pairs = [(f, dst.path.rstrip("/") + "/" + r) for f, r in zip(files, rel, strict=True)]
    else:
        into = dst.fs.isdir(dst.path) or dest.endswith("/")
        pairs = plan_transfer(local, [local], dst.path, dest_is_dir=into, sep="/")
    results = report_results(put_files(dst, pairs, workers=WORKERS), len(pairs), "encrypt")
    _transfer_summary(results, "encrypted", as_json)
    fail_for(results, "could not be encrypted")


@click.command("cp")
@click.argument("src", metavar="SRC")
@click.argument("dest", metavar="DEST")
@recursive_option
@key_option
@storage_option
@json_option
@pass_state
def cp_command(
    state: CliState,
    src: str,
    dest: str,
    recursive: bool,
    key: str | None,
    storage_options: str | None,
    as_json: bool,
) -> None:
    """Copy encrypted files, re-encrypted under DEST's key (the plaintext stays in memory)."""
    from ..admin.convert import WORKERS, copy_files, files_under, plan_transfer

    loc = _open(state, src, None, storage_options)
    dst = _open(state, dest, key, storage_options, new=True)
    files = files_under(loc, recursive=recursive)
    into = dst.fs.isdir(dst.path) or dest.endswith("/")
    pairs = plan_transfer(loc.path, files, dst.path, dest_is_dir=into, sep="/")
    results = report_results(copy_files(loc, dst, pairs, workers=WORKERS), len(pairs), "copy")
    _transfer_summary(results, "copied", as_json)
    fail_for(results, "could not be copied")


COMMANDS = (ls_command, cat_command, get_command, put_command, cp_command)
