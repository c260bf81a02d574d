"""The file objects that :class:`~cmkfs.filesystem.CMKFileSystem` hands out.

:class:`CMKReadFile` is an fsspec buffered file in read mode whose
``_fetch_range`` decrypts: only the segments that cover a read are fetched,
so a Parquet footer and one column never download the whole file.  An fsspec
in-memory read cache may be layered on with ``cache_type``; it sits behind a
:class:`KeyGatedCache`, so cached plaintext is served only while the file's
key is valid and is dropped whenever the key expires or is revoked.  Caches
that keep blocks on local disk are refused.

:class:`CMKWriteFile` follows one write contract, the conventional one:

* ``close()`` publishes the file (as closing a plain file does);
* leaving its own ``with`` block by an exception discards it;
* a writer garbage-collected unclosed, or still open at interpreter exit,
  is discarded, never published;
* ``discard()`` drops it explicitly; ``commit()`` after a failure raises;
* with ``autocommit=False`` (inside ``with fs.transaction:``) ``close()``
  seals the file and the transaction publishes every file at its end, or
  none if the block fails.

The wrappers handed out here (:class:`CMKTextWriter` for text modes,
:class:`CompressedFile` for ``compression=``) follow the same contract.
"""

from __future__ import annotations

import enum
import io
import logging
import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, NoReturn, Protocol

from fsspec.caching import MMapCache, caches
from fsspec.spec import AbstractBufferedFile

from .errors import ConfigurationError, IntegrityError, UnsupportedOperationError, integrity_error_at
from .format import DEFAULT_SEGMENT_SIZE, ContentClass
from .keys import KeySource, register_key_holder
from .stream import DecryptingReader, EncryptingWriter, RangeSource
from .targets import AtomicSink, discard_after_failure

__all__ = [
    "CMKReadFile",
    "CMKWriteFile",
    "CMKTextWriter",
    "CompressedFile",
    "KeyGatedCache",
    "PlaintextReader",
    "WriteState",
    "IN_MEMORY_CACHE_TYPES",
]

_logger = logging.getLogger(__name__)

# fsspec read caches that keep their blocks in process memory.  "mmap" (and
# anything built on MMapCache) writes the fetched bytes to a local file:
# for us that would be decrypted plaintext on disk, so it is refused.
IN_MEMORY_CACHE_TYPES = frozenset(
    {"none", "bytes", "readahead", "adaptive", "blockcache", "first", "all", "parts", "background"}
)


class KeyedReader(Protocol):
    """What a read handle needs from its reader (:class:`~cmkfs.stream.DecryptingReader`
    or :class:`PlaintextReader`)."""

    size: int
    segment_size: int

    def read(self, offset: int = 0, length: int = -1) -> bytes: ...

    def confirm_key(self) -> int: ...

    def key_expired(self) -> bool: ...

    def close(self) -> None: ...


class NotSeekableError(UnsupportedOperationError, io.UnsupportedOperation):
    """Seeking an encrypting writer.  Also an ``io.UnsupportedOperation``
    (an ``OSError``), which is what zipfile, tarfile and others probe for."""


class PlaintextReader:
    """The :class:`~cmkfs.stream.DecryptingReader` interface over a file that is
    not encrypted, for the ``allow_plaintext_read`` migration option."""

    segment_size = DEFAULT_SEGMENT_SIZE

    def __init__(self, source: RangeSource) -> None:
        self._source = source
        self.size = source.size

    def read(self, offset: int = 0, length: int = -1) -> bytes:
        end = self.size if length is None or length < 0 else min(self.size, offset + length)
        if offset >= end:
            return b""
        return bytes(self._source.read_range(offset, end))

    def confirm_key(self) -> int:
        return 0  # no key: nothing to expire

    def key_expired(self) -> bool:
        return False

    def close(self) -> None:
        pass


