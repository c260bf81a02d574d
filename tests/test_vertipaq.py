"""The VertiPaq-style model store (``cmkfs.workloads.vertipaq``): round trips on a plain memory filesystem
and on ``cmk`` over local disk, the segment codec's choices and bounds, malformed input refused as
``ModelFormatError`` while storage errors pass through, and the read budgets."""

from __future__ import annotations

import base64
import datetime
import decimal
import errno
import json
import math
import random
import re
import struct
import tracemalloc
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cmkfs.errors import CMKError, IntegrityError
from cmkfs.format import MAGIC as CMK_MAGIC
from cmkfs.format import ContentClass, FileParams
from cmkfs.providers.local import LocalVaultProvider
from cmkfs.workloads import vertipaq as vp
from cmkfs.workloads.vertipaq import (
    ModelFormatError,
    ModelNotFoundError,
    ModelTooLargeError,
    decode_segment,
    encode_segment,
    read_column,
    read_model,
    write_model,
)
from tests.strategies import PROPERTY_SETTINGS


@pytest.fixture(params=["memory", "cmk"])
def store(request, memfs, tmp_path):
    """(filesystem, model root, open_kwargs): fsspec's memory filesystem, and ``cmk`` over local disk."""
    if request.param == "memory":
        return memfs, "/models/sales", None
    LocalVaultProvider().create("t")
    fs = fsspec.filesystem("cmk", target_protocol="file", key="local://t")
    return fs, str(tmp_path / "models" / "sales"), {"content_class": ContentClass.VERTIPAQ}


def sample_table(rows: int = 1000) -> pa.Table:
    rng = np.random.default_rng(11)
    nulls = rng.random(rows) < 0.1

    def with_nulls(values, type_=None):
        return pa.array(values, type=type_, mask=nulls)

    return pa.table(
        {
            "int64": with_nulls(rng.integers(-(2**40), 2**40, rows)),
            "int8": pa.array(rng.integers(-128, 128, rows).astype(np.int8)),
            "float": with_nulls(rng.normal(size=rows)),
            "string": with_nulls(rng.choice(["north", "south", "east", "west", ""], rows)),
            "large_string": pa.array([f"customer {i % 37}" for i in range(rows)], pa.large_string()),
            "bool": with_nulls(rng.random(rows) < 0.5),
            "date": pa.array(rng.integers(18_000, 20_000, rows).astype(np.int32)).cast(pa.date32()),
            "timestamp": with_nulls(rng.integers(0, 2**50, rows), pa.timestamp("us", tz="Europe/Paris")),
            "decimal": pa.array(
                [None if i % 7 == 0 else decimal.Decimal(i % 50) / 4 for i in range(rows)], pa.decimal128(12, 2)
            ),
            "binary": pa.array([bytes([i % 5]) * (i % 3) for i in range(rows)], pa.binary()),
            "all_null": pa.array([None] * rows, pa.int32()),
            "null_type": pa.nulls(rows),
            "one_value": pa.array(["same"] * rows),
        }
    )


def model_json(fs, root: str) -> dict:
    return json.loads(fs.cat_file(f"{root}/model.json"))


# ----------------------------------------------------------------------------------------------------------
# Round trips


def test_round_trip_many_types(store):
    fs, root, kwargs = store
    table = sample_table(1000).replace_schema_metadata({"origin": "test"})
    info = write_model(fs, root, table, segment_rows=300, open_kwargs=kwargs)
    back = read_model(fs, root)
    assert back.equals(table)
    assert back.schema.equals(table.schema, check_metadata=True)
    assert info.rows == 1000 and info.columns == tuple(table.column_names)
    assert info.segments == 4 * table.num_columns
    assert info.files[-1] == f"{root}/model.json"
    assert len(info.files) == table.num_columns * 5 + 1
    assert all(fs.exists(path) for path in info.files)


def test_cmk_store_holds_ciphertext_of_the_vertipaq_class(tmp_path):
    LocalVaultProvider().create("t")
    fs = fsspec.filesystem("cmk", target_protocol="file", key="local://t")
    root = str(tmp_path / "model")
    info = write_model(fs, root, sample_table(200), open_kwargs={"content_class": ContentClass.VERTIPAQ})
    for path in info.files:
        with open(path, "rb") as f:
            raw = f.read()
        assert raw.startswith(CMK_MAGIC) and vp.MAGIC not in raw
        assert FileParams.decode(raw).content_class is ContentClass.VERTIPAQ
    assert read_model(fs, root).equals(sample_table(200))


def test_bit_widths_of_null_and_single_value_columns(memfs):
    write_model(memfs, "/m", sample_table(100))
    columns = {c["name"]: c for c in model_json(memfs, "/m")["columns"]}
    # All-null: no dictionary entries, every id is 0 ("blank"): zero bits.
    for name in ("all_null", "null_type"):
        assert columns[name]["dictionary"]["size"] == 0
        assert columns[name]["segments"][0]["bit_width"] == 0
    # One distinct value still needs id 1 beside the reserved 0: one bit.
    assert columns["one_value"]["dictionary"]["size"] == 1
    assert columns["one_value"]["segments"][0]["bit_width"] == 1


