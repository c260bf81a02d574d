#!/usr/bin/env python
"""Generate the cmkfs format v1 test vectors (tests/vectors/v1.json).

Run from the repository root::

    python scripts/make_vectors.py            # rewrite tests/vectors/v1.json
    python scripts/make_vectors.py --check    # fail if the file is stale

The output is deterministic.  Every random value (DEKs, KEKs, wrap nonces,
and the salt and nonce prefix the writer draws from ``os.urandom``) comes
from a SHA-256 counter stream keyed by the seed and the vector's name: the
script replaces ``os.urandom`` while it runs the library's own writer, so
the vectors are what ``cmkfs.stream.EncryptingWriter`` really produces.
Only this script does that; the library always uses the OS generator.

RSA-OAEP encryption is randomised too, and OpenSSL takes its randomness
from its own generator, so the RSA wraps are computed here by hand: the
EME-OAEP encoding of RFC 8017 section 7.1.1 with a seed from the same
deterministic stream, then the raw RSA public operation.  Each RSA wrap is
checked by unwrapping it with ``cryptography``'s OAEP decryption before it is
written out.  The RSA key is a fixed 2048-bit key embedded below: a test key,
published with the vectors, that protects nothing.

Each record holds what an independent decryptor needs (see docs/FORMAT.md,
"Test vectors"): the KEK, the wrapping algorithm, the key URI and version,
the expected outcome, and the ciphertext.  Negative vectors are derived
from positive ones by the edit their comment describes.

The key-name vectors (a key URI, key version or wrapping algorithm outside
docs/FORMAT.md 3.5) are encoded here by hand, because the library refuses
to write them, and their DEK is validly wrapped under the edited name: a
reader that skipped the rules of 3.5 would decrypt them, so only those rules
can refuse them.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import struct
import sys
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding

from cmkfs.format import (
    CHECKSUM_SIZE,
    TAG_SIZE,
    ContentClass,
    Header,
    KeyBlock,
    WrapAlgorithm,
)
from cmkfs.keys import StaticKeySource
from cmkfs.segment import SegmentCipher, derive_file_key
from cmkfs.stream import encrypt_bytes

SEED = b"cmkfs format v1 test vectors, seed 1"
OUT = Path(__file__).resolve().parent.parent / "tests" / "vectors" / "v1.json"
WRAP_AAD_LABEL = b"cmkfs/v1 wrap"
KEY_URI = "local://vectors"
KEY_VERSION = "1"
SEGMENT = 4096  # the smallest segment size keeps multi-segment vectors small
INLINE_LIMIT = 64  # plaintexts up to this size are stored as hex, larger ones as a rule + digest
PATTERN_RULE = "byte[i] = i mod 251, for i = 0 .. length-1"


class Drbg:
    """SHA-256(seed || label || counter) blocks: deterministic bytes per label."""

    def __init__(self, label: str) -> None:
        self._prefix = SEED + b"\x00" + label.encode("utf-8") + b"\x00"
        self._counter = 0
        self._pool = b""

    def __call__(self, n: int) -> bytes:
        while len(self._pool) < n:
            self._pool += hashlib.sha256(self._prefix + struct.pack(">Q", self._counter)).digest()
            self._counter += 1
        out, self._pool = self._pool[:n], self._pool[n:]
        return out


@contextlib.contextmanager
def deterministic_urandom(label: str):
    real = os.urandom
    os.urandom = Drbg("urandom:" + label)
    try:
        yield
    finally:
        os.urandom = real


def pattern(n: int) -> bytes:
    return bytes(i % 251 for i in range(n))


def _utf8(text: str | bytes) -> bytes:
    return text if isinstance(text, bytes) else text.encode("utf-8")


def wrap_aad(key_uri: str | bytes, key_version: str | bytes) -> bytes:
    return WRAP_AAD_LABEL + _utf8(key_uri) + b"\x00" + _utf8(key_version)


# TEST KEY ONLY.  Generated once for these vectors and published with them:
# it protects nothing and must never be used for anything but test vectors.
RSA_TEST_KEY_PEM = """\
-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQCzh+OR320M7YQT
giSlJSdZN00TQPe7zMV1moDhsjcz9wYBokcii4js4G65GXt9VKFr6wMTyFE+usTV
u6JY958bI4K4gYg7pFBprYmw9uyfJK5WB/5OQbVuXYz9a5IXwULyNEgHuP0ptilH
sI0KvMMdwbb3tbW3h4rhOLPGk8QPt3t/ra02AcYxHs4J6sXH3uUokD/8ssDMFi7m
3ahlyHIM1LaOCiIz6uddjdwdl4rKI6RjcWQt976TdkVqL7l7rZ5TVXS2yr39H3ol
Gzv0a1WyZ3r1Z1F2ZdKXFnLuq9WKOsNqqHxhhECUTTFn9PUHaPdxzyROvkFJSAIl
MPNlcYohAgMBAAECggEAAvtQ1M4Y8m/6Q4qD14rSDXB70G6sgU3bDIiaAfWa5rCV
pNQNmfsm4BFGVtRqTsLyXIzxC9nF5f9F2uC53JVTQF5YUtO9lUkAYrrvPcqiFC67
UaziZOlrjRyoZW1CkPAEpRS9dVm1ua+U81lRLwfCy//Dl/ezKowe9ZM3+CZhiUXC
kzXnXz00op5JRIYvP63APnczIaATjTu8dBuElwqwsBuWkz98amS4/iwtGZNrhaU9
wv+bARc6ccWZmMeoVCMSjT8EuHUBEmbJBlpqo4A0brACds2UR3AC0In/I1eROgzk
sAjVVrG4HMh8CSHySAWDzzdLdK1DWNeTv3Ps21n6GQKBgQDsvOMVa+sWWdgV6JEi
6yKF1zZ+CCszjp+O/p8FHKF6smLz8MawiJeGZmxvbZSgXUBBPlUwsg2TyJ9RRNWS
UT3wieA4eUesjJAewoA0MUMwCDqpQaqnNt5rUlZy/iV0HUU+0iBnvte/HP/qG8UQ
Fmm/D5bnjZG1DlrJYuxHeKNWSQKBgQDCI2maw6vM+lk9AFOGiKdXLpgcSqj3ci1n
1xUHzEkzoV5/8hX7xtSiqI4l4jECsZ7wHg5femjexnplaSfpzv9+1G1QqzeBQgZk
jfvEGDd117Luz/XCSHn8qhhInRIR+v0WEjXt63aBXhLxmasgmauATI6mlFZlpy7l
+5XyY5k1GQKBgQDXfJ+fMhpMv/8HAiiKBknoVhtN4RWh2mK2gGIy/vqlepbDwRi6
O7rhJX3yd2ZgCkGgoaJdrtTY/ja2fNeCVdzxhC7KeOqaz1+oABc+atDjebobsqAp
kLIoMkxqY5en97S+F/pTNM2hMj5n1Fst55jdxszvfFdy3Nwaj6bO76qNsQKBgDpR
dvzFwMsffUUk3vJwBIzc81a0WtOSWe9ynd+sz2SSGhgnOdFbZi7CoYjhzMU5ZDxP
WxP1aqFZUBU8pH/I7dlEqN3twQu0MMVuHW5HtAlTVW4FzJajPPnYgtj1TiNWmUZT
DB4/eGbeQqSO++gcIXe2B7gkoVuCAEWX8PBSWQipAoGANdImQgmjA0SenYwLCY9n
JzJ6teQVvfpgKMG+f5YmgTFkr03sMd8A/oy1SRGe/g8DpMiYW8srZgrvRSmgdEDT
uAWKXGmiq5KzfFnB36GCbU5s26IScwIwHQqHT1U8KkLFyu8onMCYM7+tJ2tLZY+7
Pz7Y5LnFTqs0UeRA8zcTlgU=
-----END PRIVATE KEY-----
"""
RSA_TEST_KEY = serialization.load_pem_private_key(RSA_TEST_KEY_PEM.encode("ascii"), password=None)
assert isinstance(RSA_TEST_KEY, rsa.RSAPrivateKey) and RSA_TEST_KEY.key_size == 2048

# wrap_alg -> the hash of its RSA-OAEP (used for both the label hash and MGF1).
OAEP_HASHES = {WrapAlgorithm.RSA_OAEP_256: hashlib.sha256, WrapAlgorithm.RSA_OAEP_SHA1: hashlib.sha1}
OAEP_CRYPTOGRAPHY_HASHES = {WrapAlgorithm.RSA_OAEP_256: hashes.SHA256, WrapAlgorithm.RSA_OAEP_SHA1: hashes.SHA1}


def mgf1(hash_fn, seed: bytes, length: int) -> bytes:
    """MGF1 (RFC 8017, appendix B.2.1)."""
    out = b""
    counter = 0
    while len(out) < length:
        out += hash_fn(seed + struct.pack(">I", counter)).digest()
        counter += 1
    return out[:length]


def rsa_oaep_wrap(alg: WrapAlgorithm, key: rsa.RSAPrivateKey, dek: bytes, rng: Drbg) -> bytes:
    """RSAES-OAEP-ENCRYPT (RFC 8017, 7.1.1) with an empty label and a seed from ``rng``."""
    hash_fn = OAEP_HASHES[alg]
    h_len = hash_fn().digest_size
    numbers = key.public_key().public_numbers()
    k = (numbers.n.bit_length() + 7) // 8
    if len(dek) > k - 2 * h_len - 2:
        raise ValueError("message too long for RSA-OAEP")
    db = hash_fn(b"").digest() + bytes(k - len(dek) - 2 * h_len - 2) + b"\x01" + dek
    seed = rng(h_len)
    masked_db = bytes(a ^ b for a, b in zip(db, mgf1(hash_fn, seed, k - h_len - 1), strict=False))
    masked_seed = bytes(a ^ b for a, b in zip(seed, mgf1(hash_fn, masked_db, h_len), strict=False))
    encoded = b"\x00" + masked_seed + masked_db
    wrapped = pow(int.from_bytes(encoded, "big"), numbers.e, numbers.n).to_bytes(k, "big")
    # Cross-check with OpenSSL's OAEP decryption before the vector is written out.
    algorithm = OAEP_CRYPTOGRAPHY_HASHES[alg]()
    check = key.decrypt(wrapped, padding.OAEP(mgf=padding.MGF1(algorithm), algorithm=algorithm, label=None))
    assert check == dek, "hand-made RSA-OAEP wrap does not decrypt"
    return wrapped


def wrap(alg: WrapAlgorithm, kek, dek: bytes, uri: str, version: str, rng: Drbg) -> KeyBlock:
    """Wrap ``dek`` under ``kek``: 32 bytes for the AES algorithms, the RSA key for the others."""
    if alg == WrapAlgorithm.A256GCM:
        nonce = rng(12)
        wrapped = nonce + AESGCM(kek).encrypt(nonce, dek, wrap_aad(uri, version))
    elif alg == WrapAlgorithm.A256KWP:
        wrapped = aes_key_wrap_with_padding(kek, dek)
    elif alg in OAEP_HASHES:
        wrapped = rsa_oaep_wrap(alg, kek, dek, rng)
    else:
        raise ValueError(alg)
    return KeyBlock(alg, uri, version, wrapped)


def kek_field(kek) -> str:
    """The record's ``kek``: hex for an AES KEK, PKCS#8 PEM text for the RSA key."""
    if isinstance(kek, rsa.RSAPrivateKey):
        assert kek is RSA_TEST_KEY
        return RSA_TEST_KEY_PEM
    return kek.hex()


