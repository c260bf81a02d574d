"""The embedded key vault: versioned 256-bit AES key-encryption keys in ``$CMKFS_HOME/vault``.

Key URIs are ``local://NAME[?version=V]``.  Wrapped DEK (``WrapAlgorithm.A256GCM``, docs/FORMAT.md)::

    wrapped_dek = nonce (12) || AES-256-GCM(kek_version, dek, aad) || tag (16)
    aad         = b"cmkfs/v1 wrap" || key_uri (UTF-8) || 0x00 || key_version (UTF-8)

A key is ``vault/NAME/meta.json`` (its state, the commit point of every change)
and one ``vN.key`` per live version: the raw KEK, or the KEK sealed under a
scrypt-derived key.  docs/KEYS.md ("The embedded vault") describes the layout,
the on-disk format, crash safety and what destroy leaves behind.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import fcntl
import hmac
import json
import os
import re
import threading
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ..atomicfile import fsync_dir, write_atomically
from ..audit import audit_log
from ..config import CONFIG_FILE, MAX_CONFIG_SIZE, cmkfs_home, config_lock, load_config
from ..errors import (
    CMKError,
    ConfigurationError,
    IntegrityError,
    KeyNotFoundError,
    KeyRevokedError,
    VaultUnavailableError,
)
from ..format import DEK_SIZE, KeyBlock, WrapAlgorithm
from ..secret import BytesLike, Secret
from .base import KeyInfo, KeyProvider

__all__ = [
    "LocalVaultProvider",
    "set_default_key",
    "parse_local_uri",
    "ENV_PASSPHRASE",
    "WRAP_AAD_LABEL",
    "wrap_aad",
]

PREFIX = "local://"
ENV_PASSPHRASE = "CMKFS_PASSPHRASE"
VAULT_DIR = "vault"
LOCK_FILE = ".lock"
META_FILE = "meta.json"
TMP_PREFIX = ".tmp-"
META_FORMAT = 1
KEK_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
WRAPPED_SIZE = NONCE_SIZE + DEK_SIZE + TAG_SIZE
PROTECTED_SIZE = NONCE_SIZE + KEK_SIZE + TAG_SIZE
MAX_META_SIZE = 1024 * 1024  # bounded before parsing; a version entry is ~100 bytes
MAX_VERSIONS = 5000
WRAP_AAD_LABEL = b"cmkfs/v1 wrap"
MATERIAL_AAD_LABEL = b"cmkfs/v1 local kek"
# scrypt: 2**15 x 8 x 128 B = 32 MiB and ~0.1 s per derivation here (derived once per
# key and process, then kept with the passphrase).  Bounds refuse a hostile meta.json
# that would make a reader allocate gigabytes.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
MAX_SCRYPT_N, MAX_SCRYPT_R, MAX_SCRYPT_P = 2**20, 16, 4
SALT_SIZE = 16
MIN_SALT_SIZE, MAX_SALT_SIZE = 16, 64  # what meta.json may name, checked before scrypt sees it

ENABLED, DISABLED, DESTROYED = "enabled", "disabled", "destroyed"
_Meta = dict[str, Any]  # a parsed meta.json (checked by _check_meta)
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")  # no leading dot: no ".", "..", ".lock"


def wrap_aad(key_uri: str, key_version: str) -> bytes:
    """Associated data of an A256GCM wrapped DEK: binds it to its key and version."""
    return WRAP_AAD_LABEL + key_uri.encode("utf-8") + b"\x00" + key_version.encode("utf-8")


def parse_local_uri(key_uri: str) -> tuple[str, str | None]:
    """``local://NAME[?version=V]`` -> ``(NAME, V or None)``; anything else is a ConfigurationError."""
    if not isinstance(key_uri, str) or not key_uri.startswith(PREFIX):
        raise ConfigurationError("a local key URI looks like local://NAME")
    rest = key_uri[len(PREFIX) :]
    name, sep, query = rest.partition("?")
    version = None
    if sep:
        key, eq, value = query.partition("=")
        if key != "version" or not eq or not (value.isascii() and value.isdigit()):
            raise ConfigurationError("a local key URI takes only ?version=N")
        version = str(int(value))
    check_name(name)
    return name, version


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigurationError(
            "a local key name is 1-64 characters from A-Z a-z 0-9 . _ - and does not start with a dot"
        )
    return name


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _atomic_write(path: Path, data: bytes | memoryview) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old or the new file, whole."""
    write_atomically(path, data, temp_prefix=TMP_PREFIX)


def _make_private_dir(path: Path, *, ours: bool = True) -> None:
    """Create ``path`` as 0700.  An existing directory that is not ours (the
    home the user named) keeps its mode; the vault's own directories are
    always made private again."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        if not ours:
            return
    os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask


