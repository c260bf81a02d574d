"""The PKCS#11 provider against a real SoftHSM2 token (tests/services/softhsm.py)."""

from __future__ import annotations

import io
import os
import sys
import threading
import uuid
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding

from cmkfs.errors import (
    ConfigurationError,
    IntegrityError,
    KeyNotFoundError,
    KeyRevokedError,
    VaultUnavailableError,
)
from cmkfs.format import WrapAlgorithm
from cmkfs.keycache import KeyCache
from cmkfs.providers.base import provider_for, split_key_uri
from cmkfs.providers.pkcs11 import PKCS11Provider, parse_pkcs11_uri
from cmkfs.stream import BytesSource, DecryptingReader, EncryptingWriter

from .provider_contract import ProviderContract

try:
    import pkcs11
except ImportError:  # reported by the fixture below, never skipped silently
    pkcs11 = None

RSA_TEST_BITS = 2048  # keygen time; the provider defaults to 3072


def _label(prefix: str = "k") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(autouse=True)
def needs_python_pkcs11():
    if pkcs11 is None:
        pytest.fail("python-pkcs11 is not installed: pip install 'cmkfs[hsm]'", pytrace=False)


@pytest.fixture(scope="session")
def hsm_provider(softhsm):
    provider = softhsm.provider()
    yield provider
    provider.close()


class _Backend:
    def __init__(self, provider, key_uri, other_key_uri, missing_key_uri):
        self.provider = provider
        self.key_uri = key_uri
        self.other_key_uri = other_key_uri
        self.missing_key_uri = missing_key_uri

    def disable(self):
        self.provider.disable(self.key_uri)

    def enable(self):
        self.provider.enable(self.key_uri)

    def rotate(self):
        return self.provider.rotate(self.key_uri)


def _backend(softhsm, provider, algorithm):
    kw = {"algorithm": algorithm, "rsa_bits": RSA_TEST_BITS}
    key = provider.create_key(softhsm.token_label, _label(algorithm), **kw)
    other = provider.create_key(softhsm.token_label, _label(algorithm), **kw)
    return _Backend(provider, key, other, softhsm.key_uri(_label("missing")))


class TestPKCS11AESContract(ProviderContract):
    @pytest.fixture
    def backend(self, softhsm, hsm_provider):
        return _backend(softhsm, hsm_provider, "aes")


@pytest.fixture(scope="module")
def rsa_backend(softhsm, hsm_provider):
    return _backend(softhsm, hsm_provider, "rsa")  # RSA key generation is slow: one pair per module


class TestPKCS11RSAContract(ProviderContract):
    @pytest.fixture
    def backend(self, rsa_backend):
        return rsa_backend


@pytest.fixture
def aes_key(softhsm, hsm_provider):
    return hsm_provider.create_key(softhsm.token_label, _label())


# -- the HSM side ---------------------------------------------------------------


def test_key_block_names_canonical_uri_and_algorithm(softhsm, hsm_provider, aes_key):
    block = hsm_provider.wrap(aes_key, os.urandom(32))
    assert block.wrap_alg == WrapAlgorithm.A256KWP
    assert block.key_uri == f"pkcs11:token={softhsm.token_label};object={parse_pkcs11_uri(aes_key).object}"
    assert block.key_version == "1"
    assert len(block.wrapped_dek) == 40


def test_key_attributes_are_non_extractable_and_sensitive(hsm_provider, aes_key):
    a = pkcs11.Attribute
    with hsm_provider.open_session(aes_key) as session:
        (key,) = session.get_objects({a.LABEL: parse_pkcs11_uri(aes_key).object})
        assert key[a.EXTRACTABLE] is False
        assert key[a.SENSITIVE] is True
        assert key[a.WRAP] is True and key[a.UNWRAP] is True
        assert key[a.ENCRYPT] is False and key[a.DECRYPT] is False
        assert key[a.TOKEN] is True and key[a.ID] == b"1"
        with pytest.raises(pkcs11.AttributeSensitive):
            key[a.VALUE]
        with pytest.raises(pkcs11.PKCS11Error):
            key[a.EXTRACTABLE] = True  # a one-way attribute: the key can never be exported
    info = hsm_provider.describe(aes_key)
    assert info.warnings == () and info.size_bits == 256 and info.enabled


