"""``cmkfs status``, ``verify`` and ``clean`` over a capacity, a URL, or every capacity (:mod:`cmkfs.admin`).

Reports go to stdout (one JSON document with ``--json``); progress goes to stderr, and only when stderr is a
terminal.  Paths, key URIs and reasons come from storage and headers: every line goes through
:func:`.output.printable`.  Exit codes: docs/KEYS.md ("Status, verify, clean").
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

import click

from ..config import ENV_HOME
from .options import parse_storage_options
from .output import (
    EXIT_CONFIG,
    EXIT_ERROR,
    EXIT_FORMAT,
    EXIT_INTEGRITY,
    EXIT_NOT_FOUND,
    EXIT_REVOKED,
    EXIT_VAULT,
    emit_json,
    exit_code_for,
    fail,
    printable,
)
from .state import CliState, pass_state

if TYPE_CHECKING:
    from ..admin.keystate import Store
    from ..admin.status import StoreStatus
    from ..admin.verify import VerifyResult
    from ..policy import Policy

__all__ = ["status", "verify", "clean", "parse_duration"]


# verify's outcomes: what a person reads, and the exit code (the first code present, in this order, wins).
_OUTCOMES = {
    "integrity": ("integrity failure", EXIT_INTEGRITY),
    "truncated": ("truncated", EXIT_INTEGRITY),
    "plaintext": ("plaintext (not encrypted)", EXIT_FORMAT),
    "foreign": ("foreign format", EXIT_FORMAT),
    "key_revoked": ("key revoked or disabled", EXIT_REVOKED),
    "key_not_found": ("key not found", EXIT_NOT_FOUND),
    "vault_unavailable": ("vault unavailable", EXIT_VAULT),
    "untrusted_vault": ("untrusted vault", EXIT_CONFIG),
    "error": ("storage error", EXIT_ERROR),
}
_EXIT_ORDER = (EXIT_INTEGRITY, EXIT_FORMAT, EXIT_REVOKED, EXIT_NOT_FOUND, EXIT_VAULT, EXIT_CONFIG, EXIT_ERROR)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds in ``90``, ``90s``, ``30m``, ``24h`` or ``7d``."""
    match = _DURATION.match(text)
    if match is None:
        raise click.BadParameter(f"{text!r} is not a duration such as 90s, 30m, 24h or 7d", param_hint="--older-than")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _setup(state: CliState, target: str | None) -> tuple[Policy, list[Store]]:
    from ..admin.keystate import stores
    from ..policy import load_policy

    if state.home is not None:
        os.environ[ENV_HOME] = str(state.home)  # the vault and policy of --home, for this process
    policy = load_policy(state.home)
    return policy, stores(policy, target)


def _common(func: Any) -> Any:
    func = click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of lines.")(func)
    func = click.option(
        "--storage-options",
        "storage_options",
        metavar="JSON",
        default=None,
        help='fsspec options keyed by protocol, e.g. \'{"abfs": {"connection_string": "..."}}\' '
        "(prefer environment variables for credentials).",
    )(func)
    return click.argument("target", metavar="[CAPACITY|URL]", required=False)(func)


def _label(store: Store) -> str:
    return f"capacity {store.capacity} ({store.url})" if store.capacity else store.url


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "age unknown"
    if seconds < 120:
        return f"{seconds:.0f} s old"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min old"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h old"
    return f"{seconds / 86400:.1f} days old"


# -- status -------------------------------------------------------------------------------------------------------


