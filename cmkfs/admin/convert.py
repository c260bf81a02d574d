"""Moving files across the encryption boundary: in-place conversion, export, and copies.

* :func:`encrypt_files` converts plaintext files in place, each one atomically:
  the ciphertext is written through ``cmk`` to the same path (a temp file and
  a rename on local disk, staged blocks and one commit on Azure Blob), so the
  plaintext stays readable until the ciphertext replaces it whole.  Files that
  already carry the cmkfs magic are skipped, which makes a second run finish
  what an interrupted one left.  A file that changes while it is read (size,
  mtime, ETag...) is left as it is and reported.
* :func:`export_files` decrypts to local files (temp file and rename, by
  :meth:`CMKFileSystem.get_file`) after :func:`check_export_destination` has
  refused any destination that overlaps the source or lies in a capacity.
* :func:`copy_files` re-encrypts under the destination's key (plaintext only
  in memory); :func:`put_files` encrypts local files.

:func:`open_location` turns what a person types (a ``cmk::`` URL, a capacity
name, a plain URL or path) into a ``cmk`` filesystem with the policy's key.
The user's view is docs/KEYS.md ("Encrypt, decrypt and file commands").
"""

from __future__ import annotations

import errno
import os
import posixpath
import secrets
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

import fsspec
from fsspec.spec import AbstractFileSystem

from ..errors import CMKError, ConfigurationError
from ..filesystem import CMKFileSystem
from ..format import MAGIC, looks_like_cmkfs
from ..policy import Capacity, Policy, normalize_url
from ..targets import PARTIAL_MARKER, is_partial_name, kept_metadata
from ..wipe import wipe
from .walk import is_partial_file

__all__ = [
    "WORKERS",
    "Location",
    "FileResult",
    "UnsafeDestinationError",
    "open_location",
    "files_under",
    "encrypt_file",
    "encrypt_files",
    "check_export_destination",
    "export_roots",
    "plan_transfer",
    "export_files",
    "copy_files",
    "put_files",
]

# Files converted at once: bounded, so a remote store sees at most this many uploads.
WORKERS = 8
# Plaintext moved per read while converting or copying.
COPY_CHUNK = 8 * 1024 * 1024
# Keys of a target's info dict that change when a file's bytes change.
_IDENTITY_KEYS = ("size", "mtime", "ino", "etag", "ETag", "last_modified", "LastModified", "generation", "version_id")
# Protocol spellings that name the same store.
_SAME_STORE = {"az": "abfs", "abfss": "abfs", "local": "file"}

# Outcomes of one file.
ENCRYPTED = "encrypted"
# Encrypted, but the file had other hard links: those names still hold the plaintext.
ENCRYPTED_LINKED = "encrypted_other_links_plaintext"
WOULD_ENCRYPT = "would_encrypt"
ALREADY_ENCRYPTED = "already_encrypted"
CHANGED = "changed"
SKIPPED_LINK = "skipped_symlink"
DONE = "done"
FAILED = "failed"

#: ``--storage-options``: fsspec options keyed by protocol.
StorageOptions = Mapping[str, Mapping[str, Any]]


class UnsafeDestinationError(ConfigurationError):
    """A destination that would put plaintext over or beside the ciphertext it came from."""


@dataclass(frozen=True)
class Location:
    """A place on a ``cmk`` filesystem, as resolved from what the user typed."""

    fs: CMKFileSystem
    path: str  # on ``fs`` (and on ``fs.fs``: the paths are the same)
    url: str  # where the ciphertext lives, normalized (``protocol://path``)
    capacity: Capacity | None
    given: str  # as the user typed it, for messages


