"""The library decrypts every "ok" vector and refuses every negative one.

The reader never unwraps a DEK itself: a key source hands it one.  The key
source here plays the provider's part with ``cryptography`` alone: the AES
wraps through the shared test helpers, the RSA-OAEP wraps (whose ``kek`` is a
PEM private key) with the RSA key's OAEP decryption.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from cmkfs.errors import CMKError, FormatError, IntegrityError
from cmkfs.format import DEK_SIZE, TAG_SIZE, KeyBlock, WrapAlgorithm
from cmkfs.keys import DataKey
from cmkfs.stream import decrypt_bytes
from tests._helpers_core import KekKeySource, open_reader, split_segments

ROOT = Path(__file__).resolve().parent.parent
VECTORS = json.loads((ROOT / "tests" / "vectors" / "v1.json").read_text())["vectors"]
BY_NAME = {v["name"]: v for v in VECTORS}
EXPECTED_ERROR = {"integrity": IntegrityError, "format": FormatError}
# Each breaks one rule of docs/FORMAT.md 3.5 and nothing else.
KEY_NAME_VECTORS = (
    "key-uri-query",
    "key-uri-fragment",
    "key-uri-non-ascii",
    "key-uri-control",
    "key-uri-not-utf8",
    "key-uri-empty",
    "key-uri-unknown-scheme",
    "key-version-non-ascii",
    "key-version-nul",
    "key-version-leading-zero",
    "wrap-alg-mismatch",
    "key-uri-https-version",
    "key-uri-https-bad-host",
    "key-uri-https-bad-port",
    "key-uri-pkcs11-query",
    "key-uri-pkcs11-not-canonical",
    "wrap-alg-mismatch-pkcs11-type",
)


def expected_plaintext(v: dict) -> bytes | None:
    if "plaintext" in v:
        return bytes.fromhex(v["plaintext"])
    return None


RSA_OAEP_HASHES = {WrapAlgorithm.RSA_OAEP_256: hashes.SHA256, WrapAlgorithm.RSA_OAEP_SHA1: hashes.SHA1}


class RsaKekKeySource:
    """Unwraps RSA-OAEP key blocks with one RSA private key, as a vault or HSM would."""

    def __init__(self, key: rsa.RSAPrivateKey) -> None:
        self._key = key
        self.clock = lambda: 0.0

    def data_key_for_write(self, content_class=None):  # pragma: no cover - read only
        raise NotImplementedError

    def data_key_for_read(self, key_block: KeyBlock) -> DataKey:
        algorithm = RSA_OAEP_HASHES.get(key_block.wrap_alg)
        if algorithm is None:
            raise IntegrityError()  # not an RSA-OAEP key block: this key cannot have wrapped it
        try:
            dek = self._key.decrypt(
                bytes(key_block.wrapped_dek),
                padding.OAEP(mgf=padding.MGF1(algorithm()), algorithm=algorithm(), label=None),
            )
        except ValueError:
            raise IntegrityError() from None
        if len(dek) != DEK_SIZE:
            raise IntegrityError()
        return DataKey(bytearray(dek), key_block)


def key_source(kek: str):
    """The key source for a vector's ``kek``: PEM text is an RSA private key, else hex."""
    if kek.startswith("-----BEGIN"):
        return RsaKekKeySource(serialization.load_pem_private_key(kek.encode("ascii"), password=None))
    return KekKeySource(bytes.fromhex(kek))


def decrypt_vector(v: dict) -> bytes:
    return decrypt_bytes(bytes.fromhex(v["ciphertext"]), key_source(v["kek"]))


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
    with open_reader(blob, key_source(v["kek"])) as r:
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
        "empty",
        "one-byte",
        "one-full-segment",
        "segment-plus-one",
        "multi-segment",
        "flipped-tag-bit",
        "flipped-header-bit",
        "truncated-at-segment-boundary",
        "appended-byte",
        "swapped-segments",
        "spliced-header",
        "wrong-kek",
        "rewrapped",
        "wrap-a256kwp",
        "wrap-rsa-oaep-256",
        "wrap-rsa-oaep-sha1",
        "rewrapped-new-kek",
        "wrong-version-name",
        "pkcs11-encoded-label",
        *KEY_NAME_VECTORS,
    ):
        assert required in names
    classes = {v["content_class"] for v in VECTORS if v["outcome"] == "ok"}
    assert classes == {"OTHER", "PARQUET", "VERTIPAQ", "IMAGE", "CSV", "JSON"}
    assert BY_NAME["multi-segment"]["segment_size"] == 4096
    assert sum(len(json.dumps(v)) for v in VECTORS) < 200_000
    assert {v["wrap_alg"] for v in VECTORS if v["outcome"] == "ok"} == {a.name for a in WrapAlgorithm}


