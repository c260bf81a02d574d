"""``cmkfs encrypt`` and ``cmkfs decrypt``: turning CMK on for existing data, and authorised exports.

``encrypt`` converts plaintext files in place (:func:`cmkfs.admin.convert.encrypt_files`): each file is replaced
whole by its ciphertext or left as it was, files already encrypted are skipped, so running it again finishes what an
interrupted run left.  ``decrypt`` writes plaintext to local files, never over or beside the source
(:func:`cmkfs.admin.convert.check_export_destination`).  Problems go to stderr one line per file, the summary to
stdout (one JSON document with ``--json``).  The user's view: docs/KEYS.md ("Encrypt, decrypt and file commands").
"""

from __future__ import annotations

import click

from .files import (
    fail_for,
    json_option,
    key_option,
    load_policy_for,
    report_results,
    run_export,
    storage_option,
)
from .options import key_uri_option, parse_storage_options
from .output import emit_json, printable
from .state import CliState, pass_state

__all__ = ["COMMANDS", "decrypt_command", "encrypt_command"]


def _workers_option(f: click.decorators.FC) -> click.decorators.FC:
    return click.option(
        "--workers",
        type=click.IntRange(1, 64),
        default=8,
        show_default=True,
        help="Files converted at once.",
    )(f)


@click.command("encrypt")
@click.argument("target", metavar="URL|CAPACITY")
@key_option
@click.option("--dry-run", is_flag=True, help="Say what would be encrypted; change nothing.")
@_workers_option
@storage_option
@json_option
@pass_state
def encrypt_command(
    state: CliState,
    target: str,
    key: str | None,
    dry_run: bool,
    workers: int,
    storage_options: str | None,
    as_json: bool,
) -> None:
    """Encrypt the plaintext files of a capacity or URL in place.

    Each file is replaced by its ciphertext atomically (the plaintext stays until the ciphertext is complete);
    files already encrypted are skipped, so a second run finishes an interrupted one.  A file that changes while
    it is encrypted is left as it was and reported.
    """
    from ..admin.convert import (
        ALREADY_ENCRYPTED,
        CHANGED,
        ENCRYPTED,
        ENCRYPTED_LINKED,
        FAILED,
        SKIPPED_LINK,
        WOULD_ENCRYPT,
        encrypt_files,
        files_under,
        open_location,
    )

    policy = load_policy_for(state)
    loc = open_location(target, policy, key=key_uri_option(key), storage_options=parse_storage_options(storage_options))
    files = files_under(loc)
    write_key = loc.fs.key_for_path(loc.path)  # a key that contradicts the capacity's is refused here
    if not dry_run and write_key is None:
        from ..config import default_key_uri

        default_key_uri()  # raises the message that says how to configure a key, before any file is read
    results = report_results(encrypt_files(loc.fs, files, dry_run=dry_run, workers=workers), len(files), "encrypt")
    for r in results:
        if r.outcome == ENCRYPTED_LINKED:  # converted, but its other names still hold the plaintext
            click.echo(f"cmkfs: warning: {printable(r.message())}", err=True)
    counts = {
        name: sum(1 for r in results if r.outcome == name)
        for name in (ENCRYPTED, ENCRYPTED_LINKED, WOULD_ENCRYPT, ALREADY_ENCRYPTED, CHANGED, SKIPPED_LINK, FAILED)
    }
    summary = {
        "files": len(results),
        "key": write_key,
        "dry_run": dry_run,
        "bytes": sum(r.size for r in results if r.outcome in (ENCRYPTED, ENCRYPTED_LINKED, WOULD_ENCRYPT)),
        **counts,
    }
    if as_json:
        emit_json({"files": [r.to_dict() for r in results], "summary": summary})
    else:
        done = (
            f"would encrypt {counts[WOULD_ENCRYPT]}"
            if dry_run
            else f"encrypted {counts[ENCRYPTED] + counts[ENCRYPTED_LINKED]}"
            + (
                f" ({counts[ENCRYPTED_LINKED]} with other hard links still plaintext)"
                if counts[ENCRYPTED_LINKED]
                else ""
            )
        )
        click.echo(
            f"{done}, already encrypted {counts[ALREADY_ENCRYPTED]}, changed {counts[CHANGED]}, "
            f"symlinks skipped {counts[SKIPPED_LINK]}, failed {counts[FAILED]} "
            f"(key {printable(str(write_key))})"
        )
    fail_for(results, "were not encrypted")


@click.command("decrypt")
@click.argument("src", metavar="SRC")
@click.argument("dest", metavar="DEST")
@click.option("--recursive", "-r", is_flag=True, help="Every file under a directory SRC.")
@click.option("--force", is_flag=True, help="Overwrite existing local files.")
@_workers_option
@storage_option
@json_option
@pass_state
def decrypt_command(
    state: CliState,
    src: str,
    dest: str,
    recursive: bool,
    force: bool,
    workers: int,
    storage_options: str | None,
    as_json: bool,
) -> None:
    """Export decrypted files from SRC (a cmk:: URL, capacity name, URL or path) to the local path DEST.

    DEST may not be the source, inside it, hold it, or lie in any capacity: plaintext is never written where the
    ciphertext lives.  Each file appears whole or not at all; existing files are kept unless --force.
    """
    run_export(
        state,
        src,
        dest,
        recursive=recursive,
        force=force,
        as_json=as_json,
        workers=workers,
        storage_options=storage_options,
    )


COMMANDS = (encrypt_command, decrypt_command)
