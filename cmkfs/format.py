"""Format v1: header encoding, constants and size arithmetic.  Pure, no I/O.

Wire format (all integers big-endian; docs/FORMAT.md is the normative text)::

    file        = header || segment_0 || ... || segment_{n-1}

    header      = params (56) || commitment (32) || key_block_len (u32)
                  || key_block || checksum (16)

    params      = magic "\\x89CMK\\r\\n\\x1a\\n" (8) || version=1 (u8)
                  || suite=1 (u8) || content_class (u8) || flags=0 (u8)
                  || segment_size (u32) || salt (32) || nonce_prefix (7)
                  || reserved=0 (u8)

    key_block   = wrap_alg (u8) || uri_len (u16) || key_uri (ASCII)
                  || version_len (u16) || key_version (ASCII)
                  || wrapped_len (u16) || wrapped_dek

    key_uri     = "local://" NAME                              wrap_alg A256GCM
                | "https://" HOST [":" PORT] "/keys/" NAME     wrap_alg RSA_OAEP_256
                | "pkcs11:token=" V ";object=" V [";type=" T]  wrap_alg A256KWP | RSA_OAEP_SHA1
                  (no query, fragment or version: one spelling per key; docs/FORMAT.md 3.5)

    checksum    = SHA-256(header without checksum)[:16]   (corruption only)

    okm         = HKDF-SHA256(ikm=DEK, salt=salt,
                              info="cmkfs/v1 file key" || params, L=64)
    file_key    = okm[0:32]          commitment = okm[32:64]

    segment_i   = AES-256-GCM(file_key, nonce_i, plaintext_i, aad="")
    nonce_i     = nonce_prefix (7) || i (u32) || last (u8: 1 on the final segment)

Segments authenticate ``params`` through the key derivation and the DEK
through ``commitment``; the key block is *not* bound, so key rotation can
replace it (re-wrap the same DEK) without touching the payload.  A tampered
key block unwraps to a different DEK (or fails), and the commitment check
catches it before any plaintext is produced.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import ipaddress
import re
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import FormatError, IntegrityError

if TYPE_CHECKING:
    from .secret import BytesLike

__all__ = [
    "MAGIC",
    "VERSION",
    "SUITE_AES256GCM_HKDF_SHA256",
    "TAG_SIZE",
    "DEK_SIZE",
    "SALT_SIZE",
    "NONCE_PREFIX_SIZE",
    "PARAMS_SIZE",
    "COMMITMENT_SIZE",
    "CHECKSUM_SIZE",
    "MIN_HEADER_SIZE",
    "MAX_HEADER_SIZE",
    "MIN_SEGMENT_SIZE",
    "MAX_SEGMENT_SIZE",
    "DEFAULT_SEGMENT_SIZE",
    "MAX_SEGMENTS",
    "ContentClass",
    "WrapAlgorithm",
    "FileParams",
    "KeyBlock",
    "Header",
    "KEY_URI_WRAP_ALGORITHMS",
    "check_key_names",
    "header_length_from_prefix",
    "plaintext_size",
    "ciphertext_size",
    "segment_count",
    "segment_span",
    "looks_like_cmkfs",
]

MAGIC = b"\x89CMK\r\n\x1a\n"  # PNG-style: non-ASCII first byte, CRLF and ^Z catch text-mode mangling
VERSION = 1
SUITE_AES256GCM_HKDF_SHA256 = 1

TAG_SIZE = 16
DEK_SIZE = 32
SALT_SIZE = 32
NONCE_PREFIX_SIZE = 7
PARAMS_SIZE = 56
COMMITMENT_SIZE = 32
CHECKSUM_SIZE = 16
KEY_BLOCK_LEN_SIZE = 4
# Everything up to and including key_block_len: enough to learn the header length.
HEADER_PREFIX_SIZE = PARAMS_SIZE + COMMITMENT_SIZE + KEY_BLOCK_LEN_SIZE
MIN_HEADER_SIZE = HEADER_PREFIX_SIZE + 7 + CHECKSUM_SIZE
MAX_KEY_BLOCK_SIZE = 8192  # an RSA-8192 wrapped key plus a long URI still fits; bounded before parsing
MAX_HEADER_SIZE = HEADER_PREFIX_SIZE + MAX_KEY_BLOCK_SIZE + CHECKSUM_SIZE
MAX_KEY_URI_SIZE = 2048
MAX_KEY_VERSION_SIZE = 256
MAX_WRAPPED_DEK_SIZE = 4096

MIN_SEGMENT_SIZE = 4096
MAX_SEGMENT_SIZE = 64 * 1024 * 1024
# Chosen by benchmarks/bench_engine.py (see benchmarks/README.md): at 256 KiB
# the engine streams as fast as at 64 KiB and faster than at 1-4 MiB (1 MiB
# writes ~1.0x raw AES-GCM, reads 0.85-0.9x, two-thread reads ~1.3x), while a
# random 4 KiB read (a Parquet page or footer probe) fetches and opens
# 256 KiB (~130 us) instead of 1 MiB (~450 us) or 4 MiB (~1.7 ms).
DEFAULT_SEGMENT_SIZE = 256 * 1024
MAX_SEGMENTS = 2**32  # the nonce holds a 32-bit segment index; never wraps

_PARAMS = struct.Struct(">8sBBBBI32s7sB")
assert _PARAMS.size == PARAMS_SIZE
_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")


class ContentClass(enum.IntEnum):
    """What a file holds, recorded so later policies can tell content apart."""

    OTHER = 0
    PARQUET = 1
    VERTIPAQ = 2
    IMAGE = 3
    CSV = 4
    JSON = 5


class WrapAlgorithm(enum.IntEnum):
    """How the key block's wrapped DEK was produced by its key provider."""

    A256GCM = 1  # embedded vault: nonce(12) || AES-256-GCM(kek, dek, aad) || tag(16)
    RSA_OAEP_256 = 2  # Azure Key Vault (RSA-OAEP with SHA-256 and MGF1-SHA-256)
    A256KWP = 3  # PKCS#11 HSM: AES key wrap with padding, RFC 5649
    RSA_OAEP_SHA1 = 4  # PKCS#11 HSM with RSA keys (SoftHSM only offers SHA-1 OAEP)