def test_rewrapped_vector_keeps_segments_byte_identical():
    a = bytes.fromhex(BY_NAME["segment-plus-one"]["ciphertext"])
    b = bytes.fromhex(BY_NAME["rewrapped"]["ciphertext"])
    ha, sa = split_segments(a)
    hb, sb = split_segments(b)
    assert sa == sb
    assert ha[:88] == hb[:88]  # params and commitment unchanged
    assert ha != hb


def test_rewrap_to_a_new_kek_shifts_the_segments():
    a = bytes.fromhex(BY_NAME["segment-plus-one"]["ciphertext"])
    b = bytes.fromhex(BY_NAME["rewrapped-new-kek"]["ciphertext"])
    ha, sa = split_segments(a)
    hb, sb = split_segments(b)
    assert sa == sb
    assert len(hb) == len(ha) + 1  # key version "1" -> "10"
    assert ha[:88] == hb[:88]
    assert BY_NAME["rewrapped-new-kek"]["kek"] != BY_NAME["segment-plus-one"]["kek"]
    with pytest.raises(IntegrityError):  # the old KEK no longer unwraps it
        decrypt_bytes(b, key_source(BY_NAME["segment-plus-one"]["kek"]))


def test_rsa_vectors_wrap_to_the_modulus_length():
    for name in ("wrap-rsa-oaep-256", "wrap-rsa-oaep-sha1"):
        v = BY_NAME[name]
        assert v["kek"].startswith("-----BEGIN PRIVATE KEY-----")
        with open_reader(bytes.fromhex(v["ciphertext"]), key_source(v["kek"])) as r:
            assert len(r.header.key_block.wrapped_dek) == 2048 // 8


def test_negative_vectors_describe_their_source():
    for v in VECTORS:
        if v["outcome"] == "ok":
            continue
        fields = {"wrap_alg", "key_uri", "key_version", "segment_size", "content_class"}
        if "derived_from" in v:
            source = BY_NAME[v["derived_from"].split(" + ")[0]]
            assert {k: v[k] for k in fields} == {k: source[k] for k in fields}, v["name"]
        else:
            assert not fields & set(v), v["name"]


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
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_negative_vectors_are_cmk_errors_not_os_errors():
    for v in VECTORS:
        if v["outcome"] == "ok":
            continue
        with pytest.raises(CMKError) as info:
            decrypt_vector(v)
        assert not isinstance(info.value, OSError)


def test_ok_vectors_name_their_keys_as_the_spec_requires():
    from cmkfs.format import check_key_names

    for v in VECTORS:
        if v["outcome"] == "ok":
            check_key_names(WrapAlgorithm[v["wrap_alg"]], v["key_uri"], v["key_version"])


@pytest.mark.parametrize("name", [n for n in KEY_NAME_VECTORS if n != "key-uri-not-utf8"])
def test_key_name_vectors_fail_only_the_name_rules(name, monkeypatch):
    """Without the rules of FORMAT.md 3.5 the library would decrypt each key-name
    vector to its source's plaintext: so the vectors test those rules and nothing else."""
    from cmkfs import format as format_module

    v = BY_NAME[name]
    assert v["outcome"] == "format"
    with pytest.raises(FormatError, match="key URI|key version|wrap algorithm"):
        decrypt_vector(v)
    monkeypatch.setattr(format_module, "check_key_names", lambda *args: None)
    source = BY_NAME[v["derived_from"]]
    assert decrypt_vector(v) == bytes.fromhex(source["plaintext"])


def test_a_key_uri_that_is_not_utf8_is_a_format_error():
    with pytest.raises(FormatError, match="not UTF-8"):
        decrypt_vector(BY_NAME["key-uri-not-utf8"])
