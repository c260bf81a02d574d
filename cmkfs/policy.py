"""The key policy: capacities (named storage roots) and the key that protects each.

Two modes, as in Power BI Premium: **cmk** — one tenant key (the default key)
encrypts every capacity — and **byok** — each capacity names its own key.
The policy lives in ``$CMKFS_HOME/config.json`` beside the default key, a
file a person can read and edit; :func:`load_policy` validates it, and
:meth:`Policy.save` writes it atomically.  Format: docs/KEYS.md ("Capacities").
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .atomicfile import write_atomically
from .config import CONFIG_FILE, cmkfs_home, config_lock, load_config
from .errors import ConfigurationError

__all__ = ["Capacity", "Policy", "edit_policy", "load_policy", "policy_from_dict", "MODES", "normalize_url"]

MODES = ("cmk", "byok")
# Capacity names: what a person types on a command line and reads in a report.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_KEYS = ("default_key", "mode", "cache_ttl", "trusted_vaults", "azure", "capacities")


def normalize_url(url: str) -> str:
    """A storage root as one spelling: ``protocol://path`` without a trailing
    slash, ``file://`` for local paths, and no ``cmk::`` prefix (a capacity
    names where the ciphertext lives)."""
    url = url.strip()
    while url.lower().startswith("cmk::"):
        url = url[len("cmk::") :]
    if "://" not in url:
        url = "file://" + os.path.abspath(os.path.expanduser(url))
    protocol, _, path = url.partition("://")
    protocol = protocol.lower()
    if protocol in ("file", "local"):
        # One spelling per place on disk: symlinks and ".." resolved, so a path
        # reached another way still finds its capacity (and its key).
        return "file://" + os.path.realpath(os.path.normpath(path or "/"))
    if any(part in (".", "..") for part in path.split("/")):
        raise ConfigurationError(f"{url}: '.' and '..' are not allowed in a storage URL")
    return f"{protocol}://{path.rstrip('/')}"


@dataclass(frozen=True)
class Capacity:
    """A named storage root and (in byok mode) its own key."""

    name: str
    url: str
    key: str | None = None

    def contains(self, url: str) -> bool:
        """Whether ``url`` (normalized) is this root or below it."""
        return url == self.url or url.startswith(self.url + "/")


@dataclass
class Policy:
    """What ``config.json`` says about keys and capacities."""

    home: Path
    default_key: str | None = None
    mode: str = "cmk"
    cache_ttl: float | None = None
    trusted_vaults: tuple[str, ...] = ()
    azure: dict[str, Any] = field(default_factory=dict)
    capacities: dict[str, Capacity] = field(default_factory=dict)
    # Keys of config.json this release does not know: kept as they are.
    extra: dict[str, Any] = field(default_factory=dict)

    # -- questions ------------------------------------------------------------

    def key_for(self, capacity: Capacity) -> str | None:
        """The key new files in ``capacity`` are written under."""
        if self.mode == "byok" and capacity.key:
            return capacity.key
        return self.default_key

    def capacity_for(self, url: str) -> Capacity | None:
        """The capacity whose root holds ``url`` (the deepest, if roots nest)."""
        url = normalize_url(url)
        found = [c for c in self.capacities.values() if c.contains(url)]
        return max(found, key=lambda c: len(c.url)) if found else None

    def key_for_url(self, url: str) -> str | None:
        """The key policy gives new files at ``url``: its capacity's, else the default."""
        capacity = self.capacity_for(url)
        return self.key_for(capacity) if capacity is not None else self.default_key

    def resolve(self, target: str) -> tuple[str, Capacity | None]:
        """``(url, capacity)`` for a command-line target: a capacity name or a URL."""
        if target in self.capacities:
            capacity = self.capacities[target]
            return capacity.url, capacity
        if "://" not in target and os.path.sep not in target and not os.path.exists(target):
            known = ", ".join(sorted(self.capacities)) or "none yet"
            raise ConfigurationError(f"{target} is neither a capacity (known: {known}) nor a URL")
        url = normalize_url(target)
        return url, self.capacity_for(url)

    # -- changes (the CLI's) --------------------------------------------------------

    def add(self, name: str, url: str, key: str | None = None) -> Capacity:
        check_name(name)
        if name in self.capacities:
            raise ConfigurationError(f"capacity {name} already exists")
        url = normalize_url(url)
        for other in self.capacities.values():
            if other.contains(url) or Capacity(name, url).contains(other.url):
                raise ConfigurationError(f"{url} overlaps capacity {other.name} ({other.url})")
        capacity = Capacity(name, url, key)
        self.capacities[name] = capacity
        return capacity

    def assign(self, name: str, key: str | None) -> Capacity:
        capacity = self.get(name)
        self.capacities[name] = Capacity(capacity.name, capacity.url, key)
        return self.capacities[name]

    def remove(self, name: str) -> Capacity:
        return self.capacities.pop(self.get(name).name)

    def get(self, name: str) -> Capacity:
        try:
            return self.capacities[name]
        except KeyError:
            known = ", ".join(sorted(self.capacities)) or "none yet"
            raise ConfigurationError(f"no capacity named {name} (known: {known})") from None

    # -- the file ---------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        if self.default_key is not None:
            out["default_key"] = self.default_key
        out["mode"] = self.mode
        if self.cache_ttl is not None:
            out["cache_ttl"] = self.cache_ttl
        if self.trusted_vaults:
            out["trusted_vaults"] = list(self.trusted_vaults)
        if self.azure:
            out["azure"] = dict(self.azure)
        out["capacities"] = {
            c.name: ({"url": c.url, "key": c.key} if c.key else {"url": c.url}) for c in self.capacities.values()
        }
        return out

    def save(self) -> Path:
        """Write ``config.json`` atomically (a reader sees the old or the new file)."""
        self.home.mkdir(parents=True, exist_ok=True)
        path = self.home / CONFIG_FILE
        text = json.dumps(self.to_json(), indent=2, sort_keys=False) + "\n"
        write_atomically(path, text.encode("utf-8"), temp_prefix=".config.")
        return path


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigurationError(
            f"a capacity name is 1-63 characters from A-Z a-z 0-9 . _ - starting with a letter or digit: {name!r}"
        )
    return name


