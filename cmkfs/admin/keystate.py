"""The key policy gives a store, and what its vault says about it now.

Status and verify compare every file's header against this: the key's
identity (one spelling per key, :func:`cmkfs.keycache.key_identity`) and the
version new files are wrapped under (the URI's own version if it names one,
as ``cmkfs rewrap`` does, else the vault's current version).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import CMKError, ConfigurationError
from ..format import KeyBlock
from ..keycache import key_identity
from ..policy import Policy
from ..providers.base import provider_for, redact_key_uri, split_key_uri

__all__ = ["KeyState", "Store", "key_state", "stores", "trusted_keys"]


@dataclass(frozen=True)
class Store:
    """What a command walks: a capacity (``capacity`` is its name) or a URL outside any (``None``),
    its root URL (no ``cmk::``), and the key the policy gives it."""

    url: str
    capacity: str | None
    key_uri: str | None


def stores(policy: Policy, target: str | None = None) -> list[Store]:
    """The stores a command-line ``target`` means: a capacity by name, a URL or path (inside a
    capacity or not), or with no target every capacity of the policy."""
    if target is None:
        if not policy.capacities:
            raise ConfigurationError("the policy names no capacities: name a URL, or add a capacity")
        return [
            Store(c.url, c.name, policy.key_for(c)) for c in sorted(policy.capacities.values(), key=lambda c: c.name)
        ]
    url, capacity = policy.resolve(target)
    if capacity is not None and capacity.url == url:
        return [Store(url, capacity.name, policy.key_for(capacity))]
    # A folder inside a capacity (or outside every one): the key its capacity, else the default, gives it.
    return [Store(url, None, policy.key_for_url(url))]


def trusted_keys(policy: Policy) -> list[str]:
    """Vaults a file of the policy's stores may name: the trusted list and the vaults of its keys."""
    keys = [policy.default_key] + [policy.key_for(c) for c in policy.capacities.values()]
    return list(policy.trusted_vaults) + sorted({k for k in keys if k and k.startswith("https://")})


@dataclass(frozen=True)
class KeyState:
    """The policy key of a store: ``key_uri`` as configured (``None``: no key configured), its current
    ``version`` (``None`` when the vault could not say), whether it is ``enabled``, and the vault's
    ``error`` (a :class:`~cmkfs.errors.CMKError`) if it could not be asked."""

    key_uri: str | None
    version: str | None = None
    enabled: bool | None = None
    error: CMKError | None = None
    identity: str | None = None

    def names(self, key_block: KeyBlock) -> bool:
        """Whether ``key_block`` is wrapped under this key (any version)."""
        return self.identity is not None and key_identity(key_block.key_uri) == self.identity

    def to_dict(self) -> dict[str, Any]:
        return {
            "key_uri": redact_key_uri(self.key_uri) if self.key_uri else None,
            "current_version": self.version,
            "enabled": self.enabled,
            "error": None if self.error is None else {"type": type(self.error).__name__, "message": str(self.error)},
        }


def key_state(key_uri: str | None) -> KeyState:
    """Ask the key's vault for its current version (one call; no data key is unwrapped)."""
    if not key_uri:
        return KeyState(None)
    try:
        provider = provider_for(key_uri)
        identity = key_identity(provider.canonical_uri(key_uri))
    except CMKError as exc:  # an unsupported scheme, a missing optional SDK
        return KeyState(key_uri, error=exc)
    pinned = split_key_uri(key_uri)[1]
    try:
        info = provider.describe(key_uri)
    except CMKError as exc:
        return KeyState(key_uri, version=pinned, error=exc, identity=identity)
    version = pinned if pinned is not None else (info.current_version or None)
    return KeyState(key_uri, version=version, enabled=info.enabled, identity=identity)
