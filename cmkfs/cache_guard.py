"""Refuse fsspec disk caches anywhere above a ``cmk`` filesystem.

``simplecache::``, ``filecache::`` and ``blockcache::`` store what they read
from their target in local files.  Over ``cmk`` that would be decrypted
plaintext on disk, readable after the key is revoked.  fsspec builds a chain
inner layer first and offers no hook that sees a cache being put over a
filesystem, so this module adds one, in the one place every caching
filesystem sets its target: the ``fs`` attribute of
:class:`fsspec.implementations.cached.CachingFileSystem`.  A data descriptor
there checks every assignment (at construction and any swap afterwards) and
walks the whole chain under the new target, through any wrapper that holds
filesystems (``dir::``, other caches, async wrappers, mappings of
filesystems), refusing the cache if a ``cmk`` layer is anywhere below it.

This is the only place cmkfs touches another library's class.  Its
preconditions are checked when it is installed and by the test suite
(``tests/test_cache_guard.py``); if a future fsspec breaks them, cmkfs
refuses to construct a ``CMKFileSystem`` rather than run unguarded.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from typing import Any

from fsspec.implementations.cached import CachingFileSystem
from fsspec.spec import AbstractFileSystem

from .errors import ConfigurationError

__all__ = ["check_not_cached", "install_cache_guard", "guard_installed", "contains_cmk"]

# How deep a chain of wrapping filesystems is searched.  Real chains are a
# few layers; a cycle is cut by the visited set.
MAX_CHAIN_DEPTH = 64

_lock = threading.Lock()
_installed = False


def _is_cmk(node: object) -> bool:
    # The filesystem itself, or any file object it hands out: a cache over a
    # filesystem that reads through one (zip://, tar:// over a cmk file) is
    # a cache of plaintext too.
    from .files import CMKReadFile, CMKTextReader, CMKTextWriter, CMKWriteFile, CompressedFile
    from .filesystem import CMKFileSystem  # the filesystem module imports this one

    return isinstance(node, (CMKFileSystem, CMKReadFile, CMKWriteFile, CompressedFile, CMKTextReader, CMKTextWriter))


def _holds_files(node: object) -> bool:
    """Objects worth walking into: filesystems, file objects and the
    ``OpenFile``-style holders fsspec uses (anything with an ``fs``)."""
    if isinstance(node, (AbstractFileSystem, io.IOBase)):
        return True
    try:
        state = object.__getattribute__(node, "__dict__")
    except AttributeError:
        return False
    return isinstance(state, dict) and isinstance(state.get("fs"), AbstractFileSystem)


def _children(node: object) -> Iterator[object]:
    """What ``node`` holds that may lead to a cmk layer: its instance
    attributes (and the items of lists, tuples and dicts among them) that are
    filesystems or file objects, and the stream a C-level io wrapper wraps.
    Attribute names are not listed: every wrapper is followed, whatever it
    calls its target."""
    for name in ("buffer", "raw"):  # io.TextIOWrapper / BufferedReader keep these in C slots
        if isinstance(node, (io.TextIOWrapper, io.BufferedReader, io.BufferedWriter)):
            try:
                inner = getattr(node, name)
            except (AttributeError, ValueError):  # detached or closed
                continue
            if _holds_files(inner):
                yield inner
    try:
        state = object.__getattribute__(node, "__dict__")
    except AttributeError:
        return
    if not isinstance(state, dict):
        return
    for value in list(state.values()):
        if isinstance(value, dict):
            items: list[object] = list(value.values())
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            items = [value]
        yield from (item for item in items if _holds_files(item))


def contains_cmk(fs: object) -> bool:
    """True if ``fs`` is, or holds at any depth, a ``CMKFileSystem`` or a
    file object it handed out."""
    seen: set[int] = set()
    todo: list[tuple[object, int]] = [(fs, 0)]
    while todo:
        node, depth = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if _is_cmk(node):
            return True
        if depth >= MAX_CHAIN_DEPTH:
            # Deeper than any real chain: refuse rather than guess.
            raise ConfigurationError("filesystem chain too deep to check for an encrypted layer")
        todo.extend((child, depth + 1) for child in _children(node))
    return False


def _refusal(cache: object) -> ConfigurationError:
    return ConfigurationError(
        f"{type(cache).__name__} over cmk:// would keep decrypted files on local disk; "
        "cache the ciphertext instead: cmk::simplecache::PROTOCOL://..."
    )


def check_not_cached(fs: object) -> None:
    """Raise :class:`ConfigurationError` if ``fs`` is, or wraps, a disk cache
    that has a ``CMKFileSystem`` anywhere below it."""
    seen: set[int] = set()
    todo: list[object] = [fs]
    while todo:
        node = todo.pop()
        if id(node) in seen or len(seen) > MAX_CHAIN_DEPTH * 4:
            continue
        seen.add(id(node))
        if isinstance(node, CachingFileSystem) and any(contains_cmk(c) for c in _children(node)):
            raise _refusal(node)
        todo.extend(_children(node))


class _GuardedTarget:
    """The ``fs`` attribute of every caching filesystem: stored where fsspec
    reads it (the instance ``__dict__``), checked whenever it is set."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        try:
            return instance.__dict__["fs"]
        except KeyError:
            raise AttributeError("fs") from None

    def __set__(self, instance: Any, value: Any) -> None:
        if value is not None and contains_cmk(value):
            raise _refusal(instance)
        instance.__dict__["fs"] = value

    def __delete__(self, instance: Any) -> None:
        instance.__dict__.pop("fs", None)


