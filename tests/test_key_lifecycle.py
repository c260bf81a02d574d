"""Key material over a handle's life: concurrency, idle expiry, revocation,
trusted vaults, and what logs and reprs may show.

Runs on the real embedded vault with an injectable clock where time matters.
"""

from __future__ import annotations

import os
import random
import sys
import threading
from dataclasses import replace

import pytest

from cmkfs.errors import ConfigurationError, KeyRevokedError
from cmkfs.format import KeyBlock, WrapAlgorithm
from cmkfs.keycache import KeyCache, purge_key
from cmkfs.keys import sweep_key_holders
from cmkfs.providers.base import redact_key_uri
from cmkfs.providers.local import LocalVaultProvider
from cmkfs.stream import BytesSource, DecryptingReader, EncryptingWriter, decrypt_bytes, encrypt_bytes
from cmkfs.targets import LocalSource
from tests._helpers_core import FakeClock

SEG = 4096
KEY = "local://k"


@pytest.fixture
def vault(isolated_cmkfs_home):
    vault = LocalVaultProvider(isolated_cmkfs_home)
    vault.create("k")
    return vault


def _cache(vault, clock=None, key=KEY, **kw):
    kw.setdefault("providers", lambda uri: vault)
    if clock is not None:
        kw["clock"] = clock
    return KeyCache(key, ttl=kw.pop("ttl", 60), **kw)


def test_concurrent_reads_on_one_handle_return_the_right_bytes(vault, tmp_path):
    # fsspec's "background" cache reads from a second thread while the caller
    # reads: the reader's shared buffers must never mix two segments.
    plain = bytes(random.Random(5).randrange(256) for _ in range(SEG * 40))
    cache = _cache(vault)
    path = tmp_path / "f.bin"
    path.write_bytes(encrypt_bytes(plain, cache, segment_size=SEG))
    source = LocalSource(str(path))  # fills a reused buffer: the sharpest case
    reader = DecryptingReader(source, cache, threads=2)
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    wrong, errors = [], []

    def hammer(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(300):
            a = rng.randrange(len(plain))
            n = rng.choice([1, 100, SEG - 1, SEG, 3 * SEG + 7])
            try:
                if reader.read(a, n) != plain[a : a + n]:
                    wrong.append((a, n))
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(s,)) for s in range(4)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(previous)
        source.close()
    assert wrong == [] and errors == []


def test_idle_reader_drops_its_key_and_plaintext_when_the_dek_expires(vault):
    clock = FakeClock()
    cache = _cache(vault, clock, ttl=60)
    plain = os.urandom(SEG * 3)
    blob = encrypt_bytes(plain, cache, segment_size=SEG)
    reader = DecryptingReader(BytesSource(blob), cache, threads=1)
    assert reader.read(0, 10) == plain[:10]
    sweep_key_holders()
    assert reader._cipher is not None  # not expired yet: nothing dropped

    clock.now += 61
    sweep_key_holders()  # what the background sweeper does every few seconds
    assert reader._cipher is None
    assert reader._cache == {} and not any(reader._scratch)

    # The next read goes back to the vault: refused while the key is disabled ...
    vault.disable("k")
    with pytest.raises(KeyRevokedError):
        reader.read(0, 10)
    # ... and served again once it is enabled.
    vault.enable("k")
    assert reader.read(SEG + 5, 10) == plain[SEG + 5 : SEG + 15]


def test_idle_writer_drops_its_key_and_resumes_after_reconfirming(vault):
    clock = FakeClock()
    cache = _cache(vault, clock, ttl=60)
    out = []

    class Sink:
        def write(self, b):
            out.append(bytes(b))

    writer = EncryptingWriter(Sink(), cache, segment_size=SEG, threads=1)
    writer.write(b"a" * (SEG + 10))
    clock.now += 61
    sweep_key_holders()
    assert writer._cipher is None
    writer.write(b"b" * SEG)  # the vault confirms the key again, the stream goes on
    writer.close()
    assert decrypt_bytes(b"".join(out), cache) == b"a" * (SEG + 10) + b"b" * SEG


def test_revocation_wipes_idle_handles_at_once(vault):
    cache = _cache(vault)
    blob = encrypt_bytes(os.urandom(SEG * 2), cache, segment_size=SEG)
    reader = DecryptingReader(BytesSource(blob), cache, threads=1)
    reader.read(0, 1)
    purge_key(KEY)  # what a cache does when the vault answers "revoked"
    assert reader._cipher is None and reader._cache == {}


