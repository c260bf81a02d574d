"""The Azure Key Vault provider against an HTTPS Key Vault stand-in on 127.0.0.1
(``tests/services/kv_server.py``), plus an opt-in live test against a real vault."""

from __future__ import annotations

import logging
import os
import pickle
import sys
import threading
import time
from dataclasses import dataclass, replace

import pytest

from cmkfs.errors import (
    ConfigurationError,
    FormatError,
    IntegrityError,
    KeyNotFoundError,
    KeyRevokedError,
    VaultUnavailableError,
)
from cmkfs.format import KeyBlock, WrapAlgorithm
from cmkfs.keycache import KeyCache
from cmkfs.providers.azure_keyvault import AzureKeyVaultProvider, parse_key_uri
from cmkfs.providers.base import provider_for
from tests.provider_contract import ProviderContract
from tests.services.kv_server import StaticTokenCredential

pytestmark = pytest.mark.timeout(120)


@dataclass
class AzureBackend:
    provider: AzureKeyVaultProvider
    key_uri: str
    other_key_uri: str
    missing_key_uri: str
    server: object
    name: str = "sales"

    def disable(self) -> None:
        self.server.disable(self.name)

    def enable(self) -> None:
        self.server.enable(self.name)

    def rotate(self) -> str:
        return self.server.rotate(self.name)


@pytest.fixture
def provider(keyvault):
    provider = AzureKeyVaultProvider(**keyvault.provider_options())
    yield provider
    provider.close()


@pytest.fixture
def backend(keyvault, provider):
    keyvault.create_key("sales")
    keyvault.create_key("other")
    return AzureBackend(
        provider, keyvault.key_uri("sales"), keyvault.key_uri("other"), keyvault.key_uri("missing"), keyvault
    )


class TestAzureKeyVaultContract(ProviderContract):
    pass


def _cache(provider, key_uri=None, **kwargs):
    kwargs.setdefault("retry_attempts", 4)
    kwargs.setdefault("retry_deadline", 10)
    # Read-only caches trust no remote vault on their own: name the test server.
    kwargs.setdefault("trusted_vaults", ["127.0.0.1"] if key_uri is None else None)
    return KeyCache(key_uri, providers=lambda _uri: provider, **kwargs)


# -- key URIs ------------------------------------------------------------------


@pytest.mark.parametrize(
    "uri, vault, name, version",
    [
        ("https://contoso.vault.azure.net/keys/sales", "https://contoso.vault.azure.net", "sales", None),
        ("https://contoso.vault.azure.net/keys/sales/0123abcd", "https://contoso.vault.azure.net", "sales", "0123abcd"),
        ("https://contoso.vault.azure.net/keys/sales/", "https://contoso.vault.azure.net", "sales", None),
        ("https://contoso.vault.azure.cn/keys/k-1", "https://contoso.vault.azure.cn", "k-1", None),
        ("https://contoso.vault.usgovcloudapi.net/keys/k", "https://contoso.vault.usgovcloudapi.net", "k", None),
        ("https://hsm.managedhsm.azure.net/keys/k/v1", "https://hsm.managedhsm.azure.net", "k", "v1"),
        ("https://127.0.0.1:8443/keys/k", "https://127.0.0.1:8443", "k", None),
    ],
)
def test_key_uri_forms(uri, vault, name, version):
    assert parse_key_uri(uri) == (vault, name, version)


@pytest.mark.parametrize(
    "uri",
    [
        "https://contoso.vault.azure.net/secrets/sales",
        "https://contoso.vault.azure.net/keys/",
        "https://contoso.vault.azure.net/keys/sales/v1/extra",
        "https://contoso.vault.azure.net/keys/sa_les",
        "https://contoso.vault.azure.net/prefix/keys/sales",
        "https://user@contoso.vault.azure.net/keys/sales",
        "https://contoso.vault.azure.net/keys/sales/v-1",
    ],
)
def test_malformed_key_uris_are_configuration_errors(uri):
    with pytest.raises(ConfigurationError):
        AzureKeyVaultProvider(credential=StaticTokenCredential("x")).wrap(uri, os.urandom(32))