def _scrub(path: Path) -> None:
    """Overwrite a material file in place, then remove it (best effort on flash and CoW filesystems)."""
    try:
        fd = os.open(path, os.O_WRONLY)
    except FileNotFoundError:
        return
    try:
        size = os.fstat(fd).st_size
        os.write(fd, os.urandom(size))
        os.fsync(fd)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, bytes(size))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.unlink(path)


class LocalVaultProvider(KeyProvider):
    """The embedded vault in ``home`` (default :func:`cmkfs.config.cmkfs_home`).

    ``passphrase`` (or ``$CMKFS_PASSPHRASE``) unlocks keys created with
    passphrase protection and is used to protect keys created here.  A ``str``
    is used in UTF-8; ``bytes``, ``bytearray``, ``memoryview`` or a
    :class:`~cmkfs.secret.Secret` as they are (copied).
    """

    prefixes = (PREFIX,)

    def __init__(
        self, home: str | os.PathLike[str] | None = None, passphrase: str | BytesLike | Secret | None = None
    ) -> None:
        # Into a Secret first: from here on no frame holds the passphrase as str or bytes.
        self._passphrase = _passphrase_secret(passphrase)
        del passphrase
        # Without an explicit home, follow $CMKFS_HOME at every call: the registry
        # shares one instance per process, and it must not pin an old value.
        self._home = Path(home).expanduser() if home is not None else None
        # Derived keys are cached under a MAC of the passphrase (this key is the instance's
        # own), so the cache holds no copy of the passphrase.
        self._cache_mac_key = os.urandom(32)
        self._derived: dict[tuple[bytes, bytes, int, int, int], Secret] = {}
        self._derived_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LocalVaultProvider(home={str(self.home)!r})"

    @property
    def home(self) -> Path:
        return self._home if self._home is not None else cmkfs_home()

    @property
    def root(self) -> Path:
        return self.home / VAULT_DIR

    def close(self) -> None:
        with self._derived_lock:
            for key in self._derived.values():
                key.wipe()
            self._derived.clear()

    # -- KeyProvider -------------------------------------------------------

    def wrap(self, key_uri: str, dek: Secret | BytesLike) -> KeyBlock:
        dek = Secret.of(dek, DEK_SIZE, "dek")  # a Secret, or any bytes-like object (copied)
        name, version = parse_local_uri(key_uri)
        with self._locked(shared=True):
            # Read on every call: `cmkfs keys disable` in another process takes effect at once.
            meta = self._usable_meta(name)
            version = version or meta["current_version"]
            kek = self._material(name, meta, version)
        uri = PREFIX + name
        try:
            nonce = os.urandom(NONCE_SIZE)
            wrapped = nonce + AESGCM(kek.reveal()).encrypt(nonce, dek.reveal(), wrap_aad(uri, version))
        finally:
            kek.wipe()
        return KeyBlock(WrapAlgorithm.A256GCM, uri, version, wrapped)

    def unwrap(self, key_block: KeyBlock) -> Secret:
        if not isinstance(key_block, KeyBlock):
            raise TypeError("unwrap takes a KeyBlock")
        name, _ = parse_local_uri(key_block.key_uri)
        version = key_block.key_version
        with self._locked(shared=True):
            meta = self._usable_meta(name)
            kek = self._material(name, meta, version)
        wrapped = bytes(key_block.wrapped_dek)
        try:
            if key_block.wrap_alg != WrapAlgorithm.A256GCM or len(wrapped) != WRAPPED_SIZE:
                raise IntegrityError()  # not something this vault wrapped
            aad = wrap_aad(key_block.key_uri, version)
            try:
                return Secret(AESGCM(kek.reveal()).decrypt(wrapped[:NONCE_SIZE], wrapped[NONCE_SIZE:], aad))
            except InvalidTag:
                raise IntegrityError() from None
        finally:
            kek.wipe()

    def describe(self, key_uri: str) -> KeyInfo:
        name, _ = parse_local_uri(key_uri)
        with self._locked(shared=True):
            meta = self._meta(name)
        live = tuple(v["version"] for v in meta["versions"] if v["state"] != DESTROYED)
        warnings = []
        if meta["state"] == DESTROYED:
            warnings.append("key destroyed: everything it protected is permanently unreadable")
        elif meta["state"] == DISABLED:
            warnings.append("key disabled: wrap and unwrap are refused until it is enabled")
        if meta.get("protection") is None and meta["state"] != DESTROYED:
            warnings.append("key material is stored without a passphrase (protected by file permissions only)")
        return KeyInfo(
            key_uri=PREFIX + name,
            current_version=meta["current_version"] if meta["state"] != DESTROYED else "",
            enabled=meta["state"] == ENABLED,
            algorithm="A256GCM",
            versions=live,
            size_bits=8 * KEK_SIZE,
            warnings=tuple(warnings),
        )

    # -- vault management --------------------------------------------------

    def create(self, name: str, *, protect: bool | None = None) -> KeyInfo:
        """Create key ``name`` with version ``"1"``.

        ``protect`` (default: whether a passphrase is available) encrypts the
        material under a scrypt-derived key.
        """
        check_name(name)
        uri = PREFIX + name
        with self._audited("create", uri) as note:
            passphrase = self._get_passphrase() if protect is None or protect else None
            if protect and passphrase is None:
                raise ConfigurationError(
                    f"set {ENV_PASSPHRASE} (or pass passphrase=) to create a passphrase-protected key"
                )
            _make_private_dir(self.home, ours=False)
            _make_private_dir(self.root)
            with self._locked(shared=False):
                key_dir = self.root / name
                if (key_dir / META_FILE).exists():
                    raise ConfigurationError(f"key {uri} already exists")
                _make_private_dir(key_dir)
                self._clean_leftovers(key_dir, keep=())
                protection = None
                if passphrase is not None:
                    protection = {
                        "kdf": "scrypt",
                        "salt": base64.b64encode(os.urandom(SALT_SIZE)).decode("ascii"),
                        "n": SCRYPT_N,
                        "r": SCRYPT_R,
                        "p": SCRYPT_P,
                    }
                now = _now()
                meta = {
                    "format": META_FORMAT,
                    "name": name,
                    "key_uri": uri,
                    "state": ENABLED,
                    "created": now,
                    "updated": now,
                    "current_version": "1",
                    "versions": [{"version": "1", "created": now, "state": ENABLED}],
                    "protection": protection,
                }
                self._write_material(name, meta, "1", passphrase)
                self._write_meta(name, meta)  # the commit point
            note["version"] = "1"
        return self.describe(uri)

    def rotate(self, name: str) -> str:
        """Add a new version and make it current; returns it.  Old versions keep unwrapping."""
        check_name(name)
        with self._audited("rotate", PREFIX + name) as note:
            with self._locked(shared=False):
                meta = self._usable_meta(name)
                passphrase = None
                if meta.get("protection") is not None:
                    passphrase = self._require_passphrase(name)
                    # Prove the passphrase on the current version first: a new version
                    # under a mistyped passphrase would be unreadable with the right one.
                    self._material(name, meta, meta["current_version"]).wipe()
                self._clean_leftovers(self.root / name, keep=_material_names(meta))
                version = str(max(int(v["version"]) for v in meta["versions"]) + 1)
                if len(meta["versions"]) >= MAX_VERSIONS:
                    raise ConfigurationError(f"key local://{name} has too many versions; destroy old ones first")
                now = _now()
                self._write_material(name, meta, version, passphrase)
                meta["versions"].append({"version": version, "created": now, "state": ENABLED})
                meta["current_version"] = version
                meta["updated"] = now
                self._write_meta(name, meta)
            note["version"] = version
        return version

    def disable(self, name: str) -> None:
        """Revoke the key: every wrap and unwrap is refused until :meth:`enable`."""
        self._set_state(name, "disable", DISABLED)

    def enable(self, name: str) -> None:
        """Restore a disabled key (a destroyed key cannot be restored)."""
        self._set_state(name, "enable", ENABLED)

    def destroy(self, name: str, version: str | None = None) -> None:
        """Overwrite and remove key material.  Permanent.

        Without ``version`` the whole key is destroyed: its files become
        permanently unreadable and wrap/unwrap raise KeyRevokedError.  With a
        ``version`` only that (non-current) version goes, e.g. after every file
        was re-wrapped under a newer one.  Destroying again is harmless (it
        also finishes a destroy that a crash interrupted).
        """
        check_name(name)
        uri = PREFIX + name
        with self._audited("destroy", uri, version) as note:
            with self._locked(shared=False):
                meta = self._meta(name)
                key_dir = self.root / name
                now = _now()
                if version is None:
                    meta["state"] = DESTROYED
                    for entry in meta["versions"]:
                        entry["state"] = DESTROYED
                else:
                    version = str(version)
                    entry = _version_entry(meta, version)
                    if entry is None:
                        raise KeyNotFoundError(f"key {uri} has no version {version}")
                    if version == meta["current_version"] and meta["state"] != DESTROYED:
                        raise ConfigurationError(f"version {version} is the current version of {uri}: rotate first")
                    entry["state"] = DESTROYED
                meta["updated"] = now
                # Tombstone first: from here nothing may use the material, even if the
                # scrubbing below is interrupted.
                self._write_meta(name, meta)
                for entry in meta["versions"]:
                    if entry["state"] == DESTROYED:
                        _scrub(key_dir / _material_file(entry["version"]))
                self._clean_leftovers(key_dir, keep=_material_names(meta))
                fsync_dir(key_dir)
            note["version"] = version

    def list_keys(self) -> list[str]:
        """Names of the keys in this vault (destroyed ones included), sorted."""
        try:
            entries = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise VaultUnavailableError(f"cannot read the key vault in {self.root}") from exc
        return [n for n in entries if _NAME.fullmatch(n) and (self.root / n / META_FILE).is_file()]

    def details(self, name: str) -> dict[str, Any]:
        """Everything known about a key except its material (for ``cmkfs keys show``)."""
        check_name(name)
        with self._locked(shared=True):
            meta = self._meta(name)
        return {
            "key_uri": PREFIX + name,
            "name": name,
            "state": meta["state"],
            "current_version": meta["current_version"] if meta["state"] != DESTROYED else None,
            "created": meta["created"],
            "updated": meta["updated"],
            "protection": "passphrase" if meta.get("protection") else "none",
            "versions": [dict(v) for v in meta["versions"]],
        }

    def set_default(self, name: str) -> str:
        """Make ``local://name`` the default key in ``$CMKFS_HOME/config.json``."""
        check_name(name)
        with self._locked(shared=True):
            self._meta(name)  # it must exist
        return set_default_key(PREFIX + name, self.home)

    # -- internals ---------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, shared: bool) -> Iterator[None]:
        """Hold the vault lock: readers share it, writers hold it alone."""
        if not self.root.is_dir():
            yield  # no vault yet (create() makes it first): every lookup reports "not found"
            return
        path = self.root / LOCK_FILE
        try:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            except PermissionError:
                fd = os.open(path, os.O_RDONLY)  # a read-only vault can still be read
        except OSError as exc:
            raise VaultUnavailableError(f"cannot open the key vault lock in {self.root}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    @contextlib.contextmanager
    def _audited(self, operation: str, key_uri: str, version: str | None = None) -> Iterator[dict[str, str | None]]:
        note: dict[str, str | None] = {"version": version}
        try:
            yield note
        except CMKError as exc:
            audit_log().record(operation, key_uri, note["version"], type(exc).__name__)
            raise
        except OSError as exc:
            audit_log().record(operation, key_uri, note["version"], "VaultUnavailableError")
            raise VaultUnavailableError(f"the key vault in {self.root} could not be updated: {exc.strerror}") from exc
        audit_log().record(operation, key_uri, note["version"], "ok")

    def _meta(self, name: str) -> _Meta:
        path = self.root / name / META_FILE
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_META_SIZE + 1)
        except (FileNotFoundError, NotADirectoryError):
            raise KeyNotFoundError(f"no key {PREFIX}{name} in the vault {self.root}") from None
        except OSError as exc:
            raise VaultUnavailableError(f"cannot read key {PREFIX}{name} from {self.root}") from exc
        return _check_meta(raw, name)

    def _usable_meta(self, name: str) -> _Meta:
        meta = self._meta(name)
        if meta["state"] == DESTROYED:  # revoked for good, never "not found": the name is not free again
            raise KeyRevokedError(f"key {PREFIX}{name} was destroyed")
        if meta["state"] != ENABLED:
            raise KeyRevokedError(f"key {PREFIX}{name} is disabled")
        return meta

    def _material(self, name: str, meta: _Meta, version: str) -> Secret:
        entry = _version_entry(meta, version)
        if entry is None:
            raise KeyNotFoundError(f"key {PREFIX}{name} has no version {version!r}")
        if entry["state"] == DESTROYED:
            raise KeyRevokedError(f"version {version} of key {PREFIX}{name} was destroyed")
        path = self.root / name / _material_file(version)
        try:
            with open(path, "rb") as f:
                # Straight into a Secret: a damaged file (a stray newline) must
                # not put the KEK into an error report as a bytes local.
                raw = Secret(f.read(PROTECTED_SIZE + 1))
        except FileNotFoundError:
            raise VaultUnavailableError(
                f"key {PREFIX}{name} version {version} has no material in {self.root}"
            ) from None
        except OSError as exc:
            raise VaultUnavailableError(f"cannot read key {PREFIX}{name} from {self.root}") from exc
        protection = meta.get("protection")
        if protection is None:
            if len(raw) != KEK_SIZE:
                raw.wipe()
                raise VaultUnavailableError(f"key {PREFIX}{name} version {version} is damaged in {self.root}")
            return raw
        try:
            if len(raw) != PROTECTED_SIZE:
                raise VaultUnavailableError(f"key {PREFIX}{name} version {version} is damaged in {self.root}")
            locker = self._locker(name, protection, self._require_passphrase(name))
            sealed = raw.reveal()
            try:
                return Secret(locker.decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], _material_aad(name, version)))
            except InvalidTag:
                raise ConfigurationError(f"wrong passphrase for key {PREFIX}{name}") from None
        finally:
            raw.wipe()

    def _write_material(self, name: str, meta: _Meta, version: str, passphrase: Secret | None) -> None:
        kek = Secret.random(KEK_SIZE)
        try:
            protection = meta.get("protection")
            data: bytes | memoryview
            if protection is None:
                data = kek.reveal()  # a view, not a bytes copy: a failed write must not show the KEK
            else:
                assert passphrase is not None  # create() and rotate() pass one for a protected key
                nonce = os.urandom(NONCE_SIZE)
                data = nonce + self._locker(name, protection, passphrase).encrypt(
                    nonce, kek.reveal(), _material_aad(name, version)
                )
            _atomic_write(self.root / name / _material_file(version), data)
        finally:
            kek.wipe()

    def _write_meta(self, name: str, meta: _Meta) -> None:
        _atomic_write(self.root / name / META_FILE, json.dumps(meta, indent=1, sort_keys=True).encode("utf-8"))

    def _set_state(self, name: str, operation: str, state: str) -> None:
        check_name(name)
        with self._audited(operation, PREFIX + name), self._locked(shared=False):
            meta = self._meta(name)
            if meta["state"] == DESTROYED:
                raise KeyRevokedError(f"key {PREFIX}{name} was destroyed and cannot be {operation}d")
            if meta["state"] != state:
                meta["state"] = state
                meta["updated"] = _now()
                self._write_meta(name, meta)

    def _clean_leftovers(self, key_dir: Path, keep: Collection[str]) -> None:
        """Remove temp files of interrupted writes and material no committed version lists.

        Called with the vault lock held exclusively, so no writer is mid-way.
        """
        for entry in os.listdir(key_dir):
            if entry.startswith(TMP_PREFIX) or (entry.endswith(".key") and entry not in keep):
                _scrub(key_dir / entry)

    def _get_passphrase(self) -> Secret | None:
        """The passphrase given to this provider, else ``$CMKFS_PASSPHRASE`` as it is now."""
        if self._passphrase is not None:
            return self._passphrase
        # From the environment straight into a Secret: never a str or bytes local.
        secret = Secret.of_text(os.environ.get(ENV_PASSPHRASE, ""), ENV_PASSPHRASE)
        return secret if len(secret) else None

    def _require_passphrase(self, name: str) -> Secret:
        passphrase = self._get_passphrase()
        if passphrase is None:
            raise ConfigurationError(f"key {PREFIX}{name} is passphrase-protected: set {ENV_PASSPHRASE}")
        return passphrase

    def _locker(self, name: str, protection: dict[str, Any], passphrase: Secret) -> AESGCM:
        """The AES-GCM key that protects material, derived once per (salt, passphrase)."""
        salt = base64.b64decode(protection["salt"], validate=True)  # checked by _check_meta
        n, r, p = protection["n"], protection["r"], protection["p"]
        cache_key = (salt, hmac.digest(self._cache_mac_key, passphrase.reveal(), "sha256"), n, r, p)
        with self._derived_lock:
            key = self._derived.get(cache_key)
            if key is None:
                scrypt = Scrypt(salt=salt, length=32, n=n, r=r, p=p)
                key = Secret.filled(32, lambda out: scrypt.derive_into(passphrase.reveal(), out))
                self._derived[cache_key] = key
            # Keyed from the cached buffer (wiped by close()); used at once by the caller.
            return AESGCM(key.reveal())


