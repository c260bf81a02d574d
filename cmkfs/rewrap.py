"""Key rotation for existing files: re-wrap the data key, keep every segment.

A file's payload is encrypted under a per-file key derived from its DEK
(docs/FORMAT.md §5); the key-encryption key (KEK) only wraps the DEK in the
header's key block, and the key block is deliberately outside the key
derivation (§10).  So moving a file to a new KEK version, or to another key
altogether (a key migration), needs no plaintext at all:

1. read and check the header only (bounds, checksum, sizes: no payload);
2. unwrap the DEK with the version the key block names, through the
   filesystem's :class:`~cmkfs.keycache.KeyCache` (a vault call that obeys
   the cache's revocation rules: a disabled or destroyed key is refused);
3. check the key commitment against that DEK (a tampered or swapped key
   block is refused here, before anything is written);
4. wrap the same DEK under the target key's current version and build the
   new header with :meth:`~cmkfs.format.Header.with_key_block`; only
   ``key_block_len``, ``key_block`` and ``checksum`` change;
5. unwrap the new key block once more and compare: a wrap the vault cannot
   undo is caught now, not after the old version has been destroyed;
6. stream the new header and the **unchanged segment bytes** into the same
   atomic sink ordinary writes use, in chunks of :data:`COPY_CHUNK` bytes,
   check that exactly ``C - H`` payload bytes were copied and that the file
   was not replaced meanwhile, and only then publish.

Why the payload is not re-encrypted: rotating a KEK is about who can unwrap
the DEK, and the DEK is what the vault protects.  Re-encrypting would read,
decrypt and rewrite every byte (plaintext passing through this process) for
no gain against the threat rotation addresses; re-wrapping costs two or
three vault calls and one sequential copy of ciphertext.  The re-wrapped
file decrypts to the same plaintext under the same file key and nonces, so
nothing about the segments' security changes.  (If a DEK itself may have
leaked, re-wrapping does not help: rewrite the file through ``cmk://``.)

Atomicity, per target (the sink machinery of :mod:`cmkfs.targets`):

* local files: the new bytes go to a ``.NAME.cmkfs-partial-RANDOM`` file in
  the same directory, are fsynced and renamed over the original, so a
  reader or a crash sees the old file or the new one, never a mixture;
* Azure Blob: the new bytes are staged as uncommitted blocks and published
  by one *Put Block List*; until then the old blob is served, and a crash
  leaves it intact.  Blob metadata (``cmkfs_key_version`` and the rest) is
  committed with the content; other metadata entries are carried over;
* memory: one ``pipe_file`` on commit;
* other fsspec targets: as atomic as their own uploads (see
  :mod:`cmkfs.targets`).

A writer that replaces the file while it is being re-wrapped is detected
(the size and version marker are compared before publishing) and the
re-wrap is abandoned, but a replacement in the short window between that
check and the commit can still be overwritten by the re-wrapped old
content: do not re-wrap a path that is being written.

Later, on Azure, a server-side variant can avoid moving the payload at all:
stage one new block holding the new header (plus the first bytes of the
payload, to line up with the old block boundaries) and commit it with the
old committed payload blocks reused by block id, or use copy-from-URL.  It
is not done here; this module only relies on the sink and source protocols.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import Iterator

from .errors import CMKError, ConfigurationError, FormatError, IntegrityError, KeyRevokedError
from .format import Header, KeyBlock, looks_like_cmkfs, plaintext_size
from .keycache import KeyCache
from .providers.base import provider_for, split_key_uri
from .secret import Secret
from .segment import check_commitment, derive_cipher
from .stream import read_header
from .targets import is_partial_name, open_atomic_sink, open_range_source

__all__ = ["RewrapResult", "rewrap_file", "rewrap_tree", "COPY_CHUNK"]

# Ciphertext moved per read/write while copying the payload: memory stays
# bounded whatever the file size (the Azure sink adds ~12 MiB of blocks).
COPY_CHUNK = 8 * 1024 * 1024
# Keys of a target's info dict that change when a file is replaced.
_IDENTITY_KEYS = ("size", "ino", "mtime", "etag", "ETag", "LastModified", "last_modified", "generation",
                  "version_id", "created")
_METADATA_PREFIX = "cmkfs_"


@dataclass(frozen=True)
class RewrapResult:
    """What happened to one file.

    ``changed`` is True when the file was re-wrapped (or, with ``dry_run``,
    would be).  ``error`` is set only by :func:`rewrap_tree`, for a file it
    could not re-wrap; such a result has ``changed=False``.
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

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        """A JSON-friendly view (the error as its class name and message)."""
        return {
            "path": self.path,
            "old_key_uri": self.old_key_uri,
            "old_version": self.old_version,
            "new_key_uri": self.new_key_uri,
            "new_version": self.new_version,
            "changed": self.changed,
            "bytes_written": self.bytes_written,
            "dry_run": self.dry_run,
            "error": None if self.error is None else {"type": type(self.error).__name__, "message": str(self.error)},
        }


