"""``cmkfs mount`` against the kernel's FUSE: real mounts in temporary directories.

Each mount is a ``python -m cmkfs mount ... --foreground`` process (as a job would start it),
and every mountpoint is unmounted in a fixture finalizer whatever the test did, lazily as a
last resort.  Most tests share one mount (each in its own folder); those that kill, revoke or
unmount get their own.  Skipped only where FUSE itself is missing (/dev/fuse, fusermount).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import fsspec
import pytest

from cmkfs.format import MAGIC
from cmkfs.mount import ERRNO_TABLE, MountOperations, errno_for
from cmkfs.mount.operations import killed_by_signal
from cmkfs.mount.runner import FSTYPE, fuse_options, mount_type, open_log, refuse_shared_mmap
from cmkfs.policy import load_policy
from cmkfs.providers.local import LocalVaultProvider

FUSERMOUNT = shutil.which("fusermount3") or shutil.which("fusermount")
_NO_FUSE = (
    "needs /dev/fuse"
    if not os.path.exists("/dev/fuse")
    else "needs fusermount3 (apt-get install fuse3)"
    if FUSERMOUNT is None
    else None
)
needs_fuse = pytest.mark.skipif(_NO_FUSE is not None, reason=_NO_FUSE or "")

pytestmark = pytest.mark.timeout(120)

CMKFS = [sys.executable, "-m", "cmkfs"]
MOUNT_TIMEOUT = 20.0
SEGMENT = 262144  # the default segment size
KEY = "local://tenant"


# -- mounts ------------------------------------------------------------------------------------------------------


def _mounted(path: Path) -> bool:
    """In the mount table (a mount whose process died is there too, though stat fails)."""
    return mount_type(str(path)) is not None


def _cleanup(mountpoint: Path, process: subprocess.Popen | None) -> None:
    """Unmount and stop, whatever state things are in: never leave a mount behind."""
    if _mounted(mountpoint):
        subprocess.run([FUSERMOUNT, "-u", str(mountpoint)], capture_output=True, timeout=30)
    if process is not None and process.poll() is None:
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    if _mounted(mountpoint):
        subprocess.run([FUSERMOUNT, "-u", "-z", str(mountpoint)], capture_output=True, timeout=30)


@dataclass
class Mount:
    """A running foreground mount: its mountpoint, process, log and local store (if any)."""

    mountpoint: Path
    process: subprocess.Popen
    log: Path
    store: Path | None
    home: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def cmk(self):
        """A cmk filesystem on the store, as another process with the same vault would see it."""
        return fsspec.filesystem("cmk", target_protocol="file", skip_instance_cache=True, fsync=False)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        self.process.send_signal(sig)
        code = self.process.wait(timeout)
        assert not _mounted(self.mountpoint), self.output()
        return code


def start_mount(mountpoint: Path, log: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """``python -m cmkfs mount ARGS MOUNTPOINT --foreground``, returned once the mountpoint is mounted."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [*CMKFS, "mount", *args, str(mountpoint), "--foreground"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    deadline = time.monotonic() + MOUNT_TIMEOUT
    while not os.path.ismount(mountpoint):
        if process.poll() is not None or time.monotonic() > deadline:
            _cleanup(mountpoint, process)
            pytest.fail(f"the mount did not appear (exit {process.poll()}):\n{log.read_text(errors='replace')}")
        time.sleep(0.02)
    return process


def make_home(home: Path) -> None:
    """An embedded vault with the tenant key as the default."""
    LocalVaultProvider(home).create("tenant")
    policy = load_policy(home)
    policy.default_key = KEY
    policy.save()


@contextlib.contextmanager
def mounted(tmp: Path, home: Path, *options: str, target: str | None = None, store: bool = True):
    """A mount of its own for one test (a local store under ``tmp`` unless ``target`` is given)."""
    store_dir = tmp / "store" if store and target is None else None
    if store_dir is not None:
        store_dir.mkdir(parents=True, exist_ok=True)
    mountpoint = tmp / "mnt"
    env = dict(os.environ, CMKFS_HOME=str(home))
    process = start_mount(mountpoint, tmp / "mount.log", target or str(store_dir), *options, env=env)
    try:
        yield Mount(mountpoint, process, tmp / "mount.log", store_dir, home)
    finally:
        _cleanup(mountpoint, process)


@pytest.fixture(scope="module")
def shared_mount(tmp_path_factory):
    """One mount for the tests that only read and write through it (each in its own folder)."""
    if _NO_FUSE is not None:
        pytest.skip(_NO_FUSE)
    tmp = tmp_path_factory.mktemp("shared-mount")
    home = tmp / "home"
    make_home(home)
    with mounted(tmp, home) as mount:
        assert mount_type(str(mount.mountpoint)) == FSTYPE
        yield mount
        assert mount.process.poll() is None, mount.output()
    # Whatever the tests wrote through the mount (cp, shells, pyarrow, python), the store holds ciphertext only.
    _assert_ciphertext_only(tmp / "store")


@pytest.fixture
def own(tmp_path, isolated_cmkfs_home):
    """``own(*options, target=None)``: a mount of this test's own, with this test's vault."""
    make_home(isolated_cmkfs_home)
    with contextlib.ExitStack() as stack:

        def start(*options: str, target: str | None = None) -> Mount:
            return stack.enter_context(mounted(tmp_path, isolated_cmkfs_home, *options, target=target))

        yield start


@dataclass
class Place:
    """A test's folder in the shared mount, and the same folder in the store."""

    mount: Mount
    dir: Path
    store: Path

    def cmk(self):
        return self.mount.cmk()


@pytest.fixture
def place(shared_mount, request, monkeypatch):
    monkeypatch.setenv("CMKFS_HOME", str(shared_mount.home))
    name = request.node.name.replace("[", "-").replace("]", "")
    folder = shared_mount.mountpoint / name
    folder.mkdir()
    assert shared_mount.store is not None
    return Place(shared_mount, folder, shared_mount.store / name)


def _errno(call, *args) -> int:
    try:
        result = call(*args)
    except OSError as exc:
        return exc.errno
    if isinstance(result, int) and call is os.open:
        os.close(result)
    return 0