def test_floats_keep_signed_zero_and_nan(memfs):
    values = [0.0, -0.0, math.nan, 1.5, None, -0.0, math.inf]
    write_model(memfs, "/m", pa.table({"x": pa.array(values)}))
    back = read_column(memfs, "/m", "x").to_pylist()
    assert [None if v is None else math.copysign(1, v) for v in back] == [
        None if v is None else math.copysign(1, v) for v in values
    ]
    assert math.isnan(back[2]) and back[:2] == [0.0, -0.0] and back[3:] == [1.5, None, -0.0, math.inf]


def test_dictionary_typed_column_round_trips(memfs):
    # What a pandas categorical becomes: stored by value, re-encoded on read.
    chunks = [pa.array(["a", "b", None, "a"]).dictionary_encode(), pa.array(["c", "a"]).dictionary_encode()]
    table = pa.table({"cat": pa.chunked_array(chunks)})
    write_model(memfs, "/m", table, segment_rows=4)
    back = read_model(memfs, "/m")
    assert back.schema == table.schema
    assert back.column("cat").to_pylist() == table.column("cat").to_pylist()


@pytest.mark.parametrize("rows", [0, 99, 100, 101, 205])
def test_segment_boundaries(store, rows):
    fs, root, kwargs = store
    table = sample_table(rows)
    info = write_model(fs, root, table, segment_rows=100, open_kwargs=kwargs)
    expected = -(-rows // 100)
    assert info.segments == expected * table.num_columns
    column = read_column(fs, root, "string")
    assert column.num_chunks == expected and [len(c) for c in column.chunks] == [
        min(100, rows - 100 * i) for i in range(expected)
    ]
    assert read_model(fs, root).equals(table)


HOSTILE = ["../../escape", "a/b/c", "..", ".", "", "名前 (ünïcode)", "\x00nul", "con", "x" * 300, "a\\b", "-"]


def test_hostile_column_names_stay_under_the_root(store):
    fs, root, kwargs = store
    names = HOSTILE
    table = pa.table([pa.array([i, i + 1, None]) for i in range(len(names))], names=names)
    info = write_model(fs, root, table, open_kwargs=kwargs)
    prefix = root.rstrip("/") + "/"
    for path in info.files[:-1]:
        assert path.startswith(prefix)
        directory, file = path[len(prefix) :].split("/")
        assert re.fullmatch(r"\d{4}-[A-Za-z0-9_-]{1,40}", directory), directory
        assert re.fullmatch(r"dictionary\.arrow|segment-\d{5}\.ids", file), file
    assert read_model(fs, root).equals(table)
    for i, name in enumerate(names):
        assert read_column(fs, root, name).to_pylist() == [i, i + 1, None]


def test_select_columns_and_read_column(store):
    fs, root, kwargs = store
    table = sample_table(250)
    write_model(fs, root, table, segment_rows=100, open_kwargs=kwargs)
    picked = read_model(fs, root, columns=["timestamp", "int64"])
    assert picked.column_names == ["timestamp", "int64"]
    assert picked.equals(table.select(["timestamp", "int64"]))
    column = read_column(fs, root, "decimal")
    assert isinstance(column, pa.ChunkedArray) and column.equals(table.column("decimal"))
    with pytest.raises(KeyError, match="nope"):
        read_model(fs, root, columns=["nope"])
    with pytest.raises(KeyError):
        read_column(fs, root, "nope")


def test_duplicate_names_round_trip_but_cannot_be_selected(memfs):
    table = pa.table([pa.array([1, 2]), pa.array(["a", "b"])], names=["x", "x"])
    write_model(memfs, "/m", table)
    assert read_model(memfs, "/m").equals(table)
    with pytest.raises(ValueError, match="ambiguous"):
        read_column(memfs, "/m", "x")


def test_unsupported_type_is_a_type_error_and_commits_nothing(memfs):
    write_model(memfs, "/m", pa.table({"a": [1, 2]}))
    bad = pa.table({"a": [1, 2], "nested": pa.array([[1], [2, 3]])})
    with pytest.raises(TypeError, match="nested"):
        write_model(memfs, "/m", bad)
    # The old model.json went first: no model now, rather than an old description over new files.
    with pytest.raises(ModelNotFoundError):
        read_model(memfs, "/m")


def test_missing_model_json_is_not_a_model(store):
    fs, root, kwargs = store
    info = write_model(fs, root, sample_table(50), open_kwargs=kwargs)
    fs.rm(f"{root}/model.json")
    assert fs.exists(info.files[0])
    with pytest.raises(ModelNotFoundError, match="model.json") as caught:
        read_model(fs, root)
    assert root in str(caught.value) and isinstance(caught.value, FileNotFoundError)
    with pytest.raises(FileNotFoundError):
        read_column(fs, root, "int64")


# ----------------------------------------------------------------------------------------------------------
# The codec's choices


def test_sorted_low_cardinality_column_compresses(store):
    fs, root, kwargs = store
    rows = 200_000
    regions = np.sort(np.random.default_rng(3).choice([f"region {i}" for i in range(20)], rows))
    info = write_model(fs, root, pa.table({"region": regions}), open_kwargs=kwargs)
    # 20 distinct values in sorted order are ~20 runs per segment: a few bytes each, against 4 bytes a row.
    assert info.encoded_bytes < rows * 4 / 1000
    assert read_model(fs, root).column("region").to_numpy(zero_copy_only=False).tolist() == regions.tolist()


def test_long_runs_are_run_length_and_noise_is_bit_packed():
    runs = np.repeat(np.arange(1, 9, dtype=np.uint32), 1000)
    encoded = encode_segment(runs, 4)
    assert len(encoded) < 12 + 8 * 4  # eight runs, each a short header and one byte
    noise = np.random.default_rng(5).integers(0, 2**20, 10_000).astype(np.uint32)
    packed = encode_segment(noise, 20)
    assert 10_000 * 20 // 8 <= len(packed) <= 10_000 * 20 // 8 + 12 + 64
    for ids, width in ((runs, 4), (noise, 20)):
        assert decode_segment(encode_segment(ids, width), rows=len(ids), width=width, max_id=2**width - 1).tolist() == (
            ids.tolist()
        )


@st.composite
def id_arrays(draw):
    """Value ids at some bit width, built as runs so that both run kinds occur."""
    width = draw(st.integers(0, 32))
    top = (1 << width) - 1
    runs = draw(
        st.lists(st.tuples(st.integers(0, top), st.sampled_from([1, 1, 2, 3, 7, 8, 9, 40, 100, 1000])), max_size=40)
    )
    ids = np.array([v for v, n in runs for _ in range(n)], dtype=np.uint32)
    return ids, width


@PROPERTY_SETTINGS
@given(id_arrays())
def test_any_id_array_round_trips(case):
    ids, width = case
    data = encode_segment(ids, width)
    assert len(data) <= vp.max_encoded_size(len(ids))
    back = decode_segment(data, rows=len(ids), width=width, max_id=(1 << width) - 1)
    assert back.dtype == np.uint32 and back.tolist() == ids.tolist()


# ----------------------------------------------------------------------------------------------------------
# Malformed input


def header(width: int, rows: int, magic: bytes = vp.MAGIC, version: int = 1) -> bytes:
    return struct.pack("<4sBBHI", magic, version, width, 0, rows)


def decode(data: bytes, rows: int, width: int = 4, max_id: int = 15):
    return decode_segment(data, rows=rows, width=width, max_id=max_id)


MIXED = np.concatenate([np.full(50, 3), np.arange(1, 16), np.full(30, 0), np.arange(15, 0, -1)]).astype(np.uint32)


def test_every_truncation_raises():
    data = encode_segment(MIXED, 4)
    for cut in range(len(data)):
        with pytest.raises(ModelFormatError):
            decode(data[:cut], len(MIXED))


def test_trailing_data_raises():
    with pytest.raises(ModelFormatError, match="trailing"):
        decode(encode_segment(MIXED, 4) + b"\x00", len(MIXED))


@pytest.mark.parametrize(
    ("data", "rows", "width", "match"),
    [
        (header(33, 1) + b"\x02", 1, 33, "bit width"),
        (header(40, 1) + b"\x02\x00\x00\x00\x00\x00", 1, 4, "bit width"),
        (header(5, 8) + b"\x11" + b"\x00" * 5, 8, 4, "bit width"),
        (header(4, 9) + b"\x12\x01", 8, 4, "rows"),
        (header(4, 8, magic=b"PAR1"), 8, 4, "magic"),
        (header(4, 8, version=2), 8, 4, "version"),
        # An RLE run of 9 ids in a segment of 8 rows.
        (header(4, 8) + b"\x12\x01", 8, 4, "run of 9"),
        # A bit-packed run of 2**20 ids: refused before anything is unpacked or allocated.
        (header(4, 8) + b"\x81\x80\x80\x01", 8, 4, "run of"),
        (header(4, 8) + b"\x00\x01", 8, 4, "run of 0"),
        (header(4, 8) + b"\xff\xff\xff\xff\x01", 8, 4, "longer than"),
        (header(4, 2) + b"\x04\x10", 2, 4, "outside"),
        (header(4, 2) + b"\x05\x0f", 2, 4, "dictionary"),
    ],
)
def test_malformed_segments_raise(data, rows, width, match):
    with pytest.raises(ModelFormatError, match=match):
        decode(data, rows, width=width, max_id=14)


def test_oversized_segment_is_refused_before_parsing():
    with pytest.raises(ModelFormatError, match="longer than any encoding"):
        decode(header(4, 2) + b"\x04\x01" * 100, 2)


def test_encoder_refuses_ids_wider_than_the_bit_width():
    with pytest.raises(ValueError, match="bits"):
        encode_segment(np.array([16], np.uint32), 4)
    with pytest.raises(ValueError, match="bit width"):
        encode_segment(np.array([1], np.uint32), 33)


def test_corrupt_segment_in_a_model_raises(memfs):
    table = pa.table({"x": np.repeat(np.arange(10), 30)})
    info = write_model(memfs, "/m", table, segment_rows=100)
    segment = next(p for p in info.files if p.endswith("segment-00001.ids"))
    good = memfs.cat_file(segment)
    memfs.pipe_file(segment, good[:-1])
    with pytest.raises(ModelFormatError, match="truncated"):
        read_model(memfs, "/m")
    memfs.pipe_file(segment, good + b"\x00")
    with pytest.raises(ModelFormatError):
        read_model(memfs, "/m")
    # Same length, different width in the header: the model's bit width wins, the segment is refused.
    memfs.pipe_file(segment, good[:5] + bytes([good[5] + 1]) + good[6:])
    with pytest.raises(ModelFormatError, match="bit width"):
        read_column(memfs, "/m", "x")


def test_model_json_paths_are_not_trusted(memfs):
    write_model(memfs, "/m", pa.table({"x": [1, 2, 3]}))
    model = model_json(memfs, "/m")
    model["columns"][0]["segments"][0]["file"] = "../../etc/passwd"
    memfs.pipe_file("/m/model.json", json.dumps(model).encode())
    with pytest.raises(ModelFormatError, match="segment 0"):
        read_model(memfs, "/m")


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m.update(version=2),
        lambda m: m.update(rows=4),
        lambda m: m.update(segment_rows=0),
        lambda m: m.update(schema="not base64!"),
        lambda m: m["columns"][0].update(name="y"),
        lambda m: m["columns"][0]["dictionary"].update(size=2),
        lambda m: m["columns"][0]["segments"][0].update(encoded_bytes=10**9),
        lambda m: m["columns"][0]["segments"][0].update(rows="3"),
        lambda m: m.update(columns=[]),
    ],
)
def test_inconsistent_model_json_raises(memfs, change):
    write_model(memfs, "/m", pa.table({"x": [1, 2, 3]}))
    model = model_json(memfs, "/m")
    change(model)
    memfs.pipe_file("/m/model.json", json.dumps(model).encode())
    with pytest.raises(ModelFormatError):
        read_model(memfs, "/m")