def test_wrap_equals_rfc5649(softhsm, hsm_provider):
    """Cross-check the HSM's wrap against pyca/cryptography with a test-only known KEK."""
    kek = os.urandom(32)
    label = _label("known")
    a = pkcs11.Attribute
    with hsm_provider.open_session(softhsm.key_uri(label)) as session:
        session.create_object(
            {
                a.CLASS: pkcs11.ObjectClass.SECRET_KEY,
                a.KEY_TYPE: pkcs11.KeyType.AES,
                a.VALUE: kek,
                a.TOKEN: True,
                a.LABEL: label,
                a.ID: b"1",
                a.WRAP: True,
                a.UNWRAP: True,
                a.EXTRACTABLE: True,
                a.SENSITIVE: False,
            }
        )
    uri = softhsm.key_uri(label)
    for dek in (os.urandom(32), bytes(32), bytearray(os.urandom(32)), memoryview(os.urandom(32))):
        block = hsm_provider.wrap(uri, dek)
        assert block.wrapped_dek == aes_key_wrap_with_padding(kek, bytes(dek))
        assert bytes(hsm_provider.unwrap(block)) == bytes(dek)
    assert any("extractable" in w for w in hsm_provider.describe(uri).warnings)


@pytest.mark.parametrize("cut", [1, 8, 39])
def test_short_or_empty_wrapped_key_is_integrity_error(hsm_provider, aes_key, cut):
    block = hsm_provider.wrap(aes_key, os.urandom(32))
    with pytest.raises(IntegrityError):
        hsm_provider.unwrap(replace(block, wrapped_dek=block.wrapped_dek[:cut]))
    with pytest.raises(IntegrityError):
        hsm_provider.unwrap(replace(block, wrapped_dek=b""))


def test_tampered_rsa_or_swapped_algorithm_is_refused(hsm_provider, aes_key):
    block = hsm_provider.wrap(aes_key, os.urandom(32))
    with pytest.raises(KeyNotFoundError):  # no RSA pair under that label
        hsm_provider.unwrap(replace(block, wrap_alg=WrapAlgorithm.RSA_OAEP_SHA1))
    with pytest.raises(ConfigurationError):
        hsm_provider.unwrap(replace(block, wrap_alg=WrapAlgorithm.A256GCM))


def test_versions_rotate_select_and_describe(hsm_provider, aes_key):
    dek = os.urandom(32)
    v1 = hsm_provider.wrap(aes_key, dek)
    assert hsm_provider.rotate(aes_key) == "2"
    assert hsm_provider.rotate(aes_key) == "3"
    info = hsm_provider.describe(aes_key)
    assert (info.current_version, info.versions, info.enabled) == ("3", ("1", "2", "3"), True)
    pinned = hsm_provider.wrap(aes_key + "?version=2", dek)
    assert pinned.key_version == "2" and "version" not in pinned.key_uri
    # Disabling only the newest version makes the previous one current.
    hsm_provider.disable(aes_key + "?version=3")
    assert hsm_provider.describe(aes_key).current_version == "2"
    assert hsm_provider.wrap(aes_key, dek).key_version == "2"
    with pytest.raises(KeyRevokedError):
        hsm_provider.wrap(aes_key + "?version=3", dek)
    for block in (v1, pinned):
        assert bytes(hsm_provider.unwrap(block)) == dek
    with pytest.raises(KeyNotFoundError):
        hsm_provider.unwrap(replace(v1, key_version="9"))


def test_disable_is_enforced_by_the_hsm_for_every_client(softhsm, hsm_provider, aes_key):
    block = hsm_provider.wrap(aes_key, os.urandom(32))
    a = pkcs11.Attribute
    with hsm_provider.open_session(aes_key) as session:
        (key,) = session.get_objects({a.LABEL: parse_pkcs11_uri(aes_key).object})
    hsm_provider.disable(aes_key)
    with hsm_provider.open_session(aes_key):
        assert key[a.WRAP] is False and key[a.UNWRAP] is False
        # A handle looked up before the disable: the token itself refuses it.
        with pytest.raises(pkcs11.PKCS11Error, match="0x68"):  # CKR_KEY_FUNCTION_NOT_PERMITTED
            key.unwrap_key(
                pkcs11.ObjectClass.SECRET_KEY,
                pkcs11.KeyType.AES,
                block.wrapped_dek,
                mechanism=pkcs11.Mechanism.AES_KEY_WRAP_PAD,
            )
    with pytest.raises(KeyRevokedError):
        hsm_provider.unwrap(block)
    assert hsm_provider.describe(aes_key).enabled is False


