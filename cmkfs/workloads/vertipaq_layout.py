"""Names and types of a VertiPaq-style model (:mod:`cmkfs.workloads.vertipaq`), shared by its writer and its
reader: the files under a model root and their paths, the column types that can be stored, and the errors
of reading stored bytes.  Pure: no I/O.
"""

from __future__ import annotations

import re
import unicodedata

import pyarrow as pa

__all__ = [
    "DICTIONARY_COLUMN",
    "DICTIONARY_FILE",
    "MAX_MODEL_JSON_BYTES",
    "MODEL_FILE",
    "MODEL_FORMAT",
    "SLUG_CHARS",
    "ModelFormatError",
    "ModelNotFoundError",
    "ModelTooLargeError",
]

MODEL_FORMAT = "vertipaq-model"
MODEL_FILE = "model.json"
DICTIONARY_FILE = "dictionary.arrow"
MAX_MODEL_JSON_BYTES = 16 * 1024 * 1024
SLUG_CHARS = 40
DICTIONARY_COLUMN = "dictionary"


class ModelFormatError(ValueError):
    """A model.json, dictionary or segment file is malformed or inconsistent with the model."""


class ModelNotFoundError(FileNotFoundError):
    """No committed model at this root (its model.json is missing)."""


class ModelTooLargeError(ModelFormatError):
    """The model would decode to more rows or bytes than the reader's budget (``max_rows``, ``max_bytes``)."""


def _slug(name: str) -> str:
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^A-Za-z0-9_-]+", "_", ascii_name).strip("_")[:SLUG_CHARS] or "column"


def _column_dir(index: int, name: str) -> str:
    return f"{index:04d}-{_slug(name)}"


def _segment_file(index: int, name: str, segment: int) -> str:
    return f"{_column_dir(index, name)}/segment-{segment:05d}.ids"


def _join(root: str, rel: str) -> str:
    return f"{root.rstrip('/')}/{rel}"


def _layout(value_type: pa.DataType) -> tuple[int, int] | None:
    """(bits of each row's value, bytes of each row's offset) of a storable value type, else None.

    Only types whose decoded size follows from the row count and the dictionary are storable, so that the
    reader can bound its output before it builds it: fixed-width types, and binary and string with offsets.
    """
    if pa.types.is_null(value_type):
        return 0, 0
    if pa.types.is_string(value_type) or pa.types.is_binary(value_type):
        return 0, 4
    if pa.types.is_large_string(value_type) or pa.types.is_large_binary(value_type):
        return 0, 8
    if (
        pa.types.is_boolean(value_type)
        or pa.types.is_integer(value_type)
        or pa.types.is_floating(value_type)
        or pa.types.is_decimal(value_type)
        or pa.types.is_temporal(value_type)
        or pa.types.is_fixed_size_binary(value_type)
    ):
        return int(value_type.bit_width), 0
    return None


def _index_capacity(dict_type: pa.DictionaryType) -> int:
    """How many dictionary positions the index type of ``dict_type`` can address."""
    index = dict_type.index_type
    signed = 1 if pa.types.is_signed_integer(index) else 0
    return 1 << (int(index.bit_width) - signed)