def test_model_json_that_is_not_json_raises(memfs):
    write_model(memfs, "/m", pa.table({"x": [datetime.date(2024, 1, 1)]}))
    memfs.pipe_file("/m/model.json", b"\xff{")
    with pytest.raises(ModelFormatError, match="model description"):
        read_model(memfs, "/m")


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_decoder_accepts_every_bytes_like(kind):
    data = encode_segment(MIXED, 4)
    assert decode(kind(data), len(MIXED)).tolist() == MIXED.tolist()


# ----------------------------------------------------------------------------------------------------------
# Unpacking in bounded steps


def test_every_bit_width_round_trips_across_unpacking_steps():
    # Long bit-packed runs, unpacked in steps: the seams between steps at every width, and a short tail.
    rng = np.random.default_rng(17)
    rows = 3 * vp.UNPACK_CHUNK_IDS + 5
    for width in range(vp.MAX_BIT_WIDTH + 1):
        ids = rng.integers(0, 1 << width, rows, dtype=np.uint64).astype(np.uint32)
        data = encode_segment(ids, width)
        back = decode_segment(data, rows=rows, width=width, max_id=(1 << width) - 1)
        assert np.array_equal(back, ids), width


@pytest.mark.parametrize("width", [1, 13])
def test_bit_unpacking_needs_no_more_than_its_result(width):
    # A segment of one long bit-packed run: a byte per bit and 32 per id would be ~33x the 4-byte result.
    rows = 1 << 21
    ids = np.random.default_rng(width).integers(0, 1 << width, rows).astype(np.uint32)
    data = encode_segment(ids, width)
    assert len(data) < rows * width // 8 + 64  # bit-packed, not run-length
    tracemalloc.start()
    try:
        back = decode_segment(data, rows=rows, width=width, max_id=(1 << width) - 1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert np.array_equal(back, ids)
    assert peak < 2 * back.nbytes, f"peak {peak} for a {back.nbytes}-byte result"


# ----------------------------------------------------------------------------------------------------------
# Read budgets


def bomb_model(fs, root: str, value: pa.Array, rows: int, segment_rows: int = vp.MAX_SEGMENT_ROWS) -> int:
    """A model of ``rows`` copies of ``value`` (one element), each segment one run-length run: a few bytes
    of segments and model.json however many rows it claims.  Returns the stored bytes."""
    write_model(fs, root, pa.table({"x": value}))
    model = model_json(fs, root)
    model.update(rows=rows, segment_rows=segment_rows)
    segments = []
    for number in range(-(-rows // segment_rows)):
        n = min(segment_rows, rows - number * segment_rows)
        data = header(1, n) + vp._varint(n << 1) + b"\x01"  # one run of n ids of value 1
        rel = f"0000-x/segment-{number:05d}.ids"
        fs.pipe_file(f"{root}/{rel}", data)
        segments.append({"file": rel, "rows": n, "bit_width": 1, "encoded_bytes": len(data)})
    model["columns"][0]["segments"] = segments
    fs.pipe_file(f"{root}/model.json", json.dumps(model).encode())
    return sum(fs.size(path) for path in fs.find(root))


def drop_data_files(fs, root: str) -> None:
    for path in fs.find(root):
        if not path.endswith("/model.json"):
            fs.rm(path)


def test_row_budget_refuses_a_bomb_from_model_json_alone(memfs):
    stored = bomb_model(memfs, "/m", pa.array([7], pa.int8()), rows=1 << 28)
    assert stored < 4096  # 268 million rows described in a few kilobytes
    drop_data_files(memfs, "/m")  # refused before any other file is opened: they may as well be gone
    with pytest.raises(ModelTooLargeError, match="max_rows=100,000,000"):
        read_model(memfs, "/m")
    with pytest.raises(ModelTooLargeError, match="max_rows"):
        read_column(memfs, "/m", "x")
    assert issubclass(ModelTooLargeError, ModelFormatError) and vp.DEFAULT_MAX_ROWS == 100_000_000


def test_max_rows_is_the_callers_to_raise(memfs):
    table = sample_table(300)
    write_model(memfs, "/m", table, segment_rows=100)
    with pytest.raises(ModelTooLargeError, match="300 rows"):
        read_model(memfs, "/m", max_rows=299)
    with pytest.raises(ModelTooLargeError):
        read_column(memfs, "/m", "int64", max_rows=299)
    assert read_model(memfs, "/m", max_rows=300).equals(table)
    assert read_column(memfs, "/m", "int64", max_rows=300).equals(table.column("int64"))
    bomb_model(memfs, "/b", pa.array([7], pa.int8()), rows=5000, segment_rows=1024)
    assert read_column(memfs, "/b", "x", max_rows=5000).to_pylist() == [7] * 5000
    with pytest.raises(TypeError):
        read_model(memfs, "/m", max_rows=300.0)
    with pytest.raises(ValueError, match="max_bytes"):
        read_model(memfs, "/m", max_bytes=-1)


def test_segment_rows_must_add_up_to_the_model(memfs):
    write_model(memfs, "/m", pa.table({"x": list(range(300))}), segment_rows=100)
    model = model_json(memfs, "/m")
    model["columns"][0]["segments"][2]["rows"] = 99
    memfs.pipe_file("/m/model.json", json.dumps(model).encode())
    drop_data_files(memfs, "/m")
    with pytest.raises(ModelFormatError, match="rows"):
        read_model(memfs, "/m")


def test_byte_budget_refuses_fixed_width_values_from_model_json_alone(memfs):
    # 67 million rows (under max_rows) of a 1 KiB fixed-size value: 64 GiB from a few kilobytes.
    bomb_model(memfs, "/m", pa.array([b"v" * 1024], pa.binary(1024)), rows=1 << 26)
    drop_data_files(memfs, "/m")
    with pytest.raises(ModelTooLargeError, match="max_bytes"):
        read_model(memfs, "/m")
    assert vp.DEFAULT_MAX_BYTES == 4 * 1024**3


def test_byte_budget_counts_string_values_before_copying_them(memfs):
    # One 1 KiB string repeated 2 million times: 2 GiB.  Offsets and bitmaps (16 MiB) fit the budget, so
    # the values are what is refused, counted from the first segment's ids before take() would copy them.
    stored = bomb_model(memfs, "/m", pa.array(["v" * 1024], pa.large_string()), rows=1 << 21, segment_rows=1 << 19)
    assert stored < 8192
    with pytest.raises(ModelTooLargeError, match="max_bytes"):
        read_model(memfs, "/m", max_bytes=256 * 1024**2)


def test_max_bytes_is_the_callers_to_raise(memfs):
    table = pa.table({"s": pa.array(["v" * 1000] * 2000), "n": pa.array(range(2000), pa.int16())})
    info = write_model(memfs, "/m", table, segment_rows=500)
    assert info.total_bytes < 20_000  # two megabytes of strings from one dictionary entry
    with pytest.raises(ModelTooLargeError, match="max_bytes=1,000,000"):
        read_model(memfs, "/m", max_bytes=1_000_000)
    assert read_model(memfs, "/m", columns=["n"], max_bytes=1_000_000).equals(table.select(["n"]))
    with pytest.raises(ModelTooLargeError):
        read_column(memfs, "/m", "s", max_bytes=1_000_000)
    back = read_model(memfs, "/m", max_bytes=2_100_000)
    assert back.equals(table) and back.nbytes <= 2_100_000


# ----------------------------------------------------------------------------------------------------------
# Parse failures are ModelFormatError; storage errors pass through


def put_model(fs, root: str, model: dict) -> None:
    fs.pipe_file(f"{root}/model.json", json.dumps(model).encode())


def with_schema_bytes(fs, root: str, edit) -> None:
    model = model_json(fs, root)
    model["schema"] = base64.b64encode(edit(base64.b64decode(model["schema"]))).decode()
    put_model(fs, root, model)


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 200_000,  # nesting deeper than the parser's recursion limit
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        b"[]",
        b"null",
        b'"\xff"',
        b'{"schema": 5}',
        b'{"schema": "' + base64.b64encode(b"\xff\xff\xff\xff\xf0\xff\xff\xff") + b'"}',
        b'{"schema": "' + base64.b64encode(b"\xff\xff\xff\xff\x08\x00\x00\x00" + bytes(8)) + b'"}',
    ],
    ids=["deep-list", "deep-object", "list", "null", "not-utf8", "schema-int", "schema-negative", "schema-garbage"],
)
def test_unparseable_model_json_is_a_format_error(memfs, raw):
    write_model(memfs, "/m", pa.table({"x": [1, 2, 3]}))
    memfs.pipe_file("/m/model.json", raw)
    with pytest.raises(ModelFormatError, match="model description"):
        read_model(memfs, "/m")


def test_schema_name_that_is_not_utf8_is_a_format_error(memfs):
    write_model(memfs, "/m", pa.table({"colname": [1, 2, 3]}))
    with_schema_bytes(memfs, "/m", lambda raw: raw.replace(b"colname", b"\xffolname"))
    with pytest.raises(ModelFormatError, match="model description"):
        read_model(memfs, "/m")


def ipc_file(table: pa.Table, **options) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema, options=pa.ipc.IpcWriteOptions(**options)) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def flip_footer(data: bytes) -> bytes:
    # The file ends with the footer, its int32 length and b"ARROW1": corrupt the footer's root offset.
    start = len(data) - 10 - struct.unpack("<i", data[-10:-6])[0]
    return data[:start] + bytes([data[start] ^ 0xFF]) + data[start + 1 :]


