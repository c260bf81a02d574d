"""The file objects that :class:`~cmkfs.filesystem.CMKFileSystem` hands out.

:class:`CMKReadFile` is an fsspec buffered file in read mode whose
``_fetch_range`` decrypts: opening it reads the header and the final segment
(one request each), and every later read fetches only the segments that
cover it, so a Parquet footer and one column never download the whole file.
Reads round to whole segments and the handle keeps the last run of
segments it opened (and the final one) in memory: that is its read-ahead,
held for the life of the handle only and overwritten at close.  An fsspec
in-memory cache may be layered on with ``cache_type``; disk caches are
refused.

:class:`CMKWriteFile` is deliberately *not* an fsspec buffered file: those
commit on ``__exit__`` even while an exception propagates, and on
``__del__``.  Here a write is published only by an explicit ``commit()`` or a
``close()`` that is not running inside a failure; everything else discards,
and an interrupted stream never gets its sealed final segment.

Python's and fsspec's wrappers close the file they wrap from their own
finalisers and ``__exit__`` methods, so the wrappers handed out here keep the
same rule: :class:`CMKTextWriter` (text modes) and :class:`CompressedFile`
(``compression=``) commit on ``close()`` and discard on a failing ``with``
block or when garbage-collected unclosed.
"""

from __future__ import annotations

import io
import sys
import warnings
from inspect import CO_VARARGS

from fsspec.caching import MMapCache
from fsspec.spec import AbstractBufferedFile

from .errors import ConfigurationError, UnsupportedOperationError
from .format import DEFAULT_SEGMENT_SIZE
from .stream import DecryptingReader, EncryptingWriter

__all__ = ["CMKReadFile", "CMKWriteFile", "CMKTextWriter", "CompressedFile", "PlaintextReader", "IN_MEMORY_CACHE_TYPES"]

# fsspec read caches that keep their blocks in process memory.  "mmap" (and
# anything built on MMapCache) writes the fetched bytes to a local file:
# for us that would be decrypted plaintext on disk, so it is refused.
IN_MEMORY_CACHE_TYPES = frozenset({"none", "bytes", "readahead", "adaptive", "blockcache", "first", "all", "parts", "background"})
# How many calling frames close() searches for the __exit__ that called it
# (OpenFile.__exit__ -> OpenFile.close -> our close is three).
EXIT_SEARCH_DEPTH = 8


class NotSeekableError(UnsupportedOperationError, io.UnsupportedOperation):
    """Seeking an encrypting writer.  Also an ``io.UnsupportedOperation``
    (an ``OSError``), which is what zipfile, tarfile and others probe for."""


class PlaintextReader:
    """The :class:`~cmkfs.stream.DecryptingReader` interface over a file that is
    not encrypted, for the ``allow_plaintext_read`` migration option."""

    segment_size = DEFAULT_SEGMENT_SIZE

    def __init__(self, source) -> None:
        self._source = source
        self.size = source.size

    def read(self, offset: int = 0, length: int = -1) -> bytes:
        end = self.size if length is None or length < 0 else min(self.size, offset + length)
        if offset >= end:
            return b""
        return bytes(self._source.read_range(offset, end))

    def close(self) -> None:
        pass


class CMKReadFile(AbstractBufferedFile):
    """Read-only, seekable plaintext view of one encrypted file."""

    def __init__(self, fs, path, reader, source, *, block_size=None, cache_type="none",
                 cache_options=None, **kwargs) -> None:
        cache_type = "none" if cache_type is None else cache_type
        if cache_type not in IN_MEMORY_CACHE_TYPES:
            raise ConfigurationError(
                f"cache_type={cache_type!r} would keep decrypted data outside process memory; "
                f"use one of {sorted(IN_MEMORY_CACHE_TYPES)}"
            )
        self._reader = reader
        self._source = source
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

    # An outer layer (fsspec's blockcache) swaps in an MMapCache that spills
    # fetched blocks to a local file: refuse it, whoever tries.
    @property
    def cache(self):
        return self.__dict__.get("_cmk_cache")

    @cache.setter
    def cache(self, value) -> None:
        if isinstance(value, MMapCache):
            raise ConfigurationError(
                "a disk cache over cmk:// would store decrypted data; put the cache under the "
                "encryption instead (cmk::simplecache::PROTOCOL://...)"
            )
        self.__dict__["_cmk_cache"] = value

    @property
    def encrypted(self) -> bool:
        return isinstance(self._reader, DecryptingReader)

    @property
    def content_class(self):
        return getattr(self._reader, "content_class", None)

    def _fetch_range(self, start, end):
        return self._reader.read(start, end - start)

    def close(self) -> None:
        if self.closed:
            return
        try:
            super().close()  # drops the read-ahead cache
        finally:
            self.__dict__["_cmk_cache"] = None
            self._reader.close()  # overwrites its plaintext buffers and forgets the file key
            self._source.close()

    def __repr__(self) -> str:
        return f"<CMKReadFile {self.path!r} size={self.size}{' closed' if self.closed else ''}>"


