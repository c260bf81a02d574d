"""python-pkcs11, imported on first use, and its errors in cmkfs terms: one table, one helper."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from types import ModuleType

from ...errors import (
    CMKError,
    ConfigurationError,
    IntegrityError,
    KeyNotFoundError,
    KeyRevokedError,
    VaultUnavailableError,
)

__all__ = [
    "pkcs11",
    "translate",
    "translated",
    "is_one_of",
    "ERRORS",
    "PIN_REJECTED",
    "SESSION_LOST",
    "BAD_WRAPPED_KEY",
]

INSTALL_HINT = "pip install 'cmkfs[hsm]'"

# Return values python-pkcs11 0.10 does not map to a class ("Unmapped error code 0x68").
CKR_ACTION_PROHIBITED = 0x1B
CKR_KEY_FUNCTION_NOT_PERMITTED = 0x68
_UNMAPPED = re.compile(r"Unmapped error code (0x[0-9a-fA-F]+)")

# Groups of python-pkcs11 exception classes, by name: the table below needs no import of the library.
PIN_REJECTED = frozenset({"PinIncorrect", "PinInvalid", "PinLenRange"})
SESSION_LOST = frozenset(
    {"SessionClosed", "SessionHandleInvalid", "UserNotLoggedIn", "DeviceRemoved", "TokenNotPresent"}
)
# When unwrapping, these say the wrapped key (read from storage) is at fault.
BAD_WRAPPED_KEY = frozenset(
    {"WrappedKeyInvalid", "WrappedKeyLenRange", "EncryptedDataInvalid", "EncryptedDataLenRange", "DataLenRange"}
)

_Rule = tuple[type[CMKError], str]  # the error to raise; its message, formatted with {where} and {name}

_REVOKED: _Rule = (KeyRevokedError, "the HSM refuses to use {where}: key disabled or not permitted")
_CANNOT: _Rule = (ConfigurationError, "the token cannot do this with {where} ({name})")
#: Anything not in the table (device errors, closed sessions, a token gone from its slot, ...) is transient.
UNAVAILABLE: _Rule = (VaultUnavailableError, "the HSM holding {where} is unavailable ({name})")

#: python-pkcs11 exception class name, or a CKR_ value it leaves unmapped -> what cmkfs raises.
ERRORS: dict[str | int, _Rule] = {
    # The HSM refuses the key (its WRAP/UNWRAP were cleared) or the user PIN is locked.
    CKR_ACTION_PROHIBITED: _REVOKED,
    CKR_KEY_FUNCTION_NOT_PERMITTED: _REVOKED,
    "PinLocked": _REVOKED,
    **dict.fromkeys(PIN_REJECTED, (ConfigurationError, "the PIN for {where} was rejected by the token ({name})")),
    "PinExpired": (ConfigurationError, "the user PIN of {where} must be set or changed first ({name})"),
    "UserPinNotInitialized": (ConfigurationError, "the user PIN of {where} must be set or changed first ({name})"),
    "KeyHandleInvalid": (KeyNotFoundError, "{where} vanished from the token"),
    "ObjectHandleInvalid": (KeyNotFoundError, "{where} vanished from the token"),
    "WrappingKeyHandleInvalid": (KeyNotFoundError, "{where} vanished from the token"),
    "UnwrappingKeyHandleInvalid": (KeyNotFoundError, "{where} vanished from the token"),
    "MechanismInvalid": _CANNOT,
    "MechanismParamInvalid": _CANNOT,
    "FunctionNotSupported": _CANNOT,
    "KeyTypeInconsistent": _CANNOT,
    "WrappingKeyTypeInconsistent": _CANNOT,
    "UnwrappingKeyTypeInconsistent": _CANNOT,
    "WrappingKeySizeRange": _CANNOT,
    "UnwrappingKeySizeRange": _CANNOT,
    "KeySizeRange": _CANNOT,
    "TemplateInconsistent": _CANNOT,
    "TemplateIncomplete": _CANNOT,
    "AttributeValueInvalid": _CANNOT,
    "AttributeTypeInvalid": _CANNOT,
    "AttributeReadOnly": _CANNOT,
    "ArgumentsBad": _CANNOT,
    "KeyUnextractable": _CANNOT,
    "KeyNotWrappable": _CANNOT,
    "TokenWriteProtected": _CANNOT,
}


def pkcs11() -> ModuleType:
    """The python-pkcs11 package (an optional extra)."""
    try:
        import pkcs11
    except ImportError as exc:
        raise ConfigurationError(f"pkcs11: key URIs need python-pkcs11: {INSTALL_HINT}") from exc
    return pkcs11


def _names(exc: BaseException) -> list[str]:
    return [cls.__name__ for cls in type(exc).__mro__]


def is_one_of(exc: BaseException, names: frozenset[str]) -> bool:
    """Whether ``exc`` is an instance of a python-pkcs11 class named in ``names``."""
    return not names.isdisjoint(_names(exc))


def translate(exc: BaseException, where: str, *, unwrapping: bool = False) -> CMKError:
    """The cmkfs error for a python-pkcs11 error (the caller raises it ``from exc``)."""
    if unwrapping and is_one_of(exc, BAD_WRAPPED_KEY):
        return IntegrityError()
    match = _UNMAPPED.search(str(exc))
    keys: list[str | int] = [int(match.group(1), 16)] if match else []
    keys += _names(exc)
    kind, message = next((ERRORS[key] for key in keys if key in ERRORS), UNAVAILABLE)
    return kind(message.format(where=where, name=type(exc).__name__))


@contextlib.contextmanager
def translated(where: str) -> Iterator[None]:
    """Raise python-pkcs11 errors of the ``with`` block as cmkfs errors, ``from`` the original."""
    error_class = pkcs11().PKCS11Error
    try:
        yield
    except error_class as exc:
        raise translate(exc, where) from exc