def test_registry_routes_https_uris_here(keyvault):
    options = keyvault.provider_options()
    provider = provider_for(keyvault.key_uri("sales"), **options)
    assert isinstance(provider, AzureKeyVaultProvider)
    assert provider_for(keyvault.key_uri("other"), **options) is provider


# -- the vault does the work -------------------------------------------------------


def test_every_wrap_and_unwrap_is_done_by_the_vault(keyvault, provider):
    keyvault.create_key("sales")
    dek = os.urandom(32)
    blocks = [provider.wrap(keyvault.key_uri("sales"), dek) for _ in range(3)]
    for block in blocks:
        assert bytes(provider.unwrap(block)) == dek
    assert [r[2] for r in keyvault.operations("wrapkey")] == [200, 200, 200]
    assert [r[2] for r in keyvault.operations("unwrapkey")] == [200, 200, 200]
    assert blocks[0].wrap_alg is WrapAlgorithm.RSA_OAEP_256
    assert blocks[0].key_uri == keyvault.key_uri("sales")
    assert KeyBlock.decode(blocks[0].encode()) == blocks[0]


def test_versioned_uri_wraps_with_that_version(keyvault, provider):
    old = keyvault.create_key("sales")
    new = keyvault.rotate("sales")
    assert provider.wrap(keyvault.key_uri("sales", old), os.urandom(32)).key_version == old
    block = provider.wrap(keyvault.key_uri("sales"), os.urandom(32))
    assert block.key_version == new
    assert block.key_uri == keyvault.key_uri("sales")  # the block names the key without a version
    assert provider.describe(keyvault.key_uri("sales")).versions == (old, new)


def test_disabling_one_old_version_leaves_the_current_one_working(keyvault, provider):
    old = keyvault.create_key("sales")
    old_block = provider.wrap(keyvault.key_uri("sales"), os.urandom(32))
    keyvault.rotate("sales")
    keyvault.disable("sales", old)
    with pytest.raises(KeyRevokedError):
        provider.unwrap(old_block)
    dek = os.urandom(32)
    assert bytes(provider.unwrap(provider.wrap(keyvault.key_uri("sales"), dek))) == dek


def test_unknown_version_is_not_found(keyvault, provider):
    keyvault.create_key("sales")
    block = provider.wrap(keyvault.key_uri("sales"), os.urandom(32))
    with pytest.raises(KeyNotFoundError):
        provider.unwrap(replace(block, key_version="0" * 32))
    keyvault.delete("sales")
    with pytest.raises(KeyNotFoundError):
        provider.unwrap(block)
    with pytest.raises(KeyNotFoundError):
        provider.describe(keyvault.key_uri("sales"))


def test_foreign_key_block_is_a_format_error(keyvault, provider):
    keyvault.create_key("sales")
    block = provider.wrap(keyvault.key_uri("sales"), os.urandom(32))
    with pytest.raises(FormatError):
        provider.unwrap(replace(block, wrap_alg=WrapAlgorithm.RSA_OAEP_SHA1))
    with pytest.raises(FormatError):
        provider.unwrap(replace(block, key_version="../../versions"))


def test_vault_that_refuses_get_on_a_disabled_key(keyvault, provider):
    """Some vaults answer 403 to "get" on a disabled key: describe and wrap still say revoked."""
    keyvault.create_key("sales")
    keyvault.strict_disabled_get = True
    keyvault.disable("sales")
    info = provider.describe(keyvault.key_uri("sales"))
    assert info.enabled is False and info.current_version
    with pytest.raises(KeyRevokedError):
        provider.wrap(keyvault.key_uri("sales"), os.urandom(32))


def test_concurrent_use_shares_clients_safely(keyvault, provider):
    keyvault.create_key("sales")
    block = provider.wrap(keyvault.key_uri("sales"), b"k" * 32)
    errors = []

    def work():
        try:
            for _ in range(3):
                assert bytes(provider.unwrap(block)) == b"k" * 32
                dek = os.urandom(32)
                assert bytes(provider.unwrap(provider.wrap(keyvault.key_uri("sales"), dek))) == dek
        except Exception as exc:  # noqa: BLE001 - collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(provider._crypto_clients) == 1


