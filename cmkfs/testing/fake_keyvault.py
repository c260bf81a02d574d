"""A fake Azure Key Vault: HTTPS on 127.0.0.1 with a self-signed certificate, for tests.

Azure Key Vault has no emulator, and the Azure SDK sends bearer tokens only over TLS, so this
serves the REST calls cmkfs makes, the way Key Vault answers them:

* ``GET  /keys/{name}[/{version}]``         the key bundle (public JWK and attributes)
* ``GET  /keys/{name}/versions``            the versions' properties
* ``POST /keys/{name}/{version}/wrapkey``   RSA-OAEP-256 or RSA-OAEP with the key's private half
* ``POST /keys/{name}/{version}/unwrapkey``
* ``GET  /keys``                            the keys' properties
* ``POST /keys/{name}/create``              a new key, or a new version of one (RSA only)
* ``PATCH /keys/{name}/{version}``          enable or disable a version (``attributes.enabled``)

A request without the expected bearer token gets ``401`` and a ``WWW-Authenticate`` challenge; a
disabled key ``403`` ("Operation wrapKey is not allowed on a disabled key."); an unknown key or
version ``404 KeyNotFound``; a ciphertext that does not decrypt ``400 BadParameter``.

The key material is fake: RSA keys come from a per-process pool (an RSA-4096 key takes seconds to
generate), so two fake vaults in one process may hold the same key material.
"""

from __future__ import annotations

import base64
import collections
import json
import secrets
import shutil
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypedDict

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from ._https import HOST, Json, JSONServer, Reply, write_self_signed

if TYPE_CHECKING:
    from azure.core.credentials import AccessToken

    from ..providers.base import KeyProvider

__all__ = [
    "DEFAULT_LIFETIME",
    "FakeKeyVault",
    "FilesystemOptions",
    "ProviderOptions",
    "StaticTokenCredential",
    "fake_key_vault",
]

DEFAULT_LIFETIME = 3600.0  # seconds a started vault serves before it stops itself
MAX_REQUEST_LOG = 10_000  # FakeKeyVault.requests keeps the most recent requests only
RSA_OPS = ("encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey")
CHALLENGE = (
    'Bearer authorization="https://login.microsoftonline.com/00000000-0000-0000-0000-000000000000", '
    'resource="https://vault.azure.net"'
)
_OAEP = {
    "RSA-OAEP-256": lambda: padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None),
    "RSA-OAEP": lambda: padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None),
}

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
_KEY_POOL: dict[tuple[str, int, int], PrivateKey] = {}
_POOL_LOCK = threading.Lock()


