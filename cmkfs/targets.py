"""Atomic commit and ranged reads, per target filesystem.

The encrypting layer needs two things from the storage under it, and
nothing else touches the target's bytes:

* an :class:`AtomicSink`: ``write(data)`` ciphertext, then ``commit()`` to
  make it appear at the final path, or ``discard()`` to drop it.  A reader
  of the final path sees the previous version or the new one, never a mix
  (where the target allows it: see the table below);
* a :class:`RangeSource`: ``size`` and ``read_range(start, end)``, so a
  reader fetches exactly the header and segments it needs.

=================  ==========================================  ====================
target             commit                                      ranged read
=================  ==========================================  ====================
local (``file``)   temp file ``.NAME.cmkfs-partial-RANDOM`` in  ``os.pread`` on one
                   the same directory with the old file's       file descriptor
                   mode, fsync, ``os.replace``
memory             buffered, ``pipe_file`` on commit            ``cat_file(start, end)``
``dir::X``         whatever X uses, at the joined path          (same)
any other fsspec   ``fs.open(path, "wb")``; commit = close;     ``cat_file(start, end)``
                   discard = ``f.discard()`` (else ``rm``)
=================  ==========================================  ====================

The generic path is only as atomic as the backend's own upload: object
stores (S3, GCS) and fsspec's ``simplecache`` publish at close, and
``discard`` aborts the upload; but backends that create the file at open or
stream to the final path (SFTP, FTP, WebDAV, ...) replace the previous
version as soon as a write starts, and a failed write leaves a partial file
there.  A partial file never has a sealed final segment, so cmkfs refuses to
read it (IntegrityError) rather than return truncated plaintext.  Register a
sink for such a backend (temp name + server-side rename) to make it atomic.

Other modules extend this with :func:`register_target`; the Azure Blob
module (``cmkfs.targets_azure``) is imported lazily for ``abfs``, ``az`` and
``abfss`` when present.
"""

from __future__ import annotations

import importlib
import io
import os
import re
import secrets
import stat
import threading
from typing import Callable, Protocol

from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from .errors import IntegrityError

__all__ = [
    "AtomicSink",
    "RangeSource",
    "open_atomic_sink",
    "open_range_source",
    "register_target",
    "is_partial_name",
    "PARTIAL_MARKER",
]

PARTIAL_MARKER = ".cmkfs-partial-"
# ".NAME.cmkfs-partial-RANDOM": hidden, and recognisable so listings skip it.
_PARTIAL_RE = re.compile(r"^\..+" + re.escape(PARTIAL_MARKER) + r"[0-9a-f]{16}$")
LAZY_TARGET_MODULES = {"abfs": "cmkfs.targets_azure", "az": "cmkfs.targets_azure", "abfss": "cmkfs.targets_azure"}

SinkFactory = Callable[..., "AtomicSink"]
SourceFactory = Callable[..., "RangeSource"]

_SINKS: dict[str, SinkFactory] = {}
_SOURCES: dict[str, SourceFactory] = {}
_LOCK = threading.Lock()
_LAZY_TRIED: set[str] = set()


class AtomicSink(Protocol):
    """Ciphertext goes in through ``write``; nothing is visible before ``commit``."""

    def write(self, data) -> int: ...

    def commit(self) -> None: ...

    def discard(self) -> None: ...


class RangeSource(Protocol):
    size: int

    def read_range(self, start: int, end: int): ...

    def close(self) -> None: ...


def register_target(protocol_names, sink_factory: SinkFactory | None = None,
                    source_factory: SourceFactory | None = None) -> None:
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


def is_partial_name(path: str) -> bool:
    """True for the temp files an in-progress local write leaves beside its target."""
    return bool(_PARTIAL_RE.match(path.rstrip("/").rsplit("/", 1)[-1]))


def _protocols(fs) -> tuple[str, ...]:
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)


def _lookup(table: dict, fs):
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


def _unwrap_dirfs(fs, path: str):
    """``dir::`` only prefixes paths: use the atomic path of the filesystem under it."""
    for _ in range(8):
        if not isinstance(fs, DirFileSystem) or fs.asynchronous:
            break
        fs, path = fs.fs, fs._join(path)
    return fs, path


