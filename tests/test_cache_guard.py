"""Disk caches anywhere above a ``cmk`` layer are refused at construction,
whichever way the chain is built; caches under the encryption are fine.

:mod:`cmkfs.cache_guard` is the one place cmkfs touches an fsspec class: the
last tests here fail loudly if fsspec moves what the guard relies on."""

from __future__ import annotations

import importlib
import inspect

import fsspec
import fsspec.config
import pytest
from fsspec.implementations.cached import CachingFileSystem
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.memory import MemoryFileSystem
from fsspec.registry import known_implementations

from cmkfs import cache_guard
from cmkfs.errors import ConfigurationError
from cmkfs.filesystem import CMKFileSystem
from cmkfs.providers.local import LocalVaultProvider

SECRET = b"PLAINTEXT-THAT-MUST-NOT-REACH-DISK"
LAYERS = ["simplecache", "filecache", "blockcache"]


@pytest.fixture
def key(isolated_cmkfs_home):
    LocalVaultProvider().create("guard")
    return "local://guard"


@pytest.fixture
def store(key, tmp_path):
    root = tmp_path / "store"
    root.mkdir()
    CMKFileSystem(target_protocol="file", key=key, skip_instance_cache=True).pipe_file(f"{root}/doc", SECRET)
    return root


@pytest.fixture
def cache_dir(tmp_path):
    return tmp_path / "cache"


def assert_no_plaintext(directory):
    if directory.exists():
        for p in directory.rglob("*"):
            assert not (p.is_file() and SECRET in p.read_bytes()), p


def read_url(url, **options):
    with fsspec.open(url, "rb", **options) as f:
        return f.read()


@pytest.mark.parametrize("layer", LAYERS)
def test_cache_directly_over_cmk(layer, key, store, cache_dir):
    with pytest.raises(ConfigurationError, match="cmk::simplecache"):
        read_url(f"{layer}::cmk::file://{store}/doc", cmk={"key": key}, **{layer: {"cache_storage": str(cache_dir)}})
    assert_no_plaintext(cache_dir)


@pytest.mark.parametrize("layer", LAYERS)
def test_cache_over_dir_over_cmk(layer, key, store, cache_dir):
    url = f"{layer}::dir::cmk::file://{store}"
    with pytest.raises(ConfigurationError):
        fsspec.open(f"{url}/doc", "rb", cmk={"key": key}, **{layer: {"cache_storage": str(cache_dir)}}).open()
    fs = CMKFileSystem(target_protocol="file", key=key, skip_instance_cache=True)
    with pytest.raises(ConfigurationError):
        fsspec.filesystem(
            layer, fs=DirFileSystem(path=str(store), fs=fs), cache_storage=str(cache_dir), skip_instance_cache=True
        )
    assert_no_plaintext(cache_dir)


def test_cache_built_only_from_storage_options(key, store, cache_dir):
    with pytest.raises(ConfigurationError):
        fsspec.filesystem(
            "simplecache",
            target_protocol="cmk",
            cache_storage=str(cache_dir),
            target_options={"target_protocol": "file", "key": key},
            skip_instance_cache=True,
        )
    with pytest.raises(ConfigurationError):
        fsspec.filesystem(
            "filecache",
            target_protocol="dir",
            cache_storage=str(cache_dir),
            skip_instance_cache=True,
            target_options={
                "path": str(store),
                "target_protocol": "cmk",
                "target_options": {"target_protocol": "file", "key": key},
            },
        )
    assert_no_plaintext(cache_dir)


def test_cache_configured_through_fsspec_config(key, store, cache_dir, monkeypatch):
    monkeypatch.setitem(
        fsspec.config.conf,
        "simplecache",
        {
            "target_protocol": "cmk",
            "cache_storage": str(cache_dir),
            "target_options": {"target_protocol": "file", "key": key},
        },
    )
    with pytest.raises(ConfigurationError):
        fsspec.filesystem("simplecache", skip_instance_cache=True)
    assert_no_plaintext(cache_dir)


def test_cache_over_any_wrapper_holding_cmk(key, store, cache_dir):
    class Wrapper(MemoryFileSystem):
        """Some third-party layer that keeps its target under another name."""

        def __init__(self, inner, **kwargs):
            super().__init__(**kwargs)
            self.backends = {"main": inner}

    fs = CMKFileSystem(target_protocol="file", key=key, skip_instance_cache=True)
    wrapped = Wrapper(fs, skip_instance_cache=True)
    with pytest.raises(ConfigurationError):
        fsspec.filesystem("simplecache", fs=wrapped, cache_storage=str(cache_dir), skip_instance_cache=True)


