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

Segment file (little-endian)::

    offset  size  field
    0       4     magic b"VPQS"
    4       1     format version (1)
    5       1     bit width w, 0..32
    6       2     reserved, zero
    8       4     rows r in this segment, 0..MAX_SEGMENT_ROWS
    12      ...   runs, until exactly r ids have been produced; no bytes may follow

    run     = header, payload
    header  = ULEB128 varint (at most 4 bytes) of (count << 1) | kind, count >= 1
    kind 0  (run-length): payload is the repeated id in ceil(w / 8) bytes
    kind 1  (bit-packed): payload is count ids of w bits each, LSB first, in ceil(count * w / 8) bytes

A run may not produce more ids than the segment has rows left, every id must fit in w bits and be at
most the dictionary size, and the bit width and row count must match model.json.  Any violation raises
:class:`ModelFormatError`; nothing is allocated before its size has been checked against these bounds.

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
import math
import re
import struct
import unicodedata
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "DEFAULT_SEGMENT_ROWS",
    "MAX_SEGMENT_ROWS",
    "ModelFormatError",
    "ModelInfo",
    "ModelNotFoundError",
    "decode_segment",
    "encode_segment",
    "read_column",
    "read_model",
    "write_model",
]

MAGIC = b"VPQS"
FORMAT_VERSION = 1
MODEL_FORMAT = "vertipaq-model"
MODEL_FILE = "model.json"
DICTIONARY_FILE = "dictionary.arrow"
DEFAULT_SEGMENT_ROWS = 65_536
MAX_SEGMENT_ROWS = 1 << 24  # 25-bit run headers: a varint never needs a fifth byte
MAX_BIT_WIDTH = 32
MAX_VARINT_BYTES = 4
MAX_MODEL_JSON_BYTES = 16 * 1024 * 1024
MIN_RLE_RUN = 8
SLUG_CHARS = 40
_HEADER = struct.Struct("<4sBBHI")
_RLE, _PACKED = 0, 1

Ids = npt.NDArray[np.uint32]


class ModelFormatError(ValueError):
    """A model.json, dictionary or segment file is malformed or inconsistent with the model."""


class ModelNotFoundError(FileNotFoundError):
    """No committed model at this root (its model.json is missing)."""


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


# ----------------------------------------------------------------------------------------------------------
# Segment codec (pure)


def bit_width(max_id: int) -> int:
    """The fewest bits that hold every id up to ``max_id``."""
    if not 0 <= max_id < 1 << MAX_BIT_WIDTH:
        raise ValueError(f"value id {max_id} outside 0..2**{MAX_BIT_WIDTH}-1")
    return int(max_id).bit_length()


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _pack(ids: Ids, width: int) -> bytes:
    # Each id's 32 bits, LSB first, keep the low `width`, repack: no per-value Python work.
    bits = np.unpackbits(ids.astype("<u4").view(np.uint8), bitorder="little").reshape(-1, 32)[:, :width]
    return np.packbits(bits.ravel(), bitorder="little").tobytes()


def _unpack(data: bytes | memoryview, count: int, width: int) -> Ids:
    bits = np.unpackbits(np.frombuffer(data, np.uint8), count=count * width, bitorder="little")
    full = np.zeros((count, 32), np.uint8)
    full[:, :width] = bits.reshape(count, width)
    return np.packbits(full, axis=1, bitorder="little").view("<u4").ravel().astype(np.uint32, copy=False)