def _passphrase_secret(passphrase: str | BytesLike | Secret | None) -> Secret | None:
    """``passphrase`` as a Secret of its own (``str`` in UTF-8), or None."""
    if passphrase is None:
        return None
    if isinstance(passphrase, str):
        return Secret.of_text(passphrase, "passphrase")
    if isinstance(passphrase, (bytes, bytearray, memoryview, Secret)):
        return Secret(passphrase)
    raise TypeError("passphrase must be str, bytes, bytearray, memoryview or a Secret")


def set_default_key(key_uri: str, home: str | os.PathLike[str] | None = None) -> str:
    """Record ``key_uri`` as ``"default_key"`` in ``$CMKFS_HOME/config.json`` (atomically)."""
    home = cmkfs_home(home)
    _make_private_dir(home, ours=False)
    with config_lock(home):  # one read-modify-write at a time: the policy lives in the same file
        config = load_config(home)
        config["default_key"] = key_uri
        data = json.dumps(config, indent=1, sort_keys=True).encode("utf-8")
        if len(data) > MAX_CONFIG_SIZE:
            raise ConfigurationError("the configuration file would be too large")
        _atomic_write(home / CONFIG_FILE, data)
    return key_uri


def _material_file(version: str) -> str:
    return f"v{version}.key"


