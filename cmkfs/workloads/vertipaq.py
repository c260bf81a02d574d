"""A columnar model store in the manner of VertiPaq (Power BI, Analysis Services): a pyarrow Table kept as
per-column dictionaries plus row segments of value ids, written through any fsspec filesystem.

Each column is dictionary-encoded: its distinct non-null values form a dictionary, and every row holds a
value id, 0 for null ("blank") and 1..n for the dictionary's entries.  The ids are cut into segments of
``segment_rows`` rows (the last one shorter) and each segment is stored as a hybrid of run-length runs and
bit-packed runs at the column's bit width: the fewest bits that hold its largest id (0 for an all-null
column, 1 for a column of one distinct value).

Layout under a model root::

    ROOT/model.json                         the commit point, written last
    ROOT/0000-<slug>/dictionary.arrow       Arrow IPC file, one column "dictionary", the distinct values
    ROOT/0000-<slug>/segment-00000.ids      value ids of rows [0, S), then [S, 2S), ...

Directory names are the column's index plus a slug of ``[A-Za-z0-9_-]`` (at most 40 characters), never
the raw name; the reader recomputes every path from the index and the name and refuses a model.json
that lists any other.

The segment files' byte format (runs, bounds, decoding) is described in
:mod:`cmkfs.workloads.vertipaq_segments`, which encodes and decodes them; the file names, paths and storable
types are in :mod:`cmkfs.workloads.vertipaq_layout`, and reading within a budget in
:mod:`cmkfs.workloads.vertipaq_read`.  This module writes models and is where every public name is imported
from.

Dictionary file: an uncompressed Arrow IPC file of exactly one column, "dictionary", of the column's value
type (for a dictionary-typed column, its value type, and its index type must hold every position), no
nulls, the number of values model.json gives.  A file that decodes to more bytes than it holds (a
compressed body) is refused.

Reading is bounded by a budget, because a few kilobytes of model.json and run-length runs can describe
billions of rows.  :func:`read_model` and :func:`read_column` refuse with :class:`ModelTooLargeError`:

* more than ``max_rows`` rows (default ``DEFAULT_MAX_ROWS``, 100 million), checked from model.json
  before any other file is opened;
* a result of more than ``max_bytes`` bytes of Arrow buffers (default ``DEFAULT_MAX_BYTES``, 4 GiB):
  dictionary files, validity bitmaps, offsets and fixed-width values are counted from model.json before
  any other file is opened, and the bytes of string and binary values segment by segment, before they are
  copied out of the dictionary.

Decoding one segment needs, besides its share of the result, about 10 bytes per row of that segment (at
most ``MAX_SEGMENT_ROWS`` rows).  Readers of bigger models pass bigger budgets.

Errors: every failure to parse stored bytes (model.json, the schema in it, a dictionary or a segment) is a
:class:`ModelFormatError`, which is a ``ValueError`` and never an ``OSError``, so no retry-on-I/O-error
path mistakes corruption for a transient fault.  Errors of the filesystem itself pass through unchanged:
``FileNotFoundError`` for a data file, ``PermissionError`` and other ``OSError``, and ``cmkfs.CMKError``
(an integrity failure, a revoked key) from an encrypting filesystem.  Only a missing model.json becomes
:class:`ModelNotFoundError`.

model.json (UTF-8, at most MAX_MODEL_JSON_BYTES)::

    {"format": "vertipaq-model", "version": 1, "rows": N, "segment_rows": S,
     "schema": base64 of the Arrow IPC schema message (names, types, nullability, metadata),
     "columns": [{"name": ..., "type": "string" (str of the Arrow type, for people),
                  "dictionary": {"file": "0000-name/dictionary.arrow", "size": n, "bytes": b},
                  "segments": [{"file": "0000-name/segment-00000.ids", "rows": r, "bit_width": w,
                                "encoded_bytes": e}, ...]}, ...]}
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .vertipaq_layout import DICTIONARY_COLUMN as DICTIONARY_COLUMN
from .vertipaq_layout import DICTIONARY_FILE as DICTIONARY_FILE
from .vertipaq_layout import MAX_MODEL_JSON_BYTES as MAX_MODEL_JSON_BYTES
from .vertipaq_layout import MODEL_FILE as MODEL_FILE
from .vertipaq_layout import MODEL_FORMAT as MODEL_FORMAT
from .vertipaq_layout import SLUG_CHARS as SLUG_CHARS
from .vertipaq_layout import (
    ModelFormatError,
    ModelNotFoundError,
    ModelTooLargeError,
    _column_dir,
    _index_capacity,
    _join,
    _layout,
    _segment_file,
)
from .vertipaq_read import DEFAULT_MAX_BYTES, DEFAULT_MAX_ROWS, read_column, read_model
from .vertipaq_segments import FORMAT_VERSION as FORMAT_VERSION
from .vertipaq_segments import MAGIC as MAGIC
from .vertipaq_segments import MAX_BIT_WIDTH as MAX_BIT_WIDTH
from .vertipaq_segments import MAX_SEGMENT_ROWS, decode_segment, encode_segment
from .vertipaq_segments import MAX_VARINT_BYTES as MAX_VARINT_BYTES
from .vertipaq_segments import MIN_RLE_RUN as MIN_RLE_RUN
from .vertipaq_segments import UNPACK_CHUNK_IDS as UNPACK_CHUNK_IDS
from .vertipaq_segments import Ids as Ids
from .vertipaq_segments import _varint as _varint
from .vertipaq_segments import bit_width as bit_width
from .vertipaq_segments import max_encoded_size as max_encoded_size

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_ROWS",
    "DEFAULT_SEGMENT_ROWS",
    "MAX_SEGMENT_ROWS",
    "ModelFormatError",
    "ModelInfo",
    "ModelNotFoundError",
    "ModelTooLargeError",
    "decode_segment",
    "encode_segment",
    "read_column",
    "read_model",
    "write_model",
]

DEFAULT_SEGMENT_ROWS = 65_536


@dataclass(frozen=True)
class ModelInfo:
    """What :func:`write_model` wrote.  ``files`` are full paths, model.json last."""

    root: str
    rows: int
    columns: tuple[str, ...]
    segment_rows: int
    segments: int
    files: tuple[str, ...]
    encoded_bytes: int  # segment files
    dictionary_bytes: int
    metadata_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.encoded_bytes + self.dictionary_bytes + self.metadata_bytes


def _plain_values(column: pa.ChunkedArray) -> pa.Array:
    # Dictionary-typed columns (pandas categoricals) are stored by value and re-encoded on read.
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    return column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)


def _dictionary_and_ids(column: pa.ChunkedArray, field: pa.Field) -> tuple[pa.Array, Ids]:
    name = field.name
    if column.null_count and not field.nullable:  # the reader refuses this model: never write one
        raise ValueError(f"column {name!r} is declared not null but holds {column.null_count} nulls")
    values = _plain_values(column)
    if _layout(values.type) is None:
        raise TypeError(f"column {name!r} of type {column.type} cannot be stored")
    if pa.types.is_null(values.type):  # Arrow would put the null itself in the dictionary
        return pa.array([], pa.null()), np.zeros(len(values), np.uint32)
    try:
        encoded = pc.dictionary_encode(values)
    except pa.ArrowNotImplementedError as exc:
        raise TypeError(f"column {name!r} of type {column.type} cannot be dictionary-encoded") from exc
    if pa.types.is_dictionary(field.type) and len(encoded.dictionary) > _index_capacity(field.type):
        # Chunks may each fit their own dictionaries; the one dictionary the model keeps must fit too.
        raise ValueError(
            f"column {name!r}: {len(encoded.dictionary)} distinct values do not fit the index type "
            f"{field.type.index_type} of {field.type}"
        )
    ids = np.asarray(encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False), np.int64) + 1
    return encoded.dictionary, ids.astype(np.uint32)


def _ipc_bytes(values: pa.Array) -> pa.Buffer:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, pa.schema([pa.field(DICTIONARY_COLUMN, values.type)])) as writer:
        writer.write_table(pa.table({DICTIONARY_COLUMN: values}))
    return sink.getvalue()


def write_model(
    fs: Any,
    root: str,
    table: pa.Table,
    *,
    segment_rows: int = DEFAULT_SEGMENT_ROWS,
    open_kwargs: dict[str, Any] | None = None,
) -> ModelInfo:
    """Write ``table`` as a model under ``root`` on ``fs``; model.json, written last, commits it."""
    if not 1 <= segment_rows <= MAX_SEGMENT_ROWS:
        raise ValueError(f"segment_rows must be in 1..{MAX_SEGMENT_ROWS}")
    kwargs = open_kwargs or {}
    model_path = _join(root, MODEL_FILE)
    if fs.exists(model_path):
        # Un-commit first: a failure half-way leaves no model, never an old model.json over new files.
        fs.rm(model_path)
    files: list[str] = []
    columns: list[dict[str, Any]] = []
    encoded_total = dictionary_total = segment_count = 0

    def put(rel: str, data: bytes | memoryview) -> None:
        path = _join(root, rel)
        with fs.open(path, "wb", **kwargs) as f:
            f.write(data)
        files.append(path)

    for index, (field, column) in enumerate(zip(table.schema, table.columns, strict=True)):
        dictionary, ids = _dictionary_and_ids(column, field)
        width = bit_width(len(dictionary))
        directory = _column_dir(index, field.name)
        fs.makedirs(_join(root, directory), exist_ok=True)
        ipc = _ipc_bytes(dictionary)
        put(f"{directory}/{DICTIONARY_FILE}", memoryview(ipc))
        segments = []
        for segment, start in enumerate(range(0, len(ids), segment_rows)):
            chunk = ids[start : start + segment_rows]
            data = encode_segment(chunk, width)
            rel = _segment_file(index, field.name, segment)
            put(rel, data)
            segments.append({"file": rel, "rows": len(chunk), "bit_width": width, "encoded_bytes": len(data)})
            encoded_total += len(data)
        segment_count += len(segments)
        dictionary_total += ipc.size
        columns.append(
            {
                "name": field.name,
                "type": str(field.type),
                "dictionary": {"file": f"{directory}/{DICTIONARY_FILE}", "size": len(dictionary), "bytes": ipc.size},
                "segments": segments,
            }
        )
    model = {
        "format": MODEL_FORMAT,
        "version": FORMAT_VERSION,
        "rows": table.num_rows,
        "segment_rows": segment_rows,
        "schema": base64.b64encode(table.schema.serialize().to_pybytes()).decode("ascii"),
        "columns": columns,
    }
    metadata = json.dumps(model, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    put(MODEL_FILE, metadata)
    return ModelInfo(
        root=root,
        rows=table.num_rows,
        columns=tuple(table.column_names),
        segment_rows=segment_rows,
        segments=segment_count,
        files=tuple(files),
        encoded_bytes=encoded_total,
        dictionary_bytes=dictionary_total,
        metadata_bytes=len(metadata),
    )
