"""Failure paths of the ``cmk://`` filesystem: wrappers fsspec and Python put
around our files (``open_files``, compression, text mode, zipfile), writers
that fail or die, damaged files in listings, and what travels in options.

Real local and memory targets, real keys in the embedded ``local://`` vault of
the per-test ``CMKFS_HOME``; dying writers run in child processes."""

from __future__ import annotations

import bz2
import contextlib
import gc
import gzip
import io
import os
import pickle
import re
import stat
import subprocess
import sys
import textwrap
import warnings
import zipfile
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.chained import ChainedFileSystem

from cmkfs import delegation
from cmkfs import filesystem as cmkfs_filesystem
from cmkfs.errors import ConfigurationError, IntegrityError, UnsupportedOperationError
from cmkfs.filesystem import CMKFileSystem
from cmkfs.format import MAGIC
from cmkfs.providers.local import LocalVaultProvider

SEG = 4096
SECRET = b"TOPSECRET-PLAINTEXT"
DECOMPRESS = {"gzip": gzip.decompress, "bz2": bz2.decompress}


@pytest.fixture
def key(isolated_cmkfs_home):
    LocalVaultProvider().create("failsafe")
    return "local://failsafe"


@pytest.fixture
def tfs(target):
    return target[0]


@pytest.fixture
def root(target):
    tfs, root = target
    tfs.makedirs(root, exist_ok=True)
    return root


@pytest.fixture
def fs(tfs, root, key):
    return CMKFileSystem(fs=tfs, key=key, segment_size=SEG, skip_instance_cache=True)


def quietly_collect():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def files_containing(directory: Path, needle: bytes) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file() and needle in p.read_bytes()]


# -- 1. fsspec.open_files() must not bypass the encryption --------------------------------


def test_open_files_over_ciphertext_cache_encrypts(key, tmp_path):
    store, cache = tmp_path / "store", tmp_path / "cache"
    store.mkdir()
    so = {"cmk": {"key": key}, "simplecache": {"cache_storage": str(cache)}}
    urls = [f"cmk::simplecache::file://{store}/a.bin", f"cmk::simplecache::file://{store}/b.bin"]
    with fsspec.open_files(urls, "wb", **so) as files:
        for f in files:
            f.write(SECRET)
    for name in ("a.bin", "b.bin"):
        assert (store / name).read_bytes().startswith(MAGIC)
    assert files_containing(store, SECRET) == []
    assert files_containing(cache, SECRET) == [] if cache.exists() else True
    with fsspec.open_files(urls, "rb", **so) as files:
        assert [f.read() for f in files] == [SECRET, SECRET]
    # Text mode and compression go through cmk's open as well.
    with fsspec.open_files([f"cmk::simplecache::file://{store}/t.txt.gz"], "wt", compression="gzip", **so) as files:
        files[0].write("text through open_files")
    fs = CMKFileSystem(target_protocol="file", key=key, skip_instance_cache=True)
    assert gzip.decompress(fs.cat_file(f"{store}/t.txt.gz")) == b"text through open_files"
    assert files_containing(store, b"text through") == []


@pytest.mark.parametrize("mode", ["wb", "wt"])
def test_open_files_in_a_transaction_discards_on_exception(key, tmp_path, mode):
    store = tmp_path / "store"
    store.mkdir()
    fs = CMKFileSystem(target_protocol="file", key=key, skip_instance_cache=True)
    fs.pipe_file(f"{store}/a.bin", b"previous a")
    so = {"cmk": {"key": key}, "simplecache": {"cache_storage": str(tmp_path / "cache")}}
    urls = [f"cmk::simplecache::file://{store}/a.bin", f"cmk::simplecache::file://{store}/new.bin"]
    files = fsspec.open_files(urls, mode, **so)
    with pytest.raises(RuntimeError):
        with files.fs.transaction:
            with files as opened:
                for f in opened:
                    f.write(SECRET if mode == "wb" else SECRET.decode())
                raise RuntimeError("job failed")
    assert fs.cat_file(f"{store}/a.bin") == b"previous a"
    assert not fs.exists(f"{store}/new.bin")
    assert files_containing(tmp_path, SECRET) == []
    # The same block ending cleanly publishes both.
    with files.fs.transaction:
        with files as opened:
            for f in opened:
                f.write(SECRET if mode == "wb" else SECRET.decode())
    assert fs.cat_file(f"{store}/a.bin") == fs.cat_file(f"{store}/new.bin") == SECRET
    assert files_containing(tmp_path, SECRET) == []


