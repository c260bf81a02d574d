"""``clean``: remove the temp files writers left behind when they were killed.

A local write goes to ``.NAME.cmkfs-partial-XXXXXXXXXXXXXXXX`` beside its
target and is renamed over it on close; a process killed mid-write leaves
the temp file (ciphertext only, never published, hidden from ``cmk``
listings).  Only temp files whose **modification time** is older than a
grace period are removed, and the age is checked again just before each
removal.  Why that does not race a live writer: a writer appends its
sealed segments to its temp file as the write goes on (holding back at most
the last one or two), so the file's mtime keeps moving while the write is
alive; a temp file untouched for the grace period (a day by default)
belongs to a writer that has been dead, or has not produced a segment
(256 KiB by default), for that long; such a writer needs a longer
``--older-than``.  Should a stalled writer wake up after its temp file was
removed, its close fails loudly and publishes nothing: the old file stays
as it was.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fsspec.spec import AbstractFileSystem

from .walk import FileEntry, is_partial_file, list_files, mtime_of

__all__ = ["DEFAULT_GRACE", "CleanResult", "clean_partials"]

# A temp file untouched this long (seconds) belongs to a dead writer.
DEFAULT_GRACE = 24 * 3600.0


@dataclass(frozen=True)
class CleanResult:
    """One temp file: ``action`` is ``removed``, ``would_remove`` (dry run), ``kept`` (younger than the
    grace period, or of unknown age), ``gone`` (removed by someone else meanwhile) or ``failed``
    (``reason`` says why)."""

    path: str
    size: int
    age: float | None
    action: str
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "size": self.size,
            "age_seconds": self.age,
            "action": self.action,
            "reason": self.reason,
        }


def clean_partials(
    fs: AbstractFileSystem,
    root: str,
    *,
    older_than: float = DEFAULT_GRACE,
    dry_run: bool = False,
    now: float | None = None,
) -> Iterator[CleanResult]:
    """Remove temp files of writers under ``root`` on the target ``fs`` whose mtime is older than ``older_than``.

    Yields one result per temp file found, in path order.  Other files are
    never touched.  Raises ``FileNotFoundError`` if ``root`` does not exist.
    """
    if older_than < 0:
        raise ValueError("the grace period cannot be negative")
    for entry in list_files(fs, root):
        if not is_partial_file(fs, entry.path, entry.size):
            continue  # named like a temp file but holding other bytes: someone's file, never removed
        yield _clean_one(fs, entry, older_than, dry_run, now)


def _age(mtime: float | None, now: float | None) -> float | None:
    if mtime is None:
        return None
    return max(0.0, (time.time() if now is None else now) - mtime)


def _clean_one(
    fs: AbstractFileSystem, entry: FileEntry, older_than: float, dry_run: bool, now: float | None
) -> CleanResult:
    age = _age(entry.mtime, now)
    if age is None or age < older_than:
        return CleanResult(entry.path, entry.size, age, "kept")
    if dry_run:
        return CleanResult(entry.path, entry.size, age, "would_remove")
    try:
        # Once more just before removing: a writer may have resumed since the listing.
        fs.invalidate_cache(entry.path)
        age = _age(mtime_of(fs.info(entry.path)), now)
        if age is None or age < older_than:
            return CleanResult(entry.path, entry.size, age, "kept")
        if not is_partial_file(fs, entry.path):
            return CleanResult(entry.path, entry.size, age, "kept", "no longer a writer's temp file")
        fs.rm_file(entry.path)
    except FileNotFoundError:
        return CleanResult(entry.path, entry.size, age, "gone")
    except OSError as exc:
        return CleanResult(entry.path, entry.size, age, "failed", exc.strerror or str(exc))
    return CleanResult(entry.path, entry.size, age, "removed")
