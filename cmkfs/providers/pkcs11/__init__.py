"""PKCS#11 HSMs as key-encryption-key stores: ``pkcs11:token=LABEL;object=KEYLABEL`` (RFC 7512).

``uri`` parses key URIs, ``sessions`` keeps one logged-in session per token per
process, ``errors`` translates python-pkcs11's errors, ``provider`` wraps and
unwraps.  docs/HSM.md is the user's guide.
"""

from .provider import PKCS11Provider
from .sessions import DEFAULT_MODULE, MODULE_ENV, PIN_ENV, close_sessions
from .uri import PKCS11URI, parse_pkcs11_uri

__all__ = [
    "PKCS11Provider",
    "PKCS11URI",
    "parse_pkcs11_uri",
    "close_sessions",
    "MODULE_ENV",
    "PIN_ENV",
    "DEFAULT_MODULE",
]
