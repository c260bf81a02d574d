"""The PKCS#11 HSM provider: ``pkcs11:token=LABEL;object=KEYLABEL`` (RFC 7512).

Data keys are wrapped inside the HSM with ``C_WrapKey``: the DEK enters the
token as a short-lived session object (``CKA_TOKEN`` false), is wrapped under
the key-encryption key, and the session object is destroyed at once.  The KEK
never leaves the token (``CKA_EXTRACTABLE`` false, ``CKA_SENSITIVE`` true).

Key URI (RFC 7512)::

    pkcs11:token=LABEL;object=KEYLABEL[;type=secret-key|private]
          [?module-path=/path/lib.so][&pin-source=file:/path][&pin-value=PIN]
          [&version=N]

Values are percent-encoded UTF-8.  Key blocks in file headers carry only the
canonical form ``pkcs11:token=...;object=...`` with the version beside it:
never a module path or a PIN.  A key block whose URI carries query attributes
is refused, so a file cannot make a reader load a library or read a file.

Versions (HSMs have none): every version of a key is a separate object with
the same ``CKA_LABEL`` and ``CKA_ID`` = the version number in ASCII decimal
(``b"1"``, ``b"2"``, ...).  The current version is the highest one whose
``CKA_WRAP`` and ``CKA_UNWRAP`` are both set.  An object whose ``CKA_ID`` is not
a decimal number (a key made by another tool) gets the version ``"x" + hex(id)``
and ranks below every numbered version.

Algorithms: an AES-256 secret key wraps with AES key wrap with padding
(RFC 5649, :attr:`~cmkfs.format.WrapAlgorithm.A256KWP`); an RSA key pair
(same label and id on both halves) wraps with RSA-OAEP, SHA-1 and MGF1-SHA-1
(:attr:`~cmkfs.format.WrapAlgorithm.RSA_OAEP_SHA1`: SoftHSM2 offers no other
OAEP hash).

Disable/enable clears/sets ``CKA_WRAP`` (and ``CKA_UNWRAP`` on the unwrapping
object) on every version, so the HSM itself refuses the key
(``CKR_KEY_FUNCTION_NOT_PERMITTED``) to every client, not only to cmkfs.

Sessions: one logged-in session per (module, token) per process, shared by
every provider and guarded by a lock.  PKCS#11 logins belong to the whole
process, so sharing is the only way one provider's ``close`` cannot log out
another.  A session error reopens the session (finding the token by label
again) and retries once.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import threading
from dataclasses import dataclass, field
from urllib.parse import quote, unquote_to_bytes, urlparse

from ..errors import (
    CMKError,
    ConfigurationError,
    IntegrityError,
    KeyNotFoundError,
    KeyRevokedError,
    VaultUnavailableError,
)
from ..format import DEK_SIZE, KeyBlock, WrapAlgorithm
from ..secret import Secret
from .base import KeyInfo, KeyProvider

__all__ = ["PKCS11Provider", "PKCS11URI", "parse_pkcs11_uri", "close_sessions", "MODULE_ENV", "PIN_ENV", "DEFAULT_MODULE"]

MODULE_ENV = "CMKFS_PKCS11_MODULE"
PIN_ENV = "CMKFS_PKCS11_PIN"
DEFAULT_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
INSTALL_HINT = "pip install 'cmkfs[hsm]'"

AES_KEY_BITS = 256
DEFAULT_RSA_BITS = 3072
AES_KWP_WRAPPED_SIZE = 40  # RFC 5649 output for a 32-byte DEK; PKCS#7-then-RFC 3394 would give 56
MAX_PIN_FILE_SIZE = 4096  # bounded before reading
MAX_URI_SIZE = 2048

_PATH_ATTRS = ("token", "object", "type")
_QUERY_ATTRS = ("module-path", "pin-source", "pin-value", "version")
_TYPES = {"secret-key": "aes", "private": "rsa", "public": "rsa"}
# RFC 7512 pk11-path-res-avail minus "=": left unencoded in the canonical form.
_SAFE = ":[]@!$'()*+,"
_PCT = re.compile(r"%(?![0-9A-Fa-f]{2})")

# Return values python-pkcs11 0.10 does not map to a class.
CKR_ACTION_PROHIBITED = 0x1B
CKR_KEY_FUNCTION_NOT_PERMITTED = 0x68
_PERMISSION_CODES = frozenset({CKR_ACTION_PROHIBITED, CKR_KEY_FUNCTION_NOT_PERMITTED})
_UNMAPPED = re.compile(r"Unmapped error code (0x[0-9a-fA-F]+)")

# A per-process secret: rejected or in-use PINs are remembered only as MACs.
_PIN_MAC_KEY = os.urandom(32)


def _pkcs11():
    try:
        import pkcs11
    except ImportError as exc:
        raise ConfigurationError(f"pkcs11: key URIs need python-pkcs11: {INSTALL_HINT}") from exc
    return pkcs11


# -- URIs -------------------------------------------------------------------


@dataclass(frozen=True)
class PKCS11URI:
    """A parsed key URI.  ``pin_value`` never appears in ``repr``."""

    token: str
    object: str
    type: str | None = None
    version: str | None = None
    module_path: str | None = None
    pin_source: str | None = None
    pin_value: str | None = field(default=None, repr=False)

    @property
    def canonical(self) -> str:
        """``pkcs11:token=...;object=...``: what key blocks and caches name."""
        text = f"pkcs11:token={_enc(self.token)};object={_enc(self.object)}"
        if self.type:
            text += f";type={self.type}"
        return text

    @property
    def has_options(self) -> bool:
        return bool(self.module_path or self.pin_source or self.pin_value)


def _enc(value: str) -> str:
    return quote(value, safe=_SAFE)


def _dec(value: str, what: str) -> str:
    if _PCT.search(value):
        raise ConfigurationError(f"bad percent-encoding in the {what} attribute of a pkcs11: URI")
    try:
        return unquote_to_bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigurationError(f"the {what} attribute of a pkcs11: URI is not UTF-8") from None


def parse_pkcs11_uri(uri: str) -> PKCS11URI:
    """Parse ``pkcs11:token=T;object=O[?...]`` (RFC 7512); ``token`` and ``object`` are required."""
    if not isinstance(uri, str) or not uri.startswith("pkcs11:"):
        raise ConfigurationError("a PKCS#11 key URI starts with pkcs11:")
    if len(uri) > MAX_URI_SIZE:
        raise ConfigurationError("the pkcs11: URI is too long")
    path, _, query = uri[len("pkcs11:"):].partition("?")
    attrs: dict[str, str] = {}
    for item in path.split(";") if path else ():
        name, eq, value = item.partition("=")
        if not eq:
            raise ConfigurationError(f"pkcs11: URI path attributes look like name=value, not {name!r}")
        if name not in _PATH_ATTRS:
            # RFC 7512 section 2.3: an unknown path attribute must not match anything.
            raise ConfigurationError(f"unsupported pkcs11: URI attribute {name!r} (use token, object, type)")
        if name in attrs:
            raise ConfigurationError(f"the pkcs11: URI repeats the {name!r} attribute")
        attrs[name] = _dec(value, name)
    options: dict[str, str] = {}
    for item in query.split("&") if query else ():
        name, eq, value = item.partition("=")
        if not eq or name not in _QUERY_ATTRS:
            raise ConfigurationError(
                f"unsupported pkcs11: URI query attribute {name!r} (use module-path, pin-source, pin-value, version)"
            )
        if name in options:
            raise ConfigurationError(f"the pkcs11: URI repeats the {name!r} attribute")
        options[name] = _dec(value, name)
    if not attrs.get("token") or not attrs.get("object"):
        raise ConfigurationError("a PKCS#11 key URI names a token and a key: pkcs11:token=LABEL;object=KEYLABEL")
    kind = attrs.get("type")
    if kind is not None and kind not in _TYPES:
        raise ConfigurationError("type= in a pkcs11: key URI is secret-key (AES) or private (RSA)")
    if options.get("pin-source") and options.get("pin-value"):
        raise ConfigurationError("a pkcs11: URI gives pin-source or pin-value, not both")
    version = options.get("version")
    if version is not None:
        _version_id(version)
    return PKCS11URI(
        token=attrs["token"],
        object=attrs["object"],
        type=kind,
        version=version,
        module_path=options.get("module-path") or None,
        pin_source=options.get("pin-source") or None,
        pin_value=options.get("pin-value") or None,
    )


def _version_of(cka_id: bytes) -> str:
    text = bytes(cka_id)
    if text.isdigit() and text.isascii() and (text == b"0" or not text.startswith(b"0")):
        return text.decode("ascii")
    return "x" + text.hex()


def _version_id(version: str) -> bytes:
    if version.isdigit() and version.isascii():
        return version.encode("ascii")
    if version.startswith("x"):
        try:
            return bytes.fromhex(version[1:])
        except ValueError:
            pass
    raise ConfigurationError("a PKCS#11 key version is a decimal number (or x followed by the hex CKA_ID)")


def _rank(version: str) -> tuple:
    return (1, int(version), "") if version.isdigit() else (0, 0, version)


def _read_pin_source(source: str) -> str:
    if source.startswith("file:"):
        path = urlparse(source).path
    elif source.startswith("/") or not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", source):
        path = source
    else:
        raise ConfigurationError("pin-source must be a file path or a file: URI")
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_PIN_FILE_SIZE + 1)
    except OSError as exc:
        raise ConfigurationError(f"cannot read the PIN file {path!r}: {exc.strerror}") from None
    if len(data) > MAX_PIN_FILE_SIZE:
        raise ConfigurationError(f"the PIN file {path!r} is too large")
    try:
        return data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise ConfigurationError(f"the PIN file {path!r} is not UTF-8") from None


def _pin_mac(pin: str) -> bytes:
    return hmac.new(_PIN_MAC_KEY, pin.encode("utf-8"), hashlib.sha256).digest()


# -- error translation ------------------------------------------------------


def _code(exc: BaseException) -> int | None:
    match = _UNMAPPED.search(str(exc))
    return int(match.group(1), 16) if match else None


def _translate(exc: BaseException, where: str, *, unwrapping: bool = False) -> CMKError:
    """The cmkfs error for a python-pkcs11 error (the caller raises it ``from exc``)."""
    p = _pkcs11()
    name = type(exc).__name__
    if _code(exc) in _PERMISSION_CODES or isinstance(exc, p.PinLocked):
        # The HSM refuses the key (its WRAP/UNWRAP were cleared) or the user PIN is locked.
        return KeyRevokedError(f"the HSM refuses to use {where}: key disabled or not permitted")
    if unwrapping and isinstance(
        exc,
        (p.WrappedKeyInvalid, p.WrappedKeyLenRange, p.EncryptedDataInvalid, p.EncryptedDataLenRange, p.DataLenRange),
    ):
        return IntegrityError()
    if isinstance(exc, (p.PinIncorrect, p.PinInvalid, p.PinLenRange)):
        return ConfigurationError(f"the PIN for {where} was rejected by the token ({name})")
    if isinstance(exc, (p.PinExpired, p.UserPinNotInitialized)):
        return ConfigurationError(f"the user PIN of {where} must be set or changed first ({name})")
    if isinstance(exc, (p.KeyHandleInvalid, p.ObjectHandleInvalid, p.WrappingKeyHandleInvalid, p.UnwrappingKeyHandleInvalid)):
        return KeyNotFoundError(f"{where} vanished from the token")
    if isinstance(
        exc,
        (
            p.MechanismInvalid,
            p.MechanismParamInvalid,
            p.FunctionNotSupported,
            p.KeyTypeInconsistent,
            p.WrappingKeyTypeInconsistent,
            p.UnwrappingKeyTypeInconsistent,
            p.WrappingKeySizeRange,
            p.UnwrappingKeySizeRange,
            p.KeySizeRange,
            p.TemplateInconsistent,
            p.TemplateIncomplete,
            p.AttributeValueInvalid,
            p.AttributeTypeInvalid,
            p.AttributeReadOnly,
            p.ArgumentsBad,
            p.KeyUnextractable,
            p.KeyNotWrappable,
            p.TokenWriteProtected,
        ),
    ):
        return ConfigurationError(f"the token cannot do this with {where} ({name})")
    # Device errors, closed sessions, a token gone from its slot, ...: transient.
    return VaultUnavailableError(f"the HSM holding {where} is unavailable ({name})")


def _session_lost(exc: BaseException) -> bool:
    p = _pkcs11()
    return isinstance(exc, (p.SessionClosed, p.SessionHandleInvalid, p.UserNotLoggedIn, p.DeviceRemoved, p.TokenNotPresent))


# -- process-wide sessions --------------------------------------------------

_LIBS_LOCK = threading.Lock()
_TOKENS: dict[tuple[str, str], "_Token"] = {}
_REJECTED_PINS: set[tuple[str, str, bytes]] = set()
_INITIALISED_IN: dict[str, int] = {}  # module path -> the process that initialised it


def _load_module(path: str):
    if not os.path.isfile(path):
        hint = " (Debian/Ubuntu: apt-get install softhsm2)" if path == DEFAULT_MODULE else ""
        raise ConfigurationError(f"PKCS#11 module {path!r} not found{hint}; set {MODULE_ENV} or module-path=")
    p = _pkcs11()
    try:
        lib = p.lib(path)
        if _INITIALISED_IN.setdefault(path, os.getpid()) != os.getpid():
            # Initialised by a parent before fork(): PKCS#11 requires the child to
            # call C_Initialize itself, which python-pkcs11 does only after
            # C_Finalize (of the child's copy of the library state).
            with contextlib.suppress(p.PKCS11Error):
                lib.finalize()
            lib.initialize()
            _INITIALISED_IN[path] = os.getpid()
        return lib
    except p.PKCS11Error as exc:
        raise ConfigurationError(f"cannot load the PKCS#11 module {path!r}") from exc


class _Token:
    """One logged-in session on one token, shared by every provider in the process."""

    def __init__(self, module: str, label: str) -> None:
        self.module = module
        self.label = label
        self.lock = threading.RLock()
        self.session = None
        self.pin_mac: bytes | None = None
        self.users = 0
        self.aes_mechanism = None

    def open(self, pin: str):
        """The session, opened and logged in if needed (call with ``lock`` held)."""
        mac = _pin_mac(pin)
        where = f"token {self.label!r}"
        if self.session is not None:
            if mac != self.pin_mac:
                # PKCS#11 logins are per process: a second PIN cannot be checked while we are logged in.
                raise ConfigurationError(f"{where} is already logged in with a different PIN in this process")
            return self.session
        if (self.module, self.label, mac) in _REJECTED_PINS:
            # Never retry a rejected PIN: HSMs lock the user PIN after a few failures.
            raise ConfigurationError(f"the PIN for {where} was rejected earlier; not trying it again")
        p = _pkcs11()
        with _LIBS_LOCK:
            lib = _load_module(self.module)
        try:
            token = lib.get_token(token_label=self.label)
        except p.NoSuchToken as exc:
            raise KeyNotFoundError(f"no PKCS#11 token labelled {self.label!r} in {self.module!r}") from exc
        except p.MultipleTokensReturned as exc:
            raise ConfigurationError(f"more than one PKCS#11 token is labelled {self.label!r}") from exc
        except p.PKCS11Error as exc:
            raise _translate(exc, where) from exc
        try:
            session = token.open(rw=True, user_pin=pin)
        except p.UserAlreadyLoggedIn:
            # Someone else in this process (outside cmkfs) logged in: the login is shared.
            try:
                session = token.open(rw=True)
            except p.PKCS11Error as exc:
                raise _translate(exc, where) from exc
        except (p.PinIncorrect, p.PinInvalid, p.PinLenRange) as exc:
            _REJECTED_PINS.add((self.module, self.label, mac))
            raise _translate(exc, where) from exc
        except p.PKCS11Error as exc:
            raise _translate(exc, where) from exc
        self.session, self.pin_mac = session, mac
        return session

    def drop(self) -> None:
        """Forget the session (closing it, which logs out, if it still works)."""
        session, self.session, self.aes_mechanism = self.session, None, None
        if session is not None:
            with contextlib.suppress(Exception):
                session.close()


def _acquire(module: str, label: str) -> _Token:
    with _LIBS_LOCK:
        token = _TOKENS.get((module, label))
        if token is None:
            token = _TOKENS[(module, label)] = _Token(module, label)
        token.users += 1
        return token


def _release(token: _Token) -> None:
    with _LIBS_LOCK:
        token.users -= 1
        last = token.users <= 0
        if last:
            _TOKENS.pop((token.module, token.label), None)
    if last:
        with token.lock:
            token.drop()


def close_sessions() -> None:
    """Log out of every token this process opened (providers reopen on next use).

    For shutdown, and before deleting a SoftHSM2 token directory.
    """
    with _LIBS_LOCK:
        tokens = list(_TOKENS.values())
    for token in tokens:
        with token.lock:
            token.drop()


def _after_fork_in_child() -> None:
    """In a child made by ``fork()`` (see :mod:`cmkfs.forksafe`): forget the
    parent's sessions, without closing them or logging out (they are the
    parent's: on a network HSM that would log the parent out).  Each token
    logs in again on next use, once :func:`_load_module` has initialised the
    library for this process."""
    for token in list(_TOKENS.values()):
        token.lock = threading.RLock()  # a thread in the middle of an HSM call may have held it
        token.session, token.pin_mac, token.aes_mechanism = None, None, None


# -- the provider -------------------------------------------------------------


@dataclass
class _Version:
    version: str
    kind: str  # "aes" or "rsa"
    wrapper: object  # the object with CKA_WRAP (secret key or public key)
    unwrapper: object  # the object with CKA_UNWRAP (secret key or private key)

    @property
    def objects(self) -> tuple:
        return (self.wrapper,) if self.wrapper is self.unwrapper else (self.wrapper, self.unwrapper)

    def enabled(self) -> bool:
        a = _pkcs11().Attribute
        return bool(self.wrapper[a.WRAP]) and bool(self.unwrapper[a.UNWRAP])


class PKCS11Provider(KeyProvider):
    """Wraps data keys with keys held in a PKCS#11 token (an HSM, SoftHSM2, ...).

    ``module`` is the PKCS#11 library (default: ``$CMKFS_PKCS11_MODULE``, then
    SoftHSM2's).  The user PIN comes from a key URI's ``pin-value`` or
    ``pin-source``, else from ``pin`` / ``pin_source`` here, else from
    ``$CMKFS_PKCS11_PIN``.  A URI with ``module-path`` or a PIN attribute binds
    its token to those settings for this provider, so files written under
    such a URI read back through the bare key URI in their headers.
    """

    prefixes = ("pkcs11:",)

    def __init__(self, module: str | None = None, pin: str | None = None, *, pin_source: str | None = None) -> None:
        _pkcs11()  # fail early, with the install hint
        self._module = module or os.environ.get(MODULE_ENV) or DEFAULT_MODULE
        self._pin = pin
        self._pin_source = pin_source
        self._env_pin = os.environ.get(PIN_ENV)
        self._bindings: dict[str, PKCS11URI] = {}
        self._tokens: dict[tuple[str, str], _Token] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"PKCS11Provider(module={self._module!r})"

    # -- configuration --------------------------------------------------

    def _settings(self, uri: PKCS11URI, *, trusted: bool) -> tuple[str, str]:
        """(module path, PIN) for ``uri``'s token."""
        if trusted and uri.has_options:
            with self._lock:
                self._bindings[uri.token] = uri
        bound = self._bindings.get(uri.token) or uri
        module = bound.module_path or self._module
        if bound.pin_value:
            pin = bound.pin_value
        elif bound.pin_source:
            pin = _read_pin_source(bound.pin_source)
        elif self._pin is not None:
            pin = self._pin
        elif self._pin_source:
            pin = _read_pin_source(self._pin_source)
        elif self._env_pin is not None:
            pin = self._env_pin
        else:
            raise ConfigurationError(
                f"no PIN for PKCS#11 token {uri.token!r}: pass pin=, add pin-source= to the key URI or set {PIN_ENV}"
            )
        return module, pin

    def _token_for(self, module: str, label: str) -> _Token:
        with self._lock:  # a closed provider reopens on use, like a dropped connection
            token = self._tokens.get((module, label))
            if token is None:
                token = self._tokens[(module, label)] = _acquire(module, label)
            return token

    def _run(self, uri: PKCS11URI, op, *, trusted: bool = True, unwrapping: bool = False):
        """Run ``op(token, session)`` under the token's lock, reopening a lost session once."""
        module, pin = self._settings(uri, trusted=trusted)
        token = self._token_for(module, uri.token)
        where = f"key {uri.canonical}"
        p = _pkcs11()
        with token.lock:
            for attempt in (1, 2):
                session = token.open(pin)
                try:
                    return op(token, session)
                except p.PKCS11Error as exc:
                    if _session_lost(exc) and attempt == 1:
                        token.drop()
                        continue
                    if unwrapping and isinstance(exc, p.GeneralError):
                        # SoftHSM2 reports a failed integrity check as CKR_GENERAL_ERROR:
                        # if the session still works, the wrapped key was at fault.
                        try:
                            session.generate_random(64)
                        except p.PKCS11Error:
                            token.drop()
                            raise VaultUnavailableError(f"the HSM holding {where} is unavailable") from exc
                        raise IntegrityError() from exc
                    if _session_lost(exc):
                        token.drop()
                    raise _translate(exc, where, unwrapping=unwrapping) from exc

    # -- key lookup -------------------------------------------------------

    @staticmethod
    def _find(session, uri: PKCS11URI, version: str | None = None, kind: str | None = None) -> list[_Version]:
        p = _pkcs11()
        a, oc, kt = p.Attribute, p.ObjectClass, p.KeyType
        kind = kind or (_TYPES[uri.type] if uri.type else None)
        query = {a.LABEL: uri.object}
        if version is not None:
            query[a.ID] = _version_id(version)
        found: list[_Version] = []
        if kind in (None, "aes"):
            for obj in session.get_objects({**query, a.CLASS: oc.SECRET_KEY, a.KEY_TYPE: kt.AES}):
                found.append(_Version(_version_of(obj[a.ID]), "aes", obj, obj))
        if kind == "rsa" or (kind is None and not found):
            # Searches cost a scan of the token in some HSMs: look for RSA pairs only when no AES key matched.
            privates = list(session.get_objects({**query, a.CLASS: oc.PRIVATE_KEY, a.KEY_TYPE: kt.RSA}))
            publics = {bytes(o[a.ID]): o for o in session.get_objects({**query, a.CLASS: oc.PUBLIC_KEY, a.KEY_TYPE: kt.RSA})}
            for priv in privates:
                pub = publics.get(bytes(priv[a.ID]))
                if pub is not None:
                    found.append(_Version(_version_of(priv[a.ID]), "rsa", pub, priv))
        if not found:
            what = f"version {version} of " if version is not None else ""
            raise KeyNotFoundError(f"no {what}key {uri.canonical} on the token")
        if len({v.kind for v in found}) > 1:
            raise ConfigurationError(f"{uri.canonical} names both an AES key and an RSA key pair: add ;type=secret-key or ;type=private")
        if len({v.version for v in found}) != len(found):
            raise ConfigurationError(f"{uri.canonical} has two objects with the same CKA_ID")
        found.sort(key=lambda v: _rank(v.version))
        return found

    @staticmethod
    def _current(versions: list[_Version]) -> _Version:
        enabled = [v for v in versions if v.enabled()]
        # None enabled: use the newest anyway and let the HSM refuse it.
        return enabled[-1] if enabled else versions[-1]

    def _aes_mechanism(self, token: _Token, session):
        """The token's RFC 5649 mechanism, checked once per session by a known-answer test."""
        if token.aes_mechanism is not None:
            return token.aes_mechanism
        p = _pkcs11()
        m = p.Mechanism
        mechanisms = session.token.slot.get_mechanisms()
        if m.AES_KEY_WRAP_KWP in mechanisms:
            mechanism = m.AES_KEY_WRAP_KWP  # PKCS#11 3.0's name for RFC 5649
        elif m.AES_KEY_WRAP_PAD in mechanisms:
            mechanism = m.AES_KEY_WRAP_PAD  # RFC 5649 in SoftHSM2; PKCS#7 + RFC 3394 in the 3.0 spec
        else:
            raise ConfigurationError(f"token {token.label!r} offers no AES key wrap with padding (RFC 5649)")
        # Known-answer test with throwaway session keys: the spec's CKM_AES_KEY_WRAP_PAD is
        # not RFC 5649, and a file wrapped with it would not unwrap anywhere else.
        from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding

        kek, dek = bytes(range(32)), bytes(range(32, 64))
        a = p.Attribute
        made = []
        try:
            k = session.create_object(_session_key(kek, {a.WRAP: True}))
            made.append(k)
            d = session.create_object(_session_key(dek, {}))
            made.append(d)
            ok = k.wrap_key(d, mechanism=mechanism) == aes_key_wrap_with_padding(kek, dek)
        except p.PKCS11Error as exc:
            if _session_lost(exc) or isinstance(exc, (p.DeviceError, p.GeneralError)):
                raise
            # Tokens that refuse plaintext key import: trust KWP, and check PAD by its output size on every wrap.
            ok = True
        finally:
            for obj in made:
                with contextlib.suppress(p.PKCS11Error):
                    obj.destroy()
        if not ok:
            raise ConfigurationError(f"token {token.label!r}: {mechanism.name} is not RFC 5649 key wrap")
        token.aes_mechanism = mechanism
        return mechanism

    # -- KeyProvider --------------------------------------------------------

    def wrap(self, key_uri: str, dek) -> KeyBlock:
        uri = parse_pkcs11_uri(key_uri)
        dek = Secret.of(dek, DEK_SIZE, "a data key")  # a Secret, or any bytes-like object (copied)

        def op(token, session):
            versions = self._find(session, uri, uri.version)
            chosen = versions[-1] if uri.version is not None else self._current(versions)
            d = session.create_object(_session_key(bytes(dek), {}))
            try:
                if chosen.kind == "aes":
                    mechanism = self._aes_mechanism(token, session)
                    wrapped = _capability(chosen.wrapper, "wrap_key", uri)(d, mechanism=mechanism)
                    if len(wrapped) != AES_KWP_WRAPPED_SIZE:
                        raise ConfigurationError(f"token {uri.token!r} does not wrap with RFC 5649")
                    alg = WrapAlgorithm.A256KWP
                else:
                    wrap_key = _capability(chosen.wrapper, "wrap_key", uri)
                    wrapped = wrap_key(d, mechanism=_pkcs11().Mechanism.RSA_PKCS_OAEP, mechanism_param=_oaep())
                    alg = WrapAlgorithm.RSA_OAEP_SHA1
            finally:
                with contextlib.suppress(_pkcs11().PKCS11Error):
                    d.destroy()
            return KeyBlock(alg, uri.canonical, chosen.version, bytes(wrapped))

        return self._run(uri, op)

    def unwrap(self, key_block: KeyBlock) -> Secret:
        uri = parse_pkcs11_uri(key_block.key_uri)
        if uri.has_options or uri.version is not None:
            # Header URIs come from storage: never let one choose a library or a PIN file.
            raise ConfigurationError("a key block's pkcs11: URI must not carry query attributes")
        if key_block.wrap_alg == WrapAlgorithm.A256KWP:
            kind = "aes"
        elif key_block.wrap_alg == WrapAlgorithm.RSA_OAEP_SHA1:
            kind = "rsa"
        else:
            raise ConfigurationError(f"the PKCS#11 provider cannot unwrap {key_block.wrap_alg.name} key blocks")
        _version_id(key_block.key_version)
        if not 0 < len(key_block.wrapped_dek) <= 1024:
            raise IntegrityError()

        def op(token, session):
            p = _pkcs11()
            chosen = self._find(session, uri, key_block.key_version, kind)[-1]
            if kind == "aes":
                mechanism, param = self._aes_mechanism(token, session), None
            else:
                mechanism, param = p.Mechanism.RSA_PKCS_OAEP, _oaep()
            a = p.Attribute
            obj = _capability(chosen.unwrapper, "unwrap_key", uri)(
                p.ObjectClass.SECRET_KEY,
                p.KeyType.AES,
                bytes(key_block.wrapped_dek),
                mechanism=mechanism,
                mechanism_param=param,
                store=False,
                capabilities=p.MechanismFlag(0),
                # A session object we may read back; destroyed below.
                template={a.SENSITIVE: False, a.EXTRACTABLE: True, a.PRIVATE: True},
            )
            try:
                value = Secret(obj[a.VALUE])  # never a bytes local: see cmkfs.secret
            finally:
                with contextlib.suppress(p.PKCS11Error):
                    obj.destroy()
            if len(value) != DEK_SIZE:
                value.wipe()
                raise IntegrityError()
            return value

        return self._run(uri, op, trusted=False, unwrapping=True)

    def describe(self, key_uri: str) -> KeyInfo:
        uri = parse_pkcs11_uri(key_uri)

        def op(token, session):
            a = _pkcs11().Attribute
            versions = self._find(session, uri)
            current = self._current(versions)
            warnings = []
            for v in versions:
                if v.unwrapper[a.EXTRACTABLE] or not v.unwrapper[a.SENSITIVE]:
                    warnings.append(f"version {v.version} is extractable or not sensitive: it can leave the HSM")
            if current.kind == "aes":
                algorithm, bits = "AES-256 key wrap with padding (RFC 5649)", int(current.unwrapper[a.VALUE_LEN]) * 8
            else:
                algorithm, bits = "RSA-OAEP (SHA-1, MGF1-SHA-1)", int(current.wrapper[a.MODULUS_BITS])
            return KeyInfo(
                key_uri=uri.canonical,
                current_version=current.version,
                enabled=current.enabled(),
                algorithm=algorithm,
                versions=tuple(v.version for v in versions),
                size_bits=bits,
                warnings=tuple(warnings),
            )

        return self._run(uri, op)

    def canonical_uri(self, key_uri: str) -> str:
        return parse_pkcs11_uri(key_uri).canonical

    def close(self) -> None:
        with self._lock:
            tokens, self._tokens = list(self._tokens.values()), {}
        for token in tokens:
            _release(token)

    def __del__(self):
        # Not contextlib.suppress: at interpreter exit module globals may already be None.
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    # -- management (tests, the CLI) ----------------------------------------

    def create_key(self, token: str, label: str, *, algorithm: str = "aes", rsa_bits: int = DEFAULT_RSA_BITS) -> str:
        """Create version 1 of a new key; returns its key URI.

        ``algorithm`` is ``"aes"`` (AES-256, RFC 5649 wrap) or ``"rsa"`` (an
        RSA key pair, RSA-OAEP-SHA-1).  The key is non-extractable and sensitive.
        """
        uri = parse_pkcs11_uri(f"pkcs11:token={_enc(token)};object={_enc(label)}")
        if algorithm not in ("aes", "rsa"):
            raise ConfigurationError("algorithm is 'aes' or 'rsa'")

        def op(tok, session):
            with contextlib.suppress(KeyNotFoundError):
                self._find(session, uri)
                raise ConfigurationError(f"key {uri.canonical} already exists: rotate it instead")
            self._generate(session, uri, "1", algorithm, rsa_bits)
            return uri.canonical

        return self._run(uri, op)

    def rotate(self, key_uri: str, *, rsa_bits: int | None = None) -> str:
        """Create the next version of a key; returns the new version (now current)."""
        uri = parse_pkcs11_uri(key_uri)

        def op(tok, session):
            versions = self._find(session, uri)
            numbered = [int(v.version) for v in versions if v.version.isdigit()]
            version = str(max(numbered, default=0) + 1)
            kind = versions[-1].kind
            bits = rsa_bits or (int(versions[-1].wrapper[_pkcs11().Attribute.MODULUS_BITS]) if kind == "rsa" else 0)
            self._generate(session, uri, version, kind, bits)
            return version

        return self._run(uri, op)

    def disable(self, key_uri: str) -> None:
        """Make the HSM refuse every version of the key (or the URI's one version)."""
        self._set_enabled(key_uri, False)

    def enable(self, key_uri: str) -> None:
        """Undo :meth:`disable`."""
        self._set_enabled(key_uri, True)

    def destroy(self, key_uri: str) -> None:
        """Destroy every version of the key (or the URI's one version): irreversible."""
        uri = parse_pkcs11_uri(key_uri)

        def op(tok, session):
            for v in self._find(session, uri, uri.version):
                for obj in v.objects:
                    obj.destroy()

        self._run(uri, op)

    @contextlib.contextmanager
    def open_session(self, key_uri: str):
        """The logged-in python-pkcs11 session of a key's token, locked for the ``with`` block.

        For diagnostics and tests; errors inside the block are not translated.
        """
        uri = parse_pkcs11_uri(key_uri)
        module, pin = self._settings(uri, trusted=True)
        token = self._token_for(module, uri.token)
        with token.lock:
            yield token.open(pin)

    def _set_enabled(self, key_uri: str, enabled: bool) -> None:
        uri = parse_pkcs11_uri(key_uri)

        def op(tok, session):
            a = _pkcs11().Attribute
            for v in self._find(session, uri, uri.version):
                v.wrapper[a.WRAP] = enabled
                v.unwrapper[a.UNWRAP] = enabled

        self._run(uri, op)

    @staticmethod
    def _generate(session, uri: PKCS11URI, version: str, kind: str, rsa_bits: int) -> None:
        p = _pkcs11()
        a, flag = p.Attribute, p.MechanismFlag
        key_id = _version_id(version)
        if kind == "aes":
            session.generate_key(
                p.KeyType.AES,
                AES_KEY_BITS,
                id=key_id,
                label=uri.object,
                store=True,
                capabilities=flag.WRAP | flag.UNWRAP,
                # Never leaves the HSM; WRAP/UNWRAP stay modifiable so disable/enable work.
                template={a.EXTRACTABLE: False, a.SENSITIVE: True, a.PRIVATE: True, a.MODIFIABLE: True},
            )
        else:
            session.generate_keypair(
                p.KeyType.RSA,
                rsa_bits,
                id=key_id,
                label=uri.object,
                store=True,
                capabilities=flag.WRAP | flag.UNWRAP,
                public_template={a.WRAP: True, a.ENCRYPT: False, a.VERIFY: False, a.MODIFIABLE: True},
                private_template={
                    a.UNWRAP: True,
                    a.DECRYPT: False,
                    a.SIGN: False,
                    a.EXTRACTABLE: False,
                    a.SENSITIVE: True,
                    a.PRIVATE: True,
                    a.MODIFIABLE: True,
                },
            )


