"""The strict, short-lived cache of unwrapped data keys (the production KeySource).

It keeps the promise of docs/SECURITY.md, "The TTL promise": when a customer
revokes a key, everything it protects becomes unreadable within the cache TTL
(at most one hour).  The rules are listed there and in docs/KEYS.md; each is
commented below where it is kept.
"""

from __future__ import annotations

import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import NoReturn, TypeVar, cast
from urllib.parse import urlsplit

from cachetools import Cache, TLRUCache
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from . import forksafe  # noqa: F401 - registers the fork hooks (the sweeper among them)
from .audit import AuditLog, audit_log
from .clock import key_clock
from .errors import (
    CMKError,
    ConfigurationError,
    IntegrityError,
    KeyNotFoundError,
    KeyRevokedError,
    VaultUnavailableError,
)
from .format import DEK_SIZE, ContentClass, KeyBlock
from .keys import DataKey, new_dek, sweep_key_holders
from .providers.base import KeyProvider, provider_for, redact_key_uri, split_key_uri
from .secret import BytesLike, Secret
from .wipe import wipe

__all__ = [
    "KeyCache",
    "MAX_CACHE_TTL",
    "DEFAULT_CACHE_TTL",
    "ENV_TRUSTED_VAULTS",
    "check_ttl",
    "purge_key",
    "trusted_vault_hosts",
]

ENV_TRUSTED_VAULTS = "CMKFS_TRUSTED_VAULTS"

MAX_CACHE_TTL = 3600.0  # the revocation promise: one hour, never more
DEFAULT_CACHE_TTL = 900.0  # 15 minutes
# Writes reuse one DEK for many files (each derives its own key from a fresh
# salt), as the AWS Encryption SDK's caching materials manager does: 10,000
# small files cost O(1) vault calls.
DEFAULT_MAX_FILES_PER_DEK = 100_000
DEFAULT_MAX_ENTRIES = 1024
DEFAULT_RETRY_ATTEMPTS = 4
DEFAULT_RETRY_DEADLINE = 20.0  # seconds spent retrying one vault call, at most

SWEEP_INTERVAL = 5.0  # idle processes drop expired DEKs within this long after their TTL

_T = TypeVar("_T")
# (key URI as the block spells it, key version, wrap algorithm, wrapped DEK)
_CacheKey = tuple[str, str, int, bytes]

_CACHES: weakref.WeakSet[KeyCache] = weakref.WeakSet()
_CACHES_LOCK = threading.Lock()
_SWEEPER: threading.Thread | None = None


def _sweep_forever() -> None:
    # Expiry is also checked on every use; this only makes sure an idle
    # process does not keep expired DEKs in memory until its next file.
    while True:
        time.sleep(SWEEP_INTERVAL)
        with _CACHES_LOCK:
            caches = list(_CACHES)
        for cache in caches:
            try:
                cache.sweep()
            except Exception:  # noqa: BLE001 - never let the sweeper die
                pass
        sweep_key_holders()


def _start_sweeper() -> None:
    global _SWEEPER
    if _SWEEPER is None or not _SWEEPER.is_alive():
        _SWEEPER = threading.Thread(target=_sweep_forever, name="cmkfs-key-sweeper", daemon=True)
        _SWEEPER.start()


def _after_fork_in_child() -> None:
    """In a child made by ``fork()`` (see :mod:`cmkfs.forksafe`): empty every
    cache and start a sweeper again.

    The sweeper thread stayed in the parent, and a thread that was inside a
    cache at the fork may have left its entries half-updated (and its lock
    held: renewed here).  An empty cache is consistent whatever happened, and
    costs the child one vault call per key, so each process answers to the
    vault for itself.  The DEKs are overwritten (the child's copies only), which
    makes idle handles that share them drop their file keys at once.
    """
    from .forksafe import renewed  # already imported: it is what calls this

    global _SWEEPER
    had_sweeper, _SWEEPER = _SWEEPER is not None, None
    caches = list(_CACHES)
    for cache in caches:
        cache._lock = renewed(cache._lock)
        store = cache._unwrapped
        cache._unwrapped = _WipingCache(maxsize=store.maxsize, ttu=_ttu, timer=cache.clock)
        write_key, cache._write_key, cache._write_uses = cache._write_key, None, 0
        cache._purges += 1
        for data_key in _stored_values(store) + [write_key]:
            if data_key is not None:
                data_key.wipe()
    sweep_key_holders()  # idle handles on those DEKs drop their file keys now
    if had_sweeper or caches:
        _start_sweeper()


