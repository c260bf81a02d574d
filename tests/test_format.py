"""Format v1 header encoding, bounds, foreign files and size arithmetic."""

from __future__ import annotations

import hashlib
import os
import struct

import pytest

from cmkfs.errors import CMKError, FormatError, IntegrityError
from cmkfs.format import (
    CHECKSUM_SIZE,
    COMMITMENT_SIZE,
    DEFAULT_SEGMENT_SIZE,
    MAGIC,
    MAX_HEADER_SIZE,
    MAX_SEGMENT_SIZE,
    MAX_SEGMENTS,
    MIN_HEADER_SIZE,
    MIN_SEGMENT_SIZE,
    PARAMS_SIZE,
    TAG_SIZE,
    ContentClass,
    FileParams,
    Header,
    KeyBlock,
    WrapAlgorithm,
    ciphertext_size,
    header_length_from_prefix,
    looks_like_cmkfs,
    plaintext_size,
    segment_count,
    segment_span,
)
from cmkfs.stream import DecryptingReader, encrypt_bytes, read_header
from tests._helpers_core import (
    KEY_BLOCK_OFFSET,
    BytesSource,
    recompute_checksum,
    static_source,
)

PREFIX = PARAMS_SIZE + COMMITMENT_SIZE + 4


def make_header(content_class=ContentClass.OTHER, segment_size=4096, block=None) -> Header:
    params = FileParams(segment_size, bytes(range(32)), bytes(range(100, 107)), content_class)
    block = block or KeyBlock(WrapAlgorithm.A256GCM, "local://sales", "3", bytes(range(60)))
    return Header(params, bytes(range(200, 232)), block)


def with_fixed_checksum(raw: bytes | bytearray) -> bytes:
    return recompute_checksum(bytes(raw))


# ---- layout and round trips -------------------------------------------------


def test_constants_match_the_layout():
    assert MAGIC == b"\x89CMK\r\n\x1a\n"
    assert PARAMS_SIZE == 56 and COMMITMENT_SIZE == 32 and CHECKSUM_SIZE == 16 and TAG_SIZE == 16
    assert MIN_HEADER_SIZE == 92 + 7 + 16
    assert MAX_HEADER_SIZE == 92 + 8192 + 16
    assert MIN_SEGMENT_SIZE == 4096 and MAX_SEGMENT_SIZE == 64 * 1024 * 1024
    assert DEFAULT_SEGMENT_SIZE == 256 * 1024
    assert MAX_SEGMENTS == 2**32


def test_header_byte_layout():
    h = make_header(ContentClass.CSV, segment_size=65536)
    raw = h.encode()
    assert raw[0:8] == MAGIC
    assert raw[8] == 1 and raw[9] == 1 and raw[10] == int(ContentClass.CSV) and raw[11] == 0
    assert struct.unpack(">I", raw[12:16])[0] == 65536
    assert raw[16:48] == bytes(range(32))
    assert raw[48:55] == bytes(range(100, 107))
    assert raw[55] == 0
    assert raw[56:88] == bytes(range(200, 232))
    block_len = struct.unpack(">I", raw[88:92])[0]
    block = raw[92 : 92 + block_len]
    assert block[0] == int(WrapAlgorithm.A256GCM)
    assert block[1:3] == struct.pack(">H", len("local://sales")) and block[3:16] == b"local://sales"
    assert block[16:18] == b"\x00\x01" and block[18:19] == b"3"
    assert block[19:21] == struct.pack(">H", 60) and block[21:] == bytes(range(60))
    assert len(raw) == 92 + block_len + 16 == h.length
    assert raw[-16:] == hashlib.sha256(raw[:-16]).digest()[:16]


# One key URI and version per wrap algorithm, of the forms its providers write (FORMAT.md 3.5).
NAMES = {
    WrapAlgorithm.A256GCM: ("local://sales", "3"),
    WrapAlgorithm.RSA_OAEP_256: ("https://v.vault.azure.net/keys/k", "0123456789abcdef0123456789abcdef"),
    WrapAlgorithm.A256KWP: ("pkcs11:token=t;object=%C3%A9quipe%20finance", "12"),
    WrapAlgorithm.RSA_OAEP_SHA1: ("pkcs11:token=t;object=o;type=private", "x0aff"),
}