def _duck_typed_names_in_fsspec() -> set[str]:
    """Names fsspec's own modules look up on a filesystem with hasattr/getattr."""
    root = Path(fsspec.__file__).parent
    pattern = re.compile(r"""(?:hasattr|getattr)\(\s*([\w.\[\]]*\bfs)\s*,\s*["'](\w+)["']""")
    names = set()
    for path in root.rglob("*.py"):
        if "tests" in path.relative_to(root).parts:
            continue
        for _, name in pattern.findall(path.read_text(encoding="utf-8", errors="replace")):
            names.add(name)
    # Not hooks: OpenFiles walks .fs (the chain itself); reference.py copies
    # storage_options (instance state every AbstractFileSystem has).
    return names - {"fs", "storage_options"}


def test_duck_typed_hooks_are_reviewed():
    found = _duck_typed_names_in_fsspec()
    assert {"open_many", "local_file"} <= found  # the grep still finds what it should (commit_many goes with open_many)
    assert found <= cmkfs_filesystem.DUCK_TYPED_HOOKS, found - cmkfs_filesystem.DUCK_TYPED_HOOKS
    bases = CMKFileSystem.__mro__[1:]
    for name in cmkfs_filesystem.DUCK_TYPED_HOOKS:
        assert name in CMKFileSystem.__dict__ or not any(name in vars(b) for b in bases), name
    assert CMKFileSystem.local_file is False
    with pytest.raises(ValueError, match="local_file"):
        fsspec.open_local("cmk::memory://anything", cmk={"key": "local://failsafe"})


def test_unreviewed_hooks_and_base_methods_are_refused(monkeypatch):
    """A hook or method that a base class other than AbstractFileSystem gains
    is refused too, plain values included."""
    monkeypatch.setattr(delegation, "DUCK_TYPED_HOOKS", delegation.DUCK_TYPED_HOOKS | {"shiny_hook"})
    monkeypatch.setattr(ChainedFileSystem, "shiny_hook", True, raising=False)
    monkeypatch.setattr(ChainedFileSystem, "shiny_upload", lambda self, path: None, raising=False)
    delegation.fail_closed(CMKFileSystem)
    try:
        fs = CMKFileSystem(target_protocol="memory", key="local://x", skip_instance_cache=True)
        with pytest.raises(UnsupportedOperationError):
            hasattr(fs, "shiny_hook")  # hasattr lets anything but AttributeError through: fails loudly
        with pytest.raises(UnsupportedOperationError):
            fs.shiny_upload("/p")
    finally:
        monkeypatch.undo()
        for name in ("shiny_hook", "shiny_upload"):
            if name in CMKFileSystem.__dict__:
                delattr(CMKFileSystem, name)


# -- 2. compression= through fs.open ------------------------------------------------------


@pytest.mark.parametrize("compression", ["gzip", "bz2"])
@pytest.mark.parametrize("mode", ["wb", "w"])
def test_compressed_write_is_published(fs, tfs, root, compression, mode):
    data = b"compressed payload " * 500
    path = f"{root}/out.{compression}.{mode}"
    with fs.open(path, mode, compression=compression) as f:
        f.write(data if mode == "wb" else data.decode())
    quietly_collect()
    assert fs.exists(path)
    assert DECOMPRESS[compression](fs.cat_file(path)) == data
    assert tfs.cat_file(path).startswith(MAGIC)
    read_mode = "rb" if mode == "wb" else "r"
    with fs.open(path, read_mode, compression=compression) as f:
        assert f.read() == (data if mode == "wb" else data.decode())
    # An explicit close() publishes as well.
    f = fs.open(f"{root}/explicit.gz", "wb", compression="gzip")
    f.write(b"explicit")
    f.close()
    assert gzip.decompress(fs.cat_file(f"{root}/explicit.gz")) == b"explicit"


