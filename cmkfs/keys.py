"""Key material as the engine sees it: data keys and the source that supplies them.

The engine never talks to a vault.  It asks a :class:`KeySource` for a data
key to write with (a DEK plus the key block that wraps it) or for the DEK of
an existing file (given its key block), and it re-asks before the key's
deadline passes.  The key cache (:mod:`cmkfs.keycache`) is the production
source; :class:`StaticKeySource` serves tests and vectors.  DEKs live in
:class:`~cmkfs.secret.Secret` objects, and file keys are derived inside them.
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections.abc import Callable
from typing import NoReturn, Protocol

from .errors import IntegrityError
from .format import DEK_SIZE, ContentClass, FileParams, KeyBlock
from .secret import BytesLike, Secret
from .segment import SegmentCipher, derive_cipher

__all__ = [
    "DataKey",
    "KeyHolder",
    "KeySource",
    "Secret",
    "StaticKeySource",
    "new_dek",
    "register_key_holder",
    "sweep_key_holders",
]


class KeyHolder(Protocol):
    """An open handle holding key material derived from a DEK (a reader, a writer, a read cache)."""

    def drop_key_if_expired(self) -> None:
        """Wipe the key material (and plaintext) now if the DEK has expired or was revoked."""

    def close(self) -> None: ...


# Open readers and writers hold per-file keys derived from a DEK.  They
# register here so that an idle one drops its key when its DEK expires or is
# revoked, instead of at its next segment or its close.
_HOLDERS: weakref.WeakSet[KeyHolder] = weakref.WeakSet()
_HOLDERS_LOCK = threading.Lock()


def register_key_holder(holder: KeyHolder) -> None:
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


def _after_fork_in_child() -> None:
    """In a child made by ``fork()`` (see :mod:`cmkfs.forksafe`): close every
    handle another thread was inside at the fork.

    That thread did not come along: the handle's lock would stay held for ever
    and its buffers and key may be half-updated, so the child must not serve
    from it.  It gets a fresh lock and is closed; a writer is aborted, so a
    half-written stream is never sealed.  Handles that were idle keep working.
    """
    from .forksafe import renewed  # already imported: it is what calls this

    for holder in list(_HOLDERS):
        lock = getattr(holder, "_lock", None)
        fresh = renewed(lock) if lock is not None else None
        if fresh is lock:
            continue
        setattr(holder, "_lock", fresh)  # noqa: B010 - every holder has one, outside the protocol
        stop = getattr(holder, "abort", None) or holder.close  # abort: never seal a writer
        try:
            stop()
        except Exception:  # noqa: BLE001 - best effort, like a sweep
            pass


def new_dek() -> Secret:
    """A fresh random 256-bit data key."""
    return Secret.random(DEK_SIZE)


class DataKey:
    """An unwrapped DEK, the key block that wraps it, and a monotonic deadline.

    ``expires_at`` is a value of the source's clock after which the DEK must
    not be used until the vault confirms the key again.  The object refuses
    to be pickled and hides its material in ``repr``.

    ``dek`` is a :class:`~cmkfs.secret.Secret`, taken over (the cache wipes it
    in place, which stops every handle sharing it); tests and tools may pass
    any bytes-like object, which is copied.
    """

    __slots__ = ("_dek", "key_block", "expires_at")

    def __init__(self, dek: Secret | BytesLike, key_block: KeyBlock, expires_at: float = math.inf) -> None:
        if len(dek) != DEK_SIZE:
            raise ValueError("a data key is 32 bytes")
        self._dek = Secret.of(dek)
        self.key_block = key_block
        self.expires_at = expires_at

    @property
    def dek(self) -> Secret:
        """The DEK: this object's own Secret, not a copy."""
        return self._dek

    def __repr__(self) -> str:
        return f"DataKey(key_uri={self.key_block.key_uri!r}, version={self.key_block.key_version!r}, dek=<hidden>)"

    def __reduce__(self) -> NoReturn:
        raise TypeError("DataKey holds key material and cannot be pickled")

    def derive(self, params: FileParams) -> tuple[SegmentCipher, bytes] | None:
        """The file's cipher and key commitment, or ``None`` if the DEK was
        wiped (expired or revoked) meanwhile: ask the source again.

        The file key is derived from the DEK's own buffer into the cipher's:
        it never exists as a plain ``bytes`` in any frame.  Another thread
        may wipe the key at any moment; ``wipe`` marks it expired *before*
        zeroing it, so a derivation finished before the mark is checked used
        intact material.
        """
        cipher, commitment = derive_cipher(self._dek, params)
        if self.expires_at == -math.inf:
            cipher.wipe()  # possibly derived from zeros: never use it
            return None
        return cipher, commitment

    def snapshot(self) -> Secret | None:
        """A private copy of the DEK (a Secret), or ``None`` if it was wiped.

        The same rule as :meth:`derive`: a copy taken before the mark is
        checked is known to be intact.
        """
        copy = Secret(self._dek)
        if self.expires_at == -math.inf:
            copy.wipe()
            return None
        return copy

    def wipe(self) -> None:
        """Overwrite the DEK in place (every holder of this object sees zeros)."""
        self.expires_at = -math.inf  # first: see derive()
        self._dek.wipe()


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

    def __init__(
        self, dek: Secret | BytesLike, key_block: KeyBlock, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._key = DataKey(Secret(dek), key_block)  # our own copy, whatever the caller does with theirs
        self.clock = clock

    def __repr__(self) -> str:
        return f"StaticKeySource({self._key.key_block.key_uri!r})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("StaticKeySource holds key material and cannot be pickled")

    def data_key_for_write(self, content_class: ContentClass = ContentClass.OTHER) -> DataKey:
        return self._key

    def data_key_for_read(self, key_block: KeyBlock) -> DataKey:
        if key_block != self._key.key_block:
            # Mimics a vault refusing to unwrap a foreign or altered key block.
            raise IntegrityError()
        return self._key
