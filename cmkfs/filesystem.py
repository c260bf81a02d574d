"""``cmk://``: an fsspec filesystem that encrypts everything written through it.

Layer it over any fsspec filesystem::

    fs = fsspec.filesystem("cmk", target_protocol="file", key="local://sales")
    with fsspec.open("cmk::memory://reports/q1.parquet", "wb", cmk={"key": "local://sales"}) as f: ...
    pd.read_parquet("cmk::abfs://c/q1.parquet", storage_options={"cmk": {"key": ...}, "abfs": {...}})

Files on the target are format-v1 ciphertext (``docs/FORMAT.md``) under
envelope keys held in a key vault or HSM; the data keys live in a strict,
per-instance :class:`~cmkfs.keycache.KeyCache` (TTL at most one hour), so a
revoked key stops reads and writes within the TTL.

The wrapper **delegates explicitly and fails closed**: every public method
of :class:`fsspec.AbstractFileSystem` is either written out here, inherited
from fsspec where its generic body only calls methods written out here
(:data:`ROUTED_METHODS`), harmless metadata (:data:`META_METHODS`), or it
raises :class:`~cmkfs.errors.UnsupportedOperationError`.  A method added by a
future fsspec release is refused until someone reviews it.  The same holds
for the hooks fsspec looks up on a filesystem by name (:data:`DUCK_TYPED_HOOKS`:
``open_many``/``commit_many`` make ``fsspec.open_files`` hand every file to
the first filesystem down the ``.fs`` chain that has them, which would
otherwise be a cache *under* this layer, writing plaintext).

Disk caches anywhere above this layer (``simplecache::cmk::...``,
``filecache::dir::cmk::...``) would store plaintext: they are refused with
:class:`~cmkfs.errors.ConfigurationError` (:mod:`cmkfs.cache_guard`).  Cache
the ciphertext instead: ``cmk::simplecache::PROTOCOL://...``.

Writes follow one contract (:mod:`cmkfs.files`): ``close()`` publishes, a
failing ``with`` block or garbage collection discards, and
``with fs.transaction:`` publishes every file written in the block when it
ends cleanly and none when it fails (:class:`CMKTransaction`).
"""

from __future__ import annotations

import io
import os
import secrets
import threading
from collections import OrderedDict
from urllib.parse import unquote

import fsspec
from fsspec.callbacks import DEFAULT_CALLBACK
from fsspec.compression import compr
from fsspec.core import get_compression
from fsspec.implementations.chained import ChainedFileSystem
from fsspec.spec import make_instance
from fsspec.transaction import Transaction
from fsspec.utils import isfilelike

from .cache_guard import check_not_cached, install_cache_guard
from .config import default_key_uri
from .errors import CMKError, ConfigurationError, FormatError, IntegrityError, UnsupportedOperationError
from .files import CMKReadFile, CMKTextWriter, CMKWriteFile, CompressedFile, PlaintextReader, WriteState, _drop
from .format import (
    DEFAULT_SEGMENT_SIZE,
    HEADER_PREFIX_SIZE,
    MAGIC,
    PARAMS_SIZE,
    ContentClass,
    FileParams,
    check_segment_size,
    header_length_from_prefix,
    looks_like_cmkfs,
    plaintext_size,
)
from .keycache import DEFAULT_CACHE_TTL, KeyCache, check_ttl, trusted_vault_hosts
from .stream import DecryptingReader, reject_append
from .targets import PARTIAL_MARKER, is_partial_name, open_atomic_sink, open_range_source
from .wipe import wipe

__all__ = [
    "CMKFileSystem",
    "CMKTransaction",
    "TransactionError",
    "guess_content_class",
    "install_cache_guard",
    "check_not_cached",
    "ROUTED_METHODS",
    "META_METHODS",
    "REFUSED_METHODS",
    "DUCK_TYPED_HOOKS",
]

PROTOCOL = "cmk"
# Header facts (header length, segment size) remembered per file version, so
# listings cost one small read per new or changed file.
HEADER_FACTS_MAX = 4096
# Keys of an info dict that change whenever a file's bytes change.
_VERSION_KEYS = ("etag", "ETag", "mtime", "LastModified", "last_modified", "generation", "version_id", "created")
_TRANSFER_CHUNK = 8 * 1024 * 1024