DICTIONARY_FILES = {
    "no-columns": ipc_file(pa.table({})),
    "two-columns": ipc_file(pa.table({"dictionary": [1, 2, 3], "extra": [4, 5, 6]})),
    "other-name": ipc_file(pa.table({"values": [1, 2, 3]})),
    "footer": flip_footer(ipc_file(pa.table({"dictionary": [1, 2, 3]}))),
    "truncated-body": ipc_file(pa.table({"dictionary": [1, 2, 3]}))[:-60],
    "with-null": ipc_file(pa.table({"dictionary": [1, None, 3]})),
    "other-type": ipc_file(pa.table({"dictionary": pa.array([1, 2, 3], pa.int32())})),
}


@pytest.mark.parametrize("name", sorted(DICTIONARY_FILES))
def test_malformed_dictionary_file_is_a_format_error(memfs, name):
    write_model(memfs, "/m", pa.table({"x": [10, 20, 30]}))
    data = DICTIONARY_FILES[name]
    memfs.pipe_file("/m/0000-x/dictionary.arrow", data)
    model = model_json(memfs, "/m")
    model["columns"][0]["dictionary"]["bytes"] = len(data)
    put_model(memfs, "/m", model)
    with pytest.raises(ModelFormatError, match="dictionary") as caught:
        read_model(memfs, "/m")
    assert not isinstance(caught.value, OSError)  # corruption must not look like a transient I/O error