@pytest.mark.parametrize("cls", list(ContentClass))
@pytest.mark.parametrize("alg", list(WrapAlgorithm))
def test_header_round_trip(cls, alg):
    block = KeyBlock(alg, *NAMES[alg], os.urandom(40 if alg == 3 else 256))
    h = make_header(cls, 1 << 20, block)
    raw = h.encode()
    back = Header.decode(raw)
    assert back == h
    assert header_length_from_prefix(raw[:PREFIX]) == len(raw)


def test_key_block_round_trip_limits():
    uri = "pkcs11:token=" + "t" * (2048 - len("pkcs11:token=;object=o")) + ";object=o"
    block = KeyBlock(WrapAlgorithm.A256KWP, uri, "1" + "0" * 255, b"w" * 4096)
    assert len(uri) == 2048 and KeyBlock.decode(block.encode()) == block
    # The smallest key block is well-formed in its lengths, but names no key (3.5).
    empty = bytes([1]) + bytes(6)
    with pytest.raises(FormatError):
        KeyBlock.decode(empty)
    with pytest.raises(ValueError):
        KeyBlock(WrapAlgorithm.A256GCM, "", "", b"").encode()


@pytest.mark.parametrize(
    "block",
    [
        KeyBlock(WrapAlgorithm.A256GCM, "u" * 2049, "1", b"x"),
        KeyBlock(WrapAlgorithm.A256GCM, "u", "v" * 257, b"x"),
        KeyBlock(WrapAlgorithm.A256GCM, "u", "1", b"x" * 4097),
    ],
)
def test_key_block_encode_refuses_oversized_fields(block):
    with pytest.raises(ValueError):
        block.encode()


def test_params_refuse_bad_values():
    with pytest.raises(ValueError):
        FileParams(4095, bytes(32), bytes(7))
    with pytest.raises(ValueError):
        FileParams(MAX_SEGMENT_SIZE + 1, bytes(32), bytes(7))
    with pytest.raises(ValueError):
        FileParams(4096, bytes(31), bytes(7))
    with pytest.raises(ValueError):
        FileParams(4096, bytes(32), bytes(8))
    with pytest.raises(ValueError):
        Header(FileParams(4096, bytes(32), bytes(7)), bytes(31), make_header().key_block).encode()


def test_with_key_block_keeps_params_and_commitment():
    h = make_header()
    other = KeyBlock(WrapAlgorithm.A256KWP, "pkcs11:token=x;object=y", "7", b"k" * 40)
    h2 = h.with_key_block(other)
    assert h2.params == h.params and h2.commitment == h.commitment and h2.key_block == other
    assert h2.encode()[:88] == h.encode()[:88]


def test_key_block_repr_and_versioned_uri():
    block = KeyBlock(WrapAlgorithm.A256GCM, "local://sales", "3", b"secretish" * 4)
    assert "secretish" not in repr(block) and "36 bytes" in repr(block)
    assert block.versioned_uri == "local://sales?version=3"
    az = KeyBlock(WrapAlgorithm.RSA_OAEP_256, "https://v.vault.azure.net/keys/k", "abc", b"")
    assert az.versioned_uri == "https://v.vault.azure.net/keys/k/abc"


# ---- bounds, checked before anything is parsed ------------------------------


def _mutated(offset: int, value: bytes, fix: bool = True) -> bytes:
    raw = bytearray(make_header().encode())
    raw[offset : offset + len(value)] = value
    return with_fixed_checksum(raw) if fix else bytes(raw)


@pytest.mark.parametrize(
    "offset,value,why",
    [
        (0, b"\x88", "magic"),
        (7, b"\x0b", "magic"),
        (8, b"\x00", "version 0"),
        (8, b"\x02", "version 2"),
        (9, b"\x00", "suite 0"),
        (9, b"\x02", "suite 2"),
        (10, b"\x06", "unknown content class"),
        (10, b"\xff", "unknown content class"),
        (11, b"\x01", "flags"),
        (55, b"\x01", "reserved"),
        (12, struct.pack(">I", 4095), "segment size below minimum"),
        (12, struct.pack(">I", 0), "segment size zero"),
        (12, struct.pack(">I", MAX_SEGMENT_SIZE + 1), "segment size above maximum"),
        (88, struct.pack(">I", 6), "key block shorter than its minimum"),
        (88, struct.pack(">I", 8193), "key block above its bound"),
        (88, struct.pack(">I", 0xFFFFFFFF), "hostile key block length"),
    ],
)
def test_prefix_bounds_are_format_errors_even_with_a_valid_checksum(offset, value, why):
    raw = _mutated(offset, value)
    with pytest.raises(FormatError):
        header_length_from_prefix(raw[:PREFIX])
    with pytest.raises(FormatError):
        Header.decode(raw)


