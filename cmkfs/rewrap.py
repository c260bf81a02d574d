"""Key rotation for existing files: re-wrap the data key, copy the segments unchanged.

The key block is outside the key derivation (docs/FORMAT.md §10), so moving a
file to a new KEK version, or to another key altogether, changes only the
header's key block and checksum and needs no plaintext:

1. read and check the header only (bounds, checksum, sizes: no payload);
2. unwrap the DEK through the filesystem's :class:`~cmkfs.keycache.KeyCache`
   (a disabled or destroyed key is refused there);
3. check the key commitment against that DEK: a tampered or swapped key
   block stops here, before anything is written;
4. wrap the same DEK under the target key and build the new header with
   :meth:`~cmkfs.format.Header.with_key_block`;
5. unwrap the new key block once more and compare: a wrap the vault cannot
   undo is caught now, not after the old version has been destroyed;
6. stream the new header and the unchanged segment bytes into the atomic sink
   ordinary writes use, check that exactly ``C - H`` payload bytes were copied
   and that the file was not replaced meanwhile, and only then publish.

The target is the **current version of the key the file already names**;
another key is only ever chosen explicitly (``key=``): a rotation must never
move data to whichever key happens to be the default.  A dry run writes
nothing but proves each file: it unwraps the DEK, checks the commitment and
authenticates every segment (so it decrypts, in memory, and discards).

Why the payload is not re-encrypted: rotating a KEK is about who can unwrap
the DEK, and the DEK is what the vault protects.  Re-encrypting would pass
every byte through this process as plaintext for no gain against that
threat.  (If a DEK itself may have leaked, re-wrapping does not help: rewrite
the file through ``cmk://``.)  Each file is published on its own, atomically,
so an interrupted walk leaves every file in its old or its new form, and
running it again finishes the rest.  What each target makes atomic is in
docs/FILESYSTEM.md; the user's view is in docs/KEYS.md.
"""

from __future__ import annotations

import errno
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem
from fsspec.spec import AbstractFileSystem

from .errors import (
    CMKError,
    ConfigurationError,
    FormatError,
    IntegrityError,
    KeyRevokedError,
    VaultUnavailableError,
    integrity_error_at,
)
from .format import Header, KeyBlock, looks_like_cmkfs, plaintext_size
from .keycache import KeyCache
from .providers.base import KeyInfo, split_key_uri
from .secret import Secret
from .segment import check_commitment, derive_cipher
from .stream import DecryptingReader, RangeSource, read_header
from .targets import discard_after_failure, is_partial_name, kept_metadata, open_atomic_sink, open_range_source

if TYPE_CHECKING:
    from .filesystem import CMKFileSystem

__all__ = [
    "RewrapResult",
    "rewrap_file",
    "rewrap_tree",
    "list_files",
    "COPY_CHUNK",
    "OUTCOMES",
    "REMOTE_WORKERS",
]

# Ciphertext moved per read/write while copying the payload: memory stays
# bounded whatever the file size (the Azure sink adds ~12 MiB of blocks).
COPY_CHUNK = 8 * 1024 * 1024
# Files in flight at once on a remote store (each is a few round trips); local disk goes one by one.
REMOTE_WORKERS = 8
#: What can happen to a file, in the order summaries list them.
OUTCOMES = ("rewrapped", "would_rewrap", "unchanged", "skipped_symlink", "failed")
# Keys of a target's info dict that change when a file is replaced.
_IDENTITY_KEYS = (
    "size",
    "ino",
    "mtime",
    "etag",
    "ETag",
    "LastModified",
    "last_modified",
    "generation",
    "version_id",
    "created",
)


