"""Azure Key Vault (and Managed HSM) as the key-encryption-key store.

Key URIs are the key identifiers Azure itself prints::

    https://VAULT.vault.azure.net/keys/NAME             the current version
    https://VAULT.vault.azure.net/keys/NAME/VERSION     one version

Any ``https://HOST[:PORT]`` is accepted, so sovereign clouds
(``vault.azure.cn``, ``vault.usgovcloudapi.net``), Managed HSM
(``managedhsm.azure.net``) and a local test server all work.

Data keys are wrapped with RSA-OAEP-256 *inside the vault* (``wrapKey`` /
``unwrapKey``): the SDK's habit of fetching the public key once and wrapping
locally is switched off, because a locally wrapped key keeps "working" after
the customer disables the key or withdraws the ``wrapKey`` permission.  Each
key block records the unversioned key URI and the version that wrapped it;
unwrap always asks that version.

Before wrapping, the key is checked the way Power BI checks a BYOK key: it
must be RSA or RSA-HSM, enabled, inside its validity window, and permit both
``wrapKey`` and ``unwrapKey``.  Keys shorter than 4096 bits, and vaults
without soft delete *and* purge protection, are accepted with a warning
(:attr:`KeyInfo.warnings` and ``logging.warning``).

Errors are translated where they enter (see :data:`STATUS_ERRORS`).  The SDK's
own retry policy is off by default: the key cache retries
:class:`~cmkfs.errors.VaultUnavailableError` with a bounded deadline, and
stacking the SDK's default (10 tries, up to 2 minutes apart) under it would
delay failing closed by many minutes.

Local mode (:meth:`AzureKeyVaultProvider.from_jwk`) wraps and unwraps with
``CryptographyClient.from_jwk`` and never touches the network: for tests, and
for tools that hold an exported copy of a key.

The SDK takes and returns key material as ``bytes`` in its own frames (and
holds the bearer token in its request): an error that comes out of it has its
frames' locals cleared before it leaves this module, so an error report that
captures locals shows where it failed, but not the DEK, the token or a local
JWK's private key.
"""

from __future__ import annotations

import base64
import datetime as _dt
import logging
import os
import re
import threading
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from ..errors import (
    CMKError,
    ConfigurationError,
    FormatError,
    IntegrityError,
    KeyNotFoundError,
    KeyRevokedError,
    VaultUnavailableError,
)
from ..format import DEK_SIZE, KeyBlock, WrapAlgorithm
from ..secret import Secret, clear_frame_locals
from .base import KeyInfo, KeyProvider, split_key_uri

__all__ = ["AzureKeyVaultProvider", "STATUS_ERRORS", "MIN_RECOMMENDED_KEY_SIZE"]

logger = logging.getLogger(__name__)

INSTALL_HINT = "Azure Key Vault support needs extra packages: pip install 'cmkfs[azure]'"
MIN_RECOMMENDED_KEY_SIZE = 4096  # what Power BI BYOK requires of an RSA key
WRAP_ALGORITHM = "RSA-OAEP-256"
ALLOWED_KEY_TYPES = ("RSA", "RSA-HSM")
# Recovery levels with soft delete *and* purge protection (a key cannot be destroyed at once).
PROTECTED_RECOVERY_LEVELS = ("Recoverable", "Recoverable+ProtectedSubscription", "CustomizedRecoverable",
                             "CustomizedRecoverable+ProtectedSubscription")
DEFAULT_CLIENT_OPTIONS: dict[str, Any] = {
    "retry_total": 0,  # the key cache owns retries (bounded); see module docstring
    "connection_timeout": 10,
    "read_timeout": 30,
}

_NAME_RE = re.compile(r"^[0-9A-Za-z-]{1,127}$")
_VERSION_RE = re.compile(r"^[0-9A-Za-z]{1,64}$")
_LOCAL_VAULT = "https://local.invalid"
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)

