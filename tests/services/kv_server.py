"""A small HTTPS stand-in for Azure Key Vault, as a pytest plugin.

Azure Key Vault has no emulator, and the SDK refuses bearer tokens over plain
HTTP, so this serves the handful of REST calls cmkfs makes over TLS on
127.0.0.1 with a self-signed certificate:

* ``GET  /keys/{name}[/{version}]``         - the key bundle (public JWK + attributes)
* ``GET  /keys/{name}/versions``            - key version properties
* ``POST /keys/{name}/{version}/wrapkey``   - RSA-OAEP-256 / RSA-OAEP with the real private key
* ``POST /keys/{name}/{version}/unwrapkey``

It answers the way Key Vault does: a request without a valid bearer token
gets ``401`` with a ``WWW-Authenticate: Bearer authorization=..., resource=...``
challenge; a disabled key ``403 Forbidden`` ("Operation wrapKey is not
allowed on a disabled key."); an unknown key or version ``404 KeyNotFound``;
a ciphertext that does not decrypt ``400 BadParameter``; throttling ``429``.

The ``keyvault`` fixture gives a :class:`KeyVaultServer` reset for each test
(keys, switches and request log cleared; restarted if a test stopped it).
RSA key material is generated once per session and reused across tests.
"""

from __future__ import annotations

import base64
import datetime as _dt
import http.server
import ipaddress
import json
import secrets
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

__all__ = ["KeyVaultServer", "StaticTokenCredential", "keyvault"]

RSA_OPS = ("encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey")
CHALLENGE = 'Bearer authorization="https://login.microsoftonline.com/00000000-0000-0000-0000-000000000000", resource="https://vault.azure.net"'
_OAEP = {
    "RSA-OAEP-256": lambda: padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None),
    "RSA-OAEP": lambda: padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None),
}

_KEY_POOL: dict[tuple[str, int, int], object] = {}  # generated once per session: RSA generation is slow
_POOL_LOCK = threading.Lock()


def _pooled_key(kind: str, size: int, index: int):
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
    """A token credential that hands out one fixed, meaningless bearer token."""

    def __init__(self, token: str) -> None:
        self._token = token
        self.calls = 0

    def __repr__(self) -> str:
        return "StaticTokenCredential()"

    def get_token(self, *scopes, **kwargs):
        from azure.core.credentials import AccessToken

        self.calls += 1
        return AccessToken(self._token, int(time.time()) + 3600)

    def close(self) -> None:
        pass


@dataclass
class _Version:
    version: str
    kty: str
    private_key: object
    key_ops: tuple[str, ...]
    enabled: bool
    created: int
    recovery_level: str
    expires: int | None = None
    not_before: int | None = None

    @property
    def size(self) -> int | None:
        return self.private_key.key_size if self.kty.startswith("RSA") else None


