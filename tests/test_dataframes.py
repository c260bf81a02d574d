"""DataFrames, Arrow datasets and images through ``cmk://``, and the ranged
reads that keep a column read from downloading the whole file."""

from __future__ import annotations

import io
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from cmkfs.filesystem import CMKFileSystem
from cmkfs.format import MAGIC
from cmkfs.providers.local import LocalVaultProvider
from tests.markers import needs_pandas_chained_urls


class CountingMemoryFileSystem(MemoryFileSystem):
    """fsspec's memory filesystem, counting the bytes that reads pull out of it."""

    protocol = "cmkcount"
    root_marker = "/"
    fetched = 0
    requests = 0

    def cat_file(self, path, start=None, end=None, **kwargs):
        data = super().cat_file(path, start=start, end=end, **kwargs)
        type(self).fetched += len(data)
        type(self).requests += 1
        return data


fsspec.register_implementation("cmkcount", CountingMemoryFileSystem, clobber=True)


@pytest.fixture
def key(isolated_cmkfs_home):
    LocalVaultProvider().create("frames")
    return "local://frames"


def frame(rows: int = 1000) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    return pd.DataFrame(
        {
            "id": np.arange(rows, dtype="int64"),
            "amount": rng.normal(size=rows),
            "region": rng.choice(["north", "south", "east"], size=rows),
            "note": [f"row {i}" for i in range(rows)],
        }
    )


@needs_pandas_chained_urls
def test_pandas_parquet_all_columns_and_a_subset(key, memfs):
    df = frame()
    opts = {"cmk": {"key": key}}
    df.to_parquet("cmk::memory://frames/sales.parquet", storage_options=opts)
    raw = memfs.cat_file("/frames/sales.parquet")
    assert raw.startswith(MAGIC) and b"PAR1" not in raw
    back = pd.read_parquet("cmk::memory://frames/sales.parquet", storage_options=opts)
    pd.testing.assert_frame_equal(back, df)
    subset = pd.read_parquet("cmk::memory://frames/sales.parquet", columns=["id", "region"], storage_options=opts)
    pd.testing.assert_frame_equal(subset, df[["id", "region"]])


@needs_pandas_chained_urls
def test_pandas_csv(key, memfs, tmp_path):
    df = frame(200)
    opts = {"cmk": {"key": key}}
    for url in ("cmk::memory://frames/sales.csv", f"cmk::file://{tmp_path}/sales.csv"):
        df.to_csv(url, index=False, storage_options=opts)
        back = pd.read_csv(url, storage_options=opts)
        pd.testing.assert_frame_equal(back, df)
    assert (tmp_path / "sales.csv").read_bytes().startswith(MAGIC)
    assert b"north" not in (tmp_path / "sales.csv").read_bytes()


def test_pyarrow_read_table_with_filesystem(key, tmp_path):
    fs, path = fsspec.url_to_fs(f"cmk::file://{tmp_path}/t.parquet", cmk={"key": key})
    table = pa.Table.from_pandas(frame(), preserve_index=False)
    pq.write_table(table, path, filesystem=fs)
    assert pq.read_table(path, filesystem=fs).equals(table)
    assert pq.read_table(path, filesystem=fs, columns=["amount"]).column("amount").equals(table.column("amount"))
    assert pq.ParquetFile(fs.open(path, "rb")).metadata.num_rows == len(table)


def test_pyarrow_partitioned_dataset(key, tmp_path):
    fs = CMKFileSystem(target_protocol="file", key=key)
    base = str(tmp_path / "dataset")
    table = pa.Table.from_pandas(frame(600), preserve_index=False)
    ds.write_dataset(table, base, filesystem=fs, format="parquet", partitioning=["region"], partitioning_flavor="hive")
    files = LocalFileSystem().find(base)
    assert len(files) == 3 and all(Path(f).read_bytes()[:8] == MAGIC for f in files)
    dataset = ds.dataset(base, filesystem=fs, format="parquet", partitioning="hive")
    back = dataset.to_table().sort_by("id")
    assert back.column("amount").equals(table.column("amount"))
    south = dataset.to_table(filter=ds.field("region") == "south", columns=["id"])
    assert south.num_rows == int((frame(600)["region"] == "south").sum())


def test_images_round_trip_identically(key, tmp_path):
    import matplotlib
    from PIL import Image

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fs = CMKFileSystem(target_protocol="file", key=key)
    img = Image.new("RGB", (64, 48))
    img.frombytes(bytes((x * 4 + y * 5 + c * 40) % 256 for y in range(48) for x in range(64) for c in range(3)))
    expected = io.BytesIO()
    img.save(expected, format="PNG")
    with fs.open(str(tmp_path / "pic.png"), "wb") as f:
        img.save(f, format="PNG")
    assert fs.cat_file(str(tmp_path / "pic.png")) == expected.getvalue()
    with fs.open(str(tmp_path / "pic.png"), "rb") as f:
        assert Image.open(f).tobytes() == img.tobytes()

    matplotlib.rcParams["svg.hashsalt"] = "cmkfs"  # stable ids, so two saves compare equal
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1, 2], [2, 0, 1])
    for fmt in ("png", "svg"):
        plain = io.BytesIO()
        fig.savefig(plain, format=fmt, metadata={"Date": None} if fmt == "svg" else {"Software": None})
        with fs.open(str(tmp_path / f"fig.{fmt}"), "wb") as f:
            fig.savefig(f, format=fmt, metadata={"Date": None} if fmt == "svg" else {"Software": None})
        assert fs.cat_file(str(tmp_path / f"fig.{fmt}")) == plain.getvalue()
        assert (tmp_path / f"fig.{fmt}").read_bytes()[:8] == MAGIC
    plt.close(fig)


def test_column_subset_fetches_a_fraction_of_the_file(key):
    """A Parquet footer and one column: ranged segment reads, not a download."""
    rng = np.random.default_rng(1)
    columns = {f"c{i}": rng.normal(size=100_000) for i in range(16)}  # 16 x 0.8 MB
    table = pa.table(columns)
    fs = CMKFileSystem(target_protocol="cmkcount", key=key)
    path = "/counted/wide.parquet"
    try:
        pq.write_table(table, path, filesystem=fs, row_group_size=50_000, compression="none")
        target_size = fs.fs.info(path)["size"]
        assert target_size > 12_000_000
        CountingMemoryFileSystem.fetched = CountingMemoryFileSystem.requests = 0
        got = pq.read_table(path, filesystem=fs, columns=["c3"])
        assert got.column("c3").equals(table.column("c3"))
        fetched = CountingMemoryFileSystem.fetched
        # One column of sixteen, rounded out to whole segments, plus header,
        # final segment and footer: well under a quarter of the file.
        assert fetched < target_size / 4, (fetched, target_size)
        assert fetched >= table.column("c3").nbytes  # and it did read the column
        CountingMemoryFileSystem.fetched = 0
        assert pq.read_metadata(fs.open(path, "rb")).num_columns == 16
        assert CountingMemoryFileSystem.fetched < 3 * fs.segment_size  # header, final segment, footer
    finally:
        fs.fs.rm("/counted", recursive=True)
