"""PKCS#11 libraries, PINs, and one logged-in session per (library, token) per process.

PKCS#11 logins belong to the whole process, so every provider shares the one
session of a token (guarded by its lock): that way one provider's ``close``
cannot log another out.  A PIN travels in a :class:`~cmkfs.secret.Secret`
from where it is read to the one call that hands it to python-pkcs11.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import threading
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from ...errors import ConfigurationError, KeyNotFoundError
from ...secret import Secret
from .errors import PIN_REJECTED, is_one_of, pkcs11, translated

if TYPE_CHECKING:
    from pkcs11 import Mechanism, Session

__all__ = [
    "Token",
    "acquire",
    "release",
    "close_sessions",
    "read_pin",
    "read_pin_source",
    "pin_secret",
    "MODULE_ENV",
    "PIN_ENV",
    "DEFAULT_MODULE",
]

MODULE_ENV = "CMKFS_PKCS11_MODULE"
PIN_ENV = "CMKFS_PKCS11_PIN"
DEFAULT_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
MAX_PIN_FILE_SIZE = 4096  # bounded before reading

# A per-process secret: rejected or in-use PINs are remembered only as MACs.
_PIN_MAC_KEY = os.urandom(32)

_LIBS_LOCK = threading.Lock()
_TOKENS: dict[tuple[str, str], Token] = {}
_REJECTED_PINS: set[tuple[str, str, bytes]] = set()
_INITIALISED_IN: dict[str, int] = {}  # module path -> the process that initialised it


def read_pin(source: str) -> Secret:
    """The PIN in the file ``source`` (a path or a ``file:`` URI), without its trailing newline."""
    if source.startswith("file:"):
        path = urlparse(source).path
    elif source.startswith("/") or not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", source):
        path = source
    else:
        raise ConfigurationError("pin-source must be a file path or a file: URI")
    try:
        with open(path, "rb") as fh:
            data = Secret(fh.read(MAX_PIN_FILE_SIZE + 1))  # never a bytes local: see cmkfs.secret
    except OSError as exc:
        raise ConfigurationError(f"cannot read the PIN file {path!r}: {exc.strerror}") from None
    try:
        if len(data) > MAX_PIN_FILE_SIZE:
            raise ConfigurationError(f"the PIN file {path!r} is too large")
        view = data.reveal()
        end = len(view)
        while end and view[end - 1] in b"\r\n":
            end -= 1
        pin = Secret(view[:end])
    finally:
        data.wipe()
    _check_utf8(pin, f"the PIN file {path!r}")
    return pin


def read_pin_source(source: str) -> str:
    """:func:`read_pin` as text, for tools; cmkfs itself keeps the PIN in a Secret."""
    pin = read_pin(source)  # bound: a Secret dropped mid-expression wipes its buffer before the view is read
    return str(pin.reveal(), "utf-8")


def pin_secret(pin: str | Secret, what: str = "the PIN") -> Secret:
    """``pin`` (text, or a Secret holding UTF-8) as a Secret of its own."""
    if isinstance(pin, Secret):
        secret = Secret(pin)
        _check_utf8(secret, what)
        return secret
    if not isinstance(pin, str):
        raise TypeError(f"{what} must be str or a Secret")
    try:
        return Secret.of_text(pin, what)
    except ValueError:
        pass
    raise ConfigurationError(f"{what} is not valid Unicode text")


def _check_utf8(pin: Secret, what: str) -> None:
    """Refuse a PIN that is not UTF-8, before it reaches python-pkcs11 (which takes text)."""
    try:
        str(pin.reveal(), "utf-8")
        return
    except UnicodeDecodeError:
        pin.wipe()
    # Raised outside the handler: the UnicodeDecodeError holds the PIN's bytes.
    raise ConfigurationError(f"{what} is not UTF-8")


def _pin_mac(pin: Secret) -> bytes:
    return hmac.new(_PIN_MAC_KEY, pin.reveal(), hashlib.sha256).digest()


def _load_module(path: str) -> Any:  # a pkcs11.lib
    """The PKCS#11 library at ``path``, initialised in this process (call with ``_LIBS_LOCK`` held)."""
    if not os.path.isfile(path):
        hint = " (Debian/Ubuntu: apt-get install softhsm2)" if path == DEFAULT_MODULE else ""
        raise ConfigurationError(f"PKCS#11 module {path!r} not found{hint}; set {MODULE_ENV} or module-path=")
    p = pkcs11()
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


class Token:
    """One logged-in session on one token, shared by every provider in the process."""

    def __init__(self, module: str, label: str) -> None:
        self.module = module
        self.label = label
        self.lock = threading.RLock()
        self.session: Session | None = None
        self.pin_mac: bytes | None = None
        self.users = 0
        self.aes_mechanism: Mechanism | None = None  # set by the provider once checked

    def open(self, pin: Secret) -> Session:
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
        p = pkcs11()
        with _LIBS_LOCK:
            lib = _load_module(self.module)
        with translated(where):
            try:
                token = lib.get_token(token_label=self.label)
            except p.NoSuchToken as exc:
                raise KeyNotFoundError(f"no PKCS#11 token labelled {self.label!r} in {self.module!r}") from exc
            except p.MultipleTokensReturned as exc:
                raise ConfigurationError(f"more than one PKCS#11 token is labelled {self.label!r}") from exc
            session: Session
            try:
                # python-pkcs11 takes text: the one place the PIN is a str, and never bound to a name.
                session = token.open(rw=True, user_pin=str(pin.reveal(), "utf-8"))
            except p.UserAlreadyLoggedIn:
                # Someone else in this process (outside cmkfs) logged in: the login is shared.
                session = token.open(rw=True)
            except p.PKCS11Error as exc:
                if is_one_of(exc, PIN_REJECTED):
                    _REJECTED_PINS.add((self.module, self.label, mac))
                raise
        self.session, self.pin_mac = session, mac
        return session

    def drop(self) -> None:
        """Forget the session (closing it, which logs out, if it still works)."""
        session, self.session, self.aes_mechanism = self.session, None, None
        if session is not None:
            with contextlib.suppress(Exception):
                session.close()


def acquire(module: str, label: str) -> Token:
    """The process's :class:`Token` for ``label`` in ``module``, counting one more user."""
    with _LIBS_LOCK:
        token = _TOKENS.get((module, label))
        if token is None:
            token = _TOKENS[(module, label)] = Token(module, label)
        token.users += 1
        return token


def release(token: Token) -> None:
    """One user fewer; the last one closes the session."""
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
