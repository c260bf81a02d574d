"""Tamper matrix: every edit an attacker with write access to the storage can
make is refused, and no call ever returns plaintext that was not written."""

from __future__ import annotations

import itertools

import pytest

from cmkfs.errors import CMKError, FormatError, IntegrityError
from cmkfs.format import COMMITMENT_SIZE, PARAMS_SIZE, TAG_SIZE, Header, KeyBlock, WrapAlgorithm
from cmkfs.keys import DataKey, StaticKeySource
from cmkfs.segment import SegmentCipher, derive_file_key
from cmkfs.stream import decrypt_bytes, encrypt_bytes
from tests._helpers_core import (
    KEY_BLOCK_OFFSET,
    KekKeySource,
    header_of,
    open_reader,
    pattern,
    recompute_checksum,
    split_segments,
    static_source,
    unwrap_dek,
    wrap_dek,
)

S = 4096
KEK = bytes(range(32))


def _decrypts_to(blob: bytes, keys, expected: bytes) -> bool:
    """True if ``blob`` decrypts to exactly ``expected``; False if refused.
    Anything else (wrong plaintext, a non-cmkfs exception) fails the test."""
    try:
        got = decrypt_bytes(blob, keys)
    except CMKError:
        return False
    assert got == expected, "tampered file decrypted to different plaintext"
    return True


@pytest.fixture(scope="module")
def small():
    keys = static_source(b"small")
    data = pattern(S + 100, salt=1)
    return keys, data, encrypt_bytes(data, keys, segment_size=S)


@pytest.fixture(scope="module")
def five():
    keys = static_source(b"five")
    data = pattern(4 * S + 777, salt=2)
    return keys, data, encrypt_bytes(data, keys, segment_size=S)


# ---- bit flips ---------------------------------------------------------------


def test_every_header_bit_flip_is_refused(small):
    keys, data, blob = small
    header_len = header_of(blob).length
    for pos in range(header_len):
        for bit in range(8):
            bad = bytearray(blob)
            bad[pos] ^= 1 << bit
            with pytest.raises(CMKError) as info:
                decrypt_bytes(bytes(bad), keys)
            # Past the checked prefix fields, only the checksum or the
            # commitment can object: always an integrity failure.
            if (
                16 <= pos < PARAMS_SIZE - 1
                or PARAMS_SIZE <= pos < PARAMS_SIZE + COMMITMENT_SIZE
                or pos >= KEY_BLOCK_OFFSET
            ):
                assert isinstance(info.value, IntegrityError), (pos, bit)
            else:
                assert isinstance(info.value, (IntegrityError, FormatError)), (pos, bit)


def test_header_bit_flips_with_fixed_checksum_are_refused(small):
    # The checksum only catches accidents; an attacker recomputes it.  The
    # key derivation and the commitment still refuse every change.
    keys, data, blob = small
    header_len = header_of(blob).length
    for pos in range(header_len - 16):
        bad = bytearray(blob[:header_len])
        bad[pos] ^= 1 << (pos % 8)
        forged = recompute_checksum(bytes(bad)) + blob[header_len:]
        assert not _decrypts_to(forged, keys, data), pos


def test_payload_bit_flips_are_refused(five):
    keys, data, blob = five
    header_len = header_of(blob).length
    positions = list(range(header_len, len(blob), 61)) + [len(blob) - 1, len(blob) - TAG_SIZE, header_len]
    for i, pos in enumerate(positions):
        bad = bytearray(blob)
        bad[pos] ^= 1 << (i % 8)
        with pytest.raises(IntegrityError):
            decrypt_bytes(bytes(bad), keys)


def test_random_access_never_serves_a_tampered_segment(five):
    keys, data, blob = five
    header_len = header_of(blob).length
    bad = bytearray(blob)
    bad[header_len + 2 * (S + TAG_SIZE) + 5] ^= 0x01  # inside segment 2
    for threads in (1, 2):
        with open_reader(bytes(bad), keys, threads=threads) as r:  # the final segment is intact
            assert r.read(0, S) == data[:S]
            assert r.read(3 * S, S) == data[3 * S : 4 * S]
            for off, length in ((2 * S, 1), (2 * S + 100, 10), (S, 3 * S), (0, -1)):
                with pytest.raises(IntegrityError):
                    r.read(off, length)
            assert r.read(4 * S, 10) == data[4 * S : 4 * S + 10]


# ---- truncation and appended data ------------------------------------------


