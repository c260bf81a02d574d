"""``cmkfs mount`` next to ``cmk::file://`` in Python and plain disk, side by side in one run.

The script starts its own mount (``python -m cmkfs mount cmk::file://STORE MNT --foreground``,
with a throwaway vault in a temporary ``CMKFS_HOME``), measures, and always unmounts — at the
end, on an error, on Ctrl-C, SIGTERM or SIGHUP — before it removes its temporary folders.

What it measures (medians over interleaved rounds, spreads and time ratios):

* **sequential write** of a large file in 1 MiB writes: plain disk (Python, ``fsync`` before
  close), ``cmk::file://`` (fsspec, which fsyncs before it publishes), the mount from Python
  (the same code as plain) and ``cp`` of a plain source file into the mount.  A write through
  the mount is timed until the file is published in the store (a reopen through the mount waits
  for it), so it includes the store's fsync and rename.
* **sequential read** of the same files in 1 MiB reads (Python) and with ``cat``.  Before every
  timed read the file that holds the bytes (the plain file, or the store's ciphertext) is
  dropped from the page cache with ``posix_fadvise(POSIX_FADV_DONTNEED)``, so reads start cold;
  the ``disk MiB`` column (``read_bytes`` in ``/proc/PID/io``) shows the disk served them.
* **one column of a Parquet file** (8 float64 columns): DuckDB ``SELECT sum(c0)`` and pyarrow
  ``read_table(columns=["c0"])`` on the plain file, through the mount, and through ``cmk`` in
  Python (DuckDB via ``register_filesystem``).  These files stay in the page cache, so the
  figures are the mount's own cost over a warm local disk: the worst case for its ratio.  Bytes
  read are counted by the kernel (``rchar`` in ``/proc/PID/io``), for this process and for the
  mount process (what it fetched from the store).

Usage::

    python benchmarks/bench_mount.py              # full run: 256 MiB, ~6M-row Parquet file
    python benchmarks/bench_mount.py --quick      # smoke run (seconds)
    python benchmarks/bench_mount.py --json results.json --rounds 9

Where FUSE is missing (no ``/dev/fuse``, no ``fusermount3``, no mfusepy) it says why and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import importlib.metadata
import importlib.util
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks._common import MiB, environment, human_size, median, ratio, save_json, table
from cmkfs.format import MAGIC
from cmkfs.mount.runner import mount_type
from cmkfs.providers.local import LocalVaultProvider

try:
    import duckdb
except ImportError:  # the DuckDB rows are left out, and the run says so
    duckdb = None

CHUNK = 1 * MiB
KEY_NAME = "bench"
KEY = f"local://{KEY_NAME}"
#: Seconds the mount may take to appear.
MOUNT_TIMEOUT = 30.0
#: Seconds each unmount step may take.
STOP_TIMEOUT = 30.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
FUSERMOUNT = shutil.which("fusermount3") or shutil.which("fusermount")


def fuse_missing() -> str | None:
    """Why a mount cannot be made here, or None."""
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse (in a container: --device /dev/fuse --cap-add SYS_ADMIN)"
    if FUSERMOUNT is None:
        return "no fusermount3 (apt-get install fuse3)"
    if importlib.util.find_spec("mfusepy") is None:
        return "no mfusepy (pip install 'cmkfs[mount]')"
    return None


# -- the mount ------------------------------------------------------------------------------------------------------


def _in_mount_table(path: Path) -> bool:
    """Listed in /proc/self/mounts (a mount whose process died is listed too, though stat fails)."""
    return mount_type(str(path)) is not None


@dataclass
class Mount:
    mountpoint: Path
    process: subprocess.Popen
    log: Path

    def bytes_read(self, field: str = "rchar") -> int:
        return proc_io(field, self.process.pid)


@contextlib.contextmanager
def mounted(store: Path, mountpoint: Path, home: Path, log: Path) -> Iterator[Mount]:
    """A foreground ``cmkfs mount`` of ``cmk::file://STORE`` at ``mountpoint``, unmounted on the way out."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, CMKFS_HOME=str(home))
    command = [sys.executable, "-m", "cmkfs", "mount", f"cmk::file://{store}", str(mountpoint), "--foreground"]
    command += ["--key", KEY]
    process: subprocess.Popen | None = None
    try:
        with signals_deferred(), open(log, "wb") as out:
            # A session of its own: a Ctrl-C reaches this script only, which unmounts in order.
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not os.path.ismount(mountpoint):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the mount did not appear (exit {process.poll()}):\n{log.read_text(errors='replace')}"
                )
            time.sleep(0.02)
        yield Mount(mountpoint, process, log)
    finally:
        if process is not None:
            with signals_ignored():
                unmount(mountpoint, process, env)


