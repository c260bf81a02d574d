#!/usr/bin/env python3
"""Independent decryptor for the cmkfs v1 file format, run over the test vectors.

This script is written from ``docs/FORMAT.md`` alone and deliberately shares
no code with the ``cmkfs`` package: it re-implements the header parser, the
bounds checks (in the order of FORMAT.md section 4), the key URI and key
version rules of section 3.5, the DEK unwrap, the HKDF
key derivation and key commitment, the segment nonces, the last-segment rule
and the size arithmetic of section 8.  If it and the library agree on every
vector, the specification is sufficient to write a decryptor.

Dependencies: the standard library (``ipaddress`` for IPv6 literals) and
``cryptography``, of which only
``AESGCM`` (segments and the A256GCM wrap), ``HKDF`` with SHA-256,
``aes_key_unwrap_with_padding`` (RFC 5649, the A256KWP wrap) and the RSA
private key's OAEP decryption (RSA_OAEP_256 with SHA-256, RSA_OAEP_SHA1 with
SHA-1; MGF1 with the same hash, empty label) are used.  A vector's ``kek`` is
hex for a symmetric KEK and PKCS#8 PEM text for an RSA key; a KEK of the wrong
kind for the file's ``wrap_alg`` is reported as failed ("unsupported"), never
silently passed.

Usage::

    python scripts/verify_vectors.py [--vectors PATH] [--vectors PATH ...]

PATH is a vectors JSON file or a directory (every ``*.json`` in it).  The
default is ``tests/vectors/v1.json`` next to this script.  One line is printed
per vector, then ``N passed, M failed``; the exit status is 1 if any vector
disagrees with its expected outcome (2 on a usage error).

The diagnostic text printed for a refused vector names the check that failed.
That is for whoever reads this verifier's output; FORMAT.md asks a *reader*
not to say which check failed to its users.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import ipaddress
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap_with_padding,
)

# --------------------------------------------------------------------------
# Constants from FORMAT.md
# --------------------------------------------------------------------------

MAGIC = b"\x89CMK\r\n\x1a\n"  # 3.1
VERSION = 1
SUITE = 1
PARAMS_LEN = 56  # bytes 0..55
PREFIX_LEN = 92  # bytes 0..91: enough to learn H
CHECKSUM_LEN = 16
TAG_LEN = 16
FIRST_READ = 4096  # 4 step 1
MIN_SEGMENT_SIZE = 4096
MAX_SEGMENT_SIZE = 67108864
MIN_KEY_BLOCK = 7
MAX_KEY_BLOCK = 8192
MAX_URI_LEN = 2048
MAX_VERSION_LEN = 256
MAX_WRAPPED_LEN = 4096
MAX_SEGMENTS = 2**32
DEK_LEN = 32

CONTENT_CLASSES = {0: "OTHER", 1: "PARQUET", 2: "VERTIPAQ", 3: "IMAGE", 4: "CSV", 5: "JSON"}
WRAP_ALGS = {1: "A256GCM", 2: "RSA_OAEP_256", 3: "A256KWP", 4: "RSA_OAEP_SHA1"}

WRAP_AAD_LABEL = b"cmkfs/v1 wrap"  # 13 bytes, 3.4
HKDF_INFO_LABEL = b"cmkfs/v1 file key"  # 17 bytes, 5
A256GCM_WRAP_NONCE = 12
A256GCM_WRAPPED_LEN = 12 + DEK_LEN + 16  # 60
A256KWP_WRAPPED_LEN = 40

assert len(MAGIC) == 8 and len(WRAP_AAD_LABEL) == 13 and len(HKDF_INFO_LABEL) == 17


# --------------------------------------------------------------------------
# Error categories (FORMAT.md section 1)
# --------------------------------------------------------------------------


class VerifierError(Exception):
    category = "error"


class FormatError(VerifierError):
    """Not a cmkfs v1 file, or a parameter this reader does not support."""

    category = "format"


class IntegrityError(VerifierError):
    """A cmkfs file that is damaged, truncated, extended, tampered with or
    under a different key."""

    category = "integrity"


class UnsupportedError(VerifierError):
    """Well-formed, but needs something this verifier cannot do (an RSA
    unwrap without an RSA key, an AES unwrap without a 32-byte KEK).  Never
    matches an expected outcome."""

    category = "unsupported"


# --------------------------------------------------------------------------
# The decryptor
# --------------------------------------------------------------------------


@dataclass
class Header:
    version: int
    suite: int
    content_class: int
    flags: int
    segment_size: int
    salt: bytes
    nonce_prefix: bytes
    reserved: int
    params: bytes
    commitment: bytes
    key_block_len: int
    header_len: int
    wrap_alg: int = 0
    key_uri: str = ""
    key_version: str = ""
    wrapped_dek: bytes = b""


@dataclass
class Decrypted:
    header: Header
    dek: bytes
    file_key: bytes
    n_segments: int
    plaintext: bytes


def _u16(b: bytes, off: int) -> int:
    return int.from_bytes(b[off : off + 2], "big")


def _u32(b: bytes, off: int) -> int:
    return int.from_bytes(b[off : off + 4], "big")


def parse_header(data: bytes) -> Header:
    """Section 4, steps 1 to 7, in the prescribed order."""
    c = len(data)

    # Step 1: prefix available.  Read min(C, 4096) bytes.
    first = data[: min(c, FIRST_READ)]
    if len(first) < PREFIX_LEN:
        if (len(first) > 0 and MAGIC.startswith(first)) or first.startswith(MAGIC):
            raise IntegrityError("step 1: file is a cmkfs prefix cut short (< 92 bytes)")
        raise FormatError("step 1: fewer than 92 bytes and not a cmkfs prefix")

    # Step 2: magic.
    if first[0:8] != MAGIC:
        raise FormatError("step 2: bad magic")

    # Step 3: version and parameters.
    version, suite, content_class, flags = first[8], first[9], first[10], first[11]
    segment_size = _u32(first, 12)
    salt = first[16:48]
    nonce_prefix = first[48:55]
    reserved = first[55]
    if version != VERSION:
        raise FormatError(f"step 3: unsupported version {version}")
    if suite != SUITE:
        raise FormatError(f"step 3: unsupported suite {suite}")
    if flags != 0:
        raise FormatError(f"step 3: non-zero flags {flags:#04x}")
    if reserved != 0:
        raise FormatError(f"step 3: non-zero reserved byte {reserved:#04x}")
    if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
        raise FormatError(f"step 3: segment size {segment_size} out of range")
    if content_class not in CONTENT_CLASSES:
        raise FormatError(f"step 3: unknown content class {content_class}")

    # Step 4: key block length.
    k = _u32(first, 88)
    if not MIN_KEY_BLOCK <= k <= MAX_KEY_BLOCK:
        raise FormatError(f"step 4: key block length {k} out of range")
    h = 108 + k

    # Step 5: whole header present.
    if h > c:
        raise IntegrityError(f"step 5: truncated inside the header (H={h} > C={c})")
    header = first[:h] if h <= len(first) else data[:h]  # "second read" if H > 4096
    assert len(header) == h

    # Step 6: checksum.
    if hashlib.sha256(header[: h - CHECKSUM_LEN]).digest()[:CHECKSUM_LEN] != header[h - CHECKSUM_LEN : h]:
        raise IntegrityError("step 6: header checksum mismatch")

    hdr = Header(
        version=version,
        suite=suite,
        content_class=content_class,
        flags=flags,
        segment_size=segment_size,
        salt=salt,
        nonce_prefix=nonce_prefix,
        reserved=reserved,
        params=header[0:PARAMS_LEN],
        commitment=header[56:88],
        key_block_len=k,
        header_len=h,
    )

    # Step 7: key block (section 3.2).
    kb = header[92 : 92 + k]
    pos = 0
    wrap_alg = kb[pos]
    pos += 1
    if wrap_alg not in WRAP_ALGS:
        raise FormatError(f"step 7: unknown wrap_alg {wrap_alg}")

    def take_len(name: str, bound: int) -> int:
        nonlocal pos
        if pos + 2 > k:
            raise FormatError(f"step 7: key block too short for {name}")
        value = _u16(kb, pos)
        pos += 2
        if value > bound:
            raise FormatError(f"step 7: {name} {value} > {bound}")
        if pos + value > k:
            raise FormatError(f"step 7: {name} {value} runs past the key block")
        return value

    uri_len = take_len("uri_len", MAX_URI_LEN)
    uri_bytes = kb[pos : pos + uri_len]
    pos += uri_len
    version_len = take_len("version_len", MAX_VERSION_LEN)
    version_bytes = kb[pos : pos + version_len]
    pos += version_len
    wrapped_len = take_len("wrapped_len", MAX_WRAPPED_LEN)
    wrapped = kb[pos : pos + wrapped_len]
    pos += wrapped_len
    if pos != k or k != 7 + uri_len + version_len + wrapped_len:
        raise FormatError(f"step 7: key block fields fill {pos} of {k} bytes")
    try:
        key_uri = uri_bytes.decode("utf-8", errors="strict")
        key_version = version_bytes.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise FormatError(f"step 7: key_uri/key_version not valid UTF-8 ({exc.reason})") from None
    check_key_names(WRAP_ALGS[wrap_alg], key_uri, key_version)
    hdr.wrap_alg = wrap_alg
    hdr.key_uri = key_uri
    hdr.key_version = key_version
    hdr.wrapped_dek = wrapped
    return hdr


# --------------------------------------------------------------------------
# Key URIs and versions (FORMAT.md 3.5), checked at step 7
# --------------------------------------------------------------------------

ASCII_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
ASCII_DIGITS = "0123456789"
ALNUM = ASCII_LETTERS + ASCII_DIGITS
P11_CHARS = ALNUM + "-._~:[]@!$'()*+,"
UP_HEX = ASCII_DIGITS + "ABCDEF"
LOW_HEX = ASCII_DIGITS + "abcdef"
# scheme -> wrap_alg names allowed with it (the table of 3.5)
SCHEME_WRAP_ALGS = {
    "local://": {"A256GCM"},
    "https://": {"RSA_OAEP_256"},
    "pkcs11:": {"A256KWP", "RSA_OAEP_SHA1"},
}
P11_TYPE_WRAP_ALGS = {"secret-key": {"A256KWP"}, "private": {"RSA_OAEP_SHA1"}, "public": {"RSA_OAEP_SHA1"}}


def _only(text: str, allowed: str) -> bool:
    return all(ch in allowed for ch in text)


def _decimal(text: str, max_digits: int | None = None) -> bool:
    """``%x31-39 *DIGIT``: digits, no leading zero."""
    return (
        text != "" and _only(text, ASCII_DIGITS) and text[0] != "0" and (max_digits is None or len(text) <= max_digits)
    )


def _local_name(name: str) -> bool:
    return 1 <= len(name) <= 64 and _only(name, ALNUM + "_-.") and not name.startswith(".")


def _dns_name(host: str) -> bool:
    if not 1 <= len(host) <= 253:
        return False
    for label in host.split("."):
        if not (1 <= len(label) <= 63 and _only(label, ALNUM + "-") and label[0] != "-" and label[-1] != "-"):
            return False
    return True


def _host_and_port(authority: str) -> bool:
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            return False
        literal, rest = authority[1:close], authority[close + 1 :]
        if not literal or not _only(literal, ASCII_DIGITS + "abcdefABCDEF:."):  # no zone id, no IPvFuture
            return False
        try:
            ipaddress.IPv6Address(literal)
        except ValueError:
            return False
    else:
        colon = authority.find(":")
        host, rest = (authority, "") if colon < 0 else (authority[:colon], authority[colon:])
        if not _dns_name(host):
            return False
    if rest == "":
        return True
    port = rest[1:]
    return rest[0] == ":" and _decimal(port, 5) and int(port) <= 65535


def _p11_value(value: str) -> bool:
    """1*( p11-char / pct ), percent-encoded only where needed, decoding to UTF-8 without controls."""
    if value == "":
        return False
    decoded = bytearray()
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "%":
            pair = value[i + 1 : i + 3]
            if len(pair) != 2 or not _only(pair, UP_HEX):
                return False
            byte = int(pair, 16)
            if chr(byte) in P11_CHARS:
                return False  # this byte has a plain spelling
            decoded.append(byte)
            i += 3
        elif ch in P11_CHARS:
            decoded.append(ord(ch))
            i += 1
        else:
            return False
    try:
        label = decoded.decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        return False
    return not any(ord(c) <= 0x1F or 0x7F <= ord(c) <= 0x9F for c in label)


def check_key_names(wrap_alg: str, key_uri: str, key_version: str) -> None:
    """Section 3.5: the key URI, the key version and the (scheme, wrap_alg) pair."""
    for what, text in (("key_uri", key_uri), ("key_version", key_version)):
        if text == "" or any(not 0x21 <= ord(ch) <= 0x7E for ch in text):
            raise FormatError(f"step 7: {what} is empty or not printable ASCII (3.5)")
    scheme = next((p for p in SCHEME_WRAP_ALGS if key_uri.startswith(p)), None)
    if scheme is None:
        raise FormatError("step 7: unknown key URI scheme (3.5)")
    rest = key_uri[len(scheme) :]
    allowed = SCHEME_WRAP_ALGS[scheme]
    if scheme == "local://":
        if not _local_name(rest):
            raise FormatError("step 7: not local://local-name (3.5)")
        if not _decimal(key_version, 20):
            raise FormatError("step 7: not a local-version (3.5)")
    elif scheme == "https://":
        authority, sep, path = rest.partition("/")
        if not sep or not _host_and_port(authority):
            raise FormatError("step 7: https:// key URI without a valid host[:port] (3.5)")
        name = path[len("keys/") :] if path.startswith("keys/") else None
        if name is None or not 1 <= len(name) <= 127 or not _only(name, ALNUM + "-"):
            raise FormatError("step 7: https:// key URI path is not /keys/azure-name (3.5)")
        if not 1 <= len(key_version) <= 64 or not _only(key_version, ALNUM):
            raise FormatError("step 7: not an azure-version (3.5)")
    else:
        attrs = rest.split(";")
        names = [a.partition("=")[0] for a in attrs]
        if names not in (["token", "object"], ["token", "object", "type"]) or not all("=" in a for a in attrs):
            raise FormatError("step 7: pkcs11: key URI is not token=...;object=...[;type=...] (3.5)")
        values = [a.partition("=")[2] for a in attrs]
        if not (_p11_value(values[0]) and _p11_value(values[1])):
            raise FormatError("step 7: pkcs11: label is not a canonical p11-value (3.5)")
        if len(values) == 3:
            if values[2] not in P11_TYPE_WRAP_ALGS:
                raise FormatError("step 7: unknown pkcs11: type (3.5)")
            allowed = P11_TYPE_WRAP_ALGS[values[2]]
        v = key_version
        if not (v == "0" or _decimal(v) or (v[:1] == "x" and len(v) % 2 == 1 and _only(v[1:], LOW_HEX))):
            raise FormatError("step 7: not a p11-version (3.5)")
    if wrap_alg not in allowed:
        raise FormatError(f"step 7: wrap_alg {wrap_alg} is not allowed with {scheme} key URIs (3.5)")


def sizes(c: int, h: int, s: int) -> tuple[int, int, int]:
    """Section 8: (n, r, P) from C, H and S, with no key."""
    length = c - h
    if length < TAG_LEN:
        raise IntegrityError(f"step 8: payload of {length} bytes holds no tag")
    n = -(-length // (s + TAG_LEN))  # ceil
    r = length - (n - 1) * (s + TAG_LEN)
    if n > 1 and r <= TAG_LEN:
        raise IntegrityError(f"step 8: empty or sub-tag final segment ({r} bytes) after {n - 1} others")
    if n > MAX_SEGMENTS:
        raise IntegrityError(f"step 8: {n} segments > 2^32")
    p = length - TAG_LEN * n
    return n, r, p


def wrap_aad(key_uri: str, key_version: str) -> bytes:
    return WRAP_AAD_LABEL + key_uri.encode("utf-8") + b"\x00" + key_version.encode("utf-8")


# wrap_alg -> the hash of its RSAES-OAEP (also MGF1's hash), section 3.4.
RSA_OAEP_HASHES = {"RSA_OAEP_256": hashes.SHA256, "RSA_OAEP_SHA1": hashes.SHA1}


def parse_kek(text: str):
    """A vector's ``kek``: PKCS#8 PEM text of an RSA private key, or hex bytes."""
    if text.lstrip().startswith("-----BEGIN"):
        key = serialization.load_pem_private_key(text.encode("ascii"), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError("the PEM kek is not an RSA private key")
        return key
    return bytes.fromhex(text)


def unwrap_dek(hdr: Header, kek) -> bytes:
    """Step 9, section 3.4.  A failed unwrap is an integrity error."""
    alg = WRAP_ALGS[hdr.wrap_alg]
    wrapped = hdr.wrapped_dek
    if alg in RSA_OAEP_HASHES:
        if not isinstance(kek, rsa.RSAPrivateKey):
            raise UnsupportedError(f"{alg} needs an RSA private key")
        modulus_len = (kek.key_size + 7) // 8
        if len(wrapped) != modulus_len:
            raise IntegrityError(f"step 9: {alg} wrapped DEK is {len(wrapped)} bytes, not {modulus_len}")
        algorithm = RSA_OAEP_HASHES[alg]()
        try:
            dek = kek.decrypt(wrapped, padding.OAEP(mgf=padding.MGF1(algorithm), algorithm=algorithm, label=None))
        except ValueError:
            raise IntegrityError(f"step 9: {alg} unwrap failed (OAEP decoding)") from None
    elif not isinstance(kek, (bytes, bytearray)):
        raise UnsupportedError(f"{alg} needs a 32-byte symmetric KEK, not an RSA key")
    elif alg == "A256GCM":
        if len(kek) != 32:
            raise UnsupportedError(f"A256GCM needs a 32-byte KEK, got {len(kek)}")
        if len(wrapped) != A256GCM_WRAPPED_LEN:
            raise IntegrityError(f"step 9: A256GCM wrapped DEK is {len(wrapped)} bytes, not 60")
        nonce, sealed = wrapped[:A256GCM_WRAP_NONCE], wrapped[A256GCM_WRAP_NONCE:]
        try:
            dek = AESGCM(kek).decrypt(nonce, sealed, wrap_aad(hdr.key_uri, hdr.key_version))
        except InvalidTag:
            raise IntegrityError("step 9: A256GCM unwrap failed (tag)") from None
    elif alg == "A256KWP":
        if len(kek) != 32:
            raise UnsupportedError(f"A256KWP needs a 256-bit KEK, got {len(kek)} bytes")
        if len(wrapped) != A256KWP_WRAPPED_LEN:
            raise IntegrityError(f"step 9: A256KWP wrapped DEK is {len(wrapped)} bytes, not 40")
        try:
            dek = aes_key_unwrap_with_padding(kek, wrapped)
        except InvalidUnwrap:
            raise IntegrityError("step 9: A256KWP unwrap failed (integrity check)") from None
    else:  # pragma: no cover - WRAP_ALGS and the branches above list the same four
        raise UnsupportedError(f"step 9: wrap_alg {alg} is not implemented by this verifier")
    if len(dek) != DEK_LEN:
        raise IntegrityError(f"step 9: unwrapped DEK is {len(dek)} bytes, not 32")
    return dek


def derive(dek: bytes, hdr: Header) -> tuple[bytes, bytes]:
    """Section 5: (file_key, commitment)."""
    okm = HKDF(
        algorithm=hashes.SHA256(),
        length=64,
        salt=hdr.salt,
        info=HKDF_INFO_LABEL + hdr.params,
    ).derive(dek)
    return okm[:32], okm[32:64]


def segment_nonce(prefix: bytes, index: int, last: bool) -> bytes:
    """Section 6: nonce_prefix (7) || u32(i) || u8(last)."""
    return prefix + index.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


def decrypt(data: bytes, kek) -> Decrypted:
    """Decrypt a whole cmkfs v1 file, or raise FormatError / IntegrityError.

    ``kek`` is the 32-byte KEK (A256GCM, A256KWP) or the RSA private key
    (RSA_OAEP_256, RSA_OAEP_SHA1).  No plaintext is returned unless every
    check and every segment passed.
    """
    c = len(data)
    hdr = parse_header(data)  # steps 1-7
    h, s = hdr.header_len, hdr.segment_size
    n, r, p = sizes(c, h, s)  # step 8
    dek = unwrap_dek(hdr, kek)  # step 9
    file_key, commitment = derive(dek, hdr)  # step 10
    if not hmac.compare_digest(commitment, hdr.commitment):
        raise IntegrityError("step 10: key commitment mismatch")

    aead = AESGCM(file_key)

    def open_segment(i: int) -> bytes:
        start = h + i * (s + TAG_LEN)
        end = start + (r if i == n - 1 else s + TAG_LEN)
        last = i == n - 1
        try:
            return aead.decrypt(segment_nonce(hdr.nonce_prefix, i, last), data[start:end], None)
        except InvalidTag:
            raise IntegrityError(f"segment {i} of {n} failed to authenticate") from None

    # Step 11 / section 9 step 3: the final segment first, proving the length.
    final = open_segment(n - 1)
    # Section 6, last-segment rule, checked again on what was decrypted.
    if n > 1 and not 1 <= len(final) <= s:
        raise IntegrityError("last-segment rule: bad final segment length")
    if n == 1 and not 0 <= len(final) <= s:
        raise IntegrityError("last-segment rule: bad single segment length")
    parts = []
    for i in range(n - 1):
        seg = open_segment(i)
        if len(seg) != s:  # every segment but the last holds exactly S bytes
            raise IntegrityError(f"segment {i} holds {len(seg)} bytes, not S")
        parts.append(seg)
    parts.append(final)
    plaintext = b"".join(parts)
    if len(plaintext) != p:
        raise IntegrityError(f"plaintext is {len(plaintext)} bytes, section 8 predicts {p}")
    # Section 8, inverse: C = H + P + 16 * max(1, ceil(P / S)).
    if c != h + p + TAG_LEN * max(1, math.ceil(p / s)):
        raise IntegrityError("size arithmetic: C does not match H + P + 16 * n")
    return Decrypted(header=hdr, dek=dek, file_key=file_key, n_segments=n, plaintext=plaintext)


# --------------------------------------------------------------------------
# Running the vectors
# --------------------------------------------------------------------------


def pattern(length: int) -> bytes:
    """``byte[i] = i mod 251``."""
    return bytes(i % 251 for i in range(length))


def check_vector(vec: dict) -> tuple[bool, str]:
    """Return (agrees, message) for one vector record."""
    expected = vec.get("outcome")
    if expected not in ("ok", "integrity", "format"):
        return False, f"unknown expected outcome {expected!r}"
    try:
        data = bytes.fromhex(vec["ciphertext"])
        kek = parse_kek(vec["kek"])
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        return False, f"malformed vector record: {exc!r}"
    if "ciphertext_size" in vec and vec["ciphertext_size"] != len(data):
        return False, f"ciphertext_size {vec['ciphertext_size']} != {len(data)} bytes of ciphertext"

    try:
        result = decrypt(data, kek)
    except VerifierError as exc:
        got = exc.category
        if got == expected:
            return True, f"refused as {got} ({exc})"
        return False, f"expected {expected}, got {got} ({exc})"

    if expected != "ok":
        return False, f"expected {expected}, but it decrypted to {len(result.plaintext)} bytes"

    # An ok vector: compare the plaintext and the informational fields.
    problems = []
    pt = result.plaintext
    if "plaintext_size" in vec and len(pt) != vec["plaintext_size"]:
        problems.append(f"plaintext is {len(pt)} bytes, expected {vec['plaintext_size']}")
    if "plaintext" in vec:
        if pt != bytes.fromhex(vec["plaintext"]):
            problems.append("plaintext differs from the expected hex")
    elif "plaintext_pattern" in vec and pt != pattern(vec.get("plaintext_size", len(pt))):
        problems.append("plaintext differs from the i mod 251 pattern")
    if "plaintext_sha256" in vec and hashlib.sha256(pt).hexdigest() != vec["plaintext_sha256"].lower():
        problems.append("plaintext SHA-256 differs")
    if not any(k in vec for k in ("plaintext", "plaintext_pattern", "plaintext_sha256")):
        problems.append("ok vector gives no plaintext, pattern or digest to compare with")
    hdr = result.header
    if "dek" in vec and result.dek != bytes.fromhex(vec["dek"]):
        problems.append("unwrapped DEK differs from the vector's dek")
    if "wrap_alg" in vec and WRAP_ALGS[hdr.wrap_alg] != vec["wrap_alg"]:
        problems.append(f"header wrap_alg {WRAP_ALGS[hdr.wrap_alg]} != {vec['wrap_alg']}")
    if "key_uri" in vec and hdr.key_uri != vec["key_uri"]:
        problems.append(f"header key_uri {hdr.key_uri!r} != {vec['key_uri']!r}")
    if "key_version" in vec and hdr.key_version != vec["key_version"]:
        problems.append(f"header key_version {hdr.key_version!r} != {vec['key_version']!r}")
    if "segment_size" in vec and hdr.segment_size != vec["segment_size"]:
        problems.append(f"header segment size {hdr.segment_size} != {vec['segment_size']}")
    if "content_class" in vec and CONTENT_CLASSES[hdr.content_class] != vec["content_class"]:
        problems.append(f"header content class {CONTENT_CLASSES[hdr.content_class]} != {vec['content_class']}")
    if problems:
        return False, "decrypted, but " + "; ".join(problems)
    return True, f"decrypted {len(pt)} bytes in {result.n_segments} segment(s)"


class VectorFileError(Exception):
    """A vectors file that cannot be read or has no ``vectors`` list."""


def load_vectors(paths: list[Path]) -> list[tuple[str, dict]]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(path.glob("*.json")))
        else:
            files.append(path)
    if not files:
        raise VectorFileError("no vector files found")
    out: list[tuple[str, dict]] = []
    for f in files:
        try:
            doc = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise VectorFileError(f"cannot read {f}: {exc}") from None
        vectors = doc.get("vectors") if isinstance(doc, dict) else None
        if not isinstance(vectors, list):
            raise VectorFileError(f"{f} has no 'vectors' list")
        for i, vec in enumerate(vectors):
            name = vec.get("name", f"#{i}") if isinstance(vec, dict) else f"#{i}"
            label = name if len(files) == 1 else f"{f.name}:{name}"
            out.append((label, vec if isinstance(vec, dict) else {}))
    return out


def main(argv: list[str] | None = None) -> int:
    default = Path(__file__).resolve().parent.parent / "tests" / "vectors" / "v1.json"
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--vectors",
        type=Path,
        action="append",
        metavar="PATH",
        help="vectors JSON file, or a directory of *.json files (repeatable; "
        f"default {default.relative_to(default.parent.parent.parent)})",
    )
    args = parser.parse_args(argv)
    paths = args.vectors or [default]

    try:
        records = load_vectors(paths)
    except VectorFileError as exc:
        parser.error(str(exc))  # exits with status 2
    passed = failed = 0
    for label, vec in records:
        try:
            agrees, message = check_vector(vec)
        except Exception as exc:  # noqa: BLE001 - a verifier bug must show up as a failure
            agrees, message = False, f"verifier crashed: {exc!r}"
        expected = vec.get("outcome", "?")
        print(f"{'PASS' if agrees else 'FAIL'} {label} [{expected}]: {message}")
        if agrees:
            passed += 1
        else:
            failed += 1
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