def _pooled_key(kind: str, size: int, index: int) -> PrivateKey:
    with _POOL_LOCK:
        key = _KEY_POOL.get((kind, size, index))
        if key is None:
            if kind == "RSA":
                key = rsa.generate_private_key(public_exponent=65537, key_size=size)
            else:
                key = ec.generate_private_key(ec.SECP256R1())
            _KEY_POOL[(kind, size, index)] = key
        return key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _int_bytes(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


class StaticTokenCredential:
    """An Azure token credential that hands out one fixed, meaningless bearer token."""

    def __init__(self, token: str) -> None:
        self._token = token
        self.calls = 0

    def __repr__(self) -> str:
        return "StaticTokenCredential()"  # never the token

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        from azure.core.credentials import AccessToken

        self.calls += 1
        return AccessToken(self._token, int(time.time()) + 3600)

    def close(self) -> None:
        pass


class ProviderOptions(TypedDict):
    """Keyword arguments for ``AzureKeyVaultProvider`` against a fake vault."""

    credential: StaticTokenCredential
    connection_verify: str
    verify_challenge_resource: bool


class FilesystemOptions(TypedDict, total=False):
    """Options for a ``cmk`` filesystem against a fake vault."""

    key: str
    trusted_vaults: list[str]
    cache_ttl: float  # not set here; typed so that tests may add a short one


@dataclass
class _Version:
    version: str
    kty: str
    private_key: PrivateKey
    key_ops: tuple[str, ...]
    enabled: bool
    created: int
    recovery_level: str
    expires: int | None = None
    not_before: int | None = None

    @property
    def size(self) -> int | None:
        return self.private_key.key_size if isinstance(self.private_key, rsa.RSAPrivateKey) else None


@dataclass
class _Key:
    name: str
    versions: dict[str, _Version] = field(default_factory=dict)  # in creation order

    @property
    def current(self) -> _Version:
        return list(self.versions.values())[-1]


class FakeKeyVault:
    """A fake Azure Key Vault and its control panel.

    ``url`` is the vault URL (``https://127.0.0.1:PORT``); ``credential`` a token credential it
    accepts; ``verify`` the path of its CA certificate, for ``connection_verify``; ``requests``
    logs ``(method, path, status)`` of recent requests.  The certificate and its key are written
    to ``cert_dir`` (default: a private temporary directory, removed by :meth:`close`).

    A started vault stops itself after ``lifetime`` seconds (``None``: never), so a forgotten
    one does not outlive its tests by much.  Use it as a context manager, or through
    :func:`fake_key_vault`.
    """

    def __init__(self, cert_dir: str | Path | None = None, *, lifetime: float | None = DEFAULT_LIFETIME) -> None:
        self._own_dir = cert_dir is None
        directory = Path(tempfile.mkdtemp(prefix="cmkfs-fake-kv-")) if cert_dir is None else Path(cert_dir)
        self._dir = directory
        self.token = "test-" + secrets.token_hex(8)
        self.credential = StaticTokenCredential(self.token)
        self.verify = str(directory / "kv-server.pem")
        key_file = directory / "kv-server.key"
        write_self_signed(Path(self.verify), key_file)
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(self.verify, key_file)
        self.lifetime = lifetime
        self.port = 0
        self._lock = threading.Lock()
        self._lifecycle = threading.Lock()
        self._server: JSONServer | None = None
        self._thread: threading.Thread | None = None
        self._timer: threading.Timer | None = None
        self._names: set[str] = set()  # every key name ever created: close() drops their cached data keys
        self.reset()

    def __repr__(self) -> str:
        return f"FakeKeyVault(url={self.url!r}, running={self.running})"

    def __enter__(self) -> FakeKeyVault:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"https://{self.host}"

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, as ``trusted_vaults`` takes it."""
        return f"{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        """Serve (again, on the same port after a :meth:`stop`)."""
        with self._lifecycle:
            if self._server is not None:
                return
            server = JSONServer(self.port, self._handle, self._context)
            self._server, self.port = server, server.port
            self._thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="cmkfs-fake-keyvault", daemon=True
            )
            self._thread.start()
            if self.lifetime is not None:
                self._timer = threading.Timer(self.lifetime, self.stop)
                self._timer.daemon = True
                self._timer.start()

    def stop(self) -> None:
        """Stop answering: new connections are refused, open ones are cut.  Keys are kept."""
        with self._lifecycle:
            server, self._server = self._server, None
            timer, self._timer = self._timer, None
            thread, self._thread = self._thread, None
        if timer is not None:
            timer.cancel()
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.drop_connections()
        if thread is not None:
            thread.join(5)

    def close(self) -> None:
        """Stop, drop this process's cached data keys of this vault's keys, remove the temporary directory."""
        self.stop()
        from ..keycache import purge_key

        with self._lock:
            names = sorted(self._names)
        for name in names:
            purge_key(self.key_uri(name))
        if self._own_dir:
            shutil.rmtree(self._dir, ignore_errors=True)

    def reset(self) -> None:
        """Forget every key, fault and logged request."""
        with self._lock:
            self._keys: dict[str, _Key] = {}
            self._pool_index: dict[tuple[str, int], int] = {}
            self._throttle = 0
            self._throttle_status = 429
            self._failure: int | None = None
            self._clock = 0
            self.strict_disabled_get = False  # True: "get" on a disabled key answers 403, as some vaults do
            self.requests: collections.deque[tuple[str, str, int]] = collections.deque(maxlen=MAX_REQUEST_LOG)

    # -- pointing clients at it -----------------------------------------------------------

    def key_uri(self, name: str, version: str | None = None) -> str:
        return f"{self.url}/keys/{name}" + (f"/{version}" if version else "")

    def provider_options(self) -> ProviderOptions:
        """Keyword arguments for ``AzureKeyVaultProvider`` against this vault."""
        return {"credential": self.credential, "connection_verify": self.verify, "verify_challenge_resource": False}

    def filesystem_options(self, name: str | None = None) -> FilesystemOptions:
        """Options for a ``cmk`` filesystem: ``key`` (key ``name``, when given) and ``trusted_vaults``
        naming this vault, so that a reader without a ``key`` opens its files too.  The filesystem
        reaches the vault through the provider :func:`fake_key_vault` registers."""
        options: FilesystemOptions = {"trusted_vaults": [self.host]}
        if name is not None:
            options["key"] = self.key_uri(name)
        return options

    # -- control ---------------------------------------------------------------------------

    def create_key(
        self,
        name: str,
        size: int = 2048,
        *,
        kty: str = "RSA",
        key_ops: Iterable[str] = RSA_OPS,
        recovery_level: str = "Recoverable",
        enabled: bool = True,
        expires: int | None = None,
        not_before: int | None = None,
    ) -> str:
        """Create key ``name`` (or add a version to it); returns the new, current version.

        ``kty`` ``RSA``/``RSA-HSM`` (``size`` bits) or ``EC``/``EC-HSM`` (P-256); ``expires`` and
        ``not_before`` are Unix times that the vault reports (cmkfs checks them; the vault does not)."""
        kind = "RSA" if kty.startswith("RSA") else "EC"
        with self._lock:
            key = self._keys.setdefault(name, _Key(name))
            self._names.add(name)
            index = self._pool_index.get((kind, size), 0)
            self._pool_index[(kind, size)] = index + 1
        material = _pooled_key(kind, size, index)
        version = secrets.token_hex(16)
        with self._lock:
            self._clock = max(self._clock + 1, int(time.time()))
            key.versions[version] = _Version(
                version, kty, material, tuple(key_ops), enabled, self._clock, recovery_level, expires, not_before
            )
        return version

    def rotate(self, name: str) -> str:
        """A new current version with the same type, size and settings; returns it."""
        with self._lock:
            current = self._keys[name].current
        return self.create_key(
            name, current.size or 256, kty=current.kty, key_ops=current.key_ops, recovery_level=current.recovery_level
        )

    def disable(self, name: str, version: str | None = None) -> None:
        """Disable one version, or every version (what revoking the key amounts to)."""
        self._set_enabled(name, version, False)

    def enable(self, name: str, version: str | None = None) -> None:
        self._set_enabled(name, version, True)

    def delete(self, name: str) -> None:
        with self._lock:
            del self._keys[name]

    def set_throttle(self, n: int, status: int = 429) -> None:
        """The next ``n`` authorised requests answer ``status`` (429 by default)."""
        with self._lock:
            self._throttle, self._throttle_status = int(n), int(status)

    def set_failure(self, status: int | None) -> None:
        """Every authorised request answers ``status`` until set back to ``None``."""
        with self._lock:
            self._failure = status

    def operations(self, kind: str) -> list[tuple[str, str, int]]:
        """Logged requests whose last path element is ``kind`` (``"wrapkey"``, ``"unwrapkey"``...)."""
        with self._lock:
            return [r for r in self.requests if r[1].rstrip("/").rsplit("/", 1)[-1] == kind]

    def private_jwk(self, name: str, version: str | None = None) -> dict[str, Any]:
        """The full JWK of an RSA key version (fields as raw bytes), as an export would give it."""
        with self._lock:
            key = self._keys[name]
            item = key.versions[version] if version else key.current
        if not isinstance(item.private_key, rsa.RSAPrivateKey):
            raise ValueError("only RSA keys can be exported as a JWK here")
        private = item.private_key.private_numbers()
        public = private.public_numbers
        numbers = {"n": public.n, "e": public.e, "d": private.d, "p": private.p, "q": private.q}
        numbers |= {"dp": private.dmp1, "dq": private.dmq1, "qi": private.iqmp}
        jwk: dict[str, Any] = {"kid": self._kid(key, item), "kty": "RSA", "key_ops": ["wrapKey", "unwrapKey"]}
        return jwk | {name: _int_bytes(value) for name, value in numbers.items()}

    def _set_enabled(self, name: str, version: str | None, enabled: bool) -> None:
        with self._lock:
            for item in self._keys[name].versions.values():
                if version is None or item.version == version:
                    item.enabled = enabled

    # -- the REST surface ---------------------------------------------------------------------

    def _handle(self, method: str, path: str, authorization: str | None, body: bytes) -> Reply:
        result = self._route(method, path, authorization, body)
        with self._lock:
            self.requests.append((method, path, result[0]))
        return result

    def _route(self, method: str, path: str, authorization: str | None, body: bytes) -> Reply:
        if authorization is None or not secrets.compare_digest(authorization, f"Bearer {self.token}"):
            return 401, None, {"WWW-Authenticate": CHALLENGE}
        with self._lock:
            if self._throttle > 0:
                self._throttle -= 1
                status = self._throttle_status
                code = "Throttled" if status == 429 else "ServiceUnavailable"
                return status, _error(code, "Request was not processed: try again later."), {"Retry-After": "0"}
            if self._failure is not None:
                return self._failure, _error("ServiceUnavailable", "The service is unavailable."), {}
        parts = [p for p in path.split("/") if p]
        if method == "GET" and parts == ["keys"]:
            with self._lock:
                items = [self._item(k, k.current) | {"kid": f"{self.url}/keys/{k.name}"} for k in self._keys.values()]
            return 200, {"value": items, "nextLink": None}, {}
        if len(parts) == 3 and parts[0] == "keys" and method in ("POST", "PATCH"):
            return self._manage(method, parts[1], parts[2], body)
        if len(parts) < 2 or parts[0] != "keys":
            return 400, _error("BadParameter", "Unsupported request path."), {}
        name, rest = parts[1], parts[2:]
        listing = method == "GET" and rest == ["versions"]
        getting = method == "GET" and len(rest) <= 1
        crypto = method == "POST" and len(rest) == 2 and rest[1] in ("wrapkey", "unwrapkey")
        if not (listing or getting or crypto):
            return 400, _error("BadParameter", "Unsupported request."), {}
        with self._lock:
            key = self._keys.get(name)
            if key is None:
                return 404, _key_not_found(name if listing else "unknown"), {}
            if listing:
                return 200, {"value": [self._item(key, v) for v in key.versions.values()], "nextLink": None}, {}
            version = rest[0] if rest else None
            found = key.versions.get(version) if version else key.current
            if found is None:
                return 404, _key_not_found(f"{name}/{version}"), {}
            if crypto:
                return self._crypto(key, found, rest[1], body)
            if not found.enabled and self.strict_disabled_get:
                return 403, _disabled("get"), {}
            return 200, self._bundle(key, found), {}

    def _manage(self, method: str, name: str, what: str, body: bytes) -> Reply:
        try:
            request = json.loads(body or b"{}")
            if not isinstance(request, dict):
                raise TypeError
        except (ValueError, TypeError):
            return 400, _error("BadParameter", "The request body is invalid."), {}
        if method == "POST" and what == "create":
            kty = request.get("kty")
            if kty not in ("RSA", "RSA-HSM"):
                return 400, _error("BadParameter", "Only RSA keys can be created here."), {}
            ops = request.get("key_ops") or RSA_OPS
            version = self.create_key(name, int(request.get("key_size") or 2048), kty=kty, key_ops=ops)
        elif method == "PATCH":
            enabled = (request.get("attributes") or {}).get("enabled")
            with self._lock:
                key = self._keys.get(name)
                found = key.versions.get(what) if key else None
                if key is None or found is None:
                    return 404, _key_not_found(f"{name}/{what}"), {}
                if isinstance(enabled, bool):
                    found.enabled = enabled
            version = what
        else:
            return 400, _error("BadParameter", "Unsupported request."), {}
        with self._lock:
            key = self._keys[name]
            return 200, self._bundle(key, key.versions[version]), {}

    def _crypto(self, key: _Key, version: _Version, op: str, body: bytes) -> Reply:
        operation = "wrapKey" if op == "wrapkey" else "unwrapKey"
        if not version.enabled:
            return 403, _disabled(operation), {}
        if operation not in version.key_ops:
            return 403, _error("Forbidden", f"Operation {operation} is not permitted on this key."), {}
        try:
            request = json.loads(body)
            alg, value = request["alg"], _unb64(request["value"])
        except (ValueError, KeyError, TypeError):
            return 400, _error("BadParameter", "The request body is invalid."), {}
        private_key = version.private_key
        if alg not in _OAEP or not isinstance(private_key, rsa.RSAPrivateKey):
            return 400, _error("BadParameter", f"Algorithm {alg} is not supported for this key type."), {}
        try:
            if operation == "wrapKey":
                result = private_key.public_key().encrypt(value, _OAEP[alg]())
            else:
                result = private_key.decrypt(value, _OAEP[alg]())
        except ValueError:
            return 400, _error("BadParameter", "Decryption failed."), {}
        return 200, {"kid": self._kid(key, version), "value": _b64(result)}, {}

    def _kid(self, key: _Key, version: _Version) -> str:
        return f"{self.url}/keys/{key.name}/{version.version}"

    def _attributes(self, version: _Version) -> Json:
        extra: Json = {"exp": version.expires} if version.expires is not None else {}
        if version.not_before is not None:
            extra["nbf"] = version.not_before
        return extra | {
            "enabled": version.enabled,
            "created": version.created,
            "updated": version.created,
            "recoveryLevel": version.recovery_level,
            "recoverableDays": 90 if "Recoverable" in version.recovery_level else 0,
        }

    def _item(self, key: _Key, version: _Version) -> Json:
        return {"kid": self._kid(key, version), "attributes": self._attributes(version)}

    def _bundle(self, key: _Key, version: _Version) -> Json:
        jwk: Json = {"kid": self._kid(key, version), "kty": version.kty, "key_ops": list(version.key_ops)}
        private_key = version.private_key
        if isinstance(private_key, rsa.RSAPrivateKey):
            rsa_numbers = private_key.public_key().public_numbers()
            jwk.update(n=_b64(_int_bytes(rsa_numbers.n)), e=_b64(_int_bytes(rsa_numbers.e)))
        else:
            ec_numbers = private_key.public_key().public_numbers()
            jwk.update(crv="P-256", x=_b64(ec_numbers.x.to_bytes(32, "big")), y=_b64(ec_numbers.y.to_bytes(32, "big")))
        return {"key": jwk, "attributes": self._attributes(version)}


def _error(code: str, message: str, inner: str | None = None) -> Json:
    error: Json = {"code": code, "message": message}
    if inner:
        error["innerError"] = {"code": inner}
    return {"error": error}


def _disabled(operation: str) -> Json:
    return _error("Forbidden", f"Operation {operation} is not allowed on a disabled key.", "KeyDisabled")


def _key_not_found(name: str) -> Json:
    return _error("KeyNotFound", f"A key with (name/id) {name} was not found in this key vault.")


# -- the context manager users start with ---------------------------------------------------------


@contextmanager
def fake_key_vault(*, register: bool = True, lifetime: float | None = DEFAULT_LIFETIME) -> Iterator[FakeKeyVault]:
    """A running :class:`FakeKeyVault` for the ``with`` block; stopped and cleaned up after it.

    With ``register`` (the default), key URIs of this vault are served in this process by an
    ``AzureKeyVaultProvider`` that trusts its certificate and token, so a ``cmk`` filesystem
    given ``key=vault.key_uri(NAME)`` (see :meth:`FakeKeyVault.filesystem_options`) uses it;
    other ``https://`` keys are not affected, and the registration ends with the block.
    """
    with FakeKeyVault(lifetime=lifetime) as vault:
        if not register:
            yield vault
            return
        with _registered(vault):
            yield vault


@contextmanager
def _registered(vault: FakeKeyVault) -> Iterator[None]:
    from ..providers.azure_keyvault import AzureKeyVaultProvider
    from ..providers.base import register_provider

    provider = AzureKeyVaultProvider(**vault.provider_options())
    prefix = vault.url + "/"  # longer than "https://", so only this vault's URIs come here

    def factory(**_options: object) -> KeyProvider:
        return provider

    register_provider(prefix, factory)
    try:
        yield
    finally:
        _unregister(prefix, factory)
        provider.close()


def _unregister(prefix: str, factory: Callable[..., KeyProvider]) -> None:
    # cmkfs.providers has no public way to remove a registration.  Left behind, this one would send
    # a later server on the same port (same URL) to a closed provider.
    from ..providers import base

    with base._LOCK:
        if base._FACTORIES.get(prefix) is not factory:
            return  # registered again since: no longer ours to remove
        del base._FACTORIES[prefix]
        for cached in [k for k in base._INSTANCES if k[0] == prefix]:
            del base._INSTANCES[cached]
