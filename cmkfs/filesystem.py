"""``cmk://``: an fsspec filesystem that encrypts everything written through it.

Options, URLs, listings, the write contract and caching are described in
docs/FILESYSTEM.md.  What this module keeps in mind:

* it **delegates explicitly and fails closed**: every fsspec method is
  written out here, routed through methods written out here, or refused
  (:mod:`cmkfs.delegation`);
* plaintext leaves it only through file objects (:mod:`cmkfs.files`) and
  ``cat_file``/``get_file``; disk caches above it are refused
  (:mod:`cmkfs.cache_guard`);
* only key URIs and plain options travel in pickles, tokens and JSON.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import fsspec
from fsspec.callbacks import DEFAULT_CALLBACK
from fsspec.compression import compr
from fsspec.core import get_compression
from fsspec.implementations.chained import ChainedFileSystem
from fsspec.spec import make_instance
from fsspec.utils import isfilelike

from .cache_guard import check_not_cached, install_cache_guard
from .config import ENV_KEY, default_key_uri
from .delegation import DUCK_TYPED_HOOKS, META_METHODS, REFUSED_METHODS, ROUTED_METHODS, fail_closed
from .errors import ConfigurationError, FormatError, IntegrityError, UnsupportedOperationError, integrity_error_at
from .files import CMKReadFile, CMKTextReader, CMKTextWriter, CMKWriteFile, CompressedFile, PlaintextReader, _drop
from .format import DEFAULT_SEGMENT_SIZE, MAGIC, ContentClass, check_segment_size, looks_like_cmkfs
from .keycache import DEFAULT_CACHE_TTL, KeyCache, check_ttl, trusted_vault_hosts
from .policy import Policy, load_policy, policy_from_dict
from .providers.base import provider_factory
from .sizes import HeaderFacts, not_cmkfs_message
from .stream import DecryptingReader, RangeSource, reject_append
from .targets import PARTIAL_MARKER, is_partial_name, open_atomic_sink, open_range_source
from .transactions import CMKTransaction, TransactionError
from .wipe import wipe

if TYPE_CHECKING:
    from .rewrap import RewrapResult

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


def guess_content_class(path: str) -> ContentClass:
    """The content class recorded for ``path`` by its extension."""
    name = path.rstrip("/").rsplit("/", 1)[-1].lower()
    dot = name.rfind(".")
    return _EXTENSIONS.get(name[dot:], ContentClass.OTHER) if dot > 0 else ContentClass.OTHER


def _parse_content_class(value: object) -> ContentClass | None:
    if value is None:
        return None
    if isinstance(value, ContentClass):
        return value
    if isinstance(value, str):
        try:
            return ContentClass[value.upper()]
        except KeyError:
            names = [c.name.lower() for c in ContentClass]
            raise ConfigurationError(f"unknown content_class {value!r}: one of {names}") from None
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return ContentClass(value)
        except ValueError:
            raise ConfigurationError(f"unknown content_class {value!r}") from None
    raise ConfigurationError("content_class must be a ContentClass, its name or its number")


# -- the filesystem ---------------------------------------------------------------


class CMKFileSystem(ChainedFileSystem):  # type: ignore[misc]  # fsspec is untyped
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
        target_protocol: str | None = None,
        target_options: dict[str, Any] | None = None,
        fs: Any = None,
        key: str | None = None,
        cache_ttl: float | None = None,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        content_class: ContentClass | str | int | None = None,
        allow_plaintext_read: bool = False,
        threads: int | None = None,
        fsync: bool = True,
        trusted_vaults: Iterable[str] | None = None,
        policy: dict[str, Any] | None = None,
        override_policy: bool = False,
        key_provider_options: dict[str, dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> None:
        install_cache_guard()  # refuses to run if this fsspec cannot be guarded
        super().__init__(**kwargs)
        if fs is None and target_protocol is None:
            raise ValueError("provide a target filesystem (fs=) or target_protocol=")
        if fs is not None and target_protocol is not None:
            raise ValueError("provide either fs= or target_protocol=, not both")
        if key is not None and (not isinstance(key, str) or not key):
            # Only URIs travel in options: they end up in tokens, pickles and JSON.
            raise ConfigurationError("key must be a key URI string such as 'local://NAME'")
        if policy is None:
            self._policy = load_policy()
            default = os.environ.get(ENV_KEY) or self._policy.default_key
        else:
            # A snapshot that travelled with this filesystem (a pickle to a
            # Dask worker): the same keys there as here, whatever that
            # machine's own configuration says.
            self._policy = policy_from_dict(policy)
            default = self._policy.default_key
        self.override_policy = bool(override_policy)
        # Plain values only (they travel in pickles), checked now rather than at the first read.
        self._providers = provider_factory(key_provider_options, policy_azure=self._policy.azure)
        if cache_ttl is None:
            cache_ttl = self._policy.cache_ttl if self._policy.cache_ttl is not None else DEFAULT_CACHE_TTL
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
        # Hosts only (plain strings): they travel in tokens and pickles.  The
        # policy's vaults (and those of its capacities' keys) are trusted too.
        vaults = list(trusted_vaults or ()) + list(self._policy.trusted_vaults)
        vaults += [k for k in self._policy_keys() if k.startswith("https://")]
        self.trusted_vaults = tuple(trusted_vault_hosts(vaults)) if vaults else ()
        _refuse_pin_in_uri(key)
        _refuse_pin_in_uri(default)  # the resolved default travels in pickles too
        self._explicit_key = key
        self._default_key = default
        # None: read-only until a key is configured; writes say how to set one.
        self.key_uri = key or default
        if fs is not None:
            self.fs = fs
            if _is_azure_protocol(fs.protocol):
                from .targets.azure import check_blob_filesystem

                check_blob_filesystem(fs)  # no credentials or account: seconds and one line, not minutes
        elif _is_azure_protocol(target_protocol):
            from .targets.azure import open_blob_filesystem

            self.fs = open_blob_filesystem(str(target_protocol), **(target_options or {}))
        else:
            self.fs = fsspec.filesystem(target_protocol, **(target_options or {}))
        self.target_protocol = (
            target_protocol
            if isinstance(target_protocol, str)
            else (self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0])
        )
        self._key_lock = threading.Lock()
        self._key_caches: dict[str | None, KeyCache] = {}
        self._sizes = HeaderFacts(self.fs, allow_plaintext=self.allow_plaintext_read)

        strip_cmk = super()._strip_protocol

        def _strip_protocol(path: str) -> str:
            # Per instance, like fsspec's caching layers: strip "cmk://", then the target's own.
            return str(self.fs._strip_protocol(strip_cmk(path)))

        self._strip_protocol = _strip_protocol

    # -- plumbing that must never carry secrets -----------------------------

    def __repr__(self) -> str:
        return f"CMKFileSystem(key={self.key_uri!r}, target={self.target_protocol!r})"

    def _public_options(self) -> dict[str, Any]:
        opts = dict(self.storage_options)
        if opts.get("policy") is None:
            # The policy travels (key URIs and names only), so a worker writes
            # each path under the same key as this process would.
            opts["policy"] = self._policy_snapshot()
        return opts

    def _policy_snapshot(self) -> dict[str, Any]:
        snapshot = self._policy.to_json()
        if not self._policy.capacities:
            del snapshot["capacities"]
        if self.key_uri and not self._explicit_key:
            snapshot["default_key"] = self.key_uri  # the default resolved here ($CMKFS_KEY included)
        return snapshot

    def __reduce__(self) -> tuple[Any, ...]:
        return make_instance, (type(self), self.storage_args, self._public_options())

    def to_dict(self, *, include_password: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = super().to_dict(include_password=include_password)
        if out.get("policy") is None:
            out["policy"] = self._policy_snapshot()
        return out

    def start_transaction(self) -> CMKTransaction:
        """Begin a transaction, or join the one already open (see :class:`CMKTransaction`)."""
        transaction: CMKTransaction = self.transaction  # fsspec's property makes one if needed
        transaction.start()
        return transaction

    def end_transaction(self) -> None:
        """Leave the innermost :meth:`start_transaction`; the outermost publishes."""
        transaction: CMKTransaction = self.transaction
        transaction.end()

    @property
    def keys(self) -> KeyCache:
        """The key cache of this instance's key, created on first use (never
        pickled).  It reads files under any key; writes under a capacity's own
        key go through that key's cache (:meth:`keys_for`)."""
        return self.keys_for(self.key_uri)

    def keys_for(self, key_uri: str | None) -> KeyCache:
        """The key cache that writes under ``key_uri`` (one per key, per instance)."""
        cache = self._key_caches.get(key_uri)
        if cache is None:
            with self._key_lock:
                cache = self._key_caches.get(key_uri)
                if cache is None:
                    cache = KeyCache(
                        key_uri, ttl=self.cache_ttl, trusted_vaults=self.trusted_vaults, providers=self._providers
                    )
                    self._key_caches[key_uri] = cache
        return cache

    @property
    def policy(self) -> Policy:
        """The key policy this instance follows (loaded once, at construction)."""
        return self._policy

    def _policy_keys(self) -> list[str]:
        keys = [self._policy.key_for(c) for c in self._policy.capacities.values()]
        return [k for k in keys if k]

    def key_for_path(self, path: str) -> str | None:
        """The key a new file at ``path`` is written under: this filesystem's
        ``key`` if given, else its capacity's key (byok) or the tenant key.  A
        given key that contradicts the capacity's is refused unless
        ``override_policy=True``."""
        if not self._policy.capacities:
            return self.key_uri
        url = str(self.fs.unstrip_protocol(path))
        capacity = self._policy.capacity_for(url)
        if capacity is None:
            return self.key_uri
        # What the policy gives this path, whatever key= says: the capacity's
        # own key (byok) or the tenant key.
        wanted = capacity.key if self._policy.mode == "byok" and capacity.key else self._default_key
        if not self._explicit_key:
            return wanted
        if wanted and self._explicit_key != wanted and not self.override_policy:
            raise ConfigurationError(
                f"{path} is in capacity {capacity.name}, whose key is {wanted}, not {self._explicit_key}: "
                "drop key= to follow the policy, or pass override_policy=True to write under it anyway"
            )
        return self._explicit_key

    @property
    def fsid(self) -> str:
        return f"cmk-{self.fs.fsid}"

    # -- open -------------------------------------------------------------------

    # Paths here are not local files one could open directly (they hold
    # ciphertext): fsspec.open_local() and can_be_local() must say no.
    local_file = False

    def open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        cache_options: dict[str, Any] | None = None,
        compression: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """fsspec's ``open``, with wrappers that keep the write contract: text
        modes return a :class:`~cmkfs.files.CMKTextWriter` and
        ``compression=`` a :class:`~cmkfs.files.CompressedFile` that owns the
        encrypted file (fsspec's generic wrappers would publish a failed
        write from a finaliser, or never publish at all).  Inside
        ``with fs.transaction:`` writers default to ``autocommit=False``."""
        path = self._strip_protocol(path)
        if "b" not in mode:
            text_kwargs = {k: kwargs.pop(k) for k in ("encoding", "errors", "newline") if k in kwargs}
            binary = self.open(
                path,
                mode.replace("t", "") + "b",
                block_size=block_size,
                cache_options=cache_options,
                compression=compression,
                **kwargs,
            )
            if "r" in mode:
                return CMKTextReader(binary, **text_kwargs)
            return CMKTextWriter(binary, **text_kwargs)
        autocommit = kwargs.pop("autocommit", not self._intrans)
        f = self._open(
            path, mode=mode, block_size=block_size, autocommit=autocommit, cache_options=cache_options, **kwargs
        )
        codec = get_compression(path, compression) if compression is not None else None
        if codec is None:
            return f
        try:
            return CompressedFile(lambda inner: compr[codec](inner, mode=mode[0]), f)
        except BaseException:
            _drop(f)
            raise

    def open_many(self, open_files: Any, **kwargs: Any) -> list[Any]:
        """Entered by ``with fsspec.open_files(...) as files``: fsspec hands
        the files to the first filesystem down the chain that has this hook,
        which without it would be a cache *under* this layer, bypassing the
        encryption.  Each file opens through its own ``OpenFile``, i.e. through
        this filesystem's :meth:`open`."""
        try:
            files = [of.__enter__() for of in open_files]
        except BaseException:
            for of in open_files:
                for f in of.fobjects[:1]:  # the cmkfs file under any wrappers
                    _drop(f)
                of.fobjects.clear()
            raise
        return files

    def commit_many(self, open_files: Iterable[Any]) -> None:
        """Called by ``OpenFiles.__exit__`` after each ``OpenFile.__exit__`` has
        closed (or, on an exception, discarded) its file: close what is left
        through the same rule."""
        for f in open_files:
            if not f.closed:
                f.close()

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        autocommit: bool = True,
        cache_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> CMKReadFile | CMKWriteFile:
        path = self._strip_protocol(path)
        if "a" in mode:
            reject_append()
        if "+" in mode:
            raise UnsupportedOperationError(
                f"mode {mode!r}: encrypted files are opened for reading or for writing, not both"
            )
        if mode == "rb":
            return self._open_read(path, block_size=block_size, cache_options=cache_options, **kwargs)
        if mode in ("wb", "xb"):
            return self._open_write(path, exclusive=mode == "xb", autocommit=autocommit, **kwargs)
        raise ValueError(f"unsupported mode {mode!r}: use 'rb' or 'wb' (or text modes through open())")

    def _open_read(
        self,
        path: str,
        block_size: int | None = None,
        cache_options: dict[str, Any] | None = None,
        cache_type: str = "none",
        **kwargs: Any,
    ) -> CMKReadFile:
        # No fsspec read-ahead by default: the reader already fetches whole
        # segments and keeps the last run it opened (a segment-sized
        # read-ahead); an fsspec block on top would fetch a second segment
        # beyond every large read.
        reader, source = self._reader(path)
        try:
            return CMKReadFile(
                self,
                path,
                reader,
                source,
                block_size=block_size,
                cache_type=cache_type,
                cache_options=cache_options,
                **kwargs,
            )
        except BaseException:
            reader.close()
            source.close()
            raise

    def _open_write(
        self,
        path: str,
        exclusive: bool = False,
        autocommit: bool | None = None,
        content_class: ContentClass | str | int | None = None,
        metadata: dict[str, str] | None = None,
        **_ignored: Any,
    ) -> CMKWriteFile:
        """The one way a writer is made: inside a transaction it is sealed on
        close and handed to the transaction to publish."""
        key_uri = self.key_for_path(path)
        if key_uri is None:
            default_key_uri()  # raises the message that says how to configure a key
        if autocommit is None:
            autocommit = not self._intrans
        cls = _parse_content_class(content_class) or self.content_class or guess_content_class(path)
        sink = open_atomic_sink(self.fs, path, metadata=metadata, exclusive=exclusive, fsync=self.fsync)
        self._sizes.forget(path)
        f = CMKWriteFile(
            self,
            path,
            sink,
            self.keys_for(key_uri),
            segment_size=self.segment_size,
            content_class=cls,
            threads=self.threads,
            autocommit=autocommit,
        )
        if not autocommit and self._intrans:
            self.transaction.files.append(f)
        return f

    def _reader(self, path: str) -> tuple[DecryptingReader | PlaintextReader, RangeSource]:
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
                raise FormatError(not_cmkfs_message(path)) from None
            except IntegrityError as exc:
                raise integrity_error_at(path, exc) from None  # the fixed reason, and which file
        except BaseException:
            source.close()
            raise

    # -- content ----------------------------------------------------------------

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        path = self._strip_protocol(path)
        reader, source = self._reader(path)
        try:
            size = reader.size
            start = 0 if start is None else (max(0, size + start) if start < 0 else start)
            end = size if end is None else (max(0, size + end) if end < 0 else min(end, size))
            return reader.read(start, end - start) if end > start else b""
        except IntegrityError as exc:
            raise integrity_error_at(path, exc) from None
        finally:
            reader.close()
            source.close()

    def pipe_file(self, path: str, value: Any, mode: str = "overwrite", **kwargs: Any) -> None:
        if mode not in ("overwrite", "create"):
            raise ValueError(f"unsupported pipe mode {mode!r}")
        with self._open_write(self._strip_protocol(path), exclusive=mode == "create", **kwargs) as f:
            f.write(value)

    def put_file(
        self, lpath: str, rpath: str, callback: Any = DEFAULT_CALLBACK, mode: str = "overwrite", **kwargs: Any
    ) -> None:
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

    def get_file(
        self, rpath: str, lpath: Any, callback: Any = DEFAULT_CALLBACK, outfile: Any = None, **kwargs: Any
    ) -> None:
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
        except IntegrityError as exc:
            raise integrity_error_at(rpath, exc) from None
        finally:
            reader.close()
            source.close()
        return None

    def _copy_out(self, reader: DecryptingReader | PlaintextReader, out: Any, callback: Any) -> None:
        step = max(reader.segment_size, (_TRANSFER_CHUNK // reader.segment_size) * reader.segment_size)
        offset = 0
        while offset < reader.size:
            data = reader.read(offset, step)
            out.write(data)
            offset += len(data)
            callback.relative_update(len(data))

    def touch(self, path: str, truncate: bool = True, **kwargs: Any) -> None:
        path = self._strip_protocol(path)
        if truncate or not self.fs.exists(path):
            self.pipe_file(path, b"", **kwargs)  # an encrypted empty file, not a zero-byte one
        else:
            self.fs.touch(path, truncate=False, **kwargs)  # timestamp only
            self._sizes.forget(path)

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        # Ciphertext is copied as is: the path is not bound into the format.
        self.fs.cp_file(self._strip_protocol(path1), self._strip_protocol(path2), **kwargs)
        self._sizes.forget(path2)

    def mv(self, path1: str, path2: str, recursive: bool = False, maxdepth: int | None = None, **kwargs: Any) -> None:
        self.fs.mv(
            self._strip_protocol(path1), self._strip_protocol(path2), recursive=recursive, maxdepth=maxdepth, **kwargs
        )
        self._sizes.forget()

    def rewrap(
        self, path: str, key: str | None = None, recursive: bool = False, dry_run: bool = False
    ) -> RewrapResult | list[RewrapResult]:
        """Re-wrap the data key of ``path`` without re-encrypting it; see :mod:`cmkfs.rewrap`.
        Without ``key`` each file moves to the current version of the key it
        already names (never to this filesystem's key); ``key`` moves it to
        that key.  Returns a :class:`~cmkfs.rewrap.RewrapResult`, or with
        ``recursive`` a list of them (failed files carry ``error``)."""
        from .rewrap import rewrap_file, rewrap_tree

        if recursive:
            return list(rewrap_tree(self, path, key=key, dry_run=dry_run))
        return rewrap_file(self, path, key=key, dry_run=dry_run)

    # -- metadata, with exact plaintext sizes ----------------------------------

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        entries = self.fs.ls(self._strip_protocol(path), detail=True, **kwargs)
        entries = [e for e in entries if not is_partial_name(e["name"])]
        if not detail:
            return sorted(e["name"] for e in entries)
        return self._sizes.apply(entries)

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        entry = self.fs.info(self._strip_protocol(path), **kwargs)
        return self._sizes.apply([entry], listing=False)[0]

    def find(
        self, path: str, maxdepth: int | None = None, withdirs: bool = False, detail: bool = False, **kwargs: Any
    ) -> Any:
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
        sized = self._sizes.aligned(entries)  # aligned with names: a file deleted meanwhile is None
        return {name: entry for name, entry in sorted(zip(names, sized, strict=True)) if entry is not None}

    def du(
        self, path: str, total: bool = True, maxdepth: int | None = None, withdirs: bool = False, **kwargs: Any
    ) -> int | dict[str, int]:
        found = self.find(path, maxdepth=maxdepth, withdirs=withdirs, detail=True, **kwargs)
        sizes: dict[str, int] = {name: info.get("size") or 0 for name, info in found.items()}
        return sum(sizes.values()) if total else sizes

    def exists(self, path: str, **kwargs: Any) -> bool:
        return bool(self.fs.exists(self._strip_protocol(path), **kwargs))

    def isfile(self, path: str) -> bool:
        return bool(self.fs.isfile(self._strip_protocol(path)))

    def isdir(self, path: str) -> bool:
        return bool(self.fs.isdir(self._strip_protocol(path)))

    def created(self, path: str) -> Any:
        return self.fs.created(self._strip_protocol(path))

    def modified(self, path: str) -> Any:
        return self.fs.modified(self._strip_protocol(path))

    def checksum(self, path: str) -> Any:
        return self.fs.checksum(self._strip_protocol(path))

    def ukey(self, path: str) -> Any:
        return self.fs.ukey(self._strip_protocol(path))

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        self.fs.makedirs(self._strip_protocol(path), exist_ok=exist_ok)

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        self.fs.mkdir(self._strip_protocol(path), create_parents=create_parents, **kwargs)

    def rm(self, path: str | list[str], recursive: bool = False, maxdepth: int | None = None) -> None:
        if isinstance(path, (list, tuple)):
            path = [self._strip_protocol(p) for p in path]
        else:
            path = self._strip_protocol(path)
        self.fs.rm(path, recursive=recursive, maxdepth=maxdepth)
        self._sizes.forget()

    def rm_file(self, path: str) -> None:
        path = self._strip_protocol(path)
        self.fs.rm_file(path)
        self._sizes.forget(path)

    def rmdir(self, path: str) -> None:
        self.fs.rmdir(self._strip_protocol(path))

    def invalidate_cache(self, path: str | None = None) -> None:
        self.fs.invalidate_cache(None if path is None else self._strip_protocol(path))
        self._sizes.forget()


def _is_azure_protocol(protocol: object) -> bool:
    names = (protocol,) if isinstance(protocol, str) else tuple(protocol or ())  # type: ignore[arg-type]
    return any(name in ("abfs", "az", "abfss") for name in names)


def _refuse_pin_in_uri(key: str | None) -> None:
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


fail_closed(CMKFileSystem)
install_cache_guard()  # at import too, so the guard is in place before any cache is built
