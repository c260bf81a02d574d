"""Keep cmkfs working, and its key promises kept, in a child made by ``fork()``.

``fork()`` copies the whole memory of a process but only the calling thread
(multiprocessing's ``fork`` start method, prefork servers such as gunicorn).
Left alone, a child would inherit thread pools whose threads stayed in the
parent (its first large read or write would wait for ever), no key sweeper
(idle handles would keep file keys and plaintext past the TTL), locks that
another thread held at that moment (held for ever), and the parent's PKCS#11
sessions (the standard requires a child to call ``C_Initialize`` itself).

One ``os.register_at_fork(after_in_child=...)`` hook handles all of them, in
the child only.  Every module-level lock is replaced by a fresh one: the
child has a single thread, so nobody else can be inside those critical
sections, and what they guard is consistent between any two bytecodes (an
entry added to or removed from a dict or set, a pool or provider made and
stored) or is rebuilt in the child anyway (pools, HSM sessions).  The parent
does not take the locks before forking: that would make a fork wait behind
other threads, and a thread blocked on one of them while holding a lock of
its own (a reader's, a filesystem's) would then be sure to pass that lock to
the child held.  Locks of objects are renewed only if they were held
(:func:`renewed`).

This module imports no other cmkfs module: the hook finds modules in
``sys.modules``, so a module never imported has nothing to reset, and the hook
never imports anything.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import overload

__all__ = ["renewed", "MODULE_LOCKS", "CHILD_RESETS"]

# (module, attribute) of every module-level lock in cmkfs; a test fails when a
# module gains one that is not listed here.
MODULE_LOCKS = (
    ("cmkfs.stream", "_executor_lock"),
    ("cmkfs.targets.azure", "_executor_lock"),
    ("cmkfs.targets.azure", "_CLIENTS_LOCK"),
    ("cmkfs.keycache", "_CACHES_LOCK"),
    ("cmkfs.keys", "_HOLDERS_LOCK"),
    ("cmkfs.targets", "_LOCK"),
    ("cmkfs.cache_guard", "_lock"),
    ("cmkfs.providers.base", "_LOCK"),
    ("cmkfs.providers.pkcs11.sessions", "_LIBS_LOCK"),
    ("cmkfs.testing.fake_keyvault", "_POOL_LOCK"),
    ("cmkfs.azure_preflight", "_lock"),
)
# What the child rebuilds, in this order: pools first (nothing below needs
# them), open handles before key caches (a handle another thread was inside is
# closed before the caches are emptied and the sweeper restarted), then HSMs.
CHILD_RESETS = (
    ("cmkfs.stream", "_forget_executor"),
    ("cmkfs.targets.azure", "_forget_uploads"),
    ("cmkfs.keys", "_after_fork_in_child"),
    ("cmkfs.keycache", "_after_fork_in_child"),
    ("cmkfs.providers.pkcs11.sessions", "_after_fork_in_child"),
)

_RLOCK = type(threading.RLock())
_LOCK_TYPES = (type(threading.Lock()), _RLOCK)


@overload
def renewed(lock: threading.Lock) -> threading.Lock: ...
@overload
def renewed(lock: threading.RLock) -> threading.RLock: ...
def renewed(lock: threading.Lock | threading.RLock) -> threading.Lock | threading.RLock:
    """``lock`` if it is free in this (forked) process, else a fresh lock of its kind.

    In a child only the forking thread exists.  A lock it cannot take was held
    by a thread that did not come along, and would stay held for ever.  A lock
    the forking thread itself holds is an ``RLock`` it can take again (kept),
    or a plain lock held by a ``with`` block, which releases the object it
    acquired (so replacing it is harmless).
    """
    if lock.acquire(blocking=False):
        lock.release()
        return lock
    return _fresh_like(lock)


def _fresh_like(lock: threading.Lock | threading.RLock) -> threading.Lock | threading.RLock:
    return threading.RLock() if isinstance(lock, _RLOCK) else threading.Lock()


def _renew_lock_attributes(obj: object) -> None:
    """Renew the held locks among ``obj``'s attributes (providers: their locks
    guard only client and session caches, which they rebuild on demand)."""
    try:
        names = [name for name, value in vars(obj).items() if isinstance(value, _LOCK_TYPES)]
    except TypeError:  # no __dict__
        return
    for name in names:
        setattr(obj, name, renewed(getattr(obj, name)))


def _after_fork_in_child() -> None:
    errors: list[Exception] = []
    for module_name, name in MODULE_LOCKS:
        module = sys.modules.get(module_name)
        if module is None:
            continue
        lock = getattr(module, name, None)
        if not isinstance(lock, _LOCK_TYPES):
            errors.append(AttributeError(f"{module_name}.{name} is not a lock any more: update cmkfs.forksafe"))
            continue
        setattr(module, name, _fresh_like(lock))
    base = sys.modules.get("cmkfs.providers.base")
    for provider in list(getattr(base, "_INSTANCES", {}).values()):
        _renew_lock_attributes(provider)
    for module_name, name in CHILD_RESETS:
        module = sys.modules.get(module_name)
        if module is None:
            continue
        try:
            getattr(module, name)()
        except Exception as exc:  # noqa: BLE001 - every step runs; the first failure is reported below
            errors.append(exc)
    if errors:
        raise errors[0]  # Python reports it ("Exception ignored in ...") and the child goes on


os.register_at_fork(after_in_child=_after_fork_in_child)
