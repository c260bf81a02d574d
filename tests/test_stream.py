"""The streaming writer and the random-access reader."""

from __future__ import annotations

import array
import io
import pickle
import random

import pytest

from cmkfs.errors import CMKError, IntegrityError, KeyRevokedError
from cmkfs.format import TAG_SIZE, ContentClass, ciphertext_size
from cmkfs.keys import StaticKeySource
from cmkfs.stream import (
    BytesSource,
    DecryptingReader,
    EncryptingWriter,
    FileSource,
    decrypt_bytes,
    encrypt_bytes,
)
from tests._helpers_core import (
    Collect,
    FakeClock,
    TtlKeySource,
    encrypt_chunks,
    open_reader,
    pattern,
    static_source,
    test_key_block,
)

SEGMENTS = (4096, 65536)


def boundary_sizes(s: int) -> list[int]:
    return [0, 1, s - 1, s, s + 1, 2 * s + 500, 10 * s]


def write_patterns(s: int) -> dict[str, list[int]]:
    return {"1-byte": [1], "7-byte": [7], "segment": [s], "huge": [1 << 30]}


CASES = [
    (s, n, name, threads)
    for s in SEGMENTS
    for n in boundary_sizes(s)
    for name in ("1-byte", "7-byte", "segment", "huge")
    for threads in (1, 2)
    # One-byte writes of 640 KiB take seconds; 10*S is covered for S=4096.
    if not (name == "1-byte" and s == 65536 and n == 10 * s)
]


