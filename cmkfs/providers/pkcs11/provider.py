"""The PKCS#11 key provider: data keys wrapped inside the token with ``C_WrapKey``.

The DEK enters the token as a session object (``CKA_TOKEN`` false), is wrapped
under the key-encryption key, and is destroyed at once; the KEK never leaves the
token.  AES-256 keys wrap with RFC 5649, RSA pairs with RSA-OAEP-SHA-1.  Each key
version is its own object (``CKA_ID`` = the version); disable clears ``CKA_WRAP``
and ``CKA_UNWRAP`` so that the HSM itself refuses the key.  docs/HSM.md explains.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from ...errors import ConfigurationError, IntegrityError, KeyNotFoundError, KeyRevokedError, VaultUnavailableError
from ...format import DEK_SIZE, KeyBlock, WrapAlgorithm
from ...secret import BytesLike, Secret
from ..base import KeyInfo, KeyProvider
from .errors import SESSION_LOST, is_one_of, pkcs11, translate
from .sessions import DEFAULT_MODULE, MODULE_ENV, PIN_ENV, Token, acquire, pin_secret, read_pin, release
from .uri import KIND_OF_TYPE, PKCS11URI, parse_pkcs11_uri, quote_attribute, version_id, version_of, version_rank

if TYPE_CHECKING:
    from pkcs11 import MGF, Attribute, Mechanism, Object, Session

__all__ = ["PKCS11Provider"]

AES_KEY_BITS = 256
DEFAULT_RSA_BITS = 3072
AES_KWP_WRAPPED_SIZE = 40  # RFC 5649 output for a 32-byte DEK; PKCS#7-then-RFC 3394 would give 56
MAX_WRAPPED_SIZE = 1024  # bounded before the token sees it

_T = TypeVar("_T")


@dataclass
class _Version:
    version: str
    kind: str  # "aes" or "rsa"
    wrapper: Object  # the object with CKA_WRAP (secret key or public key)
    unwrapper: Object  # the object with CKA_UNWRAP (secret key or private key)

    @property
    def objects(self) -> tuple[Object, ...]:
        return (self.wrapper,) if self.wrapper is self.unwrapper else (self.wrapper, self.unwrapper)

    def enabled(self) -> bool:
        a = pkcs11().Attribute
        return bool(self.wrapper[a.WRAP]) and bool(self.unwrapper[a.UNWRAP])


@dataclass(frozen=True)
class _Binding:
    """What a configured key URI bound its token to: the URI's PIN is kept only as a Secret."""

    module_path: str | None
    pin_source: str | None
    pin: Secret | None = field(default=None, repr=False)

    @classmethod
    def of(cls, uri: PKCS11URI) -> _Binding:
        pin = pin_secret(uri.pin_value, "the pin-value of a pkcs11: URI") if uri.pin_value else None
        return cls(uri.module_path, uri.pin_source, pin)


