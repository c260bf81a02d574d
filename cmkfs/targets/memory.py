"""fsspec's memory filesystem: one ``pipe_file`` on commit; reads straight from the stored buffer."""

from __future__ import annotations

import io

from fsspec.implementations.memory import MemoryFileSystem

from ..errors import IntegrityError
from ..secret import BytesLike

__all__ = ["MemorySink", "MemorySource"]


class MemorySink:
    """Buffer the ciphertext, publish it with one ``pipe_file`` on commit."""

    def __init__(self, fs: MemoryFileSystem, path: str, *, exclusive: bool = False) -> None:
        self._fs = fs
        self.path = path
        self._exclusive = exclusive
        if fs.isdir(path):
            raise IsADirectoryError(path)
        if exclusive and fs.exists(path):
            raise FileExistsError(path)
        self._buf: io.BytesIO | None = io.BytesIO()

    def write(self, data: BytesLike) -> int:
        if self._buf is None:
            raise ValueError("write to a committed or discarded sink")
        return self._buf.write(data)

    def commit(self) -> None:
        if self._buf is None:
            return
        data, self._buf = self._buf.getvalue(), None
        self._fs.pipe_file(self.path, data, mode="create" if self._exclusive else "overwrite")

    def discard(self) -> None:
        self._buf = None


class MemorySource:
    """Ranged reads straight out of a memory file's buffer (no intermediate copy)."""

    def __init__(self, fs: MemoryFileSystem, path: str) -> None:
        path = fs._strip_protocol(path)
        try:
            file: io.BytesIO = fs.store[path]
        except KeyError:
            raise FileNotFoundError(path) from None
        # The object we opened stays the object we read: a later write
        # publishes a new one under the same path.
        self._file: io.BytesIO | None = file
        self.size = file.getbuffer().nbytes

    def _opened(self) -> io.BytesIO:
        if self._file is None:
            raise ValueError("I/O operation on closed file")
        return self._file

    def read_range(self, start: int, end: int) -> bytes:
        with self._opened().getbuffer() as view:
            return bytes(view[start:end])

    def read_range_into(self, start: int, out: bytearray | memoryview) -> None:
        with self._opened().getbuffer() as view:
            if start + len(out) > view.nbytes:
                raise IntegrityError()
            memoryview(out)[:] = view[start : start + len(out)]

    def close(self) -> None:
        self._file = None
