"""The cmkfs error hierarchy: one base class, and subclasses that are also the builtin a caller would catch.

Messages never contain key material or plaintext.
"""

from __future__ import annotations

__all__ = [
    "CMKError",
    "FormatError",
    "IntegrityError",
    "KeyRevokedError",
    "KeyNotFoundError",
    "VaultUnavailableError",
    "ConfigurationError",
    "UnsupportedOperationError",
    "INTEGRITY_MESSAGE",
    "integrity_error_at",
]

# One text whatever the check that failed: the message tells an attacker nothing.
INTEGRITY_MESSAGE = "encrypted file failed authentication (tampered, truncated or wrong key)"


class CMKError(Exception):
    """Base class of every error raised by cmkfs."""


class FormatError(CMKError, ValueError):
    """The bytes are not a cmkfs file, or use a version or parameter this
    release does not understand (a foreign or malformed file)."""


class IntegrityError(CMKError):
    """Authentication failed: tampering, truncation, appended data, a spliced
    header or the wrong key.  The message is fixed and says nothing about
    which check failed.

    Deliberately not an ``OSError``: no generic "retry on I/O error" path may
    swallow evidence of tampering.
    """

    #: The file, where the layer that raised it knew one (see :func:`integrity_error_at`).
    path: str | None = None

    def __init__(self, message: str = INTEGRITY_MESSAGE) -> None:
        super().__init__(message)


class KeyRevokedError(CMKError, PermissionError):
    """The key-encryption key is disabled, revoked, destroyed or not allowed
    to perform the operation.  Content protected by it is unreadable."""


class KeyNotFoundError(CMKError, LookupError):
    """The key URI or key version does not exist in its vault."""


class VaultUnavailableError(CMKError, ConnectionError):
    """The key vault or HSM could not be reached (after bounded retries) and
    no unexpired cached key may be used: cmkfs fails closed."""


class ConfigurationError(CMKError, ValueError):
    """Invalid options: a bad key URI, a cache TTL above the limit, a
    segment size out of range, a missing optional dependency, ..."""


class UnsupportedOperationError(CMKError, NotImplementedError):
    """The operation cannot be done safely on encrypted files (append mode,
    seeking while writing, a filesystem method cmkfs does not delegate)."""


def integrity_error_at(path: str, exc: IntegrityError | None = None) -> IntegrityError:
    """An :class:`IntegrityError` naming the user's ``path`` before the reason.

    For the boundary where the path is known (``raise integrity_error_at(path, exc) from None``): the
    reason stays the engine's fixed text, so the path is all it adds.  An error that already names a
    path is returned as it is.
    """
    if exc is not None and exc.path is not None:
        return exc
    reason = str(exc) if exc is not None and str(exc) else INTEGRITY_MESSAGE
    named = IntegrityError(f"{path}: {reason}")
    named.path = path
    return named
