"""The strict-TTL key cache over the real embedded vault, on an injected clock.

What is promised: a DEK is usable for at most ``ttl`` after the vault last
confirmed it (use never extends it, every get checks it), writes share one
DEK across many files, a revoked key stops fresh caches at once and running
caches, open readers and open writers at their next segment after the TTL,
and an unreachable vault never makes an expired key usable.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import time

import pytest

from cmkfs.errors import ConfigurationError, IntegrityError, KeyNotFoundError, KeyRevokedError, VaultUnavailableError
from cmkfs.format import ContentClass, KeyBlock
from cmkfs.keycache import DEFAULT_CACHE_TTL, MAX_CACHE_TTL, KeyCache, check_ttl, purge_key
from cmkfs.keys import DataKey
from cmkfs.providers import base
from cmkfs.providers.base import KeyProvider, register_provider
from cmkfs.providers.local import LocalVaultProvider
from cmkfs.stream import BytesSource, DecryptingReader, EncryptingWriter, decrypt_bytes, encrypt_bytes
from tests._helpers_core import FakeClock

SEG = 4096
KEY = "local://k"


class RelayVault(KeyProvider):
    """The real vault, behind a link that can go down or be slow.

    Used only where no real embedded vault can be made unreachable: it raises
    VaultUnavailableError, as a remote provider does on a timeout.
    """

    prefixes = ("local://",)

    def __init__(self, inner: KeyProvider, clock: FakeClock | None = None) -> None:
        self.inner = inner
        self.clock = clock
        self.down_for = 0  # the next N calls fail; -1: down until further notice
        self.delay = 0.0  # fake seconds each call takes
        self.attempts = 0

    def _link(self) -> None:
        self.attempts += 1
        if self.clock is not None:
            self.clock.advance(self.delay)
        if self.down_for:
            self.down_for -= 1 if self.down_for > 0 else 0
            raise VaultUnavailableError("vault timed out")

    def wrap(self, key_uri, dek):
        self._link()
        return self.inner.wrap(key_uri, dek)

    def unwrap(self, key_block):
        self._link()
        return self.inner.unwrap(key_block)

    def describe(self, key_uri):
        return self.inner.describe(key_uri)


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def vault(isolated_cmkfs_home):
    vault = LocalVaultProvider(isolated_cmkfs_home)
    vault.create("k")
    vault.create("other")
    return vault


@pytest.fixture
def make_cache(vault, clock):
    def make(key_uri=KEY, *, ttl=60, **kw):
        kw.setdefault("providers", lambda uri: vault)
        return KeyCache(key_uri, ttl=ttl, clock=kw.pop("clock", clock), **kw)

    return make


def big_file(cache, segments: int = 10) -> tuple[bytes, bytes]:
    plain = os.urandom(SEG * segments - 100)
    return plain, encrypt_bytes(plain, cache, segment_size=SEG)


# -- TTL bounds ------------------------------------------------------------------


def test_ttl_default_and_limit():
    assert KeyCache().ttl == DEFAULT_CACHE_TTL <= 900
    assert KeyCache(ttl=MAX_CACHE_TTL).ttl == 3600
    assert KeyCache(ttl=0).ttl == 0
    for bad in (3600.001, 3601, 86400, -1, math.nan, math.inf, "60", None, True):
        with pytest.raises(ConfigurationError):
            KeyCache(ttl=bad)
        with pytest.raises(ConfigurationError):
            check_ttl(bad)


# -- expiry ------------------------------------------------------------------------


def test_expiry_counts_from_vault_confirmation_and_use_never_extends_it(make_cache, vault, clock):
    block = vault.wrap(KEY, os.urandom(32))
    cache = make_cache(ttl=60)
    key = cache.data_key_for_read(block)
    assert key.expires_at == clock.now + 60 and cache.vault_calls == 1
    for _ in range(59):
        clock.advance(1)
        assert cache.data_key_for_read(block) is key  # served from cache, deadline unchanged
    assert key.expires_at == 1060 and cache.vault_calls == 1
    clock.advance(0.999)
    assert cache.data_key_for_read(block) is key
    clock.advance(0.001)  # exactly ttl after confirmation: expired
    fresh = cache.data_key_for_read(block)
    assert fresh is not key and cache.vault_calls == 2 and fresh.expires_at == clock.now + 60
    assert key.snapshot() is None  # the expired copy was overwritten
    assert bytes(key.dek) == bytes(32)


def test_deadline_starts_before_a_slow_vault_call(vault, clock):
    relay = RelayVault(vault, clock)
    relay.delay = 5.0  # the vault takes five seconds to answer
    cache = KeyCache(KEY, ttl=60, clock=clock, providers=lambda uri: relay)
    start = clock.now
    key = cache.data_key_for_write()
    assert clock.now == start + 5
    assert key.expires_at == start + 60  # measured from before the call, never after


def test_ttl_zero_asks_the_vault_every_time(make_cache, vault):
    block = vault.wrap(KEY, os.urandom(32))
    cache = make_cache(ttl=0)
    for _i in range(3):
        cache.data_key_for_read(block)
    assert cache.vault_calls == 3


# -- writes share a DEK --------------------------------------------------------------


def test_many_files_one_vault_call(make_cache):
    writer = make_cache(ttl=600)
    files = [encrypt_bytes(b"row %d" % i, writer, segment_size=SEG) for i in range(200)]
    assert writer.vault_calls == 1
    reader = make_cache(ttl=600)
    assert [decrypt_bytes(f, reader) for f in files] == [b"row %d" % i for i in range(200)]
    assert reader.vault_calls == 1  # one wrapped DEK, unwrapped once
    salts = {DecryptingReader(BytesSource(f), reader).header.params.salt for f in files[:50]}
    assert len(salts) == 50  # each file still derives its own key


def test_write_dek_rolls_after_max_files(make_cache):
    cache = make_cache(ttl=600, max_files_per_dek=10)
    blocks = [EncryptingWriter(io.BytesIO(), cache, segment_size=SEG).header.key_block for _ in range(35)]
    assert cache.vault_calls == 4
    assert len({b.wrapped_dek for b in blocks}) == 4


def test_write_dek_rolls_after_ttl(make_cache, clock):
    cache = make_cache(ttl=60)
    first = cache.data_key_for_write()
    clock.advance(59)
    assert cache.data_key_for_write() is first
    clock.advance(1)
    second = cache.data_key_for_write()
    assert second is not first and cache.vault_calls == 2
    assert second.key_block.wrapped_dek != first.key_block.wrapped_dek


def test_rotation_reaches_writers_when_their_dek_rolls(make_cache, vault, clock):
    cache = make_cache(ttl=60)
    old_file = encrypt_bytes(b"old", cache)
    assert cache.data_key_for_write().key_block.key_version == "1"
    vault.rotate("k")
    assert make_cache().data_key_for_write().key_block.key_version == "2"  # a fresh cache: at once
    clock.advance(60)
    new_file = encrypt_bytes(b"new", cache)  # a running cache: when its DEK rolls
    assert DecryptingReader(BytesSource(new_file), cache).header.key_block.key_version == "2"
    assert decrypt_bytes(old_file, make_cache()) == b"old"


# -- revocation ------------------------------------------------------------------------


def test_fresh_cache_is_refused_at_once(make_cache, vault):
    data = encrypt_bytes(b"secret", make_cache())
    vault.disable("k")
    fresh = make_cache()
    with pytest.raises(KeyRevokedError):
        decrypt_bytes(data, fresh)
    with pytest.raises(KeyRevokedError):
        encrypt_bytes(b"more", fresh)
    vault.enable("k")
    assert decrypt_bytes(data, fresh) == b"secret"


def test_running_cache_is_refused_after_the_ttl(make_cache, vault, clock):
    cache = make_cache(ttl=60)
    data = encrypt_bytes(b"secret", cache)
    assert decrypt_bytes(data, cache) == b"secret"
    vault.disable("k")
    clock.advance(59)
    assert decrypt_bytes(data, cache) == b"secret"  # the documented window: at most the TTL
    clock.advance(1)
    with pytest.raises(KeyRevokedError):
        decrypt_bytes(data, cache)
    with pytest.raises(KeyRevokedError):
        encrypt_bytes(b"more", cache)  # writes too
    with pytest.raises(KeyRevokedError):
        cache.data_key_for_write()
    vault.enable("k")  # enable restores the same cache
    assert decrypt_bytes(data, cache) == b"secret"
    assert decrypt_bytes(encrypt_bytes(b"more", cache), cache) == b"more"


@pytest.mark.parametrize("threads", [1, 2])
def test_open_reader_is_refused_at_its_next_segment(make_cache, vault, clock, threads):
    writer_cache = make_cache(ttl=60)
    plain, data = big_file(writer_cache, segments=10)
    cache = make_cache(ttl=60)
    reader = DecryptingReader(BytesSource(data), cache, threads=threads)
    assert reader.read(0, SEG) == plain[:SEG]
    assert reader.read(SEG, 3 * SEG) == plain[SEG : 4 * SEG]
    vault.disable("k")
    clock.advance(30)
    assert reader.read(4 * SEG, SEG) == plain[4 * SEG : 5 * SEG]  # within the TTL
    clock.advance(30)
    for offset, length in ((5 * SEG, 10), (0, SEG), (len(plain) - 10, 10), (SEG, 3 * SEG), (0, -1)):
        # fresh segments, the cached final segment, the cached recent run, everything
        with pytest.raises(KeyRevokedError):
            reader.read(offset, length)
    vault.enable("k")
    assert reader.read(0, -1) == plain
    reader.close()


@pytest.mark.parametrize("threads", [1, 2])
def test_open_writer_is_refused_at_its_next_segment(make_cache, vault, clock, threads):
    cache = make_cache(ttl=60)
    sink = io.BytesIO()
    chunk = os.urandom(SEG)
    with pytest.raises(KeyRevokedError):
        with EncryptingWriter(sink, cache, segment_size=SEG, threads=threads) as writer:
            for _ in range(3):
                writer.write(chunk)
            vault.disable("k")
            clock.advance(30)
            writer.write(chunk)  # within the TTL
            clock.advance(30)
            for _ in range(3):
                writer.write(chunk)
    assert writer.closed
    vault.enable("k")
    # The interrupted stream never got a final segment: it is not a valid file.
    with pytest.raises(IntegrityError):
        decrypt_bytes(sink.getvalue(), make_cache())


def test_open_writer_close_is_refused_too(make_cache, vault, clock):
    cache = make_cache(ttl=60)
    sink = io.BytesIO()
    writer = EncryptingWriter(sink, cache, segment_size=SEG, threads=1)
    writer.write(b"x" * 100)
    vault.disable("k")
    clock.advance(60)
    with pytest.raises(KeyRevokedError):
        writer.close()  # sealing the final segment needs the key
    vault.enable("k")
    with pytest.raises(IntegrityError):
        decrypt_bytes(sink.getvalue(), make_cache())


def test_refusal_purges_the_key_in_every_cache(make_cache, vault, clock):
    other_clock = FakeClock()
    a = make_cache(ttl=60)
    b = make_cache(ttl=60, clock=other_clock)
    data_k = encrypt_bytes(b"k data", a)
    other = make_cache("local://other", ttl=60)
    data_other = encrypt_bytes(b"other data", other)
    held = [b.data_key_for_read(DecryptingReader(BytesSource(data_k), b).header.key_block), b.data_key_for_write()]
    held_other = b.data_key_for_read(DecryptingReader(BytesSource(data_other), b).header.key_block)
    reader_b = DecryptingReader(BytesSource(data_k), b)
    calls_b = b.vault_calls
    vault.disable("k")
    clock.advance(60)  # only a's clock moves: b's entries are still within their TTL
    with pytest.raises(KeyRevokedError):
        decrypt_bytes(data_k, a)
    assert all(k.snapshot() is None for k in held)  # b's DEKs of local://k were overwritten...
    assert held_other.snapshot() is not None  # ...and nothing else
    with pytest.raises(KeyRevokedError):
        reader_b.read(0, -1)  # which stops b's open handle at once
    with pytest.raises(KeyRevokedError):
        decrypt_bytes(data_k, b)
    assert b.vault_calls > calls_b  # b had to ask the vault again
    assert decrypt_bytes(data_other, b) == b"other data"
    vault.enable("k")
    assert decrypt_bytes(data_k, b) == b"k data"


def test_purge_key_by_hand(make_cache, vault):
    cache = make_cache()
    key = cache.data_key_for_write()
    purge_key("local://k?version=1")  # any spelling of the key
    assert key.snapshot() is None
    assert cache.data_key_for_write() is not key


def test_unknown_version_is_refused_without_purging_the_key(make_cache, vault):
    cache = make_cache()
    block = vault.wrap(KEY, os.urandom(32))
    write_key = cache.data_key_for_write()
    forged = KeyBlock(block.wrap_alg, block.key_uri, "9", block.wrapped_dek)
    with pytest.raises(KeyNotFoundError):
        cache.data_key_for_read(forged)
    # Anyone who can write a header can name a version that does not exist:
    # that must not flush the real key's cache (tests/test_purge.py).
    assert write_key.snapshot() is not None


def test_destroyed_key_is_refused(make_cache, vault, clock):
    cache = make_cache(ttl=60)
    data = encrypt_bytes(b"secret", cache)
    vault.destroy("k")
    clock.advance(60)
    with pytest.raises(KeyRevokedError):
        decrypt_bytes(data, cache)
    with pytest.raises(KeyRevokedError):
        decrypt_bytes(data, make_cache())


# -- an unreachable vault fails closed ---------------------------------------------


def test_unreachable_vault_never_extends_an_expired_key(vault, clock):
    relay = RelayVault(vault)
    cache = KeyCache(KEY, ttl=60, clock=clock, providers=lambda uri: relay, retry_attempts=3, retry_deadline=5)
    data = encrypt_bytes(b"secret", cache)
    relay.down_for = -1
    assert decrypt_bytes(data, cache) == b"secret"  # within the TTL the vault is not needed
    clock.advance(60)
    before = relay.attempts
    start = time.monotonic()
    with pytest.raises(VaultUnavailableError):
        decrypt_bytes(data, cache)
    assert relay.attempts - before == 3  # bounded retries
    assert time.monotonic() - start < 5
    with pytest.raises(VaultUnavailableError):
        cache.data_key_for_write()
    relay.down_for = 0
    assert decrypt_bytes(data, cache) == b"secret"


def test_transient_outage_is_retried(vault, clock):
    relay = RelayVault(vault)
    relay.down_for = 2
    cache = KeyCache(KEY, ttl=60, clock=clock, providers=lambda uri: relay, retry_attempts=4, retry_deadline=5)
    assert decrypt_bytes(encrypt_bytes(b"x", cache), cache) == b"x"
    assert cache.vault_calls == 3 and relay.attempts == 3


def test_retries_stop_at_the_deadline(vault, clock):
    relay = RelayVault(vault)
    relay.down_for = -1
    cache = KeyCache(KEY, ttl=60, clock=clock, providers=lambda uri: relay, retry_attempts=1000, retry_deadline=0.3)
    start = time.monotonic()
    with pytest.raises(VaultUnavailableError):
        cache.data_key_for_write()
    elapsed = time.monotonic() - start
    assert 1 < relay.attempts < 1000
    assert elapsed < 0.3 + 0.25  # the deadline bounds the waits too, not only the attempts


def test_registered_unreachable_provider():
    class Unreachable(KeyProvider):
        calls = 0

        def wrap(self, key_uri, dek):
            Unreachable.calls += 1
            raise VaultUnavailableError("connection refused")

        unwrap = describe = wrap

    register_provider("unreachable://", Unreachable)
    try:
        cache = KeyCache("unreachable://k", ttl=60, retry_attempts=2, retry_deadline=1)
        with pytest.raises(VaultUnavailableError):
            encrypt_bytes(b"x", cache)
        assert Unreachable.calls == 2 == cache.vault_calls
    finally:
        base._FACTORIES.pop("unreachable://", None)
        base._INSTANCES.clear()


# -- key material stays in memory only ------------------------------------------------------


def test_key_holders_refuse_pickling_and_hide_material(make_cache):
    cache = make_cache()
    key = cache.data_key_for_write()
    secret = bytes(key.dek).hex()
    for obj in (cache, key):
        with pytest.raises(TypeError):
            pickle.dumps(obj)
        assert secret not in repr(obj).lower()
    assert "hidden" in repr(key)
    with pytest.raises(TypeError):
        pickle.dumps(DataKey(bytearray(32), key.key_block))


def test_close_wipes_everything(make_cache, vault):
    cache = make_cache()
    write_key = cache.data_key_for_write()
    read_key = cache.data_key_for_read(vault.wrap(KEY, os.urandom(32)))
    cache.close()
    assert write_key.snapshot() is None and read_key.snapshot() is None


def test_audit_records_operations_without_material(make_cache, vault, clock, monkeypatch, tmp_path):
    log = tmp_path / "audit.jsonl"
    monkeypatch.setenv("CMKFS_AUDIT_LOG", str(log))
    cache = make_cache(ttl=60)
    key = cache.data_key_for_write()
    dek_hex = bytes(key.dek).hex()
    data = encrypt_bytes(b"secret", cache)
    reader = make_cache(ttl=60)
    decrypt_bytes(data, reader)
    vault.disable("k")
    with pytest.raises(KeyRevokedError):
        decrypt_bytes(data, make_cache())
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["op"], r["key_uri"], r["version"], r["outcome"]) for r in records] == [
        ("wrap", KEY, "1", "ok"),
        ("unwrap", KEY, "1", "ok"),
        ("disable", KEY, None, "ok"),
        ("unwrap", KEY, "1", "KeyRevokedError"),
    ]
    text = log.read_text()
    assert dek_hex not in text.lower()
    assert key.key_block.wrapped_dek.hex() not in text.lower()
    kek = (vault.root / "k" / "v1.key").read_bytes().hex()
    assert kek not in text.lower()


def test_the_default_provider_follows_cmkfs_home(isolated_cmkfs_home, tmp_path, monkeypatch):
    """With no providers= the cache resolves local:// through the registry and $CMKFS_HOME."""
    LocalVaultProvider().create("k")
    cache = KeyCache(KEY, ttl=60)
    data = encrypt_bytes(b"hello", cache, content_class=ContentClass.CSV)
    assert decrypt_bytes(data, KeyCache(ttl=60)) == b"hello"
    monkeypatch.setenv("CMKFS_HOME", str(tmp_path / "elsewhere"))
    with pytest.raises(KeyNotFoundError):
        decrypt_bytes(data, KeyCache(ttl=60))


def test_unwrapped_value_of_the_wrong_length_is_an_integrity_error(make_cache, vault, isolated_cmkfs_home):
    # Whoever can wrap under a key (for RSA: anyone with the public key) can
    # wrap a value that is not a 32-byte DEK; it must never reach the engine.
    from dataclasses import replace

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from cmkfs.providers.local import wrap_aad

    good = vault.wrap(KEY, os.urandom(32))
    kek = (isolated_cmkfs_home / "vault" / "k" / f"v{good.key_version}.key").read_bytes()
    nonce = os.urandom(12)
    short = nonce + AESGCM(bytes(kek)).encrypt(nonce, os.urandom(16), wrap_aad(good.key_uri, good.key_version))
    cache = make_cache()
    with pytest.raises(IntegrityError):
        cache.data_key_for_read(replace(good, wrapped_dek=short))
