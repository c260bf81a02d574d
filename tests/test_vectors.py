"""The library decrypts every "ok" vector and refuses every negative one."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cmkfs.errors import CMKError, FormatError, IntegrityError
from cmkfs.format import TAG_SIZE
from cmkfs.stream import decrypt_bytes

from tests._helpers_core import KekKeySource, open_reader, split_segments

ROOT = Path(__file__).resolve().parent.parent
VECTORS = json.loads((ROOT / "tests" / "vectors" / "v1.json").read_text())["vectors"]
BY_NAME = {v["name"]: v for v in VECTORS}
EXPECTED_ERROR = {"integrity": IntegrityError, "format": FormatError}


def expected_plaintext(v: dict) -> bytes | None:
    if "plaintext" in v:
        return bytes.fromhex(v["plaintext"])
    return None


def decrypt_vector(v: dict) -> bytes:
    return decrypt_bytes(bytes.fromhex(v["ciphertext"]), KekKeySource(bytes.fromhex(v["kek"])))


@pytest.mark.parametrize("v", [v for v in VECTORS if v["outcome"] == "ok"], ids=lambda v: v["name"])
def test_ok_vector_decrypts(v):
    plain = decrypt_vector(v)
    assert len(plain) == v["plaintext_size"]
    assert hashlib.sha256(plain).hexdigest() == v["plaintext_sha256"]
    inline = expected_plaintext(v)
    if inline is not None:
        assert plain == inline
    else:
        assert plain == bytes(i % 251 for i in range(v["plaintext_size"]))


@pytest.mark.parametrize("v", [v for v in VECTORS if v["outcome"] == "ok"], ids=lambda v: v["name"])
def test_ok_vector_header_fields(v):
    blob = bytes.fromhex(v["ciphertext"])
    with open_reader(blob, KekKeySource(bytes.fromhex(v["kek"]))) as r:
        assert r.header.params.segment_size == v["segment_size"]
        assert r.content_class.name == v["content_class"]
        assert r.header.key_block.wrap_alg.name == v["wrap_alg"]
        assert r.header.key_block.key_uri == v["key_uri"]
        assert r.header.key_block.key_version == v["key_version"]
        assert r.size == v["plaintext_size"]


@pytest.mark.parametrize("v", [v for v in VECTORS if v["outcome"] != "ok"], ids=lambda v: v["name"])
def test_negative_vector_refused(v):
    with pytest.raises(EXPECTED_ERROR[v["outcome"]]):
        decrypt_vector(v)


def test_vector_set_covers_the_required_cases():
    names = set(BY_NAME)
    for required in (
        "empty", "one-byte", "one-full-segment", "segment-plus-one", "multi-segment",
        "flipped-tag-bit", "flipped-header-bit", "truncated-at-segment-boundary", "appended-byte",
        "swapped-segments", "spliced-header", "wrong-kek", "rewrapped",
    ):
        assert required in names
    classes = {v["content_class"] for v in VECTORS if v["outcome"] == "ok"}
    assert classes == {"OTHER", "PARQUET", "VERTIPAQ", "IMAGE", "CSV", "JSON"}
    assert BY_NAME["multi-segment"]["segment_size"] == 4096
    assert sum(len(json.dumps(v)) for v in VECTORS) < 200_000


def test_rewrapped_vector_keeps_segments_byte_identical():
    a = bytes.fromhex(BY_NAME["segment-plus-one"]["ciphertext"])
    b = bytes.fromhex(BY_NAME["rewrapped"]["ciphertext"])
    ha, sa = split_segments(a)
    hb, sb = split_segments(b)
    assert sa == sb
    assert ha[:88] == hb[:88]  # params and commitment unchanged
    assert ha != hb


def test_vector_sizes_follow_the_arithmetic():
    for v in VECTORS:
        if v["outcome"] != "ok":
            continue
        blob = bytes.fromhex(v["ciphertext"])
        assert len(blob) == v["ciphertext_size"]
        s = v["segment_size"]
        n = v["plaintext_size"]
        count = max(1, -(-n // s))
        header_len = len(blob) - n - count * TAG_SIZE
        assert 92 + 7 + 16 <= header_len <= 92 + 8192 + 16


def test_generator_is_deterministic_and_matches_the_stored_file():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_vectors.py"), "--check"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_negative_vectors_are_cmk_errors_not_os_errors():
    for v in VECTORS:
        if v["outcome"] == "ok":
            continue
        with pytest.raises(CMKError) as info:
            decrypt_vector(v)
        assert not isinstance(info.value, OSError)