def unmount(mountpoint: Path, process: subprocess.Popen, env: dict[str, str]) -> None:
    """Unmount and stop the mount process, whatever state they are in: never leave a mount behind."""
    gc.collect()  # file objects of an interrupted read close when collected
    for fd in open_under(mountpoint):
        # Left open by an interrupted call: measuring is over, and the mount cannot go while it is open.
        print(f"closing descriptor {fd}, still open under {mountpoint}", file=sys.stderr)
        os.close(fd)
    if _in_mount_table(mountpoint):
        try:
            done = subprocess.run(
                [sys.executable, "-m", "cmkfs", "unmount", str(mountpoint)],
                capture_output=True,
                text=True,
                env=env,
                timeout=STOP_TIMEOUT,
                check=False,
            )
            why = done.stderr.strip()
        except subprocess.TimeoutExpired:
            why = f"no answer in {STOP_TIMEOUT:.0f} s"
        if _in_mount_table(mountpoint):
            print(f"cmkfs unmount failed: {why}; stopping the mount process", file=sys.stderr)
        else:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(STOP_TIMEOUT)  # unmounted: the mount process exits by itself
    if process.poll() is None:
        # Still starting (stopped early), or busy: on SIGTERM it unmounts once files are closed.
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)
    if _in_mount_table(mountpoint):
        # Only once the mount process is gone: a lazy unmount would drop writes still open.
        subprocess.run([FUSERMOUNT or "fusermount3", "-u", "-z", str(mountpoint)], capture_output=True, check=False)


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """Cleanup that a second Ctrl-C must not cut short."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


_deferred_depth = 0  # inside how many signals_deferred() blocks
_pending: list[int] = []  # the stop signal that came in one


def _on_stop_signal(signum: int, frame: object) -> None:
    """Unwind through the ``finally`` blocks that unmount: at once, or at the end of the outermost
    :func:`signals_deferred` block (a second signal does not wait)."""
    if _deferred_depth and not _pending:
        _pending.append(signum)
        return
    _stop(signum)


def _stop(signum: int) -> NoReturn:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def install_signal_handlers() -> None:
    for sig in STOP_SIGNALS:
        if signal.getsignal(sig) is not signal.SIG_IGN:  # left ignored where the caller ignores it (nohup)
            signal.signal(sig, _on_stop_signal)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """A stop signal raises after the block, not inside it: raised inside pyarrow, DuckDB or fsspec
    callbacks it comes out as their own errors, and between an open and its close it leaves the
    mount busy.  (A signal mask would not do: the signal can go to any thread, and Python then
    runs the handler in this one.)"""
    global _deferred_depth
    _deferred_depth += 1
    try:
        yield
    finally:
        _deferred_depth -= 1
        if _pending and not _deferred_depth:
            _stop(_pending.pop())  # also over an error the signal caused (a killed cp or cat)


def open_under(mountpoint: Path) -> list[int]:
    """This process's descriptors open under ``mountpoint``."""
    found = []
    prefix = f"{mountpoint}/"
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{name}").startswith(prefix):
                found.append(int(name))
    return found


# -- measuring ------------------------------------------------------------------------------------------------------


def proc_io(field: str = "rchar", pid: int | str = "self") -> int:
    """A counter of ``/proc/PID/io`` (all threads): ``rchar`` is what the process read through
    read/pread syscalls, ``read_bytes`` what it had fetched from the block device."""
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/io")


@dataclass
class Case:
    """One variant: ``run`` is timed, ``setup`` (if any) runs just before it, untimed."""

    run: Callable[[], object]
    setup: Callable[[], object] | None = None