# -- Power BI style key checks ------------------------------------------------------


def test_2048_bit_key_works_with_a_warning(keyvault, provider, caplog):
    keyvault.create_key("sales", 2048)
    info = provider.describe(keyvault.key_uri("sales"))
    assert info.size_bits == 2048
    assert any("RSA-2048" in w and "4096" in w for w in info.warnings)
    with caplog.at_level(logging.WARNING, logger="cmkfs.providers.azure_keyvault"):
        provider.wrap(keyvault.key_uri("sales"), os.urandom(32))
        provider.wrap(keyvault.key_uri("sales"), os.urandom(32))
    size_warnings = [r for r in caplog.records if "RSA-2048" in r.getMessage()]
    assert len(size_warnings) == 1  # once per key version, not per wrap


def test_4096_bit_key_with_purge_protection_has_no_warning(keyvault, provider, caplog):
    keyvault.create_key("sales", 4096, kty="RSA-HSM", recovery_level="Recoverable")
    with caplog.at_level(logging.WARNING, logger="cmkfs.providers.azure_keyvault"):
        dek = os.urandom(32)
        assert bytes(provider.unwrap(provider.wrap(keyvault.key_uri("sales"), dek))) == dek
    info = provider.describe(keyvault.key_uri("sales"))
    assert info.size_bits == 4096 and info.warnings == ()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.parametrize("level", ["Purgeable", "Recoverable+Purgeable", "CustomizedRecoverable+Purgeable"])
def test_vault_without_purge_protection_warns(keyvault, provider, level):
    keyvault.create_key("sales", recovery_level=level)
    warnings = provider.describe(keyvault.key_uri("sales")).warnings
    assert any("purge protection" in w for w in warnings)


@pytest.mark.parametrize("missing", ["wrapKey", "unwrapKey"])
def test_key_without_wrap_permission_is_refused(keyvault, provider, missing):
    ops = [op for op in ("encrypt", "decrypt", "wrapKey", "unwrapKey") if op != missing]
    keyvault.create_key("sales", key_ops=ops)
    with pytest.raises(ConfigurationError, match=missing):
        provider.wrap(keyvault.key_uri("sales"), os.urandom(32))
    assert keyvault.operations("wrapkey") == []


def test_non_rsa_key_is_refused(keyvault, provider):
    keyvault.create_key("sales", kty="EC", key_ops=["sign", "verify"])
    with pytest.raises(ConfigurationError, match="RSA"):
        provider.wrap(keyvault.key_uri("sales"), os.urandom(32))
    assert keyvault.operations("wrapkey") == []


def test_expired_or_not_yet_valid_key_refuses_wrap(keyvault, provider):
    keyvault.create_key("old", expires=int(time.time()) - 60)
    keyvault.create_key("future", not_before=int(time.time()) + 3600)
    for name in ("old", "future"):
        with pytest.raises(KeyRevokedError):
            provider.wrap(keyvault.key_uri(name), os.urandom(32))


# -- errors at the boundary -----------------------------------------------------------


def test_throttling_without_key_cache_is_vault_unavailable(keyvault, provider):
    keyvault.create_key("sales")
    keyvault.set_throttle(1)
    with pytest.raises(VaultUnavailableError):
        provider.wrap(keyvault.key_uri("sales"), os.urandom(32))


def test_throttling_is_retried_by_the_key_cache(keyvault, provider):
    keyvault.create_key("sales")
    keyvault.set_throttle(2)  # the key check and the wrap are both throttled once
    writer = _cache(provider, keyvault.key_uri("sales"))
    data_key = writer.data_key_for_write()
    keyvault.set_throttle(1)
    reader = _cache(provider)
    assert bytes(reader.data_key_for_read(data_key.key_block).dek) == bytes(data_key.dek)
    assert len([r for r in keyvault.requests if r[2] == 429]) == 3
    assert writer.vault_calls == 3 and reader.vault_calls == 2


