"""The workload behind ``cmkfs demo``: a dataset refresh into an encrypted store, as an analytics service runs it
for a customer who brought their own key, on local disk with the embedded vault.

The steps are numbered in :func:`run_demo`.  It reports through ``say`` what it did to files and keys, never key
material.  It needs no click: the demo command is its only caller, but it runs from Python as well.
"""

from __future__ import annotations

import os
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from ..errors import CMKError, KeyNotFoundError, KeyRevokedError
from ..format import MAGIC, ContentClass

__all__ = ["run_demo", "DemoResult"]

REGIONS = ("north", "south", "east", "west")
DRILL_TTL = 2.0  # seconds: short, so the drill shows the revocation bound in real time


@dataclass
class DemoResult:
    key_uri: str
    directory: str
    files: int = 0
    ciphertext_bytes: int = 0
    revenue_by_region: dict[str, float] = field(default_factory=dict)
    refused_after_disable: bool = False
    restored_after_enable: bool = False


def _ensure_key(home: str | None, say: Callable[[str], None]) -> str:
    from ..config import default_key_uri
    from ..errors import ConfigurationError
    from ..providers.local import LocalVaultProvider

    try:
        uri = default_key_uri(home)
    except ConfigurationError:
        uri = None
    if uri and uri.startswith("local://"):
        return uri
    vault = LocalVaultProvider(home=home)
    try:
        vault.describe("local://demo")
    except KeyNotFoundError:
        vault.create("demo")
        say("created key local://demo in the embedded vault")
    return "local://demo"


def _sales_table(rows: int, seed: int = 11) -> pa.Table:
    import random

    rng = random.Random(seed)
    return pa.table(
        {
            "region": [REGIONS[rng.randrange(4)] for _ in range(rows)],
            "units": [rng.randrange(1, 500) for _ in range(rows)],
            "revenue": [round(rng.random() * 1000, 2) for _ in range(rows)],
        }
    )


def _png(width: int, height: int, pixel: Callable[[int, int], tuple[int, int, int]]) -> bytes:
    """A truecolour PNG: enough of the format to draw a report chart."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    raw = bytearray()
    for y in range(height):
        raw.append(0)  # filter: none
        for x in range(width):
            raw.extend(pixel(x, y))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(raw), 6))
        + chunk(b"IEND", b"")
    )


def _bar_chart(values: dict[str, float]) -> bytes:
    width, height, bar = 240, 160, 40
    top = max(values.values()) or 1.0
    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)]
    heights = [int((v / top) * (height - 20)) for v in values.values()]

    def pixel(x: int, y: int) -> tuple[int, int, int]:
        i = (x - 20) // (bar + 10)
        in_bar = 0 <= i < len(heights) and (x - 20) % (bar + 10) < bar
        if in_bar and y >= height - heights[i]:
            return colours[i % len(colours)]
        return (255, 255, 255)

    return _png(width, height, pixel)


def run_demo(
    directory: str | os.PathLike[str],
    *,
    rows: int = 200_000,
    home: str | None = None,
    say: Callable[[str], None] = print,
) -> DemoResult:
    """Run the refresh, the report read and the revocation drill in ``directory``."""
    from ..providers.local import LocalVaultProvider

    root = Path(directory).resolve()
    root.mkdir(parents=True, exist_ok=True)
    key_uri = _ensure_key(home, say)
    result = DemoResult(key_uri=key_uri, directory=str(root))
    fs = fsspec.filesystem("cmk", target_protocol="file", key=key_uri, skip_instance_cache=True)

    # 1. Refresh: the dataset, an engine blob, a rendered report image.
    t0 = time.perf_counter()
    table = _sales_table(rows)
    dataset_dir = f"{root}/sales"
    if fs.exists(dataset_dir):
        fs.rm(dataset_dir, recursive=True)
    ds.write_dataset(
        table,
        dataset_dir,
        filesystem=fs,
        format="parquet",
        partitioning=["region"],
        partitioning_flavor="hive",
        existing_data_behavior="overwrite_or_ignore",
    )
    fs.makedirs(f"{root}/model", exist_ok=True)
    fs.makedirs(f"{root}/reports", exist_ok=True)
    blob = fs.open(f"{root}/model/revenue.vpq", "wb", content_class=ContentClass.VERTIPAQ)
    with blob:
        # A column segment as an in-memory engine would persist it: dictionary ids + values.
        encoded = pc.dictionary_encode(table.column("region")).combine_chunks()
        blob.write(encoded.indices.buffers()[1])
        blob.write(table.column("revenue").combine_chunks().buffers()[1])
    refresh_s = time.perf_counter() - t0
    say(f"refreshed {rows:,} rows into {dataset_dir} (encrypted with {key_uri}) in {refresh_s:.2f} s")

    # 2. The report: one column and the partition key, aggregated.
    t0 = time.perf_counter()
    sales = ds.dataset(dataset_dir, filesystem=fs, format="parquet", partitioning="hive")
    grouped = sales.to_table(columns=["region", "revenue"]).group_by("region").aggregate([("revenue", "sum")])
    result.revenue_by_region = {
        str(r): round(float(v), 2)
        for r, v in zip(grouped.column("region").to_pylist(), grouped.column("revenue_sum").to_pylist(), strict=True)
    }
    fs.pipe_file(f"{root}/reports/revenue.png", _bar_chart(dict(sorted(result.revenue_by_region.items()))))
    say(
        f"report read back in {time.perf_counter() - t0:.2f} s: "
        + ", ".join(f"{k} {v:,.2f}" for k, v in sorted(result.revenue_by_region.items()))
    )

    # 3. Every file on disk is ciphertext: it starts with the cmkfs magic, not PAR1 or PNG.
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                if f.read(len(MAGIC)) != MAGIC:
                    raise CMKError(f"{path} is not encrypted")
            result.files += 1
            result.ciphertext_bytes += path.stat().st_size
    say(f"{result.files} files, {result.ciphertext_bytes:,} bytes on disk: all of them cmkfs ciphertext")

    # 4. Revocation drill on a short TTL, with a fresh filesystem as a report server would hold.
    vault = LocalVaultProvider(home=home)
    name = key_uri[len("local://") :].split("?", 1)[0]
    drill = fsspec.filesystem("cmk", target_protocol="file", key=key_uri, cache_ttl=DRILL_TTL, skip_instance_cache=True)
    image = f"{root}/reports/revenue.png"
    drill.cat_file(image)
    vault.disable(name)
    try:
        say(f"key disabled; cached data keys in the report server expire within {DRILL_TTL:g} s")
        time.sleep(DRILL_TTL + 0.1)
        try:
            drill.cat_file(image)
        except KeyRevokedError:
            result.refused_after_disable = True
            say("after the TTL: read refused (KeyRevokedError), for everyone")
    finally:
        vault.enable(name)
    result.restored_after_enable = drill.cat_file(image)[:8] == b"\x89PNG\r\n\x1a\n"
    say("key enabled again: reads restored" if result.restored_after_enable else "reads were NOT restored")
    return result