@pytest.mark.parametrize("mode", ["wb", "w"])
def test_compressed_write_failure_keeps_previous_version(fs, root, mode):
    path = f"{root}/keep.gz"
    fs.pipe_file(path, b"previous")
    with pytest.raises(RuntimeError):
        with fs.open(path, mode, compression="gzip") as f:
            f.write(b"half" if mode == "wb" else "half")
            raise RuntimeError
    assert fs.cat_file(path) == b"previous"
    f = fs.open(path, mode, compression="infer")
    f.write(b"never closed" if mode == "wb" else "never closed")
    del f
    quietly_collect()
    assert fs.cat_file(path) == b"previous"


# -- 3. text mode: finalisers and dying processes ----------------------------------------


def test_text_writer_garbage_collected_is_discarded(fs, root):
    path = f"{root}/report.txt"
    fs.pipe_file(path, b"GOOD OLD VERSION")

    def job():
        f = fs.open(path, "w")
        f.write("half-written new version")
        raise RuntimeError("job failed before close")

    with pytest.raises(RuntimeError):
        job()
    quietly_collect()
    assert fs.cat_file(path) == b"GOOD OLD VERSION"
    with pytest.raises(RuntimeError):
        with fs.open(path, "w") as f:
            f.write("half")
            raise RuntimeError
    assert f.closed and fs.cat_file(path) == b"GOOD OLD VERSION"
    with fs.open(path, "w") as f:
        f.write("new version")
    assert fs.cat_file(path) == b"new version"
    g = fs.open(path, "w", encoding="latin-1")
    g.write("caf\xe9")
    g.close()
    assert fs.cat_file(path) == b"caf\xe9"


CHILD_OPENERS = {
    "fs.open w": "fs.open(PATH, 'w')",
    "fs.open wb": "fs.open(PATH, 'wb')",
    "fs.open w gzip": "fs.open(PATH, 'w', compression='gzip')",
    "fsspec.open wt": "fsspec.open('cmk::file://' + PATH, 'wt', cmk={'key': KEY}).open()",
    "fsspec.open wb gzip": "fsspec.open('cmk::file://' + PATH, 'wb', compression='gzip', cmk={'key': KEY}).open()",
}


@pytest.mark.parametrize("opener", sorted(CHILD_OPENERS))
def test_process_dying_mid_write_keeps_previous_version(key, tmp_path, isolated_cmkfs_home, opener):
    fs = CMKFileSystem(target_protocol="file", key=key, skip_instance_cache=True)
    path = str(tmp_path / "report.txt")
    fs.pipe_file(path, b"GOOD OLD VERSION")
    text = "b" not in opener.split()[-1] and "wb" not in opener
    child = textwrap.dedent(f"""
        import fsspec
        from cmkfs.filesystem import CMKFileSystem
        PATH, KEY = {path!r}, {key!r}
        fs = CMKFileSystem(target_protocol="file", key=KEY)
        f = {CHILD_OPENERS[opener]}
        f.write({'"half-written"' if text else 'b"half-written"'})
        raise RuntimeError("worker died mid-write")
    """)
    env = {**os.environ, "CMKFS_HOME": str(isolated_cmkfs_home)}
    result = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", child], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 1 and "worker died mid-write" in result.stderr, result.stderr
    assert fs.cat_file(path) == b"GOOD OLD VERSION"


# -- 4. close() in an except block --------------------------------------------------------


def test_explicit_close_in_an_except_block_commits(fs, root):
    f = fs.open(f"{root}/log.bin", "wb")
    f.write(b"important data")
    try:
        int("not a number")
    except ValueError:
        f.write(b" (parse failed, used default)")
        f.close()
    assert fs.cat_file(f"{root}/log.bin") == b"important data (parse failed, used default)"
    t = fs.open(f"{root}/log.txt", "w")
    try:
        raise KeyError
    except KeyError:
        t.write("text too")
        t.close()
    assert fs.cat_file(f"{root}/log.txt") == b"text too"


