"""PKCS#11 key URIs (RFC 7512) and key versions as ``CKA_ID`` values.

    pkcs11:token=LABEL;object=KEYLABEL[;type=secret-key|private]
          [?module-path=/path/lib.so][&pin-source=file:/path][&pin-value=PIN][&version=N]

Values are percent-encoded UTF-8.  The canonical form (what key blocks and key
caches name) keeps only the path attributes.  docs/HSM.md has the full rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import quote, unquote_to_bytes

from ...errors import ConfigurationError

__all__ = [
    "PKCS11URI",
    "parse_pkcs11_uri",
    "quote_attribute",
    "KIND_OF_TYPE",
    "version_id",
    "version_of",
    "version_rank",
]

MAX_URI_SIZE = 2048  # bounded before parsing

_PATH_ATTRS = ("token", "object", "type")
_QUERY_ATTRS = ("module-path", "pin-source", "pin-value", "version")
#: ``type=`` in a URI -> the kind of key cmkfs looks for ("aes" or "rsa").
KIND_OF_TYPE = {"secret-key": "aes", "private": "rsa", "public": "rsa"}
# RFC 7512 pk11-path-res-avail minus "=": left unencoded in the canonical form.
_SAFE = ":[]@!$'()*+,"
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


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
        text = f"pkcs11:token={quote_attribute(self.token)};object={quote_attribute(self.object)}"
        if self.type:
            text += f";type={self.type}"
        return text

    @property
    def has_options(self) -> bool:
        return bool(self.module_path or self.pin_source or self.pin_value)


def quote_attribute(value: str) -> str:
    """``value`` percent-encoded as an RFC 7512 path attribute value."""
    return quote(value, safe=_SAFE)


def _unquote(value: str, what: str) -> str:
    if _BAD_PERCENT.search(value):
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
    path, _, query = uri[len("pkcs11:") :].partition("?")
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
        attrs[name] = _unquote(value, name)
    options: dict[str, str] = {}
    for item in query.split("&") if query else ():
        name, eq, value = item.partition("=")
        if not eq or name not in _QUERY_ATTRS:
            raise ConfigurationError(
                f"unsupported pkcs11: URI query attribute {name!r} (use module-path, pin-source, pin-value, version)"
            )
        if name in options:
            raise ConfigurationError(f"the pkcs11: URI repeats the {name!r} attribute")
        options[name] = _unquote(value, name)
    if not attrs.get("token") or not attrs.get("object"):
        raise ConfigurationError("a PKCS#11 key URI names a token and a key: pkcs11:token=LABEL;object=KEYLABEL")
    kind = attrs.get("type")
    if kind is not None and kind not in KIND_OF_TYPE:
        raise ConfigurationError("type= in a pkcs11: key URI is secret-key (AES) or private (RSA)")
    if options.get("pin-source") and options.get("pin-value"):
        raise ConfigurationError("a pkcs11: URI gives pin-source or pin-value, not both")
    version = options.get("version")
    if version is not None:
        version_id(version)
    return PKCS11URI(
        token=attrs["token"],
        object=attrs["object"],
        type=kind,
        version=version,
        module_path=options.get("module-path") or None,
        pin_source=options.get("pin-source") or None,
        pin_value=options.get("pin-value") or None,
    )


# Versions: every version of a key is its own object, with CKA_ID = the version in ASCII decimal.


def version_of(cka_id: bytes) -> str:
    """The version a ``CKA_ID`` names: its decimal number, else ``"x" + hex`` (a key made by another tool)."""
    text = bytes(cka_id)
    if text.isdigit() and text.isascii() and (text == b"0" or not text.startswith(b"0")):
        return text.decode("ascii")
    return "x" + text.hex()


def version_id(version: str) -> bytes:
    """The ``CKA_ID`` of ``version`` (the inverse of :func:`version_of`)."""
    if version.isdigit() and version.isascii():
        return version.encode("ascii")
    if version.startswith("x"):
        try:
            return bytes.fromhex(version[1:])
        except ValueError:
            pass
    raise ConfigurationError("a PKCS#11 key version is a decimal number (or x followed by the hex CKA_ID)")


def version_rank(version: str) -> tuple[int, int, str]:
    """Sort key: numbered versions in numeric order, above every ``x...`` version."""
    return (1, int(version), "") if version.isdigit() else (0, 0, version)
