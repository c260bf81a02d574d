"""Any fsspec filesystem: ``fs.open(path, "wb")`` to write, ``cat_file`` ranges to read.

As atomic as the backend's own upload (the table in docs/FILESYSTEM.md):
register a sink for a backend that streams to the final path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fsspec.spec import AbstractFileSystem

from ..errors import IntegrityError
from ..secret import BytesLike

__all__ = ["FsspecSink", "CatFileSource"]


class FsspecSink:
    """``fs.open(path, "wb")``: commit = close, discard = the file's ``discard()`` (else ``rm``)."""

    def __init__(
        self,
        fs: AbstractFileSystem,
        path: str,
        metadata: Mapping[str, object] | None = None,
        *,
        exclusive: bool = False,
    ) -> None:
        self._fs = fs
        self.path = path
        kwargs = {"metadata": metadata} if metadata else {}
        if exclusive and fs.exists(path):
            raise FileExistsError(path)
        self._f = fs.open(path, "xb" if exclusive else "wb", **kwargs)
        self._done = False

    def write(self, data: BytesLike) -> int:
        written: int = self._f.write(data)
        return written

    def commit(self) -> None:
        if self._done:
            return
        self._done = True
        self._f.close()

    def discard(self) -> None:
        if self._done:
            return
        self._done = True
        f = self._f
        discard = getattr(f, "discard", None)
        if callable(discard):
            discard()  # aborts a multipart / block upload where the backend supports it
            _never_commit(f)
        else:
            try:
                f.close()
            finally:
                try:
                    self._fs.rm_file(self.path)
                except FileNotFoundError:
                    pass


def _never_commit(f: Any) -> None:
    """Stop a discarded file from publishing itself later (fsspec files commit
    from ``close()`` and ``__del__``)."""
    try:
        f.closed = True  # fsspec's AbstractBufferedFile: close() and __del__ become no-ops
        return
    except AttributeError:
        pass
    for name in ("commit", "close", "flush"):  # io-based files such as MemoryFile
        try:
            setattr(f, name, _noop)
        except AttributeError:
            pass


def _noop(*args: object, **kwargs: object) -> None:
    return None


class CatFileSource:
    """Ranged reads through ``cat_file(path, start, end)``: no read-ahead of the
    target's own (adlfs would otherwise pull 50 MiB blocks)."""

    def __init__(self, fs: AbstractFileSystem, path: str, size: int | None = None) -> None:
        self._fs = fs
        self._path = path
        self.size = int(fs.info(path)["size"]) if size is None else int(size)

    def read_range(self, start: int, end: int) -> bytes:
        if end <= start:
            return b""
        data: bytes = self._fs.cat_file(self._path, start=start, end=end)
        if len(data) != end - start:
            raise IntegrityError()  # the object changed size under us
        return data

    def close(self) -> None:
        pass