def _capability(obj, method: str, uri: PKCS11URI):
    """``obj.wrap_key`` / ``obj.unwrap_key``.

    python-pkcs11 leaves the method off an object whose CKA_WRAP / CKA_UNWRAP
    the token reports as false: that is the token saying the key is disabled.
    (If it is disabled between lookup and use, the token answers 0x68.)
    """
    bound = getattr(obj, method, None)
    if bound is None:
        raise KeyRevokedError(f"the HSM refuses to use key {uri.canonical}: key disabled or not permitted")
    return bound


def _session_key(value: bytes, extra: dict) -> dict:
    """A template for a short-lived AES session object holding ``value``."""
    p = _pkcs11()
    a = p.Attribute
    template = {
        a.CLASS: p.ObjectClass.SECRET_KEY,
        a.KEY_TYPE: p.KeyType.AES,
        a.VALUE: value,
        a.TOKEN: False,  # gone when the session closes, destroyed right after use anyway
        a.PRIVATE: True,
        a.SENSITIVE: False,
        a.EXTRACTABLE: True,
        a.ENCRYPT: False,
        a.DECRYPT: False,
        a.WRAP: False,
        a.UNWRAP: False,
    }
    template.update(extra)
    return template


def _oaep():
    p = _pkcs11()
    return (p.Mechanism.SHA_1, p.MGF.SHA1, None)