def _preconditions() -> str | None:
    """Why the guard cannot work with this fsspec, or ``None`` if it can."""
    for cls in CachingFileSystem.__mro__:
        if cls is object:
            continue
        if "__setattr__" in vars(cls):
            return f"{cls.__name__} defines __setattr__"
        if "fs" in vars(cls) and not isinstance(vars(cls)["fs"], _GuardedTarget):
            return f"{cls.__name__} defines a class attribute 'fs'"
    return None


def _guard_subclass(cls: type) -> None:
    """A subclass that declares ``fs`` itself (``fs: AbstractFileSystem | None
    = None`` is a common typed idiom) would shadow the descriptor: put the
    guard back on it."""
    if "fs" in vars(cls) and not isinstance(vars(cls)["fs"], _GuardedTarget):
        guard = _GuardedTarget()
        guard.__set_name__(cls, "fs")
        type.__setattr__(cls, "fs", guard)


def _all_subclasses(cls: type) -> list[type]:
    found: list[type] = []
    todo: list[type] = list(cls.__subclasses__())
    while todo:
        sub = todo.pop()
        if sub not in found:
            found.append(sub)
            todo.extend(sub.__subclasses__())
    return found


def _init_subclass(cls: type, /, **kwargs: Any) -> None:
    super(CachingFileSystem, cls).__init_subclass__(**kwargs)
    _guard_subclass(cls)


def install_cache_guard() -> None:
    """Put the checking descriptor on ``CachingFileSystem.fs``; idempotent.

    Raises :class:`ConfigurationError` if this fsspec release no longer sets
    a cache's target through a plain attribute (see :func:`guard_installed`).
    """
    global _installed
    with _lock:
        if _installed:
            return
        problem = _preconditions()
        if problem is not None:
            raise ConfigurationError(
                f"cmkfs cannot guard fsspec's disk caches in this fsspec release ({problem}); "
                "refusing to run without the guard"
            )
        guard = _GuardedTarget()
        guard.__set_name__(CachingFileSystem, "fs")
        CachingFileSystem.fs = guard
        # Subclasses defined before and after this point keep the guard.
        for sub in _all_subclasses(CachingFileSystem):
            _guard_subclass(sub)
        CachingFileSystem.__init_subclass__ = classmethod(_init_subclass)
        _installed = True


def guard_installed() -> bool:
    return _installed and isinstance(vars(CachingFileSystem).get("fs"), _GuardedTarget)