@dataclass(frozen=True)
class FileParams:
    """The per-file parameters that every segment authenticates."""

    segment_size: int
    salt: bytes
    nonce_prefix: bytes
    content_class: ContentClass = ContentClass.OTHER
    suite: int = SUITE_AES256GCM_HKDF_SHA256
    version: int = VERSION

    def __post_init__(self) -> None:
        check_segment_size(self.segment_size)
        if len(self.salt) != SALT_SIZE or len(self.nonce_prefix) != NONCE_PREFIX_SIZE:
            raise ValueError("salt must be 32 bytes and nonce_prefix 7 bytes")

    def encode(self) -> bytes:
        return _PARAMS.pack(
            MAGIC,
            self.version,
            self.suite,
            int(self.content_class),
            0,
            self.segment_size,
            self.salt,
            self.nonce_prefix,
            0,
        )

    @classmethod
    def decode(cls, data: BytesLike) -> FileParams:
        if len(data) < PARAMS_SIZE or bytes(data[:8]) != MAGIC:
            raise FormatError("not a cmkfs encrypted file")
        magic, version, suite, content, flags, seg, salt, prefix, reserved = _PARAMS.unpack_from(data)
        if version != VERSION:
            raise FormatError(f"unsupported cmkfs format version {version} (this release reads {VERSION})")
        if suite != SUITE_AES256GCM_HKDF_SHA256:
            raise FormatError(f"unsupported cipher suite {suite}")
        if flags != 0 or reserved != 0:
            raise FormatError("reserved header bits are set")
        if not MIN_SEGMENT_SIZE <= seg <= MAX_SEGMENT_SIZE:
            raise FormatError("segment size out of range")
        try:
            content_class = ContentClass(content)
        except ValueError:
            # Unknown classes are informational only: read them as OTHER would
            # lose the value on rewrap, so refuse rather than silently change it.
            raise FormatError(f"unknown content class {content}") from None
        return cls(seg, bytes(salt), bytes(prefix), content_class, suite, version)