@dataclass(frozen=True)
class _Target:
    wrap_uri: str  # what the provider is asked to wrap under (may name a version)
    key_uri: str  # canonical, unversioned: what a key block names
    version: str  # the version a file must carry to count as current


def _resolve_target(fs, key: str | None) -> _Target:
    """The key to re-wrap under, and its version (the current one unless the URI names one)."""
    uri = key if key is not None else fs.key_uri
    if uri is None:
        from .config import default_key_uri

        uri = default_key_uri()  # raises the message that says how to configure a key
    if not isinstance(uri, str) or not uri:
        raise ConfigurationError("key must be a key URI string such as 'local://NAME'")
    provider = provider_for(uri)
    canonical = provider.canonical_uri(uri)
    version = split_key_uri(uri)[1]
    if version is None:
        info = provider.describe(uri)
        if not info.enabled or not info.current_version:
            # Re-wrapping under a revoked key would make the files unreadable.
            raise KeyRevokedError(f"key {canonical} is disabled or destroyed; nothing was re-wrapped")
        version = info.current_version
    return _Target(uri, canonical, str(version))


def rewrap_file(fs, path: str, *, key: str | None = None, dry_run: bool = False,
                _target: _Target | None = None) -> RewrapResult:
    """Re-wrap the DEK of the cmkfs file ``path`` on the ``cmk`` filesystem ``fs``.

    ``key`` is the key URI to move the file to (default: the filesystem's
    key).  A file already under the target key's current version is left
    alone (``changed=False``, not rewritten).  ``dry_run`` reads the header
    and unwraps the DEK (so it proves the re-wrap would work) but wraps and
    writes nothing.

    Raises :class:`FormatError` for a file that is not a cmkfs file,
    :class:`IntegrityError` for a damaged or tampered header, and the key
    errors of the vault; in every case the file is left as it was.
    """
    target = _target if _target is not None else _resolve_target(fs, key)
    path = fs._strip_protocol(path)
    inner = fs.fs
    before = _identity(inner, path)
    source = open_range_source(inner, path)
    dek: Secret | None = None  # the DEK never leaves a Secret: no frame here shows it in an error report
    try:
        size = source.size
        if before.get("size") is not None and int(before["size"]) != size:
            raise _changed(path)
        header = _read_cmkfs_header(source, path)
        header_len = header.length
        plaintext_size(size, header_len, header.params.segment_size)  # an impossible size is an integrity error
        old = header.key_block
        result = dict(path=path, old_key_uri=old.key_uri, old_version=old.key_version,
                      new_key_uri=target.key_uri, dry_run=dry_run)
        if old.key_uri == target.key_uri and old.key_version == target.version:
            return RewrapResult(new_version=target.version, changed=False, **result)

        keys: KeyCache = fs.keys
        dek = _unwrap(keys, old)
        _check_dek(dek, header)  # a tampered key block or commitment stops here
        if dry_run:
            return RewrapResult(new_version=target.version, changed=True, **result)

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

        written = _publish(fs, inner, path, source, new_bytes, header_len, before)
        fs.invalidate_cache(path)
        return RewrapResult(new_version=new_block.key_version, changed=True, bytes_written=written, **result)
    finally:
        if dek is not None:
            dek.wipe()  # our copy of the DEK does not outlive the call
        source.close()


