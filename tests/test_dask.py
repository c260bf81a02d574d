"""Dask refresh jobs: a real distributed LocalCluster (2 worker processes on
127.0.0.1) writes and reads a partitioned encrypted Parquet dataset through
``cmk::file://``.  The workers find the ``cmk`` protocol through the
``fsspec.specs`` entry point and the key through its URI alone."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")

from cmkfs.errors import KeyRevokedError  # noqa: E402
from cmkfs.format import MAGIC  # noqa: E402
from tests.markers import needs_pandas_chained_urls  # noqa: E402

pytestmark = [pytest.mark.dask, pytest.mark.slow]


def _create_key(name: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "cmkfs", "keys", "create", name], check=True, capture_output=True, text=True
    )
    return out.stdout.strip().splitlines()[-1]


def _read_on_worker(url: str, key: str, cache_ttl: float = 900) -> tuple[int, int]:
    import fsspec  # imported on the worker: no cmkfs import beforehand

    with fsspec.open(url, "rb", cmk={"key": key, "cache_ttl": cache_ttl}) as f:
        return os.getpid(), len(f.read())


@pytest.fixture
def cluster():
    # Started inside the test so the workers inherit this test's CMKFS_HOME.
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def test_partitioned_dataset_round_trip_on_workers(cluster, tmp_path):
    key = _create_key("refresh")
    rng = np.random.default_rng(3)
    df = pd.DataFrame(
        {
            "region": rng.choice(["north", "south", "east", "west"], 20_000),
            "units": rng.integers(0, 1000, 20_000),
            "revenue": rng.random(20_000) * 100,
        }
    )
    url = f"cmk::file://{tmp_path}/sales"
    options = {"cmk": {"key": key}}

    dd.from_pandas(df, npartitions=4).to_parquet(
        url, partition_on=["region"], storage_options=options, write_index=False
    )

    written = [os.path.join(d, f) for d, _, files in os.walk(tmp_path / "sales") for f in files]
    data_files = [p for p in written if p.endswith(".parquet")]
    assert len(data_files) >= 4
    for path in written:
        with open(path, "rb") as f:
            head = f.read(8)
        # Every file on disk, data and metadata alike, is a cmkfs file.
        assert head == MAGIC, path

    back = dd.read_parquet(url, storage_options=options).compute()
    expected = df.sort_values(["region", "units", "revenue"]).reset_index(drop=True)
    got = (
        back[["region", "units", "revenue"]]
        .astype({"region": str})
        .sort_values(["region", "units", "revenue"])
        .reset_index(drop=True)
    )
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)

    # The reads really ran in the worker processes, which resolved cmk:: themselves.
    target = "cmk::file://" + data_files[0]
    pid, size = cluster.submit(_read_on_worker, target, key, pure=False).result()
    assert pid != os.getpid()
    assert size > 0


@needs_pandas_chained_urls
def test_revoked_key_stops_workers_within_the_ttl(cluster, tmp_path):
    key = _create_key("one")
    url = f"cmk::file://{tmp_path}/one.parquet"
    pd.DataFrame({"a": [1, 2, 3]}).to_parquet(url, storage_options={"cmk": {"key": key}})
    _, size = cluster.submit(_read_on_worker, url, key, 1, pure=False).result()
    assert size > 0
    subprocess.run([sys.executable, "-m", "cmkfs", "keys", "disable", "one"], check=True, capture_output=True)
    time.sleep(1.2)  # the workers' cache TTL is 1 s: past it, they must ask the vault again
    # The worker's KeyRevokedError travels back to the client as itself.
    with pytest.raises(KeyRevokedError):
        cluster.submit(_read_on_worker, url, key, 1, pure=False).result()
