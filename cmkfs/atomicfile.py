"""Small local files written whole or not at all: the vault's key files, ``config.json``, drill reports.

A temporary file beside the target (created ``0600``), written and fsync'd, renamed over the target, and the
folder fsync'd: a crash or power loss leaves the old file or the new one, never a mix.  Ciphertext files are
the targets' business (:mod:`cmkfs.targets`); this is for the few small local files cmkfs keeps itself.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["write_atomically", "fsync_dir"]


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (a rename or a new file in it) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: str | os.PathLike[str], data: bytes | memoryview, *, temp_prefix: str = ".tmp-") -> Path:
    """Replace ``path`` with ``data`` so that readers, and a crash, see the old file or the new one, whole.

    The file is created ``0600`` (an existing file's mode is not kept).  ``temp_prefix`` names the temporary
    file, so a folder's owner can recognise and remove the leftover of a crash."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix, dir=path.parent)  # created 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return path