_EXTENSIONS = {
    ".parquet": ContentClass.PARQUET,
    ".png": ContentClass.IMAGE,
    ".jpg": ContentClass.IMAGE,
    ".jpeg": ContentClass.IMAGE,
    ".gif": ContentClass.IMAGE,
    ".svg": ContentClass.IMAGE,
    ".webp": ContentClass.IMAGE,
    ".csv": ContentClass.CSV,
    ".json": ContentClass.JSON,
}

# Inherited from AbstractFileSystem unchanged: their generic bodies reach
# content only through methods this class writes out (shown after the name).
ROUTED_METHODS = {
    "cat": "cat_file",
    "cat_ranges": "cat_file",
    "read_block": "open",
    "head": "open",
    "tail": "open",
    "read_bytes": "cat_file",
    "read_text": "open",
    "write_bytes": "pipe_file",
    "write_text": "open",
    "pipe": "pipe_file",
    "get": "get_file",
    "download": "get -> get_file",
    "put": "put_file",
    "upload": "put -> put_file",
    "copy": "cp_file",
    "cp": "copy -> cp_file",
    "move": "mv",
    "rename": "mv",
    "delete": "rm",
    "walk": "ls",
    "glob": "find",
    "expand_path": "find/glob/isdir",
    "tree": "ls",
    "size": "info",
    "sizes": "info",
    "stat": "info",
    "listdir": "ls",
    "disk_usage": "du -> find",
    "lexists": "exists",
    "makedir": "mkdir",
    "mkdirs": "makedirs",
    "get_mapper": "cat/pipe/rm/find",
    "start_transaction": "transaction_type (CMKTransaction)",
    "end_transaction": "transaction_type (CMKTransaction.complete)",
}
# No file content involved: construction, serialisation, names.
META_METHODS = frozenset({
    "clear_instance_cache", "current", "from_dict", "from_json", "to_dict", "to_json",
    "unstrip_protocol", "mirror_sync_methods",
})
# Refused outright (see each stub's message).
REFUSED_METHODS = {
    "sign": "a signed URL would hand out ciphertext that only cmkfs can read; read through cmk:// instead",
}
# Attributes fsspec (core.OpenFiles, open_local, utils.can_be_local, fuse)
# looks up on a filesystem by name with hasattr/getattr, outside the
# AbstractFileSystem API.  Each must be written out in CMKFileSystem or be
# absent from every base class; otherwise _fail_closed refuses it.
DUCK_TYPED_HOOKS = frozenset({"open_many", "commit_many", "local_file", "chmod"})


def guess_content_class(path: str) -> ContentClass:
    """The content class recorded for ``path`` by its extension."""
    name = path.rstrip("/").rsplit("/", 1)[-1].lower()
    dot = name.rfind(".")
    return _EXTENSIONS.get(name[dot:], ContentClass.OTHER) if dot > 0 else ContentClass.OTHER


def _parse_content_class(value) -> ContentClass | None:
    if value is None:
        return None
    if isinstance(value, ContentClass):
        return value
    if isinstance(value, str):
        try:
            return ContentClass[value.upper()]
        except KeyError:
            raise ConfigurationError(f"unknown content_class {value!r}: one of {[c.name.lower() for c in ContentClass]}") from None
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return ContentClass(value)
        except ValueError:
            raise ConfigurationError(f"unknown content_class {value!r}") from None
    raise ConfigurationError("content_class must be a ContentClass, its name or its number")


# -- transactions -------------------------------------------------------------


class TransactionError(CMKError, RuntimeError):
    """A transaction ended cleanly but one of its files was not ready to
    publish (discarded, failed or still open): nothing was published."""


