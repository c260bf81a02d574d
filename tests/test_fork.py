"""Fork safety: a child made by ``fork()`` (multiprocessing's fork start method,
prefork servers) after the parent used cmkfs must work, and keep the TTL promise.

``fork()`` copies memory but only the calling thread: thread pools, the key
sweeper and any lock another thread held at that moment would be copied
without the threads that run, or release, them.  Every child here runs under a
deadline and is killed when it passes: a hung child fails the test, never the
test session.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import multiprocessing
import os
import pkgutil
import signal
import threading
import time
import traceback

import fsspec
import pytest

import cmkfs
from cmkfs import forksafe, keycache, stream
from cmkfs.providers.local import LocalVaultProvider

# A 4 MiB round trip takes well under a second; a child that hangs never ends.
CHILD_DEADLINE = 30.0
# Several segments, and over the 2 MiB from which a single write is sealed on the pool.
BIG = 4 * 1024 * 1024 + 123
KEY = "local://fork-test"
_LOCK_TYPES = (type(threading.Lock()), type(threading.RLock()))


@pytest.fixture
def key(isolated_cmkfs_home):
    LocalVaultProvider().create("fork-test")
    return KEY


@pytest.fixture
def root(tmp_path):
    (tmp_path / "data").mkdir()
    return str(tmp_path / "data")


def _filesystem(**options):
    # threads=2 even on a one-core host: the pool must be in play.
    return fsspec.filesystem("cmk", target_protocol="file", key=KEY, threads=2, **options)


def _parent_uses_the_pool(root: str) -> str:
    """The parent's large write and read; returns the SHA-256 of what it wrote."""
    fs = _filesystem()
    data = os.urandom(BIG)
    fs.pipe_file(f"{root}/parent.bin", data)  # one large write: sealed on the pool
    assert fs.cat_file(f"{root}/parent.bin") == data  # a multi-segment read: opened on the pool
    assert stream._executor is not None, "the test needs a parent that has used the segment pool"
    return hashlib.sha256(data).hexdigest()


def _round_trip(home: str, root: str, tag: str, parent_digest: str) -> None:
    """A large write and read through a filesystem made in the child, and a
    large read of the parent's file."""
    os.environ["CMKFS_HOME"] = home
    fs = _filesystem()
    data = os.urandom(BIG)
    path = f"{root}/{tag}.bin"
    with fs.open(path, "wb") as f:
        f.write(data)
    assert fs.cat_file(path) == data
    assert hashlib.sha256(fs.cat_file(f"{root}/parent.bin")).hexdigest() == parent_digest


