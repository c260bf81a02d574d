"""Secrets in one small object: DEKs, file keys, local KEKs, PINs and passphrases never sit in a plain local.

Error reporters that capture locals show ``repr()`` of every local of every
frame, and a ``bytes`` repr shows its content (docs/SECURITY.md, "no key
material in error reports").  So key material travels only inside a
:class:`Secret`, and comes out only inside the expression that calls the
crypto library (``AESGCM(kek.reveal())``), as a read-only ``memoryview``.
"""

from __future__ import annotations

import hmac
import os
import traceback
from collections.abc import Callable
from typing import NoReturn, TypeAlias

from .wipe import wipe

__all__ = ["BytesLike", "Secret", "clear_frame_locals"]

#: What cmkfs accepts wherever it takes bytes: sized buffers (as pyca/cryptography's ``Buffer``).
BytesLike: TypeAlias = bytes | bytearray | memoryview


class Secret:
    """Key material (a DEK, a file key, a KEK) or a PIN or passphrase, in a buffer only this object owns.

    ``Secret(material)`` copies any bytes-like ``material``; the caller's
    buffer stays the caller's to wipe.  The repr hides the content, pickling
    and copying are refused, and :meth:`wipe` (or dropping the object)
    overwrites the buffer in place.
    """

    __slots__ = ("_buf",)

    def __init__(self, material: BytesLike | Secret) -> None:
        if isinstance(material, Secret):
            material = material.reveal()
        elif not isinstance(material, (bytes, bytearray, memoryview)):
            raise TypeError("key material must be bytes, bytearray, memoryview or a Secret")
        self._buf = bytearray(material)

    @classmethod
    def of(cls, value: BytesLike | Secret, size: int | None = None, what: str = "key") -> Secret:
        """``value`` itself if it is a Secret, else a Secret holding a copy; ``size`` is checked."""
        secret = value if isinstance(value, Secret) else cls(value)
        if size is not None and len(secret) != size:
            if secret is not value:
                secret.wipe()
            raise ValueError(f"{what} must be {size} bytes")
        return secret

    @classmethod
    def of_text(cls, text: str, what: str = "secret") -> Secret:
        """A Secret holding ``text`` (a PIN, a passphrase) in UTF-8.

        The caller's ``str`` cannot be wiped; its UTF-8 bytes exist only as a
        temporary, never bound to a name.  Text that UTF-8 cannot encode (a
        lone surrogate) is a ``ValueError`` that does not carry the text.
        """
        if not isinstance(text, str):
            raise TypeError(f"{what} must be str")
        try:
            return cls(text.encode("utf-8"))
        except UnicodeEncodeError:
            pass
        # Raised outside the handler: the UnicodeEncodeError holds the text and must not become the context.
        raise ValueError(f"{what} is not valid Unicode text")

    @classmethod
    def random(cls, size: int) -> Secret:
        """``size`` bytes from the operating system's CSPRNG."""
        return cls(os.urandom(size))

    @classmethod
    def filled(cls, size: int, fill: Callable[[memoryview], object]) -> Secret:
        """A Secret of ``size`` bytes written by ``fill(view)``, e.g. a KDF's ``derive_into``.

        The material is produced straight into this object's buffer, so no
        copy of it is ever bound to a name; a failed ``fill`` leaves zeros.
        """
        secret = cls.__new__(cls)
        secret._buf = bytearray(size)
        try:
            fill(memoryview(secret._buf))
        except BaseException:
            secret.wipe()
            raise
        return secret

    def reveal(self) -> memoryview:
        """A read-only view of the material, for the one expression that hands it to a crypto call."""
        return memoryview(self._buf).toreadonly()

    def matches(self, other: Secret) -> bool:
        """Whether ``other`` holds the same material (in constant time)."""
        if not isinstance(other, Secret):
            raise TypeError("a Secret compares only with a Secret")
        return hmac.compare_digest(self._buf, other._buf)

    def wipe(self) -> None:
        """Overwrite the material in place: every holder of this object sees zeros."""
        wipe(self._buf)

    def __len__(self) -> int:
        return len(self._buf)

    def __bytes__(self) -> bytes:
        # An explicit copy out, for tools and tests; the library never binds one to a name.
        return bytes(self._buf)

    def __repr__(self) -> str:
        return f"Secret(<{len(self._buf)} bytes hidden>)"

    def __reduce__(self) -> NoReturn:
        raise TypeError("a Secret holds key material and cannot be pickled or copied")

    def __del__(self) -> None:
        try:
            wipe(self._buf)
        except Exception:  # noqa: BLE001 - interpreter shutdown, or never initialised
            pass


def clear_frame_locals(exc: BaseException) -> BaseException:
    """Drop the local variables of the finished frames in ``exc``'s traceback and its causes.

    For errors that come out of third-party code that was handed key
    material (a vault SDK's ``wrap_key(alg, key)`` frame holds the DEK as
    ``bytes``): the frames, file names and line numbers stay in the report,
    their locals do not.  Frames still running (the caller's) are left alone.
    """
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        item = todo.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        traceback.clear_frames(item.__traceback__)
        todo += [item.__cause__, item.__context__]
    return exc
