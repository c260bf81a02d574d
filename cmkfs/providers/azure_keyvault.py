"""Azure Key Vault (and Managed HSM) keys: ``https://VAULT.vault.azure.net/keys/NAME[/VERSION]``.

Every wrap and unwrap runs in the vault (RSA-OAEP-256): the SDK's habit of
wrapping locally with a fetched public key is switched off, because a local
wrap keeps working after the key is disabled.  SDK errors become cmkfs errors
in one place, :func:`_sdk_call`.  docs/AZURE_KEY_VAULT.md has the key checks,
the permissions, the error table and local mode.
"""

from __future__ import annotations

import base64
import datetime as _dt
import logging
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar
from urllib.parse import urlsplit

from ..azure_preflight import CREDENTIAL_KINDS, check_reachable, check_token, make_credential, once
from ..errors import (
    CMKError,
    ConfigurationError,
    FormatError,
    IntegrityError,
    KeyNotFoundError,
    KeyRevokedError,
    UnsupportedOperationError,
    VaultUnavailableError,
)
from ..format import DEK_SIZE, KeyBlock, WrapAlgorithm
from ..secret import BytesLike, Secret, clear_frame_locals
from .base import KeyInfo, KeyProvider, split_key_uri

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.keyvault.keys import JsonWebKey, KeyClient, KeyProperties, KeyVaultKey
    from azure.keyvault.keys.crypto import CryptographyClient, KeyWrapAlgorithm

__all__ = ["AzureKeyVaultProvider", "STATUS_ERRORS", "MIN_RECOMMENDED_KEY_SIZE"]

logger = logging.getLogger(__name__)

INSTALL_HINT = "Azure Key Vault support needs extra packages: pip install 'cmkfs[azure]'"
MIN_RECOMMENDED_KEY_SIZE = 4096  # what Power BI BYOK requires of an RSA key
WRAP_ALGORITHM = "RSA-OAEP-256"
ALLOWED_KEY_TYPES = ("RSA", "RSA-HSM")
# Recovery levels with soft delete *and* purge protection (a key cannot be destroyed at once).
PROTECTED_RECOVERY_LEVELS = (
    "Recoverable",
    "Recoverable+ProtectedSubscription",
    "CustomizedRecoverable",
    "CustomizedRecoverable+ProtectedSubscription",
)
DEFAULT_CLIENT_OPTIONS: dict[str, Any] = {
    # The key cache owns retries, with a bounded deadline: the SDK's default (10 tries,
    # up to 2 minutes apart) under it would delay failing closed by many minutes.
    "retry_total": 0,
    "connection_timeout": 10,
    "read_timeout": 30,
}

_NAME_RE = re.compile(r"^[0-9A-Za-z-]{1,127}$")
_VERSION_RE = re.compile(r"^[0-9A-Za-z]{1,64}$")
_LOCAL_VAULT = "https://local.invalid"
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)

#: HTTP status from Key Vault -> what the provider raises.  Unlisted 4xx: ConfigurationError
#: (our request is wrong); anything else: VaultUnavailableError.  400 on unwrapKey is an
#: IntegrityError (the wrapped key did not decrypt).
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

_T = TypeVar("_T")


class _SDK(NamedTuple):
    core: ModuleType  # azure.core.exceptions
    KeyClient: type[KeyClient]
    CryptographyClient: type[CryptographyClient]
    KeyWrapAlgorithm: type[KeyWrapAlgorithm]


def _sdk() -> _SDK:
    """The Azure SDK, imported on first use."""
    try:
        from azure.core import exceptions as core_exceptions
        from azure.keyvault.keys import KeyClient
        from azure.keyvault.keys.crypto import CryptographyClient, KeyWrapAlgorithm
    except ImportError as exc:
        raise ConfigurationError(INSTALL_HINT) from exc
    return _SDK(core_exceptions, KeyClient, CryptographyClient, KeyWrapAlgorithm)


