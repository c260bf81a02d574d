"""Shared helpers for the format, stream, tamper, property and vector tests.

Everything here goes through the public API (``cmkfs.stream``,
``cmkfs.keys``, ``cmkfs.format``); the only crypto done directly is the
A256GCM / A256KWP key wrap that ``docs/FORMAT.md`` specifies, so that the
vector tests can unwrap a DEK from a KEK without any provider.
"""

from __future__ import annotations

import hashlib
import os
import random

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap_with_padding,
    aes_key_wrap_with_padding,
)

from cmkfs.errors import IntegrityError, KeyRevokedError
from cmkfs.format import (
    CHECKSUM_SIZE,
    COMMITMENT_SIZE,
    PARAMS_SIZE,
    TAG_SIZE,
    ContentClass,
    Header,
    KeyBlock,
    WrapAlgorithm,
)
from cmkfs.keys import DataKey, StaticKeySource
from cmkfs.stream import BytesSource, DecryptingReader, EncryptingWriter

WRAP_AAD_LABEL = b"cmkfs/v1 wrap"
KEY_BLOCK_OFFSET = PARAMS_SIZE + COMMITMENT_SIZE + 4  # first byte of the key block


def wrap_aad(key_uri: str, key_version: str) -> bytes:
    """The associated data of an A256GCM wrapped DEK (docs/FORMAT.md)."""
    return WRAP_AAD_LABEL + key_uri.encode("utf-8") + b"\x00" + key_version.encode("utf-8")


def wrap_dek(
    kek: bytes, dek: bytes, key_uri: str, key_version: str, alg=WrapAlgorithm.A256GCM, nonce: bytes | None = None
) -> KeyBlock:
    if alg == WrapAlgorithm.A256GCM:
        nonce = os.urandom(12) if nonce is None else nonce
        wrapped = nonce + AESGCM(kek).encrypt(nonce, bytes(dek), wrap_aad(key_uri, key_version))
    elif alg == WrapAlgorithm.A256KWP:
        wrapped = aes_key_wrap_with_padding(kek, bytes(dek))
    else:
        raise ValueError(f"no test wrap for {alg!r}")
    return KeyBlock(alg, key_uri, key_version, wrapped)


def unwrap_dek(kek: bytes, block: KeyBlock) -> bytearray:
    """Unwrap as a provider would; a failed unwrap is an integrity failure."""
    try:
        if block.wrap_alg == WrapAlgorithm.A256GCM:
            w = block.wrapped_dek
            if len(w) != 12 + 32 + 16:
                raise IntegrityError()
            return bytearray(AESGCM(kek).decrypt(w[:12], w[12:], wrap_aad(block.key_uri, block.key_version)))
        if block.wrap_alg == WrapAlgorithm.A256KWP:
            return bytearray(aes_key_unwrap_with_padding(kek, block.wrapped_dek))
    except (InvalidTag, InvalidUnwrap):
        raise IntegrityError() from None
    raise IntegrityError()


class KekKeySource:
    """A key source that unwraps whatever key block it is shown with one KEK."""

    def __init__(self, kek: bytes) -> None:
        self._kek = bytes(kek)
        self.clock = lambda: 0.0

    def data_key_for_write(self, content_class=ContentClass.OTHER):  # pragma: no cover - read only
        raise NotImplementedError

    def data_key_for_read(self, key_block: KeyBlock) -> DataKey:
        return DataKey(unwrap_dek(self._kek, key_block), key_block)


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class TtlKeySource:
    """A key source whose data keys expire ``ttl`` seconds after each
    confirmation, on a fake clock; counts confirmations and can be revoked."""

    def __init__(self, dek: bytes, key_block: KeyBlock, ttl: float = 60.0, clock: FakeClock | None = None) -> None:
        self._dek = bytes(dek)
        self.key_block = key_block
        self.ttl = ttl
        self.clock = clock if clock is not None else FakeClock()
        self.reads = 0
        self.writes = 0
        self.revoked = False

    def _fresh(self) -> DataKey:
        if self.revoked:
            raise KeyRevokedError("key is disabled")
        return DataKey(bytearray(self._dek), self.key_block, self.clock() + self.ttl)

    def data_key_for_write(self, content_class=ContentClass.OTHER) -> DataKey:
        self.writes += 1
        return self._fresh()

    def data_key_for_read(self, key_block: KeyBlock) -> DataKey:
        self.reads += 1
        if key_block != self.key_block:
            raise IntegrityError()
        return self._fresh()


def test_key_block(uri: str = "local://tests", version: str = "1", wrapped: bytes = b"\xa5" * 60) -> KeyBlock:
    return KeyBlock(WrapAlgorithm.A256GCM, uri, version, wrapped)


test_key_block.__test__ = False  # a helper, not a test


def static_source(seed: bytes = b"tests") -> StaticKeySource:
    dek = hashlib.sha256(b"dek:" + seed).digest()
    return StaticKeySource(dek, test_key_block())


class Collect:
    """A sink that copies what it is given (the writer reuses its buffers)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, b) -> int:
        self.parts.append(bytes(b))
        return len(b)

    def getvalue(self) -> bytes:
        return b"".join(self.parts)


def encrypt_chunks(
    data: bytes, keys, segment_size: int, chunks, threads: int = 1, content_class=ContentClass.OTHER
) -> bytes:
    """Encrypt ``data`` written as consecutive pieces of the given sizes
    (cycled; the remainder in one last write)."""
    sink = Collect()
    with EncryptingWriter(sink, keys, segment_size=segment_size, threads=threads, content_class=content_class) as w:
        pos = 0
        sizes = list(chunks) or [len(data) or 1]
        i = 0
        while pos < len(data):
            step = max(1, sizes[i % len(sizes)])
            w.write(data[pos : pos + step])
            pos += step
            i += 1
    return sink.getvalue()


def open_reader(blob: bytes, keys, threads: int = 1) -> DecryptingReader:
    return DecryptingReader(BytesSource(blob), keys, threads=threads)


def header_of(blob: bytes) -> Header:
    from cmkfs.stream import read_header

    return read_header(BytesSource(blob))


def recompute_checksum(header_bytes: bytes) -> bytes:
    body = header_bytes[:-CHECKSUM_SIZE]
    return body + hashlib.sha256(body).digest()[:CHECKSUM_SIZE]


def split_segments(blob: bytes) -> tuple[bytes, list[bytes]]:
    """``(header, [segment ciphertexts])`` of a well-formed file."""
    h = header_of(blob)
    hl = h.length
    step = h.params.segment_size + TAG_SIZE
    payload = blob[hl:]
    return blob[:hl], [payload[i : i + step] for i in range(0, len(payload), step)]


def pattern(n: int, salt: int = 0) -> bytes:
    """Deterministic pseudo-random test plaintext (no two segments alike)."""
    return random.Random(salt).randbytes(n)
