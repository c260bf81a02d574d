"""The key provider interface and the registry that picks a provider by key URI.

A provider fronts one vault or HSM and only wraps and unwraps data keys; the
key-encryption key stays in the vault.  DEKs cross this interface as
:class:`~cmkfs.secret.Secret` objects, and a provider takes the bytes out only
in the expression that hands them to its crypto library or SDK, so no frame of
a failed call holds a DEK (docs/SECURITY.md).

Providers translate their backend's errors where they enter, ``raise ... from exc``:

============================  ===========================================
backend says                  provider raises
============================  ===========================================
key disabled / revoked /      :class:`~cmkfs.errors.KeyRevokedError`
operation forbidden
key or version not found      :class:`~cmkfs.errors.KeyNotFoundError`
timeout / throttled /         :class:`~cmkfs.errors.VaultUnavailableError`
connection refused            (the key cache retries these, boundedly)
unwrap failed on the data     :class:`~cmkfs.errors.IntegrityError`
(tampered wrapped key)
============================  ===========================================
"""

from __future__ import annotations

import abc
import importlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn, cast
from urllib.parse import unquote, urlsplit

from ..errors import ConfigurationError, UnsupportedOperationError
from ..format import KeyBlock
from ..secret import BytesLike, Secret

__all__ = [
    "KeyInfo",
    "KeyProvider",
    "register_provider",
    "provider_for",
    "split_key_uri",
    "redact_key_uri",
    "PROVIDER_KINDS",
    "configure_providers",
    "provider_options",
    "provider_factory",
]

# Key URI attributes that are secrets (RFC 7512 PIN attributes) or point at them.
_SECRET_ATTRIBUTES = ("pin-value", "pin-source")


@dataclass(frozen=True)
class KeyInfo:
    """What a vault says about a key (never its material)."""

    key_uri: str
    current_version: str
    enabled: bool
    algorithm: str
    versions: tuple[str, ...] = ()
    size_bits: int | None = None
    warnings: tuple[str, ...] = field(default=())


class KeyProvider(abc.ABC):
    """One vault or HSM.  Implementations are thread-safe and hold no DEKs.

    Key URIs passed in are *unversioned* (``local://sales``); a versioned
    URI selects that version for :meth:`wrap` where the backend allows it.
    """

    #: URI prefixes this provider serves, e.g. ``("local://",)``.
    prefixes: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __reduce__(self) -> NoReturn:
        # Providers may hold credentials or sessions; pickles carry key URIs only.
        raise TypeError(f"{type(self).__name__} cannot be pickled; pickle the key URI instead")

    @abc.abstractmethod
    def wrap(self, key_uri: str, dek: Secret | BytesLike) -> KeyBlock:
        """Wrap ``dek`` (32 bytes; bytes-like input is copied) under the current or the URI's version of the key."""

    @abc.abstractmethod
    def unwrap(self, key_block: KeyBlock) -> Secret:
        """Unwrap the DEK in ``key_block`` with the version it names."""

    @abc.abstractmethod
    def describe(self, key_uri: str) -> KeyInfo:
        """The key's state: current version, enabled, algorithm, warnings."""

    def canonical_uri(self, key_uri: str) -> str:
        """The key URI without a version: what the key cache groups entries by."""
        return split_key_uri(key_uri)[0]

    def close(self) -> None:  # noqa: B027 - optional: a provider without sessions has nothing to release
        """Release sessions and connections."""

    # -- key management: optional, for ``cmkfs keys`` ----------------------------

    def rotate(self, key_uri: str) -> str:
        """Add a new version of the key in its vault, make it current, and return it."""
        raise UnsupportedOperationError(f"{type(self).__name__} cannot rotate {redact_key_uri(key_uri)}")

    def set_enabled(self, key_uri: str, enabled: bool) -> tuple[str, ...]:
        """Enable or disable the key (every version) or the URI's version in the vault; returns the versions."""
        verb = "enable" if enabled else "disable"
        raise UnsupportedOperationError(f"{type(self).__name__} cannot {verb} {redact_key_uri(key_uri)}")


_FACTORIES: dict[str, str | Callable[..., KeyProvider]] = {
    "local://": "cmkfs.providers.local:LocalVaultProvider",
    "https://": "cmkfs.providers.azure_keyvault:AzureKeyVaultProvider",
    "pkcs11:": "cmkfs.providers.pkcs11:PKCS11Provider",
}
_INSTANCES: dict[tuple[str, tuple[tuple[str, object], ...]], KeyProvider] = {}
_LOCK = threading.Lock()
#: Built-in prefix -> the name its options go under (``{"azure": {...}}``).
PROVIDER_KINDS = {"local://": "local", "https://": "azure", "pkcs11:": "pkcs11"}
_CONFIGURED: dict[str, dict[str, Any]] = {}  # kind -> process-wide options (configure_providers)


def register_provider(prefix: str, factory: str | Callable[..., KeyProvider]) -> None:
    """Serve key URIs starting with ``prefix`` by ``factory`` ("module:Class" or a callable)."""
    with _LOCK:
        _FACTORIES[prefix] = factory
        for cached in [k for k in _INSTANCES if k[0] == prefix]:
            _INSTANCES.pop(cached).close()