def test_permission_codes_translate_to_key_revoked():
    from cmkfs.providers.pkcs11.errors import translate

    for code in (0x68, 0x1B):
        err = translate(pkcs11.PKCS11Error(f"Unmapped error code {hex(code)}"), "key k")
        assert isinstance(err, KeyRevokedError)
    assert isinstance(translate(pkcs11.PinLocked(), "key k"), KeyRevokedError)
    assert isinstance(translate(pkcs11.PinIncorrect(), "key k"), ConfigurationError)
    assert isinstance(translate(pkcs11.DeviceError(), "key k"), VaultUnavailableError)
    assert isinstance(translate(pkcs11.WrappedKeyInvalid(), "key k", unwrapping=True), IntegrityError)
    assert isinstance(translate(pkcs11.WrappedKeyInvalid(), "key k"), VaultUnavailableError)
    assert (
        str(translate(pkcs11.MechanismInvalid(), "key k")) == "the token cannot do this with key k (MechanismInvalid)"
    )


def test_error_table_names_python_pkcs11_classes():
    # The table is keyed by class name: a class renamed in python-pkcs11 must fail here, not go unmatched.
    from cmkfs.providers.pkcs11 import errors

    names = {key for key in errors.ERRORS if isinstance(key, str)}
    names |= errors.PIN_REJECTED | errors.SESSION_LOST | errors.BAD_WRAPPED_KEY
    for name in names:
        assert issubclass(getattr(pkcs11, name), pkcs11.PKCS11Error), name


def test_destroyed_key_is_not_found(hsm_provider, aes_key):
    block = hsm_provider.wrap(aes_key, os.urandom(32))
    hsm_provider.destroy(aes_key)
    with pytest.raises(KeyNotFoundError):
        hsm_provider.unwrap(block)
    with pytest.raises(KeyNotFoundError):
        hsm_provider.describe(aes_key)


def test_create_refuses_an_existing_label(softhsm, hsm_provider, aes_key):
    with pytest.raises(ConfigurationError, match="already exists"):
        hsm_provider.create_key(softhsm.token_label, parse_pkcs11_uri(aes_key).object)


def test_missing_token_is_not_found(softhsm, hsm_provider):
    with pytest.raises(KeyNotFoundError, match="no PKCS#11 token"):
        hsm_provider.wrap("pkcs11:token=no-such-token;object=k", os.urandom(32))


def test_wrong_pin_is_a_clear_error_without_the_pin(softhsm, hsm_provider, aes_key):
    wrong = "wrong-" + uuid.uuid4().hex
    # While this process is logged in, a second PIN cannot be checked by the token.
    other = softhsm.provider(pin=wrong)
    try:
        with pytest.raises(ConfigurationError, match="different PIN") as err:
            other.wrap(aes_key, os.urandom(32))
        assert wrong not in str(err.value)
    finally:
        other.close()
    # Logged out: the token itself rejects the PIN, and it is not tried a second time.
    from cmkfs.providers.pkcs11 import close_sessions

    close_sessions()
    other = softhsm.provider(pin=wrong)
    try:
        with pytest.raises(ConfigurationError, match="PIN") as err:
            other.wrap(aes_key, os.urandom(32))
        assert isinstance(err.value.__cause__, pkcs11.PinIncorrect)
        assert wrong not in str(err.value) and softhsm.user_pin not in str(err.value)
        with pytest.raises(ConfigurationError, match="not trying it again") as again:
            other.describe(aes_key)
        assert again.value.__cause__ is None
        assert wrong not in repr(other) and "pin" not in repr(other).lower()
    finally:
        other.close()
    assert bytes(hsm_provider.unwrap(hsm_provider.wrap(aes_key, bytes(32)))) == bytes(32)


# python-pkcs11 0.10 finalises the failed search on the dead session from a
# destructor, which raises there; the provider has already reopened by then.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_lost_session_is_reopened(hsm_provider, aes_key):
    dek = os.urandom(32)
    block = hsm_provider.wrap(aes_key, dek)
    with hsm_provider.open_session(aes_key) as session:
        session.close()  # the HSM forgets the session and the login under the provider's feet
    assert bytes(hsm_provider.unwrap(block)) == dek