def test_compressed_dictionary_is_refused(memfs):
    values = pa.array(["x" * 100_000, "y" * 100_000])
    write_model(memfs, "/m", pa.table({"s": values}))
    data = ipc_file(pa.table({"dictionary": values}), compression="zstd")
    assert len(data) < 10_000
    memfs.pipe_file("/m/0000-s/dictionary.arrow", data)
    model = model_json(memfs, "/m")
    model["columns"][0]["dictionary"]["bytes"] = len(data)
    put_model(memfs, "/m", model)
    with pytest.raises(ModelFormatError, match="decodes to"):
        read_model(memfs, "/m")


def test_dictionary_index_type_must_hold_the_dictionary(memfs):
    int8_strings = pa.dictionary(pa.int8(), pa.string())
    # Each chunk fits int8 on its own; the one dictionary of 200 values the model keeps would not.
    chunks = [pa.array([f"{p}{i}" for i in range(100)]).dictionary_encode().cast(int8_strings) for p in "ab"]
    with pytest.raises(ValueError, match="200 distinct values"):
        write_model(memfs, "/w", pa.table({"c": pa.chunked_array(chunks)}))
    # A model.json that says int8 over a stored dictionary of 200 values.
    write_model(memfs, "/m", pa.table({"c": [f"v{i}" for i in range(200)]}))
    model = model_json(memfs, "/m")
    model["schema"] = base64.b64encode(pa.schema([pa.field("c", int8_strings)]).serialize().to_pybytes()).decode()
    model["columns"][0]["type"] = str(int8_strings)
    put_model(memfs, "/m", model)
    with pytest.raises(ModelFormatError, match="index type"):
        read_model(memfs, "/m")
    # The largest dictionaries that do fit.
    for index_type, size in ((pa.int8(), 128), (pa.uint8(), 256)):
        type_ = pa.dictionary(index_type, pa.string())
        table = pa.table({"c": pa.array([f"v{i}" for i in range(size)] + [None]).dictionary_encode().cast(type_)})
        write_model(memfs, "/ok", table, segment_rows=100)
        back = read_model(memfs, "/ok")
        assert back.schema == table.schema and back.column("c").to_pylist() == table.column("c").to_pylist()


