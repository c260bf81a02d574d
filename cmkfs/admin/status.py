"""``status``: which files of a store are under the key policy gives it, read from headers alone.

For every file on the *target* filesystem (the ciphertext, so temp files of
writers and plaintext files are seen too) one small ranged read fetches the
header; nothing is unwrapped or decrypted.  Each file is one of:

==================  ===============================================================
``current``         wrapped under the policy key at its current version
``older_version``   the policy key, an older version (``cmkfs rewrap`` moves it)
``other_key``       another key than the policy's (``cmkfs rewrap`` moves it)
``key_unchecked``   the policy key, but its vault could not say which version is current
``plaintext``       not a cmkfs file
``unreadable``      a cmkfs file whose header or size is damaged, or of an unknown format version
==================  ===============================================================

A workspace (a first-level folder below the root) is in sync when every
file in it is current.  Temp files left by killed writers are counted apart,
with their age (:mod:`.clean` removes them).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from fsspec.spec import AbstractFileSystem

from ..errors import CMKError, FormatError, IntegrityError
from ..format import MAGIC, SUITE_AES256GCM_HKDF_SHA256, VERSION, KeyBlock, looks_like_cmkfs, plaintext_size
from ..stream import read_header
from ..targets import open_range_source
from .keystate import KeyState
from .walk import DEFAULT_WORKERS, FileEntry, Progress, is_partial_file, list_files, run_bounded, workspace_of

__all__ = [
    "STATES",
    "PROBLEMS",
    "IN_SYNC",
    "NOT_IN_SYNC",
    "Counts",
    "FileStatus",
    "PartialFile",
    "StoreStatus",
    "WorkspaceStatus",
    "classify",
    "store_status",
]

STATES = ("current", "older_version", "other_key", "key_unchecked", "plaintext", "unreadable")
# Why a file is unreadable: a format version this release does not read, a header that fails its
# checksum or is cut short, a size no writer could produce with that header, a storage error.
PROBLEMS = ("foreign", "damaged_header", "bad_size", "storage")
# Power BI's words for a workspace whose data is (or is not) all under the capacity's current key.
IN_SYNC = "InSyncWithWorkspace"
NOT_IN_SYNC = "NotInSyncWithWorkspace"


@dataclass(frozen=True)
class FileStatus:
    """One file: its ``state`` (one of :data:`STATES`), the key and version its header names, and for
    ``plaintext``/``unreadable`` files a one-line ``reason`` and the ``problem``: one of
    :data:`PROBLEMS`."""

    path: str
    size: int
    state: str
    key_uri: str | None = None
    key_version: str | None = None
    reason: str | None = None
    problem: str | None = None
    # The header's key block (no secret: the DEK in it is wrapped), for verify to unwrap once per block.
    key_block: KeyBlock | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "size": self.size,
            "state": self.state,
            "key_uri": self.key_uri,
            "key_version": self.key_version,
            "reason": self.reason,
            "problem": self.problem,
        }


@dataclass(frozen=True)
class PartialFile:
    """A temp file of a writer that never finished: its path, size and age in seconds (``None`` if unknown)."""

    path: str
    size: int
    age: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "age_seconds": self.age}


@dataclass
class Counts:
    """Files and bytes, and files per state."""

    files: int = 0
    bytes: int = 0
    states: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATES, 0))
    partial: int = 0

    def add(self, status: FileStatus) -> None:
        self.files += 1
        self.bytes += status.size
        self.states[status.state] += 1

    @property
    def in_sync(self) -> bool:
        return self.states["current"] == self.files

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "bytes": self.bytes,
            **self.states,
            "partial": self.partial,
            "in_sync": self.in_sync,
            "sync": IN_SYNC if self.in_sync else NOT_IN_SYNC,
        }


@dataclass
class WorkspaceStatus:
    name: str  # "" for files directly in the root
    counts: Counts = field(default_factory=Counts)

    def to_dict(self) -> dict[str, Any]:
        return {"workspace": self.name, **self.counts.to_dict()}


@dataclass
class StoreStatus:
    """The status of one store (a capacity, or a URL)."""

    url: str
    key: KeyState
    capacity: str | None = None
    exists: bool = True
    workspaces: dict[str, WorkspaceStatus] = field(default_factory=dict)
    total: Counts = field(default_factory=Counts)
    files: list[FileStatus] = field(default_factory=list)
    partials: list[PartialFile] = field(default_factory=list)

    @property
    def in_sync(self) -> bool:
        return self.total.in_sync

    def to_dict(self, *, all_files: bool = False) -> dict[str, Any]:
        shown = self.files if all_files else [f for f in self.files if f.state != "current"]
        return {
            "capacity": self.capacity,
            "url": self.url,
            "exists": self.exists,
            "key": self.key.to_dict(),
            "total": self.total.to_dict(),
            "workspaces": [w.to_dict() for w in sorted(self.workspaces.values(), key=lambda w: w.name)],
            "partial_files": [p.to_dict() for p in self.partials],
            "files" if all_files else "not_current": [f.to_dict() for f in shown],
        }


def classify(fs: AbstractFileSystem, entry: FileEntry, key: KeyState) -> FileStatus:
    """The state of one file, from its header (one ranged read) and its size."""
    path, size = entry.path, entry.size
    try:
        source = open_range_source(fs, path, size=size)
    except (CMKError, OSError, ValueError) as exc:
        return FileStatus(path, size, "unreadable", reason=_reason(exc), problem="storage")
    try:
        try:
            header = read_header(source)
        except FormatError as exc:
            head = bytes(source.read_range(0, min(source.size, len(MAGIC) + 2)))
            if not looks_like_cmkfs(head):
                return FileStatus(path, size, "plaintext", reason="not a cmkfs encrypted file")
            # A version or suite this release does not know is foreign; a bad field of one it knows, damage.
            known = head[len(MAGIC) :] == bytes((VERSION, SUITE_AES256GCM_HKDF_SHA256))
            return FileStatus(
                path, size, "unreadable", reason=str(exc), problem="damaged_header" if known else "foreign"
            )
        except IntegrityError:
            reason = "damaged header (checksum or length)"
            return FileStatus(path, size, "unreadable", reason=reason, problem="damaged_header")
        block = header.key_block
        found = FileStatus(path, size, "current", block.key_uri, block.key_version, key_block=block)
        try:
            plaintext_size(source.size, header.length, header.params.segment_size)
        except IntegrityError:
            reason = "its size does not fit its header (truncated or extended)"
            return _with(found, "unreadable", reason, "bad_size")
        if not key.names(block):
            return _with(found, "other_key")
        if key.version is None:
            return _with(found, "key_unchecked")
        return found if block.key_version == key.version else _with(found, "older_version")
    except (CMKError, OSError, ValueError) as exc:
        # A file that vanished or cannot be read mid-walk, or a hostile header
        # some parser refused: reported, and the walk goes on.
        return FileStatus(path, size, "unreadable", reason=_reason(exc), problem="storage")
    finally:
        source.close()


def _with(status: FileStatus, state: str, reason: str | None = None, problem: str | None = None) -> FileStatus:
    return FileStatus(
        status.path, status.size, state, status.key_uri, status.key_version, reason, problem, status.key_block
    )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def store_status(
    fs: AbstractFileSystem,
    root: str,
    key: KeyState,
    *,
    capacity: str | None = None,
    url: str | None = None,
    workers: int = DEFAULT_WORKERS,
    progress: Progress | None = None,
    entries: Iterable[FileEntry] | None = None,
    now: float | None = None,
) -> StoreStatus:
    """The status of every file under ``root`` on the target ``fs`` against ``key``.

    ``entries`` (default: :func:`~.walk.list_files`) lets a caller that has
    listed the store already (to size a progress bar) pass the listing in.
    A capacity root that does not exist yet is an empty, in-sync store;
    any other missing root raises ``FileNotFoundError``.
    """
    report = StoreStatus(url=url or root, key=key, capacity=capacity)
    if entries is None:
        try:
            entries = list_files(fs, root)
        except FileNotFoundError:
            if capacity is None:
                raise
            report.exists = False
            return report
    listed = list(entries)
    now = time.time() if now is None else now
    partial = {e.path for e in listed if is_partial_file(fs, e.path, e.size)}
    files = [e for e in listed if e.path not in partial]
    for entry in listed:
        if entry.path in partial:
            age = None if entry.mtime is None else max(0.0, now - entry.mtime)
            report.partials.append(PartialFile(entry.path, entry.size, age))
            report.total.partial += 1
            _workspace(report, root, entry.path).counts.partial += 1

    for status in run_bounded(
        lambda e: classify(fs, e, key), files, workers=workers, total=len(files), progress=progress
    ):
        report.files.append(status)
        report.total.add(status)
        _workspace(report, root, status.path).counts.add(status)
    return report


def _workspace(report: StoreStatus, root: str, path: str) -> WorkspaceStatus:
    name = workspace_of(root, path)
    found = report.workspaces.get(name)
    if found is None:
        found = report.workspaces[name] = WorkspaceStatus(name)
    return found