def rewrap_tree(fs, path: str, *, key: str | None = None, dry_run: bool = False) -> Iterator[RewrapResult]:
    """Re-wrap every file under ``path`` (or ``path`` itself if it is a file).

    Yields one :class:`RewrapResult` per file, in path order.  A file that
    fails (not a cmkfs file, tampered, its key revoked, a storage error, or
    a ``ValueError`` that a hostile file provoked in some parser) is
    reported with ``error`` set and the walk goes on.  Temp files of
    in-progress writes are skipped.  A target key that cannot be used
    (missing, disabled) raises before any file is touched.
    """
    target = _resolve_target(fs, key)
    inner = fs.fs
    root = fs._strip_protocol(path)
    if not inner.exists(root):
        raise FileNotFoundError(errno.ENOENT, "no such file or directory", root)
    names = sorted(n for n in inner.find(root) if not is_partial_name(n))
    for name in names:
        try:
            yield rewrap_file(fs, name, dry_run=dry_run, _target=target)
        except (CMKError, OSError, ValueError) as exc:
            # One bad file must not stop the walk: the files after it still need their new key.
            yield RewrapResult(path=name, old_key_uri=None, old_version=None, new_key_uri=target.key_uri,
                               new_version=None, changed=False, dry_run=dry_run, error=exc)


# -- pieces ----------------------------------------------------------------------


def _read_cmkfs_header(source, path: str) -> Header:
    try:
        return read_header(source)
    except FormatError:
        head = bytes(source.read_range(0, min(source.size, 8)))
        if looks_like_cmkfs(head):
            raise  # a cmkfs file of a version this release does not know
        raise FormatError(f"{path} is not a cmkfs encrypted file; nothing to re-wrap") from None


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
    return keys._vault_call("wrap", key_uri, None, lambda provider: provider.wrap(key_uri, dek))


def _identity(inner, path: str) -> dict:
    """What identifies the current version of ``path`` on the target."""
    inner.invalidate_cache(path)
    info = inner.info(path)
    if info.get("type") not in (None, "file"):
        raise IsADirectoryError(errno.EISDIR, "not a file", path)
    return info


def _same_version(a: dict, b: dict) -> bool:
    return all(a.get(k) == b.get(k) for k in _IDENTITY_KEYS)


def _changed(path: str) -> OSError:
    return OSError(errno.ESTALE, "the file changed while it was being re-wrapped; nothing was written", path)


def _kept_metadata(info: dict) -> dict:
    """The target's non-cmkfs metadata entries (Azure Blob), to carry over."""
    raw = info.get("metadata") or {}
    return {k: v for k, v in raw.items() if not k.lower().startswith(_METADATA_PREFIX)}


def _publish(fs, inner, path: str, source, new_header: bytes, header_len: int, before: dict) -> int:
    """Write ``new_header`` and the source's payload atomically; return the bytes written."""
    from urllib.parse import unquote

    kept = _kept_metadata(before)
    # The Azure sink percent-encodes what it is given; cmkfs wrote these
    # values encoded, so decoding them first round-trips them exactly.
    sink = open_atomic_sink(inner, path, metadata={k: unquote(v) for k, v in kept.items()} or None)
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
        sink.discard()
        raise
    _restore_metadata(inner, path, kept)
    return written + copied


def _restore_metadata(inner, path: str, kept: dict) -> None:
    """Fix metadata entries another tool wrote unencoded (a second, separate request)."""
    if not kept:
        return
    if not (callable(getattr(inner, "split_path", None)) and hasattr(inner, "service_client")):
        return  # only adlfs filesystems carry metadata this way
    from .targets_azure import blob_client_for

    ops, _ = blob_client_for(inner, path)
    props = ops.properties()
    current = dict(props.metadata or {})
    if all(current.get(k) == v for k, v in kept.items()):
        return
    current.update(kept)
    ops.set_metadata(current, props.etag)
