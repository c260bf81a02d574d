"""The state of one open file of ``cmkfs mount``: a reader, or a writer and what decides its release.

A :class:`WriteHandle` is published at its release unless a write failed or was refused, its path
was removed or renamed over while open (orphaned), or the program that closed it last was being
killed by a signal (:func:`killed_by_signal`).  Its ``flushed``, ``flushes``, ``waited`` and
``releasing`` fields tell the operations whether a release is on its way (settling).  Each handle
has its own lock (a reader's seek and read go together).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Protocol

__all__ = ["FileInfo", "Handle", "ReadHandle", "WriteHandle", "confirm_write_key", "killed_by_signal"]

# Task flags in /proc/PID/stat (linux/sched.h): the task is exiting; a fatal signal made it exit.
PF_EXITING = 0x4
PF_SIGNALED = 0x400


def killed_by_signal(pid: int) -> bool:
    """Whether task ``pid`` is exiting because a signal killed it (the kernel closes its files).

    Read from ``/proc/PID/stat``: the flags (field 9) show ``PF_EXITING`` and ``PF_SIGNALED``, and
    the exit status (field 52) holds the signal.  ``PF_SIGNALED`` alone is not enough: the other
    threads of a process that calls ``exit(n)`` are stopped with an internal SIGKILL and carry it,
    with the exit status ``n << 8``.  False when it cannot tell (pid 0, no /proc, a task gone)."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            text = stat_file.read()
    except OSError:
        return False
    fields = text[text.rfind(b")") + 1 :].split()  # the command name may hold spaces and parentheses
    try:
        flags, exit_code = int(fields[6]), int(fields[49])  # fields 9 and 52; fields[0] is field 3
    except (IndexError, ValueError):
        return False
    return bool(flags & PF_EXITING and flags & PF_SIGNALED and exit_code & 0x7F)


class FileInfo(Protocol):
    """The part of libfuse's ``struct fuse_file_info`` the mount uses (mfusepy, ``raw_fi=True``)."""

    flags: int
    fh: int
    direct_io: int
    keep_cache: int


class Handle:
    def __init__(self, path: str, file: Any) -> None:
        self.path = path
        self.file = file
        self.lock = threading.Lock()


class ReadHandle(Handle):
    pass


class WriteHandle(Handle):
    def __init__(self, path: str, file: Any) -> None:
        super().__init__(path, file)
        self.failed = False  # a write failed or was refused: released, it is discarded
        self.orphaned = False  # the path was removed or renamed over while open: released, it is discarded
        self.killed = False  # the last close came from a task killed by a signal: released, it is discarded
        self.flushed = False  # a close(2) came and no write since: its release is on its way
        self.flushes = 0  # close(2)s so far ...
        self.waited = 0  # ... and the last one a listing or an open already waited a release for
        self.releasing = False
        self.mtime = time.time()

    @property
    def size(self) -> int:
        return int(self.file.tell())


def confirm_write_key(file: Any) -> None:
    """Re-confirm the key of a cmk writer with its vault if its TTL passed (raises if refused).

    A small write is only buffered, and the key is checked again when a segment is sealed: at
    release, whose result the kernel ignores.  A file of another filesystem has no key to confirm."""
    confirm = getattr(file, "confirm_key", None)
    if confirm is not None:
        confirm()
