"""Throughput and memory of the cmkfs streaming engine, next to raw AES-GCM.

For each segment size it runs, interleaved in one process:

* raw AES-GCM: ``encrypt_into`` / ``decrypt_into`` with one reused output
  buffer over ``memoryview`` slices, one fixed nonce.  Nothing is cheaper in
  Python; this is the limit the engine is measured against.
* the engine: :class:`~cmkfs.stream.EncryptingWriter` into a null sink
  (threads=1 and 2, 1 MiB and 64 KiB writes) and
  :class:`~cmkfs.stream.DecryptingReader` over a :class:`BytesSource`
  (read everything; random 4 KiB reads).
* peers, when importable: Tink streaming AEAD (AES256-GCM-HKDF).

Then, in subprocesses, the peak memory (VmHWM) of streaming a file through
the writer and the reader at two file sizes, to show it does not grow with
the file.

Usage::

    python benchmarks/bench_engine.py            # full run (a few minutes)
    python benchmarks/bench_engine.py --quick    # smoke run (seconds)
    python benchmarks/bench_engine.py --json results.json
"""

from __future__ import annotations

import argparse
import io
import os
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from benchmarks._common import (
    KiB,
    MiB,
    environment,
    human_size,
    interleaved,
    median,
    peak_memory,
    ratio,
    save_json,
    table,
)
from cmkfs.format import DEFAULT_SEGMENT_SIZE, TAG_SIZE, KeyBlock, WrapAlgorithm
from cmkfs.keys import StaticKeySource
from cmkfs.stream import BytesSource, DecryptingReader, EncryptingWriter, encrypt_bytes

SEGMENT_SIZES = (64 * KiB, 256 * KiB, 1 * MiB, 4 * MiB)
RANDOM_READ = 4 * KiB
BENCH_KEY_BLOCK = KeyBlock(WrapAlgorithm.A256GCM, "local://bench", "1", bytes(60))


def bench_keys(dek: bytes) -> StaticKeySource:
    return StaticKeySource(dek, BENCH_KEY_BLOCK)


class NullSink:
    """A sink that consumes and drops writes (what ``/dev/null`` does, minus the syscall)."""

    def write(self, data) -> int:
        return len(data)


# ---------------------------------------------------------------- raw AES-GCM


