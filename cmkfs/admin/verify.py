"""``verify``: authenticate every byte of every file of a store.

Each file's header is read first (as :mod:`.status` does: plaintext and
foreign files are named without a vault call), then the whole file is read
through a :class:`~cmkfs.filesystem.CMKFileSystem` over the target and
thrown away: every segment is opened, so every tag is checked, and the
final segment proves the length.  One filesystem, hence one
:class:`~cmkfs.keycache.KeyCache`, serves the whole walk: one vault call per
distinct key block, not per file.

Outcomes (``VerifyResult.outcome``):

=====================  ===================================================================
``ok``                 every segment authenticated
``integrity``          authentication failed: tampered, truncated at a segment boundary,
                       a header from another file, or the wrong key (one reason, on purpose)
``truncated``          the ciphertext is cut inside its header, or its size cannot be
                       a whole file (known from public facts, without the key)
``plaintext``          not a cmkfs file
``foreign``            a cmkfs file of a format version this release does not read
``key_revoked``        the key (or version) is disabled or destroyed
``key_not_found``      the vault has no such key or version
``vault_unavailable``  the vault could not be reached (after bounded retries)
``untrusted_vault``    the header names a vault the policy does not trust
``error``              a storage error (the file vanished, permission denied, ...)
=====================  ===================================================================
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fsspec.spec import AbstractFileSystem

from ..errors import (
    CMKError,
    ConfigurationError,
    FormatError,
    IntegrityError,
    KeyNotFoundError,
    KeyRevokedError,
    VaultUnavailableError,
)
from ..format import KeyBlock
from .keystate import KeyState
from .status import classify
from .walk import DEFAULT_WORKERS, FileEntry, Progress, is_partial_file, list_files, run_bounded

if TYPE_CHECKING:
    from ..filesystem import CMKFileSystem

__all__ = ["OUTCOMES", "READ_CHUNK", "VerifyResult", "reading_filesystem", "verify_file", "verify_tree"]

# Plaintext read (and dropped) per call: memory stays bounded whatever the file size.
READ_CHUNK = 8 * 1024 * 1024
OUTCOMES = (
    "ok",
    "integrity",
    "truncated",
    "plaintext",
    "foreign",
    "key_revoked",
    "key_not_found",
    "vault_unavailable",
    "untrusted_vault",
    "error",
)
_KEY_OUTCOMES: tuple[tuple[type[CMKError], str], ...] = (
    (KeyRevokedError, "key_revoked"),
    (KeyNotFoundError, "key_not_found"),
    (VaultUnavailableError, "vault_unavailable"),
    (ConfigurationError, "untrusted_vault"),
)

# status's word for an unreadable header -> verify's outcome.
_PROBLEM_OUTCOMES = {"foreign": "foreign", "damaged_header": "integrity", "bad_size": "truncated", "storage": "error"}


@dataclass(frozen=True)
class VerifyResult:
    """One file: its ``outcome`` (one of :data:`OUTCOMES`), a one-line ``reason`` when it is not ``ok``,
    the key and version its header names (when it has a readable header) and its plaintext size when
    verified."""

    path: str
    size: int
    outcome: str
    reason: str | None = None
    key_uri: str | None = None
    key_version: str | None = None
    plaintext_bytes: int | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "size": self.size,
            "outcome": self.outcome,
            "ok": self.ok,
            "reason": self.reason,
            "key_uri": self.key_uri,
            "key_version": self.key_version,
            "plaintext_bytes": self.plaintext_bytes,
        }


def reading_filesystem(
    fs: AbstractFileSystem, *, trusted_vaults: Iterable[str] = (), cache_ttl: float | None = None
) -> CMKFileSystem:
    """A ``cmk`` filesystem over the target ``fs`` for reading, with its own key cache (not shared with
    any other instance).  ``trusted_vaults``: the vaults files may name (:func:`.keystate.trusted_keys`)."""
    from ..filesystem import CMKFileSystem
    from ..keycache import DEFAULT_CACHE_TTL

    return CMKFileSystem(
        fs=fs,
        trusted_vaults=list(trusted_vaults) or None,
        cache_ttl=DEFAULT_CACHE_TTL if cache_ttl is None else cache_ttl,
        skip_instance_cache=True,
    )


class _OnePerBlock:
    """Unwraps each distinct key block once for the whole walk: the first file under a block asks the
    vault while the others under it wait, then find the data key in ``cmk``'s key cache (without
    this, every worker thread that misses the cache at once would call the vault)."""

    def __init__(self, cmk: CMKFileSystem) -> None:
        self._keys = cmk.keys
        self._lock = threading.Lock()
        self._locks: dict[tuple[str, str, bytes], threading.Lock] = {}

    def __call__(self, block: KeyBlock) -> None:
        marker = (block.key_uri, block.key_version, bytes(block.wrapped_dek))
        with self._lock:
            lock = self._locks.setdefault(marker, threading.Lock())
        with lock:
            self._keys.data_key_for_read(block)  # cached for the readers that follow, until the TTL


def verify_file(
    cmk: CMKFileSystem, entry: FileEntry, *, unwrap_once: Callable[[KeyBlock], None] | None = None
) -> VerifyResult:
    """Read ``entry`` (a file of ``cmk``'s target) whole through ``cmk``; never raises for a bad file.

    ``unwrap_once(key_block)`` is called before the file is opened (:func:`verify_tree` passes one that
    asks the vault once per distinct key block)."""
    # The header alone names plaintext, foreign and damaged files without a vault call.
    seen = classify(cmk.fs, entry, KeyState(None))
    result = VerifyResult(entry.path, entry.size, "ok", key_uri=seen.key_uri, key_version=seen.key_version)
    if seen.state == "plaintext":
        return _failed(result, "plaintext", "not a cmkfs encrypted file")
    if seen.state == "unreadable":
        return _failed(result, _PROBLEM_OUTCOMES.get(seen.problem or "", "error"), seen.reason or "unreadable")
    try:
        if unwrap_once is not None and seen.key_block is not None:
            unwrap_once(seen.key_block)
        total = 0
        with cmk.open(entry.path, "rb") as f:
            while True:
                chunk = f.read(READ_CHUNK)
                if not chunk:
                    break
                total += len(chunk)
    except IntegrityError as exc:
        return _failed(result, "integrity", str(exc))
    except FormatError as exc:  # replaced by a plaintext or foreign file since its header was read
        return _failed(result, "plaintext", str(exc))
    except CMKError as exc:
        for cls, outcome in _KEY_OUTCOMES:
            if isinstance(exc, cls):
                return _failed(result, outcome, str(exc))
        return _failed(result, "error", str(exc) or type(exc).__name__)
    except (OSError, ValueError) as exc:
        return _failed(result, "error", (exc.strerror if isinstance(exc, OSError) else None) or str(exc))
    return VerifyResult(entry.path, entry.size, "ok", None, seen.key_uri, seen.key_version, total)


def _failed(result: VerifyResult, outcome: str, reason: str) -> VerifyResult:
    # The report names the path once: a message that starts with it (errors name their file) drops it.
    for prefix in (f"{result.path}: ", f"{result.path} "):
        if reason.startswith(prefix):
            reason = reason[len(prefix) :]
            break
    return VerifyResult(result.path, result.size, outcome, reason, result.key_uri, result.key_version)


def verify_tree(
    cmk: CMKFileSystem,
    root: str,
    *,
    entries: list[FileEntry] | None = None,
    workers: int = DEFAULT_WORKERS,
    progress: Progress | None = None,
) -> Iterator[VerifyResult]:
    """:func:`verify_file` for every file under ``root`` on ``cmk``'s target, in path order.

    Temp files of writers in progress are skipped (``status`` reports them).
    Raises ``FileNotFoundError`` when ``root`` does not exist.
    """
    listed = entries if entries is not None else list_files(cmk.fs, cmk._strip_protocol(root))
    files = [e for e in listed if not is_partial_file(cmk.fs, e.path, e.size)]
    once = _OnePerBlock(cmk)
    yield from run_bounded(
        lambda e: verify_file(cmk, e, unwrap_once=once), files, workers=workers, total=len(files), progress=progress
    )