class PKCS11Provider(KeyProvider):
    """Wraps data keys with keys held in a PKCS#11 token (an HSM, SoftHSM2, ...).

    ``module`` is the PKCS#11 library (default: ``$CMKFS_PKCS11_MODULE``, then
    SoftHSM2's).  The user PIN comes from a key URI's ``pin-value`` or
    ``pin-source``, else from ``pin`` / ``pin_source`` here, else from
    ``$CMKFS_PKCS11_PIN``.  A URI with ``module-path`` or a PIN attribute binds
    its token to those settings for this provider, so files written under
    such a URI read back through the bare key URI in their headers.  ``pin``
    is text or a :class:`~cmkfs.secret.Secret` holding UTF-8 (copied).
    """

    prefixes = ("pkcs11:",)

    def __init__(
        self, module: str | None = None, pin: str | Secret | None = None, *, pin_source: str | None = None
    ) -> None:
        # Into Secrets first: from here on no frame holds a PIN as str or bytes.
        self._pin = pin_secret(pin) if pin is not None else None
        del pin
        self._env_pin = pin_secret(os.environ[PIN_ENV], f"${PIN_ENV}") if PIN_ENV in os.environ else None
        pkcs11()  # fail early, with the install hint
        self._module = module or os.environ.get(MODULE_ENV) or DEFAULT_MODULE
        self._pin_source = pin_source
        self._bindings: dict[str, _Binding] = {}
        self._tokens: dict[tuple[str, str], Token] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"PKCS11Provider(module={self._module!r})"

    # -- configuration --------------------------------------------------

    def _settings(self, uri: PKCS11URI, *, trusted: bool) -> tuple[str, Secret]:
        """(module path, PIN) for ``uri``'s token."""
        bound = _Binding.of(uri)
        if trusted and uri.has_options:
            with self._lock:
                self._bindings[uri.token] = bound
        else:
            bound = self._bindings.get(uri.token) or bound
        module = bound.module_path or self._module
        pin: Secret
        if bound.pin is not None:
            pin = bound.pin
        elif bound.pin_source:
            pin = read_pin(bound.pin_source)
        elif self._pin is not None:
            pin = self._pin
        elif self._pin_source:
            pin = read_pin(self._pin_source)
        elif self._env_pin is not None:
            pin = self._env_pin
        else:
            raise ConfigurationError(
                f"no PIN for PKCS#11 token {uri.token!r}: pass pin=, add pin-source= to the key URI or set {PIN_ENV}"
            )
        return module, pin

    def _token_for(self, module: str, label: str) -> Token:
        with self._lock:  # a closed provider reopens on use, like a dropped connection
            token = self._tokens.get((module, label))
            if token is None:
                token = self._tokens[(module, label)] = acquire(module, label)
            return token

    def _run(
        self,
        uri: PKCS11URI,
        op: Callable[[Token, Session], _T],
        *,
        trusted: bool = True,
        unwrapping: bool = False,
    ) -> _T:
        """Run ``op(token, session)`` under the token's lock: where python-pkcs11 errors become cmkfs errors.

        A lost session is reopened (finding the token by label again) and ``op`` retried once.
        """
        module, pin = self._settings(uri, trusted=trusted)
        token = self._token_for(module, uri.token)
        where = f"key {uri.canonical}"
        p = pkcs11()
        with token.lock:
            for attempt in (1, 2):
                session = token.open(pin)
                try:
                    return op(token, session)
                except p.PKCS11Error as exc:
                    if is_one_of(exc, SESSION_LOST):
                        token.drop()
                        if attempt == 1:
                            continue
                    elif unwrapping and isinstance(exc, p.GeneralError):
                        # SoftHSM2 reports a failed integrity check as CKR_GENERAL_ERROR:
                        # if the session still works, the wrapped key was at fault.
                        if _still_works(session):
                            raise IntegrityError() from exc
                        token.drop()
                        raise VaultUnavailableError(f"the HSM holding {where} is unavailable") from exc
                    raise translate(exc, where, unwrapping=unwrapping) from exc
        raise AssertionError("not reached: the second attempt returns or raises")

    # -- key lookup -------------------------------------------------------

    @staticmethod
    def _find(session: Session, uri: PKCS11URI, version: str | None = None, kind: str | None = None) -> list[_Version]:
        p = pkcs11()
        a, oc, kt = p.Attribute, p.ObjectClass, p.KeyType
        kind = kind or (KIND_OF_TYPE[uri.type] if uri.type else None)
        query: dict[Attribute, Any] = {a.LABEL: uri.object}
        if version is not None:
            query[a.ID] = version_id(version)
        found: list[_Version] = []
        if kind in (None, "aes"):
            aes_keys = session.get_objects({**query, a.CLASS: oc.SECRET_KEY, a.KEY_TYPE: kt.AES})
            found += [_Version(version_of(obj[a.ID]), "aes", obj, obj) for obj in aes_keys]
        if kind == "rsa" or (kind is None and not found):
            # Searches cost a scan of the token in some HSMs: look for RSA pairs only when no AES key matched.
            privates = list(session.get_objects({**query, a.CLASS: oc.PRIVATE_KEY, a.KEY_TYPE: kt.RSA}))
            public_query = {**query, a.CLASS: oc.PUBLIC_KEY, a.KEY_TYPE: kt.RSA}
            publics = {bytes(o[a.ID]): o for o in session.get_objects(public_query)}
            for priv in privates:
                pub = publics.get(bytes(priv[a.ID]))
                if pub is not None:
                    found.append(_Version(version_of(priv[a.ID]), "rsa", pub, priv))
        if not found:
            what = f"version {version} of " if version is not None else ""
            raise KeyNotFoundError(f"no {what}key {uri.canonical} on the token")
        if len({v.kind for v in found}) > 1:
            raise ConfigurationError(
                f"{uri.canonical} names both an AES key and an RSA key pair: add ;type=secret-key or ;type=private"
            )
        if len({v.version for v in found}) != len(found):
            raise ConfigurationError(f"{uri.canonical} has two objects with the same CKA_ID")
        found.sort(key=lambda v: version_rank(v.version))
        return found

    @staticmethod
    def _current(versions: list[_Version]) -> _Version:
        enabled = [v for v in versions if v.enabled()]
        # None enabled: use the newest anyway and let the HSM refuse it.
        return enabled[-1] if enabled else versions[-1]

    @staticmethod
    def _aes_mechanism(token: Token, session: Session) -> Mechanism:
        """The token's RFC 5649 mechanism, checked once per session by a known-answer test."""
        if token.aes_mechanism is not None:
            return token.aes_mechanism
        p = pkcs11()
        m = p.Mechanism
        mechanisms = session.token.slot.get_mechanisms()
        mechanism: Mechanism
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
        made: list[Object] = []
        try:
            # Any: python-pkcs11 gives the object's class its wrap_key method at run time.
            k: Any = session.create_object(_session_key(kek, {a.WRAP: True}))
            made.append(k)
            d = session.create_object(_session_key(dek, {}))
            made.append(d)
            ok = k.wrap_key(d, mechanism=mechanism) == aes_key_wrap_with_padding(kek, dek)
        except p.PKCS11Error as exc:
            if is_one_of(exc, SESSION_LOST) or isinstance(exc, (p.DeviceError, p.GeneralError)):
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

    def wrap(self, key_uri: str, dek: Secret | BytesLike) -> KeyBlock:
        uri = parse_pkcs11_uri(key_uri)
        dek = Secret.of(dek, DEK_SIZE, "a data key")  # a Secret, or any bytes-like object (copied)

        def op(token: Token, session: Session) -> KeyBlock:
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
                    wrapped = wrap_key(d, mechanism=pkcs11().Mechanism.RSA_PKCS_OAEP, mechanism_param=_oaep())
                    alg = WrapAlgorithm.RSA_OAEP_SHA1
            finally:
                with contextlib.suppress(pkcs11().PKCS11Error):
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
        version_id(key_block.key_version)
        if not 0 < len(key_block.wrapped_dek) <= MAX_WRAPPED_SIZE:
            raise IntegrityError()

        def op(token: Token, session: Session) -> Secret:
            p = pkcs11()
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

        def op(token: Token, session: Session) -> KeyInfo:
            a = pkcs11().Attribute
            versions = self._find(session, uri)
            current = self._current(versions)
            warnings = [
                f"version {v.version} is extractable or not sensitive: it can leave the HSM"
                for v in versions
                if v.unwrapper[a.EXTRACTABLE] or not v.unwrapper[a.SENSITIVE]
            ]
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
            release(token)

    def __del__(self) -> None:
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
        uri = parse_pkcs11_uri(f"pkcs11:token={quote_attribute(token)};object={quote_attribute(label)}")
        if algorithm not in ("aes", "rsa"):
            raise ConfigurationError("algorithm is 'aes' or 'rsa'")

        def op(tok: Token, session: Session) -> str:
            with contextlib.suppress(KeyNotFoundError):
                self._find(session, uri)
                raise ConfigurationError(f"key {uri.canonical} already exists: rotate it instead")
            self._generate(session, uri, "1", algorithm, rsa_bits)
            return uri.canonical

        return self._run(uri, op)

    def rotate(self, key_uri: str, *, rsa_bits: int | None = None) -> str:
        """Create the next version of a key; returns the new version (now current)."""
        uri = parse_pkcs11_uri(key_uri)

        def op(tok: Token, session: Session) -> str:
            versions = self._find(session, uri)
            numbered = [int(v.version) for v in versions if v.version.isdigit()]
            version = str(max(numbered, default=0) + 1)
            kind = versions[-1].kind
            bits = rsa_bits or (int(versions[-1].wrapper[pkcs11().Attribute.MODULUS_BITS]) if kind == "rsa" else 0)
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

        def op(tok: Token, session: Session) -> None:
            for v in self._find(session, uri, uri.version):
                for obj in v.objects:
                    obj.destroy()

        self._run(uri, op)

    @contextlib.contextmanager
    def open_session(self, key_uri: str) -> Iterator[Session]:
        """The logged-in python-pkcs11 session of a key's token, locked for the ``with`` block.

        For diagnostics and tests; errors inside the block are not translated.
        """
        uri = parse_pkcs11_uri(key_uri)
        module, pin = self._settings(uri, trusted=True)
        token = self._token_for(module, uri.token)
        with token.lock:
            yield token.open(pin)

    def set_enabled(self, key_uri: str, enabled: bool) -> tuple[str, ...]:
        """:meth:`enable` or :meth:`disable`; returns the versions changed."""
        return self._set_enabled(key_uri, enabled)

    def _set_enabled(self, key_uri: str, enabled: bool) -> tuple[str, ...]:
        uri = parse_pkcs11_uri(key_uri)

        def op(tok: Token, session: Session) -> tuple[str, ...]:
            a = pkcs11().Attribute
            found = self._find(session, uri, uri.version)
            for v in found:
                v.wrapper[a.WRAP] = enabled
                v.unwrapper[a.UNWRAP] = enabled
            return tuple(v.version for v in found)

        return self._run(uri, op)

    @staticmethod
    def _generate(session: Session, uri: PKCS11URI, version: str, kind: str, rsa_bits: int) -> None:
        p = pkcs11()
        a, flag = p.Attribute, p.MechanismFlag
        key_id = version_id(version)
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


def _still_works(session: Session) -> bool:
    try:
        session.generate_random(64)
    except pkcs11().PKCS11Error:
        return False
    return True


def _capability(obj: Object, method: str, uri: PKCS11URI) -> Callable[..., Any]:
    """``obj.wrap_key`` / ``obj.unwrap_key``.

    python-pkcs11 leaves the method off an object whose CKA_WRAP / CKA_UNWRAP
    the token reports as false: that is the token saying the key is disabled.
    (If it is disabled between lookup and use, the token answers 0x68.)
    """
    bound: Callable[..., Any] | None = getattr(obj, method, None)
    if bound is None:
        raise KeyRevokedError(f"the HSM refuses to use key {uri.canonical}: key disabled or not permitted")
    return bound


def _session_key(value: bytes, extra: dict[Attribute, Any]) -> dict[Attribute, Any]:
    """A template for a short-lived AES session object holding ``value``."""
    p = pkcs11()
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


def _oaep() -> tuple[Mechanism, MGF, None]:
    p = pkcs11()
    return (p.Mechanism.SHA_1, p.MGF.SHA1, None)