#: HTTP status from Key Vault -> what the provider raises.  400 on unwrap is
#: special-cased to IntegrityError (the wrapped key did not decrypt).
STATUS_ERRORS: dict[int, type[CMKError]] = {
    400: ConfigurationError,  # bad request: algorithm not valid for this key, malformed input
    401: KeyRevokedError,  # the vault rejected our token: no access
    403: KeyRevokedError,  # key disabled, operation not permitted, access policy / RBAC withdrawn, firewall
    404: KeyNotFoundError,  # key, version or vault name unknown (or deleted)
    408: VaultUnavailableError,
    409: VaultUnavailableError,  # conflicting operation in progress (e.g. during recovery)
    429: VaultUnavailableError,  # throttled
    500: VaultUnavailableError,
    502: VaultUnavailableError,
    503: VaultUnavailableError,
    504: VaultUnavailableError,
}


def _sdk():
    """The Azure SDK modules, imported on first use."""
    try:
        from azure.core import exceptions as core_exceptions
        from azure.keyvault.keys import KeyClient
        from azure.keyvault.keys.crypto import CryptographyClient, KeyWrapAlgorithm
    except ImportError as exc:
        raise ConfigurationError(INSTALL_HINT) from exc
    return core_exceptions, KeyClient, CryptographyClient, KeyWrapAlgorithm


def _default_credential():
    try:
        from azure.identity import DefaultAzureCredential
    except ImportError as exc:
        raise ConfigurationError(INSTALL_HINT) from exc
    return DefaultAzureCredential()


def parse_key_uri(key_uri: str) -> tuple[str, str, str | None]:
    """``(vault_url, key_name, version or None)`` of an Azure key URI."""
    base, version = split_key_uri(key_uri)
    head, _, rest = base.partition("/keys/")
    try:
        parts = urlsplit(head)
        parts.port  # noqa: B018 - urlsplit checks the port only when asked
    except ValueError:
        raise ConfigurationError(f"not a valid Azure Key Vault URL: {ascii(head)[:80]}") from None
    name = rest.strip("/")
    if parts.scheme != "https" or not parts.hostname or parts.path not in ("", "/") or parts.query or "@" in parts.netloc:
        raise ConfigurationError("an Azure Key Vault key URI looks like https://VAULT.vault.azure.net/keys/NAME[/VERSION]")
    if not _NAME_RE.match(name):
        raise ConfigurationError("an Azure Key Vault key name is 1-127 letters, digits and dashes")
    if version is not None and not _VERSION_RE.match(version):
        raise ConfigurationError("an Azure Key Vault key version is letters and digits")
    # The host is kept as written: the key cache groups and purges entries by
    # the URI's exact spelling, so the key block must name the key the same way.
    return f"https://{parts.netloc}", name, version


