"""The segment file of a VertiPaq-style model (:mod:`cmkfs.workloads.vertipaq`): one column's value ids for
one range of rows, as run-length and bit-packed runs.  Pure: bytes in, bytes or ids out, no I/O.

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
"""

from __future__ import annotations

import math
import struct

import numpy as np
import numpy.typing as npt

from .vertipaq_layout import ModelFormatError

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_BIT_WIDTH",
    "MAX_SEGMENT_ROWS",
    "MAX_VARINT_BYTES",
    "MIN_RLE_RUN",
    "UNPACK_CHUNK_IDS",
    "Ids",
    "bit_width",
    "decode_segment",
    "encode_segment",
    "max_encoded_size",
]

MAGIC = b"VPQS"
FORMAT_VERSION = 1
MAX_SEGMENT_ROWS = 1 << 24  # 25-bit run headers: a varint never needs a fifth byte
MAX_BIT_WIDTH = 32
MAX_VARINT_BYTES = 4
MIN_RLE_RUN = 8
# Ids bit-(un)packed per step: a multiple of 8, so every step starts on a byte boundary; the step's
# working set (a byte per bit, 32 per id) stays a few MiB whatever the run length.
UNPACK_CHUNK_IDS = 1 << 16
_HEADER = struct.Struct("<4sBBHI")
_RLE, _PACKED = 0, 1

Ids = npt.NDArray[np.uint32]


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