def encode_segment(ids: npt.ArrayLike, width: int) -> bytes:
    """One segment file: ``ids`` (each < 2**width) as run-length and bit-packed runs."""
    arr = np.ascontiguousarray(ids, dtype=np.uint32)
    n = len(arr)
    if not 0 <= width <= MAX_BIT_WIDTH:
        raise ValueError(f"bit width {width} outside 0..{MAX_BIT_WIDTH}")
    if n > MAX_SEGMENT_ROWS:
        raise ValueError(f"{n} rows exceed MAX_SEGMENT_ROWS ({MAX_SEGMENT_ROWS})")
    if n and width < MAX_BIT_WIDTH and int(arr.max()) >> width:
        raise ValueError(f"a value id does not fit in {width} bits")
    out = [_HEADER.pack(MAGIC, FORMAT_VERSION, width, 0, n)]
    if n == 0:
        return out[0]
    value_bytes = (width + 7) // 8
    if width == 0:  # every id is 0 (null): one run says it all
        return out[0] + _varint(n << 1 | _RLE)
    # A run-length run pays off once it saves more than its header, its value and the split it forces
    # in the surrounding bit-packed stretch (about two headers).
    min_run = max(MIN_RLE_RUN, math.ceil(8 * (value_bytes + 2 * MAX_VARINT_BYTES) / width))
    starts = np.flatnonzero(np.concatenate(([True], arr[1:] != arr[:-1])))
    lengths = np.diff(np.append(starts, n))
    long_runs = lengths >= min_run
    pos = 0
    for start, length in zip(starts[long_runs].tolist(), lengths[long_runs].tolist(), strict=True):
        if start > pos:
            out += (_varint((start - pos) << 1 | _PACKED), _pack(arr[pos:start], width))
        out += (_varint(length << 1 | _RLE), int(arr[start]).to_bytes(value_bytes, "little"))
        pos = start + length
    if pos < n:
        out += (_varint((n - pos) << 1 | _PACKED), _pack(arr[pos:], width))
    return b"".join(out)


def max_encoded_size(rows: int) -> int:
    """An upper bound on any valid segment file of ``rows`` rows: one run per row at most."""
    return _HEADER.size + rows * (MAX_VARINT_BYTES + MAX_BIT_WIDTH // 8)


def decode_segment(data: bytes | bytearray | memoryview, *, rows: int, width: int, max_id: int) -> Ids:
    """The value ids of one segment file, checked against what model.json says it holds."""
    view = memoryview(data).cast("B")
    if len(view) < _HEADER.size:
        raise ModelFormatError("segment truncated: shorter than its header")
    magic, version, got_width, reserved, got_rows = _HEADER.unpack_from(view)
    if magic != MAGIC or version != FORMAT_VERSION or reserved != 0:
        raise ModelFormatError("not a version-1 segment file (magic, version or reserved field)")
    if got_width > MAX_BIT_WIDTH or got_width != width:
        raise ModelFormatError(f"segment bit width {got_width}, model says {width} (at most {MAX_BIT_WIDTH})")
    if got_rows > MAX_SEGMENT_ROWS or got_rows != rows:
        raise ModelFormatError(f"segment holds {got_rows} rows, model says {rows}")
    if len(view) > max_encoded_size(rows):
        raise ModelFormatError("segment longer than any encoding of its rows")
    value_bytes = (width + 7) // 8
    out = np.empty(rows, np.uint32)  # rows bounded above
    pos, off = 0, _HEADER.size
    while pos < rows:
        header, shift = 0, 0
        for _ in range(MAX_VARINT_BYTES):
            if off >= len(view):
                raise ModelFormatError("segment truncated in a run header")
            byte = view[off]
            off += 1
            header |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        else:
            raise ModelFormatError(f"run header longer than {MAX_VARINT_BYTES} bytes")
        kind, count = header & 1, header >> 1
        if not 1 <= count <= rows - pos:  # never trust a count beyond the rows left
            raise ModelFormatError(f"run of {count} ids where {rows - pos} rows are left")
        if kind == _RLE:
            if off + value_bytes > len(view):
                raise ModelFormatError("segment truncated in a run value")
            value = int.from_bytes(view[off : off + value_bytes], "little")
            off += value_bytes
            if value >> width or value > max_id:
                raise ModelFormatError(f"value id {value} outside 0..{max_id} at bit width {width}")
            out[pos : pos + count] = value
        else:
            size = (count * width + 7) // 8
            if off + size > len(view):
                raise ModelFormatError("segment truncated in a bit-packed run")
            out[pos : pos + count] = _unpack(view[off : off + size], count, width)
            off += size
        pos += count
    if off != len(view):
        raise ModelFormatError(f"{len(view) - off} bytes of trailing data after the last run")
    if rows and int(out.max()) > max_id:
        raise ModelFormatError(f"value id above the dictionary size {max_id}")
    return out


# ----------------------------------------------------------------------------------------------------------
# Model files


def _slug(name: str) -> str:
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^A-Za-z0-9_-]+", "_", ascii_name).strip("_")[:SLUG_CHARS] or "column"