@dataclass(frozen=True)
class FileResult:
    """What happened to one file: ``outcome`` is one of the module's outcome names."""

    path: str
    outcome: str
    size: int = 0
    dest: str | None = None
    error: BaseException | None = field(default=None, compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None and self.outcome != CHANGED

    def message(self) -> str:
        """One line naming the user's path, never a temp name."""
        if self.outcome == CHANGED:
            return f"{self.path}: changed while it was being encrypted; left as it was (run again)"
        if self.outcome == ENCRYPTED_LINKED:
            return (
                f"{self.path}: encrypted, but the file had other hard links and those names still hold "
                "the plaintext: find and remove them"
            )
        if self.error is None:
            return f"{self.path}: {self.outcome}"
        exc = self.error
        if isinstance(exc, OSError) and exc.strerror:
            text = exc.strerror  # its filename may be a temp name
        else:
            text = str(exc) or type(exc).__name__
        where = self.path if self.dest is None else f"{self.path} -> {self.dest}"
        return text if where in text else f"{where}: {text}"

    def to_dict(self) -> dict[str, Any]:
        exc = self.error
        return {
            "path": self.path,
            "dest": self.dest,
            "outcome": self.outcome,
            "size": self.size,
            "error": None if exc is None else {"type": type(exc).__name__, "message": self.message()},
        }


# -- where things are -------------------------------------------------------------


def open_location(
    target: str,
    policy: Policy,
    *,
    key: str | None = None,
    storage_options: StorageOptions | None = None,
    new: bool = False,
) -> Location:
    """The ``cmk`` filesystem and path for ``target``: a capacity name, a ``cmk::`` URL, a plain URL or a path.

    Files written there are encrypted under ``key``, else the key the policy
    gives their path (:meth:`CMKFileSystem.key_for_path`; a ``key`` that
    contradicts a capacity's is refused there).  ``new`` allows a
    bare name that is neither a capacity nor an existing path (a file to create).
    """
    options = storage_options or {}
    capacity: Capacity | None
    if new and target not in policy.capacities and "://" not in target and "::" not in target:
        url = normalize_url(target)
        capacity = policy.capacity_for(url)
    else:
        url, capacity = policy.resolve(target)
    protocol = url.partition("://")[0]
    if "::" in protocol:
        raise ConfigurationError(f"{target}: name the store itself (cmk::PROTOCOL://...), not a chain of filesystems")
    try:
        inner = fsspec.filesystem(protocol, **dict(options.get(protocol, {})))
    except (ImportError, ValueError) as exc:
        raise ConfigurationError(f"{target}: {exc}") from exc
    cmk_options = dict(options.get("cmk", {}))
    if key is not None:
        cmk_options["key"] = key
    # Without a key the filesystem follows the policy (its capacity's key, else the tenant key).
    fs = CMKFileSystem(fs=inner, skip_instance_cache=True, **cmk_options)
    return Location(fs, str(inner._strip_protocol(url)), url, capacity, target)


def files_under(loc: Location, *, recursive: bool = True) -> list[str]:
    """The files at ``loc`` (itself, if a file), in path order, without in-progress temp files."""
    inner: AbstractFileSystem = loc.fs.fs
    if not inner.exists(loc.path):
        raise FileNotFoundError(errno.ENOENT, "no such file or directory", loc.given)
    if not inner.isdir(loc.path):
        return [loc.path]
    if not recursive:
        raise IsADirectoryError(errno.EISDIR, "is a directory (pass --recursive)", loc.given)
    # A writer's temp file is skipped; a file only named like one is converted like any other.
    return sorted(n for n in inner.find(loc.path) if not is_partial_file(inner, n))


def _run(
    work: Callable[[str], FileResult], paths: Iterable[str], workers: int, failed: Callable[[str, BaseException], Any]
) -> Iterator[FileResult]:
    """``work`` over ``paths`` on at most ``workers`` threads, results as they finish."""
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="cmkfs-convert") as pool:
        futures = {pool.submit(work, p): p for p in paths}
        try:
            for future in as_completed(futures):
                try:
                    yield future.result()
                except (CMKError, OSError, ValueError) as exc:
                    # One bad file must not stop the walk: the files after it still need the work.
                    yield failed(futures[future], exc)
        finally:
            for future in futures:
                future.cancel()  # a consumer that stopped early (Ctrl-C) starts nothing new


# -- encrypt in place -------------------------------------------------------------------


