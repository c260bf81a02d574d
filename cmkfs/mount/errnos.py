"""Errno translation for ``cmkfs mount``: the errno a program sees for a cmkfs or storage error.

:data:`ERRNO_TABLE` is the table docs/MOUNT.md documents; a storage error that carries an errno
of its own keeps it.  :func:`error` builds the ``OSError`` an operation raises.
"""

from __future__ import annotations

import errno
import io
import os

from ..errors import (
    CMKError,
    ConfigurationError,
    FormatError,
    IntegrityError,
    KeyNotFoundError,
    KeyRevokedError,
    UnsupportedOperationError,
    VaultUnavailableError,
)

__all__ = ["ERRNO_TABLE", "QUIET", "errno_for", "errno_name", "error"]

#: Exception class -> errno; the first match wins.  The cmkfs errors come first: some of them are
#: also OSErrors (``KeyRevokedError`` is a ``PermissionError``) without an errno of their own.
ERRNO_TABLE: tuple[tuple[type[BaseException], int], ...] = (
    (KeyRevokedError, errno.EACCES),  # key disabled, revoked or destroyed: "Permission denied"
    (KeyNotFoundError, errno.EACCES),  # no key to read it with, same outcome for the reader
    (ConfigurationError, errno.EACCES),  # no key configured for writes, an untrusted vault
    (IntegrityError, errno.EIO),  # tampered or truncated: never data, never a retryable code
    (FormatError, errno.EIO),  # not a cmkfs file (or a damaged header)
    (VaultUnavailableError, errno.EIO),  # fail closed; EAGAIN would send readers into a busy loop
    (UnsupportedOperationError, errno.EOPNOTSUPP),
    (CMKError, errno.EIO),
    (FileNotFoundError, errno.ENOENT),
    (FileExistsError, errno.EEXIST),
    (IsADirectoryError, errno.EISDIR),
    (NotADirectoryError, errno.ENOTDIR),
    (PermissionError, errno.EACCES),
    (io.UnsupportedOperation, errno.EOPNOTSUPP),
    (NotImplementedError, errno.EOPNOTSUPP),
    (TimeoutError, errno.ETIMEDOUT),
)
# Failures that are part of normal traffic (a shell looking for files, mv moving a folder): never logged.
QUIET = frozenset({errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR, errno.EXDEV})
# errno.errorcode says ENOTSUP for 95 on Linux; the name programs and docs use is EOPNOTSUPP.
_NAMES = {errno.EOPNOTSUPP: "EOPNOTSUPP"}


def errno_for(exc: BaseException) -> int:
    """The errno a program sees for ``exc`` (see :data:`ERRNO_TABLE`): a storage error keeps its own."""
    if not isinstance(exc, CMKError) and isinstance(exc, OSError) and isinstance(exc.errno, int) and exc.errno > 0:
        return exc.errno
    for cls, code in ERRNO_TABLE:
        if isinstance(exc, cls):
            return code
    return errno.EIO


def errno_name(code: int) -> str:
    """The name of ``code`` for the log (``EACCES``; ``EOPNOTSUPP``, never ``ENOTSUP``)."""
    return _NAMES.get(code) or errno.errorcode.get(code, str(code))


def error(code: int, reason: str | None = None) -> OSError:
    """The error an operation raises; ``reason`` is for the log (the program sees the errno)."""
    return OSError(code, reason or os.strerror(code))
