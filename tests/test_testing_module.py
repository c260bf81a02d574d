"""cmkfs.testing used the way a user's own test suite would use it: only its public API,
fsspec URLs and the public errors."""

from __future__ import annotations

import os
import socket
import time
import uuid

import fsspec
import pytest

from cmkfs import IntegrityError, KeyNotFoundError, KeyRevokedError, VaultUnavailableError
from cmkfs.testing import fake_key_vault, temporary_home

pytestmark = pytest.mark.timeout(120)

TTL = 1  # seconds: how long cmkfs may keep using a data key after the vault last confirmed it
ROWS = b"region,revenue\nnorth,10.5\n" * 500


def _url() -> str:
    return f"cmk::memory://testing-{uuid.uuid4().hex}/sales.csv"


def _write(url: str, data: bytes, **cmk: object) -> None:
    with fsspec.open(url, "wb", cmk=cmk) as f:
        f.write(data)


def _read(url: str, **cmk: object) -> bytes:
    with fsspec.open(url, "rb", cmk=cmk) as f:
        return f.read()


def _stored(url: str) -> bytes:
    return fsspec.filesystem("memory").cat_file(url.split("::", 1)[1])


# -- the fake Key Vault ---------------------------------------------------------------------


def test_write_and_read_with_a_key_in_the_fake_vault():
    with fake_key_vault() as vault:
        vault.create_key("sales")
        url = _url()
        _write(url, ROWS, **vault.filesystem_options("sales"))
        assert b"north" not in _stored(url)
        assert _read(url, **vault.filesystem_options("sales")) == ROWS
        assert _read(url, **vault.filesystem_options()) == ROWS  # a reader needs no key, only to trust the vault
        assert vault.operations("wrapkey") and vault.operations("unwrapkey")


def test_disabled_key_stops_reads_once_the_ttl_has_passed():
    with fake_key_vault() as vault:
        vault.create_key("sales")
        options = {**vault.filesystem_options("sales"), "cache_ttl": TTL}
        url = _url()
        _write(url, ROWS, **options)
        assert _read(url, **options) == ROWS
        vault.disable("sales")
        time.sleep(TTL + 0.2)
        with pytest.raises(KeyRevokedError):
            _read(url, **options)
        with pytest.raises(KeyRevokedError):
            _write(_url(), ROWS, **options)
        vault.enable("sales")  # nothing was re-encrypted: enabling the key makes the data readable again
        assert _read(url, **options) == ROWS


def test_rotated_key_keeps_old_files_readable():
    with fake_key_vault() as vault:
        vault.create_key("sales")
        options = {**vault.filesystem_options("sales"), "cache_ttl": 0}
        old = _url()
        _write(old, ROWS, **options)
        new_version = vault.rotate("sales")
        new = _url()
        _write(new, b"after rotation", **options)
        assert vault.operations("wrapkey")[-1][1].split("/")[-2] == new_version
        assert _read(old, **options) == ROWS and _read(new, **options) == b"after rotation"


def test_stopped_vault_fails_closed_and_comes_back():
    with fake_key_vault() as vault:
        vault.create_key("sales")
        options = {**vault.filesystem_options("sales"), "cache_ttl": 0}
        url = _url()
        _write(url, ROWS, **options)
        vault.stop()
        with pytest.raises(VaultUnavailableError):
            _read(url, **options)
        vault.start()
        vault.set_throttle(1)  # one 429, retried by cmkfs
        assert _read(url, **options) == ROWS


def test_two_vaults_at_once_keep_their_keys_apart():
    with fake_key_vault() as first, fake_key_vault() as second:
        first.create_key("sales")
        second.create_key("sales")
        url = _url()
        _write(url, ROWS, **second.filesystem_options("sales"))
        assert _read(url, **second.filesystem_options()) == ROWS
        first.disable("sales")
        assert _read(url, **second.filesystem_options(), cache_ttl=0) == ROWS
        assert first.operations("unwrapkey") == []


def test_provider_options_point_an_azure_provider_at_the_vault():
    from cmkfs.providers.azure_keyvault import AzureKeyVaultProvider

    with fake_key_vault(register=False) as vault:
        vault.create_key("sales")
        provider = AzureKeyVaultProvider(**vault.provider_options())
        try:
            block = provider.wrap(vault.key_uri("sales"), os.urandom(32))
            assert len(bytes(provider.unwrap(block))) == 32
        finally:
            provider.close()


def test_the_vault_listens_on_loopback_only_and_stops_with_the_block():
    with fake_key_vault() as vault:
        assert vault.url.startswith("https://127.0.0.1:") and vault.running
        port = int(vault.url.rsplit(":", 1)[1])
    assert not vault.running
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=5):
        pass


def test_a_forgotten_vault_stops_itself_after_its_lifetime():
    with fake_key_vault(lifetime=0.5) as vault:
        deadline = time.monotonic() + 10
        while vault.running and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not vault.running


# -- the embedded vault ----------------------------------------------------------------------


def test_temporary_home_with_a_default_key():
    before = os.environ.get("CMKFS_HOME")
    url = _url()
    with temporary_home() as key_uri:
        assert key_uri == "local://test"
        home = os.environ["CMKFS_HOME"]
        _write(url, ROWS)  # no key option: the temporary home's key is the default
        assert b"north" not in _stored(url)
        assert _read(url) == ROWS
    assert os.environ.get("CMKFS_HOME") == before
    assert not os.path.exists(home)
    with pytest.raises(KeyNotFoundError):  # the key went with its home
        _read(url)


def test_temporary_homes_do_not_share_keys():
    with temporary_home("sales") as key_uri:
        assert key_uri == "local://sales"
        url = _url()
        _write(url, ROWS)
    with temporary_home("sales"):
        _write(_url(), b"another home")
        with pytest.raises(IntegrityError):  # same key URI, other key material
            _read(url)