def test_swapping_the_target_after_construction(key, store, cache_dir):
    cache = fsspec.filesystem(
        "simplecache", target_protocol="memory", cache_storage=str(cache_dir), skip_instance_cache=True
    )
    fs = CMKFileSystem(target_protocol="file", key=key, skip_instance_cache=True)
    with pytest.raises(ConfigurationError):
        cache.fs = fs
    with pytest.raises(ConfigurationError):
        cache.fs = DirFileSystem(path=str(store), fs=fs)
    assert isinstance(cache.fs, MemoryFileSystem)  # the refused target never took its place
    assert_no_plaintext(cache_dir)


def test_ciphertext_cache_under_cmk_is_allowed(key, store, cache_dir):
    url = f"cmk::simplecache::file://{store}/doc"
    assert read_url(url, cmk={"key": key}, simplecache={"cache_storage": str(cache_dir)}) == SECRET
    assert any(cache_dir.rglob("*"))  # the cache holds the ciphertext ...
    assert_no_plaintext(cache_dir)  # ... and only that


def test_every_registered_caching_filesystem_is_guarded(key, cache_dir):
    """Any CachingFileSystem subclass fsspec registers (today the three above)
    goes through the guarded attribute."""
    fs = CMKFileSystem(target_protocol="memory", key=key, skip_instance_cache=True)
    checked = []
    for name, spec in known_implementations.items():
        module, _, attr = spec["class"].rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except Exception:  # noqa: BLE001 - optional backends that are not installed
            continue
        if isinstance(cls, type) and issubclass(cls, CachingFileSystem):
            with pytest.raises(ConfigurationError):
                cls(fs=fs, cache_storage=str(cache_dir / name), skip_instance_cache=True)
            checked.append(name)
    assert {"simplecache", "filecache", "blockcache"} <= set(checked)


# -- what the guard relies on in fsspec ------------------------------------------------


def test_guard_is_installed_and_its_preconditions_hold():
    assert cache_guard.guard_installed()
    assert cache_guard._preconditions() is None


def test_fsspec_still_sets_the_cache_target_as_a_plain_attribute():
    """If fsspec stops assigning ``self.fs`` in CachingFileSystem.__init__ (or
    starts reading it from somewhere else), this fails: revisit cache_guard."""
    source = inspect.getsource(CachingFileSystem.__init__)
    assert "self.fs = " in source
    getattribute = inspect.getsource(CachingFileSystem.__getattribute__)
    assert "__dict__" in getattribute and 'd.get("fs"' in getattribute


def test_a_broken_precondition_refuses_to_run(monkeypatch):
    monkeypatch.setattr(cache_guard, "_installed", False)
    monkeypatch.setattr(CachingFileSystem, "__setattr__", object.__setattr__, raising=False)
    with pytest.raises(ConfigurationError, match="refusing to run"):
        CMKFileSystem(target_protocol="memory", key="local://x", skip_instance_cache=True)


@pytest.mark.parametrize("archive", ["zip", "tar"])
def test_cache_over_an_archive_stored_in_cmk(archive, key, tmp_path, cache_dir):
    """zip:// and tar:// read through a cmk *file*: a disk cache over them
    would store the archive's decrypted members."""
    import io as _io
    import tarfile
    import zipfile

    fs = CMKFileSystem(target_protocol="file", key=key, skip_instance_cache=True)
    buf = _io.BytesIO()
    if archive == "zip":
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("report.csv", SECRET)
    else:
        with tarfile.open(fileobj=buf, mode="w") as t:
            info = tarfile.TarInfo("report.csv")
            info.size = len(SECRET)
            t.addfile(info, _io.BytesIO(SECRET))
    path = str(tmp_path / f"archive.{archive}")
    fs.pipe_file(path, buf.getvalue())
    url = f"simplecache::{archive}://report.csv::cmk::file://{path}"
    with pytest.raises(ConfigurationError):
        read_url(url, cmk={"key": key}, simplecache={"cache_storage": str(cache_dir)})
    inner = fsspec.filesystem(archive, fo=fs.open(path, "rb"), skip_instance_cache=True)
    with pytest.raises(ConfigurationError):
        fsspec.filesystem("filecache", fs=inner, cache_storage=str(cache_dir), skip_instance_cache=True)
    assert_no_plaintext(cache_dir)


def test_subclass_that_declares_fs_is_still_guarded(key, cache_dir):
    from fsspec.implementations.cached import SimpleCacheFileSystem
    from fsspec.spec import AbstractFileSystem

    class TypedCache(SimpleCacheFileSystem):
        fs: AbstractFileSystem | None = None  # a common typed idiom that would shadow the guard

    fs = CMKFileSystem(target_protocol="memory", key=key, skip_instance_cache=True)
    with pytest.raises(ConfigurationError):
        TypedCache(fs=fs, cache_storage=str(cache_dir), skip_instance_cache=True)