def test_two_caches_refused_at_once_do_not_deadlock(vault):
    # Each refusal purges every cache in the process; two caches doing that
    # while holding their own locks used to wait on each other for ever.
    caches = [_cache(vault, key=None) for _ in range(2)]
    blocks = [_cache(vault).data_key_for_write().key_block for _ in range(2)]
    vault.disable("k")
    outcomes = []
    barrier = threading.Barrier(4)

    def read(cache, block):
        barrier.wait()
        for _ in range(20):
            try:
                cache.data_key_for_read(block)
            except KeyRevokedError:
                outcomes.append("revoked")

    threads = [threading.Thread(target=read, args=(c, b), daemon=True) for c in caches for b in blocks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not any(t.is_alive() for t in threads), "key caches deadlocked on a revoked key"
    assert outcomes == ["revoked"] * 80


def test_purge_survives_entries_expiring_while_it_runs(vault):
    ticks = iter(range(0, 10**6, 7))
    cache = _cache(vault, clock=lambda: 1000.0 + next(ticks), ttl=20)
    for _ in range(5):
        cache.data_key_for_read(_cache(vault).data_key_for_write().key_block)
    cache.purge()  # every clock read moves time on: entries expire mid-purge
    cache.purge(KEY)


def test_a_header_cannot_choose_the_vault(vault):
    asked = []

    def providers(uri):
        asked.append(uri)
        return vault

    cache = KeyCache(KEY, providers=providers)
    forged = KeyBlock(WrapAlgorithm.RSA_OAEP_256, "https://attacker.example/keys/x", "1", os.urandom(256))
    with pytest.raises(ConfigurationError, match="attacker.example"):
        cache.data_key_for_read(forged)
    assert asked == []  # refused before any provider (and so any network call)

    # The configured key's vault, and vaults listed as trusted, are asked.
    for cache in (
        KeyCache("https://contoso.vault.azure.net/keys/k", providers=providers),
        KeyCache(KEY, providers=providers, trusted_vaults=["contoso.vault.azure.net"]),
    ):
        block = replace(forged, key_uri="https://contoso.vault.azure.net/keys/x")
        with pytest.raises(Exception):
            cache.data_key_for_read(block)  # the local vault cannot unwrap an RSA block
        assert asked[-1] == "https://contoso.vault.azure.net/keys/x"


def test_trusted_vaults_from_the_environment(vault, monkeypatch):
    monkeypatch.setenv("CMKFS_TRUSTED_VAULTS", "a.vault.azure.net, https://b.vault.azure.net")
    asked = []
    cache = KeyCache(None, providers=lambda uri: asked.append(uri) or vault)
    for host in ("a.vault.azure.net", "b.vault.azure.net"):
        block = KeyBlock(WrapAlgorithm.RSA_OAEP_256, f"https://{host}/keys/x", "1", os.urandom(256))
        with pytest.raises(Exception):
            cache.data_key_for_read(block)
    assert asked == ["https://a.vault.azure.net/keys/x", "https://b.vault.azure.net/keys/x"]
    with pytest.raises(ConfigurationError):
        KeyCache(None, trusted_vaults="a.vault.azure.net")  # a string is not a list


def test_pins_and_user_info_never_shown():
    assert (
        redact_key_uri("pkcs11:token=t;object=o?pin-value=S3cret&module-path=/m.so")
        == "pkcs11:token=t;object=o?module-path=/m.so"
    )
    assert redact_key_uri("pkcs11:token=t;object=o?PIN-SOURCE=/p") == "pkcs11:token=t;object=o"
    assert redact_key_uri("https://user:pw@v.vault.azure.net/keys/k") == "https://v.vault.azure.net/keys/k"
    assert redact_key_uri("local://k?version=2") == "local://k?version=2"
    assert "S3cret" not in repr(KeyCache("pkcs11:token=t;object=o?pin-value=S3cret"))


def test_audit_records_carry_no_pin(softhsm, tmp_path):
    from cmkfs.audit import AuditLog

    provider = softhsm.provider()
    provider.create_key(softhsm.token_label, "audited")
    uri = softhsm.key_uri("audited") + f"?pin-value={softhsm.user_pin}"
    log = tmp_path / "audit.jsonl"
    cache = KeyCache(uri, providers=lambda _uri: provider, audit=AuditLog(log))
    cache.data_key_for_write()
    text = log.read_text()
    assert "wrap" in text and softhsm.user_pin not in text


def test_strided_views_are_written_correctly(vault):
    cache = _cache(vault)
    source = bytearray(os.urandom(3 * SEG))
    strided = memoryview(source)[::3]
    assert decrypt_bytes(encrypt_bytes(strided, cache, segment_size=SEG), cache) == bytes(source[::3])


class _SlowVault:
    """The real vault behind a link that holds each answer until released."""

    def __init__(self, inner):
        self.inner = inner
        self.arrived = threading.Event()
        self.release = threading.Event()
        self.refuse = False
        self.calls = 0

    def canonical_uri(self, uri):
        return self.inner.canonical_uri(uri)

    def unwrap(self, key_block):
        self.calls += 1
        if self.refuse:
            raise KeyRevokedError("disabled")
        dek = self.inner.unwrap(key_block)
        self.arrived.set()
        self.release.wait(5)
        return dek


def test_simultaneous_unwraps_of_one_block_share_one_data_key(vault):
    block = _cache(vault).data_key_for_write().key_block
    slow = _SlowVault(vault)
    cache = KeyCache(None, providers=lambda uri: slow)
    got = []
    threads = [threading.Thread(target=lambda: got.append(cache.data_key_for_read(block))) for _ in range(2)]
    for t in threads:
        t.start()
    slow.arrived.wait(5)
    slow.release.set()
    for t in threads:
        t.join()
    # One object for both: a purge or an expiry that wipes it reaches both handles.
    assert got[0] is got[1]
    purge_key(KEY)
    assert got[0].snapshot() is None


def test_an_answer_in_flight_during_a_revocation_is_not_kept(vault):
    block_a = _cache(vault).data_key_for_write().key_block
    block_b = KeyCache(KEY, providers=lambda uri: vault, max_files_per_dek=1).data_key_for_write().key_block
    slow = _SlowVault(vault)
    cache = KeyCache(None, providers=lambda uri: slow)
    outcome = []

    def open_a():
        try:
            outcome.append(cache.data_key_for_read(block_a))
        except KeyRevokedError as exc:
            outcome.append(exc)

    t = threading.Thread(target=open_a)
    t.start()
    slow.arrived.wait(5)  # the vault said yes for A; the answer is still on its way
    slow.refuse = True
    with pytest.raises(KeyRevokedError):
        cache.data_key_for_read(block_b)  # the refusal purges the key everywhere
    slow.release.set()
    t.join()
    # The answer from before the refusal was not cached: A asked again and was refused.
    assert isinstance(outcome[0], KeyRevokedError)
    with pytest.raises(KeyRevokedError):
        cache.data_key_for_read(block_a)