def _column_dir(index: int, name: str) -> str:
    return f"{index:04d}-{_slug(name)}"


def _segment_file(index: int, name: str, segment: int) -> str:
    return f"{_column_dir(index, name)}/segment-{segment:05d}.ids"


def _join(root: str, rel: str) -> str:
    return f"{root.rstrip('/')}/{rel}"


def _plain_values(column: pa.ChunkedArray) -> pa.Array:
    # Dictionary-typed columns (pandas categoricals) are stored by value and re-encoded on read.
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    return column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)


def _dictionary_and_ids(column: pa.ChunkedArray, name: str) -> tuple[pa.Array, Ids]:
    values = _plain_values(column)
    if pa.types.is_null(values.type):  # Arrow would put the null itself in the dictionary
        return pa.array([], pa.null()), np.zeros(len(values), np.uint32)
    try:
        encoded = pc.dictionary_encode(values)
    except pa.ArrowNotImplementedError as exc:
        raise TypeError(f"column {name!r} of type {column.type} cannot be dictionary-encoded") from exc
    ids = np.asarray(encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False), np.int64) + 1
    return encoded.dictionary, ids.astype(np.uint32)


def _ipc_bytes(values: pa.Array) -> pa.Buffer:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, pa.schema([pa.field("dictionary", values.type)])) as writer:
        writer.write_table(pa.table({"dictionary": values}))
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
        dictionary, ids = _dictionary_and_ids(column, field.name)
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


def _int(obj: Any, key: str, low: int, high: int, where: str) -> int:
    value = obj.get(key) if isinstance(obj, dict) else None
    if type(value) is not int or not low <= value <= high:
        raise ModelFormatError(f"{where}: {key!r} must be an integer in {low}..{high}")
    return value


def _read_bounded(fs: Any, path: str, limit: int) -> bytes:
    with fs.open(path, "rb") as f:
        data: bytes = f.read(limit + 1)
    if len(data) > limit:
        raise ModelFormatError(f"{path} is longer than {limit} bytes")
    return data


def _load_model(fs: Any, root: str) -> tuple[dict[str, Any], pa.Schema]:
    path = _join(root, MODEL_FILE)
    try:
        raw = _read_bounded(fs, path, MAX_MODEL_JSON_BYTES)
    except FileNotFoundError as exc:
        raise ModelNotFoundError(f"no model at {root!r}: {MODEL_FILE} is missing (never committed)") from exc
    try:
        model = json.loads(raw.decode("utf-8"))
        schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(model["schema"], validate=True)))
    except (ValueError, TypeError, KeyError, pa.ArrowException) as exc:
        raise ModelFormatError(f"{path}: not a readable model description") from exc
    if model.get("format") != MODEL_FORMAT or model.get("version") != FORMAT_VERSION:
        raise ModelFormatError(f"{path}: not a version-{FORMAT_VERSION} {MODEL_FORMAT}")
    columns = model.get("columns")
    if not isinstance(columns, list) or len(columns) != len(schema):
        raise ModelFormatError(f"{path}: the column list does not match the schema")
    for field, column in zip(schema, columns, strict=True):
        if not isinstance(column, dict) or column.get("name") != field.name or column.get("type") != str(field.type):
            raise ModelFormatError(f"{path}: column {field.name!r} does not match the schema")
    return model, schema


