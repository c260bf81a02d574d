"""Overwriting, in place, buffers that held key material or plaintext.

Python cannot promise that no other copy exists (docs/SECURITY.md, "Memory
hygiene"); what cmkfs owns in a mutable buffer, it overwrites when done with it.
"""

from __future__ import annotations

import ctypes

__all__ = ["wipe"]

_SMALL = 256


def wipe(buffer: bytearray | memoryview) -> None:
    """Zero a writable buffer (``bytearray`` or a writable ``memoryview``) in place."""
    if not len(buffer):
        return
    view = memoryview(buffer)
    if view.readonly:
        raise TypeError("cannot wipe a read-only buffer")
    size = view.nbytes
    if size <= _SMALL:
        view.cast("B")[:] = bytes(size)  # keys: a slice assignment beats setting up a ctypes view
    else:
        # One memset: a 256 KiB segment buffer in ~20 us, where ``buf[:] = bytes(len(buf))``
        # first allocates and faults in a second buffer of the same size.
        ctypes.memset((ctypes.c_char * size).from_buffer(view), 0, size)
    view.release()
