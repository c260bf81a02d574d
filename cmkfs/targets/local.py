"""Local files: a temp file renamed over the target; ``os.pread`` on one descriptor."""

from __future__ import annotations

import io
import os
import re
import secrets
import stat

from fsspec.implementations.local import LocalFileSystem

from ..errors import IntegrityError
from ..secret import BytesLike

__all__ = ["PARTIAL_MARKER", "LocalSink", "LocalSource", "is_partial_name"]

PARTIAL_MARKER = ".cmkfs-partial-"
# ".NAME.cmkfs-partial-RANDOM": hidden, and recognisable so listings skip it.
_PARTIAL_RE = re.compile(r"^\..+" + re.escape(PARTIAL_MARKER) + r"[0-9a-f]{16}$")


def is_partial_name(path: str) -> bool:
    """True for the temp files an in-progress local write leaves beside its target."""
    return bool(_PARTIAL_RE.match(path.rstrip("/").rsplit("/", 1)[-1]))


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
        self.path: str = path
        self._exclusive = exclusive
        self._tmp = os.path.join(directory, f".{name}{PARTIAL_MARKER}{secrets.token_hex(8)}")
        # O_EXCL: never follow or reuse somebody else's file.  It holds ciphertext
        # only, so a new file gets the permissions a plain open() would give.
        try:
            fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError as exc:
            raise self._named(exc) from None
        self._file = io.FileIO(fd, "wb", closefd=True)
        self._done = False
        if not exclusive:
            try:
                _keep_mode_and_owner(fd, path)
            except BaseException:
                self.discard()
                raise

    def write(self, data: BytesLike) -> int:
        view = memoryview(data)
        total = 0
        try:
            while total < len(view):
                total += self._file.write(view[total:])
        except OSError as exc:
            raise self._named(exc) from None
        return total

    def _named(self, exc: OSError) -> OSError:
        """``exc`` about the path the user wrote, not the hidden temp file (which is gone or going)."""
        if exc.errno is None or exc.filename not in (None, self._tmp):
            return exc
        return OSError(exc.errno, exc.strerror, self.path)  # OSError() picks the subclass for the errno

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
        except OSError as exc:
            self.discard()
            raise self._named(exc) from None
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

    def read_range(self, start: int, end: int) -> bytes:
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

    def read_range_into(self, start: int, out: bytearray | memoryview) -> None:
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

    def __del__(self) -> None:
        self.close()