def test_writer_refuses_what_the_reader_would_refuse(memfs):
    with pytest.raises(TypeError, match="cannot be stored"):
        write_model(memfs, "/m", pa.table({"v": pa.array(["a", "b"], pa.string_view())}))
    not_null = pa.schema([pa.field("x", pa.int64(), nullable=False)])
    with pytest.raises(ValueError, match="not null"):
        write_model(memfs, "/m", pa.Table.from_arrays([pa.array([1, None])], schema=not_null))
    table = pa.Table.from_arrays([pa.array([1, 2])], schema=not_null)
    write_model(memfs, "/m", table)
    assert read_model(memfs, "/m").equals(table)


def test_nulls_in_a_column_declared_not_null_are_refused(memfs):
    write_model(memfs, "/m", pa.table({"x": [1, None, 3]}))
    with_schema_bytes(memfs, "/m", lambda _: pa.schema([pa.field("x", pa.int64(), nullable=False)]).serialize())
    with pytest.raises(ModelFormatError, match="not null"):
        read_model(memfs, "/m")


class FailingOpen:
    """Reads through ``fs``, except that opening a path ending in ``suffix`` raises ``error``."""

    def __init__(self, fs, suffix: str, error: BaseException) -> None:
        self.fs, self.suffix, self.error = fs, suffix, error

    def open(self, path, mode="rb", **kwargs):
        if path.endswith(self.suffix):
            raise self.error
        return self.fs.open(path, mode, **kwargs)


