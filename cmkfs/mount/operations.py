"""The FUSE operations of ``cmkfs mount``: a directory tree over any fsspec filesystem.

:class:`MountOperations` is what the kernel talks to (through mfusepy, with ``raw_fi=True`` so that
``open`` can set ``direct_io`` on each handle).  Over a ``cmk`` filesystem it serves plaintext:

* **reads** go through one ``fs.open(path, "rb")`` per FUSE file handle, with seek and read, so
  only the segments that cover a read are fetched and every read passes the key cache's check;
  ``direct_io`` keeps the kernel page cache out, so no plaintext is served from the kernel after
  the key's TTL;
* **writes** stream into one ``fs.open(path, "wb")`` per handle, strictly sequentially, and the
  file is published when the kernel *releases* the handle (the last close of the last
  descriptor), not at ``flush`` (every ``close(2)`` of a duplicate descriptor);
* **metadata** (``getattr``, ``readdir``) comes from ``ls``/``info``, which report plaintext sizes;
  a listing is remembered for ``attr_timeout`` seconds so that ``ls -l`` of a large directory
  costs one ``ls``, not one ``info`` per file.

What cannot be done on a streaming, authenticated format is refused with an errno, never done
halfway: a write anywhere but at the end, opening an existing file for writing without
``O_TRUNC``, truncating to another length (:data:`ERRNO_TABLE`, docs/MOUNT.md).

A write is discarded, never published, when the key is refused before its last close (``flush``
re-confirms it), when its path is removed or renamed over while it is open (the open file is
orphaned, as POSIX does), and when the program that closed it last was being killed by a signal
(:func:`killed_by_signal`, from the pid ``flush`` carries).

Every method runs on one of libfuse's worker threads; the handle tables are guarded by one
lock, and each handle has its own lock (a reader's seek and read go together).

This module is the operations class: paths, the handle table, settling and listings.  The errno
of each failure comes from :mod:`.errnos`, the state of one open file from :mod:`.handles`, and
the ``stat``/``statfs`` dictionaries from :mod:`.metadata`.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import stat
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import CMKError, FormatError, IntegrityError
from ..targets import is_partial_name
from .errnos import ERRNO_TABLE, QUIET, errno_for, errno_name, error
from .handles import FileInfo, ReadHandle, WriteHandle, confirm_write_key, killed_by_signal
from .metadata import BLOCK_SIZE, Attributes, statfs_of

__all__ = [
    "ATTR_TIMEOUT",
    "BLOCK_SIZE",
    "ERRNO_TABLE",
    "MountOperations",
    "errno_for",
    "killed_by_signal",
]

log = logging.getLogger("cmkfs.mount")

#: Seconds the kernel may keep attributes and names (``attr_timeout``, ``entry_timeout``), and
#: the age of a listing that ``getattr`` may still answer from.  Metadata only: file contents
#: are never cached by the kernel (``direct_io``).
ATTR_TIMEOUT = 1.0
# A writer whose last descriptor was closed (flush done) has its RELEASE already queued in the
# kernel: the next open, rename or listing of its path waits this long for it to be picked up ...
SETTLE_QUEUED = 1.0
# ... and this long for a release already running (a publish: a rename, a block-list commit).
SETTLE_PUBLISHING = 120.0
# The same failure (operation, path, errno) is logged at most once per this many seconds.
LOG_INTERVAL = 10.0

# renameat2 flags (linux/fs.h).
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


def _fuse_op(func: Callable[..., Any]) -> Callable[..., Any]:
    """Every exception leaves an operation as an ``OSError`` with the errno of :func:`errno_for`."""
    name = func.__name__

    def op(self: MountOperations, path: str | None, *args: Any) -> Any:
        try:
            return func(self, path, *args)
        except Exception as exc:  # noqa: BLE001 - everything becomes an errno for the kernel
            raise self._failure(name, path, args, exc) from None

    op.__name__ = name
    op.__qualname__ = func.__qualname__
    op.__doc__ = func.__doc__
    return op


class MountOperations:
    """FUSE operations over ``fs`` (an fsspec filesystem, normally ``cmk``), rooted at ``root``.

    Paths from the kernel (``/a/b``) map to ``root + "/a/b"`` on ``fs``.  With ``read_only`` every
    change is refused (``EROFS``).  ``attr_timeout`` must match the value the mount passes to the
    kernel (:mod:`cmkfs.mount.runner` does).  ``caller`` gives the pid of the task a request
    comes from (libfuse's ``fuse_get_context``); without it a killed program's close cannot be
    told from a deliberate one.
    """

    # Times in nanoseconds, as libfuse gives and takes them (mfusepy asks callers to choose).
    use_ns = True

    def __init__(
        self,
        fs: Any,
        root: str = "",
        *,
        read_only: bool = False,
        attr_timeout: float = ATTR_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
        caller: Callable[[], int] | None = None,
    ) -> None:
        self.fs = fs
        # "/" (a whole local disk) stays "/"; "" is a store whose paths have no leading slash.
        self.root = root.rstrip("/") or root[:1]
        self.read_only = read_only
        self.attr_timeout = attr_timeout
        self._clock = clock
        self._caller = caller
        self._attrs = Attributes(read_only=read_only, started=time.time())
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # a writer was flushed, released or written to
        self._handles: dict[int, ReadHandle | WriteHandle] = {}
        self._next_fh = 1
        # Listing entries by mount path: (deadline on the clock, entry); metadata only, never content.
        self._listed: dict[str, tuple[float, dict[str, Any]]] = {}
        # Directories made here that the store does not keep (object stores have no empty folders).
        self._made_dirs: set[str] = set()
        self._logged: dict[tuple[str, str, int], float] = {}
        #: Set when the mount is stopping: files already open are served, new opens are refused.
        self.draining = False
        inner = getattr(fs, "fs", fs)
        protocols = (inner.protocol,) if isinstance(inner.protocol, str) else tuple(inner.protocol)
        self._local_root = (self.root or "/") if ("file" in protocols or "local" in protocols) else None

    # -- paths and handles ----------------------------------------------------------------------

    def _store(self, path: str) -> str:
        """The path on ``fs`` for a mount path."""
        if self.root == "/":
            return path
        if path in ("", "/"):
            return self.root or "/"
        return self.root + path if self.root else path.lstrip("/")

    def _new_handle(self, handle: ReadHandle | WriteHandle) -> int:
        with self._lock:
            fh = self._next_fh
            self._next_fh += 1
            self._handles[fh] = handle
            if isinstance(handle, WriteHandle):
                self._listed.clear()  # a file appears or changes size
        return fh

    def _handle(self, fi: FileInfo | None) -> ReadHandle | WriteHandle:
        handle = self._handles.get(fi.fh) if fi is not None else None
        if handle is None:
            raise error(errno.EBADF)
        return handle

    def _writers(self, match: Callable[[str], bool]) -> list[WriteHandle]:
        with self._lock:
            return [h for h in self._handles.values() if isinstance(h, WriteHandle) and match(h.path)]

    def _writer_for(self, path: str) -> WriteHandle | None:
        found = [w for w in self._writers(lambda p: p == path) if not w.orphaned]
        return found[-1] if found else None

    def _settle(self, match: Callable[[str], bool]) -> None:
        """Wait until writers of matching paths that a program has closed are published.

        close(2) returns once ``flush`` is answered; the kernel has queued the release by then, but
        another worker thread may pick it up after the next request (``cp a b && cat b``).  A
        flush without a release (a duplicate descriptor closed, the file still open) is waited
        for once: after that, requests go on without waiting for it again."""
        start = self._clock()
        with self._changed:
            while True:
                pending = [
                    h
                    for h in self._handles.values()
                    if isinstance(h, WriteHandle)
                    and (h.releasing or (h.flushed and h.waited != h.flushes))
                    and match(h.path)
                ]
                if not pending:
                    return
                limit = SETTLE_PUBLISHING if any(h.releasing for h in pending) else SETTLE_QUEUED
                left = start + limit - self._clock()
                if left <= 0:
                    for handle in pending:
                        handle.waited = handle.flushes  # no release came for this close: still open
                    return
                self._changed.wait(min(left, 0.1))

    def _forget(self) -> None:
        """Drop remembered listings after a change made here."""
        with self._lock:
            self._listed.clear()

    def _check_writable(self) -> None:
        if self.read_only:
            raise error(errno.EROFS)

    # -- errors ---------------------------------------------------------------------------------

    def _failure(self, op: str, path: str | None, args: tuple[Any, ...], exc: Exception) -> OSError:
        code = errno_for(exc)
        if path is None:
            for arg in args:
                handle = self._handles.get(getattr(arg, "fh", -1))
                if handle is not None:
                    path = handle.path
                    break
        if code not in QUIET:
            self._log(op, path or "?", code, exc)
        return error(code)

    def _log(self, op: str, path: str, code: int, exc: Exception) -> None:
        now = self._clock()
        key = (op, path, code)
        with self._lock:
            last = self._logged.get(key)
            if last is not None and now - last < LOG_INTERVAL:
                return
            if len(self._logged) > 1024:
                self._logged.clear()
            self._logged[key] = now
        name = errno_name(code)
        if isinstance(exc, (CMKError, OSError)):
            # cmkfs messages name paths and key URIs, never key material or content.
            if isinstance(exc, OSError) and not isinstance(exc, CMKError) and exc.strerror:
                reason = exc.strerror
            else:
                reason = str(exc) or type(exc).__name__
            log.warning("%s %s: %s (%s)", op, path, reason, name)
        else:
            # Anything else is a bug or a library failing its own way: its text is not ours to vouch for.
            log.error("%s %s: unexpected %s (%s)", op, path, type(exc).__name__, name)
            log.debug("traceback", exc_info=exc)

    # -- metadata -------------------------------------------------------------------------------

    def _info(self, path: str) -> dict[str, Any]:
        """``info`` of a mount path, from a fresh listing if there is one."""
        now = self._clock()
        with self._lock:
            listed = self._listed.get(path)
        if listed is not None and listed[0] > now:
            return listed[1]
        store_path = self._store(path)
        try:
            info: dict[str, Any] = self.fs.info(store_path)
            return info
        except FileNotFoundError:
            if path in self._made_dirs:
                return {"name": store_path, "type": "directory", "size": 0}
            raise
        except (IntegrityError, FormatError):
            # A damaged or foreign file: listed with its stored size (reading it fails with EIO).
            parent = self._store(posixpath.dirname(path))
            for entry in self.fs.ls(parent, detail=True):
                if entry["name"].rstrip("/") == store_path:
                    return dict(entry)
            raise

    @_fuse_op
    def getattr(self, path: str | None, fi: FileInfo | None = None) -> dict[str, Any]:
        if fi is not None:
            handle = self._handle(fi)
            if isinstance(handle, WriteHandle):
                return self._attrs.of("file", handle.size, handle.mtime)
            return self._attrs.of("file", int(handle.file.size))
        assert path is not None
        if path == "/":
            try:
                return self._attrs.of_entry(self.fs.info(self._store(path)))
            except FileNotFoundError:
                return self._attrs.of("directory")
        writer = self._writer_for(path)
        if writer is not None:
            # Being written: the size so far (the store still holds the previous version, if any).
            return self._attrs.of("file", writer.size, writer.mtime)
        return self._attrs.of_entry(self._info(path))

    @_fuse_op
    def readdir(self, path: str | None, fh: int) -> Iterable[str | tuple[str, dict[str, int], int]]:
        if path is None:
            return [".", ".."]  # removed while open
        self._settle(lambda p: posixpath.dirname(p) == path)
        entries = self.fs.ls(self._store(path), detail=True)
        deadline = self._clock() + self.attr_timeout
        out: list[str | tuple[str, dict[str, int], int]] = [".", ".."]
        seen = set()
        listed = {}
        for entry in entries:
            name = posixpath.basename(str(entry["name"]).rstrip("/"))
            if not name or name in seen or is_partial_name(name):
                continue
            seen.add(name)
            child = posixpath.join(path, name)
            listed[child] = (deadline, entry)
            mode = stat.S_IFDIR if entry.get("type") == "directory" else stat.S_IFREG
            out.append((name, {"st_mode": mode}, 0))
        # New files being written and folders made here are there too, as getattr says.
        extra = [(w.path, stat.S_IFREG) for w in self._writers(lambda p: posixpath.dirname(p) == path)]
        extra += [(d, stat.S_IFDIR) for d in list(self._made_dirs) if posixpath.dirname(d) == path]
        for child, mode in extra:
            name = posixpath.basename(child)
            if name not in seen:
                seen.add(name)
                out.append((name, {"st_mode": mode}, 0))
        now = self._clock()
        with self._lock:
            for key in [k for k, (d, _) in self._listed.items() if d <= now]:
                del self._listed[key]
            self._listed.update(listed)
        return out

    @_fuse_op
    def statfs(self, path: str | None) -> dict[str, int]:
        return statfs_of(self._local_root)

    # -- opening and closing --------------------------------------------------------------------

    def _check_serving(self) -> None:
        if self.draining:
            raise error(errno.ESHUTDOWN, "the mount is stopping: no new opens")

    def _check_shared_write(self, path: str, flags: int) -> None:
        """Refuse a second writer that POSIX would have share one file (no ``O_TRUNC``)."""
        if flags & os.O_TRUNC or self._writer_for(path) is None:
            return
        # Each writer streams a file of its own and the last close wins: two descriptors that a
        # program expects to write one file together would publish neither's view of it.
        raise error(errno.EBUSY, "opened for writing without O_TRUNC while another writer has it open")

    @_fuse_op
    def open(self, path: str | None, fi: FileInfo) -> int:
        assert path is not None
        self._check_serving()
        flags = fi.flags
        if flags & os.O_ACCMODE == os.O_RDONLY:
            self._settle(lambda p: p == path)
            handle: ReadHandle | WriteHandle = ReadHandle(path, self.fs.open(self._store(path), "rb"))
        else:
            self._check_writable()
            if is_partial_name(path):
                # A writer's temp file is made once (O_EXCL, see create) and never reopened.
                raise error(errno.EINVAL, "the name of an in-progress temp file")
            self._settle(lambda p: p == path)
            if not flags & os.O_TRUNC:
                # Appending or overwriting in place: the final segment is sealed as last and every
                # segment is authenticated, so an existing file can only be rewritten whole.
                writer = self._writer_for(path)
                size = writer.size if writer is not None else int(self._info(path).get("size") or 0)
                if size:
                    raise error(errno.EOPNOTSUPP, "opened for writing without O_TRUNC: a file is only rewritten whole")
                self._check_shared_write(path, flags)
            handle = WriteHandle(path, self.fs.open(self._store(path), "wb"))
        self._serve(fi, handle)
        return 0

    @_fuse_op
    def create(self, path: str | None, mode: int, fi: FileInfo) -> int:
        assert path is not None
        self._check_serving()
        self._check_writable()
        flags = fi.flags
        if is_partial_name(path) and not flags & os.O_EXCL:
            # Named like an in-progress temp file: hidden from listings, removed by `cmkfs clean`.
            # Only a new one made exclusively passes: a cmk writer layered on this mount makes its
            # own temp file so (and renames it away when done).
            raise error(errno.EINVAL, "the name of an in-progress temp file")
        self._settle(lambda p: p == path)
        if flags & os.O_EXCL and self._writer_for(path) is not None:
            raise error(errno.EEXIST)  # created by another program a moment ago, not published yet
        self._check_shared_write(path, flags)
        self._serve(fi, WriteHandle(path, self.fs.open(self._store(path), "wb")))
        return 0

    def _serve(self, fi: FileInfo, handle: ReadHandle | WriteHandle) -> None:
        # Every read and write reaches this process: the kernel keeps no page of plaintext, and
        # every read passes the key cache's TTL check.
        fi.direct_io = 1
        fi.keep_cache = 0
        fi.fh = self._new_handle(handle)

    @_fuse_op
    def read(self, path: str | None, size: int, offset: int, fi: FileInfo) -> bytes:
        handle = self._handle(fi)
        if not isinstance(handle, ReadHandle):
            raise error(errno.EOPNOTSUPP, "reading a file opened for writing")  # O_RDWR
        with handle.lock:
            handle.file.seek(offset)
            data: bytes = handle.file.read(size)
            return data

    @_fuse_op
    def write(self, path: str | None, data: bytes, offset: int, fi: FileInfo) -> int:
        handle = self._handle(fi)
        if not isinstance(handle, WriteHandle):
            raise error(errno.EBADF)
        with handle.lock:
            if handle.failed:
                raise error(errno.EIO)
            if offset != handle.size:
                # Only appending to what this handle wrote: a write elsewhere cannot be done, and
                # the file must not be published without it (a header patched later, say).
                handle.failed = True
                raise error(
                    errno.EOPNOTSUPP,
                    f"write at offset {offset}, not at the end ({handle.size}): the file will not be published",
                )
            try:
                n = int(handle.file.write(data))
            except BaseException:
                handle.failed = True
                raise
            handle.mtime = time.time()
        if handle.flushed:
            with self._changed:
                handle.flushed = False
        return n

    @_fuse_op
    def truncate(self, path: str | None, length: int, fi: FileInfo | None = None) -> int:
        handle = self._handle(fi) if fi is not None else None
        if handle is None and path is not None:
            handle = self._writer_for(path)
        if handle is not None:
            size = handle.size if isinstance(handle, WriteHandle) else int(handle.file.size)
            if length != size:
                raise error(errno.EOPNOTSUPP, f"truncate to {length} of an open file of {size} bytes")
            return 0
        assert path is not None
        self._check_writable()
        size = int(self._info(path).get("size") or 0)
        if length == size:
            return 0
        if length:
            raise error(errno.EOPNOTSUPP, f"truncate to {length}: only to 0 (a new, empty version)")
        # truncate -s 0: a new, empty version, published at once.
        self.fs.pipe_file(self._store(path), b"")
        self._forget()
        return 0

    @_fuse_op
    def flush(self, path: str | None, fi: FileInfo) -> int:
        handle = self._handle(fi)
        if isinstance(handle, WriteHandle):
            if handle.failed:
                raise error(errno.EIO, "an earlier write failed or was refused: the file is not published")
            # FLUSH is synchronous, in the closing task: a task dying of a signal closes its files
            # this way too, and its last close must not publish a partial file.
            killed = self._caller is not None and killed_by_signal(self._caller())
            try:
                with handle.lock:
                    confirm_write_key(handle.file)
            except BaseException:
                # The key was refused (or its vault is unreachable): the program hears it at
                # close(2), not only the log at release.
                handle.failed = True
                raise
            finally:
                with self._changed:
                    handle.killed = killed
                    handle.flushed = True  # not published yet: a duplicate descriptor may still write
                    handle.flushes += 1
                    self._changed.notify_all()
        return 0

    @_fuse_op
    def fsync(self, path: str | None, datasync: int, fi: FileInfo) -> int:
        handle = self._handle(fi)
        if isinstance(handle, WriteHandle) and handle.failed:
            raise error(errno.EIO)
        return 0  # durable when published, at the last close (docs/MOUNT.md)

    @_fuse_op
    def release(self, path: str | None, fi: FileInfo) -> int:
        handle = self._handle(fi)
        if isinstance(handle, ReadHandle):
            with self._lock:
                self._handles.pop(fi.fh, None)
            with handle.lock:
                handle.file.close()  # overwrites its plaintext buffers
            return 0
        with self._changed:
            handle.releasing = True
        try:
            with handle.lock:
                if handle.killed and not (handle.failed or handle.orphaned):
                    log.warning(
                        "%s: closed by a program killed by a signal: not published; the previous version stays",
                        handle.path,
                    )
                if handle.failed or handle.orphaned or handle.killed:
                    handle.file.discard()  # the previous version stays
                else:
                    handle.file.close()  # publishes
        except BaseException:
            handle.file.discard()
            raise  # logged; the kernel ignores what release returns
        finally:
            with self._changed:
                self._handles.pop(fi.fh, None)
                self._listed.clear()
                self._changed.notify_all()
        return 0

    # -- changes to the tree --------------------------------------------------------------------

    @_fuse_op
    def unlink(self, path: str | None) -> int:
        assert path is not None
        self._check_writable()
        self._settle(lambda p: p == path)
        writers = self._writers(lambda p: p == path)
        for writer in writers:
            writer.orphaned = True  # its release discards: the name stays gone
        try:
            self.fs.rm_file(self._store(path))
        except FileNotFoundError:
            if not writers:
                raise
        self._forget()
        return 0

    @_fuse_op
    def rename(self, old: str | None, new: str, flags: int = 0) -> int:
        assert old is not None
        self._check_writable()
        if flags & RENAME_EXCHANGE or flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE):
            raise error(errno.EINVAL)
        if is_partial_name(new):
            raise error(errno.EINVAL, "renaming to the name of an in-progress temp file")
        if old == new:
            return 0  # a copy and a delete of one name would delete it
        self._settle(lambda p: p in (old, new))
        if self._writer_for(old) is not None:
            # Still being written: its publish is bound to the old name.
            raise error(errno.EBUSY, "renaming a file that is still open for writing")
        source = self._info(old)
        if source.get("type") == "directory":
            # Moving a folder is a copy of every file on an object store: no atomic rename to
            # offer.  EXDEV makes mv, shutil.move and friends copy and delete instead.
            raise error(errno.EXDEV)
        try:
            target = self._info(new)
        except FileNotFoundError:
            target = None
        if target is not None:
            if flags & RENAME_NOREPLACE:
                raise error(errno.EEXIST)
            if target.get("type") == "directory":
                raise error(errno.EISDIR)
        # Writers still open on the new name lose it, as an unlinked file would: POSIX orphans
        # that inode, so their last close must not put the old content back over the moved file.
        orphaned = [w for w in self._writers(lambda p: p == new) if not w.orphaned]
        if orphaned and flags & RENAME_NOREPLACE:
            raise error(errno.EEXIST)
        for writer in orphaned:
            writer.orphaned = True
        try:
            self._move_file(self._store(old), self._store(new))
        except BaseException:
            for writer in orphaned:
                writer.orphaned = False  # the name is still theirs
            raise
        finally:
            self._forget()
        return 0

    def _move_file(self, old: str, new: str) -> None:
        """Rename one file on the store, with calls that take the names literally.

        fsspec's ``mv`` (and ``copy``, ``rm``) expand globs: ``[``, ``*`` and ``?`` in a name
        would move or remove other files.  Local disk: one atomic ``os.replace``; an object store:
        ``cp_file`` and ``rm_file``, a server-side copy and a delete."""
        if self._local_root is not None:
            try:
                os.replace(old, new)
            finally:
                self.fs.invalidate_cache()  # cmk's remembered plaintext sizes name the old paths
            return
        self.fs.cp_file(old, new)
        self.fs.rm_file(old)

    @_fuse_op
    def mkdir(self, path: str | None, mode: int) -> int:
        assert path is not None
        self._check_writable()
        if is_partial_name(path):
            raise error(errno.EINVAL, "the name of an in-progress temp file")  # hidden from listings
        store_path = self._store(path)
        if self.fs.exists(store_path) or path in self._made_dirs:
            raise error(errno.EEXIST)
        self.fs.mkdir(store_path, create_parents=False)
        if not self.fs.isdir(store_path):
            with self._lock:
                self._made_dirs.add(path)
        self._forget()
        return 0

    @_fuse_op
    def rmdir(self, path: str | None) -> int:
        assert path is not None
        self._check_writable()
        self._settle(lambda p: posixpath.dirname(p) == path)
        store_path = self._store(path)
        if self._writers(lambda p: posixpath.dirname(p) == path):
            raise error(errno.ENOTEMPTY)
        made = path in self._made_dirs
        try:
            if self.fs.ls(store_path, detail=False):
                raise error(errno.ENOTEMPTY)
            self.fs.rmdir(store_path)
        except FileNotFoundError:
            if not made:
                raise
        with self._lock:
            self._made_dirs.discard(path)
            self._made_dirs = {d for d in self._made_dirs if not d.startswith(path + "/")}
        self._forget()
        return 0

    # Permissions, owners and times are not stored (the storage keeps its own times): these
    # succeed and change nothing, so that cp -p, touch and shutil.copy2 work.
    @_fuse_op
    def chmod(self, path: str | None, mode: int) -> int:
        if self.read_only:
            raise error(errno.EROFS)
        return 0

    @_fuse_op
    def chown(self, path: str | None, uid: int, gid: int) -> int:
        if self.read_only:
            raise error(errno.EROFS)
        return 0

    @_fuse_op
    def utimens(self, path: str | None, times: tuple[int, int] | None = None) -> int:
        if self.read_only:
            raise error(errno.EROFS)
        return 0

    # Links and special files have no encrypted form: refused outright rather than ENOSYS.
    @_fuse_op
    def symlink(self, target: str | None, source: str) -> int:
        raise error(errno.EROFS if self.read_only else errno.EOPNOTSUPP)

    @_fuse_op
    def link(self, target: str | None, source: str) -> int:
        raise error(errno.EROFS if self.read_only else errno.EOPNOTSUPP)

    @_fuse_op
    def mknod(self, path: str | None, mode: int, dev: int) -> int:
        raise error(errno.EROFS if self.read_only else errno.EOPNOTSUPP)

    # -- teardown -------------------------------------------------------------------------------

    def destroy(self, path: str | None) -> None:
        """Unmounted: a handle the kernel never released is an unfinished write, discarded."""
        self.close_all()

    def close_all(self) -> None:
        """Discard every open writer (never publish from teardown) and close every reader."""
        with self._lock:
            handles = list(self._handles.values())
            self._handles.clear()
        for handle in handles:
            try:
                if isinstance(handle, WriteHandle):
                    log.warning("%s: unfinished write discarded at unmount; the previous version stays", handle.path)
                    handle.file.discard()
                else:
                    handle.file.close()
            except Exception as exc:  # noqa: BLE001 - teardown goes on for the others
                log.warning("closing %s at unmount: %s", handle.path, type(exc).__name__)

    @property
    def open_files(self) -> int:
        with self._lock:
            return len(self._handles)