@dataclass
class _Key:
    name: str
    versions: dict[str, _Version] = field(default_factory=dict)  # in creation order

    @property
    def current(self) -> _Version:
        return list(self.versions.values())[-1]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_TLSServer"

    def log_message(self, format, *args):  # noqa: A002 - quiet test output
        pass

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_PATCH(self):
        self._dispatch("PATCH")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        vault: KeyVaultServer = self.server.vault
        path = urlsplit(self.path).path
        status, payload, headers = vault._handle(method, path, self.headers.get("Authorization"), body)
        data = json.dumps(payload).encode() if payload is not None else b""
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _TLSServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, vault: "KeyVaultServer", context: ssl.SSLContext) -> None:
        self.vault = vault
        self.context = context
        self.connections: set = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def finish_request(self, request, client_address):
        # The TLS handshake runs in the connection's thread, not the accept loop.
        try:
            request = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            request.close()
            return
        request.settimeout(30)
        with self.connections_lock:
            self.connections.add(request)
        try:
            super().finish_request(request, client_address)
        finally:
            with self.connections_lock:
                self.connections.discard(request)

    def shutdown_request(self, request):
        try:
            request.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        request.close()

    def drop_connections(self) -> None:
        with self.connections_lock:
            conns = list(self.connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class KeyVaultServer:
    """The fake vault and its control panel.

    ``url`` is the vault URL; ``credential`` a token credential it accepts;
    ``verify`` the CA file for ``connection_verify``.  ``requests`` logs
    ``(method, path, status)`` of every request.
    """

    def __init__(self, cert_dir) -> None:
        self.token = "test-" + secrets.token_hex(8)
        self.credential = StaticTokenCredential(self.token)
        self.verify = str(cert_dir / "kv-server.pem")
        key_file = str(cert_dir / "kv-server.key")
        _write_self_signed(self.verify, key_file)
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(self.verify, key_file)
        self._lock = threading.Lock()
        self._server: _TLSServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.reset()

    # -- lifecycle -------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        if self._server is not None:
            return
        self._server = _TLSServer(("127.0.0.1", self.port), self, self._context)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop answering: new connections are refused, open ones are dropped."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.drop_connections()
        if self._thread is not None:
            self._thread.join(5)

    def reset(self) -> None:
        with self._lock:
            self._keys: dict[str, _Key] = {}
            self._pool_index: dict[tuple[str, int], int] = {}
            self._throttle = 0
            self._throttle_status = 429
            self._failure: int | None = None
            self._clock = 0
            self.strict_disabled_get = False
            self.requests: list[tuple[str, str, int]] = []

    def provider_options(self) -> dict:
        """Keyword arguments for ``AzureKeyVaultProvider`` against this server."""
        return {"credential": self.credential, "connection_verify": self.verify, "verify_challenge_resource": False}

    def key_uri(self, name: str, version: str | None = None) -> str:
        return f"{self.url}/keys/{name}" + (f"/{version}" if version else "")

    # -- control ---------------------------------------------------------------

    def create_key(self, name: str, size: int = 2048, *, kty: str = "RSA", key_ops=RSA_OPS,
                   recovery_level: str = "Recoverable", enabled: bool = True,
                   expires: int | None = None, not_before: int | None = None) -> str:
        """Create (or add a version to) a key; returns the new version.

        ``expires`` / ``not_before`` are Unix times; this server only reports
        them (it does not refuse operations outside the window)."""
        with self._lock:
            key = self._keys.setdefault(name, _Key(name))
            kind = "RSA" if kty.startswith("RSA") else "EC"
            slot = (kind, size)
            index = self._pool_index.get(slot, 0)
            self._pool_index[slot] = index + 1
        material = _pooled_key(kind, size, index)
        version = secrets.token_hex(16)
        with self._lock:
            self._clock = max(self._clock + 1, int(time.time()))
            key.versions[version] = _Version(version, kty, material, tuple(key_ops), enabled, self._clock,
                                             recovery_level, expires, not_before)
        return version

    def rotate(self, name: str) -> str:
        """A new current version with the same type, size and settings."""
        current = self._keys[name].current
        return self.create_key(name, current.size or 256, kty=current.kty, key_ops=current.key_ops,
                               recovery_level=current.recovery_level)

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
        """Every authorised request answers ``status`` until set back to None."""
        with self._lock:
            self._failure = status

    def operations(self, kind: str) -> list[tuple[str, str, int]]:
        """Logged requests whose last path element is ``kind`` (e.g. "wrapkey")."""
        with self._lock:
            return [r for r in self.requests if r[1].rstrip("/").rsplit("/", 1)[-1] == kind]

    def _set_enabled(self, name: str, version: str | None, enabled: bool) -> None:
        with self._lock:
            for item in self._keys[name].versions.values():
                if version is None or item.version == version:
                    item.enabled = enabled

    # -- the REST surface ------------------------------------------------------

    def _handle(self, method: str, path: str, authorization: str | None, body: bytes):
        result = self._route(method, path, authorization, body)
        with self._lock:
            self.requests.append((method, path, result[0]))
        return result

    def _route(self, method, path, authorization, body):
        if authorization != f"Bearer {self.token}":
            return 401, None, {"WWW-Authenticate": CHALLENGE}
        with self._lock:
            if self._throttle > 0:
                self._throttle -= 1
                status = self._throttle_status
                return status, _error("Throttled" if status == 429 else "ServiceUnavailable",
                                      "Request was not processed: try again later."), {"Retry-After": "0"}
            if self._failure is not None:
                return self._failure, _error("ServiceUnavailable", "The service is unavailable."), {}
        parts = [p for p in path.split("/") if p]
        if len(parts) < 2 or parts[0] != "keys":
            return 400, _error("BadParameter", "Unsupported request path."), {}
        name, rest = parts[1], parts[2:]
        with self._lock:
            key = self._keys.get(name)
            if method == "GET" and rest == ["versions"]:
                if key is None:
                    return 404, _key_not_found(name), {}
                return 200, {"value": [self._item(key, v) for v in key.versions.values()], "nextLink": None}, {}
            if method == "GET" and len(rest) <= 1:
                found = self._version(key, rest[0] if rest else None)
                if isinstance(found, tuple):
                    return found
                if not found.enabled and self.strict_disabled_get:
                    return 403, _disabled("get"), {}
                return 200, self._bundle(key, found), {}
            if method == "POST" and len(rest) == 2 and rest[1] in ("wrapkey", "unwrapkey"):
                found = self._version(key, rest[0])
                if isinstance(found, tuple):
                    return found
                return self._crypto(key, found, rest[1], body)
        return 400, _error("BadParameter", "Unsupported request."), {}

    def _version(self, key: _Key | None, version: str | None):
        if key is None:
            return 404, _key_not_found("unknown"), {}
        if not version:
            return key.current
        found = key.versions.get(version)
        if found is None:
            return 404, _key_not_found(f"{key.name}/{version}"), {}
        return found

    def _crypto(self, key: _Key, version: _Version, op: str, body: bytes):
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
        if alg not in _OAEP or not version.kty.startswith("RSA"):
            return 400, _error("BadParameter", f"Algorithm {alg} is not supported for this key type."), {}
        try:
            if operation == "wrapKey":
                result = version.private_key.public_key().encrypt(value, _OAEP[alg]())
            else:
                result = version.private_key.decrypt(value, _OAEP[alg]())
        except ValueError:
            return 400, _error("BadParameter", "Decryption failed."), {}
        return 200, {"kid": self._kid(key, version), "value": _b64(result)}, {}

    def _kid(self, key: _Key, version: _Version) -> str:
        return f"{self.url}/keys/{key.name}/{version.version}"

    def _attributes(self, version: _Version) -> dict:
        extra = {"exp": version.expires} if version.expires is not None else {}
        if version.not_before is not None:
            extra["nbf"] = version.not_before
        return extra | {
            "enabled": version.enabled,
            "created": version.created,
            "updated": version.created,
            "recoveryLevel": version.recovery_level,
            "recoverableDays": 90 if "Recoverable" in version.recovery_level else 0,
        }

    def _item(self, key: _Key, version: _Version) -> dict:
        return {"kid": self._kid(key, version), "attributes": self._attributes(version)}

    def _bundle(self, key: _Key, version: _Version) -> dict:
        public = version.private_key.public_key()
        jwk = {"kid": self._kid(key, version), "kty": version.kty, "key_ops": list(version.key_ops)}
        if version.kty.startswith("RSA"):
            numbers = public.public_numbers()
            jwk.update(n=_b64(_int_bytes(numbers.n)), e=_b64(_int_bytes(numbers.e)))
        else:
            numbers = public.public_numbers()
            jwk.update(crv="P-256", x=_b64(numbers.x.to_bytes(32, "big")), y=_b64(numbers.y.to_bytes(32, "big")))
        return {"key": jwk, "attributes": self._attributes(version)}

    # -- helpers for local-mode tests -------------------------------------------

    def private_jwk(self, name: str, version: str | None = None) -> dict:
        """The full JWK of a key version (raw-bytes fields), as an export would give."""
        key = self._keys[name]
        item = key.versions[version] if version else key.current
        priv = item.private_key.private_numbers()
        pub = priv.public_numbers
        return {
            "kid": self._kid(key, item), "kty": "RSA", "key_ops": ["wrapKey", "unwrapKey"],
            "n": _int_bytes(pub.n), "e": _int_bytes(pub.e), "d": _int_bytes(priv.d), "p": _int_bytes(priv.p),
            "q": _int_bytes(priv.q), "dp": _int_bytes(priv.dmp1), "dq": _int_bytes(priv.dmq1), "qi": _int_bytes(priv.iqmp),
        }


def _error(code: str, message: str, inner: str | None = None) -> dict:
    error = {"code": code, "message": message}
    if inner:
        error["innerError"] = {"code": inner}
    return {"error": error}


def _disabled(operation: str) -> dict:
    return _error("Forbidden", f"Operation {operation} is not allowed on a disabled key.", "KeyDisabled")


def _key_not_found(name: str) -> dict:
    return _error("KeyNotFound", f"A key with (name/id) {name} was not found in this key vault.")


def _write_self_signed(cert_path: str, key_path: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cmkfs test key vault")])
    now = _dt.datetime.now(_dt.timezone.utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                    x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    with open(key_path, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    with open(cert_path, "wb") as fh:
        fh.write(cert.public_bytes(serialization.Encoding.PEM))


@pytest.fixture(scope="session")
def _keyvault_session(tmp_path_factory):
    server = KeyVaultServer(tmp_path_factory.mktemp("keyvault"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def keyvault(_keyvault_session) -> KeyVaultServer:
    """The HTTPS Key Vault stand-in, empty and running, for one test."""
    _keyvault_session.reset()
    _keyvault_session.start()
    yield _keyvault_session
    _keyvault_session.start()
