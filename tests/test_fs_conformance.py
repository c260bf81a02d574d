"""fsspec's own conformance suite (``fsspec.tests.abstract``) over ``cmk://``.

Each class runs the copy, get, put, open and pipe tests against a
CMKFileSystem whose target is a local directory or fsspec's memory
filesystem, with a real ``local://`` key in the per-test vault.  Files the
suite creates with ``touch`` and ``pipe`` are encrypted; the tests only see
plaintext.
"""

from __future__ import annotations

import fsspec
import pytest
from fsspec.implementations.local import LocalFileSystem
from fsspec.tests import abstract

from cmkfs.filesystem import CMKFileSystem
from cmkfs.format import MAGIC
from cmkfs.providers.local import LocalVaultProvider


@pytest.fixture
def cmk_key(isolated_cmkfs_home):
    LocalVaultProvider().create("conformance")
    return "local://conformance"


class LocalTargetFixtures(abstract.AbstractFixtures):
    @pytest.fixture
    def fs(self, cmk_key):
        return CMKFileSystem(fs=LocalFileSystem(auto_mkdir=True), key=cmk_key, skip_instance_cache=True)

    @pytest.fixture
    def fs_path(self, tmp_path):
        remote = tmp_path / "remote"
        remote.mkdir()
        return str(remote)


class MemoryTargetFixtures(abstract.AbstractFixtures):
    @pytest.fixture
    def fs(self, cmk_key):
        mem = fsspec.filesystem("memory")
        mem.store.clear()
        mem.pseudo_dirs.clear()
        mem.pseudo_dirs.append("")
        try:
            yield CMKFileSystem(fs=mem, key=cmk_key, skip_instance_cache=True)
        finally:
            mem.store.clear()
            mem.pseudo_dirs.clear()
            mem.pseudo_dirs.append("")

    @pytest.fixture
    def fs_join(self):
        return lambda *args: "/".join(args)

    @pytest.fixture
    def fs_path(self):
        return ""


class TestLocalCopy(abstract.AbstractCopyTests, LocalTargetFixtures):
    pass


class TestLocalGet(abstract.AbstractGetTests, LocalTargetFixtures):
    pass


class TestLocalPut(abstract.AbstractPutTests, LocalTargetFixtures):
    pass


class TestLocalOpen(abstract.AbstractOpenTests, LocalTargetFixtures):
    pass


class TestLocalPipe(abstract.AbstractPipeTests, LocalTargetFixtures):
    pass


class TestMemoryCopy(abstract.AbstractCopyTests, MemoryTargetFixtures):
    pass


class TestMemoryGet(abstract.AbstractGetTests, MemoryTargetFixtures):
    pass


class TestMemoryPut(abstract.AbstractPutTests, MemoryTargetFixtures):
    pass


class TestMemoryOpen(abstract.AbstractOpenTests, MemoryTargetFixtures):
    pass


class TestMemoryPipe(abstract.AbstractPipeTests, MemoryTargetFixtures):
    pass


def test_suite_files_are_ciphertext_on_the_target(cmk_key, tmp_path):
    """What the suite writes lands encrypted: the target holds cmkfs files only."""
    target = LocalFileSystem(auto_mkdir=True)
    fs = CMKFileSystem(fs=target, key=cmk_key, skip_instance_cache=True)
    fs.touch(str(tmp_path / "a" / "empty"))
    fs.pipe(str(tmp_path / "a" / "data"), b"plaintext marker")
    for name in target.find(str(tmp_path)):
        blob = target.cat_file(name)
        assert blob.startswith(MAGIC)
        assert b"plaintext marker" not in blob
    assert fs.info(str(tmp_path / "a" / "empty"))["size"] == 0