def _assert_ciphertext_only(store: Path, *plaintexts: bytes) -> int:
    """Every file under ``store`` is a cmkfs file and holds none of ``plaintexts``; returns the count."""
    count = 0
    for path in store.rglob("*"):
        if path.is_file():
            raw = path.read_bytes()
            assert raw.startswith(MAGIC), path
            for text in plaintexts:
                assert text not in raw, path
            count += 1
    return count


# -- without the kernel ------------------------------------------------------------------------------------------


def test_errno_table():
    from cmkfs.errors import (
        ConfigurationError,
        FormatError,
        IntegrityError,
        KeyNotFoundError,
        KeyRevokedError,
        UnsupportedOperationError,
        VaultUnavailableError,
    )

    assert errno_for(KeyRevokedError("disabled")) == errno.EACCES
    assert errno_for(KeyNotFoundError("gone")) == errno.EACCES
    assert errno_for(ConfigurationError("no key configured")) == errno.EACCES
    assert errno_for(IntegrityError()) == errno.EIO
    assert errno_for(FormatError("not cmkfs")) == errno.EIO
    assert errno_for(VaultUnavailableError("down")) == errno.EIO
    assert errno_for(UnsupportedOperationError("append")) == errno.EOPNOTSUPP
    assert errno_for(FileNotFoundError("x")) == errno.ENOENT
    assert errno_for(OSError(errno.ENOSPC, "full")) == errno.ENOSPC  # a storage error keeps its errno
    assert errno_for(RuntimeError("a bug")) == errno.EIO
    assert all(code > 0 for _, code in ERRNO_TABLE)


class _FileInfo:
    def __init__(self, flags: int) -> None:
        self.flags, self.fh, self.direct_io, self.keep_cache = flags, 0, 0, 1