class CMKTransaction(Transaction):
    """fsspec's transaction, made all-or-nothing before anything is published.

    Files written inside ``with fs.transaction:`` are sealed when closed and
    published together when the block ends without an exception.  If the
    block fails, or any file in it was discarded, failed or is still open,
    every file is discarded and the previous versions stay.  Publishing is
    one atomic step per file (a rename or a block-list commit): a storage
    failure during those final steps leaves the files before it published
    and the rest discarded, each of them whole.
    """

    def complete(self, commit=True):
        files = list(self.files)
        self.files.clear()
        published = 0
        try:
            if commit:
                unready = [f for f in files if f.state not in (WriteState.SEALED, WriteState.COMMITTED)]
                if unready:
                    commit = False
                    shown = ", ".join(f"{f.path} ({'still open' if f.state is WriteState.OPEN else f.state.value})"
                                      for f in unready[:5])
                    raise TransactionError(f"transaction not published, no file was written: {shown}")
                for f in files:
                    f.commit()
                    published += 1
        finally:
            for f in files[published:]:
                try:
                    f.discard()
                except Exception:  # noqa: BLE001 - the first error is the one to report
                    pass
            if self.fs is not None:
                self.fs._intrans = False
                self.fs._transaction = None
                self.fs = None


# -- the filesystem ---------------------------------------------------------------