@pytest.mark.parametrize("suffix", ["model.json", "dictionary.arrow", "segment-00001.ids"])
@pytest.mark.parametrize(
    "error",
    [PermissionError(errno.EACCES, "denied"), OSError(errno.EIO, "I/O error"), IntegrityError()],
    ids=["permission", "eio", "integrity"],
)
def test_storage_errors_pass_through_unchanged(memfs, suffix, error):
    write_model(memfs, "/m", sample_table(150), segment_rows=100)
    with pytest.raises(type(error)) as caught:
        read_model(FailingOpen(memfs, suffix, error), "/m")
    assert caught.value is error


def test_missing_data_file_is_a_file_not_found_error(memfs):
    write_model(memfs, "/m", sample_table(150), segment_rows=100)
    memfs.rm("/m/0003-string/segment-00001.ids")
    with pytest.raises(FileNotFoundError) as caught:
        read_model(memfs, "/m")
    assert not isinstance(caught.value, (ModelNotFoundError, ModelFormatError))


@pytest.mark.parametrize("file", ["0003-string/dictionary.arrow", "0003-string/segment-00001.ids"])
def test_cmk_integrity_failure_passes_through(tmp_path, file):
    LocalVaultProvider().create("t")
    fs = fsspec.filesystem("cmk", target_protocol="file", key="local://t")
    root = tmp_path / "m"
    write_model(fs, str(root), sample_table(150), segment_rows=100)
    path = root / file
    raw = bytearray(path.read_bytes())
    raw[-20] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError):
        read_model(fs, str(root))


# ----------------------------------------------------------------------------------------------------------
# Mutation fuzzing


def fuzz_table(rows: int = 40) -> pa.Table:
    """Every kind of column, every one with nulls (so a flipped nullability shows), in three segments."""
    return pa.table(
        {
            "i": pa.array([None if i % 7 == 3 else (i * 37) % 11 - 5 for i in range(rows)], pa.int64()),
            "s": pa.array([None if i % 5 == 0 else f"v{i % 6}" for i in range(rows)]),
            "b": pa.array([None if i % 9 == 4 else i % 3 == 0 for i in range(rows)]),
            "cat": pa.array([None if i % 8 == 1 else f"c{i % 3}" for i in range(rows)]).dictionary_encode(),
            "n": pa.nulls(rows, pa.int32()),
            "wide": pa.array([None if i % 10 == 9 else i * 3 for i in range(rows)], pa.int32()),
        }
    )