@dataclass(frozen=True)
class KeyBlock:
    """The replaceable part of the header: which key wrapped the DEK, and how.

    ``key_uri`` names the key without a version (``local://sales``,
    ``https://v.vault.azure.net/keys/sales``, ``pkcs11:token=t;object=o``);
    ``key_version`` names the version that wrapped this DEK.  Both follow
    docs/FORMAT.md 3.5 (:func:`check_key_names`): :meth:`decode` refuses
    anything else, and :meth:`encode` will not write it.
    """

    wrap_alg: WrapAlgorithm
    key_uri: str
    key_version: str
    wrapped_dek: bytes

    def __repr__(self) -> str:
        # The wrapped DEK is not secret, but it is noise in logs.
        return (
            f"KeyBlock(wrap_alg={self.wrap_alg.name}, key_uri={self.key_uri!r}, "
            f"key_version={self.key_version!r}, wrapped_dek=<{len(self.wrapped_dek)} bytes>)"
        )

    @property
    def versioned_uri(self) -> str:
        """The key URI with its version, as a provider would spell it."""
        if self.key_uri.startswith("https://"):
            return f"{self.key_uri}/{self.key_version}"
        sep = "&" if "?" in self.key_uri else "?"
        return f"{self.key_uri}{sep}version={self.key_version}"

    def encode(self) -> bytes:
        return self._encoded

    @functools.cached_property
    def _encoded(self) -> bytes:
        # Once per block: one data key (and so one block) serves many files,
        # and checking the names costs more than sealing a small file.
        uri = self.key_uri.encode("utf-8")
        ver = self.key_version.encode("utf-8")
        if len(uri) > MAX_KEY_URI_SIZE or len(ver) > MAX_KEY_VERSION_SIZE:
            raise ValueError("key URI or version too long")
        if len(self.wrapped_dek) > MAX_WRAPPED_DEK_SIZE:
            raise ValueError("wrapped key too long")
        # A writer must not produce a file every reader refuses (FormatError is a ValueError).
        check_key_names(self.wrap_alg, self.key_uri, self.key_version)
        return b"".join(
            (
                bytes([int(self.wrap_alg)]),
                _U16.pack(len(uri)),
                uri,
                _U16.pack(len(ver)),
                ver,
                _U16.pack(len(self.wrapped_dek)),
                bytes(self.wrapped_dek),
            )
        )

    @classmethod
    def decode(cls, data: BytesLike) -> KeyBlock:
        view = memoryview(data)
        try:
            alg = WrapAlgorithm(view[0])
        except (ValueError, IndexError):
            raise FormatError("unknown key wrapping algorithm") from None
        pos = 1
        fields = []
        for limit in (MAX_KEY_URI_SIZE, MAX_KEY_VERSION_SIZE, MAX_WRAPPED_DEK_SIZE):
            if pos + 2 > len(view):
                raise FormatError("key block is truncated")
            (length,) = _U16.unpack_from(view, pos)
            pos += 2
            if length > limit or pos + length > len(view):
                raise FormatError("key block field length out of range")
            fields.append(bytes(view[pos : pos + length]))
            pos += length
        if pos != len(view):
            raise FormatError("key block has trailing bytes")
        try:
            uri, ver = fields[0].decode("utf-8"), fields[1].decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError("key URI or key version is not UTF-8") from None
        # Before any parser, provider, cache, log line or terminal sees them.
        check_key_names(alg, uri, ver)
        return cls(alg, uri, ver, fields[2])


