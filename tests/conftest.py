"""Test-wide fixtures.  Real services (Azurite, SoftHSM2, Dask) live in
``tests/services/`` as pytest plugins; each starts its part on 127.0.0.1
when first needed and stops it at the end of the session."""

from __future__ import annotations

import fsspec
import pytest

pytest_plugins: list[str] = [
    "tests.services.azurite",
    "tests.services.kv_server",
    "tests.services.softhsm",
    "tests.cli_fixtures",
]


@pytest.fixture(autouse=True)
def isolated_cmkfs_home(tmp_path_factory, monkeypatch):
    """Every test gets its own embedded vault and no ambient key settings."""
    home = tmp_path_factory.mktemp("cmkfs-home")
    monkeypatch.setenv("CMKFS_HOME", str(home))
    monkeypatch.delenv("CMKFS_KEY", raising=False)
    monkeypatch.delenv("CMKFS_AUDIT_LOG", raising=False)
    return home


@pytest.fixture(autouse=True)
def fresh_cmk_instances():
    """New ``cmk`` filesystem instances (and so new key caches) for every
    test: fsspec would otherwise hand a later test an instance whose key
    cache belongs to an earlier test's vault."""
    from cmkfs.filesystem import CMKFileSystem

    CMKFileSystem.clear_instance_cache()
    yield
    CMKFileSystem.clear_instance_cache()


@pytest.fixture
def memfs():
    """fsspec's process-wide memory filesystem, emptied before and after the test."""
    mem = fsspec.filesystem("memory")
    mem.store.clear()
    mem.pseudo_dirs[:] = [""]
    yield mem
    mem.store.clear()
    mem.pseudo_dirs[:] = [""]


@pytest.fixture(params=["file", "memory"])
def target(request, tmp_path, memfs):
    """(target filesystem, root directory on it): local disk and memory."""
    from fsspec.implementations.local import LocalFileSystem

    if request.param == "file":
        return LocalFileSystem(), str(tmp_path / "data")
    return memfs, "/data"
