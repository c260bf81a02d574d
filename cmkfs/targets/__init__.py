"""Storage adapters: how ciphertext reaches a target filesystem and comes back.

The encrypting layer asks two things of the storage under it, and nothing
else touches the target's bytes:

* an :class:`AtomicSink`: ``write`` ciphertext, then ``commit()`` to publish
  it at the final path or ``discard()`` to drop it;
* a :class:`~cmkfs.stream.RangeSource`: ``size`` and ``read_range(start, end)``,
  so a reader fetches exactly the header and segments it needs.

Adapters move ciphertext and never decrypt it, nor parse it themselves (the
Azure sink's metadata comes from :func:`cmkfs.stream.read_header`).  One
module per kind of target: :mod:`.local`, :mod:`.memory`, :mod:`.generic`
(any fsspec filesystem) and :mod:`.azure` (imported when an ``abfs``, ``az``
or ``abfss`` filesystem is first used).  How atomic each one is:
docs/FILESYSTEM.md.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem
from fsspec.registry import known_implementations, register_implementation
from fsspec.spec import AbstractFileSystem

from ..secret import BytesLike
from ..stream import RangeSource
from .generic import CatFileSource, FsspecSink
from .local import PARTIAL_MARKER, LocalSink, LocalSource, is_partial_name
from .memory import MemorySink, MemorySource

__all__ = [
    "AtomicSink",
    "discard_after_failure",
    "RangeSource",
    "StoredMetadata",
    "open_atomic_sink",
    "open_range_source",
    "register_target",
    "kept_metadata",
    "is_partial_name",
    "PARTIAL_MARKER",
    "METADATA_PREFIX",
    "LocalSink",
    "LocalSource",
    "MemorySink",
    "MemorySource",
    "FsspecSink",
    "CatFileSource",
]

# Metadata entries that describe a cmkfs file (written by sinks that keep
# metadata, from the header they were given); every other entry is the user's.
METADATA_PREFIX = "cmkfs_"
# Imported on first use of one of these protocols; each registers itself.
LAZY_TARGET_MODULES = {"abfs": "cmkfs.targets.azure", "az": "cmkfs.targets.azure", "abfss": "cmkfs.targets.azure"}
# dir:: inside dir:: inside ...: followed this deep, no further.
MAX_DIRFS_DEPTH = 8
# What a core install says for abfs:// (fsspec's own text names adlfs, not the extra that pins it).
AZURE_EXTRA_HINT = "Azure Blob Storage (abfs://, az://, abfss://) needs the azure extra: pip install 'cmkfs[azure]'"
for _name in LAZY_TARGET_MODULES:
    _entry = known_implementations.get(_name)
    if _entry is not None and _entry.get("class") == "adlfs.AzureBlobFileSystem":
        register_implementation(_name, _entry["class"], clobber=True, errtxt=AZURE_EXTRA_HINT)


class AtomicSink(Protocol):
    """Ciphertext goes in through ``write``; nothing is visible before ``commit``."""

    def write(self, data: BytesLike) -> int: ...

    def commit(self) -> None: ...

    def discard(self) -> None: ...


SinkFactory = Callable[..., AtomicSink]
SourceFactory = Callable[..., RangeSource]

_SINKS: dict[str, SinkFactory] = {}
_SOURCES: dict[str, SourceFactory] = {}
_LOCK = threading.Lock()
_LAZY_TRIED: set[str] = set()


class StoredMetadata(dict[str, str]):
    """Metadata entries as the target stored them (copied from a listing).

    A sink that encodes the values it is given (Azure Blob percent-encodes
    non-ASCII) commits these unchanged instead, so a rewrite keeps them exactly.
    """


logger = logging.getLogger(__name__)


def discard_after_failure(sink: AtomicSink, path: str) -> None:
    """Drop the partial file of a write that has already failed, without hiding why it failed.

    The write's own error (a revoked key, a full disk) is what the caller must see; a backend
    that cannot remove the partial file too (an FTP server refusing the delete) must not replace
    it.  The leftover is a partial file, never published: ``cmkfs clean`` finds it later.
    """
    try:
        sink.discard()
    except Exception as exc:  # noqa: BLE001 - any error of the backend: the failure in flight wins
        logger.warning("%s: the partial file of a failed write could not be removed (%s)", path, type(exc).__name__)


def kept_metadata(info: Mapping[str, Any]) -> StoredMetadata:
    """The user's metadata entries in a target's ``info`` of a file (all but
    ``cmkfs_*``), to carry over when the file is rewritten in place."""
    raw = info.get("metadata") or {}
    return StoredMetadata({k: v for k, v in raw.items() if not k.lower().startswith(METADATA_PREFIX)})


def register_target(
    protocol_names: str | Iterable[str],
    sink_factory: SinkFactory | None = None,
    source_factory: SourceFactory | None = None,
) -> None:
    """Use ``sink_factory(fs, path, metadata=None, exclusive=False)`` and/or
    ``source_factory(fs, path, size=None)`` for filesystems whose protocol
    is one of ``protocol_names``."""
    names = (protocol_names,) if isinstance(protocol_names, str) else tuple(protocol_names)
    with _LOCK:
        for name in names:
            if sink_factory is not None:
                _SINKS[name] = sink_factory
            if source_factory is not None:
                _SOURCES[name] = source_factory


def _protocols(fs: AbstractFileSystem) -> tuple[str, ...]:
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)


def _lookup(table: Mapping[str, Any], fs: AbstractFileSystem) -> Any:
    for name in _protocols(fs):
        if name in LAZY_TARGET_MODULES and name not in _LAZY_TRIED:
            _LAZY_TRIED.add(name)
            try:
                importlib.import_module(LAZY_TARGET_MODULES[name])  # registers itself on import
            except ImportError:
                pass  # optional: fall back to the generic fsspec path
        factory = table.get(name)
        if factory is not None:
            return factory
    return None


def _unwrap_dirfs(fs: AbstractFileSystem, path: str) -> tuple[AbstractFileSystem, str]:
    """``dir::`` only prefixes paths: use the atomic path of the filesystem under it."""
    for _ in range(MAX_DIRFS_DEPTH):
        if not isinstance(fs, DirFileSystem) or fs.asynchronous:
            break
        fs, path = fs.fs, fs._join(path)
    return fs, path


def open_atomic_sink(
    fs: AbstractFileSystem,
    path: str,
    metadata: Mapping[str, object] | None = None,
    *,
    exclusive: bool = False,
    fsync: bool = True,
) -> AtomicSink:
    """An :class:`AtomicSink` writing ``path`` on ``fs``.

    ``metadata`` goes to targets that keep metadata (a :class:`StoredMetadata`
    as it is).  ``exclusive`` makes commit fail with ``FileExistsError`` if
    ``path`` exists (mode ``"xb"``), atomically where the target allows it.
    ``fsync=False`` skips the local disk flush before the rename: a process
    crash still leaves old-or-new, but a power loss may leave neither.
    """
    fs, path = _unwrap_dirfs(fs, path)
    factory = _lookup(_SINKS, fs)
    if factory is not None:
        sink: AtomicSink = factory(fs, path, metadata=metadata, exclusive=exclusive)
        return sink
    if isinstance(fs, LocalFileSystem):
        return LocalSink(fs, path, exclusive=exclusive, fsync=fsync)
    if isinstance(fs, MemoryFileSystem):
        return MemorySink(fs, path, exclusive=exclusive)
    return FsspecSink(fs, path, metadata=metadata, exclusive=exclusive)


def open_range_source(fs: AbstractFileSystem, path: str, size: int | None = None) -> RangeSource:
    """A :class:`~cmkfs.stream.RangeSource` over ``path`` on ``fs`` (close it when done)."""
    fs, path = _unwrap_dirfs(fs, path)
    factory = _lookup(_SOURCES, fs)
    if factory is not None:
        source: RangeSource = factory(fs, path, size=size)
        return source
    if isinstance(fs, LocalFileSystem):
        return LocalSource(path)
    if type(fs) is MemoryFileSystem:  # a subclass may count or alter cat_file: honour it
        return MemorySource(fs, path)
    return CatFileSource(fs, path, size=size)