@pytest.mark.parametrize(
    "edit,why",
    [
        (lambda b: b.__setitem__(0, 9), "unknown wrap algorithm 9"),
        (lambda b: b.__setitem__(0, 0), "wrap algorithm 0"),
        (lambda b: b.__setitem__(slice(1, 3), struct.pack(">H", 2049)), "URI length above bound"),
        (lambda b: b.__setitem__(slice(1, 3), struct.pack(">H", 60)), "URI length past the block"),
        (lambda b: b.__setitem__(slice(3, 5), b"\xff\xfe"), "URI is not UTF-8"),
    ],
)
def test_key_block_bounds_are_format_errors(edit, why):
    raw = bytearray(make_header().encode())
    block = bytearray(raw[KEY_BLOCK_OFFSET:-CHECKSUM_SIZE])
    edit(block)
    raw[KEY_BLOCK_OFFSET:-CHECKSUM_SIZE] = block
    with pytest.raises(FormatError):
        Header.decode(with_fixed_checksum(raw))


def test_key_block_trailing_and_truncated_fields():
    good = make_header().key_block.encode()
    with pytest.raises(FormatError):
        KeyBlock.decode(good + b"\x00")
    for cut in range(len(good)):
        with pytest.raises(FormatError):
            KeyBlock.decode(good[:cut])


def test_key_block_length_mismatch_is_caught():
    # A key block length that disagrees with the fields: the fields stop
    # short (trailing bytes) or run past the block.
    raw = bytearray(make_header().encode())
    (block_len,) = struct.unpack(">I", raw[88:92])
    for delta in (-1, 1):
        body = bytes(raw[:88]) + struct.pack(">I", block_len + delta) + bytes(raw[92:-16])
        body = body[: 92 + block_len + delta] if delta < 0 else body + b"\x00"
        with pytest.raises(FormatError):
            Header.decode(body + hashlib.sha256(body).digest()[:16])


def test_decode_needs_exactly_the_header():
    raw = make_header().encode()
    with pytest.raises(FormatError):
        Header.decode(raw[:-1])
    with pytest.raises(FormatError):
        Header.decode(raw + b"\x00")


class RecordingSource:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)
        self.reads: list[tuple[int, int]] = []

    def read_range(self, start: int, end: int):
        self.reads.append((start, end))
        return self.data[start:end]


def test_hostile_length_never_reads_past_the_probe():
    raw = _mutated(88, struct.pack(">I", 0xFFFFFFFF), fix=False)
    src = RecordingSource(raw + bytes(10_000_000))
    with pytest.raises(FormatError):
        DecryptingReader(src, static_source())
    assert src.reads == [(0, 4096)]


def test_large_key_block_is_fetched_in_a_second_bounded_read():
    block = KeyBlock(WrapAlgorithm.RSA_OAEP_256, "https://v.vault.azure.net/keys/k", "1", b"w" * 4096)
    raw = make_header(block=block).encode()
    src = RecordingSource(raw)
    assert read_header(src) == Header.decode(raw)
    assert src.reads == [(0, 4096), (4096, len(raw))]


# ---- foreign files are FormatError, corrupted headers IntegrityError ---------


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"PAR1" + bytes(200) + b"PAR1",
        b"\x89PNG\r\n\x1a\n" + bytes(300),
        b"\x1f\x8b\x08\x00" + bytes(300),
        b"id,amount\n1,2\n" * 20,
        b"x",
        bytes(5000),
        MAGIC[:4] + b"XXXX" + bytes(300),
    ],
    ids=["empty", "parquet", "png", "gzip", "csv", "one-byte", "zeros", "half-magic"],
)
def test_foreign_files_are_format_errors(blob):
    with pytest.raises(FormatError):
        DecryptingReader(BytesSource(blob), static_source())
    assert not looks_like_cmkfs(blob) or len(blob) < 8


def test_foreign_random_files_are_format_errors():
    for n in (1, 50, 91, 92, 500, 5000):
        blob = os.urandom(n)
        if blob[:1] == b"\x89":
            continue
        with pytest.raises(FormatError):
            DecryptingReader(BytesSource(blob), static_source())