def test_persistent_503_fails_after_bounded_retries(keyvault, provider):
    keyvault.create_key("sales")
    keyvault.set_failure(503)
    cache = _cache(provider, keyvault.key_uri("sales"), retry_attempts=3)
    started = time.monotonic()
    with pytest.raises(VaultUnavailableError):
        cache.data_key_for_write()
    assert time.monotonic() - started < 10
    assert cache.vault_calls == 3
    assert len([r for r in keyvault.requests if r[2] == 503]) == 3


@pytest.mark.parametrize(
    "status, error",
    [
        (500, VaultUnavailableError),
        (502, VaultUnavailableError),
        (504, VaultUnavailableError),
        (401, KeyRevokedError),
        (403, KeyRevokedError),
        (404, KeyNotFoundError),
        (418, ConfigurationError),
    ],
)
def test_status_table(keyvault, provider, status, error):
    keyvault.create_key("sales")
    block = provider.wrap(keyvault.key_uri("sales"), os.urandom(32))
    keyvault.set_failure(status)
    with pytest.raises(error):
        provider.unwrap(block)


def test_sdk_errors_are_translated_at_one_boundary():
    from azure.core import exceptions as core

    from cmkfs.providers.azure_keyvault import _sdk_call

    def raising(exc):
        def call():
            raise exc

        return call

    cases = [
        (core.ServiceRequestError("connection refused"), "wrapKey", False, VaultUnavailableError, "unreachable"),
        (core.ClientAuthenticationError("no identity"), "get", False, ConfigurationError, "access token"),
        (ValueError("challenge names another resource"), "get", False, ConfigurationError, "another resource"),
        (core.AzureError("key_ops"), "wrapKey", True, ConfigurationError, "does not permit wrapKey"),
        (ValueError("decryption failed"), "unwrapKey", True, IntegrityError, "failed authentication"),
    ]
    for exc, operation, local, error, words in cases:
        with pytest.raises(error, match=words) as info:
            _sdk_call(raising(exc), operation, "https://v.vault.azure.net", "k", "1", local=local)
        assert info.value.__cause__ is exc
    for exc in (KeyRevokedError("ours already"), TypeError("not the SDK's"), ValueError("local wrap")):
        with pytest.raises(type(exc)) as info:
            _sdk_call(raising(exc), "wrapKey", "https://v.vault.azure.net", "k", "1", local=True)
        assert info.value is exc  # raised as it is


def test_stopped_vault_fails_closed(keyvault, provider):
    keyvault.create_key("sales")
    now = [1000.0]
    writer = _cache(provider, keyvault.key_uri("sales"))
    block = writer.data_key_for_write().key_block
    cache = _cache(provider, ttl=60, clock=lambda: now[0], retry_attempts=2)
    dek = bytes(cache.data_key_for_read(block).dek)
    keyvault.stop()
    assert bytes(cache.data_key_for_read(block).dek) == dek  # within the TTL the cached key is used
    now[0] += 61
    with pytest.raises(VaultUnavailableError):
        cache.data_key_for_read(block)  # expired and unconfirmable: no key, not a stale one
    with pytest.raises(VaultUnavailableError):
        provider.wrap(keyvault.key_uri("sales"), os.urandom(32))
    keyvault.start()
    assert bytes(cache.data_key_for_read(block).dek) == dek


def test_disable_stops_reads_once_the_cache_ttl_passes(keyvault, provider):
    keyvault.create_key("sales")
    now = [1000.0]
    cache = _cache(provider, keyvault.key_uri("sales"), ttl=3600, clock=lambda: now[0])
    data_key = cache.data_key_for_write()
    keyvault.disable("sales")
    now[0] += 3599
    assert cache.data_key_for_read(data_key.key_block) is data_key
    now[0] += 1
    with pytest.raises(KeyRevokedError):
        cache.data_key_for_read(data_key.key_block)
    assert data_key.snapshot() is None  # the refused key was overwritten in memory
    with pytest.raises(KeyRevokedError):
        cache.data_key_for_write()  # and no new file can be written under the key


def test_rejected_token_is_key_revoked(keyvault):
    keyvault.create_key("sales")
    options = keyvault.provider_options() | {"credential": StaticTokenCredential("not-the-token")}
    provider = AzureKeyVaultProvider(**options)
    with pytest.raises(KeyRevokedError) as info:
        provider.wrap(keyvault.key_uri("sales"), os.urandom(32))
    assert "401" in str(info.value) and "not-the-token" not in str(info.value)