def test_concurrent_wraps_and_unwraps(hsm_provider, aes_key):
    errors = []

    def worker():
        try:
            for _ in range(40):
                dek = os.urandom(32)
                assert bytes(hsm_provider.unwrap(hsm_provider.wrap(aes_key, dek))) == dek
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_header_uri_cannot_choose_a_module_or_pin_file(hsm_provider, aes_key, tmp_path):
    block = hsm_provider.wrap(aes_key, os.urandom(32))
    for extra in ("?module-path=/tmp/evil.so", f"?pin-source={tmp_path}/pin", "?pin-value=1234"):
        with pytest.raises(ConfigurationError, match="query attributes"):
            hsm_provider.unwrap(replace(block, key_uri=block.key_uri + extra))


def test_uri_options_bind_module_and_pin_source(softhsm, tmp_path, aes_key):
    pin_file = tmp_path / "pin"
    pin_file.write_text(softhsm.user_pin + "\n")
    provider = PKCS11Provider(module="/nonexistent/libnothing.so")  # no PIN, wrong module
    try:
        with pytest.raises(ConfigurationError, match="no PIN"):
            provider.wrap(aes_key, os.urandom(32))
        configured = f"{aes_key}?module-path={softhsm.module}&pin-source=file://{pin_file}"
        block = provider.wrap(configured, bytes(range(32)))
        assert block.key_uri == provider.canonical_uri(aes_key)  # no module path, no PIN source
        assert "?" not in block.key_uri
        # The header's bare URI reads back through the binding learnt from the configured URI.
        assert bytes(provider.unwrap(block)) == bytes(range(32))
        assert softhsm.user_pin not in repr(provider)
    finally:
        provider.close()


def test_missing_module_is_a_configuration_error(softhsm, aes_key):
    provider = PKCS11Provider(module="/nonexistent/libnothing.so", pin="0000")
    with pytest.raises(ConfigurationError, match="libnothing.so"):
        provider.describe(aes_key)
    assert "0000" not in repr(provider)


def test_missing_python_pkcs11_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pkcs11", None)  # what an uninstalled package looks like to import
    with pytest.raises(ConfigurationError, match=r"pip install 'cmkfs\[hsm\]'"):
        PKCS11Provider()


# -- through the key cache and the engine --------------------------------------------


def _encrypt(keys, data: bytes) -> bytes:
    sink = io.BytesIO()
    with EncryptingWriter(sink, keys, segment_size=4096, threads=1) as writer:
        for i in range(0, len(data), 1000):
            writer.write(data[i : i + 1000])
    return sink.getvalue()


def _decrypt(keys, blob: bytes) -> bytes:
    with DecryptingReader(BytesSource(blob), keys, threads=1) as reader:
        return reader.read(0, -1)


def test_keycache_round_trips_a_file(hsm_provider, aes_key):
    cache = KeyCache(aes_key, providers=lambda uri: hsm_provider)
    data = os.urandom(3 * 4096 + 17)
    blob = _encrypt(cache, data)
    reader_cache = KeyCache(None, providers=lambda uri: hsm_provider)
    assert _decrypt(reader_cache, blob) == data
    assert reader_cache.vault_calls == 1
    assert _decrypt(reader_cache, blob) == data  # cached: no second HSM call
    assert reader_cache.vault_calls == 1


def test_disable_reaches_readers_through_keycache(hsm_provider, aes_key):
    now = [0.0]
    cache = KeyCache(aes_key, ttl=60, clock=lambda: now[0], providers=lambda uri: hsm_provider)
    data = b"quarterly numbers" * 500
    blob = _encrypt(cache, data)
    hsm_provider.disable(aes_key)
    try:
        assert _decrypt(cache, blob) == data  # inside the TTL nobody asked the HSM: the promise is "within the TTL"
        now[0] = 61.0
        with pytest.raises(KeyRevokedError):
            _decrypt(cache, blob)
        with pytest.raises(KeyRevokedError):
            _encrypt(cache, b"more")
        with pytest.raises(KeyRevokedError):
            _decrypt(KeyCache(None, providers=lambda uri: hsm_provider), blob)
    finally:
        hsm_provider.enable(aes_key)
    assert _decrypt(KeyCache(None, providers=lambda uri: hsm_provider), blob) == data


