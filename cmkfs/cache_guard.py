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


def _is_cmk(fs: object) -> bool:
    from .filesystem import CMKFileSystem  # the filesystem module imports this one

    return isinstance(fs, CMKFileSystem)


def _children(fs: object) -> Iterator[AbstractFileSystem]:
    """Filesystems held by ``fs`` (its instance attributes, and lists, tuples
    and dict values of them): every wrapper, whatever its attribute names."""
    try:
        state = object.__getattribute__(fs, "__dict__")
    except AttributeError:
        return
    for value in list(state.values()):
        if isinstance(value, AbstractFileSystem):
            yield value
        elif isinstance(value, dict):
            yield from (v for v in list(value.values()) if isinstance(v, AbstractFileSystem))
        elif isinstance(value, (list, tuple)):
            yield from (v for v in value if isinstance(v, AbstractFileSystem))


def contains_cmk(fs: object) -> bool:
    """True if ``fs`` is, or wraps at any depth, a ``CMKFileSystem``."""
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
        _installed = True


def guard_installed() -> bool:
    return _installed and isinstance(vars(CachingFileSystem).get("fs"), _GuardedTarget)