@click.command("status")
@_common
@click.option(
    "--files", "all_files", is_flag=True, help="Also list every file that is not current (--json: every file)."
)
@pass_state
def status(state: CliState, target: str | None, storage_options: str | None, as_json: bool, all_files: bool) -> None:
    """Which files are under the key the policy gives them, per capacity and workspace.

    With no argument: every capacity of the policy.  Reads one header per
    file and unwraps nothing.  A workspace (first-level folder) is in sync
    when every file in it is under the policy key's current version.
    """
    from ..admin.keystate import key_state
    from ..admin.status import store_status
    from ..admin.walk import list_files, open_store, stderr_progress

    options = parse_storage_options(storage_options)
    _, targets = _setup(state, target)
    reports: list[StoreStatus] = []
    for store in targets:
        fs, root = open_store(store.url, options)
        key = key_state(store.key_uri)
        try:
            entries = list_files(fs, root)
        except FileNotFoundError:
            if store.capacity is None:
                raise
            entries = None
        if entries is None:
            report = store_status(fs, root, key, capacity=store.capacity, url=store.url)
        else:
            with stderr_progress(printable(f"status {store.capacity or store.url}"), len(entries)) as progress:
                report = store_status(
                    fs, root, key, capacity=store.capacity, url=store.url, entries=entries, progress=progress
                )
        reports.append(report)
        if not as_json:
            _print_status(store, report, all_files)
    if as_json:
        emit_json({"stores": [r.to_dict(all_files=all_files) for r in reports]})
    codes = set()
    for store, report in zip(targets, reports, strict=True):
        if report.key.error is not None:
            click.echo(f"cmkfs: error: {printable(_label(store) + ': ' + str(report.key.error))}", err=True)
            codes.add(exit_code_for(report.key.error))
    if codes:
        fail("the policy key of some store could not be checked", codes.pop() if len(codes) == 1 else EXIT_ERROR)


_COLUMNS = (
    ("current", "current"),
    ("older_version", "older"),
    ("other_key", "other-key"),
    ("key_unchecked", "unchecked"),
    ("plaintext", "plaintext"),
    ("unreadable", "unreadable"),
)