def test_truncation_at_every_byte_offset(small):
    keys, data, blob = small
    with pytest.raises(FormatError):
        decrypt_bytes(b"", keys)  # nothing left: not recognisable as cmkfs
    for n in range(1, len(blob)):
        with pytest.raises(IntegrityError):
            decrypt_bytes(blob[:n], keys)


def test_truncation_at_every_segment_boundary(five):
    keys, data, blob = five
    header_len = header_of(blob).length
    for k in range(5):
        with pytest.raises(IntegrityError):
            decrypt_bytes(blob[: header_len + k * (S + TAG_SIZE)], keys)
        # ...and cut one tag short of the boundary.
        if k:
            with pytest.raises(IntegrityError):
                decrypt_bytes(blob[: header_len + k * (S + TAG_SIZE) - TAG_SIZE], keys)


def test_truncation_of_a_file_of_exact_segments():
    keys = static_source(b"exact")
    data = pattern(3 * S)
    blob = encrypt_bytes(data, keys, segment_size=S)
    header_len = header_of(blob).length
    assert len(blob) == header_len + 3 * (S + TAG_SIZE)  # no empty trailing segment
    for k in range(3):
        with pytest.raises(IntegrityError):
            decrypt_bytes(blob[: header_len + k * (S + TAG_SIZE)], keys)


@pytest.mark.parametrize("extra", [b"\x00", bytes(15), bytes(16), bytes(17), bytes(S + 16), bytes(S + 17)])
def test_appended_bytes_are_refused(small, extra):
    keys, data, blob = small
    with pytest.raises(IntegrityError):
        decrypt_bytes(blob + extra, keys)


def test_appended_copy_of_a_segment_is_refused(five):
    keys, data, blob = five
    header, segs = split_segments(blob)
    for seg in segs:
        with pytest.raises(IntegrityError):
            decrypt_bytes(blob + seg, keys)


# ---- reordering, duplication, splicing ---------------------------------------


def test_reordered_segments_are_refused(five):
    keys, data, blob = five
    header, segs = split_segments(blob)
    for i, j in itertools.combinations(range(len(segs)), 2):
        s = list(segs)
        s[i], s[j] = s[j], s[i]
        assert not _decrypts_to(header + b"".join(s), keys, data), (i, j)
    assert not _decrypts_to(header + b"".join(reversed(segs)), keys, data)


def test_duplicated_and_dropped_segments_are_refused(five):
    keys, data, blob = five
    header, segs = split_segments(blob)
    for i in range(len(segs)):
        dup = segs[: i + 1] + [segs[i]] + segs[i + 1 :]
        assert not _decrypts_to(header + b"".join(dup), keys, data), ("dup", i)
        dropped = segs[:i] + segs[i + 1 :]
        if dropped:
            assert not _decrypts_to(header + b"".join(dropped), keys, data), ("drop", i)


def test_spliced_header_and_segments_between_files_are_refused():
    keys = static_source(b"splice")
    a_data, b_data = pattern(3 * S + 1, salt=10), pattern(3 * S + 1, salt=11)
    a = encrypt_bytes(a_data, keys, segment_size=S)
    b = encrypt_bytes(b_data, keys, segment_size=S)
    ha, sa = split_segments(a)
    hb, sb = split_segments(b)
    assert len(ha) == len(hb)
    with pytest.raises(IntegrityError):
        decrypt_bytes(ha + b"".join(sb), keys)
    for i in range(len(sa)):
        mixed = list(sa)
        mixed[i] = sb[i]
        with pytest.raises(IntegrityError):
            decrypt_bytes(ha + b"".join(mixed), keys)


def test_misplaced_last_flag_is_refused():
    # Forge, with the real file key, files whose "last" flags lie: the reader
    # derives each segment's flag from the file size, never trusts the data.
    keys = static_source(b"flags")
    data = pattern(2 * S)
    blob = encrypt_bytes(data, keys, segment_size=S)
    header = header_of(blob)
    raw_header = blob[: header.length]
    file_key, _ = derive_file_key(keys.data_key_for_write().dek, header.params)
    c = SegmentCipher(file_key, header.params.nonce_prefix)
    honest = raw_header + c.seal(0, False, data[:S]) + c.seal(1, True, data[S:])
    assert decrypt_bytes(honest, keys) == data
    forgeries = [
        raw_header + c.seal(0, True, data[:S]) + c.seal(1, True, data[S:]),  # first marked last too
        raw_header + c.seal(0, False, data[:S]) + c.seal(1, False, data[S:]),  # no final segment
        raw_header + c.seal(0, False, data[:S]) + c.seal(1, False, data[S:]) + c.seal(2, True, b""),
    ]
    for forged in forgeries:
        assert not _decrypts_to(forged, keys, data)
    c.wipe()


