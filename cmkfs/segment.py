"""Segment crypto: per-file key derivation, nonces, seal and open one segment.

The per-file key and the key commitment come from one HKDF-SHA256 call::

    okm = HKDF-SHA256(ikm=DEK, salt=salt, info=b"cmkfs/v1 file key" || params, L=64)
    file_key, commitment = okm[:32], okm[32:]

Binding ``params`` (magic, version, suite, content class, segment size,
salt, nonce prefix) into ``info`` means a changed parameter changes the key,
so every segment authenticates the stable header without per-segment AAD.
The commitment makes the file decryptable under one DEK only: AES-GCM alone
is not key-committing.
"""

from __future__ import annotations

import hmac
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.exceptions import InvalidTag

from .errors import IntegrityError
from .format import COMMITMENT_SIZE, DEK_SIZE, MAX_SEGMENTS, TAG_SIZE, FileParams
from .wipe import wipe

__all__ = ["HKDF_INFO_LABEL", "derive_file_key", "SegmentCipher"]

HKDF_INFO_LABEL = b"cmkfs/v1 file key"
_INDEX = struct.Struct(">IB")


def derive_file_key(dek: bytes, params: FileParams) -> tuple[bytearray, bytes]:
    """Return ``(file_key, commitment)`` for ``dek`` and the file's params."""
    if len(dek) != DEK_SIZE:
        raise ValueError("a data key is 32 bytes")
    okm = bytearray(
        HKDF(
            algorithm=hashes.SHA256(),
            length=32 + COMMITMENT_SIZE,
            salt=params.salt,
            info=HKDF_INFO_LABEL + params.encode(),
        ).derive(bytes(dek))
    )
    file_key = okm[:32]
    commitment = bytes(okm[32:])
    wipe(okm)  # best effort: scrub the copy we own
    return file_key, commitment


def check_commitment(expected: bytes, actual: bytes) -> None:
    # Constant-time: the commitment says whether a key is right, nothing more.
    if not hmac.compare_digest(expected, actual):
        raise IntegrityError()


class SegmentCipher:
    """Seals and opens the segments of one file.  Holds the file key; never
    pickled, never shown in a repr, and wiped by :meth:`wipe`."""

    __slots__ = ("_aead", "_prefix", "_key")

    def __init__(self, file_key: bytearray, nonce_prefix: bytes) -> None:
        self._key = file_key
        self._aead = AESGCM(bytes(file_key))
        self._prefix = bytes(nonce_prefix)

    def __repr__(self) -> str:
        return "SegmentCipher(<key hidden>)"

    def __reduce__(self):  # noqa: D105 - refuse to travel
        raise TypeError("SegmentCipher holds key material and cannot be pickled")

    def nonce(self, index: int, last: bool) -> bytes:
        if not 0 <= index < MAX_SEGMENTS:
            raise OverflowError("segment index exceeds the nonce space; file too large for this segment size")
        return self._prefix + _INDEX.pack(index, 1 if last else 0)

    def seal_into(self, index: int, last: bool, plaintext, out) -> None:
        """Encrypt ``plaintext`` into ``out`` (exactly ``len(plaintext) + 16`` bytes)."""
        self._aead.encrypt_into(self.nonce(index, last), plaintext, None, out)

    def seal(self, index: int, last: bool, plaintext) -> bytes:
        return self._aead.encrypt(self.nonce(index, last), plaintext, None)

    def open_into(self, index: int, last: bool, ciphertext, out) -> None:
        """Decrypt one segment into ``out`` (exactly ``len(ciphertext) - 16`` bytes)."""
        if len(ciphertext) < TAG_SIZE:
            raise IntegrityError()
        try:
            self._aead.decrypt_into(self.nonce(index, last), ciphertext, None, out)
        except InvalidTag:
            raise IntegrityError() from None

    def open(self, index: int, last: bool, ciphertext) -> bytes:
        if len(ciphertext) < TAG_SIZE:
            raise IntegrityError()
        try:
            return self._aead.decrypt(self.nonce(index, last), ciphertext, None)
        except InvalidTag:
            raise IntegrityError() from None

    def wipe(self) -> None:
        """Overwrite the key bytes this object owns.  The AESGCM object keeps
        its own copy inside OpenSSL, freed with it; Python cannot promise
        more (see docs/SECURITY.md)."""
        wipe(self._key)
        self._aead = None  # type: ignore[assignment]