def test_credential_failure_is_a_configuration_error(keyvault):
    from azure.identity import CredentialUnavailableError

    class NoCredential:
        def get_token(self, *scopes, **kwargs):
            raise CredentialUnavailableError("no identity here")

    keyvault.create_key("sales")
    provider = AzureKeyVaultProvider(**keyvault.provider_options() | {"credential": NoCredential()})
    with pytest.raises(ConfigurationError, match="access token"):
        provider.wrap(keyvault.key_uri("sales"), os.urandom(32))


def test_challenge_for_another_resource_is_refused_when_verified(keyvault):
    """With resource verification on (the default), a vault at 127.0.0.1 whose
    challenge names vault.azure.net is not trusted with a token."""
    keyvault.create_key("sales")
    provider = AzureKeyVaultProvider(**keyvault.provider_options() | {"verify_challenge_resource": True})
    with pytest.raises(ConfigurationError):
        provider.wrap(keyvault.key_uri("sales"), os.urandom(32))
    assert [r for r in keyvault.requests if r[2] != 401] == []  # no authorised request was sent


def test_untrusted_certificate_is_refused(keyvault):
    keyvault.create_key("sales")
    provider = AzureKeyVaultProvider(**keyvault.provider_options() | {"connection_verify": True})
    with pytest.raises(VaultUnavailableError):
        provider.wrap(keyvault.key_uri("sales"), os.urandom(32))
    assert keyvault.operations("wrapkey") == []


def test_missing_sdk_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "azure.keyvault.keys", None)
    provider = AzureKeyVaultProvider(credential=StaticTokenCredential("x"))
    with pytest.raises(ConfigurationError, match=r"pip install 'cmkfs\[azure\]'"):
        provider.wrap("https://contoso.vault.azure.net/keys/sales", os.urandom(32))


def test_default_credential_is_created_lazily(monkeypatch):
    provider = AzureKeyVaultProvider()  # no azure.identity import, no network
    monkeypatch.setitem(sys.modules, "azure.identity", None)
    with pytest.raises(ConfigurationError, match=r"cmkfs\[azure\]"):
        provider.wrap("https://contoso.vault.azure.net/keys/sales", os.urandom(32))


def test_cmk_filesystem_end_to_end_with_a_registered_provider(keyvault, provider):
    """The documented recipe: register a configured provider for https:// keys,
    then write and read through cmk://; disabling the key stops reads."""
    import fsspec

    from cmkfs.providers import register_provider

    keyvault.create_key("sales")
    register_provider("https://", lambda: provider)
    try:
        target = fsspec.filesystem("memory", skip_instance_cache=True)
        fs = fsspec.filesystem("cmk", fs=target, key=keyvault.key_uri("sales"), cache_ttl=0, skip_instance_cache=True)
        fs.pipe_file("/azure-e2e/data.bin", b"secret rows" * 1000)
        assert b"secret rows" not in target.cat_file("/azure-e2e/data.bin")
        assert fs.cat_file("/azure-e2e/data.bin") == b"secret rows" * 1000
        keyvault.disable("sales")
        with pytest.raises(KeyRevokedError):
            fs.cat_file("/azure-e2e/data.bin")
    finally:
        register_provider("https://", "cmkfs.providers.azure_keyvault:AzureKeyVaultProvider")


# -- local mode ---------------------------------------------------------------------------


def test_local_mode_round_trip_and_interop_with_the_vault(keyvault, provider):
    keyvault.create_key("sales")
    local = AzureKeyVaultProvider.from_jwk(keyvault.private_jwk("sales"))
    dek = os.urandom(32)
    online = provider.wrap(keyvault.key_uri("sales"), dek)
    keyvault.stop()  # local mode never touches the network
    assert bytes(local.unwrap(online)) == dek
    offline = local.wrap(keyvault.key_uri("sales"), dek)
    assert (offline.key_uri, offline.key_version) == (online.key_uri, online.key_version)
    assert bytes(local.unwrap(offline)) == dek
    info = local.describe(keyvault.key_uri("sales"))
    assert info.current_version == online.key_version and info.size_bits == 2048 and info.warnings
    keyvault.start()
    assert bytes(provider.unwrap(offline)) == dek


