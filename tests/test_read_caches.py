"""fsspec's in-memory read caches on a cmk handle expire with the key.

A reader opened with any documented ``cache_type`` must stop returning
plaintext once its key is revoked and the TTL has passed, including bytes
the cache holds but the application never read; and an idle handle's cached
blocks go when the sweeper finds its key expired."""

from __future__ import annotations

import os
import time

import pytest

from cmkfs.errors import KeyRevokedError
from cmkfs.filesystem import CMKFileSystem
from cmkfs.keycache import KeyCache
from cmkfs.keys import sweep_key_holders
from cmkfs.providers.local import LocalVaultProvider

from ._helpers_core import FakeClock

SEG = 4096
SIZE = 16 * SEG + 123
CACHE_TYPES = ["all", "readahead", "blockcache", "first", "bytes", "background", "adaptive"]


@pytest.fixture
def vault(isolated_cmkfs_home):
    provider = LocalVaultProvider()
    provider.create("reads")
    return provider


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def fs(vault, tmp_path, clock):
    fs = CMKFileSystem(target_protocol="file", key="local://reads", segment_size=SEG, skip_instance_cache=True)
    fs._key_caches["local://reads"] = KeyCache("local://reads", ttl=60, clock=clock)  # on a clock we move
    return fs


@pytest.fixture
def data(fs, tmp_path):
    plain = os.urandom(SIZE)
    fs.pipe_file(str(tmp_path / "f.bin"), plain)
    return str(tmp_path / "f.bin"), plain


def _open(fs, path, cache_type):
    # Blocks smaller than the file, so the cache holds more than was read.
    return fs.open(path, "rb", cache_type=cache_type, block_size=2 * SEG)


@pytest.mark.parametrize("cache_type", CACHE_TYPES)
def test_revoked_key_stops_cached_reads_after_the_ttl(fs, vault, clock, data, cache_type):
    path, plain = data
    with _open(fs, path, cache_type) as f:
        assert f.read(100) == plain[:100]
        f.seek(SEG + 7)
        assert f.read(50) == plain[SEG + 7 : SEG + 57]
        vault.disable("reads")
        clock.advance(30)  # within the TTL: cached keys still serve
        f.seek(0)
        assert f.read(100) == plain[:100]
        clock.advance(31)  # past the TTL
        for offset in (0, SEG + 7, 3 * SEG, SIZE - 10):  # bytes read before, and bytes never read
            f.seek(offset)
            with pytest.raises(KeyRevokedError):
                f.read(10)
        vault.enable("reads")
        f.seek(SIZE - 10)
        assert f.read(10) == plain[-10:]  # the handle recovers once the vault says yes again


@pytest.mark.parametrize("cache_type", ["all", "readahead", "blockcache"])
def test_idle_handle_drops_cached_blocks_when_its_key_expires(fs, clock, data, cache_type):
    path, plain = data
    calls = fs.keys.vault_calls
    with _open(fs, path, cache_type) as f:
        f.read(100)
        gated = f.cache
        assert gated._inner is not None
        sweep_key_holders()
        assert gated._inner is not None  # not expired: kept
        clock.advance(61)
        sweep_key_holders()  # what the background sweeper does every few seconds
        assert gated._inner is None
        assert fs.keys.vault_calls == calls  # dropping never calls the vault or fetches
        f.seek(SEG)
        assert f.read(100) == plain[SEG : SEG + 100]  # re-confirmed, then refetched
        assert fs.keys.vault_calls == calls + 1


def test_real_ttl_with_the_all_cache(vault, tmp_path):
    """The same promise with the real clock and the default key cache."""
    fs = CMKFileSystem(target_protocol="file", key="local://reads", cache_ttl=1, skip_instance_cache=True)
    plain = os.urandom(300_000)
    fs.pipe_file(str(tmp_path / "all.bin"), plain)
    with fs.open(str(tmp_path / "all.bin"), "rb", cache_type="all") as f:
        assert f.read(10) == plain[:10]  # the "all" cache now holds the whole file
        vault.disable("reads")
        time.sleep(1.2)
        f.seek(200_000)
        with pytest.raises(KeyRevokedError):
            f.read(10)


def test_revocation_seen_by_the_process_drops_cached_blocks_at_once(fs, data):
    """A vault refusal purges the key process-wide; idle handles' caches go with it."""
    from cmkfs.keycache import purge_key

    path, plain = data
    with _open(fs, path, "all") as f:
        f.read(10)
        purge_key("local://reads")  # what the cache does when any vault call is refused
        assert f.cache._inner is None


def test_dropped_caches_are_closed(fs, clock, data):
    """A background cache's prefetch thread would keep its blocks alive."""
    path, _ = data
    closed = []
    with _open(fs, path, "background") as f:
        f.read(100)
        inner = f.cache._inner
        original = inner.close
        inner.close = lambda: (closed.append(True), original())[1]
        clock.advance(61)
        sweep_key_holders()
        assert closed == [True]


@pytest.mark.parametrize("how", ["text", "gzip", "gzip text"])
def test_wrappers_with_buffers_of_their_own_stop_too(fs, vault, clock, tmp_path, how):
    """io's text layer and decompressors keep a buffer of plaintext: their
    reads re-confirm the key like the handle's own."""
    import gzip

    lines = "".join(f"row {i}, some text to fill a buffer\n" for i in range(5000))
    path = str(tmp_path / ("t.txt.gz" if "gzip" in how else "t.txt"))
    fs.pipe_file(path, gzip.compress(lines.encode()) if "gzip" in how else lines.encode())
    mode = "rb" if how == "gzip" else "r"
    compression = "gzip" if "gzip" in how else None
    with fs.open(path, mode, compression=compression) as f:
        first = f.readline()
        assert first.startswith("row 0" if mode == "r" else b"row 0")
        vault.disable("reads")
        clock.advance(61)
        with pytest.raises(KeyRevokedError):
            f.readline()  # the next line is already decoded in the wrapper's buffer
        with pytest.raises(KeyRevokedError):
            f.read(10)
        with pytest.raises(KeyRevokedError):
            next(iter(f))
