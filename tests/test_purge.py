"""Which cached data keys a vault refusal purges: every spelling of the
refused key, and for a version that does not exist only that version (a
planted header must not be able to flush a real key's cache)."""

from __future__ import annotations

import dataclasses
import os

import pytest

from cmkfs.errors import ConfigurationError, KeyNotFoundError
from cmkfs.format import KeyBlock
from cmkfs.keycache import KeyCache, key_identity, purge_key
from cmkfs.providers.local import LocalVaultProvider
from cmkfs.stream import BytesSource, DecryptingReader, encrypt_bytes, read_header


@pytest.fixture
def vault(isolated_cmkfs_home):
    provider = LocalVaultProvider()
    provider.create("k")
    return provider


def test_a_made_up_version_does_not_purge_the_key(vault):
    cache = KeyCache("local://k")
    blob = encrypt_bytes(b"real data", cache)
    block = read_header(BytesSource(blob)).key_block
    DecryptingReader(BytesSource(blob), cache, threads=1).close()
    calls = cache.vault_calls
    planted = dataclasses.replace(block, key_version="999")
    for _ in range(5):
        with pytest.raises(KeyNotFoundError):
            cache.data_key_for_read(planted)
        with DecryptingReader(BytesSource(blob), cache, threads=1) as reader:
            assert reader.read() == b"real data"
    assert cache.vault_calls == calls + 5  # one call per planted read; the real key stayed cached
    cache.data_key_for_write()  # and writes go on with the cached write key
    assert cache.vault_calls == calls + 5


def test_a_disabled_key_purges_every_version(vault):
    cache = KeyCache("local://k")
    encrypt_bytes(b"x", cache)
    vault.disable("k")
    purge_key("local://k")
    assert cache._write_key is None and len(cache._unwrapped) == 0


@pytest.mark.parametrize(
    "spelling",
    [
        "https://CONTOSO.vault.azure.net:443/keys/SALES",
        "https://contoso.vault.azure.net/keys/Sales/0123456789abcdef0123456789abcdef",
        "https://contoso.VAULT.azure.net:443/keys/sales/",
    ],
)
def test_key_vault_spellings_share_one_identity(spelling):
    assert key_identity(spelling) == key_identity("https://contoso.vault.azure.net/keys/sales")
    assert key_identity("https://contoso.vault.azure.net:8443/keys/sales") != key_identity(spelling)


def test_purge_reaches_every_spelling_in_the_cache():
    class Vault:
        def canonical_uri(self, key_uri):
            return key_uri

        def unwrap(self, block):
            from cmkfs.secret import Secret

            return Secret.of(os.urandom(32))

    cache = KeyCache(None, providers=lambda uri: Vault(), trusted_vaults=["contoso.vault.azure.net"])
    block = KeyBlock(3, "https://CONTOSO.vault.azure.net:443/keys/SALES", "v1", b"w" * 256)
    data_key = cache.data_key_for_read(block)
    purge_key("https://contoso.vault.azure.net/keys/sales")  # as the vault spells it in a refusal
    assert data_key.snapshot() is None  # wiped at once, not at the TTL


def test_untrusted_vault_message_offers_no_value_to_paste():
    cache = KeyCache(None)
    block = KeyBlock(3, "https://contoso-vau1t.vault.azure.net/keys/sales", "v1", b"w" * 256)
    with pytest.raises(ConfigurationError) as refused:
        cache.data_key_for_read(block)
    message = str(refused.value)
    assert "contoso-vau1t.vault.azure.net" in message and "trusted_vaults=[" not in message