@dataclass(frozen=True)
class RewrapResult:
    """What happened to one file.

    ``changed`` is True when the file was re-wrapped (or, with ``dry_run``,
    would be).  ``verified`` is True when a dry run unwrapped the file's data
    key and authenticated every segment.  ``error`` is set only by
    :func:`rewrap_tree`, for a file it could not re-wrap (or, in a dry run,
    could not prove); such a result has ``changed=False``.
    """

    path: str
    old_key_uri: str | None
    old_version: str | None
    new_key_uri: str | None
    new_version: str | None
    changed: bool
    bytes_written: int = 0
    dry_run: bool = False
    error: BaseException | None = field(default=None, compare=False)
    verified: bool = False
    skipped_symlink: bool = False  # a symbolic link: left as it is (its target is re-wrapped where it lives)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def outcome(self) -> str:
        """One of :data:`OUTCOMES`."""
        if self.error is not None:
            return "failed"
        if self.skipped_symlink:
            return "skipped_symlink"
        if not self.changed:
            return "unchanged"
        return "would_rewrap" if self.dry_run else "rewrapped"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly view (the error as its class name and message)."""
        return {
            "path": self.path,
            "outcome": self.outcome,
            "old_key_uri": self.old_key_uri,
            "old_version": self.old_version,
            "new_key_uri": self.new_key_uri,
            "new_version": self.new_version,
            "changed": self.changed,
            "bytes_written": self.bytes_written,
            "dry_run": self.dry_run,
            "verified": self.verified,
            "error": None if self.error is None else {"type": type(self.error).__name__, "message": str(self.error)},
        }


@dataclass(frozen=True)
class _Target:
    wrap_uri: str  # what the provider is asked to wrap under (may name a version)
    key_uri: str  # canonical, unversioned: what a key block names
    version: str  # the version a file must carry to count as current


def _resolve_target(keys: KeyCache, uri: str) -> _Target:
    """The key to re-wrap under, and its version (the current one unless the URI names one)."""
    if not isinstance(uri, str) or not uri:
        raise ConfigurationError("key must be a key URI string such as 'local://NAME'")
    version = split_key_uri(uri)[1]
    # Through the cache's vault boundary: its providers, bounded retries and the audit record.
    info: KeyInfo = keys._vault_call("describe", uri, None, lambda provider: provider.describe(uri))
    canonical = keys._providers(uri).canonical_uri(uri)
    if not info.enabled or (version is None and not info.current_version):
        # Re-wrapping under a revoked key would make the files unreadable.
        raise KeyRevokedError(f"key {canonical} is disabled or destroyed; nothing was re-wrapped")
    return _Target(uri, canonical, str(version if version is not None else info.current_version))


class _Targets:
    """Where each file goes: the explicit ``key``, else the current version of the file's own key.

    Each key is described once per walk (failures too, except a vault that was unreachable, which
    the next file asks again); shared by the walk's threads.
    """

    def __init__(self, keys: KeyCache, key: str | None) -> None:
        self._keys = keys
        # An explicit target that cannot be used fails before any file is touched.
        self._fixed = _resolve_target(keys, key) if key is not None else None
        self._known: dict[str, _Target | CMKError] = {}
        self._lock = threading.Lock()

    def for_file(self, old: KeyBlock) -> _Target:
        if self._fixed is not None:
            return self._fixed
        with self._lock:
            known = self._known.get(old.key_uri)
        if known is None:
            # The header is untrusted input: its vault must be one we trust before we call it.
            self._keys._check_trusted(old.key_uri)
            try:
                known = _resolve_target(self._keys, old.key_uri)
            except VaultUnavailableError:
                raise
            except CMKError as exc:
                known = exc
            with self._lock:
                known = self._known.setdefault(old.key_uri, known)
        if isinstance(known, CMKError):
            raise type(known)(*known.args)  # a fresh exception per file: threads share the cached one
        return known


def rewrap_file(
    fs: CMKFileSystem,
    path: str,
    *,
    key: str | None = None,
    dry_run: bool = False,
    _targets: _Targets | None = None,
) -> RewrapResult:
    """Re-wrap the DEK of the cmkfs file ``path`` on the ``cmk`` filesystem ``fs``.

    Without ``key`` the file moves to the current version of the key it
    already names; ``key`` (a key URI) moves it to that key instead (a
    versioned URI pins the version).  A file already there is left alone
    (``changed=False``, not rewritten).  ``dry_run`` writes nothing, but
    unwraps the DEK, checks the key commitment and authenticates every
    segment, so a result without an error proves the file is readable and
    the re-wrap would work (``verified=True``).

    Raises :class:`FormatError` for a file that is not a cmkfs file,
    :class:`IntegrityError` (naming ``path``) for a damaged or tampered one,
    and the key errors of the vault; in every case the file is left as it was.
    """
    targets = _targets if _targets is not None else _Targets(fs.keys, key)
    path = fs._strip_protocol(path)
    try:
        return _rewrap(fs, path, targets, dry_run)
    except IntegrityError as exc:
        raise integrity_error_at(path, exc) from None


def _rewrap(fs: CMKFileSystem, path: str, targets: _Targets, dry_run: bool) -> RewrapResult:
    inner: AbstractFileSystem = fs.fs
    before = _identity(inner, path)
    if before.get("islink"):
        # Publishing through the link's name would replace the link with a regular file.
        return RewrapResult(path, None, None, None, None, changed=False, dry_run=dry_run, skipped_symlink=True)
    source = open_range_source(inner, path)
    dek: Secret | None = None  # the DEK never leaves a Secret: no frame here shows it in an error report
    try:
        size = source.size
        if before.get("size") is not None and int(before["size"]) != size:
            raise _changed(path)
        try:
            header = read_header(source)
        except FormatError:
            if looks_like_cmkfs(bytes(source.read_range(0, min(size, 8)))):
                raise  # a cmkfs file of a version this release does not know
            raise FormatError(f"{path} is not a cmkfs encrypted file; nothing to re-wrap") from None
        header_len = header.length
        plaintext_size(size, header_len, header.params.segment_size)  # an impossible size is an integrity error
        old = header.key_block
        target = targets.for_file(old)
        current = old.key_uri == target.key_uri and old.key_version == target.version
        result = RewrapResult(
            path=path,
            old_key_uri=old.key_uri,
            old_version=old.key_version,
            new_key_uri=target.key_uri,
            new_version=target.version,
            changed=False,
            dry_run=dry_run,
        )
        keys: KeyCache = fs.keys
        if dry_run:
            _authenticate(keys, source)  # a file we could not read back is not "unchanged"
            return replace(result, changed=not current, verified=True)
        if current:
            return result

        dek = _unwrap(keys, old)
        _check_dek(dek, header)  # a tampered key block or commitment stops here
        new_block = _wrap(keys, target.wrap_uri, dek)
        if new_block.key_uri != target.key_uri:
            raise ConfigurationError(f"the vault wrapped under {new_block.key_uri}, not {target.key_uri}")
        new_header = header.with_key_block(new_block)
        new_bytes = new_header.encode()
        # Proofs before anything is published: the header decodes to the same
        # params and commitment, and the vault unwraps the new key block to
        # this very DEK (a wrap it cannot undo would lose the file once the
        # old version is destroyed).
        decoded = Header.decode(new_bytes)
        if decoded.params != header.params or decoded.commitment != header.commitment or decoded.key_block != new_block:
            raise IntegrityError()
        check = _unwrap(keys, new_block)
        try:
            if not check.matches(dek):
                raise IntegrityError()
        finally:
            check.wipe()

        written = _publish(inner, path, source, new_bytes, header_len, before)
        fs.invalidate_cache(path)
        return replace(result, new_version=new_block.key_version, changed=True, bytes_written=written)
    finally:
        if dek is not None:
            dek.wipe()  # our copy of the DEK does not outlive the call
        source.close()


def list_files(fs: CMKFileSystem, path: str) -> list[str]:
    """The files under ``path`` (or ``path`` itself), in path order, without in-progress temp files."""
    inner = fs.fs
    root = fs._strip_protocol(path)
    if not inner.exists(root):
        raise FileNotFoundError(errno.ENOENT, "no such file or directory", root)
    return sorted(n for n in inner.find(root) if not is_partial_name(n))


def rewrap_tree(
    fs: CMKFileSystem,
    path: str,
    *,
    key: str | None = None,
    dry_run: bool = False,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Iterator[RewrapResult]:
    """Re-wrap every file under ``path`` (or ``path`` itself if it is a file).

    Yields one :class:`RewrapResult` per file, in path order; ``key`` and
    ``dry_run`` are as for :func:`rewrap_file`.  A file that fails (not a
    cmkfs file, tampered, its key revoked, a storage error, or a
    ``ValueError`` that a hostile file provoked in some parser) is reported
    with ``error`` set and the walk goes on.  Temp files of in-progress
    writes are skipped.  An explicit ``key`` that cannot be used (missing,
    disabled) raises before any file is touched.

    ``workers`` files are handled at once (default: one on local disk and in
    memory, :data:`REMOTE_WORKERS` elsewhere); ``progress(done, total)`` is
    called after each file.  Each file is published on its own: stopping
    the walk (or killing the process) leaves every file in its old or new
    form, and walking again skips the files already done.
    """
    targets = _Targets(fs.keys, key)
    names = list_files(fs, path)
    if workers is None:
        workers = 1 if isinstance(fs.fs, (LocalFileSystem, MemoryFileSystem)) else REMOTE_WORKERS
    total = len(names)

    def one(name: str) -> RewrapResult:
        try:
            return rewrap_file(fs, name, dry_run=dry_run, _targets=targets)
        except (CMKError, OSError, ValueError) as exc:
            # One bad file must not stop the walk: the files after it still need their new key.
            return RewrapResult(
                path=name,
                old_key_uri=None,
                old_version=None,
                new_key_uri=None,
                new_version=None,
                changed=False,
                dry_run=dry_run,
                error=exc,
            )

    for done, result in enumerate(_in_order(one, names, max(1, int(workers))), 1):
        if progress is not None:
            progress(done, total)
        yield result


def _in_order(call: Callable[[str], RewrapResult], names: Iterable[str], workers: int) -> Iterator[RewrapResult]:
    """``call(name)`` for each name, at most ``workers`` at once, results in input order."""
    if workers == 1:
        yield from map(call, names)
        return
    # A bounded window, not one future per file: a stopped walk leaves at most
    # 2 * workers files in flight, each of which finishes (old or new form).
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cmkfs-rewrap") as pool:
        pending: deque[Future[RewrapResult]] = deque()
        for name in names:
            pending.append(pool.submit(call, name))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


# -- pieces ----------------------------------------------------------------------


def _authenticate(keys: KeyCache, source: RangeSource) -> None:
    """Open ``source`` as a reader would and authenticate every segment; keep no plaintext."""
    reader = DecryptingReader(source, keys)  # unwraps, checks the commitment, the final segment
    try:
        step = max(reader.segment_size, (COPY_CHUNK // reader.segment_size) * reader.segment_size)
        offset = 0
        while offset < reader.size:
            offset += len(reader.read(offset, step))  # each segment's tag is checked as it opens
    finally:
        reader.close()  # overwrites its buffers and forgets the file key


def _unwrap(keys: KeyCache, key_block: KeyBlock) -> Secret:
    """A private copy of the DEK in ``key_block``, confirmed through the key cache."""
    for _ in range(3):
        # A private copy: the cache may wipe its DataKey while we still need the DEK.
        copy = keys.data_key_for_read(key_block).snapshot()  # None if it was wiped meanwhile
        if copy is not None:
            return copy
    raise KeyRevokedError("the data key was withdrawn while in use")


def _check_dek(dek: Secret, header: Header) -> None:
    cipher, commitment = derive_cipher(dek, header.params)
    cipher.wipe()  # only the commitment is needed
    check_commitment(header.commitment, commitment)


def _wrap(keys: KeyCache, key_uri: str, dek: Secret) -> KeyBlock:
    # Through the cache's vault boundary: bounded retries, the audit record,
    # and a refusal purges the key from every cache in the process.
    block: KeyBlock = keys._vault_call("wrap", key_uri, None, lambda provider: provider.wrap(key_uri, dek))
    return block


def _identity(inner: AbstractFileSystem, path: str) -> dict[str, Any]:
    """What identifies the current version of ``path`` on the target."""
    inner.invalidate_cache(path)
    info: dict[str, Any] = inner.info(path)
    if not info.get("islink") and info.get("type") not in (None, "file"):
        raise IsADirectoryError(errno.EISDIR, "not a file", path)
    return info


def _same_version(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a.get(k) == b.get(k) for k in _IDENTITY_KEYS)


def _changed(path: str) -> OSError:
    return OSError(errno.ESTALE, "the file changed while it was being re-wrapped; nothing was written", path)


def _publish(
    inner: AbstractFileSystem,
    path: str,
    source: RangeSource,
    new_header: bytes,
    header_len: int,
    before: dict[str, Any],
) -> int:
    """Write ``new_header`` and the source's payload atomically; return the bytes written."""
    # The target's own metadata of the file (Azure Blob) goes into the same commit, as it was.
    sink = open_atomic_sink(inner, path, metadata=kept_metadata(before) or None)
    try:
        sink.write(new_header)
        written = len(new_header)
        expected = source.size - header_len
        copied = 0
        while copied < expected:
            step = min(COPY_CHUNK, expected - copied)
            try:
                chunk = source.read_range(header_len + copied, header_len + copied + step)
                if len(chunk) != step:
                    raise IntegrityError()  # the source shrank under us
            except IntegrityError as exc:
                # Sources that read by path see a replacement as a size change.
                if not _same_version(before, _identity(inner, path)):
                    raise _changed(path) from exc
                raise
            sink.write(chunk)
            copied += step
        if copied != expected:
            raise IntegrityError()
        if not _same_version(before, _identity(inner, path)):
            raise _changed(path)
        sink.commit()
    except BaseException:
        discard_after_failure(sink, path)
        raise
    return written + copied
