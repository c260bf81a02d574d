"""Key material as the engine sees it: data keys and the source that supplies them.

The engine never talks to a vault.  It asks a :class:`KeySource` for a data
key to write with (a DEK plus the key block that wraps it) or for the DEK of
an existing file (given its key block), and it re-asks before the key's
deadline passes.  The key cache (:mod:`cmkfs.keycache`) is the production
source; :class:`StaticKeySource` serves tests and vectors.
"""

from __future__ import annotations

import math
import os
import threading
import time
import weakref
from typing import Callable, Protocol

from .errors import IntegrityError
from .format import DEK_SIZE, ContentClass, KeyBlock
from .wipe import wipe

__all__ = ["DataKey", "KeySource", "StaticKeySource", "new_dek", "register_key_holder", "sweep_key_holders"]

# Open readers and writers hold per-file keys derived from a DEK.  They
# register here so that an idle one drops its key when its DEK expires or is
# revoked, instead of at its next segment or its close.
_HOLDERS: "weakref.WeakSet" = weakref.WeakSet()
_HOLDERS_LOCK = threading.Lock()


def register_key_holder(holder) -> None:
    """Track ``holder`` (an object with ``drop_key_if_expired()``), weakly."""
    with _HOLDERS_LOCK:
        _HOLDERS.add(holder)


def sweep_key_holders() -> None:
    """Ask every open handle to drop its key material if its DEK has expired."""
    with _HOLDERS_LOCK:
        holders = list(_HOLDERS)
    for holder in holders:
        try:
            holder.drop_key_if_expired()
        except Exception:  # noqa: BLE001 - a sweep never fails the caller
            pass


def new_dek() -> bytearray:
    """A fresh random 256-bit data key, in a buffer that can be wiped."""
    return bytearray(os.urandom(DEK_SIZE))


class DataKey:
    """An unwrapped DEK, the key block that wraps it, and a monotonic deadline.

    ``expires_at`` is a value of the source's clock after which the DEK must
    not be used until the vault confirms the key again.  The object refuses
    to be pickled and hides its material in ``repr``.
    """

    __slots__ = ("_dek", "key_block", "expires_at")

    def __init__(self, dek: bytearray, key_block: KeyBlock, expires_at: float = math.inf) -> None:
        if len(dek) != DEK_SIZE:
            raise ValueError("a data key is 32 bytes")
        self._dek = dek if isinstance(dek, bytearray) else bytearray(dek)
        self.key_block = key_block
        self.expires_at = expires_at

    @property
    def dek(self) -> bytearray:
        return self._dek

    def __repr__(self) -> str:
        return f"DataKey(key_uri={self.key_block.key_uri!r}, version={self.key_block.key_version!r}, dek=<hidden>)"

    def __reduce__(self):
        raise TypeError("DataKey holds key material and cannot be pickled")

    def snapshot(self) -> bytes | None:
        """A copy of the DEK, or ``None`` if it was wiped (expired or revoked).

        Another thread may wipe the key at any moment; ``wipe`` marks it
        expired *before* zeroing it, so a copy taken before the mark is
        checked is known to be intact.
        """
        copy = bytes(self._dek)
        if self.expires_at == -math.inf:
            return None
        return copy

    def wipe(self) -> None:
        """Overwrite the DEK in place (every holder of this object sees zeros)."""
        self.expires_at = -math.inf  # first: see snapshot()
        wipe(self._dek)


class KeySource(Protocol):
    """What the streaming engine needs from the key side."""

    clock: Callable[[], float]

    def data_key_for_write(self, content_class: ContentClass = ContentClass.OTHER) -> DataKey:
        """A DEK for a new file (may be a cached one: each file derives its own key)."""

    def data_key_for_read(self, key_block: KeyBlock) -> DataKey:
        """The DEK wrapped in ``key_block``, confirmed by the vault within the TTL."""


class StaticKeySource:
    """A key source holding one DEK that never expires.

    For tests, vectors and tools that already hold an unwrapped DEK.  It
    refuses any key block other than its own.
    """

    def __init__(self, dek: bytes | bytearray, key_block: KeyBlock, clock: Callable[[], float] = time.monotonic):
        self._key = DataKey(bytearray(dek), key_block)
        self.clock = clock

    def __repr__(self) -> str:
        return f"StaticKeySource({self._key.key_block.key_uri!r})"

    def __reduce__(self):
        raise TypeError("StaticKeySource holds key material and cannot be pickled")

    def data_key_for_write(self, content_class: ContentClass = ContentClass.OTHER) -> DataKey:
        return self._key

    def data_key_for_read(self, key_block: KeyBlock) -> DataKey:
        if key_block != self._key.key_block:
            # Mimics a vault refusing to unwrap a foreign or altered key block.
            raise IntegrityError()
        return self._key