def test_local_mode_accepts_base64url_fields_and_refuses_what_it_cannot_do(keyvault):
    import base64

    keyvault.create_key("sales")
    jwk = keyvault.private_jwk("sales")
    text = {
        k: (base64.urlsafe_b64encode(v).rstrip(b"=").decode() if isinstance(v, bytes) else v) for k, v in jwk.items()
    }
    local = AzureKeyVaultProvider.from_jwk(text)
    block = local.wrap(jwk["kid"], b"d" * 32)
    assert bytes(local.unwrap(block)) == b"d" * 32
    bad = bytearray(block.wrapped_dek)
    bad[7] ^= 1
    with pytest.raises(IntegrityError):
        local.unwrap(replace(block, wrapped_dek=bytes(bad)))
    with pytest.raises(KeyNotFoundError):
        local.unwrap(replace(block, key_version="f" * 32))
    with pytest.raises(KeyNotFoundError):
        local.wrap(keyvault.key_uri("other"), b"d" * 32)
    public_only = AzureKeyVaultProvider.from_jwk({k: jwk[k] for k in ("kid", "kty", "n", "e")})
    assert bytes(local.unwrap(public_only.wrap(jwk["kid"], b"p" * 32))) == b"p" * 32
    with pytest.raises(ConfigurationError):
        public_only.unwrap(block)
    with pytest.raises(ConfigurationError):
        AzureKeyVaultProvider.from_jwk({k: v for k, v in jwk.items() if k != "kid"})


# -- nothing secret in the plumbing ---------------------------------------------------------


def test_no_secrets_in_repr_pickle_or_errors(keyvault, provider):
    keyvault.create_key("sales")
    dek = os.urandom(32)
    block = provider.wrap(keyvault.key_uri("sales"), dek)
    local = AzureKeyVaultProvider.from_jwk(keyvault.private_jwk("sales"))
    d_hex = keyvault.private_jwk("sales")["d"].hex()
    for item in (provider, local):
        text = repr(item)
        assert keyvault.token not in text and d_hex not in text and "credential" not in text.lower()
        with pytest.raises(TypeError):
            pickle.dumps(item)
    keyvault.disable("sales")
    with pytest.raises(KeyRevokedError) as info:
        provider.unwrap(block)
    message = str(info.value)
    assert keyvault.token not in message and dek.hex() not in message and "Bearer" not in message
    bad = bytearray(block.wrapped_dek)
    bad[0] ^= 1
    keyvault.enable("sales")
    with pytest.raises(IntegrityError) as info:
        provider.unwrap(replace(block, wrapped_dek=bytes(bad)))
    assert str(info.value) == str(IntegrityError())


# -- live vault (opt-in) ----------------------------------------------------------------------

LIVE_URL = os.environ.get("CMKFS_TEST_VAULT_URL", "")
LIVE_KEY = os.environ.get("CMKFS_TEST_VAULT_KEY", "")


