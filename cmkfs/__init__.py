"""cmkfs: customer-managed-key encryption for fsspec filesystems."""

from .errors import (
    CMKError,
    ConfigurationError,
    FormatError,
    IntegrityError,
    KeyNotFoundError,
    KeyRevokedError,
    UnsupportedOperationError,
    VaultUnavailableError,
)
from .filesystem import CMKFileSystem
from .format import ContentClass, KeyBlock, WrapAlgorithm
from .keys import DataKey, KeySource, StaticKeySource
from .stream import DecryptingReader, EncryptingWriter, decrypt_bytes, encrypt_bytes

__version__ = "0.1.0"

__all__ = [
    "CMKError",
    "ConfigurationError",
    "FormatError",
    "IntegrityError",
    "KeyNotFoundError",
    "KeyRevokedError",
    "UnsupportedOperationError",
    "VaultUnavailableError",
    "CMKFileSystem",
    "ContentClass",
    "KeyBlock",
    "WrapAlgorithm",
    "DataKey",
    "KeySource",
    "StaticKeySource",
    "DecryptingReader",
    "EncryptingWriter",
    "decrypt_bytes",
    "encrypt_bytes",
    "__version__",
]