class KeyGatedCache:
    """An fsspec read cache behind the file's key.

    Every read through the cache first re-confirms the key (the reader asks
    the vault again once the TTL has passed, and raises if the key was
    revoked), and whenever the key was confirmed anew the cached blocks are
    dropped and fetched again: no byte of cached plaintext leaves the handle
    after the TTL without a fresh key check.  The key sweeper also drops the
    blocks of an idle handle whose key expired (they are rebuilt lazily, on
    the next read, never from the sweeper).
    """

    def __init__(self, factory: Callable[[], Any], reader: KeyedReader, first: Any = None) -> None:
        self._factory = factory
        self._reader = reader
        self._lock = threading.Lock()
        self._token: int | None = reader.confirm_key()
        self._inner: Any = first if first is not None else factory()
        self.name: str = self._inner.name
        register_key_holder(self)

    def _fetch(self, start: int | None, end: int | None) -> bytes:
        token = self._reader.confirm_key()  # raises if the key was revoked
        old = None
        with self._lock:
            if self._inner is None or token != self._token:
                old = self._inner  # blocks from before are not reused
                self._inner, self._token = self._factory(), token
            inner = self._inner
        _close_cache(old)
        data: bytes = inner._fetch(start, end)
        return data

    def drop_key_if_expired(self) -> None:
        """Called by the key sweeper: an idle handle's plaintext goes with its key."""
        if self._inner is not None and self._reader.key_expired():
            with self._lock:
                old, self._inner, self._token = self._inner, None, None
            _close_cache(old)

    def close(self) -> None:
        with self._lock:
            inner, self._inner = self._inner, None
        _close_cache(inner)

    def _log_stats(self) -> str:
        inner = self._inner
        return str(inner._log_stats()) if inner is not None else ""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_inner", "_factory", "_reader", "_lock", "_token"):
            raise AttributeError(name)
        inner = self.__dict__.get("_inner")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)

    def __repr__(self) -> str:
        return f"<KeyGatedCache {self.name}>"

    def __reduce__(self) -> NoReturn:
        raise TypeError("a read cache holds plaintext and cannot be pickled")


def _close_cache(cache: Any) -> None:
    """Close an fsspec cache that is being dropped: a background cache's
    prefetch thread would otherwise keep the blocks it holds."""
    close = getattr(cache, "close", None)
    if callable(close):
        close()