def raw_cases(plain: memoryview, seg: int) -> dict:
    aead = AESGCM(os.urandom(32))
    nonce = os.urandom(12)  # one nonce for every segment: fine for timing, never for real data
    n = len(plain)
    out = bytearray(seg + TAG_SIZE)
    starts = range(0, n, seg)
    # Ciphertext for the decrypt case: every segment sealed under the same nonce.
    ct = bytearray()
    for s in starts:
        ct += aead.encrypt(nonce, plain[s : s + seg], None)
    ctv = memoryview(ct)
    plain_out = bytearray(seg)
    step = seg + TAG_SIZE

    def encrypt() -> None:
        enc = aead.encrypt_into
        for s in starts:
            chunk = plain[s : s + seg]
            enc(nonce, chunk, None, out if len(chunk) == seg else bytearray(len(chunk) + TAG_SIZE))

    def decrypt() -> None:
        dec = aead.decrypt_into
        for i, _s in enumerate(starts):
            chunk = ctv[i * step : i * step + step]
            dec(nonce, chunk, None, plain_out if len(chunk) == step else bytearray(len(chunk) - TAG_SIZE))

    # Control for the thread pool: the same loop split over two threads
    # (the caller takes one half).  Shows whether the host gives two cores now.
    pool = ThreadPoolExecutor(1)
    full = [s for s in starts if s + seg <= n]
    half = len(full) // 2

    def encrypt_part(part: list[int]) -> None:
        buf = bytearray(seg + TAG_SIZE)
        for s in part:
            aead.encrypt_into(nonce, plain[s : s + seg], None, buf)

    def encrypt2() -> None:
        f = pool.submit(encrypt_part, full[half:])
        encrypt_part(full[:half])
        f.result()

    # The floor of a random read: opening one whole segment, at random.
    count = max(1, n // seg)
    picks = [random.Random(seg + 1).randrange(count) for _ in range(4096)]

    def one_segment(reads: int) -> None:
        dec = aead.decrypt_into
        for k in range(reads):
            i = picks[k % len(picks)]
            dec(nonce, ctv[i * step : i * step + step], None, plain_out)

    return {"encrypt": encrypt, "encrypt2": encrypt2, "decrypt": decrypt, "one_segment": one_segment}


# ---------------------------------------------------------------- the engine


def engine_cases(plain: memoryview, seg: int, keys: StaticKeySource, reads: int) -> dict:
    n = len(plain)
    blob = encrypt_bytes(plain, keys, segment_size=seg)
    source = BytesSource(blob)

    def writer(threads: int, step: int):
        def run() -> None:
            w = EncryptingWriter(NullSink(), keys, segment_size=seg, threads=threads)
            for off in range(0, n, step):
                w.write(plain[off : off + step])
            w.close()

        return run

    def read_seq() -> None:
        with DecryptingReader(source, keys, threads=1) as r:
            for off in range(0, n, MiB):
                r.read(off, MiB)

    def read_all(threads: int):
        def run() -> None:
            with DecryptingReader(source, keys, threads=threads) as r:
                r.read(0, -1)

        return run

    # Random offsets, never two in a row in the same segment: the reader keeps
    # the last segments it opened, and this measures fetch + open, not that cache.
    rng = random.Random(seg)
    offsets: list[int] = []
    while len(offsets) < reads:
        off = rng.randrange(0, max(1, n - RANDOM_READ))
        if n <= seg or not offsets or off // seg != offsets[-1] // seg:
            offsets.append(off)
    reader = DecryptingReader(source, keys, threads=1)

    def random_reads() -> None:
        read = reader.read
        for off in offsets:
            read(off, RANDOM_READ)

    return {
        "enc_t1_1m": writer(1, 1 * MiB),
        "enc_t2_1m": writer(2, 1 * MiB),
        "enc_t1_64k": writer(1, 64 * KiB),
        "enc_t2_64k": writer(2, 64 * KiB),
        "dec_t1": read_all(1),
        "dec_t2": read_all(2),
        "dec_seq": read_seq,
        "rand4k": random_reads,
    }


# ---------------------------------------------------------------- peers


def tink_cases(plain: memoryview, seg: int) -> tuple[dict, str | None]:
    """Tink streaming AEAD at (about) the same plaintext segment size, or why not."""
    try:
        import tink
        from tink import streaming_aead
        from tink.proto import common_pb2
    except ImportError as exc:
        return {}, f"tink not importable ({exc.name}); pip install tink to include it"
    try:
        streaming_aead.register()
        template = streaming_aead.streaming_aead_key_templates.create_aes_gcm_hkdf_streaming_key_template(
            32, common_pb2.SHA256, 32, seg + TAG_SIZE
        )
        prim = tink.new_keyset_handle(template).primitive(streaming_aead.StreamingAead)
    except Exception as exc:  # noqa: BLE001 - a peer that cannot start is skipped, not fatal
        return {}, f"tink could not create a {human_size(seg)} segment key: {exc}"

    class _Null(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, b) -> int:
            return len(b)

    n = len(plain)

    class _Keep(io.BytesIO):
        def close(self) -> None:  # tink closes its destination; keep the bytes
            self.kept = self.getvalue()
            super().close()

    keep = _Keep()
    with prim.new_encrypting_stream(keep, b"") as es:
        es.write(plain)
    blob = keep.kept

    def encrypt() -> None:
        with prim.new_encrypting_stream(_Null(), b"") as es:
            for off in range(0, n, MiB):
                es.write(plain[off : off + MiB])

    def decrypt() -> None:
        with prim.new_decrypting_stream(io.BytesIO(blob), b"") as ds:
            while ds.read(MiB):
                pass

    return {"tink_enc": encrypt, "tink_dec": decrypt}, None


# ---------------------------------------------------------------- memory

_MEM_SETUP = """
import os
from cmkfs.format import KeyBlock, WrapAlgorithm
from cmkfs.keys import StaticKeySource
from cmkfs.stream import DecryptingReader, EncryptingWriter, FileSource
keys = StaticKeySource(bytes.fromhex("{dek}"), KeyBlock(WrapAlgorithm.A256GCM, "local://bench", "1", bytes(60)))
chunk = memoryview(bytearray(os.urandom({step})))
"""

_MEM_WRITE = """
with open(os.devnull, "wb") as f:
    w = EncryptingWriter(f, keys, segment_size={seg}, threads={threads})
    for _ in range({size} // {step}):
        w.write(chunk)
    w.close()
"""

_MEM_READ = """
with open("{path}", "rb") as f, DecryptingReader(FileSource(f), keys, threads={threads}) as r:
    for off in range(0, r.size, {step}):
        r.read(off, {step})
"""


def memory_rows(dek: bytes, seg: int, sizes: list[int], step: int, tmpdir: str) -> list[dict]:
    keys = bench_keys(dek)
    files = {}
    block = os.urandom(step)
    for size in sizes:
        path = os.path.join(tmpdir, f"mem-{size}.cmk")
        with open(path, "wb") as f:
            w = EncryptingWriter(f, keys, segment_size=seg, threads=2)
            for _ in range(size // step):
                w.write(block)
            w.close()
        files[size] = path
    setup = _MEM_SETUP.format(dek=dek.hex(), step=step)
    rows = []
    for label, template, threads in (
        ("writer, threads=1", _MEM_WRITE, 1),
        ("writer, threads=2", _MEM_WRITE, 2),
        ("reader, threads=1", _MEM_READ, 1),
        ("reader, threads=2", _MEM_READ, 2),
    ):
        for size in sizes:
            body = template.format(seg=seg, threads=threads, size=size, step=step, path=files[size])
            base, peak = peak_memory(setup, body)
            rows.append({"case": label, "file_size": size, "baseline": base, "peak": peak, "added": peak - base})
    for path in files.values():
        os.unlink(path)
    return rows


# ---------------------------------------------------------------- main

ENC_ROWS = (
    ("raw AESGCM encrypt_into", "raw_enc"),
    ("raw, 2 threads (control)", "raw_enc2"),
    ("writer t=1, 1 MiB writes", "enc_t1_1m"),
    ("writer t=2, 1 MiB writes", "enc_t2_1m"),
    ("writer t=1, 64 KiB writes", "enc_t1_64k"),
    ("writer t=2, 64 KiB writes", "enc_t2_64k"),
    ("tink streaming AEAD", "tink_enc"),
)
DEC_ROWS = (
    ("raw AESGCM decrypt_into", "raw_dec"),
    ("reader t=1, read all", "dec_t1"),
    ("reader t=2, read all", "dec_t2"),
    ("reader t=1, 1 MiB reads", "dec_seq"),
    ("tink streaming AEAD", "tink_dec"),
)


def run(args: argparse.Namespace) -> dict:
    sizes = [int(s) * KiB for s in args.segments.split(",")] if args.segments else list(SEGMENT_SIZES)
    data = args.data * MiB
    plain = memoryview(os.urandom(data))
    dek = os.urandom(32)
    keys = bench_keys(dek)
    reads = args.reads

    cases: dict = {}
    notes: list[str] = []
    for seg in sizes:
        raw = raw_cases(plain, seg)
        cases[(seg, "raw_enc")] = raw["encrypt"]
        cases[(seg, "raw_enc2")] = raw["encrypt2"]
        cases[(seg, "raw_dec")] = raw["decrypt"]
        one = raw["one_segment"]
        cases[(seg, "raw_one")] = lambda one=one: one(reads)
        for name, fn in engine_cases(plain, seg, keys, reads).items():
            cases[(seg, name)] = fn
        if not args.no_peers:
            peer, why = tink_cases(plain, seg)
            if why and why not in notes:
                notes.append(why)
            for name, fn in peer.items():
                cases[(seg, name)] = fn

    print(f"engine throughput: {human_size(data)} of data, {args.rounds} interleaved rounds, medians", flush=True)
    t0 = time.perf_counter()
    times = interleaved(cases, rounds=args.rounds, warmup=1)
    elapsed = time.perf_counter() - t0
    med = {key: median(v) for key, v in times.items()}

    def gbps(seg: int, name: str) -> float | None:
        t = med.get((seg, name))
        return data / t / 1e9 if t else None

    results: dict = {"environment": environment(), "data_bytes": data, "rounds": args.rounds, "notes": notes}
    results["throughput_gbps"] = {
        human_size(seg): {name: gbps(seg, name) for (s, name) in med if s == seg and name not in ("rand4k", "raw_one")}
        for seg in sizes
    }

    def cell(seg: int, name: str, ref: str) -> str:
        v = gbps(seg, name)
        if v is None:
            return "-"
        if name == ref:
            return f"{v:.2f}"
        return f"{v:.2f} ({ratio(v, gbps(seg, ref)):.2f}x)"

    headers = ["GB/s, median (x raw)"] + [human_size(s) for s in sizes]
    print()
    print("Encrypt")
    print(table(headers, [[label] + [cell(s, key, "raw_enc") for s in sizes] for label, key in ENC_ROWS]))
    print()
    print("Decrypt")
    print(table(headers, [[label] + [cell(s, key, "raw_dec") for s in sizes] for label, key in DEC_ROWS]))

    rand = {}
    rows = []
    for seg in sizes:
        per = med[(seg, "rand4k")] / reads * 1e6
        floor = med[(seg, "raw_one")] / reads * 1e6
        rand[human_size(seg)] = {"us_per_read": per, "raw_one_segment_us": floor, "fetched_bytes": seg + TAG_SIZE}
        rows.append(
            [
                human_size(seg),
                f"{per:.1f}",
                f"{floor:.1f}",
                f"{ratio(floor, per):.2f}x",
                f"{human_size(seg)} + {TAG_SIZE} B",
            ]
        )
    results["random_4k_reads"] = rand
    print()
    print(f"Random {human_size(RANDOM_READ)} reads ({reads} per round, reader t=1)")
    print(table(["segment", "us/read", "raw open 1 seg, us", "raw/engine", "fetched per read"], rows))
    for note in notes:
        print(f"note: {note}")
    print(f"(throughput runs took {elapsed:.1f} s)")

    if not args.no_memory:
        mem_sizes = [int(s) * MiB for s in args.mem_sizes.split(",")]
        seg = args.mem_segment * KiB
        with tempfile.TemporaryDirectory(prefix="cmkfs-bench-") as tmp:
            mem = memory_rows(dek, seg, mem_sizes, MiB, tmp)
        results["memory"] = {"segment_size": seg, "read_write_step": MiB, "rows": mem}
        print()
        print(
            f"Peak memory added while streaming (VmHWM - baseline, MiB; {human_size(seg)} segments, 1 MiB writes/reads)"
        )
        labels = list(dict.fromkeys(r["case"] for r in mem))
        rows = []
        for label in labels:
            rows.append([label] + [f"{r['added'] / MiB:.1f}" for r in mem if r["case"] == label])
        print(table(["case"] + [human_size(s) for s in mem_sizes], rows))
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: small data, few rounds (seconds)")
    p.add_argument("--json", metavar="PATH", help="also save the results as JSON")
    p.add_argument("--data", type=int, metavar="MiB", help="plaintext per timed run (default 128, quick 4)")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 7, quick 2)")
    p.add_argument("--reads", type=int, help="random 4 KiB reads per round (default 500, quick 50)")
    p.add_argument("--segments", metavar="KiB,...", help="segment sizes in KiB (default 64,256,1024,4096)")
    p.add_argument(
        "--mem-sizes", metavar="MiB,...", help="file sizes for the memory probe (default 256,1024; quick 8,32)"
    )
    p.add_argument(
        "--mem-segment",
        type=int,
        metavar="KiB",
        default=DEFAULT_SEGMENT_SIZE // KiB,
        help="segment size for the memory probe (default: the library default)",
    )
    p.add_argument("--no-memory", action="store_true", help="skip the memory probe")
    p.add_argument("--no-peers", action="store_true", help="skip peer libraries")
    args = p.parse_args(argv)
    quick = args.quick
    args.data = args.data or (4 if quick else 128)
    args.rounds = args.rounds or (2 if quick else 7)
    args.reads = args.reads or (50 if quick else 500)
    args.mem_sizes = args.mem_sizes or ("8,32" if quick else "256,1024")
    results = run(args)
    if args.json:
        save_json(args.json, results)
        print(f"\nsaved {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