def _print_status(store: Store, report: StoreStatus, all_files: bool) -> None:
    from ..admin.status import IN_SYNC, NOT_IN_SYNC

    key = report.key
    if key.key_uri is None:
        shown_key = "no key configured"
    else:
        shown_key = f"key {key.key_uri} version {key.version or '?'}"
        if key.enabled is False:
            shown_key += " (DISABLED)"
        if key.error is not None:
            shown_key += " (vault could not be asked)"
    click.echo(printable(f"{_label(store)}: {shown_key}"))
    if not report.exists:
        click.echo("  (no files yet: the root does not exist)")
        return
    headers = ["workspace", "files", "bytes"] + [name for _, name in _COLUMNS] + ["partial", "sync"]
    rows = []
    for ws in sorted(report.workspaces.values(), key=lambda w: w.name):
        counts = ws.counts
        rows.append(
            [ws.name or "(root)", str(counts.files), _size(counts.bytes)]
            + [str(counts.states[s]) for s, _ in _COLUMNS]
            + [str(counts.partial), IN_SYNC if counts.in_sync else NOT_IN_SYNC]
        )
    total = report.total
    rows.append(
        ["total", str(total.files), _size(total.bytes)]
        + [str(total.states[s]) for s, _ in _COLUMNS]
        + [str(total.partial), IN_SYNC if total.in_sync else NOT_IN_SYNC]
    )
    widths = [max(len(h), *(len(printable(r[i])) for r in rows)) for i, h in enumerate(headers)]
    for row in [headers, *rows]:
        cells = [
            printable(c).ljust(w) if i == 0 else printable(c).rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        click.echo("  " + "  ".join(cells).rstrip())
    if all_files:
        for f in report.files:
            if f.state != "current":
                where = f" ({f.key_uri} v{f.key_version})" if f.key_uri else ""
                why = f": {f.reason}" if f.reason else ""
                click.echo(printable(f"  {f.path}: {f.state}{where}{why}"))
    if report.partials:
        click.echo(f"  stray partial files of killed writers ({len(report.partials)}; cmkfs clean removes old ones):")
        for p in report.partials:
            click.echo(printable(f"    {p.path}  {_age(p.age)}  {_size(p.size)}"))


# -- verify -------------------------------------------------------------------------------------------------------


@click.command("verify")
@_common
@pass_state
def verify(state: CliState, target: str | None, storage_options: str | None, as_json: bool) -> None:
    """Authenticate every byte of every file, and name each file that fails.

    With no argument: every capacity of the policy.  Every file is read
    whole and decrypted in memory (nothing is written); one key cache serves
    the walk, so each distinct data key costs one vault call.  Exit 6 if any
    file fails authentication, 8 if a file is not encrypted, else the code of
    a key or vault error, else 0.
    """
    from ..admin.keystate import trusted_keys
    from ..admin.verify import reading_filesystem, verify_tree
    from ..admin.walk import list_files, open_store, stderr_progress

    options = parse_storage_options(storage_options)
    policy, targets = _setup(state, target)
    trusted = trusted_keys(policy)
    results: list[tuple[Store, VerifyResult]] = []
    missing: list[Store] = []
    for store in targets:
        fs, root = open_store(store.url, options)
        try:
            entries = list_files(fs, root)
        except FileNotFoundError:
            if store.capacity is None:
                raise
            missing.append(store)  # a capacity nothing was written to yet: nothing to verify
            continue
        cmk = reading_filesystem(fs, trusted_vaults=trusted, cache_ttl=policy.cache_ttl)
        with stderr_progress(printable(f"verify {store.capacity or store.url}"), len(entries)) as progress:
            for result in verify_tree(cmk, root, entries=entries, progress=progress):
                results.append((store, result))
                if not as_json and not result.ok:
                    label, _ = _OUTCOMES[result.outcome]
                    click.echo(printable(f"{result.path}: {label}: {result.reason}"))
    failed = [r for _, r in results if not r.ok]
    if as_json:
        emit_json(
            {
                "files": [dict(r.to_dict(), capacity=s.capacity, store=s.url) for s, r in results],
                "summary": {
                    "files": len(results),
                    "ok": len(results) - len(failed),
                    "failed": len(failed),
                    "by_outcome": {
                        o: sum(1 for r in failed if r.outcome == o) for o in sorted({r.outcome for r in failed})
                    },
                },
            }
        )
    else:
        for store in missing:
            click.echo(printable(f"{_label(store)}: no files yet"))
        click.echo(f"verified {len(results)} file(s): {len(results) - len(failed)} ok, {len(failed)} failed")
    if failed:
        codes = {_OUTCOMES[r.outcome][1] for r in failed}
        code = next(c for c in _EXIT_ORDER if c in codes)
        fail(f"{len(failed)} of {len(results)} file(s) failed verification", code)


# -- clean --------------------------------------------------------------------------------------------------------


@click.command("clean")
@_common
@click.option(
    "--older-than",
    "older_than",
    metavar="DURATION",
    default="24h",
    show_default=True,
    help="Remove only partial files whose last write is older than this (90s, 30m, 24h, 7d).",
)
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
@pass_state
def clean(
    state: CliState, target: str | None, storage_options: str | None, as_json: bool, older_than: str, dry_run: bool
) -> None:
    """Remove partial files that killed writers left behind.

    With no argument: every capacity of the policy.  Only files named
    .NAME.cmkfs-partial-XXXXXXXXXXXXXXXX whose modification time is older
    than --older-than are removed: a live writer keeps writing to its
    partial file, so its modification time stays recent.
    """
    from ..admin.clean import CleanResult, clean_partials
    from ..admin.walk import open_store

    grace = parse_duration(older_than)
    options = parse_storage_options(storage_options)
    _, targets = _setup(state, target)
    results: list[CleanResult] = []
    for store in targets:
        fs, root = open_store(store.url, options)
        try:
            found = list(clean_partials(fs, root, older_than=grace, dry_run=dry_run))
        except FileNotFoundError:
            if store.capacity is None:
                raise
            continue  # a capacity nothing was written to yet
        results += found
        if not as_json:
            for r in found:
                words = {"removed": "removed", "would_remove": "would remove", "kept": "kept (too recent)"}
                verb = words.get(r.action, r.action)
                why = f": {r.reason}" if r.reason else ""
                click.echo(printable(f"{verb} {r.path}  {_age(r.age)}  {_size(r.size)}{why}"))
    count = {a: sum(1 for r in results if r.action == a) for a in ("removed", "would_remove", "kept", "gone", "failed")}
    if as_json:
        emit_json({"files": [r.to_dict() for r in results], "summary": dict(count, dry_run=dry_run, older_than=grace)})
    else:
        done = f"would remove {count['would_remove']}" if dry_run else f"removed {count['removed']}"
        click.echo(f"{done}, kept {count['kept']}, failed {count['failed']} partial file(s)")
    if count["failed"]:
        fail(f"{count['failed']} partial file(s) could not be removed", EXIT_ERROR)