def _material_names(meta: _Meta) -> set[str]:
    return {_material_file(v["version"]) for v in meta["versions"] if v["state"] != DESTROYED}


def _material_aad(name: str, version: str) -> bytes:
    return MATERIAL_AAD_LABEL + name.encode("utf-8") + b"\x00" + version.encode("utf-8")


def _version_entry(meta: _Meta, version: str) -> dict[str, Any] | None:
    versions: list[dict[str, Any]] = meta["versions"]
    for entry in versions:
        if entry["version"] == version:
            return entry
    return None


def _check_meta(raw: bytes, name: str) -> _Meta:
    """Parse and validate ``meta.json``: a damaged file is a vault fault, never a guess."""
    damaged = VaultUnavailableError(f"metadata of key {PREFIX}{name} is damaged")
    if len(raw) > MAX_META_SIZE:
        raise damaged
    try:
        meta: _Meta = json.loads(raw)
        versions = meta["versions"]
        ok = (
            meta["format"] == META_FORMAT
            and meta["name"] == name
            and meta["state"] in (ENABLED, DISABLED, DESTROYED)
            and isinstance(versions, list)
            and 0 < len(versions) <= MAX_VERSIONS
            and all(
                isinstance(v, dict)
                and isinstance(v.get("version"), str)
                and v["version"].isascii()
                and v["version"].isdigit()
                and v.get("state") in (ENABLED, DESTROYED)
                for v in versions
            )
            and any(v["version"] == meta["current_version"] for v in versions)
        )
        protection = meta.get("protection")
        if protection is not None:
            ok = ok and (
                protection.get("kdf") == "scrypt"
                and isinstance(protection.get("salt"), str)
                and MIN_SALT_SIZE <= len(base64.b64decode(protection["salt"], validate=True)) <= MAX_SALT_SIZE
                and all(isinstance(protection.get(k), int) for k in "nrp")
                and 2 <= protection["n"] <= MAX_SCRYPT_N
                and protection["n"] & (protection["n"] - 1) == 0  # scrypt takes only powers of two
                and 1 <= protection["r"] <= MAX_SCRYPT_R
                and 1 <= protection["p"] <= MAX_SCRYPT_P
            )
    except (ValueError, KeyError, TypeError, AttributeError):
        raise damaged from None
    if not ok:
        raise damaged
    return meta