KEK = Drbg("kek")(32)
OTHER_KEK = Drbg("other kek")(32)
NEW_KEK = Drbg("kek version 10")(32)  # a different KEK, for the re-wrap to version "10"
AZURE_URI = "https://vectors.vault.azure.net/keys/vectors"
AZURE_VERSION = "0123456789abcdef0123456789abcdef"
PKCS11_URI = "pkcs11:token=vectors;object=vectors-rsa"
PKCS11_AES_URI = "pkcs11:token=vectors;object=vectors-aes"
# A non-ASCII label: key URIs are ASCII, so it is percent-encoded UTF-8 ("équipe finance").
PKCS11_LABEL_URI = "pkcs11:token=vectors;object=%C3%A9quipe%20finance"


def encrypt(
    name: str,
    plaintext: bytes,
    *,
    content_class=ContentClass.OTHER,
    segment_size=SEGMENT,
    alg=WrapAlgorithm.A256GCM,
    uri=KEY_URI,
    version=KEY_VERSION,
    kek=KEK,
) -> tuple[bytes, bytes]:
    rng = Drbg("keys:" + name)
    dek = rng(32)
    block = wrap(alg, kek, dek, uri, version, rng)
    with deterministic_urandom(name):
        blob = encrypt_bytes(
            plaintext, StaticKeySource(dek, block), segment_size=segment_size, content_class=content_class, threads=1
        )
    return blob, dek