def _read_dictionary(fs: Any, root: str, index: int, field: pa.Field, column: dict[str, Any]) -> pa.Array:
    where = f"column {index} ({field.name!r})"
    entry = column.get("dictionary")
    size = _int(entry, "size", 0, (1 << MAX_BIT_WIDTH) - 1, where)
    rel = f"{_column_dir(index, field.name)}/{DICTIONARY_FILE}"
    if not isinstance(entry, dict) or entry.get("file") != rel:
        raise ModelFormatError(f"{where}: dictionary file is not {rel!r}")
    value_type = field.type.value_type if pa.types.is_dictionary(field.type) else field.type
    try:
        size_bytes = _int(entry, "bytes", 0, 1 << 40, where)
        data = _read_bounded(fs, _join(root, rel), size_bytes)
        if len(data) != size_bytes:
            raise ModelFormatError(f"{where}: dictionary truncated ({len(data)} of {size_bytes} bytes)")
        values = pa.ipc.open_file(pa.py_buffer(data)).read_all().column(0).combine_chunks()
        values.validate(full=True)
    except pa.ArrowException as exc:
        raise ModelFormatError(f"{where}: unreadable dictionary") from exc
    if values.type != value_type or len(values) != size or values.null_count:
        raise ModelFormatError(f"{where}: dictionary does not hold {size} non-null values of {value_type}")
    return values


def _read_column(fs: Any, root: str, model: dict[str, Any], schema: pa.Schema, index: int) -> pa.ChunkedArray:
    field, column = schema.field(index), model["columns"][index]
    where = f"column {index} ({field.name!r})"
    rows = _int(model, "rows", 0, 1 << 62, "model")
    segment_rows = _int(model, "segment_rows", 1, MAX_SEGMENT_ROWS, "model")
    dictionary = _read_dictionary(fs, root, index, field, column)
    segments = column.get("segments")
    if not isinstance(segments, list) or len(segments) != -(-rows // segment_rows):
        raise ModelFormatError(f"{where}: expected {-(-rows // segment_rows)} segments")
    chunks = []
    for number, entry in enumerate(segments):
        rel = _segment_file(index, field.name, number)
        expected_rows = min(segment_rows, rows - number * segment_rows)
        if not isinstance(entry, dict) or entry.get("file") != rel:
            raise ModelFormatError(f"{where}: segment {number} is not {rel!r}")
        seg_rows = _int(entry, "rows", expected_rows, expected_rows, where)
        width = _int(entry, "bit_width", 0, MAX_BIT_WIDTH, where)
        size = _int(entry, "encoded_bytes", _HEADER.size, max_encoded_size(seg_rows), where)
        data = _read_bounded(fs, _join(root, rel), size)
        if len(data) != size:
            raise ModelFormatError(f"{where}: segment {number} truncated ({len(data)} of {size} bytes)")
        ids = decode_segment(data, rows=seg_rows, width=width, max_id=len(dictionary))
        nulls = ids == 0
        indices = pa.array(ids.astype(np.int32) - 1, mask=nulls if nulls.any() else None)
        chunks.append(dictionary.take(indices))
    if pa.types.is_dictionary(field.type):
        chunks = [pc.dictionary_encode(chunk).cast(field.type) for chunk in chunks]
    return pa.chunked_array(chunks, type=field.type)


def _index_of(schema: pa.Schema, name: str) -> int:
    found = schema.get_all_field_indices(name)
    if not found:
        raise KeyError(f"no column {name!r} in the model")
    if len(found) > 1:
        raise ValueError(f"column name {name!r} is ambiguous: the model has {len(found)} columns of that name")
    return int(found[0])


def read_model(fs: Any, root: str, columns: list[str] | None = None) -> pa.Table:
    """The table stored under ``root`` (or only ``columns``, in that order), decoded and checked."""
    model, schema = _load_model(fs, root)
    indices = range(len(schema)) if columns is None else [_index_of(schema, name) for name in columns]
    arrays = [_read_column(fs, root, model, schema, i) for i in indices]
    selected = pa.schema([schema.field(i) for i in indices], metadata=schema.metadata)
    return pa.Table.from_arrays(arrays, schema=selected)


def read_column(fs: Any, root: str, name: str) -> pa.ChunkedArray:
    """One column of the model under ``root``, one chunk per segment."""
    model, schema = _load_model(fs, root)
    return _read_column(fs, root, model, schema, _index_of(schema, name))