def test_close_is_close_whoever_calls_it(fs, root, key, memfs):
    """contextlib.closing and ExitStack close the file when the block fails:
    that publishes, exactly as over a plain file; a transaction keeps the
    previous version across the same failures."""
    path = f"{root}/doc"
    fs.pipe_file(path, b"previous")
    with pytest.raises(ValueError):
        with contextlib.closing(fs.open(path, "wb")) as f:
            f.write(b"half")
            raise ValueError
    assert fs.cat_file(path) == b"half"
    fs.pipe_file(path, b"previous")
    with pytest.raises(ValueError):
        with fs.transaction:
            with contextlib.closing(fs.open(path, "wb")) as f:
                f.write(b"half")
                raise ValueError
    with pytest.raises(ValueError):
        with fs.transaction:
            with contextlib.ExitStack() as stack:
                g = fs.open(path, "wb")
                stack.callback(g.close)
                g.write(b"half")
                raise ValueError
    assert fs.cat_file(path) == b"previous"
    memfs.pipe_file("/m", b"", mode="overwrite")
    url = "cmk::memory://m"
    with fsspec.open(url, "wb", cmk={"key": key}) as f:
        f.write(b"previous")
    try:
        raise KeyError
    except KeyError:
        with fsspec.open(url, "wb", cmk={"key": key}) as f:
            f.write(b"written from a handler")
    assert fsspec.open(url, "rb", cmk={"key": key}).open().read() == b"written from a handler"


# -- 5. one damaged file does not break a listing ------------------------------------------


def test_damaged_file_is_flagged_in_listings(fs, tfs, root):
    fs.pipe_file(f"{root}/good.parquet", b"x" * 1000)
    good = tfs.cat_file(f"{root}/good.parquet")
    tfs.pipe_file(f"{root}/interrupted.parquet", good[:40])  # a cmkfs file cut inside its header
    tfs.pipe_file(f"{root}/tiny", b"\x89")  # one byte that could start the magic
    tfs.pipe_file(f"{root}/plain.txt", b"not encrypted")
    entries = {e["name"].rsplit("/", 1)[-1]: e for e in fs.ls(root)}
    assert entries["good.parquet"]["size"] == 1000 and entries["good.parquet"]["encrypted"] is True
    assert entries["plain.txt"]["encrypted"] is False and entries["plain.txt"]["size"] == 13
    for name, raw_size in (("interrupted.parquet", 40), ("tiny", 1)):
        assert entries[name]["damaged"] is True and entries[name]["encrypted"] is None
        assert entries[name]["size"] == raw_size
    assert "damaged" not in entries["good.parquet"]
    assert len(fs.find(root, detail=True)) == 4
    assert len(fs.glob(root + "/*", detail=True)) == 4
    assert len(list(fs.walk(root))) == 1
    assert fs.du(root) == 1000 + 13 + 40 + 1
    for name in ("interrupted.parquet", "tiny"):
        with pytest.raises(IntegrityError):
            fs.info(f"{root}/{name}")
        with pytest.raises(IntegrityError):
            fs.cat_file(f"{root}/{name}")
    assert fs.info(f"{root}/good.parquet")["size"] == 1000


# -- 6. no PIN in the plumbing ------------------------------------------------------------


@pytest.mark.parametrize(
    "query", ["pin-value=SECRETPIN1234", "module-path=/x.so&pin-value=SECRETPIN1234", "pin%2Dvalue=SECRETPIN1234"]
)
def test_pin_value_in_key_uri_is_refused(query, monkeypatch):
    uri = f"pkcs11:token=t;object=o?{query}"
    with pytest.raises(ConfigurationError, match="pin-source") as err:
        fsspec.filesystem("cmk", target_protocol="memory", key=uri, skip_instance_cache=True)
    assert "SECRETPIN1234" not in str(err.value) and "CMKFS_PKCS11_PIN" in str(err.value)
    monkeypatch.setenv("CMKFS_KEY", uri)
    with pytest.raises(ConfigurationError, match="pin-source"):
        CMKFileSystem(target_protocol="memory", skip_instance_cache=True)


def test_pin_source_key_uri_is_accepted(tmp_path):
    uri = f"pkcs11:token=t;object=o?pin-source=file:{tmp_path}/pin"
    fs = CMKFileSystem(target_protocol="memory", key=uri, skip_instance_cache=True)
    assert fs.key_uri == uri and pickle.loads(pickle.dumps(fs)).key_uri == uri


# -- 7. rewrites keep the file's permissions ----------------------------------------------