@dataclass(frozen=True)
class Header:
    """A decoded header.  ``length`` is where the first segment starts."""

    params: FileParams
    commitment: bytes
    key_block: KeyBlock

    def encode(self) -> bytes:
        if len(self.commitment) != COMMITMENT_SIZE:
            raise ValueError("commitment must be 32 bytes")
        block = self.key_block.encode()
        body = b"".join((self.params.encode(), self.commitment, _U32.pack(len(block)), block))
        return body + hashlib.sha256(body).digest()[:CHECKSUM_SIZE]

    @property
    def length(self) -> int:
        return len(self.encode())

    def with_key_block(self, key_block: KeyBlock) -> Header:
        """The same file under a re-wrapped DEK: what key rotation writes."""
        return Header(self.params, self.commitment, key_block)

    @classmethod
    def decode(cls, data: BytesLike) -> Header:
        """Decode a complete header (exactly ``header_length_from_prefix`` bytes)."""
        view = memoryview(data)
        params, length = _params_and_length(view)
        if len(view) != length:
            raise FormatError("header is truncated")
        body = view[: length - CHECKSUM_SIZE]
        if hashlib.sha256(body).digest()[:CHECKSUM_SIZE] != bytes(view[length - CHECKSUM_SIZE :]):
            # A corrupted header is an integrity failure, reported before any vault call.
            raise IntegrityError()
        commitment = bytes(view[PARAMS_SIZE : PARAMS_SIZE + COMMITMENT_SIZE])
        key_block = KeyBlock.decode(view[HEADER_PREFIX_SIZE : length - CHECKSUM_SIZE])
        return cls(params, commitment, key_block)


# -- key URIs and versions (docs/FORMAT.md 3.5) -------------------------------------------

#: Key URI scheme -> the wrap algorithms its providers write.  Any other pair is refused.
KEY_URI_WRAP_ALGORITHMS: dict[str, frozenset[WrapAlgorithm]] = {
    "local://": frozenset({WrapAlgorithm.A256GCM}),
    "https://": frozenset({WrapAlgorithm.RSA_OAEP_256}),
    "pkcs11:": frozenset({WrapAlgorithm.A256KWP, WrapAlgorithm.RSA_OAEP_SHA1}),
}
SHOWN_NAME_SIZE = 70  # characters of a refused name quoted (escaped) in a message

# Printable ASCII without space: every allowed spelling fits, and nothing in it can steer a terminal.
_PRINTABLE = re.compile(r"[\x21-\x7e]+")
_LOCAL_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")  # no leading dot: never ".", ".."
_LOCAL_VERSION = re.compile(r"[1-9][0-9]{0,19}")  # one spelling per version: no leading zero
_AZURE_URI = re.compile(r"https://([^/]*)/keys/(.*)")
_AZURE_NAME = re.compile(r"[0-9A-Za-z-]{1,127}")
_AZURE_VERSION = re.compile(r"[0-9A-Za-z]{1,64}")
_DNS_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_IPV6_CHARS = re.compile(r"[0-9A-Fa-f:.]+")  # no "%": zone identifiers name a local interface
_PORT = re.compile(r"[1-9][0-9]{0,4}")
_PKCS11_URI = re.compile(r"pkcs11:token=([^;]*);object=([^;]*)(?:;type=(secret-key|private|public))?")
# RFC 7512 pk11-pchar minus "=", as cmkfs writes it: percent-encoding in upper case, only where needed.
_PKCS11_PLAIN = r"A-Za-z0-9._~:\[\]@!$'()*+,-"
_PKCS11_VALUE = re.compile(rf"(?:[{_PKCS11_PLAIN}]|%[0-9A-F]{{2}})+")
_PKCS11_PLAIN_CHAR = re.compile(rf"[{_PKCS11_PLAIN}]")
_PKCS11_VERSION = re.compile(r"0|[1-9][0-9]*|x(?:[0-9a-f]{2})*")  # CKA_ID: decimal, else hex
_PKCS11_TYPE_ALGS = {
    "secret-key": frozenset({WrapAlgorithm.A256KWP}),
    "private": frozenset({WrapAlgorithm.RSA_OAEP_SHA1}),
    "public": frozenset({WrapAlgorithm.RSA_OAEP_SHA1}),
}
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def check_key_names(wrap_alg: WrapAlgorithm | int, key_uri: str, key_version: str) -> None:
    """Refuse, with a :class:`FormatError`, a key URI or key version outside the
    grammar of docs/FORMAT.md 3.5, or a (scheme, wrap algorithm) pair outside
    its table.  Messages quote the names escaped and bounded."""
    alg = WrapAlgorithm(wrap_alg)
    if not _PRINTABLE.fullmatch(key_uri):
        raise FormatError(f"key URI {_shown(key_uri)} is empty or not printable ASCII")
    if not _PRINTABLE.fullmatch(key_version):
        raise FormatError(f"key version {_shown(key_version)} is empty or not printable ASCII")
    scheme = next((s for s in KEY_URI_WRAP_ALGORITHMS if key_uri.startswith(s)), None)
    if scheme is None:
        raise FormatError(f"key URI {_shown(key_uri)} has no known scheme (local://, https://, pkcs11:)")
    if "?" in key_uri or "#" in key_uri:
        # A query could name a version, a library or a PIN file: a header names the key alone.
        raise FormatError(f"key URI {_shown(key_uri)} has a query or fragment; a header names its key without one")
    allowed = _SCHEME_CHECKS[scheme](key_uri, key_version)
    if alg not in allowed:
        raise FormatError(f"wrap algorithm {alg.name} is not allowed with key URI {_shown(key_uri)}")


