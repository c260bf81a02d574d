"""The VertiPaq-style model store (``cmkfs.workloads.vertipaq``): round trips on a plain memory filesystem
and on ``cmk`` over local disk, the segment codec's choices and bounds, and malformed input refused."""

from __future__ import annotations

import datetime
import decimal
import json
import math
import re
import struct

import fsspec
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cmkfs.format import MAGIC as CMK_MAGIC
from cmkfs.format import ContentClass, FileParams
from cmkfs.providers.local import LocalVaultProvider
from cmkfs.workloads import vertipaq as vp
from cmkfs.workloads.vertipaq import (
    ModelFormatError,
    ModelNotFoundError,
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