def test_rewrite_and_rewrap_keep_permissions(key, tmp_path):
    LocalVaultProvider().create("failsafe-2")
    fs = CMKFileSystem(target_protocol="file", key=key, skip_instance_cache=True)
    old_umask = os.umask(0o022)
    try:
        path = tmp_path / "restricted"
        fs.pipe_file(str(path), b"secret")
        assert stat.S_IMODE(path.stat().st_mode) == 0o644  # a new file: the umask decides
        for mode in (0o600, 0o640, 0o400):
            path.chmod(mode)
            fs.pipe_file(str(path), b"rewritten")
            assert stat.S_IMODE(path.stat().st_mode) == mode
            assert fs.rewrap(str(path), key="local://failsafe-2").changed
            assert stat.S_IMODE(path.stat().st_mode) == mode
            fs.rewrap(str(path), key=key)
        with fs.open(str(path), "wb") as f:
            f.write(b"via open")
        assert stat.S_IMODE(path.stat().st_mode) == 0o400 and fs.cat_file(str(path)) == b"via open"
        # A symlink is replaced by a regular file with its target's mode; the target stays as it was.
        real = tmp_path / "real"
        fs.pipe_file(str(real), b"real")
        real.chmod(0o600)
        link = tmp_path / "link"
        link.symlink_to(real)
        fs.pipe_file(str(link), b"through the link")
        assert not link.is_symlink() and stat.S_IMODE(link.stat().st_mode) == 0o600
        assert fs.cat_file(str(real)) == b"real"
    finally:
        os.umask(old_umask)


# -- 8. writers are not seekable, so zipfile streams --------------------------------------


def test_writer_refuses_every_seek_as_io_unsupported(fs, root):
    with fs.open(f"{root}/s", "wb") as f:
        f.write(b"12345")
        assert not f.seekable() and f.tell() == 5
        for args in ((0, 1), (5,), (0,), (0, 2)):
            with pytest.raises(io.UnsupportedOperation):
                f.seek(*args)
    assert fs.cat_file(f"{root}/s") == b"12345"


def test_zip_archive_through_cmk(fs, tfs, root):
    path = f"{root}/a.zip"
    with fs.open(path, "wb") as f:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as z:
            z.writestr("inner.txt", SECRET * 100)
            with z.open("streamed.bin", "w") as member:
                member.write(b"streamed member")
    assert SECRET not in tfs.cat_file(path)
    with fs.open(path, "rb") as f, zipfile.ZipFile(f) as z:
        assert z.read("inner.txt") == SECRET * 100 and z.read("streamed.bin") == b"streamed member"
    with pytest.raises(RuntimeError):
        with fs.open(path, "wb") as f:
            with zipfile.ZipFile(f, "w") as z:
                z.writestr("partial.txt", b"partial")
                raise RuntimeError
    with fs.open(path, "rb") as f, zipfile.ZipFile(f) as z:
        assert sorted(z.namelist()) == ["inner.txt", "streamed.bin"]
    zfs = fsspec.filesystem("zip", fo=fs.open(f"{root}/z.zip", "wb"), mode="w")
    zfs.pipe("x", SECRET)
    zfs.close()
    zfs.fo.close()
    assert fsspec.filesystem("zip", fo=fs.open(f"{root}/z.zip", "rb")).cat("x") == SECRET


def test_report_written_from_a_failing_blocks_cleanup_is_published(key, tmp_path):
    # A file opened *inside* some other block's cleanup (an error report) and
    # closed there belongs to that cleanup, not to the failing block.
    import contextlib

    fs = CMKFileSystem(target_protocol="file", key=key)

    def report(name):
        f = fs.open(str(tmp_path / name), "wb")
        f.write(b"job failed")
        f.close()

    @contextlib.contextmanager
    def job():
        try:
            yield
        except RuntimeError:
            report("from-contextmanager")
            raise

    class Job:
        def __enter__(self):
            return self

        def __exit__(self, exc_type, exc, tb):
            if exc_type is not None:
                report("from-exit")

    for cm in (job, Job):
        with pytest.raises(RuntimeError):
            with cm():
                raise RuntimeError("boom")
    with pytest.raises(RuntimeError):
        with contextlib.ExitStack() as stack:
            stack.callback(report, "from-exitstack")
            raise RuntimeError("boom")
    for name in ("from-contextmanager", "from-exit", "from-exitstack"):
        assert fs.cat_file(str(tmp_path / name)) == b"job failed"