def _shown(text: str) -> str:
    shown = ascii(text)  # escapes control, non-ASCII and bidi characters
    return shown if len(shown) <= SHOWN_NAME_SIZE else shown[: SHOWN_NAME_SIZE - 3] + "..."


def _check_local(key_uri: str, key_version: str) -> frozenset[WrapAlgorithm]:
    if not _LOCAL_NAME.fullmatch(key_uri[len("local://") :]):
        raise FormatError(f"key URI {_shown(key_uri)} is not local://NAME (1-64 of A-Z a-z 0-9 . _ -, no leading dot)")
    if not _LOCAL_VERSION.fullmatch(key_version):
        raise FormatError(f"key version {_shown(key_version)} is not a local:// version (digits, no leading zero)")
    return KEY_URI_WRAP_ALGORITHMS["local://"]


def _check_https(key_uri: str, key_version: str) -> frozenset[WrapAlgorithm]:
    match = _AZURE_URI.fullmatch(key_uri)
    if match is None or not _valid_authority(match[1]):
        raise FormatError(f"key URI {_shown(key_uri)} is not https://HOST[:PORT]/keys/NAME")
    if "/" in match[2]:
        raise FormatError(f"key URI {_shown(key_uri)} names a key version; a header keeps it in key_version")
    if not _AZURE_NAME.fullmatch(match[2]):
        raise FormatError(f"key URI {_shown(key_uri)} has a key name outside 1-127 of A-Z a-z 0-9 -")
    if not _AZURE_VERSION.fullmatch(key_version):
        raise FormatError(f"key version {_shown(key_version)} is not an https:// key version (1-64 letters, digits)")
    return KEY_URI_WRAP_ALGORITHMS["https://"]


def _valid_authority(authority: str) -> bool:
    """HOST [":" PORT]: a DNS name or IPv4 address, or an IPv6 literal in brackets."""
    if authority.startswith("["):
        host, bracket, rest = authority[1:].partition("]")
        if not bracket or not _IPV6_CHARS.fullmatch(host):
            return False
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
    else:
        host, _, _ = authority.partition(":")
        rest = authority[len(host) :]
        if len(host) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in host.split(".")):
            return False
    if not rest:
        return True
    return rest[0] == ":" and _PORT.fullmatch(rest[1:]) is not None and int(rest[1:]) <= 65535


def _check_pkcs11(key_uri: str, key_version: str) -> frozenset[WrapAlgorithm]:
    match = _PKCS11_URI.fullmatch(key_uri)
    if match is None:
        raise FormatError(f"key URI {_shown(key_uri)} is not pkcs11:token=T;object=O[;type=secret-key|private|public]")
    if not (_canonical_label(match[1]) and _canonical_label(match[2])):
        raise FormatError(
            f"key URI {_shown(key_uri)} has a label that is not canonical percent-encoded UTF-8 "
            "without control characters"
        )
    if not _PKCS11_VERSION.fullmatch(key_version):
        raise FormatError(f"key version {_shown(key_version)} is not a pkcs11: version (decimal, or x and hex)")
    return _PKCS11_TYPE_ALGS[match[3]] if match[3] else KEY_URI_WRAP_ALGORITHMS["pkcs11:"]


