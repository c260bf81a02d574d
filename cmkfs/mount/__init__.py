"""``cmkfs mount``: any ``cmk`` store as a directory tree, for programs that do not speak fsspec.

:class:`MountOperations` (:mod:`.operations`) is the FUSE side over an fsspec filesystem;
:mod:`.runner` mounts it in the foreground or as a detached process and unmounts it.  The
binding is mfusepy (``pip install 'cmkfs[mount]'``), imported only when a mount starts.  The
user's view, the caching model and the errno table are in docs/MOUNT.md.
"""

from .operations import ATTR_TIMEOUT, ERRNO_TABLE, MountOperations, errno_for
from .runner import (
    FSTYPE,
    MountBusyError,
    MountError,
    MountSpec,
    NotMountedError,
    load_fuse,
    open_target,
    serve,
    start_background,
    unmount,
)

__all__ = [
    "ATTR_TIMEOUT",
    "ERRNO_TABLE",
    "FSTYPE",
    "MountBusyError",
    "MountError",
    "MountOperations",
    "MountSpec",
    "NotMountedError",
    "errno_for",
    "load_fuse",
    "open_target",
    "serve",
    "start_background",
    "unmount",
]