class CMKWriteFile:
    """Write-only stream that encrypts into an atomic sink.

    * ``write`` encrypts segment by segment (memory stays bounded);
    * ``close()`` seals the final segment and publishes the file, unless it
      is called from a context manager's ``__exit__`` that is handling an
      exception (``fsspec.open``'s ``OpenFile``, pandas' handles,
      ``contextlib.closing``), or during interpreter shutdown: then it
      discards (see :func:`closing_from_failed_with`);
    * ``commit()`` publishes regardless; ``discard()`` drops everything;
    * leaving a ``with`` block by an exception discards, and so does
      garbage collection of a file never closed.
    """

    def __init__(self, fs, path, sink, keys, *, segment_size, content_class, threads=None) -> None:
        self.fs = fs
        self.path = path
        self.mode = "wb"
        self._sink = sink
        self._closed = True
        try:
            self._writer = EncryptingWriter(sink, keys, segment_size=segment_size,
                                            content_class=content_class, threads=threads)
        except BaseException:
            sink.discard()
            raise
        self._closed = False
        self._pos = 0
        # Cleanup blocks already running when the file was opened (an error
        # report written from an except branch of some __exit__) are not the
        # block that owns this file: their exceptions are not its failure.
        self._exits_at_open = active_exits(sys._getframe(1))

    # -- io surface ---------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def name(self) -> str:
        return self.path

    def readable(self) -> bool:
        return False

    def writable(self) -> bool:
        return not self._closed

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

    def read(self, *args):
        raise io.UnsupportedOperation("file opened for writing")

    def truncate(self, *args):
        raise UnsupportedOperationError("encrypted files cannot be truncated in place; rewrite the file")

    def write(self, data) -> int:
        if self._closed:
            raise ValueError("I/O operation on closed file.")
        try:
            n = self._writer.write(data)
        except BaseException:
            self.discard()
            raise
        self._pos += n
        return n

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self._closed:
            raise ValueError("I/O operation on closed file.")
        # Nothing to push: a partial segment can only be sealed at close.

    # -- outcome ------------------------------------------------------------

    def commit(self) -> None:
        """Seal the final segment and publish the file at its path."""
        if self._closed:
            return
        try:
            self._writer.close()
            self._sink.commit()
        except BaseException:
            self.discard()
            raise
        self._closed = True

    def discard(self) -> None:
        """Drop everything written so far; the previous version (if any) stays."""
        if self._closed:
            return
        self._closed = True
        try:
            self._writer.abort()
        finally:
            self._sink.discard()

    def close(self) -> None:
        """Publish, unless called by a failing ``with`` block's ``__exit__``
        or during interpreter shutdown: then discard."""
        if self._closed:
            return
        # At shutdown an open writer is an unfinished write: its wrapper's
        # finaliser (TextIOWrapper, GzipFile) is what calls close() here.
        if sys.is_finalizing() or closing_from_failed_with(sys._getframe().f_back, self._exits_at_open):
            self.discard()
        else:
            self.commit()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        else:
            self.discard()

    def __del__(self):
        if not getattr(self, "_closed", True):
            # Never publish from a finaliser: an unclosed file is an unfinished write.
            warnings.warn(f"unclosed encrypted file {self.path!r} was discarded, not written", ResourceWarning, stacklevel=2)
            try:
                self.discard()
            except Exception:  # noqa: BLE001 - interpreter shutdown
                pass

    def __reduce__(self):
        raise TypeError("an open encrypted file cannot be pickled")

    def __repr__(self) -> str:
        return f"<CMKWriteFile {self.path!r} {'closed' if self._closed else f'{self._pos} bytes written'}>"


io.RawIOBase.register(CMKWriteFile)


def active_exits(frame, depth: int = 64) -> frozenset:
    """The ``__exit__`` frames running in ``frame``'s stack (as ``(id, code)``)."""
    found = []
    while frame is not None and depth:
        if frame.f_code.co_name == "__exit__":
            found.append((id(frame), frame.f_code))
        frame = frame.f_back
        depth -= 1
    return frozenset(found)