def _stored_values(store: _WipingCache) -> list[DataKey]:
    """Every value a cache stores, expired or not, read past the TLRU bookkeeping
    (which a thread that did not survive the fork may have left half-updated)."""
    try:
        return [Cache.__getitem__(store, key) for key in list(Cache.__iter__(store))]
    except Exception:  # noqa: BLE001 - best effort: the child's copies only
        return []


def check_ttl(ttl: object) -> float:
    """Validate a cache TTL in seconds: a number in ``[0, 3600]``."""
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or math.isnan(ttl):
        raise ConfigurationError("cache_ttl must be a number of seconds")
    if ttl < 0 or ttl > MAX_CACHE_TTL:
        raise ConfigurationError(
            f"cache_ttl must be between 0 and {int(MAX_CACHE_TTL)} seconds: revoked keys must stop "
            "working within one hour"
        )
    return float(ttl)


def purge_key(key_uri: str, version: str | None = None) -> None:
    """Drop (and overwrite) every cached DEK of ``key_uri`` in this process,
    whatever its spelling, or only those of one ``version``."""
    identity = key_identity(key_uri)
    with _CACHES_LOCK:
        caches = list(_CACHES)
    for cache in caches:
        cache._purge(identity, version)
    sweep_key_holders()  # idle handles on the purged keys drop their file keys now


def key_identity(key_uri: str) -> str:
    """One spelling per key, for purges: the URI without its version, and for
    Azure Key Vault (whose host and key names are case-insensitive) lower
    case without the default port."""
    base = split_key_uri(key_uri)[0]
    if not base.lower().startswith("https://"):
        return base
    try:
        parts = urlsplit(base)
        port = parts.port
    except ValueError:
        return base.lower()
    host = (parts.hostname or "").lower()
    netloc = host if port in (None, 443) else f"{host}:{port}"
    return f"https://{netloc}{parts.path.lower().rstrip('/')}"


class _WipingCache(TLRUCache[_CacheKey, DataKey, float]):
    """A TLRU cache that overwrites DEKs when they leave it."""

    def popitem(self) -> tuple[_CacheKey, DataKey]:
        key, data_key = super().popitem()
        data_key.wipe()
        return key, data_key

    def expire(self, time: float | None = None) -> list[tuple[_CacheKey, DataKey]]:
        expired = super().expire(time)
        for _, data_key in expired:
            data_key.wipe()
        return expired


def _ttu(_key: _CacheKey, data_key: DataKey, _now: float) -> float:
    return data_key.expires_at


