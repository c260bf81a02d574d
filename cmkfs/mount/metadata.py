"""The metadata answers of ``cmkfs mount``: ``getattr``'s ``st_*`` and ``statfs``'s ``f_*`` dictionaries.

Permissions and owners are not stored: every file and folder belongs to the user who mounted,
with fixed modes (read-only ones on a read-only mount).  Times are in nanoseconds.
"""

from __future__ import annotations

import os
import stat
from typing import Any

from ..admin.walk import mtime_of

__all__ = ["BLOCK_SIZE", "Attributes", "statfs_of"]

#: ``st_blksize``: the I/O size ``cp``, ``cat`` and stdio choose.  Large requests mean few trips
#: through the kernel and Python per MiB; the kernel splits them at its own maximum anyway.
BLOCK_SIZE = 1024 * 1024

FILE_MODE = 0o644
DIR_MODE = 0o755
READ_ONLY_FILE_MODE = 0o444
READ_ONLY_DIR_MODE = 0o555


class Attributes:
    """``st_*`` dictionaries for one mount; a time not known is ``started`` (when it was mounted)."""

    def __init__(self, *, read_only: bool, started: float) -> None:
        self._uid = os.getuid()
        self._gid = os.getgid()
        self._file_mode = READ_ONLY_FILE_MODE if read_only else FILE_MODE
        self._dir_mode = READ_ONLY_DIR_MODE if read_only else DIR_MODE
        self._started = started

    def of(self, kind: str, size: int = 0, mtime: float | None = None) -> dict[str, Any]:
        when = int((self._started if mtime is None else mtime) * 1e9)
        if kind == "directory":
            mode, nlink, size = stat.S_IFDIR | self._dir_mode, 2, 0
        else:
            mode, nlink = stat.S_IFREG | self._file_mode, 1
        return {
            "st_mode": mode,
            "st_nlink": nlink,
            "st_size": size,
            "st_uid": self._uid,
            "st_gid": self._gid,
            "st_blksize": BLOCK_SIZE,
            "st_blocks": (size + 511) // 512,
            "st_atime": when,
            "st_mtime": when,
            "st_ctime": when,
        }

    def of_entry(self, entry: dict[str, Any]) -> dict[str, Any]:
        kind = "directory" if entry.get("type") == "directory" else "file"
        return self.of(kind, int(entry.get("size") or 0), mtime_of(entry))


def statfs_of(local_root: str | None) -> dict[str, int]:
    """``statfs`` of the mount: the disk's own figures under ``local_root``, else an object store's."""
    if local_root is not None:
        try:
            st = os.statvfs(local_root)
        except OSError:
            pass
        else:
            return {
                "f_bsize": st.f_bsize,
                "f_frsize": st.f_frsize,
                "f_blocks": st.f_blocks,
                "f_bfree": st.f_bfree,
                "f_bavail": st.f_bavail,
                "f_files": st.f_files,
                "f_ffree": st.f_ffree,
                "f_favail": st.f_favail,
                "f_namemax": st.f_namemax,
            }
    # An object store has no capacity to report: plenty, as other object-store mounts say.
    blocks = 1 << 40
    return {
        "f_bsize": BLOCK_SIZE,
        "f_frsize": 4096,
        "f_blocks": blocks,
        "f_bfree": blocks,
        "f_bavail": blocks,
        "f_files": 1 << 30,
        "f_ffree": 1 << 30,
        "f_favail": 1 << 30,
        "f_namemax": 255,
    }
