"""The fake Azure Key Vault (:mod:`cmkfs.testing`) as a pytest plugin.

The ``keyvault`` fixture gives a :class:`~cmkfs.testing.FakeKeyVault` on 127.0.0.1, empty and
running for each test (keys, faults and request log cleared; restarted if a test stopped it).
One server serves the whole session, and RSA key material is generated once per process.
It registers no provider: tests build their ``AzureKeyVaultProvider`` from ``provider_options()``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cmkfs.testing import FakeKeyVault, StaticTokenCredential

__all__ = ["KeyVaultServer", "StaticTokenCredential", "keyvault"]

KeyVaultServer = FakeKeyVault  # the name benchmarks/ imports


@pytest.fixture(scope="session")
def _keyvault_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeKeyVault]:
    server = FakeKeyVault(tmp_path_factory.mktemp("keyvault"))
    server.start()
    yield server
    server.close()


@pytest.fixture
def keyvault(_keyvault_session: FakeKeyVault) -> Iterator[FakeKeyVault]:
    """The fake Key Vault, empty and running, for one test."""
    _keyvault_session.reset()
    _keyvault_session.start()
    yield _keyvault_session
    _keyvault_session.start()
