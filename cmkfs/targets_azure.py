"""Deprecated: the Azure Blob target moved to :mod:`cmkfs.targets.azure`.

Read a file's header on any target with
``cmkfs.stream.read_header(cmkfs.targets.open_range_source(fs, path))``.
"""

from __future__ import annotations

import warnings

from fsspec.spec import AbstractFileSystem

from .format import Header
from .stream import read_header
from .targets import open_range_source
from .targets.azure import (
    DEFAULT_BLOCK_SIZE,
    PROTOCOLS,
    AzureBlobSink,
    AzureBlobSource,
    blob_client_for,
    blob_metadata,
    decode_metadata,
    header_metadata,
    open_blob_sink,
    open_blob_source,
    set_blob_metadata,
)

__all__ = [
    "PROTOCOLS",
    "DEFAULT_BLOCK_SIZE",
    "AzureBlobSink",
    "AzureBlobSource",
    "open_blob_sink",
    "open_blob_source",
    "blob_metadata",
    "set_blob_metadata",
    "header_metadata",
    "decode_metadata",
    "read_header_range",
    "read_blob_header",
    "blob_client_for",
]

warnings.warn(
    "cmkfs.targets_azure is deprecated: import from cmkfs.targets.azure "
    "(and read headers with cmkfs.stream.read_header over cmkfs.targets.open_range_source)",
    DeprecationWarning,
    stacklevel=2,
)


def read_blob_header(fs: AbstractFileSystem, path: str) -> Header:
    """The decoded (checksummed, not yet key-verified) header of ``path``."""
    source = open_range_source(fs, path)
    try:
        return read_header(source)
    finally:
        source.close()


def read_header_range(fs: AbstractFileSystem, path: str) -> bytes:
    """The header bytes of the cmkfs file at ``path`` (a checked header encodes
    back to exactly the bytes it was decoded from)."""
    return read_blob_header(fs, path).encode()