class _Changed(Exception):
    """The plaintext changed while it was read: the writer discards."""


def _identity(inner: AbstractFileSystem, path: str) -> dict[str, Any]:
    """The target's fresh ``info`` of ``path`` (its listing cache dropped first)."""
    inner.invalidate_cache(path)
    info: dict[str, Any] = inner.info(path)
    return info


def _same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return all(a.get(k) == b.get(k) for k in _IDENTITY_KEYS)


def encrypt_file(fs: CMKFileSystem, path: str, *, dry_run: bool = False) -> FileResult:
    """Encrypt the plaintext file ``path`` in place under ``fs``'s key.

    A cmkfs file is left alone (``already_encrypted``).  The ciphertext is
    published only if the plaintext read matches its size and identity before
    and after the read; otherwise nothing is written (``changed``).
    """
    inner: AbstractFileSystem = fs.fs
    before = _identity(inner, path)
    if before.get("islink"):
        return FileResult(path, SKIPPED_LINK)  # replacing the link would replace it with a file (or fail, a folder)
    if before.get("type") not in (None, "file"):
        raise IsADirectoryError(errno.EISDIR, "not a file", path)
    size = int(before.get("size") or 0)
    head = bytes(inner.cat_file(path, 0, len(MAGIC))) if size else b""
    if looks_like_cmkfs(head):
        return FileResult(path, ALREADY_ENCRYPTED, size)
    if is_partial_name(path):
        # Encrypted, it would look exactly like a killed writer's temp file: hidden, and removed by clean.
        raise ConfigurationError(
            f"{path}: plaintext named like a writer's temp file (.NAME{PARTIAL_MARKER}...); "
            "rename it, then run encrypt again"
        )
    if dry_run:
        return FileResult(path, WOULD_ENCRYPT, size)
    buf = bytearray(max(1, min(size, COPY_CHUNK)))
    view = memoryview(buf)
    try:
        with inner.open(path, "rb") as src, fs.open(path, "wb", metadata=kept_metadata(before) or None) as out:
            copied = 0
            while True:
                n = src.readinto(buf)
                if not n:
                    break
                out.write(view[:n])
                copied += n
            # Leaving the with block by an exception discards the ciphertext: the plaintext stays.
            if copied != size or not _same(before, _identity(inner, path)):
                raise _Changed()
    except _Changed:
        return FileResult(path, CHANGED, size)
    finally:
        view.release()
        wipe(buf)  # the plaintext staging buffer does not linger
    if int(before.get("nlink") or 1) > 1:
        # The rename gave this name a new inode; the file's other names still point at the plaintext.
        return FileResult(path, ENCRYPTED_LINKED, size)
    return FileResult(path, ENCRYPTED, size)


def encrypt_files(
    fs: CMKFileSystem, paths: Iterable[str], *, dry_run: bool = False, workers: int = WORKERS
) -> Iterator[FileResult]:
    """:func:`encrypt_file` over ``paths``; a file that fails is reported and the walk goes on."""
    return _run(
        lambda p: encrypt_file(fs, p, dry_run=dry_run),
        paths,
        workers,
        lambda p, exc: FileResult(p, FAILED, error=exc),
    )


# -- decrypt to another place ----------------------------------------------------------------


def _store_url(url: str) -> str:
    """``url`` with one spelling per store and, on local disk, symbolic links resolved."""
    url = normalize_url(url)
    protocol, _, path = url.partition("://")
    protocol = _SAME_STORE.get(protocol, protocol)
    if protocol == "file":
        path = os.path.realpath(path)
    return f"{protocol}://{path.rstrip('/')}"


def _within(url: str, root: str) -> bool:
    return url == root or url.startswith(root.rstrip("/") + "/")