def open_atomic_sink(fs, path: str, metadata: dict | None = None, *, exclusive: bool = False,
                     fsync: bool = True) -> AtomicSink:
    """An :class:`AtomicSink` writing ``path`` on ``fs``.

    ``exclusive`` makes commit fail with ``FileExistsError`` if ``path``
    exists (mode ``"xb"``), atomically where the target allows it.
    ``fsync=False`` skips the local disk flush before the rename: a process
    crash still leaves old-or-new, but a power loss may leave neither.
    """
    fs, path = _unwrap_dirfs(fs, path)
    factory = _lookup(_SINKS, fs)
    if factory is not None:
        return factory(fs, path, metadata=metadata, exclusive=exclusive)
    if isinstance(fs, LocalFileSystem):
        return LocalSink(fs, path, exclusive=exclusive, fsync=fsync)
    if isinstance(fs, MemoryFileSystem):
        return MemorySink(fs, path, exclusive=exclusive)
    return FsspecSink(fs, path, metadata=metadata, exclusive=exclusive)


def open_range_source(fs, path: str, size: int | None = None) -> RangeSource:
    """A :class:`RangeSource` over ``path`` on ``fs`` (close it when done)."""
    fs, path = _unwrap_dirfs(fs, path)
    factory = _lookup(_SOURCES, fs)
    if factory is not None:
        return factory(fs, path, size=size)
    if isinstance(fs, LocalFileSystem):
        return LocalSource(path)
    if type(fs) is MemoryFileSystem:  # a subclass may count or alter cat_file: honour it
        return MemorySource(fs, path)
    return CatFileSource(fs, path, size=size)


# -- local -----------------------------------------------------------------