@pytest.mark.skipif(
    not (LIVE_URL and LIVE_KEY),
    reason="live Azure Key Vault test: set CMKFS_TEST_VAULT_URL (https://VAULT.vault.azure.net) and "
    "CMKFS_TEST_VAULT_KEY (an RSA key name with get/wrapKey/unwrapKey) and sign in (az login or a managed identity)",
)
class TestLiveAzureKeyVault:
    """Runs only against a real vault named in the environment; never in the default run."""

    @pytest.fixture
    def live(self):
        provider = AzureKeyVaultProvider()
        yield provider, f"{LIVE_URL.rstrip('/')}/keys/{LIVE_KEY}"
        provider.close()

    def test_round_trip_and_describe(self, live):
        provider, key_uri = live
        dek = os.urandom(32)
        block = provider.wrap(key_uri, dek)
        assert bytes(provider.unwrap(block)) == dek
        info = provider.describe(key_uri)
        assert info.enabled and info.current_version == block.key_version

    def test_tampered_wrapped_key_is_an_integrity_error(self, live):
        provider, key_uri = live
        block = provider.wrap(key_uri, os.urandom(32))
        bad = bytearray(block.wrapped_dek)
        bad[len(bad) // 2] ^= 1
        with pytest.raises(IntegrityError):
            provider.unwrap(replace(block, wrapped_dek=bytes(bad)))

    def test_missing_key_is_not_found(self, live):
        provider, key_uri = live
        with pytest.raises(KeyNotFoundError):
            provider.wrap(key_uri + "-cmkfs-missing", os.urandom(32))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_builds_its_own_clients(keyvault, provider):
    """A child must not talk over its parent's keep-alive TLS connections."""
    keyvault.create_key("sales")
    dek = os.urandom(32)
    block = provider.wrap(keyvault.key_uri("sales"), dek)
    parents = list(provider._crypto_clients.values())  # kept alive, so a new client cannot reuse an id
    assert parents
    pid = os.fork()
    if pid == 0:  # the child: report through the exit status only
        code = 1
        try:
            again = provider.wrap(keyvault.key_uri("sales"), dek)
            ok = bytes(provider.unwrap(again)) == dek and bytes(provider.unwrap(block)) == dek
            fresh = all(c not in parents for c in provider._crypto_clients.values())
            code = 0 if ok and fresh else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert bytes(provider.unwrap(block)) == dek  # the parent's clients still work
    assert list(provider._crypto_clients.values())[0] is parents[0]


@pytest.mark.parametrize("uri", ["https://[/keys/x", "https://v.vault.azure.net:99999/keys/x"])
def test_unparsable_configured_vault_url_is_a_configuration_error(uri):
    with pytest.raises(ConfigurationError):
        parse_key_uri(uri)
    with pytest.raises(ConfigurationError):
        KeyCache(uri)


# -- failing fast: the preflight before the first vault call --------------------------------------

from tests.azure_isolation import closed_port, no_azure_credentials  # noqa: E402,F401 - closed_port; a fixture


@pytest.mark.usefixtures("no_azure_credentials")
def test_no_credential_fails_within_seconds_in_one_line(keyvault):
    keyvault.create_key("sales")
    # DefaultAzureCredential, with nothing to sign in with: every source fails on this machine.
    provider = AzureKeyVaultProvider(connection_verify=keyvault.verify, verify_challenge_resource=False)
    start = time.monotonic()
    try:
        with pytest.raises(ConfigurationError) as info:
            provider.describe(keyvault.key_uri("sales"))
    finally:
        provider.close()
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert "\n" not in message
    assert keyvault.url in message and "az login" in message and "AZURE_CLIENT_ID" in message
    assert keyvault.operations("sales") == []  # refused before the first real request


@pytest.mark.usefixtures("no_azure_credentials")
@pytest.mark.parametrize("kind", ["cli", "environment", "managed_identity"])
def test_named_credentials_fail_fast_too(keyvault, kind):
    keyvault.create_key("sales")
    provider = AzureKeyVaultProvider(kind, connection_verify=keyvault.verify, verify_challenge_resource=False)
    start = time.monotonic()
    try:
        with pytest.raises(ConfigurationError, match="could not get an Azure access token"):
            provider.wrap(keyvault.key_uri("sales"), os.urandom(32))
    finally:
        provider.close()
    assert time.monotonic() - start < 10


def test_unknown_credential_name_is_refused():
    with pytest.raises(ConfigurationError, match="managed_identity"):
        AzureKeyVaultProvider("magic")


@pytest.mark.usefixtures("no_azure_credentials")
def test_unreachable_vault_is_unavailable_within_seconds():
    provider = AzureKeyVaultProvider(credential=StaticTokenCredential("x"))
    uri = f"https://127.0.0.1:{closed_port()}/keys/sales"
    start = time.monotonic()
    with pytest.raises(VaultUnavailableError, match="cannot reach Azure Key Vault https://127.0.0.1"):
        provider.describe(uri)
    assert time.monotonic() - start < 10


# -- provider options from configuration ---------------------------------------------------------


@pytest.fixture
def injected_credential(keyvault):
    """Serve https:// keys with the fake vault's token: every other option comes from configuration."""
    from cmkfs.providers.base import register_provider

    seen: list[dict] = []

    def factory(**options):
        seen.append(options)
        return AzureKeyVaultProvider(credential=keyvault.credential, **options)

    register_provider("https://", factory)
    yield seen
    register_provider("https://", "cmkfs.providers.azure_keyvault:AzureKeyVaultProvider")


def test_policy_and_filesystem_options_reach_the_provider(keyvault, injected_credential):
    from cmkfs.providers.base import configure_providers, provider_factory

    keyvault.create_key("sales")
    configure_providers({"azure": {"client_options": {"read_timeout": 7}, "min_key_size": 1024}})
    try:
        providers = provider_factory(
            {"azure": {"verify_challenge_resource": False}},
            policy_azure={"connection_verify": keyvault.verify, "min_key_size": 2048},
        )
        info = providers(keyvault.key_uri("sales")).describe(keyvault.key_uri("sales"))
    finally:
        configure_providers(None)
    assert info.enabled
    assert injected_credential[-1] == {
        "client_options": {"read_timeout": 7},
        "min_key_size": 2048,  # the policy's wins over the process default
        "connection_verify": keyvault.verify,
        "verify_challenge_resource": False,  # the filesystem's option
    }


def test_without_the_configured_ca_the_vault_is_not_trusted(keyvault, injected_credential):
    from cmkfs.providers.base import provider_factory

    keyvault.create_key("sales")
    providers = provider_factory({"azure": {"verify_challenge_resource": False, "client_options": {"x": 1}}})
    with pytest.raises(VaultUnavailableError):
        providers(keyvault.key_uri("sales")).describe(keyvault.key_uri("sales"))


@pytest.mark.parametrize("bad", [{"azure": {"credential": object()}}, {"azure": "cli"}, {"azure": {"x": [1]}}])
def test_only_plain_values_travel_in_provider_options(bad):
    from cmkfs.providers.base import provider_factory

    with pytest.raises(ConfigurationError):
        provider_factory(bad)


# -- key management: rotate, disable, enable, list -----------------------------------------------


def test_rotate_creates_a_new_version_in_the_vault(keyvault, provider):
    first = keyvault.create_key("sales")
    uri = keyvault.key_uri("sales")
    block = provider.wrap(uri, b"k" * 32)
    version = provider.rotate(uri)
    assert version != first
    info = provider.describe(uri)
    assert info.current_version == version and info.versions == (first, version) and info.size_bits == 2048
    assert provider.wrap(uri, b"k" * 32).key_version == version
    assert bytes(provider.unwrap(block)) == b"k" * 32  # the old version still unwraps


def test_disable_and_enable_every_version_in_the_vault(keyvault, provider):
    keyvault.create_key("sales")
    keyvault.rotate("sales")
    uri = keyvault.key_uri("sales")
    block = provider.wrap(uri, b"k" * 32)
    assert len(provider.set_enabled(uri, False)) == 2
    with pytest.raises(KeyRevokedError):
        provider.unwrap(block)
    assert not provider.describe(uri).enabled
    provider.set_enabled(uri, True)
    assert bytes(provider.unwrap(block)) == b"k" * 32


def test_disable_one_version(keyvault, provider):
    old = keyvault.create_key("sales")
    keyvault.rotate("sales")
    assert provider.set_enabled(keyvault.key_uri("sales", old), False) == (old,)
    assert provider.describe(keyvault.key_uri("sales")).enabled  # the current version is untouched


def test_list_keys(keyvault, provider):
    keyvault.create_key("sales")
    keyvault.create_key("hr")
    assert provider.list_keys(keyvault.url) == [keyvault.key_uri("hr"), keyvault.key_uri("sales")]


def test_local_jwks_cannot_be_managed(keyvault):
    keyvault.create_key("sales")
    local = AzureKeyVaultProvider.from_jwk(keyvault.private_jwk("sales"))
    from cmkfs.errors import UnsupportedOperationError

    with pytest.raises(UnsupportedOperationError):
        local.rotate(keyvault.key_uri("sales"))