def _wait_or_kill(pid: int, timeout: float) -> int | None:
    """The child's exit code, or ``None`` (after killing it) if it outlived ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


def _in_forked_child(fn, *args, timeout: float = CHILD_DEADLINE) -> None:
    """Run ``fn(*args)`` in a child made by a bare ``os.fork()``; fail if it fails or hangs."""
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            fn(*args)
            code = 0
        except BaseException:  # noqa: BLE001 - reported through the exit code and stderr
            traceback.print_exc()
        finally:
            os._exit(code)
    code = _wait_or_kill(pid, timeout)
    assert code is not None, f"the forked child hung: still running after {timeout:.0f} s"
    assert code == 0, "the forked child failed (its traceback is in the captured stderr)"


# -- the pools ----------------------------------------------------------------------


def test_os_fork_child_reads_and_writes_after_the_parent_used_the_pool(key, root, isolated_cmkfs_home):
    digest = _parent_uses_the_pool(root)
    _in_forked_child(_round_trip, str(isolated_cmkfs_home), root, "child", digest)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_multiprocessing_child_reads_and_writes_after_the_parent_used_the_pool(method, key, root, isolated_cmkfs_home):
    digest = _parent_uses_the_pool(root)
    ctx = multiprocessing.get_context(method)
    proc = ctx.Process(target=_round_trip, args=(str(isolated_cmkfs_home), root, method, digest))
    proc.start()
    try:
        proc.join(CHILD_DEADLINE)
        hung = proc.is_alive()
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join(10)
    assert not hung, f"the {method} child hung: still running after {CHILD_DEADLINE:.0f} s"
    assert proc.exitcode == 0


def test_forked_child_uses_the_azure_upload_pool():
    from cmkfs.targets import azure as targets_azure

    assert targets_azure._uploads().submit(int, "1").result(timeout=10) == 1

    def child():
        assert targets_azure._uploads().submit(int, "2").result(timeout=10) == 2

    _in_forked_child(child)


# -- the sweeper --------------------------------------------------------------------


def test_idle_handle_in_forked_child_drops_its_key_after_the_ttl(key, root, monkeypatch):
    ttl = 1.0
    monkeypatch.setattr(keycache, "SWEEP_INTERVAL", 0.2)  # shorter, never longer: the child's sweeper reads it
    # One filesystem made before the fork, as a prefork server's master makes it:
    # the child makes no new key cache, so nothing in the child starts a sweeper by chance.
    fs = _filesystem(cache_ttl=ttl, skip_instance_cache=True)
    data = os.urandom(BIG)
    fs.pipe_file(f"{root}/idle.bin", data)

    def child():
        f = fs.open(f"{root}/idle.bin", "rb", cache_type="none")
        assert f.read(16) == data[:16]
        reader = f._reader
        assert reader._cipher is not None
        deadline = time.monotonic() + ttl + 10 * keycache.SWEEP_INTERVAL + 5
        while reader._cipher is not None:  # idle: only the sweeper can drop the key
            assert time.monotonic() < deadline, "an idle handle in the child kept its file key past the TTL"
            time.sleep(0.05)
        assert reader._cache == {}
        assert f.read(16) == data[16:32]  # the next read asks the vault again
        f.close()

    _in_forked_child(child)


# -- locks held by other threads at the moment of fork --------------------------------


def _hold_while_forking(get_lock, hold: float = 0.5):
    """A thread that holds ``get_lock()`` for ``hold`` seconds; returns once it holds it."""
    held = threading.Event()

    def holder():
        with get_lock():
            held.set()
            time.sleep(hold)

    thread = threading.Thread(target=holder, daemon=True)
    thread.start()
    assert held.wait(10)
    return thread


def test_forksafe_knows_every_module_level_lock():
    found = set()
    for info in pkgutil.walk_packages(cmkfs.__path__, "cmkfs."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        found |= {(info.name, name) for name, value in vars(module).items() if isinstance(value, _LOCK_TYPES)}
    assert found == set(forksafe.MODULE_LOCKS), "add new module-level locks to cmkfs.forksafe.MODULE_LOCKS"
    for module_name, name in forksafe.CHILD_RESETS:
        assert callable(getattr(importlib.import_module(module_name), name))


@pytest.mark.parametrize(("module_name", "name"), forksafe.MODULE_LOCKS)
def test_module_lock_held_by_another_thread_is_free_in_the_child(module_name, name):
    module = importlib.import_module(module_name)
    thread = _hold_while_forking(lambda: getattr(module, name))

    def child():
        lock = getattr(module, name)  # looked up again: the child may have a fresh one
        assert lock.acquire(timeout=5), f"{module_name}.{name} was inherited held"
        lock.release()

    try:
        _in_forked_child(child)
    finally:
        thread.join(10)


def test_shared_provider_locks_held_at_fork_are_free_in_the_child(key):
    from cmkfs.providers.base import provider_for

    provider = provider_for(KEY)  # the instance every key cache in the process shares
    names = [name for name, value in vars(provider).items() if isinstance(value, _LOCK_TYPES)]
    assert names, "the test needs a provider with a lock"
    threads = [_hold_while_forking(lambda name=name: getattr(provider, name)) for name in names]

    def child():
        for name in names:
            lock = getattr(provider, name)
            assert lock.acquire(timeout=5), f"{type(provider).__name__}.{name} was inherited held"
            lock.release()

    try:
        _in_forked_child(child)
    finally:
        for thread in threads:
            thread.join(10)


def test_key_cache_busy_at_fork_is_usable_and_empty_in_the_child(key, root):
    fs = _filesystem(skip_instance_cache=True)
    data = os.urandom(4096)
    fs.pipe_file(f"{root}/small.bin", data)
    cache = fs.keys
    assert "entries=1" in repr(cache)
    thread = _hold_while_forking(lambda: cache._lock)

    def child():
        # A cache's state may be half-updated by a thread the child does not
        # have: the child starts with it empty and asks the vault again.
        assert "entries=0" in repr(cache)
        calls = cache.vault_calls
        assert fs.cat_file(f"{root}/small.bin") == data
        assert cache.vault_calls == calls + 1

    try:
        _in_forked_child(child)
    finally:
        thread.join(10)
    assert "entries=1" in repr(cache)  # the parent keeps its cache


def test_handle_busy_at_fork_is_closed_in_the_child_and_an_idle_one_works(key, root):
    fs = _filesystem(skip_instance_cache=True)
    data = os.urandom(BIG)
    fs.pipe_file(f"{root}/two.bin", data)
    busy = fs.open(f"{root}/two.bin", "rb", cache_type="none")
    idle = fs.open(f"{root}/two.bin", "rb", cache_type="none")
    assert busy.read(10) == idle.read(10) == data[:10]
    thread = _hold_while_forking(lambda: busy._reader._lock)

    def child():
        # In the middle of a read in the parent: its buffers may be half-filled.
        assert busy._reader._cipher is None
        with pytest.raises(ValueError):
            busy._reader.read(0, 10)
        assert idle.read(10) == data[10:20]
        idle.seek(3 * 1024 * 1024)
        assert idle.read(100) == data[3 * 1024 * 1024 : 3 * 1024 * 1024 + 100]

    try:
        _in_forked_child(child)
    finally:
        thread.join(10)
    assert busy.read(10) == data[10:20]  # the parent's handles are untouched
    busy.close()
    idle.close()


# -- audit log and HSM sessions -----------------------------------------------------


def test_audit_lines_stay_whole_across_threads_and_a_forked_child(tmp_path):
    from cmkfs.audit import AuditLog

    log = AuditLog(tmp_path / "audit.jsonl")

    def burst(tag: str) -> None:
        for i in range(200):
            log.record("unwrap", "local://k", "1", "ok", tag=tag, i=i)

    threads = [threading.Thread(target=burst, args=(f"t{n}",)) for n in range(3)]
    for thread in threads:
        thread.start()
    try:
        _in_forked_child(burst, "child")  # forks while the threads are writing
    finally:
        for thread in threads:
            thread.join(30)
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert sorted(r["tag"] for r in records) == sorted(["child", "t0", "t1", "t2"] * 200)


def test_forked_child_initialises_the_hsm_library_and_logs_in_again(softhsm, isolated_cmkfs_home):
    from cmkfs.keycache import KeyCache
    from cmkfs.providers.pkcs11 import sessions as hsm
    from cmkfs.stream import decrypt_bytes, encrypt_bytes

    provider = softhsm.provider()
    uri = provider.create_key(softhsm.token_label, f"fork-{os.getpid()}-{time.monotonic_ns()}")
    cache = KeyCache(uri, providers=lambda _uri: provider)
    data = os.urandom(100_000)
    blob = encrypt_bytes(data, cache)
    assert decrypt_bytes(blob, cache) == data
    token = hsm._TOKENS[(softhsm.module, softhsm.token_label)]
    parent_session = token.session
    assert parent_session is not None
    thread = _hold_while_forking(lambda: token.lock)  # an HSM call in flight in another thread

    def child():
        assert decrypt_bytes(blob, cache) == data  # the cache was emptied: this unwraps in the HSM again
        assert decrypt_bytes(encrypt_bytes(data, cache), cache) == data
        assert token.session is not None and token.session is not parent_session
        assert hsm._INITIALISED_IN[softhsm.module] == os.getpid()

    try:
        _in_forked_child(child)
    finally:
        thread.join(10)
    assert token.session is parent_session  # the parent's login is untouched
    assert decrypt_bytes(encrypt_bytes(data, cache), cache) == data
    provider.close()