class LocalSink:
    """Temp file beside the target, fsync, ``os.replace``: readers see old or new."""

    def __init__(self, fs: LocalFileSystem, path: str, *, exclusive: bool = False, fsync: bool = True) -> None:
        path = fs._strip_protocol(path)
        self._fsync = fsync
        directory, name = os.path.split(path)
        if getattr(fs, "auto_mkdir", False) and directory:
            os.makedirs(directory, exist_ok=True)
        if os.path.isdir(path):
            raise IsADirectoryError(path)
        if exclusive and os.path.lexists(path):
            raise FileExistsError(path)
        self.path = path
        self._exclusive = exclusive
        self._tmp = os.path.join(directory, f".{name}{PARTIAL_MARKER}{secrets.token_hex(8)}")
        # O_EXCL: never follow or reuse somebody else's file.  It holds ciphertext
        # only, so a new file gets the permissions a plain open() would give.
        fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        self._file = io.FileIO(fd, "wb", closefd=True)
        self._done = False
        if not exclusive:
            try:
                _keep_mode_and_owner(fd, path)
            except BaseException:
                self.discard()
                raise

    def write(self, data) -> int:
        view = memoryview(data)
        total = 0
        while total < len(view):
            total += self._file.write(view[total:])
        return total

    def commit(self) -> None:
        if self._done:
            return
        try:
            self._file.flush()
            if self._fsync:
                # Durable before visible: after a power loss the path holds
                # the old file or the whole new one, never a torn one.
                os.fsync(self._file.fileno())
            self._file.close()
            if self._exclusive:
                os.link(self._tmp, self.path)  # fails if the path exists: atomic create-only
                os.unlink(self._tmp)
            else:
                os.replace(self._tmp, self.path)
            if self._fsync:
                _fsync_dir(os.path.dirname(self.path))
        except BaseException:
            self.discard()
            raise
        self._done = True

    def discard(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            self._file.close()
        finally:
            try:
                os.unlink(self._tmp)
            except FileNotFoundError:
                pass


def _keep_mode_and_owner(fd: int, path: str) -> None:
    """Give the temp file the permission bits (and, where allowed, the owner
    and group) of the file it will replace, so a rewrite or a rewrap never
    widens access.  A symlink at ``path`` is followed for this, but the
    rename then replaces the link itself with a regular file."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return  # a new file (or a dangling link): the umask decides, as for open()
    if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
        for uid, gid in ((st.st_uid, st.st_gid), (-1, st.st_gid)):
            try:
                os.fchown(fd, uid, gid)  # only root may give a file away; a member may set its group
                break
            except PermissionError:
                continue
    # Permission bits only: setuid/setgid never carry over to new content.
    os.fchmod(fd, stat.S_IMODE(st.st_mode) & 0o777)


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory or ".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the rename is still atomic
    finally:
        os.close(fd)


class LocalSource:
    """``os.pread`` on one descriptor: the file we opened stays the file we read,
    even if a writer replaces the path meanwhile."""

    _fd = -1  # until the open succeeds: __del__ runs even when __init__ raised

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self.size = os.fstat(self._fd).st_size

    def read_range(self, start: int, end: int):
        if self._fd < 0:
            raise ValueError("I/O operation on closed file")
        n = end - start
        data = os.pread(self._fd, n, start)
        if len(data) == n:
            return data  # the usual case: one read, no copy
        parts = [data]
        got = len(data)
        while got < n:
            chunk = os.pread(self._fd, n - got, start + got)
            if not chunk:
                raise IntegrityError()  # shorter than it was at open: truncated under us
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    def read_range_into(self, start: int, out) -> None:
        """Fill ``out`` from ``start``: reused buffers spare the page faults
        of a fresh multi-MiB allocation per read (they cost more than AES)."""
        if self._fd < 0:
            raise ValueError("I/O operation on closed file")
        view = memoryview(out)
        got = 0
        while got < len(view):
            n = os.preadv(self._fd, [view[got:]], start + got)
            if n == 0:
                raise IntegrityError()  # shorter than it was at open: truncated under us
            got += n

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self):
        self.close()


# -- memory ----------------------------------------------------------------


class MemorySink:
    """Buffer the ciphertext, publish it with one ``pipe_file`` on commit."""

    def __init__(self, fs: MemoryFileSystem, path: str, *, exclusive: bool = False) -> None:
        self._fs = fs
        self.path = path
        self._exclusive = exclusive
        if fs.isdir(path):
            raise IsADirectoryError(path)
        if exclusive and fs.exists(path):
            raise FileExistsError(path)
        self._buf: io.BytesIO | None = io.BytesIO()

    def write(self, data) -> int:
        return self._buf.write(data)

    def commit(self) -> None:
        if self._buf is None:
            return
        data, self._buf = self._buf.getvalue(), None
        self._fs.pipe_file(self.path, data, mode="create" if self._exclusive else "overwrite")

    def discard(self) -> None:
        self._buf = None


class MemorySource:
    """Ranged reads straight out of a memory file's buffer (no intermediate copy)."""

    def __init__(self, fs: MemoryFileSystem, path: str) -> None:
        path = fs._strip_protocol(path)
        try:
            self._file = fs.store[path]
        except KeyError:
            raise FileNotFoundError(path) from None
        # The object we opened stays the object we read: a later write
        # publishes a new one under the same path.
        self.size = self._file.getbuffer().nbytes

    def read_range(self, start: int, end: int):
        with self._file.getbuffer() as view:
            return bytes(view[start:end])

    def read_range_into(self, start: int, out) -> None:
        with self._file.getbuffer() as view:
            if start + len(out) > view.nbytes:
                raise IntegrityError()
            memoryview(out)[:] = view[start : start + len(out)]

    def close(self) -> None:
        self._file = None


# -- any fsspec filesystem ---------------------------------------------------


class FsspecSink:
    """``fs.open(path, "wb")``: as atomic as the backend's upload (see module doc)."""

    def __init__(self, fs, path: str, metadata: dict | None = None, *, exclusive: bool = False) -> None:
        self._fs = fs
        self.path = path
        kwargs = {"metadata": metadata} if metadata else {}
        if exclusive and fs.exists(path):
            raise FileExistsError(path)
        self._f = fs.open(path, "xb" if exclusive else "wb", **kwargs)
        self._done = False

    def write(self, data) -> int:
        return self._f.write(data)

    def commit(self) -> None:
        if self._done:
            return
        self._done = True
        self._f.close()

    def discard(self) -> None:
        if self._done:
            return
        self._done = True
        f = self._f
        discard = getattr(f, "discard", None)
        if callable(discard):
            discard()  # aborts a multipart / block upload where the backend supports it
            _never_commit(f)
        else:
            try:
                f.close()
            finally:
                try:
                    self._fs.rm_file(self.path)
                except FileNotFoundError:
                    pass


def _never_commit(f) -> None:
    """Stop a discarded file from publishing itself later (fsspec files commit
    from ``close()`` and ``__del__``)."""
    try:
        f.closed = True  # fsspec's AbstractBufferedFile: close() and __del__ become no-ops
        return
    except AttributeError:
        pass
    for name in ("commit", "close", "flush"):  # io-based files such as MemoryFile
        try:
            setattr(f, name, _noop)
        except AttributeError:
            pass


def _noop(*args, **kwargs) -> None:
    return None


class CatFileSource:
    """Ranged reads through ``cat_file(path, start, end)``: no read-ahead of the
    target's own (adlfs would otherwise pull 50 MiB blocks)."""

    def __init__(self, fs, path: str, size: int | None = None) -> None:
        self._fs = fs
        self._path = path
        self.size = int(fs.info(path)["size"]) if size is None else int(size)

    def read_range(self, start: int, end: int):
        if end <= start:
            return b""
        data = self._fs.cat_file(self._path, start=start, end=end)
        if len(data) != end - start:
            raise IntegrityError()  # the object changed size under us
        return data

    def close(self) -> None:
        pass