def load_policy(home: str | os.PathLike[str] | None = None) -> Policy:
    """The policy in ``home`` (default ``$CMKFS_HOME``); an empty one if there is no file."""
    where = cmkfs_home(home)
    return policy_from_dict(load_config(where), where)


@contextlib.contextmanager
def edit_policy(home: str | os.PathLike[str] | None = None) -> Iterator[Policy]:
    """Load, let the caller change, and save the policy, holding the config
    lock throughout (nothing is saved if the block raises)."""
    with config_lock(home) as where:
        policy = load_policy(where)
        yield policy
        policy.save()


def policy_from_dict(data: Mapping[str, Any], home: str | os.PathLike[str] | None = None) -> Policy:
    """A policy from the contents of a ``config.json`` (or a snapshot that
    travelled with a filesystem to another process), validated."""
    where = cmkfs_home(home)
    path = where / CONFIG_FILE
    if not isinstance(data, Mapping):
        raise ConfigurationError(f"{path}: a policy is a JSON object")
    policy = Policy(home=where, extra={k: v for k, v in data.items() if k not in _KEYS})
    default_key = data.get("default_key")
    if default_key is not None and (not isinstance(default_key, str) or not default_key):
        raise ConfigurationError(f"{path}: default_key must be a key URI")
    policy.default_key = default_key
    mode = data.get("mode", "cmk")
    if mode not in MODES:
        raise ConfigurationError(f"{path}: mode must be one of {', '.join(MODES)}, not {mode!r}")
    policy.mode = mode
    ttl = data.get("cache_ttl")
    if ttl is not None:
        from .keycache import check_ttl  # a number in [0, 3600]

        policy.cache_ttl = check_ttl(ttl)
    vaults = data.get("trusted_vaults", [])
    if not isinstance(vaults, list) or not all(isinstance(v, str) for v in vaults):
        raise ConfigurationError(f"{path}: trusted_vaults must be a list of vault hosts")
    policy.trusted_vaults = tuple(vaults)
    azure = data.get("azure", {})
    if not isinstance(azure, Mapping):
        raise ConfigurationError(f"{path}: azure must be an object of provider options")
    policy.azure = dict(azure)
    capacities = data.get("capacities", {})
    if not isinstance(capacities, Mapping):
        raise ConfigurationError(f"{path}: capacities must be an object of name -> {{url, key}}")
    for name, entry in capacities.items():
        check_name(name)
        if not isinstance(entry, Mapping) or not isinstance(entry.get("url"), str):
            raise ConfigurationError(f"{path}: capacity {name} needs a url")
        key = entry.get("key")
        if key is not None and (not isinstance(key, str) or not key):
            raise ConfigurationError(f"{path}: capacity {name}: key must be a key URI")
        policy.capacities[name] = Capacity(name, normalize_url(entry["url"]), key)
    return policy