class KeyCache:
    """Supplies DEKs to the engine, talking to vaults only when it must.

    ``key_uri`` is the key new files are written under (it may be ``None``
    for a read-only cache).  ``providers`` maps a key URI to its provider
    (default: :func:`cmkfs.providers.base.provider_for`); ``clock`` (default
    :func:`cmkfs.clock.key_clock`, which counts suspended time) is injectable
    for tests.
    """

    def __init__(
        self,
        key_uri: str | None = None,
        *,
        ttl: float = DEFAULT_CACHE_TTL,
        clock: Callable[[], float] = key_clock,
        providers: Callable[[str], KeyProvider] | None = None,
        max_files_per_dek: int = DEFAULT_MAX_FILES_PER_DEK,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        retry_attempts: int = DEFAULT_RETRY_ATTEMPTS,
        retry_deadline: float = DEFAULT_RETRY_DEADLINE,
        audit: AuditLog | None = None,
        trusted_vaults: Iterable[str] | None = None,
    ) -> None:
        self.ttl = check_ttl(ttl)
        self.key_uri = key_uri
        # Remote vaults a file header may name: the configured key's, the
        # ones listed here, and $CMKFS_TRUSTED_VAULTS.
        hosts = set(trusted_vault_hosts(trusted_vaults))
        if key_uri and key_uri.startswith("https://"):
            hosts.add(_vault_host(key_uri))
        self._trusted_hosts = frozenset(hosts)
        self.clock = clock
        self._providers = providers or provider_for
        self._max_files = max(1, int(max_files_per_dek))
        self._retry_attempts = max(1, int(retry_attempts))
        self._retry_deadline = float(retry_deadline)
        self._audit = audit
        self._lock = threading.RLock()
        self._unwrapped = _WipingCache(maxsize=max_entries, ttu=_ttu, timer=clock)
        self._write_key: DataKey | None = None
        self._purges = 0  # bumped by every purge: vault answers from before one are not cached
        self._write_uses = 0
        self.vault_calls = 0  # wraps + unwraps sent to a vault (for benchmarks and tests)
        with _CACHES_LOCK:
            _CACHES.add(self)
            _start_sweeper()

    def __repr__(self) -> str:
        shown = redact_key_uri(self.key_uri) if self.key_uri else None
        return f"KeyCache(key_uri={shown!r}, ttl={self.ttl:g}, entries={len(self._unwrapped)})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("KeyCache holds key material and cannot be pickled; pickle its key URI instead")

    # -- KeySource -------------------------------------------------------

    def data_key_for_write(self, content_class: ContentClass = ContentClass.OTHER) -> DataKey:
        key_uri = self.key_uri
        if not key_uri:
            raise ConfigurationError("this filesystem has no key to write with")
        with self._lock:
            self._unwrapped.expire()
            current = self._write_key
            if current is not None and self.clock() < current.expires_at and self._write_uses < self._max_files:
                self._write_uses += 1
                return current
        # The vault is called outside the lock: a slow or retrying vault must
        # not stall handles whose keys are cached (two threads may both wrap
        # a fresh DEK at once, which is harmless).  The TTL counts from before
        # the call: use never extends it.
        confirmed_at = self.clock()
        purges = self._purges
        dek = new_dek()  # a Secret from birth: no frame below shows it in an error report
        try:
            key_block = self._vault_call("wrap", key_uri, None, lambda p: p.wrap(key_uri, dek))
        except BaseException:
            dek.wipe()
            raise
        data_key = DataKey(dek, key_block, confirmed_at + self.ttl)
        with self._lock:
            if self._purges != purges:
                # A refusal purged this cache while the vault was answering:
                # an answer from before it must not outlive it.
                data_key.wipe()
                raise KeyRevokedError("the key was revoked while a data key was being wrapped; retry")
            if self.ttl > 0:
                self._unwrapped[_cache_key(key_block)] = data_key
            # The previous write key stays in the unwrap cache (open writers
            # refresh through it) and is wiped when it expires there.
            self._write_key, self._write_uses = data_key, 1
        return data_key

    def data_key_for_read(self, key_block: KeyBlock) -> DataKey:
        cache_key = _cache_key(key_block)
        with self._lock:
            self._unwrapped.expire()
            cached = self._unwrapped.get(cache_key)
            if cached is not None and self.clock() < cached.expires_at:
                return cached
        # The header is untrusted input: it must not choose the vault.
        self._check_trusted(key_block.key_uri)
        for _ in range(2):
            confirmed_at = self.clock()
            purges = self._purges
            dek = _as_secret(
                self._vault_call("unwrap", key_block.key_uri, key_block.key_version, lambda p: p.unwrap(key_block))
            )
            if len(dek) != DEK_SIZE:
                # Anyone holding a vault's public key can wrap a value of any
                # length: only a 32-byte DEK can be this file's.
                dek.wipe()
                raise IntegrityError()
            data_key = DataKey(dek, key_block, confirmed_at + self.ttl)
            with self._lock:
                if self._purges != purges:
                    # A refusal purged this cache while the vault answered:
                    # ask again rather than keep an answer from before it.
                    data_key.wipe()
                    continue
                cached = self._unwrapped.get(cache_key)
                if cached is not None and self.clock() < cached.expires_at:
                    # Another thread unwrapped the same block meanwhile: share
                    # its DataKey, so one purge or expiry reaches every handle.
                    data_key.wipe()
                    return cached
                if self.ttl > 0:
                    self._unwrapped[cache_key] = data_key
                return data_key
        raise KeyRevokedError("the key was revoked while its data key was being unwrapped")

    def _check_trusted(self, key_uri: str) -> None:
        """Refuse a remote vault that neither the configured key nor the
        ``trusted_vaults`` list names, before any network call: otherwise a
        forged header could point the reader at a vault its author runs and
        have attacker-chosen plaintext accepted as authentic."""
        if not key_uri.startswith("https://"):
            return  # local:// and pkcs11: resolve on this machine; providers refuse header-chosen modules
        host = _vault_host(key_uri)
        # A trusted entry without a port trusts that host on any port.
        if host not in self._trusted_hosts and host.rsplit(":", 1)[0] not in self._trusted_hosts:
            # The host is named but not offered as a value to paste: anyone can
            # create a vault whose name looks like one of yours.
            raise ConfigurationError(
                f"the file's key is held by vault {host}, which this filesystem does not trust; if it is "
                f"one of your vaults, add it to trusted_vaults (or {ENV_TRUSTED_VAULTS}) after checking "
                "its name letter by letter"
            )

    # -- housekeeping ----------------------------------------------------

    def sweep(self) -> None:
        """Drop and overwrite every DEK whose TTL has passed."""
        with self._lock:
            self._unwrapped.expire()
            if self._write_key is not None and not self.clock() < self._write_key.expires_at:
                self._write_key.wipe()
                self._write_key = None

    def purge(self, key_uri: str | None = None) -> None:
        """Drop cached DEKs (of one key, or all) from this cache only."""
        self._purge(key_identity(key_uri) if key_uri else None)

    def _purge(self, identity: str | None, version: str | None = None) -> None:
        def matches(key_uri: str, key_version: str) -> bool:
            if identity is None:
                return True
            return key_identity(key_uri) == identity and (version is None or key_version == version)

        with self._lock:
            self._purges += 1
            self._unwrapped.expire()  # so no entry can expire between listing and popping
            for cache_key in list(self._unwrapped.keys()):
                if matches(cache_key[0], cache_key[1]):
                    data_key = self._unwrapped.pop(cache_key, None)
                    if data_key is not None:
                        data_key.wipe()
            block = self._write_key.key_block if self._write_key is not None else None
            if block is not None and matches(block.key_uri, block.key_version):
                assert self._write_key is not None
                self._write_key.wipe()
                self._write_key = None

    def close(self) -> None:
        self._purge(None)

    def __del__(self) -> None:
        try:
            self._purge(None)
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # -- the vault boundary ------------------------------------------------

    def _vault_call(self, operation: str, key_uri: str, version: str | None, call: Callable[[KeyProvider], _T]) -> _T:
        """One vault operation, with bounded retries, audit and purge-on-refusal.

        Never called with ``self._lock`` held: a refusal purges every cache in
        the process, and two caches purging each other under their own locks
        would deadlock.
        """
        audit = self._audit or audit_log()
        provider = self._providers(key_uri)
        shown = redact_key_uri(key_uri)  # a PKCS#11 URI may carry a PIN
        retrying = Retrying(
            retry=retry_if_exception_type(VaultUnavailableError),
            stop=stop_after_attempt(self._retry_attempts) | stop_after_delay(self._retry_deadline),
            wait=_capped_wait(self._retry_deadline),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    self.vault_calls += 1
                    result = call(provider)
        except (KeyRevokedError, KeyNotFoundError) as exc:
            audit.record(operation, shown, version, type(exc).__name__)
            # The vault said no: nobody in this process may keep using this key.
            # A version that does not exist is only that version's business: a
            # header naming a made-up version must not purge the key's cache.
            only = version if isinstance(exc, KeyNotFoundError) and operation == "unwrap" else None
            purge_key(key_uri, only)
            # Purge under the provider's canonical spelling too: key blocks name
            # the key without query attributes (a PKCS#11 module path, say).
            canonical = provider.canonical_uri(key_uri)
            if key_identity(canonical) != key_identity(key_uri):
                purge_key(canonical, only)
            raise
        except CMKError as exc:
            audit.record(operation, shown, version, type(exc).__name__)
            raise
        if operation == "wrap":
            version = cast(KeyBlock, result).key_version  # what KeyProvider.wrap returns
        audit.record(operation, shown, version, "ok")
        return result


def _as_secret(value: Secret | BytesLike) -> Secret:
    """An unwrapped DEK as a Secret.  Providers return one; a provider written
    to the older contract returns a bytearray, which is copied and wiped here."""
    if isinstance(value, Secret):
        return value
    try:
        return Secret(value)
    finally:
        if isinstance(value, bytearray):
            wipe(value)


def _capped_wait(deadline: float) -> Callable[[RetryCallState], float]:
    backoff = wait_random_exponential(multiplier=0.1, max=2.0)  # full jitter

    def wait(state: RetryCallState) -> float:
        # Never sleep past the deadline: it bounds the whole retry, waits included.
        spent = state.seconds_since_start or 0.0
        return max(0.0, min(backoff(state), deadline - spent))

    return wait


def trusted_vault_hosts(trusted_vaults: Iterable[str] | None = None) -> list[str]:
    """Vault hosts from ``trusted_vaults`` (hosts or URLs) and ``$CMKFS_TRUSTED_VAULTS`` (comma-separated)."""
    if isinstance(trusted_vaults, str):
        raise ConfigurationError("trusted_vaults is a list of vault hosts or URLs, not a string")
    names = list(trusted_vaults or ())
    names += [n for n in os.environ.get(ENV_TRUSTED_VAULTS, "").split(",") if n.strip()]
    return [_vault_host(n if "://" in n else f"https://{n.strip()}") for n in names]


def _vault_host(uri: str) -> str:
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - urlsplit checks the port only when asked
        host = parts.netloc.lower()
    except ValueError:
        raise ConfigurationError(f"not a valid vault URL: {ascii(uri)[:80]}") from None
    return host.rsplit("@", 1)[-1]  # never compare (or show) user info


def _cache_key(key_block: KeyBlock) -> _CacheKey:
    # The URI as the block spells it (providers write canonical, unversioned
    # URIs); purges compare its unversioned form.
    return (key_block.key_uri, key_block.key_version, int(key_block.wrap_alg), bytes(key_block.wrapped_dek))