def header_length(blob: bytes) -> int:
    (block_len,) = struct.unpack_from(">I", blob, 88)
    return 92 + block_len + CHECKSUM_SIZE


def raw_key_block(alg: WrapAlgorithm, uri: str | bytes, version: str | bytes, wrapped: bytes) -> bytes:
    """The key block of docs/FORMAT.md 3.2, encoded by hand: ``KeyBlock.encode``
    refuses the names the key-name vectors need."""
    u, v = _utf8(uri), _utf8(version)
    return b"".join(
        (
            bytes([int(alg)]),
            struct.pack(">H", len(u)),
            u,
            struct.pack(">H", len(v)),
            v,
            struct.pack(">H", len(wrapped)),
            wrapped,
        )
    )


def with_raw_key_block(blob: bytes, block: bytes) -> bytes:
    """``blob`` with its key block replaced by ``block`` and the checksum recomputed."""
    body = blob[:88] + struct.pack(">I", len(block)) + block
    return body + hashlib.sha256(body).digest()[:CHECKSUM_SIZE] + blob[header_length(blob) :]


def fix_checksum(header: bytes) -> bytes:
    body = header[:-CHECKSUM_SIZE]
    return body + hashlib.sha256(body).digest()[:CHECKSUM_SIZE]


def record(
    name: str,
    comment: str,
    outcome: str,
    blob: bytes,
    *,
    plaintext: bytes | None = None,
    dek: bytes | None = None,
    kek=KEK,
    alg=WrapAlgorithm.A256GCM,
    uri=KEY_URI,
    version=KEY_VERSION,
    segment_size=SEGMENT,
    content_class=ContentClass.OTHER,
    derived_from: str | None = None,
    header_fields: bool = True,
) -> dict:
    """One vector.  The header fields describe the file for "ok" vectors, and
    the source vector (``derived_from``) for negative ones; a negative vector
    with no source (a foreign file) has none."""
    rec: dict = {
        "name": name,
        "comment": comment,
        "outcome": outcome,
        "kek": kek_field(kek),
    }
    if header_fields:
        rec.update(
            {
                "wrap_alg": alg.name,
                "key_uri": uri,
                "key_version": version,
                "segment_size": segment_size,
                "content_class": content_class.name,
            }
        )
    if derived_from:
        rec["derived_from"] = derived_from
    if plaintext is not None:
        rec["plaintext_size"] = len(plaintext)
        rec["plaintext_sha256"] = hashlib.sha256(plaintext).hexdigest()
        if len(plaintext) <= INLINE_LIMIT:
            rec["plaintext"] = plaintext.hex()
        else:
            rec["plaintext_pattern"] = PATTERN_RULE
    if dek is not None:
        rec["dek"] = dek.hex()  # informational: lets a decryptor check its unwrap step
    rec["ciphertext_size"] = len(blob)
    rec["ciphertext"] = blob.hex()
    return rec


