"""Exact plaintext sizes for listings, from each file's header.

``ls``, ``info`` and ``find`` report the size an application will read,
computed from a file's first bytes (header length and segment size) and its
ciphertext size, with no key and no decryption.  The facts are remembered
per file *version* (path, ciphertext size and a version marker such as an
ETag or mtime), so a listing costs one small read per new or changed file.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from .errors import FormatError, IntegrityError
from .format import (
    HEADER_PREFIX_SIZE,
    PARAMS_SIZE,
    FileParams,
    header_length_from_prefix,
    looks_like_cmkfs,
    plaintext_size,
)

__all__ = ["HeaderFacts", "not_cmkfs_message"]

Entry = dict[str, Any]
# (header length, segment size), or None for a file that is not encrypted.
Facts = tuple[int, int] | None

# Header facts remembered per instance.
MAX_REMEMBERED = 4096
# Keys of an info dict that change whenever a file's bytes change.
VERSION_KEYS = ("etag", "ETag", "mtime", "LastModified", "last_modified", "generation", "version_id", "created")


def not_cmkfs_message(path: str) -> str:
    return (
        f"{path} is not a cmkfs encrypted file (pass allow_plaintext_read=True to read "
        "unencrypted files during a migration)"
    )


class HeaderFacts:
    """Plaintext sizes of the files on one target filesystem."""

    def __init__(self, target: Any, *, allow_plaintext: bool) -> None:
        self._target = target
        self._allow_plaintext = allow_plaintext
        self._facts: OrderedDict[tuple[str, int, str, str], Facts] = OrderedDict()
        self._lock = threading.Lock()

    def forget(self, path: str | None = None) -> None:
        """Drop what is remembered about ``path`` (or everything)."""
        with self._lock:
            if path is None:
                self._facts.clear()
            else:
                for key in [k for k in self._facts if k[0] == path]:
                    del self._facts[key]

    def apply(self, entries: list[Entry], *, listing: bool = True) -> list[Entry]:
        """See :meth:`aligned`; files deleted since they were listed are left out."""
        return [e for e in self.aligned(entries, listing=listing) if e is not None]

    def aligned(self, entries: list[Entry], *, listing: bool = True) -> list[Entry | None]:
        """Copies of ``entries`` (``None`` where a file was deleted since it
        was listed) with files' ``size`` replaced by the exact plaintext size
        and ``encrypted`` set.

        In a listing a damaged file (cut short, unknown version, impossible size) is listed
        with its raw size, ``"encrypted": None`` and ``"damaged": True``: one
        bad file must not hide a whole directory.  Outside a listing (``info``)
        a damaged or foreign file raises."""
        out: list[Entry | None] = [None] * len(entries)
        fetch: list[int] = []
        for i, entry in enumerate(entries):
            if entry.get("type") != "file":
                out[i] = entry
                continue
            key = _version_key(entry)
            with self._lock:
                known = key is not None and key in self._facts
                facts = self._facts.get(key) if key is not None else None
            if known:
                out[i] = self._sized(entry, facts, listing)
            else:
                fetch.append(i)
        if fetch:
            paths = [entries[i]["name"] for i in fetch]
            ends = [min(int(entries[i]["size"]), HEADER_PREFIX_SIZE) for i in fetch]
            prefixes = self._target.cat_ranges(paths, [0] * len(paths), ends, on_error="return")
            for i, prefix in zip(fetch, prefixes, strict=True):
                entry = entries[i]
                if isinstance(prefix, FileNotFoundError) and listing:
                    continue  # deleted since it was listed
                if isinstance(prefix, BaseException):
                    raise prefix  # a storage error: the target's, as it is
                try:
                    facts = _facts_from_prefix(bytes(prefix))
                except (FormatError, IntegrityError):
                    if not listing:
                        raise
                    out[i] = {**entry, "encrypted": None, "damaged": True}
                    continue
                self._remember(entry, facts)
                out[i] = self._sized(entry, facts, listing)
        return out

    def _sized(self, entry: Entry, facts: Facts, listing: bool) -> Entry:
        if facts is None and not listing and not self._allow_plaintext:
            # As open() does: a foreign file has no plaintext size to report.
            raise FormatError(not_cmkfs_message(entry["name"]))
        return _apply(entry, facts)

    def _remember(self, entry: Entry, facts: Facts) -> None:
        key = _version_key(entry)
        if key is None:
            return
        with self._lock:
            self._facts[key] = facts
            while len(self._facts) > MAX_REMEMBERED:
                self._facts.popitem(last=False)


def _version_key(entry: Entry) -> tuple[str, int, str, str] | None:
    for name in VERSION_KEYS:
        value = entry.get(name)
        if value is not None:
            return (entry["name"], int(entry["size"]), name, str(value))
    return None  # no version marker: never trust a remembered header


def _facts_from_prefix(prefix: bytes) -> Facts:
    try:
        header_len = header_length_from_prefix(prefix)
    except FormatError:
        if looks_like_cmkfs(prefix):
            raise  # a cmkfs file of a version or suite we do not know
        return None  # not encrypted: its size is its own
    return header_len, FileParams.decode(prefix[:PARAMS_SIZE]).segment_size


def _apply(entry: Entry, facts: Facts) -> Entry:
    entry = dict(entry)
    if facts is None:
        entry["encrypted"] = False
    else:
        entry["size"] = plaintext_size(int(entry["size"]), *facts)
        entry["encrypted"] = True
    return entry