def _token_scope(vault: str) -> str:
    """The OAuth scope of ``vault``: ``https://vault.azure.net/.default`` in the public cloud,
    the Managed HSM or sovereign-cloud equivalent elsewhere (what the SDK's challenge would ask)."""
    host = urlsplit(vault).hostname or ""
    _, _, domain = host.partition(".")
    if domain.startswith(("vault.", "managedhsm.")):
        return f"https://{domain}/.default"
    return "https://vault.azure.net/.default"


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
    if (
        parts.scheme != "https"
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or "@" in parts.netloc
    ):
        raise ConfigurationError(
            "an Azure Key Vault key URI looks like https://VAULT.vault.azure.net/keys/NAME[/VERSION]"
        )
    if not _NAME_RE.match(name):
        raise ConfigurationError("an Azure Key Vault key name is 1-127 letters, digits and dashes")
    if version is not None and not _VERSION_RE.match(version):
        raise ConfigurationError("an Azure Key Vault key version is letters and digits")
    # The host is kept as written: the key cache groups and purges entries by
    # the URI's exact spelling, so the key block must name the key the same way.
    return f"https://{parts.netloc}", name, version


def _b64url_decode(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


# -- the error boundary --------------------------------------------------------


def _sdk_call(
    fn: Callable[[], _T], operation: str, vault: str, name: str, version: str | None, *, local: bool = False
) -> _T:
    """``fn()``, one SDK call: the one place where the SDK's errors become cmkfs errors."""
    try:
        return fn()
    except BaseException as exc:
        # The SDK's frames hold the DEK (wrapKey), the bearer token or a local JWK's private key.
        clear_frame_locals(exc)
        error = _translate(exc, operation, vault, name, version, local=local)
        if error is None:
            raise
        raise error from exc


def _translate(
    exc: BaseException, operation: str, vault: str, name: str, version: str | None, *, local: bool
) -> CMKError | None:
    """The cmkfs error for ``exc`` out of an SDK call (None: raise ``exc`` as it is)."""
    if isinstance(exc, CMKError):
        return None  # ours already (a missing extra, a credential we could not create)
    core = _sdk().core
    if local:
        # The SDK says AzureError (or NotImplementedError) when the JWK's key_ops leave the
        # operation out, and ValueError when the private key cannot decrypt the wrapped key.
        if isinstance(exc, (NotImplementedError, core.AzureError)):
            return ConfigurationError(f"local JWK {name} does not permit {operation}")
        if isinstance(exc, ValueError) and operation == "unwrapKey":
            return IntegrityError()
        return None
    uri = f"{vault}/keys/{name}" + (f"/{version}" if version else "")
    if isinstance(exc, core.HttpResponseError):
        status: int | None = exc.status_code
        if status is None and isinstance(exc, core.ClientAuthenticationError):
            return ConfigurationError(
                f"could not get an Azure access token for {vault}; check the credential (see the chained error)"
            )
        if status == 400 and operation == "unwrapKey":
            return IntegrityError()  # the vault could not decrypt the wrapped key: tampered, or another key's
        error = getattr(exc, "error", None)
        code = getattr(error, "code", None) or exc.reason or "error"
        message = getattr(error, "message", None) or ""
        kind = STATUS_ERRORS.get(status or 0) or (
            ConfigurationError if status and 400 <= status < 500 else VaultUnavailableError
        )
        return kind(f"Azure Key Vault refused {operation} on {uri}: HTTP {status} {code}: {message[:200]}")
    if isinstance(exc, (core.ServiceRequestError, core.ServiceResponseError)):
        return VaultUnavailableError(f"Azure Key Vault {vault} unreachable during {operation} on {uri}")
    if isinstance(exc, ValueError):
        # e.g. the authentication challenge names a resource that is not this vault
        return ConfigurationError(f"Azure Key Vault {vault}: {exc}")
    return None


@dataclass(frozen=True)
class _LocalKey:
    """One key version in local mode: the SDK client holds the private key; only public facts here."""

    client: CryptographyClient
    kty: object
    n: bytes | None
    private: bool


class AzureKeyVaultProvider(KeyProvider):
    """Wraps data keys with RSA keys held in Azure Key Vault or Managed HSM.

    ``credential`` is any ``azure.core`` token credential, or the name of one
    (``"default"``, ``"cli"``, ``"environment"``, ``"managed_identity"``,
    ``"workload_identity"``; ``managed_identity_client_id`` picks a user-assigned
    identity); by default a ``DefaultAzureCredential`` (environment,
    workload/managed identity, Azure CLI, ...) created on first use.
    Before the first call to a vault, ``preflight`` (on by default) checks,
    within a few seconds (``preflight_timeout``), that the vault answers and the
    credential gives a token, and says in one line what is missing.  ``connection_verify`` (a CA bundle path)
    and ``verify_challenge_resource`` are passed to the SDK clients, as is
    ``client_options`` (e.g. ``{"retry_total": 3, "read_timeout": 10}``).

    SDK clients are cached per vault and per key version; data keys never are.
    """

    prefixes = ("https://",)

    def __init__(
        self,
        credential: TokenCredential | str | None = None,
        *,
        connection_verify: str | bool | None = None,
        verify_challenge_resource: bool = True,
        client_options: Mapping[str, Any] | None = None,
        min_key_size: int = MIN_RECOMMENDED_KEY_SIZE,
        managed_identity_client_id: str | None = None,
        preflight: bool = True,
        preflight_timeout: float | None = None,
    ) -> None:
        self._credential_kind = "default"
        if isinstance(credential, str):
            if credential not in CREDENTIAL_KINDS:
                raise ConfigurationError(
                    f"azure credential must be one of {', '.join(CREDENTIAL_KINDS)}, not {credential!r}"
                )
            self._credential_kind, credential = credential, None
        self._credential: TokenCredential | None = credential
        self._own_credential = credential is None
        self._mi_client_id = managed_identity_client_id
        self._preflight = bool(preflight)
        self._preflight_timeout = preflight_timeout
        if connection_verify is not None and not isinstance(connection_verify, (str, bool)):
            raise ConfigurationError("connection_verify is true, false or the path of a CA bundle")
        options = dict(DEFAULT_CLIENT_OPTIONS)
        options.update(client_options or {})
        if connection_verify is not None:
            options["connection_verify"] = connection_verify
        options["verify_challenge_resource"] = bool(verify_challenge_resource)
        self._options = options
        self._min_key_size = int(min_key_size)
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._key_clients: dict[str, KeyClient] = {}
        self._crypto_clients: dict[tuple[str, str, str], CryptographyClient] = {}
        self._warned: set[tuple[str, str, str]] = set()
        self._local: dict[tuple[str, str], dict[str, _LocalKey]] | None = None

    # -- local mode ----------------------------------------------------------

    @classmethod
    def from_jwk(
        cls, *jwks: Mapping[str, Any] | JsonWebKey, min_key_size: int = MIN_RECOMMENDED_KEY_SIZE
    ) -> AzureKeyVaultProvider:
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
        sdk = _sdk()
        from azure.keyvault.keys import JsonWebKey

        local: dict[tuple[str, str], dict[str, _LocalKey]] = {}
        for jwk in jwks:
            fields = dict(jwk) if isinstance(jwk, Mapping) else {k: getattr(jwk, k) for k in jwk._FIELDS}
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
                client = sdk.CryptographyClient.from_jwk(JsonWebKey(**fields))
            except (TypeError, ValueError) as exc:
                raise ConfigurationError("the JWK is not a usable key for local wrapping") from exc
            # Keep only the public facts: the private key lives in the SDK client,
            # never in a dict that a frame of a failed wrap or unwrap would show.
            entry = _LocalKey(client, fields.get("kty"), fields.get("n"), bool(fields.get("d")))
            local.setdefault((vault, name), {}).pop(version, None)
            local[(vault, name)][version] = entry
        provider = cls(min_key_size=min_key_size)
        provider._local = local
        return provider

    # -- KeyProvider -----------------------------------------------------------

    def __repr__(self) -> str:
        mode = "local" if self._local is not None else "vault"
        return f"AzureKeyVaultProvider(mode={mode!r})"

    def wrap(self, key_uri: str, dek: Secret | BytesLike) -> KeyBlock:
        dek = Secret.of(dek, DEK_SIZE, "dek")  # a Secret, or any bytes-like object (copied)
        vault, name, version = parse_key_uri(key_uri)
        if self._local is not None:
            return self._local_wrap(vault, name, version, dek)
        key = _sdk_call(lambda: self._key_client(vault).get_key(name, version), "get", vault, name, version)
        version = key.properties.version
        assert version is not None  # a fetched key always names its version
        self._check_key(vault, name, key)
        algorithm = _sdk().KeyWrapAlgorithm.rsa_oaep_256
        client = self._crypto_client(vault, name, version)
        result = _sdk_call(lambda: client.wrap_key(algorithm, bytes(dek)), "wrapKey", vault, name, version)
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
        algorithm = _sdk().KeyWrapAlgorithm.rsa_oaep_256
        client = self._crypto_client(vault, name, version)
        result = _sdk_call(
            lambda: client.unwrap_key(algorithm, bytes(key_block.wrapped_dek)), "unwrapKey", vault, name, version
        )
        return Secret(result.key)

    def describe(self, key_uri: str) -> KeyInfo:
        vault, name, version = parse_key_uri(key_uri)
        if self._local is not None:
            return self._local_describe(vault, name, version)
        client = self._key_client(vault)
        props: list[KeyProperties] = []
        try:
            props = _sdk_call(lambda: list(client.list_properties_of_key_versions(name)), "list", vault, name, None)
            props.sort(key=lambda p: p.created_on or _EPOCH)
        except KeyRevokedError:
            pass  # the "list" permission is optional
        try:
            key = _sdk_call(lambda: client.get_key(name, version), "get", vault, name, version)
        except KeyRevokedError:
            # Some vaults refuse "get" on a disabled key; its listed properties still say so.
            chosen = [p for p in props if version is None or p.version == version][-1:]
            if not chosen or chosen[0].enabled or chosen[0].version is None:
                raise
            return KeyInfo(
                key_uri=f"{vault}/keys/{name}",
                current_version=chosen[0].version,
                enabled=False,
                algorithm=WRAP_ALGORITHM,
                versions=tuple(p.version or "" for p in props),
            )
        return KeyInfo(
            key_uri=f"{vault}/keys/{name}",
            current_version=key.properties.version or "",
            enabled=bool(key.properties.enabled),
            algorithm=WRAP_ALGORITHM,
            versions=tuple(p.version or "" for p in props),
            size_bits=_key_size(key.key),
            warnings=self._warnings(key),
        )

    # -- key management (cmkfs keys) -----------------------------------------------

    def rotate(self, key_uri: str) -> str:
        """Create a new version of the key in the vault (same type, size and operations as the
        current one) and return it; it is current at once, and older versions keep unwrapping."""
        vault, name, version = parse_key_uri(key_uri)
        if version is not None:
            raise ConfigurationError("name a key, not a key version, to rotate it")
        self._refuse_local("rotate")
        client = self._key_client(vault)
        current = _sdk_call(lambda: client.get_key(name), "get", vault, name, None)
        key_type = current.key_type
        size = _key_size(current.key)
        ops = current.key_operations
        created = _sdk_call(
            lambda: client.create_key(name, key_type, size=size, key_operations=ops), "create", vault, name, None
        )
        return created.properties.version or ""

    def set_enabled(self, key_uri: str, enabled: bool) -> tuple[str, ...]:
        """Enable or disable one version (a versioned URI) or every version of the key; returns the
        versions changed.  A disabled version refuses wrap and unwrap in the vault itself."""
        vault, name, version = parse_key_uri(key_uri)
        self._refuse_local("enable" if enabled else "disable")
        client = self._key_client(vault)
        if version is not None:
            versions = [version]
        else:
            listed = _sdk_call(lambda: list(client.list_properties_of_key_versions(name)), "list", vault, name, None)
            versions = [p.version for p in listed if p.version]
        for item in versions:
            _sdk_call(
                lambda item=item: client.update_key_properties(name, item, enabled=bool(enabled)),  # type: ignore[misc]
                "update",
                vault,
                name,
                item,
            )
        return tuple(versions)

    def list_keys(self, vault_url: str) -> list[str]:
        """The key URIs in the vault at ``vault_url`` (needs the "list" permission)."""
        vault, _, _ = parse_key_uri(vault_url.rstrip("/") + "/keys/x")
        self._refuse_local("list")
        client = self._key_client(vault)
        listed = _sdk_call(lambda: list(client.list_properties_of_keys()), "list", vault, "*", None)
        return sorted(f"{vault}/keys/{p.name}" for p in listed if p.name)

    def _refuse_local(self, operation: str) -> None:
        if self._local is not None:
            raise UnsupportedOperationError(f"local JWKs cannot {operation}: manage the key in its vault")

    def close(self) -> None:
        with self._lock:
            clients: list[KeyClient | CryptographyClient] = [*self._key_clients.values()]
            clients += self._crypto_clients.values()
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
        close = getattr(credential, "close", None)
        if close is not None:
            close()

    # -- the Power BI style key check ----------------------------------------

    def _check_key(self, vault: str, name: str, key: KeyVaultKey) -> None:
        """Refuse keys Power BI would refuse; warn about the ones it frowns on."""
        uri = f"{vault}/keys/{name}"
        key_type = str(getattr(key.key_type, "value", key.key_type) or "")
        if key_type not in ALLOWED_KEY_TYPES:
            raise ConfigurationError(f"key {uri} is a {key_type or 'unknown'} key; an RSA or RSA-HSM key is required")
        ops = {str(getattr(op, "value", op)) for op in (key.key_operations or ())}
        missing = [op for op in ("wrapKey", "unwrapKey") if op not in ops]
        if missing:
            raise ConfigurationError(
                f"key {uri} does not permit {' and '.join(missing)}; enable both operations on the key"
            )
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

    def _warnings(self, key: KeyVaultKey) -> tuple[str, ...]:
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

    # -- SDK clients ---------------------------------------------------------------

    def _forget_parent_clients(self) -> None:
        """With the lock held.  A forked child must not share its parent's
        keep-alive TLS connections (or token cache transport): it drops the
        parent's clients, without closing them, and builds its own."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._key_clients, self._crypto_clients = {}, {}
            if self._own_credential:
                self._credential = None

    def _credential_for_use(self) -> TokenCredential:
        with self._lock:
            self._forget_parent_clients()
            if self._credential is None:
                self._credential = make_credential(self._credential_kind, managed_identity_client_id=self._mi_client_id)
            return self._credential

    def _check_vault(self, vault: str) -> None:
        """Once per process per (vault, credential): the vault answers and the credential gives a token."""
        if not self._preflight:
            return
        _sdk()  # a missing extra says what to install before anything touches the network
        credential = self._credential_for_use()
        where = f"Azure Key Vault {vault}"

        def check() -> None:
            check_reachable(vault, where, unreachable=VaultUnavailableError)
            check_token(credential, _token_scope(vault), where, timeout=self._preflight_timeout)

        once(("keyvault", vault, str(id(credential))), credential, check)

    def _key_client(self, vault: str) -> KeyClient:
        with self._lock:
            self._forget_parent_clients()
            client = self._key_clients.get(vault)
        if client is not None:
            return client
        self._check_vault(vault)
        client = _sdk().KeyClient(vault, self._credential_for_use(), **self._options)
        with self._lock:
            return self._key_clients.setdefault(vault, client)

    def _crypto_client(self, vault: str, name: str, version: str) -> CryptographyClient:
        marker = (vault, name, version)
        with self._lock:
            self._forget_parent_clients()
            client = self._crypto_clients.get(marker)
        if client is not None:
            return client
        self._check_vault(vault)
        client = _sdk().CryptographyClient(
            f"{vault}/keys/{name}/{version}", self._credential_for_use(), **self._options
        )
        # Never fetch the public key to wrap locally: the vault must see (and be
        # able to refuse) every wrap, or disabling the key would not stop writes.
        # The SDK skips the fetch and runs every operation remotely when told
        # that keys/get is forbidden; tests assert the vault sees each wrap.
        client._keys_get_forbidden = True
        with self._lock:
            return self._crypto_clients.setdefault(marker, client)

    # -- local mode internals --------------------------------------------------

    def _local_entry(self, vault: str, name: str, version: str | None) -> tuple[str, _LocalKey]:
        assert self._local is not None
        versions = self._local.get((vault, name))
        if not versions:
            raise KeyNotFoundError(f"no local JWK for {vault}/keys/{name}")
        if version is None:
            version = list(versions)[-1]
        if version not in versions:
            raise KeyNotFoundError(f"no local JWK for {vault}/keys/{name}/{version}")
        return version, versions[version]

    def _local_wrap(self, vault: str, name: str, version: str | None, dek: Secret) -> KeyBlock:
        version, key = self._local_entry(vault, name, version)
        key_type = str(key.kty or "")
        if key_type not in ALLOWED_KEY_TYPES:
            raise ConfigurationError(f"local JWK {name} is a {key_type or 'unknown'} key; an RSA key is required")
        algorithm = _sdk().KeyWrapAlgorithm.rsa_oaep_256
        result = _sdk_call(
            lambda: key.client.wrap_key(algorithm, bytes(dek)), "wrapKey", vault, name, version, local=True
        )
        return KeyBlock(WrapAlgorithm.RSA_OAEP_256, f"{vault}/keys/{name}", version, bytes(result.encrypted_key))

    def _local_unwrap(self, vault: str, name: str, version: str, wrapped: bytes) -> Secret:
        version, key = self._local_entry(vault, name, version)
        if not key.private:
            raise ConfigurationError(f"local JWK {name} has no private key; unwrapping needs the vault")
        algorithm = _sdk().KeyWrapAlgorithm.rsa_oaep_256
        result = _sdk_call(
            lambda: key.client.unwrap_key(algorithm, bytes(wrapped)), "unwrapKey", vault, name, version, local=True
        )
        return Secret(result.key)

    def _local_describe(self, vault: str, name: str, version: str | None) -> KeyInfo:
        assert self._local is not None
        version, key = self._local_entry(vault, name, version)
        size = int.from_bytes(key.n, "big").bit_length() if key.n else None
        warnings: tuple[str, ...] = ()
        if size is not None and size < self._min_key_size:
            warnings = (f"key {vault}/keys/{name} is RSA-{size}; Power BI requires RSA-{self._min_key_size}",)
        return KeyInfo(
            key_uri=f"{vault}/keys/{name}",
            current_version=version,
            enabled=True,
            algorithm=WRAP_ALGORITHM,
            versions=tuple(self._local[(vault, name)]),
            size_bits=size,
            warnings=warnings,
        )


def _key_size(jwk: JsonWebKey | None) -> int | None:
    n = getattr(jwk, "n", None)
    return int.from_bytes(n, "big").bit_length() if n else None
