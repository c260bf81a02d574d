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
Bit-packed runs are unpacked ``UNPACK_CHUNK_IDS`` ids at a time, so decoding a segment needs its result
(4 bytes per row) and a fixed working set, never a per-bit expansion of the whole run.

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
DICTIONARY_COLUMN = "dictionary"
# Read budgets: what one reader holds without being told otherwise (see the module docstring).
DEFAULT_MAX_ROWS = 100_000_000
DEFAULT_MAX_BYTES = 4 * 1024**3
# Ids bit-(un)packed per step: a multiple of 8, so every step starts on a byte boundary; the step's
# working set (a byte per bit, 32 per id) stays a few MiB whatever the run length.
UNPACK_CHUNK_IDS = 1 << 16
_HEADER = struct.Struct("<4sBBHI")
_RLE, _PACKED = 0, 1

Ids = npt.NDArray[np.uint32]


class ModelFormatError(ValueError):
    """A model.json, dictionary or segment file is malformed or inconsistent with the model."""


class ModelNotFoundError(FileNotFoundError):
    """No committed model at this root (its model.json is missing)."""


class ModelTooLargeError(ModelFormatError):
    """The model would decode to more rows or bytes than the reader's budget (``max_rows``, ``max_bytes``)."""


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
    parts = []
    for start in range(0, len(ids), UNPACK_CHUNK_IDS):
        chunk = ids[start : start + UNPACK_CHUNK_IDS].astype("<u4")
        bits = np.unpackbits(chunk.view(np.uint8), bitorder="little").reshape(-1, 32)[:, :width]
        parts.append(np.packbits(bits.ravel(), bitorder="little").tobytes())
    return b"".join(parts)


def _unpack_into(out: Ids, data: bytes | memoryview, width: int) -> None:
    """Fill ``out`` with ``len(out)`` ids of ``width`` bits each, packed LSB first in ``data``."""
    count = len(out)
    packed = np.frombuffer(data, np.uint8)
    if width in (8, 16, 32):  # whole bytes: the packed run already is the little-endian array
        out[:] = packed.view(f"<u{width // 8}")[:count]
        return
    # In steps: a byte per bit, then 32 bits per id, would otherwise be 33 bytes per id of the whole run.
    for start in range(0, count, UNPACK_CHUNK_IDS):
        n = min(UNPACK_CHUNK_IDS, count - start)
        first = start * width // 8
        bits = np.unpackbits(packed[first : first + (n * width + 7) // 8], count=n * width, bitorder="little")
        full = np.zeros((n, 32), np.uint8)
        full[:, :width] = bits.reshape(n, width)
        out[start : start + n] = np.packbits(full, axis=1, bitorder="little").view("<u4").ravel()


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
            _unpack_into(out[pos : pos + count], view[off : off + size], width)
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
    selected columns would take more than ``max_bytes`` bytes of Arrow buffers (see the module docstring).
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