JSON_VALUES = [0, -1, 1, 2**31, 2**62, 2**70, 1.5, "", "x", None, True, [], {}, [[[[]]]]]


def mutate_json(raw: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Replace or delete one value anywhere in model.json."""
    model = json.loads(raw)
    slots = []

    def walk(node):
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, child in items:
            slots.append((node, key))
            walk(child)

    walk(model)
    node, key = rng.choice(slots)
    if isinstance(node, dict) and rng.random() < 0.2:
        del node[key]
        return json.dumps(model).encode(), f"delete {key!r}"
    node[key] = rng.choice(JSON_VALUES)
    return json.dumps(model).encode(), f"set {key!r} to {node[key]!r}"


def mutate_bytes(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One byte-level change: a flipped bit, an extreme byte or word, a cut, an insertion, a deletion."""
    i = rng.randrange(len(data))
    kind = rng.choice(["flip", "byte", "word", "truncate", "extend", "insert", "delete"])
    if kind == "flip":
        bit = rng.randrange(8)
        return data[:i] + bytes([data[i] ^ 1 << bit]) + data[i + 1 :], f"flip bit {bit} of byte {i}"
    if kind == "byte":
        value = rng.choice([0, 0x7F, 0x80, 0xFF, rng.randrange(256)])
        return data[:i] + bytes([value]) + data[i + 1 :], f"byte {i} = {value:#x}"
    if kind == "word":
        word = struct.pack("<I", rng.choice([0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 24, 1 << 25]))
        return (data[:i] + word + data[i + 4 :])[: max(len(data), i + 4)], f"word at {i} = {word.hex()}"
    if kind == "truncate":
        return data[:i], f"truncate to {i}"
    if kind == "extend":
        return data + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9))), "extend"
    if kind == "insert":
        return data[:i] + bytes([rng.randrange(256)]) + data[i:], f"insert at {i}"
    return data[:i] + data[i + 1 :], f"delete byte {i}"


def test_mutated_model_raises_only_format_errors(memfs):
    """Hundreds of single mutations of a small model's files.  Only ModelFormatError (or
    ModelNotFoundError) may escape.  A change to model.json can never yield a result other than the
    original table: everything in it is checked against the schema, the files or each other.  A value byte
    in a dictionary or a bit-packed id can turn into another valid value, which nothing short of
    authentication (the ``cmk`` layer, tested below) notices; a result read despite such a change must still
    be a valid table of the model's schema and row count."""
    table = fuzz_table()
    info = write_model(memfs, "/m", table, segment_rows=16)
    originals = {path: memfs.cat_file(path) for path in info.files}
    model_path, data_paths = info.files[-1], list(info.files[:-1])
    rng = random.Random(20240611)
    outcomes = {"refused": 0, "same": 0, "valid": 0}
    for case in range(400):
        path = model_path if case % 3 == 0 else rng.choice(data_paths)
        if path == model_path and rng.random() < 0.5:
            mutated, what = mutate_json(originals[path], rng)
        else:
            mutated, what = mutate_bytes(originals[path], rng)
        memfs.pipe_file(path, mutated)
        try:
            back = read_model(memfs, "/m")
        except (ModelFormatError, ModelNotFoundError):
            outcomes["refused"] += 1
        except Exception as exc:  # noqa: BLE001 - any other escape is the failure under test
            pytest.fail(f"case {case}, {path}: {what}: {type(exc).__name__}: {exc}")
        else:
            if back.equals(table):
                outcomes["same"] += 1
            else:
                assert path != model_path, f"case {case}: {what} changed the result"
                back.validate(full=True)
                assert back.schema.equals(table.schema) and back.num_rows == table.num_rows, what
                outcomes["valid"] += 1
        finally:
            memfs.pipe_file(path, originals[path])
    assert outcomes["refused"] > 300, outcomes  # the mutations did reach the checks
    assert read_model(memfs, "/m").equals(table)


def test_mutated_cmk_model_never_reads_wrong_data(tmp_path):
    """Over ``cmk``, every stored byte is authenticated: a changed file is an integrity error (passing
    through unchanged), never a different table."""
    LocalVaultProvider().create("t")
    fs = fsspec.filesystem("cmk", target_protocol="file", key="local://t")
    table = fuzz_table()
    info = write_model(fs, str(tmp_path / "m"), table, segment_rows=16)
    originals = {path: Path(path).read_bytes() for path in info.files}
    rng = random.Random(7)
    for case in range(40):
        path = rng.choice(info.files)
        mutated, what = mutate_bytes(originals[path], rng)
        Path(path).write_bytes(mutated)
        try:
            back = read_model(fs, str(tmp_path / "m"))
        except (CMKError, ModelFormatError):
            pass
        else:
            assert back.equals(table), f"case {case}, {path}: {what}"
        finally:
            Path(path).write_bytes(originals[path])
    assert read_model(fs, str(tmp_path / "m")).equals(table)