def test_revocation_seen_by_one_cache_stops_every_cache(hsm_provider, aes_key):
    warm = KeyCache(aes_key, ttl=600, providers=lambda uri: hsm_provider)
    blob = _encrypt(warm, b"x" * 9000)
    hsm_provider.disable(aes_key)
    try:
        with pytest.raises(KeyRevokedError):
            _decrypt(KeyCache(None, providers=lambda uri: hsm_provider), blob)
        with pytest.raises(KeyRevokedError):  # its cached DEK was wiped when the HSM said no
            _decrypt(warm, blob)
    finally:
        hsm_provider.enable(aes_key)


def test_registry_provider_from_environment(softhsm, aes_key, monkeypatch):
    monkeypatch.setenv("CMKFS_PKCS11_MODULE", softhsm.module)
    monkeypatch.setenv("CMKFS_PKCS11_PIN", softhsm.user_pin)
    provider = provider_for(aes_key)
    assert isinstance(provider, PKCS11Provider)
    cache = KeyCache(aes_key)  # the default: providers chosen by URI
    assert _decrypt(KeyCache(None), _encrypt(cache, b"x" * 5000)) == b"x" * 5000
    assert softhsm.user_pin not in repr(provider)


# -- URI parsing (no HSM) ----------------------------------------------------------


def test_uri_percent_encoding_round_trip():
    uri = parse_pkcs11_uri("pkcs11:token=My%20Token%3Bx;object=caf%C3%A9%2Fkey")
    assert (uri.token, uri.object) == ("My Token;x", "café/key")
    assert uri.canonical == "pkcs11:token=My%20Token%3Bx;object=caf%C3%A9%2Fkey"
    assert parse_pkcs11_uri(uri.canonical) == uri
    assert parse_pkcs11_uri("pkcs11:object=o;token=t").canonical == "pkcs11:token=t;object=o"


def test_uri_query_attributes():
    uri = parse_pkcs11_uri(
        "pkcs11:token=t;object=o;type=secret-key?module-path=/opt/hsm/lib%20x.so&pin-value=12%2634&version=4"
    )
    assert uri.module_path == "/opt/hsm/lib x.so"
    assert uri.pin_value == "12&34"
    assert uri.version == "4" and uri.type == "secret-key"
    assert "12&34" not in repr(uri) and "12&34" not in uri.canonical
    assert uri.canonical == "pkcs11:token=t;object=o;type=secret-key"
    assert split_key_uri("pkcs11:token=t;object=o?version=4") == ("pkcs11:token=t;object=o", "4")


@pytest.mark.parametrize(
    "bad",
    [
        "pkcs11:token=t",
        "pkcs11:object=o",
        "pkcs11:token=;object=o",
        "pkcs11:token=t;object=o;serial=1",
        "pkcs11:token=t;object=o?module-name=softhsm2",
        "pkcs11:token=t;object=o?pin-source=/a&pin-value=b",
        "pkcs11:token=t%2;object=o",
        "pkcs11:token=t%FF;object=o",
        "pkcs11:token=t;token=u;object=o",
        "pkcs11:token=t;object=o;type=cert",
        "pkcs11:token=t;object=o?version=latest",
        "pkcs11:token=t;object=o;id",
        "local://x",
    ],
)
def test_bad_uris_are_configuration_errors(bad):
    with pytest.raises(ConfigurationError):
        parse_pkcs11_uri(bad)


def test_pin_source_file_and_errors(tmp_path):
    from cmkfs.providers.pkcs11.sessions import read_pin_source

    path = tmp_path / "pin"
    path.write_text("s3cret\r\n")
    assert read_pin_source(str(path)) == "s3cret"
    assert read_pin_source(f"file://{path}") == "s3cret"
    with pytest.raises(ConfigurationError) as err:
        read_pin_source(str(tmp_path / "absent"))
    assert "s3cret" not in str(err.value)
    with pytest.raises(ConfigurationError):
        read_pin_source("|/usr/bin/pin-helper")
    with pytest.raises(ConfigurationError):
        read_pin_source("https://example.com/pin")


def test_unavailable_error_type_is_retryable():
    # The key cache retries only VaultUnavailableError; PIN and permission errors must not be it.
    assert not issubclass(ConfigurationError, VaultUnavailableError)
    assert not issubclass(KeyRevokedError, VaultUnavailableError)