def build() -> dict:
    vectors: list[dict] = []
    made: dict[str, tuple[bytes, bytes, bytes]] = {}

    def ok(name, comment, plaintext, **kw):
        blob, dek = encrypt(name, plaintext, **kw)
        made[name] = (blob, dek, plaintext)
        meta = {k: kw[k] for k in ("content_class", "segment_size", "alg", "uri", "version", "kek") if k in kw}
        vectors.append(record(name, comment, "ok", blob, plaintext=plaintext, dek=dek, **meta))

    def bad(name, comment, outcome, blob, derived_from, **kw):
        vectors.append(
            record(
                name, comment, outcome, blob, derived_from=derived_from, header_fields=derived_from is not None, **kw
            )
        )

    # ---- positive vectors -------------------------------------------------
    ok("empty", "empty plaintext: exactly one segment, an empty final segment (16-byte tag only)", b"")
    ok("one-byte", "one byte: a single final segment of 1 + 16 bytes", b"\x42")
    ok(
        "one-full-segment",
        "exactly one segment of plaintext: the final segment is full-size (allowed)",
        pattern(SEGMENT),
    )
    ok(
        "segment-plus-one",
        "segment size + 1: a full non-final segment, then a 1-byte final segment",
        pattern(SEGMENT + 1),
    )
    ok(
        "multi-segment",
        "three full segments and a 1000-byte final segment, segment size 4096",
        pattern(3 * SEGMENT + 1000),
    )
    ok(
        "three-segments",
        "two full segments and a 10-byte final segment (base of several negatives)",
        pattern(2 * SEGMENT + 10),
    )
    ok(
        "large-segment-size",
        "segment size 65536 holding 100 bytes: the reader must take S from the header",
        pattern(100),
        segment_size=65536,
    )
    samples = {
        ContentClass.OTHER: b"plain bytes, content class OTHER",
        ContentClass.PARQUET: b"PAR1\x15\x04\x15\x10\x15\x14L\x15\x02\x15\x00\x12\x00\x00PAR1",
        ContentClass.VERTIPAQ: b"vertipaq model bytes",
        ContentClass.IMAGE: b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        ContentClass.CSV: b"id,amount\n1,9.50\n2,12.00\n",
        ContentClass.JSON: b'{"id": 1, "amount": 9.5}\n',
    }
    for cls, text in samples.items():
        ok(
            f"class-{cls.name.lower()}",
            f"content class {cls.name} ({int(cls)}) in header byte 10",
            text,
            content_class=cls,
        )
    ok(
        "wrap-a256kwp",
        "DEK wrapped with AES key wrap with padding (RFC 5649), wrap_alg 3, under a pkcs11: key: 40-byte wrapped DEK",
        b"wrapped with A256KWP",
        alg=WrapAlgorithm.A256KWP,
        uri=PKCS11_AES_URI,
        version="1",
    )
    ok(
        "pkcs11-encoded-label",
        "a pkcs11: key whose label is not ASCII ('\u00e9quipe finance'): the key URI "
        "carries it percent-encoded as UTF-8, upper-case hex, so the key block stays ASCII",
        b"a label in percent-encoded UTF-8",
        alg=WrapAlgorithm.A256KWP,
        uri=PKCS11_LABEL_URI,
        version="2",
    )
    ok(
        "wrap-rsa-oaep-256",
        "DEK wrapped with RSA-OAEP, SHA-256 and MGF1-SHA-256, empty label, wrap_alg 2, "
        "under the RSA-2048 test key (kek is its PKCS#8 PEM): 256-byte wrapped DEK",
        b"wrapped with RSA_OAEP_256",
        alg=WrapAlgorithm.RSA_OAEP_256,
        uri=AZURE_URI,
        version=AZURE_VERSION,
        kek=RSA_TEST_KEY,
    )
    ok(
        "wrap-rsa-oaep-sha1",
        "DEK wrapped with RSA-OAEP, SHA-1 and MGF1-SHA-1, empty label, wrap_alg 4, "
        "under the RSA-2048 test key (kek is its PKCS#8 PEM): 256-byte wrapped DEK",
        b"wrapped with RSA_OAEP_SHA1",
        alg=WrapAlgorithm.RSA_OAEP_SHA1,
        uri=PKCS11_URI,
        version="1",
        kek=RSA_TEST_KEY,
    )

    # Re-wrap: the same DEK under a fresh wrapping (new nonce).  Only the key
    # block and the checksum change; params, commitment and segments do not.
    blob, dek, plain = made["segment-plus-one"]
    hl = header_length(blob)
    header = Header.decode(blob[:hl])
    new_block = wrap(WrapAlgorithm.A256GCM, KEK, dek, KEY_URI, "2", Drbg("rewrap"))
    rewrapped = header.with_key_block(new_block).encode() + blob[hl:]
    vectors.append(
        record(
            "rewrapped",
            "segment-plus-one after key rotation: key block re-wrapped under key "
            "version 2, checksum recomputed; every segment byte-identical to segment-plus-one",
            "ok",
            rewrapped,
            plaintext=plain,
            dek=dek,
            version="2",
            derived_from="segment-plus-one",
        )
    )

    # Re-wrap under a different KEK whose version name is one byte longer
    # ("1" -> "10"): K grows by one, so every segment starts one byte later.
    new_block = wrap(WrapAlgorithm.A256GCM, NEW_KEK, dek, KEY_URI, "10", Drbg("rewrap to version 10"))
    rewrapped = header.with_key_block(new_block).encode() + blob[hl:]
    assert header_length(rewrapped) == hl + 1
    vectors.append(
        record(
            "rewrapped-new-kek",
            "segment-plus-one re-wrapped under a different KEK, key "
            "version 10: the key block is one byte longer, so both segments start one byte "
            "later; params, commitment and every segment byte are unchanged",
            "ok",
            rewrapped,
            plaintext=plain,
            dek=dek,
            kek=NEW_KEK,
            version="10",
            derived_from="segment-plus-one",
        )
    )

    # ---- negative vectors -------------------------------------------------
    small, _, _ = made["one-byte"]
    hl_small = header_length(small)
    b = bytearray(small)
    b[-1] ^= 0x01
    bad("flipped-tag-bit", "one-byte with the lowest bit of the final tag flipped", "integrity", bytes(b), "one-byte")

    b = bytearray(small)
    b[hl_small] ^= 0x80
    bad(
        "flipped-ciphertext-bit",
        "one-byte with the top bit of the ciphertext byte flipped",
        "integrity",
        bytes(b),
        "one-byte",
    )

    b = bytearray(small)
    b[20] ^= 0x04  # inside the salt
    bad(
        "flipped-header-bit",
        "one-byte with a bit of the salt flipped (checksum left as is)",
        "integrity",
        bytes(b),
        "one-byte",
    )

    b = bytearray(small)
    b[20] ^= 0x04
    fixed = fix_checksum(bytes(b[:hl_small])) + bytes(b[hl_small:])
    bad(
        "salt-changed-checksum-fixed",
        "one-byte with a salt bit flipped and the checksum recomputed: the key commitment no longer matches",
        "integrity",
        fixed,
        "one-byte",
    )

    b = bytearray(small)
    b[10] = int(ContentClass.CSV)
    fixed = fix_checksum(bytes(b[:hl_small])) + bytes(b[hl_small:])
    bad(
        "content-class-changed",
        "one-byte relabelled as CSV with the checksum recomputed: params are bound "
        "by the key derivation, so the commitment fails",
        "integrity",
        fixed,
        "one-byte",
    )

    base, base_dek, _ = made["three-segments"]
    hl_base = header_length(base)
    step = SEGMENT + TAG_SIZE
    bad(
        "truncated-at-segment-boundary",
        "three-segments cut after its second segment: the new last segment was sealed as non-final",
        "integrity",
        base[: hl_base + 2 * step],
        "three-segments",
    )
    bad(
        "truncated-to-header",
        "three-segments cut right after its header: no segment at all",
        "integrity",
        base[:hl_base],
        "three-segments",
    )
    bad(
        "truncated-in-header",
        "three-segments cut inside its key block",
        "integrity",
        base[: hl_base - 30],
        "three-segments",
    )
    bad("appended-byte", "one-byte with a zero byte appended", "integrity", small + b"\x00", "one-byte")
    bad(
        "appended-tag-sized-segment",
        "one-full-segment with an extra 16 bytes appended: sizes that imply an "
        "empty final segment after a non-empty file are impossible",
        "integrity",
        made["one-full-segment"][0] + bytes(TAG_SIZE),
        "one-full-segment",
    )

    segs = base[hl_base:]
    swapped = base[:hl_base] + segs[step : 2 * step] + segs[:step] + segs[2 * step :]
    bad("swapped-segments", "three-segments with segments 0 and 1 exchanged", "integrity", swapped, "three-segments")

    other, _, _ = made["class-other"]
    hl_other = header_length(other)
    bad(
        "spliced-header",
        "header of class-other followed by the segments of one-byte (same KEK)",
        "integrity",
        other[:hl_other] + small[hl_small:],
        "class-other + one-byte",
    )

    bad(
        "wrong-kek",
        "one-byte, but the KEK given is not the one that wrapped the DEK: unwrap fails",
        "integrity",
        small,
        "one-byte",
        kek=OTHER_KEK,
    )

    # The right KEK bytes, but the key block names another version: the
    # A256GCM associated data differs, so the unwrap fails.
    renamed = Header.decode(small[:hl_small]).key_block
    renamed = KeyBlock(renamed.wrap_alg, renamed.key_uri, "2", renamed.wrapped_dek)
    bad(
        "wrong-version-name",
        "one-byte with key_version changed from 1 to 2 in the key block (checksum "
        "recomputed) and the KEK bytes that wrapped it: the A256GCM wrap AAD no longer matches",
        "integrity",
        Header.decode(small[:hl_small]).with_key_block(renamed).encode() + small[hl_small:],
        "one-byte",
    )

    # A well-formed header whose key block validly wraps a different DEK:
    # only the key commitment can tell.
    small_header = Header.decode(small[:hl_small])
    foreign_block = wrap(WrapAlgorithm.A256GCM, KEK, Drbg("foreign dek")(32), KEY_URI, KEY_VERSION, Drbg("fw"))
    bad(
        "commitment-mismatch",
        "one-byte whose key block wraps another DEK (valid wrap, checksum recomputed)",
        "integrity",
        small_header.with_key_block(foreign_block).encode() + small[hl_small:],
        "one-byte",
    )

    # Cryptographically valid but forbidden: a non-empty file followed by an
    # empty final segment.  A writer never produces it; a reader refuses it.
    full_blob, full_dek, full_plain = made["one-full-segment"]
    hl_full = header_length(full_blob)
    full_header = Header.decode(full_blob[:hl_full])
    file_key, _ = derive_file_key(full_dek, full_header.params)
    cipher = SegmentCipher(file_key, full_header.params.nonce_prefix)
    forged = full_blob[:hl_full] + cipher.seal(0, False, full_plain) + cipher.seal(1, True, b"")
    bad(
        "empty-final-after-full",
        "one-full-segment re-sealed as a non-final segment plus an empty final "
        "segment: both tags verify, but only an empty file may end with an empty segment",
        "integrity",
        forged,
        "one-full-segment",
    )

    b = bytearray(small)
    b[8] = 2
    bad("unsupported-version", "one-byte with the version byte set to 2", "format", bytes(b), "one-byte")
    bad("foreign-file", "a Parquet file that is not encrypted", "format", samples[ContentClass.PARQUET], None)
    bad(
        "foreign-empty", "an empty file is not a cmkfs file (an encrypted empty file has a header)", "format", b"", None
    )

    key_name_vectors(made, bad)

    return {
        "description": "cmkfs format v1 test vectors; see docs/FORMAT.md, 'Test vectors'",
        "generator": "scripts/make_vectors.py",
        "seed": SEED.decode(),
        "wrap_a256gcm_aad": "b'cmkfs/v1 wrap' || key_uri (UTF-8) || 0x00 || key_version (UTF-8)",
        "plaintext_pattern_rule": PATTERN_RULE,
        "kek_encoding": "hex of the 32-byte KEK for A256GCM and A256KWP; PKCS#8 PEM text of the RSA private "
        "key for RSA_OAEP_256 and RSA_OAEP_SHA1 (a published test key)",
        "outcomes": {
            "ok": "decrypts to the plaintext (hex, or plaintext_sha256 of the pattern)",
            "integrity": "must be refused as an integrity failure, with no plaintext released",
            "format": "must be refused as not a cmkfs v1 file",
        },
        "vectors": vectors,
    }