# ---- re-wrap (key rotation) ----------------------------------------------------


def _wrapped_file(data: bytes, version: str = "1"):
    dek = bytes(range(100, 132))
    block = wrap_dek(KEK, dek, "local://rotation", version)
    blob = encrypt_bytes(data, StaticKeySource(dek, block), segment_size=S)
    return dek, block, blob


def test_rewrap_replaces_only_the_key_block():
    data = pattern(3 * S + 50)
    dek, block, blob = _wrapped_file(data)
    header = header_of(blob)
    assert decrypt_bytes(blob, KekKeySource(KEK)) == data
    for new_block in (
        wrap_dek(KEK, dek, "local://rotation", "2"),
        wrap_dek(KEK, dek, "local://rotation-new-name", "1"),
        wrap_dek(KEK, dek, "pkcs11:token=t;object=rotation", "3", alg=WrapAlgorithm.A256KWP),
    ):
        rewrapped = header.with_key_block(new_block).encode() + blob[header.length :]
        assert decrypt_bytes(rewrapped, KekKeySource(KEK)) == data
        h2, segs2 = split_segments(rewrapped)
        assert segs2 == split_segments(blob)[1]
        assert h2[: KEY_BLOCK_OFFSET - 4] == blob[: KEY_BLOCK_OFFSET - 4]


def test_tampered_wrapped_key_is_refused():
    data = pattern(S + 5)
    dek, block, blob = _wrapped_file(data)
    header = header_of(blob)
    keys = KekKeySource(KEK)
    for i in range(len(block.wrapped_dek)):
        w = bytearray(block.wrapped_dek)
        w[i] ^= 0x01
        bad_block = KeyBlock(block.wrap_alg, block.key_uri, block.key_version, bytes(w))
        forged = header.with_key_block(bad_block).encode() + blob[header.length :]
        with pytest.raises(IntegrityError):
            decrypt_bytes(forged, keys)
    # Relabelling the key version or URI breaks the wrap's associated data.
    for bad_block in (
        KeyBlock(block.wrap_alg, block.key_uri, "2", block.wrapped_dek),
        KeyBlock(block.wrap_alg, "local://other", block.key_version, block.wrapped_dek),
    ):
        forged = header.with_key_block(bad_block).encode() + blob[header.length :]
        with pytest.raises(IntegrityError):
            decrypt_bytes(forged, keys)


def test_a_vault_that_returns_another_dek_is_caught_by_the_commitment():
    data = pattern(S + 5)
    dek, block, blob = _wrapped_file(data)

    class Lying:
        clock = staticmethod(lambda: 0.0)

        def data_key_for_read(self, key_block):
            return DataKey(bytearray(32), key_block)  # a well-formed but wrong DEK

    with pytest.raises(IntegrityError):
        decrypt_bytes(blob, Lying())
    # A different file's valid key block, spliced in: unwraps fine, wrong DEK.
    other_dek, other_block, _ = dek[::-1], wrap_dek(KEK, dek[::-1], "local://rotation", "1"), None
    header = header_of(blob)
    forged = header.with_key_block(other_block).encode() + blob[header.length :]
    assert unwrap_dek(KEK, other_block) == bytearray(other_dek)
    with pytest.raises(IntegrityError):
        decrypt_bytes(forged, KekKeySource(KEK))


def test_rewrap_with_a_static_source_accepting_the_new_block():
    data = pattern(2 * S + 1)
    keys = static_source(b"rewrap")
    blob = encrypt_bytes(data, keys, segment_size=S)
    header = header_of(blob)
    dek = bytes(keys.data_key_for_write().dek)
    new_block = KeyBlock(WrapAlgorithm.A256GCM, "local://tests", "2", b"\x5a" * 60)
    rewrapped = header.with_key_block(new_block).encode() + blob[header.length :]
    assert decrypt_bytes(rewrapped, StaticKeySource(dek, new_block)) == data
    with pytest.raises(IntegrityError):
        decrypt_bytes(rewrapped, keys)  # the old block is gone
    assert isinstance(Header.decode(rewrapped[: header_of(rewrapped).length]), Header)