def _canonical_label(value: str) -> bool:
    """A non-empty label, percent-encoded exactly where cmkfs's encoder would, decoding to
    UTF-8 without control characters: so each label has one spelling."""
    if not _PKCS11_VALUE.fullmatch(value):
        return False
    raw = bytearray()
    pos = 0
    while pos < len(value):
        if value[pos] == "%":
            byte = int(value[pos + 1 : pos + 3], 16)
            if _PKCS11_PLAIN_CHAR.fullmatch(chr(byte)):
                return False  # encoded although it need not be: a second spelling
            raw.append(byte)
            pos += 3
        else:
            raw += value[pos].encode("ascii")
            pos += 1
    try:
        label = raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return _CONTROL.search(label) is None


_SCHEME_CHECKS = {"local://": _check_local, "https://": _check_https, "pkcs11:": _check_pkcs11}


def check_segment_size(segment_size: int) -> None:
    if not isinstance(segment_size, int) or not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
        raise ValueError(f"segment size must be an integer between {MIN_SEGMENT_SIZE} and {MAX_SEGMENT_SIZE}")


def looks_like_cmkfs(prefix: BytesLike) -> bool:
    """True if ``prefix`` starts with the cmkfs magic (a hint, not a proof)."""
    return bytes(prefix[: len(MAGIC)]) == MAGIC


def header_length_from_prefix(prefix: BytesLike) -> int:
    """The total header length, from the first ``HEADER_PREFIX_SIZE`` bytes.

    Validates the magic, version and the key block bound before anything is
    read further, so a hostile length can never make a reader allocate more
    than ``MAX_HEADER_SIZE``.
    """
    return _params_and_length(prefix)[1]


def _params_and_length(prefix: BytesLike) -> tuple[FileParams, int]:
    if len(prefix) < HEADER_PREFIX_SIZE:
        head = bytes(prefix[: len(MAGIC)])
        if head and MAGIC.startswith(head):
            raise IntegrityError()  # a cmkfs file cut short inside its header
        raise FormatError("not a cmkfs encrypted file")
    params = FileParams.decode(prefix[:PARAMS_SIZE])
    (block_len,) = _U32.unpack_from(prefix, PARAMS_SIZE + COMMITMENT_SIZE)
    if not 7 <= block_len <= MAX_KEY_BLOCK_SIZE:
        raise FormatError("key block length out of range")
    return params, HEADER_PREFIX_SIZE + block_len + CHECKSUM_SIZE


def segment_count(payload_size: int, segment_size: int) -> int:
    """Number of segments in a payload of ``payload_size`` ciphertext bytes."""
    if payload_size < TAG_SIZE:
        raise IntegrityError()
    return -(-payload_size // (segment_size + TAG_SIZE))


def plaintext_size(ciphertext_size: int, header_length: int, segment_size: int) -> int:
    """Plaintext size of a file, from its ciphertext size and header alone.

    Raises :class:`IntegrityError` for a size no writer could produce (e.g. a
    final segment shorter than a tag, or an empty non-first final segment).
    """
    payload = ciphertext_size - header_length
    count = segment_count(payload, segment_size)
    last_ct = payload - (count - 1) * (segment_size + TAG_SIZE)
    if count > 1 and last_ct <= TAG_SIZE:
        raise IntegrityError()  # only an empty file may have an empty final segment
    if count > MAX_SEGMENTS:
        raise IntegrityError()
    return payload - count * TAG_SIZE


def ciphertext_size(plain_size: int, header_length: int, segment_size: int) -> int:
    """Ciphertext size of a ``plain_size`` byte file (the inverse of plaintext_size)."""
    count = max(1, -(-plain_size // segment_size))
    return header_length + plain_size + count * TAG_SIZE


def segment_span(index: int, header_length: int, segment_size: int) -> tuple[int, int]:
    """Ciphertext ``(start, end)`` of a full segment ``index`` (clip the last)."""
    start = header_length + index * (segment_size + TAG_SIZE)
    return start, start + segment_size + TAG_SIZE
