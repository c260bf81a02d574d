"""Hypothesis properties: round trip, ranged reads, and tamper refusal."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cmkfs.errors import CMKError
from cmkfs.stream import decrypt_bytes, encrypt_bytes
from tests._helpers_core import encrypt_chunks, open_reader, static_source
from tests.strategies import PROPERTY_SETTINGS, plaintexts, read_ranges, segment_sizes, write_steps

KEYS = static_source(b"properties")


@PROPERTY_SETTINGS
@given(st.data(), segment_sizes, st.sampled_from([1, 2]))
def test_any_size_and_write_pattern_round_trips(data, segment_size, threads):
    plain = data.draw(plaintexts(segment_size))
    steps = data.draw(write_steps(segment_size))
    blob = encrypt_chunks(plain, KEYS, segment_size, steps, threads=threads)
    assert decrypt_bytes(blob, KEYS) == plain


@PROPERTY_SETTINGS
@given(st.data(), segment_sizes, st.sampled_from([1, 2]))
def test_any_read_range_equals_the_slice(data, segment_size, threads):
    plain = data.draw(plaintexts(segment_size))
    blob = encrypt_bytes(plain, KEYS, segment_size=segment_size)
    with open_reader(blob, KEYS, threads=threads) as reader:
        for _ in range(3):
            offset, length = data.draw(read_ranges(len(plain)))
            want = plain[offset:] if length < 0 else plain[offset : offset + length]
            assert reader.read(offset, length) == want


def _refused(blob: bytes) -> None:
    with pytest.raises(CMKError):
        decrypt_bytes(blob, KEYS)


@PROPERTY_SETTINGS
@given(st.data(), segment_sizes)
def test_any_flipped_byte_is_refused(data, segment_size):
    plain = data.draw(plaintexts(segment_size, max_segments=3))
    blob = bytearray(encrypt_bytes(plain, KEYS, segment_size=segment_size))
    pos = data.draw(st.integers(0, len(blob) - 1))
    blob[pos] ^= data.draw(st.integers(1, 255))
    _refused(bytes(blob))


@PROPERTY_SETTINGS
@given(st.data(), segment_sizes)
def test_any_truncation_is_refused(data, segment_size):
    plain = data.draw(plaintexts(segment_size, max_segments=3))
    blob = encrypt_bytes(plain, KEYS, segment_size=segment_size)
    cut = data.draw(st.integers(0, len(blob) - 1))
    _refused(blob[:cut])


@PROPERTY_SETTINGS
@given(st.data(), segment_sizes)
def test_any_appended_data_is_refused(data, segment_size):
    plain = data.draw(plaintexts(segment_size, max_segments=3))
    blob = encrypt_bytes(plain, KEYS, segment_size=segment_size)
    _refused(blob + data.draw(st.binary(min_size=1, max_size=2 * segment_size + 40)))