@pytest.mark.parametrize("s,n,name,threads", CASES, ids=lambda v: str(v))
def test_boundary_sizes_round_trip(s, n, name, threads):
    src = static_source()
    data = pattern(n, salt=n)
    blob = encrypt_chunks(data, src, s, write_patterns(s)[name], threads=threads)
    header_len = len(blob) - ciphertext_size(n, 0, s)
    assert header_len > 0
    with open_reader(blob, src, threads=threads) as r:
        assert r.size == n
        assert r.segment_count == max(1, -(-n // s))
        assert r.read() == data
        if n:
            assert r.read(n - 1, 1) == data[-1:]
            assert r.read(0, 1) == data[:1]


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview", "memoryview-slice", "array"])
@pytest.mark.parametrize("threads", [1, 2])
def test_buffer_types_are_accepted(kind, threads):
    src = static_source()
    data = pattern(3 * 4096 + 12)
    if kind == "bytes":
        arg = data
    elif kind == "bytearray":
        arg = bytearray(data)
    elif kind == "memoryview":
        arg = memoryview(data)
    elif kind == "memoryview-slice":
        arg = memoryview(b"xx" + data + b"yy")[2:-2]
    else:
        arg = array.array("I", data)  # 4-byte items, length divisible by 4
        assert len(data) % 4 == 0
    sink = Collect()
    with EncryptingWriter(sink, src, segment_size=4096, threads=threads) as w:
        assert w.write(arg) == len(data)
        assert w.plaintext_written == len(data)
    assert decrypt_bytes(sink.getvalue(), src) == data
    assert encrypt_bytes(arg, src, segment_size=4096) != b""
    assert decrypt_bytes(bytearray(sink.getvalue()), src) == data
    assert decrypt_bytes(memoryview(sink.getvalue()), src) == data


def test_wrong_types_are_refused():
    src = static_source()
    with EncryptingWriter(Collect(), src, segment_size=4096) as w:
        with pytest.raises(TypeError):
            w.write("text is not bytes")


@pytest.mark.parametrize("threads", [1, 2])
def test_writer_does_not_keep_the_callers_buffer(threads):
    src = static_source()
    data = pattern(5 * 4096 + 3)
    buf = bytearray(data)
    sink = Collect()
    with EncryptingWriter(sink, src, segment_size=4096, threads=threads) as w:
        w.write(buf)
        buf[:] = bytes(len(buf))  # the caller reuses its buffer at once
        w.write(b"tail")
    assert decrypt_bytes(sink.getvalue(), src) == data + b"tail"


@pytest.mark.parametrize("s", SEGMENTS)
@pytest.mark.parametrize("threads", [1, 2])
def test_random_range_reads(s, threads):
    rng = random.Random(s * 10 + threads)
    src = static_source()
    n = 7 * s + 321
    data = pattern(n, salt=3)
    blob = encrypt_bytes(data, src, segment_size=s)
    with open_reader(blob, src, threads=threads) as r:
        for _ in range(200):
            off = rng.randrange(0, n + 10)
            length = rng.choice([0, 1, 15, s - 1, s, s + 1, 3 * s, rng.randrange(0, n + 1), -1])
            want = data[off:] if length < 0 else data[off : off + length]
            assert r.read(off, length) == want
        assert r.read(n, 10) == b""
        assert r.read(n + 100) == b""
        with pytest.raises(ValueError):
            r.read(-1, 5)


def test_reader_of_many_small_writes():
    src = static_source()
    rng = random.Random(7)
    data = pattern(20 * 4096 + 77, salt=9)
    sink = Collect()
    with EncryptingWriter(sink, src, segment_size=4096, threads=2) as w:
        pos = 0
        while pos < len(data):
            step = rng.choice([1, 2, 3, 5, 100, 4095, 4096, 4097])
            w.write(data[pos : pos + step])
            pos += step
    blob = sink.getvalue()
    assert decrypt_bytes(blob, src) == data
    with open_reader(blob, src) as r:
        for i in range(0, len(data), 999):
            assert r.read(i, 1234) == data[i : i + 1234]


def test_file_source_over_a_seekable_file():
    src = static_source()
    data = pattern(3 * 4096 + 1)
    f = io.BytesIO(encrypt_bytes(data, src, segment_size=4096))
    with DecryptingReader(FileSource(f), src) as r:
        assert r.read(4000, 200) == data[4000:4200]
        assert r.read() == data


def test_header_written_first_and_sizes_predictable():
    src = static_source()
    sink = Collect()
    w = EncryptingWriter(sink, src, segment_size=4096, content_class=ContentClass.PARQUET, threads=1)
    assert sink.getvalue() == w.header.encode()
    w.write(b"x" * 4096)
    assert sink.getvalue() == w.header.encode()  # a full segment waits: it may be the last
    w.write(b"y")
    assert len(sink.getvalue()) == w.header.length + 4096 + TAG_SIZE
    w.close()
    assert len(sink.getvalue()) == ciphertext_size(4097, w.header.length, 4096)
    with open_reader(sink.getvalue(), src) as r:
        assert r.content_class == ContentClass.PARQUET


def test_two_encryptions_of_the_same_data_differ():
    src = static_source()
    a = encrypt_bytes(b"same", src, segment_size=4096)
    b = encrypt_bytes(b"same", src, segment_size=4096)
    assert a != b and a[16:48] != b[16:48]  # fresh salt per file


def test_no_plaintext_in_the_output():
    src = static_source()
    data = b"TOP-SECRET-MARKER " * 2000
    blob = encrypt_bytes(data, src, segment_size=4096)
    assert b"TOP-SECRET" not in blob


def test_wrong_dek_for_the_same_key_block_is_refused():
    blob = encrypt_bytes(b"data", static_source(b"one"), segment_size=4096)
    with pytest.raises(IntegrityError):
        decrypt_bytes(blob, static_source(b"two"))


def test_bad_segment_sizes_are_refused():
    for s in (0, 4095, 64 * 1024 * 1024 + 1, 4096.0):
        with pytest.raises(ValueError):
            EncryptingWriter(Collect(), static_source(), segment_size=s)


# ---- abort and failure ----------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 4096, 4097, 3 * 4096])
@pytest.mark.parametrize("threads", [1, 2])
def test_abort_never_leaves_a_decryptable_file(n, threads):
    src = static_source()
    sink = Collect()
    w = EncryptingWriter(sink, src, segment_size=4096, threads=threads)
    w.write(pattern(n))
    w.abort()
    assert w.closed
    with pytest.raises(IntegrityError):
        decrypt_bytes(sink.getvalue(), src)
    with pytest.raises(ValueError):
        w.write(b"more")
    with pytest.raises(ValueError, match="aborted"):
        w.close()  # closing an aborted writer seals nothing, and says so: its sink must not publish
    with pytest.raises(IntegrityError):
        decrypt_bytes(sink.getvalue(), src)


@pytest.mark.parametrize("threads", [1, 2])
def test_exception_in_with_block_aborts(threads):
    src = static_source()
    sink = Collect()
    with pytest.raises(RuntimeError):
        with EncryptingWriter(sink, src, segment_size=4096, threads=threads) as w:
            w.write(pattern(2 * 4096 + 5))
            raise RuntimeError("the producer failed")
    assert w.closed
    with pytest.raises(IntegrityError):
        decrypt_bytes(sink.getvalue(), src)


def test_failing_sink_aborts_on_close():
    src = static_source()

    class Flaky(Collect):
        def write(self, b):
            if self.parts:
                raise OSError("disk full")
            return super().write(b)

    w = EncryptingWriter(Flaky(), src, segment_size=4096, threads=1)
    w.write(b"abc")
    with pytest.raises(OSError):
        w.close()
    assert w.closed


def test_close_is_idempotent_and_handles_refuse_use_after_close():
    src = static_source()
    sink = Collect()
    w = EncryptingWriter(sink, src, segment_size=4096)
    w.write(b"abc")
    w.close()
    w.close()
    with pytest.raises(ValueError):
        w.write(b"x")
    r = open_reader(sink.getvalue(), src)
    r.close()
    with pytest.raises(ValueError):
        r.read(0, 1)


def test_handles_hide_keys_and_refuse_pickling():
    src = static_source()
    sink = Collect()
    w = EncryptingWriter(sink, src, segment_size=4096)
    dek_hex = bytes(src.data_key_for_write().dek).hex()
    assert dek_hex not in repr(w)
    with pytest.raises(TypeError):
        pickle.dumps(w)
    w.close()
    r = open_reader(sink.getvalue(), src)
    assert dek_hex not in repr(r) and dek_hex not in repr(src)
    with pytest.raises(TypeError):
        pickle.dumps(r)
    with pytest.raises(TypeError):
        pickle.dumps(src)


# ---- key expiry and revocation ----------------------------------------------


def _ttl_source(ttl: float = 60.0) -> TtlKeySource:
    return TtlKeySource(static_source().data_key_for_write().dek, test_key_block(), ttl=ttl, clock=FakeClock())


@pytest.mark.parametrize("threads", [1, 2])
def test_reader_reconfirms_the_key_after_its_deadline(threads):
    keys = _ttl_source()
    data = pattern(6 * 4096)
    blob = encrypt_bytes(data, StaticKeySource(bytes(keys._dek), keys.key_block), segment_size=4096)
    r = open_reader(blob, keys, threads=threads)
    assert keys.reads == 1
    assert r.read(0, 10) == data[:10]
    assert r.read(4096, 10) == data[4096:4106]
    assert keys.reads == 1  # within the TTL: no vault call
    keys.clock.advance(59.9)
    assert r.read(2 * 4096, 10) == data[8192:8202]
    assert keys.reads == 1
    keys.clock.advance(0.1)  # the deadline is inclusive: at the deadline the key is stale
    assert r.read(3 * 4096, 3 * 4096) == data[3 * 4096 :]
    assert keys.reads == 2
    keys.clock.advance(61)
    assert r.read(5 * 4096, 5) == data[5 * 4096 : 5 * 4096 + 5]  # the cached final segment too
    assert keys.reads == 3
    # Revoked: the next segment (cached or not) stops the handle.
    keys.revoked = True
    keys.clock.advance(61)
    with pytest.raises(KeyRevokedError):
        r.read(0, 10)
    with pytest.raises(KeyRevokedError):
        r.read(5 * 4096, 10)
    keys.clock.advance(61)
    with pytest.raises(KeyRevokedError):
        r.read()
    r.close()


def test_reader_with_a_key_that_expires_on_every_clock_read():
    # A clock that moves on every call: every run of segments re-confirms.
    keys = _ttl_source(ttl=0.5)
    ticks = iter(range(10**6))
    keys.clock = lambda: float(next(ticks))
    data = pattern(9 * 4096 + 7)
    blob = encrypt_bytes(data, StaticKeySource(bytes(keys._dek), keys.key_block), segment_size=4096)
    for threads in (1, 2):
        with open_reader(blob, keys, threads=threads) as r:
            assert r.read() == data
            assert r.read(4000, 9000) == data[4000:13000]


@pytest.mark.parametrize("threads", [1, 2])
def test_writer_reconfirms_the_key_after_its_deadline(threads):
    keys = _ttl_source()
    sink = Collect()
    data = pattern(8 * 4096)
    with EncryptingWriter(sink, keys, segment_size=4096, threads=threads) as w:
        assert keys.writes == 1 and keys.reads == 0
        w.write(data[: 2 * 4096 + 1])
        assert keys.reads == 0
        keys.clock.advance(60)
        w.write(data[2 * 4096 + 1 : 4 * 4096 + 1])
        assert keys.reads == 1  # asked again before sealing the next segment
        w.write(data[4 * 4096 + 1 :])
        assert keys.reads == 1
    blob = sink.getvalue()
    assert decrypt_bytes(blob, StaticKeySource(bytes(keys._dek), keys.key_block)) == data


@pytest.mark.parametrize("threads", [1, 2])
def test_writer_stops_when_the_key_is_revoked(threads):
    keys = _ttl_source()
    sink = Collect()
    with pytest.raises(KeyRevokedError):
        with EncryptingWriter(sink, keys, segment_size=4096, threads=threads) as w:
            w.write(pattern(2 * 4096))
            keys.revoked = True
            keys.clock.advance(60)
            w.write(pattern(4 * 4096))
    assert w.closed
    with pytest.raises(CMKError):
        decrypt_bytes(sink.getvalue(), StaticKeySource(bytes(keys._dek), keys.key_block))


def test_writer_close_after_revocation_seals_nothing():
    keys = _ttl_source()
    sink = Collect()
    w = EncryptingWriter(sink, keys, segment_size=4096)
    w.write(b"abc")
    keys.revoked = True
    keys.clock.advance(3600)
    with pytest.raises(KeyRevokedError):
        w.close()
    assert w.closed
    with pytest.raises(IntegrityError):
        decrypt_bytes(sink.getvalue(), StaticKeySource(bytes(keys._dek), keys.key_block))


def test_reader_open_needs_the_key():
    keys = _ttl_source()
    blob = encrypt_bytes(b"abc", StaticKeySource(bytes(keys._dek), keys.key_block), segment_size=4096)
    keys.revoked = True
    with pytest.raises(KeyRevokedError):
        DecryptingReader(BytesSource(blob), keys)


def test_a_failed_write_poisons_the_writer():
    # Part of a failed write may be sealed already; going on (or sealing a
    # final segment) would produce a file missing data or reusing an index.
    class FlakySink(Collect):
        def __init__(self):
            super().__init__()
            self.fail = False

        def write(self, b):
            if self.fail:
                raise OSError("disk full")
            return super().write(b)

    sink = FlakySink()
    w = EncryptingWriter(sink, static_source(), segment_size=4096, threads=1)
    w.write(b"a" * 10_000)
    sink.fail = True
    with pytest.raises(OSError):
        w.write(b"b" * 20_000)
    sink.fail = False
    with pytest.raises(ValueError):
        w.write(b"c")
    with pytest.raises(ValueError):
        w.close()
    with pytest.raises(CMKError):
        decrypt_bytes(sink.getvalue(), static_source())


def test_a_failed_read_leaves_no_buffer_for_the_garbage_collector(monkeypatch):
    """A failed multi-segment read drops the frames that hold slices of its
    result buffer; collected later, the buffer is an error on Python 3.13."""
    import gc
    import sys

    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    src = static_source()
    blob = bytearray(encrypt_bytes(pattern(4096 * 20), src, segment_size=4096))
    blob[-4096 * 3] ^= 1
    kept = []
    for threads in (1, 2):
        reader = DecryptingReader(BytesSource(bytes(blob)), src, threads=threads)
        with pytest.raises(IntegrityError) as failure:
            reader.read(0, -1)
        kept.append(failure.value)  # as a test framework or an error reporter keeps it
    kept.clear()
    gc.collect()
    assert unraisable == []