def check_export_destination(src: Location, dest: str, policy: Policy) -> str:
    """The local path ``dest``, once it is known not to put plaintext where ciphertext lives.

    Refused: ``dest`` equal to, inside, or holding the source root (the
    source directory, a single file's folder, and the capacity's root), and
    ``dest`` inside any capacity.  Only local
    destinations are supported.
    """
    if "::" in dest or ("://" in dest and not dest.lower().startswith("file://")):
        raise UnsafeDestinationError(f"{dest}: decrypted files are written to local paths only")
    local = dest[len("file://") :] if dest.lower().startswith("file://") else dest
    where = _store_url(local)
    for root, capacity in export_roots(src, policy):
        if capacity is None and (_within(where, root) or _within(root, where)):
            raise UnsafeDestinationError(
                f"{dest} overlaps the encrypted source {src.given}: plaintext is never written over or beside it"
            )
        if capacity is not None and _within(where, root):
            raise UnsafeDestinationError(f"{dest} is inside capacity {capacity}: plaintext is not written there")
    return os.path.abspath(os.path.expanduser(local))


def export_roots(src: Location, policy: Policy) -> list[tuple[str, str | None]]:
    """``(store URL, capacity name or None for the source)`` of every root plaintext is never written into.

    The source (a directory, or a single file's folder: plaintext does not go
    beside the ciphertext either), its capacity's root, and every capacity's root.
    """
    source = _store_url(src.url)
    roots: list[tuple[str, str | None]] = [(source if src.fs.isdir(src.path) else source.rsplit("/", 1)[0], None)]
    if src.capacity is not None:
        roots.append((_store_url(src.capacity.url), None))
    roots.extend((_store_url(c.url), c.name) for c in policy.capacities.values())
    return roots


def _refuse_unsafe_dir(local: str, real: str, forbidden: Sequence[tuple[str, str | None]]) -> None:
    """Raise if the folder ``real`` (resolved) that ``local`` would be written into lies in a forbidden root."""
    where = _store_url(real)
    for root, capacity in forbidden:
        if _within(where, root):
            what = f"capacity {capacity}" if capacity is not None else "the encrypted source"
            raise UnsafeDestinationError(f"{local}: its folder lies in {what}; nothing was written there")