def _b64url_decode(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


class AzureKeyVaultProvider(KeyProvider):
    """Wraps data keys with RSA keys held in Azure Key Vault or Managed HSM.

    ``credential`` is any ``azure.core`` token credential; by default a
    ``DefaultAzureCredential`` (environment, workload/managed identity, Azure
    CLI, ...) created on first use.  ``connection_verify`` (a CA bundle path)
    and ``verify_challenge_resource`` are passed to the SDK clients, as is
    ``client_options`` (e.g. ``{"retry_total": 3, "read_timeout": 10}``).

    SDK clients are cached per vault and per key version; data keys never are.
    """

    prefixes = ("https://",)

    def __init__(
        self,
        credential=None,
        *,
        connection_verify: str | bool | None = None,
        verify_challenge_resource: bool = True,
        client_options: Mapping[str, Any] | None = None,
        min_key_size: int = MIN_RECOMMENDED_KEY_SIZE,
    ) -> None:
        self._credential = credential
        self._own_credential = credential is None
        options = dict(DEFAULT_CLIENT_OPTIONS)
        options.update(client_options or {})
        if connection_verify is not None:
            options["connection_verify"] = connection_verify
        options["verify_challenge_resource"] = bool(verify_challenge_resource)
        self._options = options
        self._min_key_size = int(min_key_size)
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._key_clients: dict[str, Any] = {}
        self._crypto_clients: dict[tuple[str, str, str], Any] = {}
        self._warned: set[tuple[str, str, str]] = set()
        self._local: dict[tuple[str, str], dict[str, tuple[Any, dict[str, Any]]]] | None = None

    # -- local mode ----------------------------------------------------------

    @classmethod
    def from_jwk(cls, *jwks: Any, min_key_size: int = MIN_RECOMMENDED_KEY_SIZE) -> "AzureKeyVaultProvider":
        """A provider that works offline with the given JSON Web Keys.

        Each JWK (a ``JsonWebKey`` or a dict; ``n``, ``e``, ``d``... as raw
        bytes or base64url text) must carry a versioned key identifier in
        ``kid`` (``https://VAULT.vault.azure.net/keys/NAME/VERSION``); a bare
        ``NAME/VERSION`` is placed under ``https://local.invalid/keys/``.  The last JWK
        given for a name is its current version.  A JWK without the private
        parts can wrap but not unwrap.  Key blocks written in local mode name
        the same key URI and version as the vault would, so files written
        offline open online and the other way round.
        """
        _, _, CryptographyClient, _ = _sdk()
        from azure.keyvault.keys import JsonWebKey

        provider = cls(min_key_size=min_key_size)
        provider._local = {}
        for jwk in jwks:
            fields = dict(jwk) if isinstance(jwk, Mapping) else {k: getattr(jwk, k) for k in jwk._FIELDS}  # noqa: SLF001
            kid = fields.get("kid")
            if not isinstance(kid, str) or not kid:
                raise ConfigurationError("a JWK for local mode needs a kid naming the key and its version")
            if not kid.startswith("https://"):
                kid = f"{_LOCAL_VAULT}/keys/{kid}"
            vault, name, version = parse_key_uri(kid)
            if version is None:
                raise ConfigurationError("a JWK kid for local mode must name a key version")
            for part in ("n", "e", "d", "p", "q", "dp", "dq", "qi"):
                if isinstance(fields.get(part), str):  # the SDK wants raw bytes, not base64url text
                    fields[part] = _b64url_decode(fields[part])
            fields["kid"] = f"{vault}/keys/{name}/{version}"
            fields.setdefault("key_ops", ["wrapKey", "unwrapKey"])
            try:
                client = CryptographyClient.from_jwk(JsonWebKey(**fields))
            except (TypeError, ValueError) as exc:
                raise ConfigurationError("the JWK is not a usable key for local wrapping") from exc
            # Keep only the public facts: the private key lives in the SDK client,
            # never in a dict that a frame of a failed wrap or unwrap would show.
            public = {"kty": fields.get("kty"), "n": fields.get("n"), "private": bool(fields.get("d"))}
            provider._local.setdefault((vault, name), {}).pop(version, None)
            provider._local[(vault, name)][version] = (client, public)
        return provider

    # -- KeyProvider -----------------------------------------------------------

    def __repr__(self) -> str:
        mode = "local" if self._local is not None else "vault"
        return f"AzureKeyVaultProvider(mode={mode!r})"

    def wrap(self, key_uri: str, dek) -> KeyBlock:
        dek = Secret.of(dek, DEK_SIZE, "dek")  # a Secret, or any bytes-like object (copied)
        vault, name, version = parse_key_uri(key_uri)
        if self._local is not None:
            return self._local_wrap(vault, name, version, dek)
        key = self._call("get", vault, name, version, lambda: self._key_client(vault).get_key(name, version))
        version = key.properties.version
        self._check_key(vault, name, key)
        _, _, _, KeyWrapAlgorithm = _sdk()
        client = self._crypto_client(vault, name, version)
        result = self._call("wrapKey", vault, name, version, lambda: client.wrap_key(KeyWrapAlgorithm.rsa_oaep_256, bytes(dek)))
        return KeyBlock(WrapAlgorithm.RSA_OAEP_256, f"{vault}/keys/{name}", version, bytes(result.encrypted_key))

    def unwrap(self, key_block: KeyBlock) -> Secret:
        if key_block.wrap_alg != WrapAlgorithm.RSA_OAEP_256:
            raise FormatError("key block was not wrapped by Azure Key Vault (RSA-OAEP-256)")
        vault, name, _ = parse_key_uri(key_block.key_uri)
        version = key_block.key_version
        if not _VERSION_RE.match(version):
            raise FormatError("key block names a malformed Azure key version")
        if self._local is not None:
            return self._local_unwrap(vault, name, version, key_block.wrapped_dek)
        _, _, _, KeyWrapAlgorithm = _sdk()
        client = self._crypto_client(vault, name, version)
        return Secret(self._call(
            "unwrapKey", vault, name, version,
            lambda: client.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, bytes(key_block.wrapped_dek)),
        ).key)

    def describe(self, key_uri: str) -> KeyInfo:
        vault, name, version = parse_key_uri(key_uri)
        if self._local is not None:
            return self._local_describe(vault, name, version)
        client = self._key_client(vault)
        props = None
        try:
            props = self._call("list", vault, name, None, lambda: list(client.list_properties_of_key_versions(name)))
            props.sort(key=lambda p: p.created_on or _EPOCH)
        except KeyRevokedError:
            pass  # the "list" permission is optional
        try:
            key = self._call("get", vault, name, version, lambda: client.get_key(name, version))
        except KeyRevokedError:
            # Some vaults refuse "get" on a disabled key; its listed properties still say so.
            chosen = [p for p in props or () if version is None or p.version == version][-1:]
            if not chosen or chosen[0].enabled:
                raise
            return KeyInfo(
                key_uri=f"{vault}/keys/{name}",
                current_version=chosen[0].version,
                enabled=False,
                algorithm=WRAP_ALGORITHM,
                versions=tuple(p.version for p in props or ()),
            )
        versions = tuple(p.version for p in props or ())
        warnings = self._warnings(key)
        return KeyInfo(
            key_uri=f"{vault}/keys/{name}",
            current_version=key.properties.version,
            enabled=bool(key.properties.enabled),
            algorithm=WRAP_ALGORITHM,
            versions=versions,
            size_bits=_key_size(key.key),
            warnings=warnings,
        )

    def close(self) -> None:
        with self._lock:
            clients = list(self._key_clients.values()) + list(self._crypto_clients.values())
            self._key_clients.clear()
            self._crypto_clients.clear()
            credential = self._credential if self._own_credential else None
            if self._own_credential:
                self._credential = None
        for client in clients:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
        if credential is not None and hasattr(credential, "close"):
            credential.close()

    # -- the Power BI style key check ----------------------------------------

    def _check_key(self, vault: str, name: str, key) -> None:
        """Refuse keys Power BI would refuse; warn about the ones it frowns on."""
        uri = f"{vault}/keys/{name}"
        key_type = str(getattr(key.key_type, "value", key.key_type) or "")
        if key_type not in ALLOWED_KEY_TYPES:
            raise ConfigurationError(f"key {uri} is a {key_type or 'unknown'} key; an RSA or RSA-HSM key is required")
        ops = {str(getattr(op, "value", op)) for op in (key.key_operations or ())}
        missing = [op for op in ("wrapKey", "unwrapKey") if op not in ops]
        if missing:
            raise ConfigurationError(f"key {uri} does not permit {' and '.join(missing)}; enable both operations on the key")
        if not key.properties.enabled:
            raise KeyRevokedError(f"key {uri} (version {key.properties.version}) is disabled")
        now = _dt.datetime.now(_dt.timezone.utc)
        if key.properties.not_before and now < key.properties.not_before:
            raise KeyRevokedError(f"key {uri} (version {key.properties.version}) is not valid yet")
        if key.properties.expires_on and now >= key.properties.expires_on:
            raise KeyRevokedError(f"key {uri} (version {key.properties.version}) has expired")
        for warning in self._warnings(key):
            marker = (uri, key.properties.version or "", warning)
            with self._lock:
                fresh = marker not in self._warned
                self._warned.add(marker)
            if fresh:
                logger.warning("%s", warning)

    def _warnings(self, key) -> tuple[str, ...]:
        uri = f"{key.properties.vault_url}/keys/{key.properties.name}"
        found = []
        size = _key_size(key.key)
        if size is not None and size < self._min_key_size:
            found.append(f"key {uri} is RSA-{size}; Power BI requires RSA-{self._min_key_size}")
        level = key.properties.recovery_level
        level = getattr(level, "value", level)
        if level is not None and str(level) not in PROTECTED_RECOVERY_LEVELS:
            found.append(
                f"key {uri} has recovery level {level}: enable soft delete and purge protection on the vault, "
                "or a deleted key makes every file it protects unreadable for good"
            )
        return tuple(found)

    # -- SDK clients and the error boundary ------------------------------------

    def _forget_parent_clients(self) -> None:
        """With the lock held.  A forked child must not share its parent's
        keep-alive TLS connections (or token cache transport): it drops the
        parent's clients, without closing them, and builds its own."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._key_clients, self._crypto_clients = {}, {}
            if self._own_credential:
                self._credential = None

    def _credential_for_use(self):
        with self._lock:
            self._forget_parent_clients()
            if self._credential is None:
                self._credential = _default_credential()
            return self._credential

    def _key_client(self, vault: str):
        with self._lock:
            self._forget_parent_clients()
            client = self._key_clients.get(vault)
        if client is not None:
            return client
        _, KeyClient, _, _ = _sdk()
        client = KeyClient(vault, self._credential_for_use(), **self._options)
        with self._lock:
            return self._key_clients.setdefault(vault, client)

    def _crypto_client(self, vault: str, name: str, version: str):
        marker = (vault, name, version)
        with self._lock:
            self._forget_parent_clients()
            client = self._crypto_clients.get(marker)
        if client is not None:
            return client
        _, _, CryptographyClient, _ = _sdk()
        client = CryptographyClient(f"{vault}/keys/{name}/{version}", self._credential_for_use(), **self._options)
        # Never fetch the public key to wrap locally: the vault must see (and be
        # able to refuse) every wrap, or disabling the key would not stop writes.
        # The SDK skips the fetch and runs every operation remotely when told
        # that keys/get is forbidden; tests assert the vault sees each wrap.
        client._keys_get_forbidden = True  # noqa: SLF001
        with self._lock:
            return self._crypto_clients.setdefault(marker, client)

    def _call(self, operation: str, vault: str, name: str, version: str | None, fn: Callable[[], Any]):
        core, _, _, _ = _sdk()
        uri = f"{vault}/keys/{name}" + (f"/{version}" if version else "")
        try:
            try:
                return fn()
            except BaseException as exc:
                clear_frame_locals(exc)  # the SDK's frames hold the DEK (wrapKey) and the bearer token
                raise
        except core.HttpResponseError as exc:
            status = exc.status_code
            if status is None and isinstance(exc, core.ClientAuthenticationError):
                raise ConfigurationError(
                    f"could not get an Azure access token for {vault}; check the credential (see the chained error)"
                ) from exc
            error = getattr(exc, "error", None)
            code = getattr(error, "code", None) or exc.reason or "error"
            message = getattr(error, "message", None) or ""
            if status == 400 and operation == "unwrapKey":
                # The vault could not decrypt the wrapped key: tampered, or another key's.
                raise IntegrityError() from exc
            # Unlisted 4xx: our request is wrong.  Anything else (5xx, an unreadable answer): the vault is.
            kind = STATUS_ERRORS.get(status) or (ConfigurationError if status and 400 <= status < 500 else VaultUnavailableError)
            raise kind(f"Azure Key Vault refused {operation} on {uri}: HTTP {status} {code}: {message[:200]}") from exc
        except (core.ServiceRequestError, core.ServiceResponseError) as exc:
            raise VaultUnavailableError(f"Azure Key Vault {vault} unreachable during {operation} on {uri}") from exc
        except ValueError as exc:
            # e.g. the authentication challenge names a resource that is not this vault
            raise ConfigurationError(f"Azure Key Vault {vault}: {exc}") from exc

    # -- local mode internals --------------------------------------------------

    def _local_entry(self, vault: str, name: str, version: str | None):
        assert self._local is not None
        versions = self._local.get((vault, name))
        if not versions:
            raise KeyNotFoundError(f"no local JWK for {vault}/keys/{name}")
        if version is None:
            version = list(versions)[-1]
        if version not in versions:
            raise KeyNotFoundError(f"no local JWK for {vault}/keys/{name}/{version}")
        client, public = versions[version]
        return version, client, public

    def _local_wrap(self, vault: str, name: str, version: str | None, dek: Secret) -> KeyBlock:
        version, client, public = self._local_entry(vault, name, version)
        core, _, _, KeyWrapAlgorithm = _sdk()
        key_type = str(public["kty"] or "")
        if key_type not in ALLOWED_KEY_TYPES:
            raise ConfigurationError(f"local JWK {name} is a {key_type or 'unknown'} key; an RSA key is required")
        try:
            result = client.wrap_key(KeyWrapAlgorithm.rsa_oaep_256, bytes(dek))
        except (NotImplementedError, core.AzureError) as exc:
            # The SDK says AzureError when the JWK's key_ops leave out wrapKey.
            clear_frame_locals(exc)  # its frames hold the DEK as bytes
            raise ConfigurationError(f"local JWK {name} does not permit wrapKey") from exc
        return KeyBlock(WrapAlgorithm.RSA_OAEP_256, f"{vault}/keys/{name}", version, bytes(result.encrypted_key))

    def _local_unwrap(self, vault: str, name: str, version: str, wrapped: bytes) -> Secret:
        version, client, public = self._local_entry(vault, name, version)
        if not public["private"]:
            raise ConfigurationError(f"local JWK {name} has no private key; unwrapping needs the vault")
        core, _, _, KeyWrapAlgorithm = _sdk()
        try:
            return Secret(client.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, bytes(wrapped)).key)
        except (NotImplementedError, core.AzureError) as exc:
            clear_frame_locals(exc)
            raise ConfigurationError(f"local JWK {name} does not permit unwrapKey") from exc
        except ValueError as exc:
            clear_frame_locals(exc)  # the SDK's frames hold the private key's numbers
            raise IntegrityError() from exc

    def _local_describe(self, vault: str, name: str, version: str | None) -> KeyInfo:
        version, _, public = self._local_entry(vault, name, version)
        n = public["n"]
        size = int.from_bytes(n, "big").bit_length() if n else None
        warnings = ()
        if size is not None and size < self._min_key_size:
            warnings = (f"key {vault}/keys/{name} is RSA-{size}; Power BI requires RSA-{self._min_key_size}",)
        return KeyInfo(
            key_uri=f"{vault}/keys/{name}",
            current_version=version,
            enabled=True,
            algorithm=WRAP_ALGORITHM,
            versions=tuple(self._local[(vault, name)]),  # type: ignore[index]
            size_bits=size,
            warnings=warnings,
        )


def _key_size(jwk) -> int | None:
    n = getattr(jwk, "n", None)
    return int.from_bytes(n, "big").bit_length() if n else None