class CMKFileSystem(ChainedFileSystem):
    """Transparent envelope encryption over any fsspec filesystem.

    Parameters
    ----------
    target_protocol, target_options, fs:
        The filesystem holding the ciphertext (as for fsspec's chained
        filesystems): a protocol and its options, or an instance.
    key:
        Key URI new files are written under (``local://NAME``, an Azure Key
        Vault key URL, ``pkcs11:...``).  Default: ``$CMKFS_KEY`` or the
        embedded configuration's default key.  Reading needs no key option:
        each file's header names its own key.
    cache_ttl:
        Seconds an unwrapped data key may be used before the vault is asked
        again (at most 3600; default 900).
    segment_size:
        Plaintext bytes per authenticated segment for new files.
    content_class:
        Recorded in new files' headers; default guessed from the extension.
    allow_plaintext_read:
        Migration aid: read files that are not cmkfs files as plaintext.
        Off by default (such files raise :class:`FormatError`).
    threads:
        Segment-crypto threads per stream (default: up to 4).
    trusted_vaults:
        Key vault hosts (or URLs) whose keys files may name, besides the
        vault of ``key``; also ``$CMKFS_TRUSTED_VAULTS``.  A file naming any
        other remote vault is refused before any network call.
    fsync:
        Local disk only: flush a new file to disk before it replaces the old
        one (default ``True``).  ``False`` is faster and still atomic against
        a crashing process, but not against a power loss.
    """

    protocol = PROTOCOL
    transaction_type = CMKTransaction
    _strip_tokenize_options = ("fo",)
    # Instance cache keyed by options (including the key URI): an instance
    # and its KeyCache are reused for identical options, never shared across them.
    cachable = True

    def __init__(
        self,
        target_protocol=None,
        target_options=None,
        fs=None,
        key=None,
        cache_ttl=DEFAULT_CACHE_TTL,
        segment_size=DEFAULT_SEGMENT_SIZE,
        content_class=None,
        allow_plaintext_read=False,
        threads=None,
        fsync=True,
        trusted_vaults=None,
        **kwargs,
    ):
        install_cache_guard()  # refuses to run if this fsspec cannot be guarded
        super().__init__(**kwargs)
        if fs is None and target_protocol is None:
            raise ValueError("provide a target filesystem (fs=) or target_protocol=")
        if fs is not None and target_protocol is not None:
            raise ValueError("provide either fs= or target_protocol=, not both")
        if key is not None and (not isinstance(key, str) or not key):
            # Only URIs travel in options: they end up in tokens, pickles and JSON.
            raise ConfigurationError("key must be a key URI string such as 'local://NAME'")
        self.cache_ttl = check_ttl(cache_ttl)
        try:
            check_segment_size(segment_size)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        self.segment_size = segment_size
        self.content_class = _parse_content_class(content_class)
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ConfigurationError("threads must be a positive integer")
        self.threads = threads
        self.allow_plaintext_read = bool(allow_plaintext_read)
        self.fsync = bool(fsync)
        # Hosts only (plain strings): they travel in tokens and pickles.
        self.trusted_vaults = tuple(trusted_vault_hosts(trusted_vaults)) if trusted_vaults else ()
        _refuse_pin_in_uri(key)
        if key is None:
            try:
                key = default_key_uri()
            except ConfigurationError:
                key = None  # read-only until a key is configured; writes say how to set one
            _refuse_pin_in_uri(key)  # the resolved default travels in pickles too
        self.key_uri = key
        self.fs = fs if fs is not None else fsspec.filesystem(target_protocol, **(target_options or {}))
        self.target_protocol = target_protocol if isinstance(target_protocol, str) else (
            self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        )
        self._key_lock = threading.Lock()
        self._key_cache: KeyCache | None = None
        self._facts: OrderedDict = OrderedDict()
        self._facts_lock = threading.Lock()

        def _strip_protocol(path):
            # Per instance, like fsspec's caching layers: strip "cmk://", then the target's own.
            return self.fs._strip_protocol(type(self)._strip_protocol(path))

        self._strip_protocol = _strip_protocol

    # -- plumbing that must never carry secrets -----------------------------

    def __repr__(self) -> str:
        return f"CMKFileSystem(key={self.key_uri!r}, target={self.target_protocol!r})"

    def _public_options(self) -> dict:
        opts = dict(self.storage_options)
        if opts.get("key") is None and self.key_uri:
            opts["key"] = self.key_uri  # the resolved default travels, so workers use the same key
        return opts

    def __reduce__(self):
        return make_instance, (type(self), self.storage_args, self._public_options())

    def to_dict(self, *, include_password: bool = True) -> dict:
        out = super().to_dict(include_password=include_password)
        if out.get("key") is None and self.key_uri:
            out["key"] = self.key_uri
        return out

    @property
    def keys(self) -> KeyCache:
        """This instance's key cache, created on first use (never pickled)."""
        cache = self._key_cache
        if cache is None:
            with self._key_lock:
                if self._key_cache is None:
                    self._key_cache = KeyCache(self.key_uri, ttl=self.cache_ttl, trusted_vaults=self.trusted_vaults)
                cache = self._key_cache
        return cache

    @property
    def fsid(self):
        return f"cmk-{self.fs.fsid}"

    # -- open -------------------------------------------------------------------

    # Paths here are not local files one could open directly (they hold
    # ciphertext): fsspec.open_local() and can_be_local() must say no.
    local_file = False

    def open(self, path, mode="rb", block_size=None, cache_options=None, compression=None, **kwargs):
        """fsspec's ``open``, with wrappers that keep the write contract: text
        modes return a :class:`~cmkfs.files.CMKTextWriter` and
        ``compression=`` a :class:`~cmkfs.files.CompressedFile` that owns the
        encrypted file (fsspec's generic wrappers would publish a failed
        write from a finaliser, or never publish at all).  Inside
        ``with fs.transaction:`` writers default to ``autocommit=False``."""
        path = self._strip_protocol(path)
        if "b" not in mode:
            text_kwargs = {k: kwargs.pop(k) for k in ("encoding", "errors", "newline") if k in kwargs}
            binary = self.open(path, mode.replace("t", "") + "b", block_size=block_size,
                               cache_options=cache_options, compression=compression, **kwargs)
            if "r" in mode:
                return io.TextIOWrapper(binary, **text_kwargs)
            return CMKTextWriter(binary, **text_kwargs)
        f = self._open(path, mode=mode, block_size=block_size, autocommit=kwargs.pop("autocommit", not self._intrans),
                       cache_options=cache_options, **kwargs)
        compression = get_compression(path, compression) if compression is not None else None
        if compression is None:
            return f
        try:
            return CompressedFile(compr[compression](f, mode=mode[0]), f)
        except BaseException:
            _drop(f)
            raise

    def open_many(self, open_files, **kwargs):
        """Entered by ``with fsspec.open_files(...) as files``: fsspec hands
        the files to the first filesystem down the chain that has this hook,
        which without it would be a cache *under* this layer, bypassing the
        encryption.  Each file opens through its own ``OpenFile``, i.e. through
        this filesystem's :meth:`open`."""
        files = []
        try:
            for of in open_files:
                files.append(of.__enter__())
        except BaseException:
            for of in open_files:
                for f in of.fobjects[:1]:  # the cmkfs file under any wrappers
                    _drop(f)
                of.fobjects.clear()
            raise
        return files

    def commit_many(self, open_files):
        """Called by ``OpenFiles.__exit__`` after each ``OpenFile.__exit__`` has
        closed (or, on an exception, discarded) its file: close what is left
        through the same rule."""
        for f in open_files:
            if not f.closed:
                f.close()

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None, **kwargs):
        path = self._strip_protocol(path)
        if "a" in mode:
            reject_append()
        if "+" in mode:
            raise UnsupportedOperationError(f"mode {mode!r}: encrypted files are opened for reading or for writing, not both")
        if mode == "rb":
            return self._open_read(path, block_size=block_size, cache_options=cache_options, **kwargs)
        if mode in ("wb", "xb"):
            return self._open_write(path, exclusive=mode == "xb", autocommit=autocommit, **kwargs)
        raise ValueError(f"unsupported mode {mode!r}: use 'rb' or 'wb' (or text modes through open())")

    def _open_read(self, path, block_size=None, cache_options=None, cache_type="none", **kwargs):
        # No fsspec read-ahead by default: the reader already fetches whole
        # segments and keeps the last run it opened (a segment-sized
        # read-ahead); an fsspec block on top would fetch a second segment
        # beyond every large read.
        reader, source = self._reader(path)
        try:
            return CMKReadFile(self, path, reader, source, block_size=block_size, cache_type=cache_type,
                               cache_options=cache_options, **kwargs)
        except BaseException:
            reader.close()
            source.close()
            raise

    def _open_write(self, path, exclusive=False, autocommit=None, content_class=None, metadata=None, **_ignored):
        """The one way a writer is made: inside a transaction it is sealed on
        close and handed to the transaction to publish."""
        if self.key_uri is None:
            default_key_uri()  # raises the message that says how to configure a key
        if autocommit is None:
            autocommit = not self._intrans
        cls = _parse_content_class(content_class) or self.content_class or guess_content_class(path)
        sink = open_atomic_sink(self.fs, path, metadata=metadata, exclusive=exclusive, fsync=self.fsync)
        self._forget(path)
        f = CMKWriteFile(self, path, sink, self.keys, segment_size=self.segment_size,
                         content_class=cls, threads=self.threads, autocommit=autocommit)
        if not autocommit and self._intrans:
            self.transaction.files.append(f)
        return f

    def _reader(self, path):
        """(reader, source) for ``path``; refuses foreign files unless allowed."""
        source = open_range_source(self.fs, path)
        try:
            try:
                return DecryptingReader(source, self.keys, threads=self.threads), source
            except FormatError:
                head = bytes(source.read_range(0, min(source.size, len(MAGIC))))
                if self.allow_plaintext_read and not looks_like_cmkfs(head):
                    return PlaintextReader(source), source
                if looks_like_cmkfs(head):
                    raise
                raise FormatError(_not_cmkfs(path)) from None
        except BaseException:
            source.close()
            raise

    # -- content ----------------------------------------------------------------

    def cat_file(self, path, start=None, end=None, **kwargs):
        path = self._strip_protocol(path)
        reader, source = self._reader(path)
        try:
            size = reader.size
            start = 0 if start is None else (max(0, size + start) if start < 0 else start)
            end = size if end is None else (max(0, size + end) if end < 0 else min(end, size))
            return reader.read(start, end - start) if end > start else b""
        finally:
            reader.close()
            source.close()

    def pipe_file(self, path, value, mode="overwrite", **kwargs):
        if mode not in ("overwrite", "create"):
            raise ValueError(f"unsupported pipe mode {mode!r}")
        with self._open_write(self._strip_protocol(path), exclusive=mode == "create", **kwargs) as f:
            f.write(value)

    def put_file(self, lpath, rpath, callback=DEFAULT_CALLBACK, mode="overwrite", **kwargs):
        rpath = self._strip_protocol(rpath)
        if os.path.isdir(lpath):
            self.makedirs(rpath, exist_ok=True)
            return None
        if mode == "create" and self.exists(rpath):
            raise FileExistsError(rpath)
        with open(lpath, "rb") as src:
            size = os.fstat(src.fileno()).st_size
            callback.set_size(size)
            parent = self._parent(rpath)
            if parent:
                self.makedirs(parent, exist_ok=True)
            with self._open_write(rpath, exclusive=mode == "create", **kwargs) as f:
                chunk = max(self.segment_size, (_TRANSFER_CHUNK // self.segment_size) * self.segment_size)
                buf = bytearray(max(1, min(size, chunk)))  # small files get small buffers
                view = memoryview(buf)
                try:
                    while True:
                        n = src.readinto(buf)
                        if not n:
                            break
                        f.write(view[:n])
                        callback.relative_update(n)
                finally:
                    view.release()
                    wipe(buf)  # the plaintext staging buffer does not linger

    def get_file(self, rpath, lpath, callback=DEFAULT_CALLBACK, outfile=None, **kwargs):
        """Decrypt ``rpath`` to a local path via a temp file and a rename:
        a failed or tampered read leaves no output file."""
        rpath = self._strip_protocol(rpath)
        if outfile is None and isfilelike(lpath):
            outfile, lpath = lpath, None
        if outfile is None and self.isdir(rpath):
            os.makedirs(lpath, exist_ok=True)
            return None
        reader, source = self._reader(rpath)
        try:
            callback.set_size(reader.size)
            if outfile is not None:
                self._copy_out(reader, outfile, callback)
                return None
            lpath = os.fspath(lpath)
            directory, name = os.path.split(os.path.abspath(lpath))
            os.makedirs(directory, exist_ok=True)
            tmp = os.path.join(directory, f".{name}{PARTIAL_MARKER}{secrets.token_hex(8)}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
            try:
                with os.fdopen(fd, "wb") as out:
                    self._copy_out(reader, out, callback)
                os.replace(tmp, lpath)
            except BaseException:
                try:
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass
                raise
        finally:
            reader.close()
            source.close()
        return None

    def _copy_out(self, reader, out, callback) -> None:
        step = max(reader.segment_size, (_TRANSFER_CHUNK // reader.segment_size) * reader.segment_size)
        offset = 0
        while offset < reader.size:
            data = reader.read(offset, step)
            out.write(data)
            offset += len(data)
            callback.relative_update(len(data))

    def touch(self, path, truncate=True, **kwargs):
        path = self._strip_protocol(path)
        if truncate or not self.fs.exists(path):
            self.pipe_file(path, b"", **kwargs)  # an encrypted empty file, not a zero-byte one
        else:
            self.fs.touch(path, truncate=False, **kwargs)  # timestamp only
            self._forget(path)

    def cp_file(self, path1, path2, **kwargs):
        # Ciphertext is copied as is: the path is not bound into the format.
        self.fs.cp_file(self._strip_protocol(path1), self._strip_protocol(path2), **kwargs)
        self._forget(path2)

    def mv(self, path1, path2, recursive=False, maxdepth=None, **kwargs):
        self.fs.mv(self._strip_protocol(path1), self._strip_protocol(path2), recursive=recursive, maxdepth=maxdepth, **kwargs)
        self._forget()

    def rewrap(self, path, key=None, recursive=False, dry_run=False):
        """Re-wrap the data key of ``path`` under ``key`` (default: this
        filesystem's key) without re-encrypting it; see :mod:`cmkfs.rewrap`.
        Returns a :class:`~cmkfs.rewrap.RewrapResult`, or with ``recursive``
        a list of them (failed files carry ``error``)."""
        from .rewrap import rewrap_file, rewrap_tree

        if recursive:
            return list(rewrap_tree(self, path, key=key, dry_run=dry_run))
        return rewrap_file(self, path, key=key, dry_run=dry_run)

    # -- metadata, with exact plaintext sizes ----------------------------------

    def ls(self, path, detail=True, **kwargs):
        entries = self.fs.ls(self._strip_protocol(path), detail=True, **kwargs)
        entries = [e for e in entries if not is_partial_name(e["name"])]
        if not detail:
            return sorted(e["name"] for e in entries)
        return self._with_plain_sizes(entries)

    def info(self, path, **kwargs):
        entry = self.fs.info(self._strip_protocol(path), **kwargs)
        return self._with_plain_sizes([entry], listing=False)[0]

    def find(self, path, maxdepth=None, withdirs=False, detail=False, **kwargs):
        found = self.fs.find(self._strip_protocol(path), maxdepth=maxdepth, withdirs=withdirs, detail=True, **kwargs)
        names = [n for n in found if not is_partial_name(n)]
        entries = []
        for name in names:
            entry = found[name]
            if not entry or "type" not in entry:
                entry = self.fs.info(name)  # generic find() gives {} for a file path
            entries.append(entry)
        if not detail:
            return sorted(names)
        entries = self._with_plain_sizes(entries)
        return {name: entry for name, entry in sorted(zip(names, entries), key=lambda ne: ne[0])}

    def du(self, path, total=True, maxdepth=None, withdirs=False, **kwargs):
        sizes = {name: info.get("size") or 0
                 for name, info in self.find(path, maxdepth=maxdepth, withdirs=withdirs, detail=True, **kwargs).items()}
        return sum(sizes.values()) if total else sizes

    def exists(self, path, **kwargs):
        return self.fs.exists(self._strip_protocol(path), **kwargs)

    def isfile(self, path):
        return self.fs.isfile(self._strip_protocol(path))

    def isdir(self, path):
        return self.fs.isdir(self._strip_protocol(path))

    def created(self, path):
        return self.fs.created(self._strip_protocol(path))

    def modified(self, path):
        return self.fs.modified(self._strip_protocol(path))

    def checksum(self, path):
        return self.fs.checksum(self._strip_protocol(path))

    def ukey(self, path):
        return self.fs.ukey(self._strip_protocol(path))

    def makedirs(self, path, exist_ok=False):
        return self.fs.makedirs(self._strip_protocol(path), exist_ok=exist_ok)

    def mkdir(self, path, create_parents=True, **kwargs):
        return self.fs.mkdir(self._strip_protocol(path), create_parents=create_parents, **kwargs)

    def rm(self, path, recursive=False, maxdepth=None):
        if isinstance(path, (list, tuple)):
            path = [self._strip_protocol(p) for p in path]
        else:
            path = self._strip_protocol(path)
        self.fs.rm(path, recursive=recursive, maxdepth=maxdepth)
        self._forget()

    def rm_file(self, path):
        path = self._strip_protocol(path)
        self.fs.rm_file(path)
        self._forget(path)

    def rmdir(self, path):
        return self.fs.rmdir(self._strip_protocol(path))

    def invalidate_cache(self, path=None):
        self.fs.invalidate_cache(None if path is None else self._strip_protocol(path))
        self._forget()

    # -- header facts -----------------------------------------------------------

    def _forget(self, path=None) -> None:
        with self._facts_lock:
            if path is None:
                self._facts.clear()
            else:
                for k in [k for k in self._facts if k[0] == path]:
                    del self._facts[k]

    @staticmethod
    def _fact_key(entry) -> tuple | None:
        for name in _VERSION_KEYS:
            value = entry.get(name)
            if value is not None:
                return (entry["name"], int(entry["size"]), name, str(value))
        return None  # no version marker: never trust a remembered header

    def _with_plain_sizes(self, entries, listing=True):
        """Copies of ``entries`` with files' ``size`` replaced by the exact
        plaintext size (from each header) and ``encrypted`` set.

        In a listing (``listing=True``) a file deleted since it was listed is
        dropped, and a damaged one (cut short, unknown version, impossible
        size) is listed with its raw size, ``"encrypted": None`` and
        ``"damaged": True``: one bad file must not hide a whole directory.
        ``info()`` of that file raises."""
        out: list = [None] * len(entries)
        fetch: list[int] = []
        for i, entry in enumerate(entries):
            if entry.get("type") != "file":
                out[i] = entry
                continue
            key = self._fact_key(entry)
            with self._facts_lock:
                facts = self._facts.get(key) if key is not None else None
            if facts is not None:
                out[i] = self._apply(entry, facts)
            else:
                fetch.append(i)
        if fetch:
            paths = [entries[i]["name"] for i in fetch]
            ends = [min(int(entries[i]["size"]), HEADER_PREFIX_SIZE) for i in fetch]
            prefixes = self.fs.cat_ranges(paths, [0] * len(paths), ends, on_error="return")
            for i, prefix in zip(fetch, prefixes):
                entry = entries[i]
                if isinstance(prefix, FileNotFoundError) and listing:
                    continue  # deleted since it was listed
                if isinstance(prefix, BaseException):
                    raise prefix  # a storage error: the target's, as it is
                try:
                    facts = self._facts_from_prefix(bytes(prefix))
                    if facts is None and not listing and not self.allow_plaintext_read:
                        # As open() does: a foreign file has no plaintext size to report.
                        raise FormatError(_not_cmkfs(entry["name"]))
                    applied = self._apply(entry, facts)
                except (FormatError, IntegrityError):
                    if not listing:
                        raise
                    out[i] = {**entry, "encrypted": None, "damaged": True}
                    continue
                key = self._fact_key(entry)
                if key is not None:
                    with self._facts_lock:
                        self._facts[key] = facts
                        while len(self._facts) > HEADER_FACTS_MAX:
                            self._facts.popitem(last=False)
                out[i] = applied
        return [e for e in out if e is not None]

    @staticmethod
    def _facts_from_prefix(prefix: bytes):
        try:
            header_len = header_length_from_prefix(prefix)
        except FormatError:
            if looks_like_cmkfs(prefix):
                raise  # a cmkfs file of a version or suite we do not know
            return None  # not encrypted: its size is its own
        return header_len, FileParams.decode(prefix[:PARAMS_SIZE]).segment_size

    @staticmethod
    def _apply(entry, facts):
        entry = dict(entry)
        if facts is None:
            entry["encrypted"] = False
        else:
            entry["size"] = plaintext_size(int(entry["size"]), *facts)
            entry["encrypted"] = True
        return entry


def _not_cmkfs(path: str) -> str:
    return (f"{path} is not a cmkfs encrypted file (pass allow_plaintext_read=True to read "
            "unencrypted files during a migration)")


def _refuse_pin_in_uri(key) -> None:
    """A PIN in a pkcs11: key URI would travel wherever the options do
    (repr, tokens, ``to_json``, pickles to Dask workers): refuse it."""
    if not isinstance(key, str) or not key.lower().startswith("pkcs11:"):
        return
    query = key.partition("?")[2]
    for item in query.split("&") if query else ():
        if unquote(item.partition("=")[0]).strip().lower() == "pin-value":
            raise ConfigurationError(
                "a PIN in the key URI (pin-value=) would travel in reprs, tokens, to_json and pickles: "
                "give pin-source=file:/path/to/pin in the URI or set $CMKFS_PKCS11_PIN instead"
            )


def _refuser(name: str, reason: str):
    def refused(self, *args, **kwargs):
        raise UnsupportedOperationError(f"{name}: {reason}")

    refused.__name__ = name
    refused.__doc__ = f"Refused over encrypted files: {reason}."
    return refused


def _refused_hook(name: str, reason: str):
    def refused(self):
        raise UnsupportedOperationError(f"{name}: {reason}")

    return property(refused, doc=f"Refused over encrypted files: {reason}.")


def _fail_closed() -> None:
    """Refuse every public method of the base classes, and every duck-typed
    hook they define, that this module has not reviewed."""
    unreviewed = "not reviewed for encrypted content in this cmkfs release"
    for name, reason in REFUSED_METHODS.items():
        setattr(CMKFileSystem, name, _refuser(name, reason))
    bases = CMKFileSystem.__mro__[1:]
    public = {name for base in bases for name in dir(base) if not name.startswith("_")}
    for name in sorted(public):
        if name in CMKFileSystem.__dict__ or name in ROUTED_METHODS or name in META_METHODS:
            continue
        attr = getattr(CMKFileSystem, name)  # the base's, through the MRO
        if callable(attr) and not isinstance(attr, type):
            setattr(CMKFileSystem, name, _refuser(name, unreviewed))
    for name in sorted(DUCK_TYPED_HOOKS):
        # fsspec tests these with hasattr/getattr: inherited from any base
        # (methods or plain values alike), they would act unreviewed.
        if name in CMKFileSystem.__dict__ or not any(name in vars(base) for base in bases):
            continue
        inherited = getattr(CMKFileSystem, name)
        if callable(inherited) and not isinstance(inherited, type):
            setattr(CMKFileSystem, name, _refuser(name, unreviewed))
        else:
            setattr(CMKFileSystem, name, _refused_hook(name, unreviewed))


_fail_closed()
install_cache_guard()  # at import too, so the guard is in place before any cache is built