def _fd_path(fd: int, fallback: str) -> str:
    """The resolved path of the open directory ``fd`` (``fallback`` resolved where /proc is missing)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return os.path.realpath(fallback)


def _open_output_dir(root: str, local: str, forbidden: Sequence[tuple[str, str | None]]) -> int:
    """An open descriptor of ``local``'s folder, created as needed below ``root`` without following links.

    ``root`` itself was checked (resolved) by :func:`check_export_destination`;
    a symbolic link (or a non-folder) anywhere below it is refused, and the
    folder reached is checked once more against ``forbidden``.
    """
    parent = os.path.dirname(local)
    base = root.rstrip(os.sep) + os.sep
    if parent == root.rstrip(os.sep) or not local.startswith(base):
        start, parts = parent, []
    else:
        start, parts = root, [p for p in parent[len(base) :].split(os.sep) if p]
    os.makedirs(start, exist_ok=True)
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(start, flags)
    try:
        walked = start
        for part in parts:
            walked = os.path.join(walked, part)
            try:
                os.mkdir(part, 0o777, dir_fd=fd)
            except FileExistsError:
                pass
            if stat.S_ISLNK(os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode):
                raise UnsafeDestinationError(f"{walked} is a symbolic link; nothing was written through it")
            try:
                nfd = os.open(part, flags | getattr(os, "O_NOFOLLOW", 0), dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UnsafeDestinationError(f"{walked} is not a folder; nothing was written there") from None
                raise
            os.close(fd)
            fd = nfd
        _refuse_unsafe_dir(local, _fd_path(fd, walked), forbidden)
        return fd
    except BaseException:
        os.close(fd)
        raise


def plan_transfer(
    src_root: str, files: list[str], dest: str, *, dest_is_dir: bool, sep: str = "/"
) -> list[tuple[str, str]]:
    """``(source file, destination)`` pairs.

    A single file goes to ``dest``, or into it when ``dest_is_dir``; the files
    of a tree keep their paths relative to ``src_root`` below ``dest``.
    """
    join = os.path.join if sep == os.sep else posixpath.join
    if len(files) == 1 and files[0] == src_root:
        name = posixpath.basename(src_root.rstrip("/"))
        return [(src_root, join(dest, name) if dest_is_dir else dest)]
    base = src_root.rstrip("/") + "/"
    pairs = []
    for f in files:
        rel = f[len(base) :] if f.startswith(base) else posixpath.basename(f)
        pairs.append((f, join(dest, *rel.split("/"))))
    return pairs


def export_files(
    src: Location,
    pairs: Iterable[tuple[str, str]],
    *,
    dest_root: str,
    policy: Policy,
    overwrite: bool = False,
    workers: int = WORKERS,
) -> Iterator[FileResult]:
    """Decrypt each ``(source path, local path)`` pair; each output appears whole or not at all.

    ``dest_root`` is the destination :func:`check_export_destination` accepted.
    Right before each write the output's folder is reached from it without
    following a symbolic link, and its resolved path is checked against
    :func:`export_roots`: a refused file is reported and nothing is written for it.
    """
    forbidden = export_roots(src, policy)

    def one(pair: tuple[str, str]) -> FileResult:
        path, local = pair
        dfd = _open_output_dir(dest_root, local, forbidden)
        try:
            name = os.path.basename(local)
            try:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                pass
            else:
                if stat.S_ISLNK(st.st_mode):
                    raise UnsafeDestinationError(f"{local} is a symbolic link; nothing was written through it")
                if not overwrite:
                    raise FileExistsError(errno.EEXIST, "destination exists (pass --force to overwrite)", local)
            tmp = f".{name}{PARTIAL_MARKER}{secrets.token_hex(8)}"
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
            tfd = os.open(tmp, flags, 0o666, dir_fd=dfd)
            try:
                with os.fdopen(tfd, "wb") as out:
                    src.fs.get_file(path, out)
                    size = out.tell()
                os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            except BaseException:
                try:
                    os.unlink(tmp, dir_fd=dfd)
                except FileNotFoundError:
                    pass
                raise
        finally:
            os.close(dfd)
        return FileResult(path, DONE, size, dest=local)

    return _pairs(one, pairs, workers)


def _pairs(
    one: Callable[[tuple[str, str]], FileResult], pairs: Iterable[tuple[str, str]], workers: int
) -> Iterator[FileResult]:
    table = dict(pairs)
    return _run(
        lambda p: one((p, table[p])),
        table,
        workers,
        lambda p, exc: FileResult(p, FAILED, dest=table[p], error=exc),
    )


def copy_files(
    src: Location, dst: Location, pairs: Iterable[tuple[str, str]], *, workers: int = WORKERS
) -> Iterator[FileResult]:
    """Copy each ``(source path, destination path)`` pair, re-encrypted under ``dst``'s key.

    The plaintext passes through memory only; each destination is published
    whole on close or not at all.
    """

    def one(pair: tuple[str, str]) -> FileResult:
        path, target = pair
        if _store_url(f"{src.url.partition('://')[0]}://{path}") == _store_url(
            f"{dst.url.partition('://')[0]}://{target}"
        ):
            raise UnsafeDestinationError(f"{target}: source and destination are the same file")
        parent = dst.fs._parent(target)
        if parent:
            dst.fs.makedirs(parent, exist_ok=True)
        copied = 0
        with src.fs.open(path, "rb") as fin, dst.fs.open(target, "wb") as fout:
            while chunk := fin.read(COPY_CHUNK):
                fout.write(chunk)
                copied += len(chunk)
        return FileResult(path, DONE, copied, dest=target)

    return _pairs(one, pairs, workers)


def put_files(dst: Location, pairs: Iterable[tuple[str, str]], *, workers: int = WORKERS) -> Iterator[FileResult]:
    """Encrypt each ``(local path, destination path)`` pair; each is published whole or not at all."""

    def one(pair: tuple[str, str]) -> FileResult:
        local, target = pair
        dst.fs.put_file(local, target)
        return FileResult(local, DONE, os.path.getsize(local), dest=target)

    return _pairs(one, pairs, workers)