def rounds_of(cases: dict[str, Case], rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per run of each case, interleaved as in ``_common.interleaved``, with untimed setups."""
    names = list(cases)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(warmup + rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            case = cases[name]
            with signals_deferred():  # Ctrl-C stops between runs (a second one at once)
                if case.setup is not None:
                    case.setup()
                t0 = time.perf_counter()
                case.run()
                elapsed = time.perf_counter() - t0
            if r >= warmup:
                times[name].append(elapsed)
    return times


def drop_cache(path: Path) -> None:
    """Drop ``path``'s pages from the page cache (clean pages only: files here were fsynced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def wait_published(path: Path) -> None:
    """An open through the mount waits until a file closed there is published in the store."""
    with signals_deferred():  # a stop signal between open and close would leave the mount busy
        os.close(os.open(path, os.O_RDONLY))


def spread(values: list[float], scale: float = 1.0, digits: int = 3) -> str:
    return f"{min(values) * scale:.{digits}f}-{max(values) * scale:.{digits}f}"


def cmk_filesystem(fsync: bool = True):
    return fsspec.filesystem("cmk", target_protocol="file", key=KEY, fsync=fsync, skip_instance_cache=True)


# -- sequential -----------------------------------------------------------------------------------------------------


def bench_sequential(work: Path, store: Path, mount: Mount, size: int, rounds: int) -> dict:
    data = memoryview(os.urandom(size))
    digest = hashlib.sha256(data).hexdigest()
    enc = cmk_filesystem()
    source = work / "plain" / "source.bin"  # what cp copies into the mount (stays in the page cache)
    source.write_bytes(data)
    plain = work / "plain" / "seq.bin"
    enc_path = store / "cmk-seq.bin"  # written through cmk in this process, next to the mount's files
    mnt = mount.mountpoint

    def remove(path: Path) -> Callable[[], None]:
        return lambda: path.unlink(missing_ok=True)  # truncating a big file costs more than writing it

    def write_python(path: Path, publish: bool = False) -> Callable[[], None]:
        def run() -> None:
            with open(path, "wb") as f:
                for i in range(0, size, CHUNK):
                    f.write(data[i : i + CHUNK])
                f.flush()
                os.fsync(f.fileno())  # through the mount a no-op: the store fsyncs when it publishes
            if publish:
                wait_published(path)

        return run

    def write_cmk() -> None:
        with enc.open(str(enc_path), "wb") as f:
            for i in range(0, size, CHUNK):
                f.write(data[i : i + CHUNK])

    def write_cp() -> None:
        subprocess.run(["cp", str(source), str(mnt / "seq-cp.bin")], check=True)
        wait_published(mnt / "seq-cp.bin")

    writes = {
        "plain disk, Python": Case(write_python(plain), remove(plain)),
        "cmk::file://, fsspec": Case(write_cmk, remove(enc_path)),
        "mount, Python": Case(write_python(mnt / "seq-py.bin", publish=True), remove(mnt / "seq-py.bin")),
        "mount, cp": Case(write_cp, remove(mnt / "seq-cp.bin")),
    }
    write_times = rounds_of(writes, rounds)

    # What was written reads back whole (untimed), and the store holds ciphertext only.
    for path in (plain, mnt / "seq-py.bin", mnt / "seq-cp.bin"):
        if file_digest(path) != digest:
            raise RuntimeError(f"{path} does not read back as written")
    with enc.open(str(enc_path), "rb") as f:
        if hashlib.sha256(f.read()).hexdigest() != digest:
            raise RuntimeError("the cmk file does not read back as written")
    for name in ("seq-py.bin", "seq-cp.bin"):
        with open(store / name, "rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                raise RuntimeError(f"the store's {name} is not a cmkfs file")

    def read_python(path: Path) -> Callable[[], None]:
        def run() -> None:
            with open(path, "rb") as f:
                while f.read(CHUNK):
                    pass

        return run

    def read_cmk() -> None:
        with enc.open(str(enc_path), "rb") as f:
            while f.read(CHUNK):
                pass

    def read_cat() -> None:
        subprocess.run(["cat", str(mnt / "seq-cp.bin")], stdout=subprocess.DEVNULL, check=True)

    disk: dict[str, list[int]] = {}

    def cold(name: str, read: Callable[[], None], holder: Path) -> Case:
        """Reads ``holder``'s bytes from the disk: its pages are dropped first, and the bytes the
        block device served (to this process and to the mount process) are counted."""
        disk[name] = []

        def run() -> None:
            before = proc_io("read_bytes") + mount.bytes_read("read_bytes")
            read()
            disk[name].append(proc_io("read_bytes") + mount.bytes_read("read_bytes") - before)

        return Case(run, lambda: drop_cache(holder))

    reads = {
        "plain disk, Python": cold("plain disk, Python", read_python(plain), plain),
        "cmk::file://, fsspec": cold("cmk::file://, fsspec", read_cmk, enc_path),
        "mount, Python": cold("mount, Python", read_python(mnt / "seq-py.bin"), store / "seq-py.bin"),
        "mount, cat": cold("mount, cat", read_cat, store / "seq-cp.bin"),
    }
    read_times = rounds_of(reads, rounds)
    for path in (plain, source, enc_path, mnt / "seq-py.bin", mnt / "seq-cp.bin"):
        path.unlink()
    disk = {name: values[-rounds:] for name, values in disk.items()}  # without the warm-up round
    return {"size": size, "write": write_times, "read": read_times, "read_disk_bytes": disk}


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def sequential_rows(times: dict[str, list[float]], size: int, disk: dict[str, list[int]] | None = None) -> list[list]:
    t_plain = median(times["plain disk, Python"])
    t_cmk = median(times["cmk::file://, fsspec"])
    rows = []
    for name, values in times.items():
        t = median(values)
        row = [name, f"{t:.3f}", spread(values), size / t / 1e9, ratio(t, t_plain), ratio(t, t_cmk)]
        if disk is not None:
            row.append(median(disk[name]) / MiB)
        rows.append(row)
    return rows


# -- parquet --------------------------------------------------------------------------------------------------------


def bench_parquet(work: Path, store: Path, mount: Mount, rows_n: int, group: int, rounds: int) -> dict:
    rng = np.random.default_rng(7)
    columns = 8
    data = pa.table({f"c{i}": rng.random(rows_n) for i in range(columns)})
    expected = float(np.sum(data.column("c0").to_numpy()))
    plain = work / "plain" / "data.parquet"
    pq.write_table(data, plain, row_group_size=group)
    del data
    on_mount = mount.mountpoint / "data.parquet"
    with open(plain, "rb") as src, open(on_mount, "wb") as dst:
        while block := src.read(CHUNK):
            dst.write(block)
    wait_published(on_mount)
    in_store = store / "data.parquet"  # the ciphertext the mount serves; cmk in Python reads the same file
    enc = cmk_filesystem()
    cases: dict[str, Case] = {}
    read_bytes: dict[str, list[int]] = {}
    mount_bytes: dict[str, list[int]] = {}

    def add(name: str, query: Callable[[], float]) -> None:
        """A case that also counts the bytes read by this process and by the mount process."""
        read_bytes[name], mount_bytes[name] = [], []

        def run() -> None:
            before, before_mount = proc_io(), mount.bytes_read()
            result = query()
            read_bytes[name].append(proc_io() - before)
            mount_bytes[name].append(mount.bytes_read() - before_mount)
            if not math.isclose(result, expected, rel_tol=1e-9):
                raise RuntimeError(f"{name}: sum(c0) = {result}, expected {expected}")

        cases[name] = Case(run)

    con = None
    if duckdb is None:
        print("duckdb is not installed (pip install duckdb): no DuckDB rows", file=sys.stderr)
    else:
        con = duckdb.connect()
        with contextlib.suppress(duckdb.Error):
            con.execute("SET enable_external_file_cache = false")  # every query reads its file
        con.register_filesystem(enc)

        def duck(url: str) -> Callable[[], float]:
            sql = f"SELECT sum(c0) FROM read_parquet('{url}')"
            return lambda: float(con.sql(sql).fetchall()[0][0])

        add("duckdb: plain file", duck(str(plain)))
        add("duckdb: mount", duck(str(on_mount)))
        add("duckdb: cmk, register_filesystem", duck(f"cmk://{in_store}"))

    def arrow(path: Path, fs=None) -> Callable[[], float]:
        def query() -> float:
            col = pq.read_table(str(path), columns=["c0"], filesystem=fs).column("c0")
            return float(np.sum(col.to_numpy()))

        return query

    add("pyarrow: plain file", arrow(plain))
    add("pyarrow: mount", arrow(on_mount))
    add("pyarrow: cmk::file://, fsspec", arrow(in_store, enc))
    try:
        times = rounds_of(cases, rounds)
    finally:
        if con is not None:
            con.close()  # an interrupted query may hold files open on the mount: it could not unmount
    info = {
        "rows": rows_n,
        "columns": columns,
        "row_group": group,
        "file_bytes": plain.stat().st_size,
        "store_bytes": in_store.stat().st_size,
    }
    plain.unlink()
    on_mount.unlink()
    return {
        **info,
        "times": times,
        # The warm-up round was counted too: keep the timed rounds' figures only.
        "read_bytes": {name: values[-rounds:] for name, values in read_bytes.items()},
        "mount_read_bytes": {name: values[-rounds:] for name, values in mount_bytes.items()},
    }


def parquet_rows(result: dict) -> list[list]:
    times = result["times"]
    rows = []
    for name, values in times.items():
        engine, _, variant = name.partition(": ")
        t = median(values)
        t_plain = median(times[f"{engine}: plain file"])
        cmk_name = next(n for n in times if n.startswith(f"{engine}: cmk"))
        mounted_read = median(result["mount_read_bytes"][name]) / MiB if variant == "mount" else None
        rows.append(
            [
                name,
                f"{t * 1e3:.1f}",
                spread(values, 1e3, 1),
                ratio(t, t_plain),
                ratio(t, median(times[cmk_name])),
                median(result["read_bytes"][name]) / MiB,
                mounted_read,
            ]
        )
    return rows


# -- main -----------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run in seconds")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds per comparison")
    parser.add_argument("--json", metavar="PATH", help="also save the results as JSON")
    parser.add_argument("--dir", default=None, help="working directory on the disk to measure (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    size = 16 * MiB if args.quick else 256 * MiB
    rows_n, group = (200_000, 25_000) if args.quick else (6_000_000, 500_000)
    rounds = args.rounds or (2 if args.quick else 7)

    why = fuse_missing()
    if why is not None:
        print(f"bench_mount: not measured: {why}")
        return 0

    install_signal_handlers()
    tables: dict[str, list[list]] = {}
    results: dict = {"environment": environment(), "quick": args.quick, "rounds": rounds, "tables": tables}
    work: Path | None = None
    old_home = os.environ.get("CMKFS_HOME")
    try:
        with signals_deferred():  # a stop raises once ``work`` is set, so the finally removes it
            work = Path(tempfile.mkdtemp(dir=args.dir, prefix="cmkfs-bench-mount-"))
        home, store, mountpoint = work / "home", work / "store", work / "mnt"
        for folder in (store, mountpoint, work / "plain"):
            folder.mkdir()
        LocalVaultProvider(home).create(KEY_NAME, protect=False)  # a throwaway vault: never ~/.cmkfs
        os.environ["CMKFS_HOME"] = str(home)
        with mounted(store, mountpoint, home, work / "mount.log") as mount:
            seq = bench_sequential(work, store, mount, size, rounds)
            results["sequential"] = seq
            print(
                f"\nSequential write, {human_size(size)} in 1 MiB writes, {rounds} rounds; time ratios"
                " (plain and cmk fsync before close, the mount is timed until published: its store fsyncs)"
            )
            head = ["case", "median s", "min-max s", "GB/s", "x plain", "x cmk"]
            tables["write"] = sequential_rows(seq["write"], size)
            print(table(head, tables["write"]), flush=True)
            print(
                f"\nSequential read, {human_size(size)} in 1 MiB reads, {rounds} rounds; time ratios"
                " (the file that holds the bytes is dropped from the page cache before each read)"
            )
            tables["read"] = sequential_rows(seq["read"], size, seq["read_disk_bytes"])
            print(table([*head, "disk MiB"], tables["read"]), flush=True)

            par = bench_parquet(work, store, mount, rows_n, group, rounds)
            results["parquet"] = par
            print(
                f"\nOne column of {par['columns']} (sum(c0)), Parquet {rows_n:,} rows, {group:,}-row groups,"
                f" {par['file_bytes'] / MiB:.0f} MiB, {rounds} rounds; time ratios (page cache warm)"
            )
            tables["parquet"] = parquet_rows(par)
            head = ["case", "median ms", "min-max ms", "x plain", "x cmk", "read MiB", "mount read MiB"]
            print(table(head, tables["parquet"]), flush=True)
            if mount.process.poll() is not None:
                raise RuntimeError(f"the mount process died:\n{mount.log.read_text(errors='replace')}")
        results["environment"].update(versions())
        if args.json:
            save_json(args.json, results)
    finally:
        with signals_ignored():
            if old_home is None:
                os.environ.pop("CMKFS_HOME", None)
            else:
                os.environ["CMKFS_HOME"] = old_home
            if work is not None and _in_mount_table(work / "mnt"):
                print(f"bench_mount: {work / 'mnt'} is still mounted: leaving {work} in place", file=sys.stderr)
            elif work is not None:
                shutil.rmtree(work, ignore_errors=True)
    return 0


def versions() -> dict[str, str]:
    found = {}
    for name in ("pyarrow", "duckdb", "fsspec", "mfusepy"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    return found


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("bench_mount: interrupted", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