class CMKReadFile(AbstractBufferedFile):  # type: ignore[misc]  # fsspec is untyped
    """Read-only, seekable plaintext view of one encrypted file."""

    def __init__(
        self,
        fs: Any,
        path: str,
        reader: KeyedReader,
        source: RangeSource,
        *,
        block_size: int | None = None,
        cache_type: str | None = "none",
        cache_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        cache_type = "none" if cache_type is None else cache_type
        if cache_type not in IN_MEMORY_CACHE_TYPES:
            raise ConfigurationError(
                f"cache_type={cache_type!r} would keep decrypted data outside process memory; "
                f"use one of {sorted(IN_MEMORY_CACHE_TYPES)}"
            )
        self._reader = reader
        self._source = source
        self._cache_type = cache_type
        self._cache_options = dict(cache_options or {})
        kwargs.pop("size", None)  # a caller's size is the ciphertext's or stale: the header decides
        super().__init__(
            fs,
            path,
            mode="rb",
            block_size=block_size or reader.segment_size,
            autocommit=True,
            cache_type=cache_type,
            cache_options=cache_options,
            size=reader.size,
            **kwargs,
        )

    def _new_cache(self) -> Any:
        return caches[self._cache_type](self.blocksize, self._fetch_range, self.size, **self._cache_options)

    def _no_cache(self) -> Any:
        return caches["none"](self.blocksize, self._fetch_range, self.size)

    # fsspec assigns the read cache through this property (at open, at
    # close, and an outer blockcache layer swapping in its MMapCache): every
    # cache goes behind the key, and one that spills to disk is refused.
    @property
    def cache(self) -> Any:
        return self.__dict__.get("_cmk_cache")

    @cache.setter
    def cache(self, value: Any) -> None:
        if isinstance(value, MMapCache):
            raise ConfigurationError(
                "a disk cache over cmk:// would store decrypted data; put the cache under the "
                "encryption instead (cmk::simplecache::PROTOCOL://...)"
            )
        if type(value) is caches["none"]:
            pass  # holds nothing: every read goes to the reader, which checks the key itself
        elif value is not None and not isinstance(value, KeyGatedCache):
            if type(value) is caches.get(self._cache_type):
                value = KeyGatedCache(self._new_cache, self._reader, first=value)
            else:
                # Not the cache type this handle was opened with (set by some
                # outer layer): gated like any other, but never rebuilt, so
                # once dropped it stays dropped and reads go to the reader.
                value = KeyGatedCache(self._no_cache, self._reader, first=value)
        old = self.__dict__.get("_cmk_cache")
        self.__dict__["_cmk_cache"] = value
        if old is not None and old is not value:
            _close_cache(old)

    @property
    def encrypted(self) -> bool:
        return isinstance(self._reader, DecryptingReader)

    @property
    def content_class(self) -> ContentClass | None:
        return getattr(self._reader, "content_class", None)

    def _fetch_range(self, start: int, end: int) -> bytes:
        try:
            return self._reader.read(start, end - start)
        except IntegrityError as exc:
            # Every read (through any cache) comes here: a dataset reader learns which file failed.
            raise integrity_error_at(self.path, exc) from None

    def confirm_key(self) -> int:
        """Re-confirm the key if its TTL passed (raises if revoked): for
        wrappers that keep a buffer of their own (text, decompression)."""
        return self._reader.confirm_key()

    def close(self) -> None:
        if self.closed:
            return
        try:
            super().close()  # drops the read cache
        finally:
            self.__dict__["_cmk_cache"] = None
            self._reader.close()  # overwrites its plaintext buffers and forgets the file key
            self._source.close()

    def __repr__(self) -> str:
        return f"<CMKReadFile {self.path!r} size={self.size}{' closed' if self.closed else ''}>"


class WriteState(enum.Enum):
    """Where a :class:`CMKWriteFile` is in its life."""

    OPEN = "open"  # accepting writes
    SEALED = "sealed"  # closed with autocommit=False: complete, waiting for commit() or discard()
    COMMITTED = "committed"  # published at its path
    DISCARDED = "discarded"  # dropped; the previous version (if any) stays
    FAILED = "failed"  # a write, the seal or the publish failed; dropped


class CMKWriteFile:
    """Write-only stream that encrypts into an atomic sink (see the module
    docstring for the contract)."""

    def __init__(
        self,
        fs: Any,
        path: str,
        sink: AtomicSink,
        keys: KeySource,
        *,
        segment_size: int,
        content_class: ContentClass,
        threads: int | None = None,
        autocommit: bool = True,
    ) -> None:
        self.fs = fs
        self.path = path
        self.mode = "wb"
        self.autocommit = bool(autocommit)
        self._sink = sink
        self._pid = os.getpid()
        self._state = WriteState.FAILED
        try:
            self._writer = EncryptingWriter(
                sink, keys, segment_size=segment_size, content_class=content_class, threads=threads
            )
        except BaseException:
            discard_after_failure(sink, path)
            raise
        self._state = WriteState.OPEN
        self._pos = 0

    # -- io surface ---------------------------------------------------------

    @property
    def state(self) -> WriteState:
        return self._state

    @property
    def closed(self) -> bool:
        return self._state is not WriteState.OPEN

    @property
    def name(self) -> str:
        return self.path

    def readable(self) -> bool:
        return False

    def writable(self) -> bool:
        return not self.closed

    def seekable(self) -> bool:
        return False

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        raise io.UnsupportedOperation("an encrypting stream has no file descriptor")

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        # Even a no-op seek is refused: zipfile takes a successful one as
        # "seekable" and later seeks back to patch headers.
        raise NotSeekableError("encrypted files are written sequentially: seeking while writing is not supported")

    def read(self, *args: object) -> NoReturn:
        raise io.UnsupportedOperation("file opened for writing")

    def truncate(self, *args: object) -> NoReturn:
        raise UnsupportedOperationError("encrypted files cannot be truncated in place; rewrite the file")

    def write(self, data: Any) -> int:
        self._check_owner()
        if self.closed:
            raise ValueError("I/O operation on closed file.")
        memoryview(data).release()  # a wrong type is refused here, with the stream intact
        try:
            n = self._writer.write(data)
        except BaseException:
            self._drop(WriteState.FAILED)  # part of it may be sealed: the stream cannot go on
            raise
        self._pos += n
        return n

    def writelines(self, lines: Iterable[Any]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file.")
        # Nothing to push: a partial segment can only be sealed at close.

    # -- outcome ------------------------------------------------------------

    def close(self) -> None:
        """Finish the file: publish it, or with ``autocommit=False`` seal it
        for the transaction (or a later :meth:`commit`) to publish.

        Raises if a write failed (nothing is published then).  While the
        interpreter tears down, whatever finaliser calls it, it discards: an
        object still open then is an unfinished write."""
        self._check_owner()
        if self._state is WriteState.FAILED:
            raise ValueError(f"{self.path}: an earlier write failed; nothing was published")
        if self._state is not WriteState.OPEN:
            return
        if sys.is_finalizing():
            self.discard()
            return
        self._seal()
        if self.autocommit:
            self._publish()

    def commit(self) -> None:
        """Publish the file now (sealing it first if it is still open).

        Raises if the file was discarded or failed: nothing is published then."""
        self._check_owner()
        if self._state is WriteState.COMMITTED:
            return
        if self._state is WriteState.OPEN:
            self._seal()
        if self._state is not WriteState.SEALED:
            raise ValueError(f"{self.path}: cannot commit a write that was {self._state.value}; nothing was published")
        self._publish()

    def confirm_key(self) -> int:
        """Re-confirm the key with its vault if the TTL passed, as a reader does before each read (raises
        if the vault refuses).  Buffered writes otherwise meet the key only when a segment is sealed, so a
        caller about to report success for them (a mount answering ``close(2)``) asks first."""
        return self._writer.confirm_key()

    def discard(self) -> None:
        """Drop everything written so far; the previous version (if any) stays."""
        if self._pid != os.getpid():
            # A forked child's copy: the sink (a temp file, an upload) is the
            # parent's, so the child forgets it without touching it.
            self._state = WriteState.DISCARDED
            return
        if self._state in (WriteState.OPEN, WriteState.SEALED):
            self._drop(WriteState.DISCARDED)

    def _check_owner(self) -> None:
        if self._pid != os.getpid():
            # A forked child writing through its parent's handle would reuse
            # the parent's nonces under the same key, into the same temp file.
            raise ValueError(f"{self.path}: an encrypted file cannot be used in a process forked after it was opened")

    def _seal(self) -> None:
        try:
            self._writer.close()  # the final segment goes into the sink
        except BaseException:
            self._drop(WriteState.FAILED)
            raise
        self._state = WriteState.SEALED

    def _publish(self) -> None:
        try:
            self._sink.commit()
        except BaseException:
            self._drop(WriteState.FAILED)
            raise
        self._state = WriteState.COMMITTED

    def _drop(self, state: WriteState) -> None:
        was = self._state
        self._state = state
        if was not in (WriteState.OPEN, WriteState.SEALED):
            return
        try:
            self._writer.abort()
        finally:
            self._sink.discard()

    def __enter__(self) -> CMKWriteFile:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            try:
                self.discard()
            except Exception as discard_error:  # noqa: BLE001 - the block's own exception is the one to see
                _logger.warning(
                    "%s: the partial file of a failed write could not be removed (%s)",
                    self.path,
                    type(discard_error).__name__,
                )

    def __del__(self) -> None:
        if getattr(self, "_state", None) in (WriteState.OPEN, WriteState.SEALED):
            # Never publish from a finaliser: an unfinished write is dropped.
            warnings.warn(
                f"unfinished encrypted file {self.path!r} was discarded, not written", ResourceWarning, stacklevel=2
            )
            try:
                self.discard()
            except Exception:  # noqa: BLE001 - finaliser
                pass

    def __reduce__(self) -> NoReturn:
        raise TypeError("an open encrypted file cannot be pickled")

    def __repr__(self) -> str:
        if self._state is WriteState.OPEN:
            return f"<CMKWriteFile {self.path!r} {self._pos} bytes written>"
        return f"<CMKWriteFile {self.path!r} {self._state.value}>"


io.RawIOBase.register(CMKWriteFile)


class CMKTextWriter(io.TextIOWrapper):
    """Text mode over a :class:`CMKWriteFile` (or a :class:`CompressedFile`),
    with the same contract: ``close()`` publishes (or seals, in a
    transaction), a failing ``with`` block or the finaliser discards.
    ``closed`` is the buffer's, so a discarded writer's later ``close()`` is
    a no-op."""

    @property
    def _writer(self) -> CMKWriteFile | CompressedFile:
        return self.buffer  # type: ignore[return-value]  # always one of ours: see CMKFileSystem.open

    def commit(self) -> None:
        if not self.closed:
            self.flush()
        self._writer.commit()

    def discard(self) -> None:
        self._writer.discard()  # pending text in this wrapper is dropped with it

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()

    def __del__(self) -> None:
        # Replaces io's finaliser, which would flush and close (publish).
        try:
            buffer = self._writer
        except ValueError:  # detached
            return
        if buffer.closed:
            return  # published, dropped, or sealed and held by a transaction
        warnings.warn(
            f"unfinished encrypted file {getattr(buffer, 'name', '')!r} was discarded, not written",
            ResourceWarning,
            stacklevel=2,
        )
        try:
            buffer.discard()
        except Exception:  # noqa: BLE001 - finaliser
            pass

    def __reduce__(self) -> NoReturn:
        raise TypeError("an open encrypted file cannot be pickled")


class _Borrowed:
    """The cmkfs file as a compressor sees it: everything but ``close()``.

    Some compressors close the file they wrap (zstandard's stream writer
    does); through this view none can publish or drop the cmkfs file: only
    :class:`CompressedFile` decides, by the write contract."""

    def __init__(self, f: CMKWriteFile | CMKReadFile) -> None:
        self._f = f

    def close(self) -> None:
        pass

    @property
    def closed(self) -> bool:
        return self._f.closed

    def __getattr__(self, name: str) -> Any:
        if name == "_f":
            raise AttributeError(name)
        return getattr(self._f, name)


# Read methods of a decompressor: each re-confirms the key first, since the
# decompressor keeps a buffer of plaintext of its own.
_READ_METHODS = frozenset({"read", "read1", "readinto", "readline", "readlines", "peek"})


class CompressedFile:
    """A compressor from ``fsspec.compression`` (GzipFile, BZ2File, zstd, ...)
    over a cmkfs file, owning it: closing closes the compressor, then closes
    the cmkfs file (which publishes a write); a failing ``with`` block or the
    finaliser discards.  Reads re-confirm the key, like the handle's own."""

    def __init__(self, make_compressor: Callable[[Any], Any], inner: CMKWriteFile | CMKReadFile) -> None:
        self._inner = inner
        self._writing = isinstance(inner, CMKWriteFile)
        self._compressor = make_compressor(_Borrowed(inner))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_compressor", "_inner", "_writing"):
            raise AttributeError(name)
        attr = getattr(self._compressor, name)  # read, write, readline, flush, seek (reading), ...
        if name in _READ_METHODS and not self._writing and callable(attr):
            return self._gated(attr)
        return attr

    def _gated(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def read(*args: Any, **kwargs: Any) -> Any:
            self.confirm_key()
            return method(*args, **kwargs)

        return read

    def confirm_key(self) -> int:
        if isinstance(self._inner, CMKReadFile):
            return self._inner.confirm_key()
        return 0

    @property
    def closed(self) -> bool:
        return self._inner.closed

    @property
    def name(self) -> str:
        return self._inner.path

    def close(self) -> None:
        if not self._writing:
            if not self._inner.closed:
                try:
                    self._compressor.close()
                finally:
                    self._inner.close()
            return
        assert isinstance(self._inner, CMKWriteFile)
        if self._inner.state is WriteState.OPEN:
            try:
                self._compressor.close()  # its trailer goes into the cmkfs file
            except BaseException:
                self._inner.discard()
                raise
        self._inner.close()  # publishes (or seals); raises if a write failed

    def commit(self) -> None:
        if self._writing and not self._inner.closed:
            self.close()
        if isinstance(self._inner, CMKWriteFile):
            self._inner.commit()

    def discard(self) -> None:
        if not isinstance(self._inner, CMKWriteFile):
            self.close()
            return
        self._inner.discard()  # first: nothing the compressor does next can reach the store
        try:
            self._compressor.close()  # releases it; its trailer has nowhere to go
        except Exception:  # noqa: BLE001 - discarding anyway
            pass

    def __enter__(self) -> CompressedFile:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None or not self._writing:
            self.close()
        else:
            self.discard()

    def __iter__(self) -> CompressedFile:
        return self

    def __next__(self) -> Any:
        self.confirm_key()
        return next(self._compressor)

    def __del__(self) -> None:
        inner = self.__dict__.get("_inner")
        if isinstance(inner, CMKWriteFile) and inner.state is WriteState.OPEN:
            try:
                self.discard()  # never publish from a finaliser
            except Exception:  # noqa: BLE001 - finaliser
                pass

    def __reduce__(self) -> NoReturn:
        raise TypeError("an open encrypted file cannot be pickled")

    def __repr__(self) -> str:
        return f"<CompressedFile {type(self._compressor).__name__} over {self._inner!r}>"


class CMKTextReader(io.TextIOWrapper):
    """Text mode over a cmkfs read handle: io keeps a buffer of decoded
    text, so every read re-confirms the key first, like the handle's own."""

    def _confirm(self) -> None:
        self.buffer.confirm_key()  # type: ignore[attr-defined]  # CMKReadFile or CompressedFile

    def read(self, size: int | None = -1) -> str:
        self._confirm()
        return super().read(size)

    def readline(self, size: int = -1) -> str:  # type: ignore[override]  # typeshed: via _IOBase
        self._confirm()
        return super().readline(size)

    def readlines(self, hint: int = -1) -> list[str]:  # type: ignore[override]  # typeshed: via _IOBase
        self._confirm()
        return super().readlines(hint)

    def __next__(self) -> str:  # type: ignore[override]  # typeshed: via _IOBase
        self._confirm()
        return super().__next__()

    def __reduce__(self) -> NoReturn:
        raise TypeError("an open encrypted file cannot be pickled")


io.IOBase.register(CompressedFile)


def _drop(f: CMKWriteFile | CMKReadFile) -> None:
    """Discard a writer, close a reader (a failure while wrapping either)."""
    if isinstance(f, CMKWriteFile):
        f.discard()
    else:
        f.close()