def _prefix_of(key_uri: str) -> str:
    if not isinstance(key_uri, str) or not key_uri:
        raise ConfigurationError(
            "a key URI is required (local://NAME, https://VAULT.vault.azure.net/keys/NAME, pkcs11:...)"
        )
    for prefix in sorted(_FACTORIES, key=len, reverse=True):
        if key_uri.startswith(prefix):
            return prefix
    raise ConfigurationError(
        f"unsupported key URI scheme in {key_uri.split(':', 1)[0]!r}: "
        "use local://NAME, https://VAULT.vault.azure.net/keys/NAME or pkcs11:token=...;object=..."
    )


def _load(factory: str | Callable[..., KeyProvider]) -> Callable[..., KeyProvider]:
    if callable(factory):
        return factory
    module, _, name = factory.partition(":")
    return cast(Callable[..., KeyProvider], getattr(importlib.import_module(module), name))


def _frozen(value: object) -> object:
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _frozen(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value if isinstance(value, (str, int, float, type(None))) else ("id", id(value))


def configure_providers(options: Mapping[str, Mapping[str, Any]] | None) -> None:
    """Process-wide provider options by kind, e.g. ``{"azure": {"credential": "cli"}}``.

    They apply under the options a filesystem or a policy gives (:func:`provider_options`).
    Values are strings, booleans, numbers and objects of those; ``None`` clears everything.
    """
    from ..azure_preflight import options_of

    checked = {kind: options_of(value, f"key_provider_options.{kind}") for kind, value in (options or {}).items()}
    with _LOCK:
        if options is None:
            _CONFIGURED.clear()
        _CONFIGURED.update(checked)


def provider_options(key_uri: str, *layers: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Any]:
    """The options for ``key_uri``'s provider: :func:`configure_providers`, then each layer in
    order (later wins), each keyed by kind (``"azure"``, ``"pkcs11"``, ``"local"``)."""
    from ..azure_preflight import options_of

    kind = PROVIDER_KINDS.get(_prefix_of(key_uri))
    if kind is None:
        return {}
    with _LOCK:
        merged = dict(_CONFIGURED.get(kind, {}))
    for layer in layers:
        if layer:
            merged.update(options_of(layer.get(kind), f"key_provider_options.{kind}"))
    return merged


def provider_factory(
    key_provider_options: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    policy_azure: Mapping[str, Any] | None = None,
) -> Callable[[str], KeyProvider]:
    """``key URI -> provider`` for a :class:`~cmkfs.keycache.KeyCache` (its ``providers=``).

    Options come from :func:`configure_providers`, then the policy's ``azure`` section
    (``Policy.azure``), then ``key_provider_options`` (a filesystem's option).  The options are
    checked here, so a bad value fails when the filesystem is made, not at the first read.
    """
    from ..azure_preflight import options_of

    layers = ({"azure": policy_azure} if policy_azure else None, key_provider_options)
    for layer in layers:
        for kind, value in (layer or {}).items():
            options_of(value, f"key_provider_options.{kind}")

    def providers(key_uri: str) -> KeyProvider:
        return provider_for(key_uri, **provider_options(key_uri, *layers))

    return providers


def provider_for(key_uri: str, **options: object) -> KeyProvider:
    """The provider for ``key_uri``, shared per process and per option set.

    ``options`` are provider specific (``home=`` for ``local://``,
    ``credential=`` for Azure, ``module=``/``pin=`` for PKCS#11); they are
    part of the sharing key so two configurations never mix.
    """
    prefix = _prefix_of(key_uri)
    marker = (prefix, tuple(sorted((k, _frozen(v)) for k, v in options.items())))
    with _LOCK:
        provider = _INSTANCES.get(marker)
        if provider is None:
            provider = _load(_FACTORIES[prefix])(**options)
            _INSTANCES[marker] = provider
        return provider


def split_key_uri(key_uri: str) -> tuple[str, str | None]:
    """Split a key URI into ``(unversioned URI, version or None)``.

    ``local://NAME?version=3`` and ``pkcs11:...?version=3`` carry the version
    as a query attribute; Azure spells it as the last path element
    (``https://v.vault.azure.net/keys/NAME/VERSION``).
    """
    if key_uri.startswith("https://"):
        head, sep, rest = key_uri.partition("/keys/")
        parts = rest.strip("/").split("/")
        if not sep or not parts[0] or len(parts) > 2:
            raise ConfigurationError(
                "an Azure Key Vault key URI looks like https://VAULT.vault.azure.net/keys/NAME[/VERSION]"
            )
        base = f"{head}/keys/{parts[0]}"
        return base, (parts[1] if len(parts) == 2 else None)
    base, sep, query = key_uri.partition("?")
    version = None
    if sep:
        kept = []
        for item in query.replace(";", "&").split("&"):
            name, _, value = item.partition("=")
            if name == "version":
                version = value
            elif item:
                kept.append(item)
        if kept:
            base = base + "?" + "&".join(kept)
    return base, version


def redact_key_uri(key_uri: str) -> str:
    """``key_uri`` fit for logs, reprs and messages: no PIN attributes, no user info."""
    if key_uri.startswith("https://"):
        try:
            parts = urlsplit(key_uri)
        except ValueError:
            return "https://<unparsable URL>"  # shown in messages: never raise, never echo it
        if "@" in parts.netloc:
            key_uri = parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()
        return key_uri
    base, sep, query = key_uri.partition("?")
    if not sep:
        return key_uri
    kept = [
        item
        for item in query.replace(";", "&").split("&")
        if item and unquote(item.partition("=")[0]).lower() not in _SECRET_ATTRIBUTES
    ]
    return base + ("?" + "&".join(kept) if kept else "")
