"""Segment crypto: per-file key derivation, nonces, seal and open one segment.

The derivation and the nonce layout are written out in :mod:`cmkfs.format`'s
docstring and docs/FORMAT.md.  Neither the DEK nor the file key is ever a
``bytes`` or ``bytearray`` bound to a name (see :mod:`cmkfs.secret`).
"""

from __future__ import annotations

import hmac
import struct
from typing import NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import IntegrityError
from .format import COMMITMENT_SIZE, DEK_SIZE, MAX_SEGMENTS, TAG_SIZE, FileParams
from .secret import BytesLike, Secret

__all__ = ["HKDF_INFO_LABEL", "derive_cipher", "derive_file_key", "SegmentCipher"]

HKDF_INFO_LABEL = b"cmkfs/v1 file key"
_INDEX = struct.Struct(">IB")


def derive_file_key(dek: Secret | BytesLike, params: FileParams) -> tuple[Secret, bytes]:
    """Return ``(file_key, commitment)`` for ``dek`` and the file's params.

    ``dek`` is a :class:`~cmkfs.secret.Secret` (tools and tests may pass any
    bytes-like object).  The engine uses :func:`derive_cipher`.
    """
    okm = _okm(dek, params)
    try:
        return Secret(okm.reveal()[:32]), bytes(okm.reveal()[32:])
    finally:
        okm.wipe()  # the file key lives on only in the Secret returned


def derive_cipher(dek: Secret | BytesLike, params: FileParams) -> tuple[SegmentCipher, bytes]:
    """The file's :class:`SegmentCipher` and key commitment, from ``dek`` (a Secret)."""
    okm = _okm(dek, params)
    # The cipher keeps the whole output buffer (its key is the first 32 bytes):
    # no second copy of the file key is made, and the commitment is public.
    return SegmentCipher._keyed_by(okm, params.nonce_prefix), bytes(okm.reveal()[32:])


def _okm(dek: Secret | BytesLike, params: FileParams) -> Secret:
    """``file_key || commitment``, written by HKDF from the DEK's buffer straight into a Secret."""
    if len(dek) != DEK_SIZE:
        raise ValueError("a data key is 32 bytes")
    secret = Secret.of(dek)
    # All the params in ``info``: a changed parameter changes the key, so every
    # segment authenticates the stable header without per-segment AAD.  The
    # commitment makes the file decrypt under one DEK only: AES-GCM alone is
    # not key-committing.
    hkdf = HKDF(
        algorithm=hashes.SHA256(), length=32 + COMMITMENT_SIZE, salt=params.salt, info=HKDF_INFO_LABEL + params.encode()
    )
    return Secret.filled(32 + COMMITMENT_SIZE, lambda out: hkdf.derive_into(secret.reveal(), out))


def check_commitment(expected: bytes, actual: bytes) -> None:
    # Constant-time: the commitment says whether a key is right, nothing more.
    if not hmac.compare_digest(expected, actual):
        raise IntegrityError()


class SegmentCipher:
    """Seals and opens the segments of one file.  Holds the file key; never
    pickled, never shown in a repr, and wiped by :meth:`wipe`."""

    __slots__ = ("_aead", "_prefix", "_key")

    def __init__(self, file_key: Secret | BytesLike, nonce_prefix: bytes) -> None:
        # A Secret is taken over (wiped with this cipher); any other buffer is copied.
        self._key = Secret.of(file_key)
        # Keyed from our own buffer, not a bytes copy: AESGCM keeps a reference
        # to what it is given, and this one is wiped when the cipher is.
        self._aead = AESGCM(self._key.reveal())
        self._prefix = bytes(nonce_prefix)

    @classmethod
    def _keyed_by(cls, okm: Secret, nonce_prefix: bytes) -> SegmentCipher:
        """A cipher that owns ``okm`` and is keyed by its first 32 bytes (see :func:`derive_cipher`)."""
        cipher = cls.__new__(cls)
        cipher._key = okm
        cipher._aead = AESGCM(okm.reveal()[:32])
        cipher._prefix = bytes(nonce_prefix)
        return cipher

    def __repr__(self) -> str:
        return "SegmentCipher(<key hidden>)"

    def __reduce__(self) -> NoReturn:
        raise TypeError("SegmentCipher holds key material and cannot be pickled")

    def nonce(self, index: int, last: bool) -> bytes:
        if not 0 <= index < MAX_SEGMENTS:
            raise OverflowError("segment index exceeds the nonce space; file too large for this segment size")
        return self._prefix + _INDEX.pack(index, 1 if last else 0)

    def seal_into(self, index: int, last: bool, plaintext: BytesLike, out: bytearray | memoryview) -> None:
        """Encrypt ``plaintext`` into ``out`` (exactly ``len(plaintext) + 16`` bytes)."""
        self._aead.encrypt_into(self.nonce(index, last), plaintext, None, out)

    def seal(self, index: int, last: bool, plaintext: BytesLike) -> bytes:
        return self._aead.encrypt(self.nonce(index, last), plaintext, None)

    def open_into(self, index: int, last: bool, ciphertext: BytesLike, out: bytearray | memoryview) -> None:
        """Decrypt one segment into ``out`` (exactly ``len(ciphertext) - 16`` bytes)."""
        if len(ciphertext) < TAG_SIZE:
            raise IntegrityError()
        try:
            self._aead.decrypt_into(self.nonce(index, last), ciphertext, None, out)
        except InvalidTag:
            raise IntegrityError() from None

    def open(self, index: int, last: bool, ciphertext: BytesLike) -> bytes:
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
        try:
            del self._aead  # first: no call can key itself from a half-wiped buffer
        except AttributeError:
            pass  # wiped before
        self._key.wipe()