def test_operations_over_a_cmk_memory_store(memfs, isolated_cmkfs_home):
    """The operations class without FUSE: direct_io on every handle, a refused write dooms the file."""
    LocalVaultProvider(isolated_cmkfs_home).create("tenant")
    cmk = fsspec.filesystem("cmk", target_protocol="memory", key=KEY, skip_instance_cache=True)
    cmk.pipe_file("/data/old.txt", b"version 1")
    ops = MountOperations(cmk, "/data")
    assert ops.getattr("/old.txt")["st_size"] == 9
    fi = _FileInfo(os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    ops.create("/new.txt", 0o644, fi)
    assert fi.direct_io == 1 and fi.keep_cache == 0
    assert ops.write(None, b"hello ", 0, fi) == 6
    assert ops.getattr("/new.txt")["st_size"] == 6  # being written: the size so far
    ops.write(None, b"world", 6, fi)
    ops.flush(None, fi)
    ops.release(None, fi)
    assert cmk.cat_file("/data/new.txt") == b"hello world"

    fi = _FileInfo(os.O_WRONLY | os.O_TRUNC)
    ops.open("/old.txt", fi)
    ops.write(None, b"version 2", 0, fi)
    with pytest.raises(OSError) as refused:
        ops.write(None, b"patch", 0, fi)
    assert refused.value.errno == errno.EOPNOTSUPP
    with pytest.raises(OSError) as closing:
        ops.flush(None, fi)
    assert closing.value.errno == errno.EIO
    ops.release(None, fi)
    assert cmk.cat_file("/data/old.txt") == b"version 1"  # never published half-patched

    with pytest.raises(OSError) as appending:
        ops.open("/old.txt", _FileInfo(os.O_WRONLY | os.O_APPEND))
    assert appending.value.errno == errno.EOPNOTSUPP
    fi = _FileInfo(os.O_RDONLY)
    ops.open("/old.txt", fi)
    assert fi.direct_io == 1
    assert ops.read(None, 4, 3, fi) == b"sion"
    ops.release(None, fi)
    names = [e if isinstance(e, str) else e[0] for e in ops.readdir("/", 0)]
    assert sorted(names) == [".", "..", "new.txt", "old.txt"]
    assert ops.open_files == 0


def test_mount_options_bound_the_kernel_caches():
    options = fuse_options(read_only=False)
    assert options["direct_io"] is True
    assert options["attr_timeout"] <= 1 and options["entry_timeout"] <= 1 and options["negative_timeout"] == 0
    assert options["foreground"] is True and options["hard_remove"] is True
    assert fuse_options(read_only=True)["ro"] is True


def test_mfusepy_still_has_what_the_rename_override_replaces():
    """runner._fuse_class overrides mfusepy's rename_fuse_3 to pass renameat2 flags on: fail if mfusepy moves."""
    import inspect

    mfusepy = pytest.importorskip("mfusepy")
    if mfusepy.fuse_version_major != 3:
        pytest.skip("libfuse 2 has no rename flags")
    assert list(inspect.signature(mfusepy.FUSE.rename_fuse_3).parameters) == ["self", "old", "new", "flags"]
    assert "flags" not in inspect.getsource(mfusepy.FUSE.rename_fuse_3).split(":", 1)[1].split("return", 1)[1]
    # The init override (refuse_shared_mmap) and the caller's pid (a killed program's close).
    assert list(inspect.signature(mfusepy.FUSE.init_fuse_3).parameters) == ["self", "conn", "config"]
    assert "want" in dict(mfusepy.fuse_conn_info._fields_)
    assert callable(mfusepy.fuse_get_context)


def test_the_mount_never_asks_for_shared_mmap_of_direct_io_files():
    class Conn:
        want = 0xFFFFFFFF

    conn = Conn()
    refuse_shared_mmap(conn, (3, 16))
    assert conn.want == 0xFFFFFFFF & ~(1 << 28)  # FUSE_CAP_DIRECT_IO_ALLOW_MMAP
    older = Conn()
    refuse_shared_mmap(older, (3, 14))  # bit 28 means nothing there: left alone
    assert older.want == 0xFFFFFFFF


def test_the_mount_process_is_not_dumpable():
    script = (
        "import ctypes\n"
        "from cmkfs.mount.runner import harden_process\n"
        "harden_process()\n"
        "print(ctypes.CDLL(None).prctl(3, 0, 0, 0, 0))\n"  # PR_GET_DUMPABLE
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "0"


def test_killed_by_signal_says_no_when_it_cannot_tell():
    assert killed_by_signal(0) is False
    assert killed_by_signal(os.getpid()) is False  # alive, not exiting
    assert killed_by_signal(2**22 + 12345) is False  # no such task


def test_rename_takes_names_literally_on_an_object_store(memfs, isolated_cmkfs_home):
    """fsspec's mv expands globs: 'd*' would move d1 and d2 too, 'report [1].csv' the file 'report 1.csv'."""
    LocalVaultProvider(isolated_cmkfs_home).create("tenant")
    cmk = fsspec.filesystem("cmk", target_protocol="memory", key=KEY, skip_instance_cache=True)
    names = ["d*", "d1", "d2", "report [1].csv", "report 1.csv", "q?", "qa"]
    for name in names:
        cmk.pipe_file(f"/data/{name}", name.encode())
    ops = MountOperations(cmk, "/data")
    ops.rename("/d*", "/out")
    ops.rename("/report [1].csv", "/final.csv")
    ops.rename("/q?", "/r")
    listed = sorted(e if isinstance(e, str) else e[0] for e in ops.readdir("/", 0))
    assert listed == sorted([".", "..", "out", "d1", "d2", "final.csv", "report 1.csv", "r", "qa"])
    assert cmk.cat_file("/data/out") == b"d*"
    assert cmk.cat_file("/data/final.csv") == b"report [1].csv"
    assert cmk.cat_file("/data/r") == b"q?"
    assert cmk.cat_file("/data/d1") == b"d1" and cmk.cat_file("/data/report 1.csv") == b"report 1.csv"
    assert cmk.isfile("/data/final.csv")  # a file, not a folder of moved files


def test_a_flush_without_a_release_is_waited_for_once(memfs, isolated_cmkfs_home, monkeypatch):
    """A duplicate descriptor closed while the file stays open: the next listing waits for a release
    that is not coming, the ones after it do not."""
    from cmkfs.mount import operations

    monkeypatch.setattr(operations, "SETTLE_QUEUED", 0.2)
    LocalVaultProvider(isolated_cmkfs_home).create("tenant")
    cmk = fsspec.filesystem("cmk", target_protocol="memory", key=KEY, skip_instance_cache=True)
    cmk.makedirs("/data", exist_ok=True)
    ops = MountOperations(cmk, "/data")
    waits = 0
    changed = ops._changed
    original_wait = changed.wait

    def counting_wait(timeout=None):
        nonlocal waits
        waits += 1
        return original_wait(timeout)

    changed.wait = counting_wait  # type: ignore[method-assign]
    fi = _FileInfo(os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    ops.create("/open.txt", 0o644, fi)
    ops.write(None, b"still open", 0, fi)
    ops.flush(None, fi)  # close(2) of a duplicate: no release follows
    ops.readdir("/", 0)
    first = waits
    assert first > 0  # the first listing gives the release its chance
    for _ in range(3):
        ops.readdir("/", 0)
        ops.getattr("/open.txt")
    assert waits == first
    ops.write(None, b", and written again", 10, fi)
    ops.flush(None, fi)  # a new close: waited for once more
    ops.readdir("/", 0)
    assert waits > first
    ops.release(None, fi)
    assert cmk.cat_file("/data/open.txt") == b"still open, and written again"


def test_storage_options_from_a_file_or_stdin_and_a_warning_for_secrets_in_argv(tmp_path):
    from click import BadParameter

    from cmkfs.cli.options import parse_storage_options, secret_option_names

    options = {"abfs": {"account_name": "lake", "account_key": "c2VjcmV0"}}
    (tmp_path / "options.json").write_text(json.dumps(options))
    assert parse_storage_options(f"@{tmp_path / 'options.json'}") == options
    with pytest.raises(BadParameter, match="No such file"):
        parse_storage_options(f"@{tmp_path / 'missing.json'}")
    assert secret_option_names(options) == ["abfs.account_key"]
    assert secret_option_names({"cmk": {"key": "local://tenant"}, "s3": {"client_kwargs": {"Token": "x"}}}) == [
        "s3.client_kwargs.Token"
    ]
    assert secret_option_names({"abfs": {"account_name": "lake"}}) == []
    missing = str(tmp_path / "missing")
    inline = subprocess.run(
        [*CMKFS, "mount", "--storage-options", json.dumps(options), str(tmp_path), missing],
        capture_output=True,
        text=True,
    )
    assert inline.returncode == 1 and "existing directory" in inline.stderr
    assert "warning" in inline.stderr and "abfs.account_key" in inline.stderr and "c2VjcmV0" not in inline.stderr
    for source, stdin in ((f"@{tmp_path / 'options.json'}", None), ("-", json.dumps(options))):
        done = subprocess.run(
            [*CMKFS, "mount", "--storage-options", source, str(tmp_path), missing],
            capture_output=True,
            text=True,
            input=stdin,
        )
        assert done.returncode == 1 and "existing directory" in done.stderr
        assert "warning" not in done.stderr


def test_the_log_file_is_private_and_never_a_planted_symlink(tmp_path):
    old_umask = os.umask(0o022)
    try:
        os.close(open_log(str(tmp_path / "new.log")))
        assert (tmp_path / "new.log").stat().st_mode & 0o777 == 0o600
        (tmp_path / "old.log").write_text("earlier\n")
        (tmp_path / "old.log").chmod(0o644)
        fd = open_log(str(tmp_path / "old.log"))
        os.write(fd, b"appended\n")
        os.close(fd)
        assert (tmp_path / "old.log").stat().st_mode & 0o777 == 0o600
        assert (tmp_path / "old.log").read_text() == "earlier\nappended\n"
    finally:
        os.umask(old_umask)
    (tmp_path / "link.log").symlink_to(tmp_path / "victim")
    with pytest.raises(OSError) as planted:
        open_log(str(tmp_path / "link.log"))
    assert planted.value.errno == errno.ELOOP
    assert not (tmp_path / "victim").exists()


def test_missing_binding_or_libfuse_says_what_to_install(tmp_path, monkeypatch):
    from cmkfs.mount import load_fuse

    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "mfusepy", None)
        with pytest.raises(ImportError, match=r"pip install 'cmkfs\[mount\]'"):
            load_fuse()
    pytest.importorskip("mfusepy", reason="the rest is about a missing libfuse")
    (tmp_path / "mnt").mkdir()
    env = dict(os.environ, FUSE_LIBRARY_PATH=str(tmp_path / "no-libfuse.so"))
    done = subprocess.run(
        [*CMKFS, "mount", str(tmp_path), str(tmp_path / "mnt"), "--foreground"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 7 and "apt-get install fuse3" in done.stderr, done.stderr


def test_usage_errors(tmp_path):
    done = subprocess.run([*CMKFS, "mount", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 2 and "MOUNTPOINT" in done.stderr
    done = subprocess.run([*CMKFS, "unmount", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 3 and "not mounted" in done.stderr
    done = subprocess.run([*CMKFS, "mount", str(tmp_path), str(tmp_path / "missing")], capture_output=True, text=True)
    assert done.returncode == 1 and "existing directory" in done.stderr


# -- reading and writing through the shared mount ------------------------------------------------------------------


@needs_fuse
def test_cp_in_cat_out_and_only_ciphertext_in_the_store(place, tmp_path):
    marker = b"PLAINTEXT-MARKER-" * 4
    data = marker + os.urandom(3 * SEGMENT + 1234) + marker
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    subprocess.run(["cp", str(src), str(place.dir / "a.bin")], check=True)
    # Read back by a new process right after cp closed it: published on release, seen at once.
    assert subprocess.run(["cat", str(place.dir / "a.bin")], capture_output=True, check=True).stdout == data
    assert os.stat(place.dir / "a.bin").st_size == len(data)
    assert "a.bin" in subprocess.run(["ls", str(place.dir)], capture_output=True, text=True, check=True).stdout
    # A shell writes through duplicated descriptors: each close(2) flushes, the last one publishes.
    subprocess.run(["sh", "-c", f"(echo one; echo two; cat {src}) > {place.dir / 'sh.txt'}"], check=True)
    assert (place.dir / "sh.txt").read_bytes() == b"one\ntwo\n" + data
    # Overwriting is a new version, published at close.
    subprocess.run(["sh", "-c", f"echo replaced > {place.dir / 'a.bin'}"], check=True)
    assert (place.dir / "a.bin").read_bytes() == b"replaced\n"
    with open(place.dir / "py.txt", "w") as f:
        f.write("written by python " + marker.decode())
    # The kernel answers close(2) before the mount has published (release is asynchronous);
    # an open through the mount waits for it, a reader of the store may look a moment early.
    assert (place.dir / "py.txt").read_text() == "written by python " + marker.decode()

    stored = place.store / "a.bin"
    assert stored.stat().st_size > len(b"replaced\n")
    assert place.cmk().cat_file(str(place.store / "sh.txt")) == b"one\ntwo\n" + data
    assert _assert_ciphertext_only(place.store, marker, b"replaced", b"one\ntwo") == 3


@needs_fuse
def test_stat_shows_plaintext_sizes(place):
    cmk = place.cmk()
    sizes = [0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 2 * SEGMENT + 500]
    for n in sizes:
        cmk.pipe_file(str(place.store / f"f{n}"), os.urandom(n))
    for n in sizes:
        assert os.stat(place.dir / f"f{n}").st_size == n
        assert (place.store / f"f{n}").stat().st_size > n
    listed = {e.name: e.stat().st_size for e in os.scandir(place.dir)}
    assert listed == {f"f{n}": n for n in sizes}


@needs_fuse
def test_ls_of_a_directory_with_thousands_of_files(place):
    cmk = place.cmk()
    count = 3000
    cmk.makedirs(str(place.store / "big"), exist_ok=True)
    for i in range(count):
        cmk.pipe_file(str(place.store / "big" / f"part-{i:05d}.csv"), b"%d\n" % i)
    start = time.monotonic()
    listing = subprocess.run(["ls", "-l", str(place.dir / "big")], capture_output=True, text=True, check=True)
    took = time.monotonic() - start
    lines = [line for line in listing.stdout.splitlines() if line.startswith("-")]
    assert len(lines) == count
    assert all(line.split()[4] == str(len(b"%d\n" % int(line.rsplit("-", 1)[1][:5]))) for line in lines)
    assert sorted(os.listdir(place.dir / "big")) == [f"part-{i:05d}.csv" for i in range(count)]
    assert took < 30, f"ls -l of {count} files took {took:.1f} s"


def _rchar(pid: int) -> int:
    with open(f"/proc/{pid}/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


@needs_fuse
def test_parquet_through_the_mount_with_pyarrow_and_duckdb(place):
    duckdb = pytest.importorskip("duckdb")
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = 400_000
    rng = random.Random(7)
    table = pa.table(
        {
            "id": pa.array(range(rows), pa.int64()),
            "amount": pa.array([rng.random() for _ in range(rows)], pa.float64()),
            "noise": pa.array([rng.getrandbits(63) for _ in range(rows)], pa.int64()),
            "label": pa.array([f"row-{i % 977}" for i in range(rows)]),
        }
    )
    path = place.dir / "x.parquet"
    pq.write_table(table, path, row_group_size=50_000)  # written by pyarrow, through the mount
    size = os.stat(path).st_size
    assert size > 4 * 1024 * 1024

    pid = place.mount.process.pid
    before = _rchar(pid)
    meta = pq.read_metadata(path)
    fetched = _rchar(pid) - before
    assert meta.num_rows == rows
    assert fetched < size / 4, f"a footer read fetched {fetched} of {size} bytes"

    assert pq.read_table(path, columns=["amount"]).column("amount").equals(table.column("amount"))
    with duckdb.connect() as con:
        total = con.sql(f"SELECT sum(id), count(*) FROM read_parquet('{path}')").fetchall()[0]
    assert total == (rows * (rows - 1) // 2, rows)
    assert (place.store / "x.parquet").read_bytes()[: len(MAGIC)] == MAGIC


@needs_fuse
def test_rename_unlink_mkdir_rmdir(place):
    d = place.dir
    os.mkdir(d / "sub")
    assert (place.store / "sub").is_dir()
    (d / "sub" / "f.txt").write_bytes(b"content")
    os.rename(d / "sub" / "f.txt", d / "sub" / "g.txt")
    assert sorted(os.listdir(d / "sub")) == ["g.txt"]
    assert sorted(p.name for p in (place.store / "sub").iterdir()) == ["g.txt"]
    assert (d / "sub" / "g.txt").read_bytes() == b"content"
    (d / "other.txt").write_bytes(b"other")
    os.replace(d / "other.txt", d / "sub" / "g.txt")  # over an existing file
    assert (d / "sub" / "g.txt").read_bytes() == b"other"
    assert _errno(os.rmdir, d / "sub") == errno.ENOTEMPTY
    assert _errno(os.rename, d / "sub", d / "moved") == errno.EXDEV  # mv and shutil.move copy instead
    (d / "keep.txt").write_bytes(b"keep")
    libc = ctypes.CDLL(None, use_errno=True)
    if hasattr(libc, "renameat2"):
        AT_FDCWD, RENAME_NOREPLACE = -100, 1
        result = libc.renameat2(AT_FDCWD, bytes(d / "sub" / "g.txt"), AT_FDCWD, bytes(d / "keep.txt"), RENAME_NOREPLACE)
        assert result == -1 and ctypes.get_errno() == errno.EEXIST
        assert (d / "keep.txt").read_bytes() == b"keep"
    os.unlink(d / "sub" / "g.txt")
    assert not (place.store / "sub" / "g.txt").exists()
    os.rmdir(d / "sub")
    assert not (place.store / "sub").exists() and not (d / "sub").exists()
    assert _errno(os.symlink, "keep.txt", d / "link") == errno.EOPNOTSUPP


@needs_fuse
def test_a_cmk_writer_on_top_of_the_mount(place):
    """A temp file and a rename (how cmk itself publishes, and what cmkfs drill --target MOUNTPOINT does)."""
    outer = fsspec.filesystem("cmk", target_protocol="file", skip_instance_cache=True)
    outer.pipe_file(str(place.dir / "double.bin"), b"encrypted twice")
    assert outer.cat_file(str(place.dir / "double.bin")) == b"encrypted twice"
    assert os.listdir(place.dir) == ["double.bin"]
    assert (place.dir / "double.bin").read_bytes().startswith(MAGIC)  # the outer layer's ciphertext


@needs_fuse
def test_append_and_partial_overwrite_fail_and_leave_the_file(place):
    path = place.dir / "f.txt"
    path.write_bytes(b"version 1")
    assert _errno(open, path, "ab") == errno.EOPNOTSUPP
    assert _errno(open, path, "r+b") == errno.EOPNOTSUPP
    assert _errno(os.open, path, os.O_WRONLY) == errno.EOPNOTSUPP
    assert subprocess.run(["sh", "-c", f"echo more >> {path}"], capture_output=True).returncode != 0
    assert _errno(os.truncate, path, 3) == errno.EOPNOTSUPP
    # A rewrite that writes anywhere but at the end is refused, and not published.
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"version 2, longer")
    assert _errno(os.pwrite, fd, b"X", 0) == errno.EOPNOTSUPP
    assert _errno(os.write, fd, b" more") == errno.EIO  # the handle is doomed
    assert _errno(os.close, fd) == errno.EIO  # close(2) says so too
    assert path.read_bytes() == b"version 1"
    assert os.stat(path).st_size == 9
    os.truncate(path, 0)  # to 0: a new, empty version
    assert path.read_bytes() == b""
    assert place.cmk().cat_file(str(place.store / "f.txt")) == b""
    # The refusal is logged, with a name that could drive a terminal shown escaped.
    hostile = place.dir / "red\x1b[31m.txt"
    hostile.write_bytes(b"x")
    assert _errno(open, hostile, "ab") == errno.EOPNOTSUPP
    deadline = time.monotonic() + 5
    while "red\\x1b[31m.txt: opened for writing without O_TRUNC" not in place.mount.output():
        assert time.monotonic() < deadline, place.mount.output()
        time.sleep(0.05)
    assert "\x1b" not in place.mount.output()


@needs_fuse
def test_a_program_killed_mid_write_leaves_the_previous_version(place):
    """The kernel closes a killed program's files like any close; the mount tells that close from
    others by the state of the closing task (PF_SIGNALED), and discards."""
    path = place.dir / "partial.bin"
    path.write_bytes(b"old version")
    killed = textwrap.dedent(
        f"""
        import os, signal
        fd = os.open({str(path)!r}, os.O_WRONLY | os.O_TRUNC)
        os.write(fd, b"x" * 100000)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    assert subprocess.run([sys.executable, "-c", killed]).returncode == -signal.SIGKILL
    assert path.read_bytes() == b"old version"
    assert place.cmk().cat_file(str(place.store / "partial.bin")) == b"old version"
    assert "partial.bin: closed by a program killed by a signal" in place.mount.output()
    # A program that ends with exit(n) (here _exit, with a second thread alive) publishes.
    exits = textwrap.dedent(
        f"""
        import os, threading, time
        fd = os.open({str(path)!r}, os.O_WRONLY | os.O_TRUNC)
        os.write(fd, b"y" * 100000)
        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
        os._exit(0)
        """
    )
    assert subprocess.run([sys.executable, "-c", exits]).returncode == 0
    assert path.read_bytes() == b"y" * 100000


@needs_fuse
def test_rename_over_a_file_open_for_writing_orphans_the_writer(place):
    """As on ext4: the open file loses its name, and its close does not bring the old content back."""
    target, source = place.dir / "x", place.dir / "y"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        os.write(fd, b"OLD\n")
        source.write_bytes(b"NEW\n")
        os.rename(source, target)
        assert target.read_bytes() == b"NEW\n"
        os.write(fd, b"more")  # still writable: an orphaned file
    finally:
        os.close(fd)
    assert target.read_bytes() == b"NEW\n"
    assert sorted(os.listdir(place.dir)) == ["x"]
    # RENAME_NOREPLACE sees a file being written, even before it is in the store.
    fd = os.open(place.dir / "new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if hasattr(libc, "renameat2"):
            AT_FDCWD, RENAME_NOREPLACE = -100, 1
            assert libc.renameat2(AT_FDCWD, bytes(target), AT_FDCWD, bytes(place.dir / "new"), RENAME_NOREPLACE) == -1
            assert ctypes.get_errno() == errno.EEXIST
    finally:
        os.close(fd)
    assert target.read_bytes() == b"NEW\n"


@needs_fuse
def test_rename_takes_names_literally_on_local_disk(place):
    names = ["d*", "d1", "report [1].csv", "report 1.csv", "q?", "qa"]
    for name in names:
        (place.dir / name).write_bytes(name.encode())
    os.rename(place.dir / "d*", place.dir / "out")
    os.rename(place.dir / "report [1].csv", place.dir / "final.csv")
    os.rename(place.dir / "q?", place.dir / "r")
    assert sorted(os.listdir(place.dir)) == sorted(["out", "d1", "final.csv", "report 1.csv", "r", "qa"])
    assert (place.dir / "final.csv").read_bytes() == b"report [1].csv"
    assert (place.dir / "report 1.csv").read_bytes() == b"report 1.csv"
    assert (place.dir / "out").read_bytes() == b"d*" and (place.dir / "r").read_bytes() == b"q?"


@needs_fuse
def test_a_closed_duplicate_descriptor_stalls_the_folder_once(place):
    """The release of a file still open elsewhere is not coming: waited for once, not at every listing."""
    (place.dir / "other.txt").write_bytes(b"x")
    fd = os.open(place.dir / "open.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        os.write(fd, b"still open")
        os.close(os.dup(fd))  # a flush, no release
        os.listdir(place.dir)  # may wait (at most SETTLE_QUEUED) for that release
        start = time.monotonic()
        for _ in range(4):
            assert sorted(os.listdir(place.dir)) == ["open.txt", "other.txt"]
            assert (place.dir / "other.txt").read_bytes() == b"x"
        took = time.monotonic() - start
    finally:
        os.close(fd)
    assert took < 2.0, f"4 listings took {took:.1f} s"  # 1 s each without the fix
    assert (place.dir / "open.txt").read_bytes() == b"still open"


@needs_fuse
def test_names_of_in_progress_temp_files_are_refused(place):
    """Such a file would be hidden from listings and removed by `cmkfs clean`.  Only the way a cmk
    writer makes its own temp file (a new file, O_EXCL) passes (test_a_cmk_writer_on_top_of_the_mount)."""
    name = place.dir / ".notes.cmkfs-partial-0123456789abcdef"
    assert _errno(open, name, "wb") == errno.EINVAL
    assert subprocess.run(["sh", "-c", f"echo hi > '{name}'"], capture_output=True).returncode != 0
    (place.dir / "notes").write_bytes(b"notes")
    assert _errno(os.rename, place.dir / "notes", name) == errno.EINVAL
    assert _errno(os.mkdir, place.dir / ".d.cmkfs-partial-0123456789abcdef") == errno.EINVAL
    assert sorted(os.listdir(place.dir)) == ["notes"]
    assert sorted(p.name for p in place.store.iterdir()) == ["notes"]


@needs_fuse
def test_a_second_writer_without_o_trunc_is_refused(place):
    path = place.dir / "shared.txt"
    first = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        # POSIX would have both write one file; here each writer streams its own and the last
        # close wins, so the second is refused (once the first has written, it is EOPNOTSUPP anyway).
        assert _errno(os.open, path, os.O_WRONLY) == errno.EBUSY
        assert _errno(os.open, path, os.O_WRONLY | os.O_CREAT) == errno.EBUSY
        assert _errno(os.open, path, os.O_WRONLY | os.O_CREAT | os.O_EXCL) == errno.EEXIST
        os.write(first, b"first")
        assert _errno(os.open, path, os.O_WRONLY) == errno.EOPNOTSUPP
    finally:
        os.close(first)
    assert path.read_bytes() == b"first"


@needs_fuse
def test_shared_mmap_fails_with_enodev(place):
    import mmap

    (place.dir / "m.bin").write_bytes(b"z" * 8192)
    with open(place.dir / "m.bin", "rb") as f:
        with pytest.raises(OSError) as shared:
            mmap.mmap(f.fileno(), 8192, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        assert shared.value.errno == errno.ENODEV


@needs_fuse
def test_concurrent_readers_of_different_ranges(place):
    data = os.urandom(8 * 1024 * 1024 + 321)
    place.cmk().pipe_file(str(place.store / "big.bin"), data)
    path = place.dir / "big.bin"
    errors: list[BaseException] = []

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                for _ in range(60):
                    offset = rng.randrange(len(data))
                    length = rng.choice([1, 4096, 100_000, 1024 * 1024])
                    assert os.pread(fd, length, offset) == data[offset : offset + length]
            finally:
                os.close(fd)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    # And another process reading the whole file meanwhile.
    whole = subprocess.run(["cat", str(path)], capture_output=True, check=True).stdout
    for t in threads:
        t.join(60)
    assert not errors, errors[0]
    assert whole == data


# -- mounts of their own -------------------------------------------------------------------------------------------


@needs_fuse
def test_the_mount_killed_mid_write_leaves_the_previous_version(own, tmp_path):
    mount = own()
    assert mount.store is not None
    mount.cmk().pipe_file(str(mount.store / "data.bin"), b"previous version")
    marker = b"NEW-PLAINTEXT-" * 1000
    fd = os.open(mount.mountpoint / "data.bin", os.O_WRONLY | os.O_TRUNC)
    for _ in range(40):
        os.write(fd, marker)  # 560 kB streamed: segments sealed into the temp file
    mount.process.kill()
    mount.process.wait(10)
    with contextlib.suppress(OSError):
        os.close(fd)  # the connection is gone (ENOTCONN)
    _cleanup(mount.mountpoint, None)
    assert mount.cmk().cat_file(str(mount.store / "data.bin")) == b"previous version"
    assert mount.cmk().ls(str(mount.store), detail=False) == [str(mount.store / "data.bin")]
    leftovers = [p for p in mount.store.iterdir() if p.name != "data.bin"]  # the unsealed temp file
    assert leftovers and all(marker[:14] not in p.read_bytes() for p in leftovers)
    _assert_ciphertext_only(mount.store, marker[:14])


@needs_fuse
def test_reads_fail_with_eacces_within_the_ttl_after_the_key_is_disabled(own, isolated_cmkfs_home):
    ttl = 2.0
    mount = own("--cache-ttl", str(ttl))
    data = os.urandom(4 * SEGMENT)
    path = mount.mountpoint / "secret.bin"
    path.write_bytes(data)
    held = os.open(path, os.O_RDONLY)
    try:
        assert os.pread(held, SEGMENT, 0) == data[:SEGMENT]
        assert path.read_bytes() == data  # the key confirmed by the vault no later than now
        disabled = time.monotonic()
        LocalVaultProvider(isolated_cmkfs_home).disable("tenant")
        refused: dict[str, float] = {}
        i = 0
        while len(refused) < 2 and time.monotonic() - disabled < ttl + 10:
            i += 1
            offset = (i % 4) * SEGMENT
            if "held" not in refused:
                code = _errno(os.pread, held, 100, offset)
                if code:
                    assert code == errno.EACCES
                    refused["held"] = time.monotonic() - disabled
            if "new" not in refused:
                code = _errno(lambda: path.read_bytes())
                if code:
                    assert code == errno.EACCES
                    refused["new"] = time.monotonic() - disabled
            time.sleep(0.05)
        assert set(refused) == {"held", "new"}, refused
        assert max(refused.values()) <= ttl + 1.0, refused
        assert os.stat(path).st_size == len(data)  # metadata needs no key
        assert "is disabled" in mount.output() and "EACCES" in mount.output()
        assert data[:64] not in mount.output().encode()
    finally:
        os.close(held)


@needs_fuse
def test_close_fails_with_eacces_for_a_write_the_key_no_longer_allows(own, isolated_cmkfs_home):
    """A small write is only buffered: close(2) re-confirms the key, so the program hears the refusal."""
    ttl = 2.0
    mount = own("--cache-ttl", str(ttl))
    assert mount.store is not None
    path = mount.mountpoint / "small.txt"
    path.write_bytes(b"version 1")
    assert path.read_bytes() == b"version 1"  # published (the mount waits for the release)
    stored = (mount.store / "small.txt").read_bytes()
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, b"version 2")
        LocalVaultProvider(isolated_cmkfs_home).disable("tenant")
        time.sleep(ttl + 0.5)
    finally:
        assert _errno(os.close, fd) == errno.EACCES
    assert (mount.store / "small.txt").read_bytes() == stored  # the previous version stays
    assert "is disabled" in mount.output()


@needs_fuse
def test_a_mountpoint_given_through_a_symlink(tmp_path, isolated_cmkfs_home):
    make_home(isolated_cmkfs_home)
    store, real = tmp_path / "store", tmp_path / "real-mnt"
    store.mkdir()
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    env = dict(os.environ, CMKFS_HOME=str(isolated_cmkfs_home))
    log = tmp_path / "link.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [*CMKFS, "mount", str(store), str(link), "--foreground"], stdout=out, stderr=subprocess.STDOUT, env=env
        )
    try:
        deadline = time.monotonic() + 10
        while "mounted" not in log.read_text():  # the ready message: the mount was seen where it is
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        assert mount_type(str(real)) == FSTYPE and mount_type(str(link)) == FSTYPE
        (link / "f.txt").write_bytes(b"through the link")
        done = subprocess.run([*CMKFS, "unmount", str(link)], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        assert str(real) in done.stdout
        assert process.wait(10) == 0, log.read_text()
        assert not _mounted(real)
    finally:
        _cleanup(real, process)


@needs_fuse
def test_unmount_while_a_reader_is_busy_is_a_clean_error(own):
    mount = own()
    data = os.urandom(2 * SEGMENT)
    (mount.mountpoint / "f.bin").write_bytes(data)
    fd = os.open(mount.mountpoint / "f.bin", os.O_RDONLY)
    stop = threading.Event()

    def busy_reader() -> None:
        while not stop.is_set():
            os.pread(fd, 65536, 4096)

    thread = threading.Thread(target=busy_reader)
    thread.start()
    try:
        start = time.monotonic()
        done = subprocess.run([*CMKFS, "unmount", str(mount.mountpoint)], capture_output=True, text=True, timeout=30)
        assert done.returncode == 1 and "busy" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
        assert time.monotonic() - start < 10
        assert os.pread(fd, 10, 0) == data[:10]  # still serving
    finally:
        stop.set()
        thread.join(10)
        os.close(fd)
    done = subprocess.run([*CMKFS, "unmount", str(mount.mountpoint)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert mount.process.wait(10) == 0
    assert not _mounted(mount.mountpoint)


@needs_fuse
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_unmounts_the_foreground_mount(own, sig):
    mount = own()
    (mount.mountpoint / "f.txt").write_bytes(b"x")
    assert mount.stop(sig) == 0
    assert "unmounted" in mount.output()


@needs_fuse
def test_a_signal_while_files_are_open_waits_for_them(own):
    """Stopping refuses new opens and unmounts once the open files are closed; never lazily, which
    would make the kernel drop the release, and so the publish, of a file closed afterwards."""
    mount = own()
    (mount.mountpoint / "f.txt").write_bytes(b"still here")
    reader = os.open(mount.mountpoint / "f.txt", os.O_RDONLY)
    writer = os.open(mount.mountpoint / "w.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        os.write(writer, b"first half, ")
        mount.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while "new opens are refused" not in mount.output() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _errno(os.open, mount.mountpoint / "f.txt", os.O_RDONLY) == errno.ESHUTDOWN
        assert os.pread(reader, 100, 0) == b"still here"  # open files are still served
        os.write(writer, b"second half")
        assert _mounted(mount.mountpoint) and mount.process.poll() is None
    finally:
        os.close(reader)
        os.close(writer)
    assert mount.process.wait(10) == 0, mount.output()
    assert not _mounted(mount.mountpoint)
    assert mount.cmk().cat_file(str(mount.store / "w.bin")) == b"first half, second half"


@needs_fuse
def test_a_second_signal_stops_at_once_and_discards_unfinished_writes(own):
    mount = own()
    mount.cmk().pipe_file(str(mount.store / "w.bin"), b"previous version")
    writer = os.open(mount.mountpoint / "w.bin", os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(writer, b"unfinished")
        mount.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while "new opens are refused" not in mount.output() and time.monotonic() < deadline:
            time.sleep(0.05)
        mount.process.send_signal(signal.SIGTERM)
        assert mount.process.wait(10) == 128 + signal.SIGTERM
    finally:
        with contextlib.suppress(OSError):
            os.close(writer)  # the mount is gone
    assert not _mounted(mount.mountpoint)
    assert mount.cmk().cat_file(str(mount.store / "w.bin")) == b"previous version"
    assert "unfinished write discarded" in mount.output()


@needs_fuse
def test_background_mount_prints_its_pid_and_unmount_stops_it(tmp_path, isolated_cmkfs_home):
    make_home(isolated_cmkfs_home)
    store, mountpoint = tmp_path / "store", tmp_path / "mnt"
    store.mkdir()
    mountpoint.mkdir()
    log = tmp_path / "mount.log"
    log.write_text("")
    log.chmod(0o644)  # an existing log: made private
    done = subprocess.run(
        [*CMKFS, "mount", str(store), str(mountpoint), "--log-file", str(log)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    pid = None
    try:
        assert done.returncode == 0, done.stderr
        pid = int(done.stdout.rsplit("(pid ", 1)[1].split(")")[0])
        assert os.path.ismount(mountpoint)
        (mountpoint / "f.txt").write_bytes(b"background")
        assert (mountpoint / "f.txt").read_bytes() == b"background"
        assert (store / "f.txt").read_bytes().startswith(MAGIC)
        done = subprocess.run([*CMKFS, "unmount", str(mountpoint)], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.05)
        assert not os.path.exists(f"/proc/{pid}")
        assert "mounted" in log.read_text() and "unmounted" in log.read_text()
        assert log.stat().st_mode & 0o777 == 0o600
        # A log path that is a planted symlink is refused before anything is mounted.
        planted = tmp_path / "planted.log"
        planted.symlink_to(tmp_path / "victim")
        done = subprocess.run(
            [*CMKFS, "mount", str(store), str(mountpoint), "--log-file", str(planted)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 1 and "--log-file" in done.stderr, done.stderr
        assert not (tmp_path / "victim").exists() and not _mounted(mountpoint)
    finally:
        _cleanup(mountpoint, None)
        if pid is not None and os.path.exists(f"/proc/{pid}"):
            os.kill(pid, signal.SIGKILL)
    # A mount that cannot start reports why, where the command was typed.
    done = subprocess.run(
        [*CMKFS, "mount", str(tmp_path / "missing"), str(mountpoint), "--read-only"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "no such folder" in done.stderr
    assert not _mounted(mountpoint)


@needs_fuse
def test_memory_target_and_read_only_mount(own, tmp_path):
    mount = own(target="cmk::memory://data")
    (mount.mountpoint / "m.txt").write_bytes(b"in memory")
    assert (mount.mountpoint / "m.txt").read_bytes() == b"in memory"
    assert os.stat(mount.mountpoint / "m.txt").st_size == 9
    assert mount.stop() == 0

    store = tmp_path / "ro-store"
    store.mkdir()
    cmk = fsspec.filesystem("cmk", target_protocol="file", skip_instance_cache=True)
    cmk.pipe_file(str(store / "r.txt"), b"read me")
    mountpoint = tmp_path / "ro"
    process = start_mount(mountpoint, tmp_path / "ro.log", str(store), "--read-only")
    try:
        assert (mountpoint / "r.txt").read_bytes() == b"read me"
        assert _errno(open, mountpoint / "new.txt", "wb") == errno.EROFS
        assert _errno(os.unlink, mountpoint / "r.txt") == errno.EROFS
        assert _errno(os.mkdir, mountpoint / "d") == errno.EROFS
        assert os.stat(mountpoint / "r.txt").st_mode & 0o777 == 0o444
    finally:
        _cleanup(mountpoint, process)


@needs_fuse
def test_capacity_mount_writes_under_the_capacity_key(isolated_cmkfs_home, tmp_path):
    make_home(isolated_cmkfs_home)
    LocalVaultProvider(isolated_cmkfs_home).create("sales")
    store = tmp_path / "sales-root"
    policy = load_policy(isolated_cmkfs_home)
    policy.add("sales", str(store), key="local://sales")
    policy.mode = "byok"
    policy.save()
    mountpoint = tmp_path / "cap"
    process = start_mount(mountpoint, tmp_path / "cap.log", "--capacity", "sales")
    try:
        assert store.is_dir()  # a new capacity's root is made
        (mountpoint / "q1.csv").write_bytes(b"a,b\n1,2\n")
        assert (mountpoint / "q1.csv").read_bytes() == b"a,b\n1,2\n"
    finally:
        _cleanup(mountpoint, process)
    from cmkfs.stream import read_header
    from cmkfs.targets import LocalSource

    source = LocalSource(str(store / "q1.csv"))
    try:
        assert read_header(source).key_block.key_uri == "local://sales"
    finally:
        source.close()


@needs_fuse
def test_azure_blob_target(own, azurite, abfs_container, tmp_path):
    options = tmp_path / "options.json"  # credentials stay off the command line
    options.write_text(json.dumps({"abfs": {"connection_string": azurite.connection_string}}))
    mount = own("--storage-options", f"@{options}", target=f"cmk::abfs://{abfs_container}/data")
    data = os.urandom(3 * SEGMENT + 17)
    (mount.mountpoint / "sub").mkdir()
    (mount.mountpoint / "sub" / "b.bin").write_bytes(data)
    assert (mount.mountpoint / "sub" / "b.bin").read_bytes() == data
    assert os.stat(mount.mountpoint / "sub" / "b.bin").st_size == len(data)
    os.rename(mount.mountpoint / "sub" / "b.bin", mount.mountpoint / "sub" / "c.bin")
    assert os.listdir(mount.mountpoint / "sub") == ["c.bin"]
    # A rename takes names literally (no glob): not 'report 1.csv', not into a new folder.
    (mount.mountpoint / "report [1].csv").write_bytes(b"bracketed")
    (mount.mountpoint / "report 1.csv").write_bytes(b"plain")
    os.rename(mount.mountpoint / "report [1].csv", mount.mountpoint / "final.csv")
    assert sorted(os.listdir(mount.mountpoint)) == ["final.csv", "report 1.csv", "sub"]
    assert (mount.mountpoint / "final.csv").read_bytes() == b"bracketed"
    assert (mount.mountpoint / "report 1.csv").read_bytes() == b"plain"
    assert "c2VjcmV0" not in mount.output() and "warning" not in mount.output()
    with azurite.service_client() as client:
        blob = client.get_blob_client(abfs_container, "data/sub/c.bin").download_blob().readall()
    assert blob.startswith(MAGIC) and data[:64] not in blob
