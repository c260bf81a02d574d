"""Reading a VertiPaq-style model (:mod:`cmkfs.workloads.vertipaq`) within a budget: model.json checked and
every selected column costed before any other file is opened, then dictionaries and segments read, checked
and decoded into Arrow arrays.  The budgets and the errors are those the model's module docstring gives.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from .vertipaq_layout import (
    DICTIONARY_COLUMN,
    DICTIONARY_FILE,
    MAX_MODEL_JSON_BYTES,
    MODEL_FILE,
    MODEL_FORMAT,
    ModelFormatError,
    ModelNotFoundError,
    ModelTooLargeError,
    _column_dir,
    _index_capacity,
    _join,
    _layout,
    _segment_file,
)
from .vertipaq_segments import (
    _HEADER,
    FORMAT_VERSION,
    MAX_BIT_WIDTH,
    MAX_SEGMENT_ROWS,
    UNPACK_CHUNK_IDS,
    Ids,
    decode_segment,
    max_encoded_size,
)

__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_MAX_ROWS", "read_column", "read_model"]

# Read budgets: what one reader holds without being told otherwise (see :mod:`cmkfs.workloads.vertipaq`).
DEFAULT_MAX_ROWS = 100_000_000
DEFAULT_MAX_BYTES = 4 * 1024**3

# What parsing bytes already in memory may raise, from json, base64, numpy and pyarrow (whose IPC reader
# raises a bare OSError for a bad flatbuffer).  Caught only around parsing, never around fs.open/read, so a
# real storage error is never relabelled as a format error.
_PARSE_ERRORS = (
    pa.ArrowException,
    OSError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    RecursionError,
    NotImplementedError,
    OverflowError,
)


def _int(obj: Any, key: str, low: int, high: int, where: str) -> int:
    value = obj.get(key) if isinstance(obj, dict) else None
    if type(value) is not int or not low <= value <= high:
        raise ModelFormatError(f"{where}: {key!r} must be an integer in {low}..{high}")
    return value


def _read_bounded(fs: Any, path: str, limit: int) -> bytes:
    # Storage I/O only: whatever fs.open or read raises passes through as it is.
    with fs.open(path, "rb") as f:
        data: bytes = f.read(limit + 1)
    if len(data) > limit:
        raise ModelFormatError(f"{path} is longer than {limit} bytes")
    return data


def _read_exact(fs: Any, path: str, size: int, what: str) -> bytes:
    data = _read_bounded(fs, path, size)
    if len(data) != size:
        raise ModelFormatError(f"{what} truncated ({len(data)} of {size} bytes)")
    return data


def _load_model(fs: Any, root: str) -> tuple[dict[str, Any], pa.Schema]:
    path = _join(root, MODEL_FILE)
    try:
        raw = _read_bounded(fs, path, MAX_MODEL_JSON_BYTES)
    except FileNotFoundError as exc:
        raise ModelNotFoundError(f"no model at {root!r}: {MODEL_FILE} is missing (never committed)") from exc
    try:
        model = json.loads(raw.decode("utf-8"))
        if not isinstance(model, dict):
            raise TypeError("model.json is not an object")
        schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(model["schema"], validate=True)))
        # Names are UTF-8 in the schema message: decoding them here turns a corrupt one into a format error.
        described = [(field.name, str(field.type)) for field in schema]
    except _PARSE_ERRORS as exc:
        raise ModelFormatError(f"{path}: not a readable model description") from exc
    if model.get("format") != MODEL_FORMAT or model.get("version") != FORMAT_VERSION:
        raise ModelFormatError(f"{path}: not a version-{FORMAT_VERSION} {MODEL_FORMAT}")
    columns = model.get("columns")
    if not isinstance(columns, list) or len(columns) != len(described):
        raise ModelFormatError(f"{path}: the column list does not match the schema")
    for (name, type_name), column in zip(described, columns, strict=True):
        if not isinstance(column, dict) or column.get("name") != name or column.get("type") != type_name:
            raise ModelFormatError(f"{path}: column {name!r} does not match the schema")
    return model, schema


@dataclass(frozen=True)
class _Segment:
    file: str
    rows: int
    width: int
    size: int


@dataclass(frozen=True)
class _Column:
    """One column as model.json describes it, checked, before any of its files is read."""

    index: int
    field: pa.Field
    value_type: pa.DataType
    dictionary_size: int
    dictionary_bytes: int
    segments: tuple[_Segment, ...]
    variable: bool  # string or binary: value bytes are known only once the ids are
    fixed_bytes: int  # result buffers known from model.json: offsets, bitmaps, fixed-width values, dictionary

    @property
    def where(self) -> str:
        return f"column {self.index} ({self.field.name!r})"


def _plan_column(model: dict[str, Any], schema: pa.Schema, index: int, rows: int) -> _Column:
    field, column = schema.field(index), model["columns"][index]
    where = f"column {index} ({field.name!r})"
    dict_type = field.type if pa.types.is_dictionary(field.type) else None
    value_type = field.type.value_type if dict_type else field.type
    layout = _layout(value_type)
    if layout is None:
        raise ModelFormatError(f"{where}: type {field.type} cannot be stored")
    value_bits, offset_bytes = layout
    entry = column.get("dictionary")
    size = _int(entry, "size", 0, (1 << MAX_BIT_WIDTH) - 1, where)
    size_bytes = _int(entry, "bytes", 0, 1 << 40, where)
    rel = f"{_column_dir(index, field.name)}/{DICTIONARY_FILE}"
    if not isinstance(entry, dict) or entry.get("file") != rel:
        raise ModelFormatError(f"{where}: dictionary file is not {rel!r}")
    if dict_type is not None and size > _index_capacity(dict_type):
        raise ModelFormatError(f"{where}: {size} dictionary values do not fit the index type of {field.type}")
    segment_rows = _int(model, "segment_rows", 1, MAX_SEGMENT_ROWS, "model")
    expected = -(-rows // segment_rows)
    entries = column.get("segments")
    if not isinstance(entries, list) or len(entries) != expected:
        raise ModelFormatError(f"{where}: expected {expected} segments")
    segments = []
    for number, seg in enumerate(entries):
        seg_rel = _segment_file(index, field.name, number)
        if not isinstance(seg, dict) or seg.get("file") != seg_rel:
            raise ModelFormatError(f"{where}: segment {number} is not {seg_rel!r}")
        expected_rows = min(segment_rows, rows - number * segment_rows)
        seg_rows = _int(seg, "rows", expected_rows, expected_rows, where)
        width = _int(seg, "bit_width", 0, MAX_BIT_WIDTH, where)
        encoded = _int(seg, "encoded_bytes", _HEADER.size, max_encoded_size(seg_rows), where)
        segments.append(_Segment(seg_rel, seg_rows, width, encoded))
    if sum(seg.rows for seg in segments) != rows:
        raise ModelFormatError(f"{where}: segment rows do not add up to the model's {rows}")
    row_bits = dict_type.index_type.bit_width if dict_type else value_bits
    fixed = size_bytes  # the dictionary decodes to at most its file's bytes (checked when read)
    if dict_type is not None or not pa.types.is_null(value_type):  # null arrays have no buffers
        for seg in segments:
            fixed += (seg.rows * row_bits + 7) // 8 + (seg.rows + 7) // 8  # values (or indices), validity
            if dict_type is None and offset_bytes:
                fixed += (seg.rows + 1) * offset_bytes
    return _Column(
        index=index,
        field=field,
        value_type=value_type,
        dictionary_size=size,
        dictionary_bytes=size_bytes,
        segments=tuple(segments),
        variable=dict_type is None and offset_bytes > 0,
        fixed_bytes=fixed,
    )


class _Budget:
    """The bytes a read may still produce; refuses, before allocating, what would overdraw it."""

    def __init__(self, max_bytes: int) -> None:
        self.limit = self.left = max_bytes

    def spend(self, amount: int, where: str) -> None:
        self.left -= amount
        if self.left < 0:
            raise ModelTooLargeError(
                f"{where}: the result would exceed max_bytes={self.limit:,} bytes; "
                "pass a larger max_bytes to read this model"
            )


def _check_budget(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be at least 0")


def _plan(
    model: dict[str, Any], schema: pa.Schema, indices: list[int], max_rows: int, max_bytes: int
) -> tuple[list[_Column], _Budget]:
    """Every selected column checked and costed from model.json alone: nothing else read, nothing decoded."""
    rows = _int(model, "rows", 0, 1 << 62, "model")
    if rows > max_rows:
        raise ModelTooLargeError(f"model of {rows:,} rows exceeds max_rows={max_rows:,}; pass a larger max_rows")
    plans = [_plan_column(model, schema, i, rows) for i in indices]
    budget = _Budget(max_bytes)
    for plan in plans:
        budget.spend(plan.fixed_bytes, plan.where)
    return plans, budget


def _read_dictionary(fs: Any, root: str, plan: _Column) -> pa.Array:
    where = plan.where
    rel = f"{_column_dir(plan.index, plan.field.name)}/{DICTIONARY_FILE}"
    data = _read_exact(fs, _join(root, rel), plan.dictionary_bytes, f"{where}: dictionary")
    try:  # the bytes are in memory: from here on every failure is the file's
        table = pa.ipc.open_file(pa.py_buffer(data)).read_all()
        one_column = table.column_names == [DICTIONARY_COLUMN]
        values = table.column(0).combine_chunks() if one_column else None
        if values is not None:
            values.validate(full=True)
            decoded = values.get_total_buffer_size()
    except _PARSE_ERRORS as exc:
        raise ModelFormatError(f"{where}: unreadable dictionary") from exc
    if values is None:
        raise ModelFormatError(f"{where}: a dictionary file holds exactly one column, {DICTIONARY_COLUMN!r}")
    if decoded > len(data):  # only a compressed body decodes to more than its file: never written, refused
        raise ModelFormatError(f"{where}: dictionary decodes to {decoded} bytes from a file of {len(data)}")
    if values.type != plan.value_type or len(values) != plan.dictionary_size or values.null_count:
        raise ModelFormatError(
            f"{where}: dictionary does not hold {plan.dictionary_size} non-null values of {plan.value_type}"
        )
    return values


def _value_bytes(lengths: npt.NDArray[np.int64], ids: Ids) -> int:
    """Bytes of the string or binary values ``ids`` select (``lengths[0]`` is 0, for nulls), in steps."""
    return sum(
        int(lengths[ids[start : start + UNPACK_CHUNK_IDS]].sum()) for start in range(0, len(ids), UNPACK_CHUNK_IDS)
    )


def _read_column(fs: Any, root: str, plan: _Column, budget: _Budget) -> pa.ChunkedArray:
    field, where = plan.field, plan.where
    dictionary = _read_dictionary(fs, root, plan)
    lengths = None
    if plan.variable:
        lengths = np.zeros(len(dictionary) + 1, np.int64)
        lengths[1:] = np.asarray(pc.binary_length(dictionary), np.int64)
    dict_type = field.type if pa.types.is_dictionary(field.type) else None
    chunks = []
    for number, seg in enumerate(plan.segments):
        data = _read_exact(fs, _join(root, seg.file), seg.size, f"{where}: segment {number}")
        ids = decode_segment(data, rows=seg.rows, width=seg.width, max_id=plan.dictionary_size)
        del data
        if lengths is not None:
            budget.spend(_value_bytes(lengths, ids), where)  # before take() copies them out
        nulls = ids == 0
        mask = nulls if nulls.any() else None
        if mask is not None and not field.nullable:
            raise ModelFormatError(f"{where}: segment {number} holds nulls in a column declared not null")
        ids -= 1  # value id i is dictionary position i - 1; null's 0 wraps around, masked
        if dict_type is not None:
            indices = pa.array(ids.astype(dict_type.index_type.to_pandas_dtype()), mask=mask)
            chunks.append(pa.DictionaryArray.from_arrays(indices, dictionary, ordered=dict_type.ordered))
        else:
            chunks.append(dictionary.take(pa.array(ids, mask=mask)))
    return pa.chunked_array(chunks, type=field.type)


def _index_of(schema: pa.Schema, name: str) -> int:
    found = schema.get_all_field_indices(name)
    if not found:
        raise KeyError(f"no column {name!r} in the model")
    if len(found) > 1:
        raise ValueError(f"column name {name!r} is ambiguous: the model has {len(found)} columns of that name")
    return int(found[0])


def read_model(
    fs: Any,
    root: str,
    columns: list[str] | None = None,
    *,
    max_rows: int = DEFAULT_MAX_ROWS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> pa.Table:
    """The table stored under ``root`` (or only ``columns``, in that order), decoded and checked.

    Refuses with :class:`ModelTooLargeError` a model of more than ``max_rows`` rows, or one whose
    selected columns would take more than ``max_bytes`` bytes of Arrow buffers (see
    :mod:`cmkfs.workloads.vertipaq`).
    """
    _check_budget("max_rows", max_rows)
    _check_budget("max_bytes", max_bytes)
    model, schema = _load_model(fs, root)
    indices = list(range(len(schema))) if columns is None else [_index_of(schema, name) for name in columns]
    plans, budget = _plan(model, schema, indices, max_rows, max_bytes)
    arrays = [_read_column(fs, root, plan, budget) for plan in plans]
    selected = pa.schema([schema.field(i) for i in indices], metadata=schema.metadata)
    return pa.Table.from_arrays(arrays, schema=selected)


def read_column(
    fs: Any, root: str, name: str, *, max_rows: int = DEFAULT_MAX_ROWS, max_bytes: int = DEFAULT_MAX_BYTES
) -> pa.ChunkedArray:
    """One column of the model under ``root``, one chunk per segment, within the same budget as
    :func:`read_model`."""
    _check_budget("max_rows", max_rows)
    _check_budget("max_bytes", max_bytes)
    model, schema = _load_model(fs, root)
    (plan,), budget = _plan(model, schema, [_index_of(schema, name)], max_rows, max_bytes)
    return _read_column(fs, root, plan, budget)
