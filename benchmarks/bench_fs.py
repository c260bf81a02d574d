"""The ``cmk`` filesystem next to the plain target it wraps, side by side in one run.

What it measures (medians over interleaved rounds, and ratios):

* **sequential**: write then read a large file through ``cmk::file://`` and
  ``cmk::memory://`` against the plain target, and against the *limit*: the
  plain target's time plus raw AES-GCM over the same bytes, in series.
* **parquet column**: read the footer and one column of a large Parquet
  file (pyarrow through the filesystem): time and bytes fetched from the
  target, against plain.  Bytes are counted by the kernel (``rchar`` in
  ``/proc/self/io``), so the count is what a remote store would have served.
* **small files**: write and read many 50 KB "rendered images" (files/s).
* **listing**: ``ls(detail=True)`` of 1,000 files (sizes are plaintext sizes,
  so cmkfs reads each file's header).
* **vertipaq**: ``write_model`` then ``read_model`` of a generated 1M-row,
  10-column sales table (``cmkfs.workloads.vertipaq``: dictionaries plus
  run-length / bit-packed segments, ~170 files) through ``cmk::file://``
  against plain ``file://``: median seconds and the ratio.

Usage::

    python benchmarks/bench_fs.py             # full run: 1 GiB files, 10,000 images
    python benchmarks/bench_fs.py --quick     # smoke run (seconds)
    python benchmarks/bench_fs.py --only vertipaq
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

from benchmarks._common import GiB, MiB, environment, human_size, interleaved, median, ratio, save_json, table
from cmkfs.format import DEFAULT_SEGMENT_SIZE, ContentClass
from cmkfs.workloads.vertipaq import read_model, write_model


def bytes_read() -> int:
    """Bytes this process has read through read/pread syscalls (``/proc/self/io``).

    Counted below any caching in Python, the same way for plain fsspec,
    pyarrow and cmkfs: what a remote store would have had to serve."""
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise RuntimeError("no rchar in /proc/self/io")


def make_key(home: str) -> str:
    """A key in a throwaway embedded vault: the benchmark never touches ~/.cmkfs."""
    os.environ["CMKFS_HOME"] = home
    subprocess.run([sys.executable, "-m", "cmkfs", "keys", "create", "bench"], check=True, capture_output=True)
    return "local://bench"


def cmk(target_protocol: str, key: str, fsync: bool = True, **target_options):
    return fsspec.filesystem(
        "cmk",
        target_protocol=target_protocol,
        target_options=target_options,
        key=key,
        fsync=fsync,
        skip_instance_cache=True,
    )


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

        cases = {
            "plain write": writer(plain, f"{base}/plain.bin"),
            "cmk write": writer(enc, f"{base}/enc.bin"),
            "raw aes-gcm": lambda: raw_aesgcm_seconds(data, DEFAULT_SEGMENT_SIZE),
        }
        if proto == "file":
            # Plain fsspec never fsyncs; cmk does by default (durable before
            # visible).  Show the same work without the flush as well.
            cases["cmk write, fsync=False"] = writer(cmk(proto, key, fsync=False), f"{base}/enc-nf.bin")
        times = interleaved(cases, rounds)
        times.update(
            interleaved(
                {"plain read": reader(plain, f"{base}/plain.bin"), "cmk read": reader(enc, f"{base}/enc.bin")}, rounds
            )
        )
        crypto = median(times["raw aes-gcm"])
        variants = [("write", "cmk write"), ("read", "cmk read")]
        if proto == "file":
            variants.insert(1, ("write", "cmk write, fsync=False"))
        for op, name in variants:
            t_plain, t_cmk = median(times[f"plain {op}"]), median(times[name])
            limit = t_plain + crypto
            label = f"{proto}:// {op} {human_size(size)}" + (" (fsync=False)" if "fsync" in name else "")
            rows.append(
                [
                    label,
                    size / t_plain / 1e9,
                    size / limit / 1e9,
                    size / t_cmk / 1e9,
                    ratio(t_plain, t_cmk),
                    ratio(limit, t_cmk),
                ]
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
    plain = LocalFileSystem()
    enc = cmk("file", key)
    p_plain, p_enc = str(workdir / "plain.parquet"), str(workdir / "enc.parquet")
    # Row groups of ~64 MiB, like a refresh job writing a large dataset.
    pq.write_table(table_, p_plain, filesystem=plain, row_group_size=max(1, rows_n // 16))
    pq.write_table(table_, p_enc, filesystem=enc, row_group_size=max(1, rows_n // 16))
    fetched: dict[str, list[int]] = {"plain": [], "cmk": []}

    def column_read(fs, path, name):
        def run():
            before = bytes_read()
            pq.read_table(path, filesystem=fs, columns=["c3"])
            fetched[name].append(bytes_read() - before)

        return run

    times = interleaved({"plain": column_read(plain, p_plain, "plain"), "cmk": column_read(enc, p_enc, "cmk")}, rounds)
    t_plain, t_cmk = median(times["plain"]), median(times["cmk"])
    b_plain, b_cmk = median(fetched["plain"]), median(fetched["cmk"])
    bound = 1.1 * b_plain + 2 * (DEFAULT_SEGMENT_SIZE + 16)
    # The limit, as for sequential I/O: plain time plus raw AES-GCM over the bytes cmk had to open.
    limit = t_plain + median(raw_aesgcm_seconds(memoryview(bytes(int(b_cmk))), DEFAULT_SEGMENT_SIZE) for _ in range(3))
    return [
        [
            f"footer + 1 of {columns} columns, {human_size(size)} file",
            t_plain * 1e3,
            limit * 1e3,
            t_cmk * 1e3,
            ratio(t_cmk, t_plain),
            ratio(limit, t_cmk),
            b_plain / MiB,
            b_cmk / MiB,
            ratio(b_cmk, b_plain),
            "yes" if b_cmk <= bound else "NO",
        ]
    ]


def bench_small_files(workdir: Path, key: str, count: int, rounds: int) -> list[list]:
    payloads = [os.urandom(50_000) for _ in range(16)]
    plain = LocalFileSystem()
    enc = cmk("file", key)
    enc_nf = cmk("file", key, fsync=False)
    rows = []
    for name, fs in (("plain", plain), ("cmk", enc), ("cmk-nf", enc_nf)):
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

    times = interleaved(
        {"plain write": write(plain, "plain"), "cmk write": write(enc, "cmk"), "cmk-nf write": write(enc_nf, "cmk-nf")},
        rounds,
    )
    times.update(interleaved({"plain read": read(plain, "plain"), "cmk read": read(enc, "cmk")}, rounds))
    for label, p, c in (
        (f"{count} x 50 KB write", "plain write", "cmk write"),
        (f"{count} x 50 KB write (fsync=False)", "plain write", "cmk-nf write"),
        (f"{count} x 50 KB read", "plain read", "cmk read"),
    ):
        t_plain, t_cmk = median(times[p]), median(times[c])
        rows.append([label, count / t_plain, count / t_cmk, ratio(t_plain, t_cmk)])

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


def sales_table(rows: int) -> pa.Table:
    """A fact table shaped like a refreshed sales model: sorted keys and dates, low-cardinality
    dimensions, a few high-cardinality measures, some nulls."""
    rng = np.random.default_rng(17)
    products = pa.array([f"product {i:05d}" for i in range(2000)])
    prices = rng.uniform(1, 500, 2000).round(2)
    product = rng.integers(0, 2000, rows)
    return pa.table(
        {
            "order_id": np.arange(rows, dtype=np.int64),
            "order_date": pa.array(np.sort(rng.integers(19_000, 20_000, rows)).astype(np.int32)).cast(pa.date32()),
            "region": pa.array([f"region {i}" for i in range(8)]).take(pa.array(rng.integers(0, 8, rows))),
            "channel": pa.array(["web", "store", "phone"]).take(
                pa.array(rng.integers(0, 3, rows), mask=rng.random(rows) < 0.05)
            ),
            "product": products.take(pa.array(product)),
            "customer": rng.integers(0, 50_000, rows),
            "quantity": rng.integers(1, 21, rows).astype(np.int32),
            "unit_price": prices[product],
            "discount": pa.array(rng.choice([0.0, 0.05, 0.1, 0.2], rows), mask=rng.random(rows) < 0.3),
            "amount": rng.normal(200, 80, rows).round(2),
        }
    )


def bench_vertipaq(workdir: Path, key: str, rows: int, rounds: int) -> list[list]:
    """Write then read a whole model: many small-to-medium files, encoding work in between."""
    table_ = sales_table(rows)
    plain = LocalFileSystem()
    variants = {
        "plain": (plain, None),
        "cmk": (cmk("file", key), {"content_class": ContentClass.VERTIPAQ}),
        "cmk-nf": (cmk("file", key, fsync=False), {"content_class": ContentClass.VERTIPAQ}),
    }
    infos = {}

    def write(name):
        fs, kwargs = variants[name]

        def run():
            infos[name] = write_model(fs, str(workdir / f"vpq-{name}"), table_, open_kwargs=kwargs)

        return run

    def read(name):
        fs, _ = variants[name]

        def run():
            if read_model(fs, str(workdir / f"vpq-{name}")).num_rows != rows:
                raise RuntimeError("model read back short")

        return run

    times = interleaved({f"{name} write": write(name) for name in variants}, rounds)
    times.update(interleaved({f"{name} read": read(name) for name in ("plain", "cmk")}, rounds))
    if not read_model(variants["cmk"][0], str(workdir / "vpq-cmk")).equals(table_):
        raise RuntimeError("cmk model does not round-trip")
    info = infos["plain"]
    label = f"{rows:,} rows x {table_.num_columns} cols, {len(info.files)} files, {info.total_bytes / MiB:.1f} MiB"
    out = []
    for op, name, suffix in (
        ("write", "cmk write", ""),
        ("write", "cmk-nf write", " (fsync=False)"),
        ("read", "cmk read", ""),
    ):
        t_plain, t_cmk = median(times[f"plain {op}"]), median(times[name])
        out.append([f"{op} {label}{suffix}", f"{t_plain:.3f}", f"{t_cmk:.3f}", ratio(t_cmk, t_plain)])
    for name in variants:
        shutil.rmtree(workdir / f"vpq-{name}", ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run in seconds")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds per comparison")
    parser.add_argument("--json", metavar="PATH", help="also save the results as JSON")
    parser.add_argument("--dir", default=None, help="working directory on the disk to measure (default: a temp dir)")
    parser.add_argument(
        "--only",
        choices=["sequential", "parquet", "small", "vertipaq"],
        action="append",
        help="run only these sections (repeatable)",
    )
    args = parser.parse_args(argv)
    size = 32 * MiB if args.quick else 1 * GiB
    images = 300 if args.quick else 10_000
    model_rows = 100_000 if args.quick else 1_000_000
    rounds = args.rounds or (2 if args.quick else 5)

    results: dict = {"environment": environment(), "quick": args.quick}
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="cmkfs-bench-") as tmp:
        workdir = Path(tmp)
        key = make_key(str(workdir / "home"))

        only = set(args.only or ["sequential", "parquet", "small", "vertipaq"])
        if "sequential" in only:
            seq = bench_sequential(workdir, key, size, rounds)
            print("\nSequential, GB/s (limit = plain target + raw AES-GCM in series; target >= 0.80x limit)")
            print(table(["case", "plain", "limit", "cmk", "cmk/plain", "cmk/limit"], seq), flush=True)
            results["sequential"] = seq
        if "parquet" in only:
            par = bench_parquet(workdir, key, size, rounds)
            print(
                "\nParquet column read (target: <= 1.3x plain time, <= 1.1x plain bytes + 2 segments;"
                " limit = plain + raw AES-GCM over the bytes fetched)"
            )
            print(
                table(
                    [
                        "case",
                        "plain ms",
                        "limit ms",
                        "cmk ms",
                        "time x",
                        "cmk/limit",
                        "plain MiB",
                        "cmk MiB",
                        "bytes x",
                        "within bound",
                    ],
                    par,
                ),
                flush=True,
            )
            results["parquet"] = par
        if "small" in only:
            small = bench_small_files(workdir, key, images, rounds)
            print("\nSmall files and listing, files/s (target: >= 0.70x plain local disk)")
            print(table(["case", "plain", "cmk", "cmk/plain"], small), flush=True)
            results["small_files"] = small
        if "vertipaq" in only:
            vpq = bench_vertipaq(workdir, key, model_rows, rounds)
            print("\nVertiPaq model (cmkfs.workloads.vertipaq), median seconds")
            print(table(["case", "plain s", "cmk s", "cmk/plain"], vpq), flush=True)
            results["vertipaq"] = vpq
    if args.json:
        save_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
