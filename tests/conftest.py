"""Test-wide fixtures.  Real services (Azurite, SoftHSM2, Dask) live in
``tests/services/`` as pytest plugins; each starts its part on 127.0.0.1
when first needed and stops it at the end of the session."""

from __future__ import annotations

import pytest

pytest_plugins: list[str] = ["tests.services.azurite", "tests.services.kv_server", "tests.services.softhsm"]


@pytest.fixture(autouse=True)
def isolated_cmkfs_home(tmp_path_factory, monkeypatch):
    """Every test gets its own embedded vault and no ambient key settings."""
    home = tmp_path_factory.mktemp("cmkfs-home")
    monkeypatch.setenv("CMKFS_HOME", str(home))
    monkeypatch.delenv("CMKFS_KEY", raising=False)
    monkeypatch.delenv("CMKFS_AUDIT_LOG", raising=False)
    return home