# (name, what is wrong, source vector, wrap_alg, key_uri, key_version) of the key-name vectors:
# each breaks one rule of docs/FORMAT.md 3.5 and nothing else.
KEY_NAME_EDITS = [
    (
        "key-uri-query",
        "a query in the key URI: a header names its key without one (else one key has many "
        "spellings, and the audit log records a version the file does not use)",
        "one-byte",
        WrapAlgorithm.A256GCM,
        "local://vectors?version=1",
        "1",
    ),
    ("key-uri-fragment", "a fragment in the key URI", "one-byte", WrapAlgorithm.A256GCM, "local://vectors#1", "1"),
    (
        "key-uri-non-ascii",
        "a non-ASCII (valid UTF-8) local:// name",
        "one-byte",
        WrapAlgorithm.A256GCM,
        "local://\u00e9quipe-finance",
        "1",
    ),
    (
        "key-uri-control",
        "a terminal escape sequence (ESC [ 2 J) in the key URI",
        "one-byte",
        WrapAlgorithm.A256GCM,
        "local://vectors\x1b[2J",
        "1",
    ),
    (
        "key-uri-not-utf8",
        "a key URI that is not UTF-8 (byte 0xFF)",
        "one-byte",
        WrapAlgorithm.A256GCM,
        b"local://vectors\xff",
        "1",
    ),
    ("key-uri-empty", "an empty key URI", "one-byte", WrapAlgorithm.A256GCM, "", "1"),
    (
        "key-uri-unknown-scheme",
        "a key URI scheme no rule allows",
        "one-byte",
        WrapAlgorithm.A256GCM,
        "kms://vectors",
        "1",
    ),
    (
        "key-version-non-ascii",
        "key version U+00B2 (superscript two: a Unicode digit, not an ASCII one)",
        "one-byte",
        WrapAlgorithm.A256GCM,
        KEY_URI,
        "\u00b2",
    ),
    ("key-version-nul", "key version '1' followed by NUL", "one-byte", WrapAlgorithm.A256GCM, KEY_URI, "1\x00"),
    (
        "key-version-leading-zero",
        "key version '01': a second spelling of version 1",
        "one-byte",
        WrapAlgorithm.A256GCM,
        KEY_URI,
        "01",
    ),
    (
        "wrap-alg-mismatch",
        "a local:// key with wrap_alg A256KWP (the embedded vault wraps with A256GCM only)",
        "one-byte",
        WrapAlgorithm.A256KWP,
        KEY_URI,
        "1",
    ),
    (
        "key-uri-https-version",
        "an https:// key URI with a version segment (the version belongs in key_version)",
        "wrap-rsa-oaep-256",
        WrapAlgorithm.RSA_OAEP_256,
        f"{AZURE_URI}/{AZURE_VERSION}",
        AZURE_VERSION,
    ),
    (
        "key-uri-https-bad-host",
        "an https:// key URI whose host does not parse ('[' opens no IPv6 literal)",
        "wrap-rsa-oaep-256",
        WrapAlgorithm.RSA_OAEP_256,
        "https://[/keys/vectors",
        AZURE_VERSION,
    ),
    (
        "key-uri-https-bad-port",
        "an https:// key URI with port 99999",
        "wrap-rsa-oaep-256",
        WrapAlgorithm.RSA_OAEP_256,
        "https://vectors.vault.azure.net:99999/keys/vectors",
        AZURE_VERSION,
    ),
    (
        "key-uri-pkcs11-query",
        "a pkcs11: key URI whose query names a PKCS#11 library to load",
        "wrap-a256kwp",
        WrapAlgorithm.A256KWP,
        PKCS11_AES_URI + "?module-path=/tmp/evil.so",
        "1",
    ),
    (
        "key-uri-pkcs11-not-canonical",
        "a pkcs11: key URI with its attributes in another order",
        "wrap-a256kwp",
        WrapAlgorithm.A256KWP,
        "pkcs11:object=vectors-aes;token=vectors",
        "1",
    ),
    (
        "wrap-alg-mismatch-pkcs11-type",
        "a pkcs11: key URI with type=secret-key (an AES key) and wrap_alg RSA_OAEP_SHA1",
        "wrap-rsa-oaep-sha1",
        WrapAlgorithm.RSA_OAEP_SHA1,
        PKCS11_URI + ";type=secret-key",
        "1",
    ),
]
# The source vectors' informational fields (they describe the source, docs/FORMAT.md 12).
SOURCES = {
    "one-byte": {},
    "wrap-rsa-oaep-256": {
        "alg": WrapAlgorithm.RSA_OAEP_256,
        "uri": AZURE_URI,
        "version": AZURE_VERSION,
        "kek": RSA_TEST_KEY,
    },
    "wrap-a256kwp": {"alg": WrapAlgorithm.A256KWP, "uri": PKCS11_AES_URI, "version": "1"},
    "wrap-rsa-oaep-sha1": {"alg": WrapAlgorithm.RSA_OAEP_SHA1, "uri": PKCS11_URI, "version": "1", "kek": RSA_TEST_KEY},
}


def key_name_vectors(made, bad) -> None:
    """Format-error vectors for the key-name rules, each with its DEK validly wrapped under the edited name."""
    for name, comment, source, alg, uri, version in KEY_NAME_EDITS:
        blob, dek, _ = made[source]
        meta = SOURCES[source]
        kek = meta.get("kek", KEK)
        rng = Drbg("keys:" + name)
        if alg == WrapAlgorithm.A256GCM:
            nonce = rng(12)
            wrapped = nonce + AESGCM(kek).encrypt(nonce, dek, wrap_aad(uri, version))
        else:
            wrapped = wrap(alg, kek, dek, KEY_URI, "1", rng).wrapped_dek  # no associated data: the name is free
        edit = f"; {source} with key_uri {ascii(uri)}, key_version {ascii(version)}, wrap_alg {alg.name}"
        bad(
            name,
            comment + edit + ", DEK validly wrapped, checksum recomputed",
            "format",
            with_raw_key_block(blob, raw_key_block(alg, uri, version, wrapped)),
            source,
            **meta,
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the stored vectors differ")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    text = json.dumps(build(), indent=1, ensure_ascii=True) + "\n"
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is stale: run scripts/make_vectors.py", file=sys.stderr)
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out} ({len(text)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
