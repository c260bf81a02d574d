"""The ``cmk`` filesystem next to the plain target it wraps, side by side in one run.

What it measures (medians over interleaved rounds, and ratios):

* **sequential**: write then read a large file through ``cmk::file://`` and
  ``cmk::memory://`` against the plain target, and against the *limit*: the
  plain target's time plus raw AES-GCM over the same bytes, in series.
* **parquet column**: read the footer and one column of a large Parquet
  file (pyarrow through the filesystem): time and bytes fetched from the
  target, against plain.  Bytes are counted by the target's own file
  objects (``read``/``readinto``/``cat_file``), so the count is what a
  remote store would have served.
* **small files**: write and read many 50 KB "rendered images" (files/s).
* **listing**: ``ls(detail=True)`` of 1,000 files (sizes are plaintext sizes,
  so cmkfs reads each file's header).

Usage::

    python benchmarks/bench_fs.py             # full run: 1 GiB files, 10,000 images
    python benchmarks/bench_fs.py --quick     # smoke run (seconds)
    python benchmarks/bench_fs.py --json results.json
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from benchmarks._common import GiB, KiB, MiB, environment, human_size, interleaved, median, ratio, save_json, table
from cmkfs.format import DEFAULT_SEGMENT_SIZE


class CountingLocalFileSystem(LocalFileSystem):
    """A local target that counts the bytes it serves, as a remote store would bill them."""

    protocol = ("countfile",)
    served = 0

    def cat_file(self, path, start=None, end=None, **kwargs):
        data = super().cat_file(path, start=start, end=end, **kwargs)
        CountingLocalFileSystem.served += len(data)
        return data

    def _open(self, path, mode="rb", **kwargs):
        f = super()._open(path, mode=mode, **kwargs)
        if "r" in mode:
            return _CountingFile(f)
        return f


class _CountingFile:
    def __init__(self, f):
        self._f = f

    def read(self, n=-1):
        data = self._f.read(n)
        CountingLocalFileSystem.served += len(data)
        return data

    def readinto(self, b):
        n = self._f.readinto(b)
        CountingLocalFileSystem.served += n or 0
        return n

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


fsspec.register_implementation("countfile", CountingLocalFileSystem, clobber=True)


def make_key(home: str) -> str:
    """A key in a throwaway embedded vault: the benchmark never touches ~/.cmkfs."""
    os.environ["CMKFS_HOME"] = home
    subprocess.run([sys.executable, "-m", "cmkfs", "keys", "create", "bench"], check=True, capture_output=True)
    return "local://bench"


def cmk(target_protocol: str, key: str, **target_options):
    return fsspec.filesystem("cmk", target_protocol=target_protocol, target_options=target_options, key=key, skip_instance_cache=True)


def raw_aesgcm_seconds(data: memoryview, segment: int) -> float:
    """Raw AES-GCM over ``data`` in ``segment`` pieces: the crypto part of the limit."""
    aead = AESGCM(AESGCM.generate_key(256))
    out = bytearray(segment + 16)
    nonce = bytes(12)
    t0 = time.perf_counter()
    for i in range(0, len(data), segment):
        piece = data[i : i + segment]
        if len(piece) != segment:
            out = bytearray(len(piece) + 16)
        aead.encrypt_into(nonce, piece, None, out)
    return time.perf_counter() - t0


def bench_sequential(workdir: Path, key: str, size: int, rounds: int) -> list[list]:
    data = memoryview(os.urandom(size))
    chunk = 4 * MiB
    rows = []
    for proto in ("file", "memory"):
        plain = LocalFileSystem() if proto == "file" else MemoryFileSystem()
        enc = cmk(proto, key)
        base = str(workdir / "seq") if proto == "file" else "/bench-seq"
        plain.makedirs(base, exist_ok=True)

        def writer(fs, path):
            def run():
                if fs.exists(path):
                    fs.rm(path)  # truncating a big file costs more than writing it
                with fs.open(path, "wb") as f:
                    for i in range(0, size, chunk):
                        f.write(data[i : i + chunk])
            return run

        def reader(fs, path):
            def run():
                with fs.open(path, "rb") as f:
                    while f.read(chunk):
                        pass
            return run

        times = interleaved(
            {
                "plain write": writer(plain, f"{base}/plain.bin"),
                "cmk write": writer(enc, f"{base}/enc.bin"),
                "raw aes-gcm": lambda: raw_aesgcm_seconds(data, DEFAULT_SEGMENT_SIZE),
            },
            rounds,
        )
        times.update(
            interleaved({"plain read": reader(plain, f"{base}/plain.bin"), "cmk read": reader(enc, f"{base}/enc.bin")}, rounds)
        )
        crypto = median(times["raw aes-gcm"])
        for op in ("write", "read"):
            t_plain, t_cmk = median(times[f"plain {op}"]), median(times[f"cmk {op}"])
            limit = t_plain + crypto
            rows.append(
                [f"{proto}:// {op} {human_size(size)}", size / t_plain / 1e9, size / limit / 1e9, size / t_cmk / 1e9,
                 ratio(t_plain, t_cmk), ratio(limit, t_cmk)]
            )
        if proto == "file":
            shutil.rmtree(base, ignore_errors=True)
        else:
            plain.rm(base, recursive=True)
    return rows


def bench_parquet(workdir: Path, key: str, size: int, rounds: int) -> list[list]:
    columns = 8
    rows_n = size // (8 * columns)
    rng = np.random.default_rng(7)
    table_ = pa.table({f"c{i}": rng.random(rows_n) for i in range(columns)})
    plain = fsspec.filesystem("countfile", skip_instance_cache=True)
    enc = cmk("countfile", key)
    p_plain, p_enc = str(workdir / "plain.parquet"), str(workdir / "enc.parquet")
    # Row groups of ~64 MiB, like a refresh job writing a large dataset.
    pq.write_table(table_, p_plain, filesystem=plain, row_group_size=max(1, rows_n // 16))
    pq.write_table(table_, p_enc, filesystem=enc, row_group_size=max(1, rows_n // 16))
    fetched: dict[str, list[int]] = {"plain": [], "cmk": []}

    def column_read(fs, path, name):
        def run():
            before = CountingLocalFileSystem.served
            pq.read_table(path, filesystem=fs, columns=["c3"])
            fetched[name].append(CountingLocalFileSystem.served - before)
        return run

    times = interleaved({"plain": column_read(plain, p_plain, "plain"), "cmk": column_read(enc, p_enc, "cmk")}, rounds)
    t_plain, t_cmk = median(times["plain"]), median(times["cmk"])
    b_plain, b_cmk = median(fetched["plain"]), median(fetched["cmk"])
    bound = 1.1 * b_plain + 2 * (DEFAULT_SEGMENT_SIZE + 16)
    return [[f"footer + 1 of {columns} columns, {human_size(size)} file", t_plain * 1e3, t_cmk * 1e3,
             ratio(t_cmk, t_plain), b_plain / MiB, b_cmk / MiB, ratio(b_cmk, b_plain), "yes" if b_cmk <= bound else "NO"]]


def bench_small_files(workdir: Path, key: str, count: int, rounds: int) -> list[list]:
    payloads = [os.urandom(50_000) for _ in range(16)]
    plain = LocalFileSystem()
    enc = cmk("file", key)
    rows = []
    for name, fs in (("plain", plain), ("cmk", enc)):
        fs.makedirs(str(workdir / f"img-{name}"), exist_ok=True)

    def write(fs, name):
        def run():
            base = workdir / f"img-{name}"
            for i in range(count):
                fs.pipe_file(f"{base}/{i:05d}.png", payloads[i % 16])
        return run

    def read(fs, name):
        def run():
            base = workdir / f"img-{name}"
            for i in range(count):
                fs.cat_file(f"{base}/{i:05d}.png")
        return run

    times = interleaved({"plain write": write(plain, "plain"), "cmk write": write(enc, "cmk")}, rounds)
    times.update(interleaved({"plain read": read(plain, "plain"), "cmk read": read(enc, "cmk")}, rounds))
    for op in ("write", "read"):
        t_plain, t_cmk = median(times[f"plain {op}"]), median(times[f"cmk {op}"])
        rows.append([f"{count} x 50 KB {op}", count / t_plain, count / t_cmk, ratio(t_plain, t_cmk)])

    listing = 1000 if count >= 1000 else count
    for name, fs in (("plain", plain), ("cmk", enc)):
        base = workdir / f"ls-{name}"
        fs.makedirs(str(base), exist_ok=True)
        for i in range(listing):
            fs.pipe_file(f"{base}/{i:05d}.png", payloads[0][:1000])
    t = interleaved(
        {
            "plain": lambda: plain.ls(str(workdir / "ls-plain"), detail=True),
            "cmk": lambda: enc.ls(str(workdir / "ls-cmk"), detail=True),
        },
        rounds,
    )
    t_plain, t_cmk = median(t["plain"]), median(t["cmk"])
    rows.append([f"ls(detail=True) of {listing} files", listing / t_plain, listing / t_cmk, ratio(t_plain, t_cmk)])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run in seconds")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds per comparison")
    parser.add_argument("--json", metavar="PATH", help="also save the results as JSON")
    parser.add_argument("--dir", default=None, help="working directory on the disk to measure (default: a temp dir)")
    args = parser.parse_args(argv)
    size = 32 * MiB if args.quick else 1 * GiB
    images = 300 if args.quick else 10_000
    rounds = args.rounds or (2 if args.quick else 5)

    results: dict = {"environment": environment(), "quick": args.quick}
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="cmkfs-bench-") as tmp:
        workdir = Path(tmp)
        key = make_key(str(workdir / "home"))

        seq = bench_sequential(workdir, key, size, rounds)
        print("\nSequential, GB/s (limit = plain target + raw AES-GCM in series; target >= 0.80x limit)")
        print(table(["case", "plain", "limit", "cmk", "cmk/plain", "cmk/limit"], seq))
        results["sequential"] = seq

        par = bench_parquet(workdir, key, size, rounds)
        print("\nParquet column read (target: <= 1.3x plain time, <= 1.1x plain bytes + 2 segments)")
        print(table(["case", "plain ms", "cmk ms", "time x", "plain MiB", "cmk MiB", "bytes x", "within bound"], par))
        results["parquet"] = par

        small = bench_small_files(workdir, key, images, rounds)
        print("\nSmall files and listing, files/s (target: >= 0.70x plain local disk)")
        print(table(["case", "plain", "cmk", "cmk/plain"], small))
        results["small_files"] = small
    if args.json:
        save_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