def closing_from_failed_with(frame, exits_at_open: frozenset = frozenset()) -> bool:
    """True if the nearest ``__exit__`` among ``frame`` and its callers (at
    most :data:`EXIT_SEARCH_DEPTH`) was given an exception, unless that
    ``__exit__`` was already running when the file was opened (then it is
    an enclosing cleanup, not the block that owns the file).

    fsspec's ``OpenFile.__exit__`` (and pandas' handles, ``contextlib.closing``,
    ``ExitStack``) call ``close()`` whether or not the ``with`` block failed;
    their ``__exit__`` arguments say which.  ``sys.exc_info()`` cannot: it is
    also set in an ``except`` block where the exception has been handled, and
    an explicit ``close()`` there must publish.  C-level callers (``io``'s
    ``__exit__``) leave no frame: the wrappers handed out here override
    ``__exit__`` in Python instead.
    """
    depth = 0
    while frame is not None and depth < EXIT_SEARCH_DEPTH:
        code = frame.f_code
        if code.co_name == "__exit__":
            if (id(frame), code) in exits_at_open:
                return False
            return _exit_exc_type(frame) is not None
        frame = frame.f_back
        depth += 1
    return False


def _exit_exc_type(frame):
    """The ``exc_type`` argument of an ``__exit__(self, exc_type, exc, tb)``
    or ``__exit__(self, *args)`` frame."""
    code = frame.f_code
    names = code.co_varnames
    local = frame.f_locals
    if code.co_argcount >= 2:
        return local.get(names[1])
    if code.co_flags & CO_VARARGS:
        args = local.get(names[code.co_argcount + code.co_kwonlyargcount]) or ()
        return args[0] if args else None
    return None


class CMKTextWriter(io.TextIOWrapper):
    """Text mode over a :class:`CMKWriteFile` (or a :class:`CompressedFile`).

    ``io.TextIOWrapper`` closes its buffer from its finaliser and from a
    failing ``with`` block alike, which would publish a half-written file;
    this subclass discards in both cases.  ``closed`` is the buffer's, so a
    discarded writer's later ``close()`` is a no-op.
    """

    def commit(self) -> None:
        if not self.closed:
            self.flush()
            self.buffer.commit()

    def discard(self) -> None:
        if not self.closed:
            self.buffer.discard()  # pending text in this wrapper is dropped with it

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        else:
            self.discard()

    def __del__(self):
        # Replaces io's finaliser (which would flush and close, i.e. publish).
        try:
            buffer = self.buffer
        except ValueError:  # detached
            return
        if not buffer.closed:
            warnings.warn(f"unclosed encrypted file {getattr(buffer, 'name', '')!r} was discarded, not written",
                          ResourceWarning, stacklevel=2)
            try:
                buffer.discard()
            except Exception:  # noqa: BLE001 - finaliser
                pass

    def __reduce__(self):
        raise TypeError("an open encrypted file cannot be pickled")


class CompressedFile:
    """A compressor from ``fsspec.compression`` (GzipFile, BZ2File, ...) over
    a cmkfs file, owning it: closing closes the compressor, then commits
    (writing) or closes (reading) the cmkfs file.  The compressors never
    close a file object they were given, so without this the writer would
    only be garbage-collected, i.e. discarded.
    """

    def __init__(self, compressor, inner) -> None:
        self._compressor = compressor
        self._inner = inner
        self._writing = isinstance(inner, CMKWriteFile)

    def __getattr__(self, name):
        if name.startswith("__") or name in ("_compressor", "_inner", "_writing"):
            raise AttributeError(name)
        return getattr(self._compressor, name)  # read, write, readline, flush, seek (reading), ...

    @property
    def closed(self) -> bool:
        return self._inner.closed

    @property
    def name(self) -> str:
        return self._inner.path

    def commit(self) -> None:
        if self._inner.closed:
            return
        try:
            self._compressor.close()  # its trailer goes into the cmkfs file
        except BaseException:
            self._inner.discard()
            raise
        self._inner.commit()

    def discard(self) -> None:
        if self._inner.closed:
            return
        try:
            self._compressor.close()  # releases it; its output goes into a file about to be dropped
        except Exception:  # noqa: BLE001 - discarding anyway (the writer may have failed first)
            pass
        finally:
            self._inner.discard()

    def close(self) -> None:
        if self._inner.closed:
            return
        if not self._writing:
            try:
                self._compressor.close()
            finally:
                self._inner.close()
        elif sys.is_finalizing() or closing_from_failed_with(sys._getframe().f_back, self._inner._exits_at_open):
            self.discard()
        else:
            self.commit()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if not self._writing:
            self.close()
        elif exc_type is None:
            self.commit()
        else:
            self.discard()

    def __iter__(self):
        return iter(self._compressor)

    def __del__(self):
        inner = self.__dict__.get("_inner")
        if inner is not None and self._writing and not inner.closed:
            try:
                self.discard()  # never publish from a finaliser
            except Exception:  # noqa: BLE001 - finaliser
                pass

    def __reduce__(self):
        raise TypeError("an open encrypted file cannot be pickled")

    def __repr__(self) -> str:
        return f"<CompressedFile {type(self._compressor).__name__} over {self._inner!r}>"


io.IOBase.register(CompressedFile)