def test_a_cmkfs_file_cut_inside_its_prefix_is_an_integrity_error():
    blob = encrypt_bytes(b"abc", static_source(), segment_size=4096)
    for n in range(1, PREFIX):
        with pytest.raises(IntegrityError):
            DecryptingReader(BytesSource(blob[:n]), static_source())


@pytest.mark.parametrize("offset", [16, 40, 50, 56, 70, 87, 92, 100, -1, -16])
def test_corrupted_header_is_an_integrity_error(offset):
    blob = bytearray(encrypt_bytes(b"abc", static_source(), segment_size=4096))
    header_len = read_header(BytesSource(bytes(blob))).length
    pos = offset if offset >= 0 else header_len + offset
    blob[pos] ^= 0x10
    with pytest.raises(IntegrityError):
        Header.decode(bytes(blob[:header_len]))
    with pytest.raises(IntegrityError):
        DecryptingReader(BytesSource(bytes(blob)), static_source())


def test_checksum_is_not_the_security_boundary():
    # Recomputing the checksum after changing params still fails: the params
    # are in the key derivation, so the commitment no longer matches.
    src = static_source()
    blob = encrypt_bytes(b"abc", src, segment_size=4096)
    header_len = read_header(BytesSource(blob)).length
    for pos, value in ((10, 4), (20, 0xAA), (50, 0x55), (60, 0x01)):
        raw = bytearray(blob[:header_len])
        raw[pos] ^= value
        forged = with_fixed_checksum(raw) + blob[header_len:]
        with pytest.raises(IntegrityError):
            DecryptingReader(BytesSource(forged), src)


def test_errors_are_cmk_errors_and_integrity_is_not_oserror():
    assert issubclass(FormatError, CMKError) and issubclass(FormatError, ValueError)
    assert issubclass(IntegrityError, CMKError) and not issubclass(IntegrityError, OSError)


# ---- size arithmetic ------------------------------------------------------


@pytest.mark.parametrize("segment", [4096, 65536, 256 * 1024])
def test_size_arithmetic_round_trips(segment):
    header_len = 191
    for n in [0, 1, segment - 1, segment, segment + 1, 2 * segment + 500, 10 * segment, 10 * segment + 1]:
        c = ciphertext_size(n, header_len, segment)
        assert plaintext_size(c, header_len, segment) == n
        count = max(1, -(-n // segment))
        assert segment_count(c - header_len, segment) == count
        assert c == header_len + n + count * TAG_SIZE


def test_size_arithmetic_matches_real_files():
    src = static_source()
    for n in (0, 1, 4095, 4096, 4097, 8192, 8192 + 500):
        blob = encrypt_bytes(os.urandom(n), src, segment_size=4096)
        header_len = read_header(BytesSource(blob)).length
        assert len(blob) == ciphertext_size(n, header_len, 4096)
        assert plaintext_size(len(blob), header_len, 4096) == n


def test_impossible_sizes_are_integrity_errors():
    h, s = 191, 4096
    full = s + TAG_SIZE
    # No room for even one tag (including a file that ends inside its header).
    for payload in (-50, -1, 0, 1, 15):
        with pytest.raises(IntegrityError):
            plaintext_size(h + payload, h, s)
    # A final segment of 1..16 bytes after a full one: it would be empty or
    # shorter than a tag, and only an empty file ends with an empty segment.
    for k in range(1, TAG_SIZE + 1):
        for segments in (1, 2, 5):
            with pytest.raises(IntegrityError):
                plaintext_size(h + segments * full + k, h, s)
    # The first possible sizes on either side are fine.
    assert plaintext_size(h + full, h, s) == s
    assert plaintext_size(h + full + TAG_SIZE + 1, h, s) == s + 1
    assert plaintext_size(h + TAG_SIZE, h, s) == 0


def test_more_segments_than_the_nonce_can_count_is_refused():
    h, s = 191, 4096
    ok_size = h + MAX_SEGMENTS * (s + TAG_SIZE)
    assert plaintext_size(ok_size, h, s) == MAX_SEGMENTS * s
    with pytest.raises(IntegrityError):
        plaintext_size(ok_size + 1 + TAG_SIZE, h, s)


def test_segment_span():
    assert segment_span(0, 191, 4096) == (191, 191 + 4112)
    assert segment_span(3, 191, 4096) == (191 + 3 * 4112, 191 + 4 * 4112)
