"""Atomic writes and ranged reads on Azure Blob Storage (adlfs targets).

Imported lazily by :mod:`cmkfs.targets` for the ``abfs``, ``az`` and
``abfss`` protocols; it registers :func:`open_blob_sink` and
:func:`open_blob_source` for them.

Writes: uncommitted blocks
    A block blob is built from blocks: *Put Block* (``stage_block``) uploads
    a block that is invisible to every reader, and *Put Block List*
    (``commit_block_list``) publishes the listed blocks as the new content
    in one step.  :class:`AzureBlobSink` stages the ciphertext as it streams
    in blocks of ``block_size`` bytes (4 MiB by default, at most two in
    flight, so an open writer holds about 12 MiB whatever the file size),
    and commits the block list only in :meth:`~AzureBlobSink.commit`.
    Until then readers see the previous version of the blob, or nothing.
    :meth:`~AzureBlobSink.discard` commits nothing: the staged blocks hold
    ciphertext only and the service deletes uncommitted blocks by itself
    (after a week, or at the next commit to that blob).  A writer that is
    killed part-way therefore leaves the previous blob intact.  Block ids
    start with a random per-upload prefix, so two writers of the same path
    never commit each other's blocks.  A commit drops every block of the
    blob still uncommitted, so of two overlapping uploads the first commit
    wins and the other fails with ``OSError(EBUSY)``, publishing nothing.

Metadata: status without downloads
    The commit sets blob metadata describing the file, read from the
    header the writer streamed first (so it is always the truth about the
    bytes committed with it): ``cmkfs_format``, ``cmkfs_key_uri``,
    ``cmkfs_key_version``, ``cmkfs_plaintext_size``, ``cmkfs_segment_size``,
    ``cmkfs_header_length`` and ``cmkfs_content_class``.  None of it is
    secret (key URIs and versions name keys, they do not hold them).  Status
    and rotation tooling can list which key protects what, and file sizes,
    from a listing or :func:`blob_metadata` alone.  Metadata is *not*
    authenticated: anything that decides on security (which key to unwrap
    with, the plaintext length) reads the header, see
    :func:`read_blob_header`.

Reads: exact ranges
    :class:`AzureBlobSource` serves ``read_range(start, end)`` with one
    ranged *Get Blob* per call: no read-ahead (adlfs' own files read 50 MiB
    blocks ahead by default).  The first response pins the blob's ETag and
    later ranges are conditional on it, so a blob replaced while it is being
    read fails with an error instead of mixing two versions.  ``bytes_fetched``
    and ``requests`` count what was downloaded.

Clients
    adlfs talks to Azure through the asynchronous SDK.  This module builds a
    synchronous ``BlobServiceClient`` from the same settings (connection
    string, account key, SAS token, the synchronous twin of a service
    principal or default credential, or anonymous access).  When the
    filesystem was given an asynchronous credential that has no synchronous
    form, it drives adlfs' own asynchronous client on adlfs' event loop.

What is not atomic
    * Metadata is committed with the block list, in the same request; but
      a later :func:`set_blob_metadata` alone is a separate operation.
    * ``exclusive=True`` commits with ``If-None-Match: *``: creating is
      atomic, but the early existence check at open is only a courtesy.
    * Blob versions and snapshots are the account's business: with
      versioning enabled a commit keeps the previous version as a
      non-current version (ciphertext, under the same key hierarchy).
"""

from __future__ import annotations

import errno
import inspect
import os
import secrets
import threading
import weakref
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from urllib.parse import quote, unquote

from .errors import ConfigurationError, FormatError, IntegrityError
from .format import MAX_HEADER_SIZE, Header, header_length_from_prefix, plaintext_size
from .stream import HEADER_PROBE_SIZE

__all__ = [
    "PROTOCOLS",
    "DEFAULT_BLOCK_SIZE",
    "AzureBlobSink",
    "AzureBlobSource",
    "open_blob_sink",
    "open_blob_source",
    "blob_metadata",
    "set_blob_metadata",
    "read_header_range",
    "read_blob_header",
    "blob_client_for",
]

PROTOCOLS = ("abfs", "az", "abfss")
DEFAULT_BLOCK_SIZE = 4 * 1024 * 1024
MIN_BLOCK_SIZE = 64 * 1024
MAX_BLOCK_SIZE = 256 * 1024 * 1024  # the service takes up to 4000 MiB; memory is the real bound
MAX_BLOCKS = 50_000  # committed blocks per blob, a service limit
# Past this many blocks the block size grows, so a file of any size the
# service accepts fits in MAX_BLOCKS without making small files buffer more.
GROW_EVERY = 10_000
DEFAULT_MAX_INFLIGHT = 2
METADATA_PREFIX = "cmkfs_"
_INT_FIELDS = ("cmkfs_format", "cmkfs_plaintext_size", "cmkfs_segment_size", "cmkfs_header_length")
# Metadata values must be ASCII; key URIs may not be.  Percent-encode
# anything else (and "%" itself) so values round-trip exactly.
_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%")

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _uploads() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=max(2, min(8, 2 * (os.cpu_count() or 1))),
                                           thread_name_prefix="cmkfs-abfs")
        return _executor


def _forget_uploads() -> None:
    # In a forked child (cmkfs.forksafe): the pool's threads stayed in the
    # parent and a submit would wait for ever; the next use makes a new pool.
    global _executor
    _executor = None


# -- clients ---------------------------------------------------------------


def _azure_errors():
    from azure.core import exceptions

    return exceptions


def _translate(exc: BaseException, path: str, *, writing: bool = False) -> BaseException:
    """An Azure SDK error as the builtin a caller catches.

    Only the service's error code and status go into the message: SDK
    messages can quote request URLs, and those can carry SAS tokens.
    """
    ex = _azure_errors()
    status = getattr(getattr(exc, "response", None), "status_code", None) or getattr(exc, "status_code", None)
    code = getattr(exc, "error_code", None)
    if isinstance(exc, ex.ResourceNotFoundError) or status == 404:
        return FileNotFoundError(errno.ENOENT, f"no such blob or container ({code or status})", path)
    if isinstance(exc, ex.ResourceExistsError) or status == 409:
        if code in ("BlobAlreadyExists",) or writing:
            return FileExistsError(errno.EEXIST, f"blob exists ({code or status})", path)
    if isinstance(exc, ex.ResourceModifiedError) or status == 412:
        if writing:
            return FileExistsError(errno.EEXIST, "blob exists (create-only write)", path)
        return OSError(errno.ESTALE, "the blob was replaced while it was being read; open it again", path)
    if isinstance(exc, ex.ClientAuthenticationError) or status == 403:
        return PermissionError(errno.EACCES, f"access denied by Azure Storage ({code or status})", path)
    if status == 400 and code == "InvalidBlockList":
        return OSError(errno.EBUSY, "another writer committed this blob first; nothing was written", path)
    if status == 416:
        return IntegrityError()  # a range past the end: the blob is shorter than it claimed
    if isinstance(exc, (ex.ServiceRequestError, ex.ServiceResponseError)):
        return ConnectionError(errno.ECONNREFUSED, "cannot reach Azure Storage", path)
    return OSError(errno.EIO, f"Azure Storage request failed ({code or status or type(exc).__name__})", path)


def _is_async_credential(credential) -> bool:
    get_token = getattr(credential, "get_token", None)
    return get_token is not None and inspect.iscoroutinefunction(get_token)


def _sync_service_client(fs):
    """A synchronous BlobServiceClient with ``fs``'s settings, or None if only
    an asynchronous credential is available."""
    from azure.storage.blob import BlobServiceClient

    connection_string = getattr(fs, "connection_string", None)
    if connection_string:
        return BlobServiceClient.from_connection_string(connection_string)
    name = getattr(fs, "account_name", None)
    if not name:
        raise ConfigurationError("the abfs filesystem has neither a connection string nor an account name")
    url = getattr(fs, "account_url", None)
    if not url:
        host = getattr(fs, "account_host", None)
        url = f"https://{host}" if host else f"https://{name}.blob.core.windows.net"
    credential = None
    if getattr(fs, "sync_credential", None) is not None:
        credential = fs.sync_credential  # adlfs made both forms of its own credential
    elif getattr(fs, "credential", None) is not None:
        if _is_async_credential(fs.credential):
            return None
        credential = fs.credential
    elif getattr(fs, "account_key", None):
        credential = {"account_name": name, "account_key": fs.account_key}
    elif getattr(fs, "sas_token", None):
        sas = fs.sas_token
        url = url + (sas if sas.startswith("?") else "?" + sas)
    return BlobServiceClient(url, credential=credential)


_CLIENTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_CLIENTS_LOCK = threading.Lock()


def _service_for(fs):
    # Per process: an HTTP connection pool must not cross a fork.
    with _CLIENTS_LOCK:
        try:
            cached = _CLIENTS.get(fs)
        except TypeError:
            cached = None
        if cached is not None and cached[0] == os.getpid():
            return cached[1]
        client = _sync_service_client(fs)
        try:
            _CLIENTS[fs] = (os.getpid(), client)
        except TypeError:
            pass
        return client


def _version_of(props) -> tuple[str, int | None]:
    """``(etag, whole blob size)`` of a ranged download.

    The downloader reports the range's length as ``size``; the blob's own
    size is the total in ``Content-Range`` (``bytes 0-4095/20972994``).
    """
    total = None
    content_range = getattr(props, "content_range", None)
    if content_range and "/" in content_range:
        tail = content_range.rsplit("/", 1)[1]
        if tail.isdigit():
            total = int(tail)
    return props.etag, total


class _SyncBlob:
    """One blob through the synchronous SDK."""

    def __init__(self, client) -> None:
        self._c = client

    def stage(self, block_id: str, data) -> None:
        self._c.stage_block(block_id, data, length=len(data))

    def commit(self, block_ids: list[str], metadata: dict, exclusive: bool) -> None:
        from azure.core import MatchConditions
        from azure.storage.blob import BlobBlock

        kwargs = {"match_condition": MatchConditions.IfMissing} if exclusive else {}
        self._c.commit_block_list([BlobBlock(i) for i in block_ids], metadata=metadata, **kwargs)

    def download(self, offset: int, length: int, etag: str | None, version_id: str | None):
        from azure.core import MatchConditions

        kwargs = {"etag": etag, "match_condition": MatchConditions.IfNotModified} if etag else {}
        if version_id:
            kwargs["version_id"] = version_id
        stream = self._c.download_blob(offset=offset, length=length, max_concurrency=1, **kwargs)
        return stream.readall(), _version_of(stream.properties)

    def properties(self, version_id: str | None = None):
        return self._c.get_blob_properties(**({"version_id": version_id} if version_id else {}))

    def set_metadata(self, metadata: dict, etag: str | None) -> None:
        from azure.core import MatchConditions

        kwargs = {"etag": etag, "match_condition": MatchConditions.IfNotModified} if etag else {}
        self._c.set_blob_metadata(metadata, **kwargs)


class _AdlfsBlob(_SyncBlob):
    """One blob through adlfs' own asynchronous client, on adlfs' event loop."""

    def __init__(self, fs, container: str, blob: str) -> None:
        from fsspec.asyn import sync

        self._sync = lambda coro_fn, *a, **kw: sync(fs.loop, coro_fn, *a, **kw)
        self._c = fs.service_client.get_blob_client(container, blob)

    def stage(self, block_id: str, data) -> None:
        self._sync(self._c.stage_block, block_id, data, length=len(data))

    def commit(self, block_ids, metadata, exclusive) -> None:
        from azure.core import MatchConditions
        from azure.storage.blob import BlobBlock

        kwargs = {"match_condition": MatchConditions.IfMissing} if exclusive else {}
        self._sync(self._c.commit_block_list, [BlobBlock(i) for i in block_ids], metadata=metadata, **kwargs)

    def download(self, offset, length, etag, version_id):
        from azure.core import MatchConditions

        kwargs = {"etag": etag, "match_condition": MatchConditions.IfNotModified} if etag else {}
        if version_id:
            kwargs["version_id"] = version_id

        async def fetch():
            stream = await self._c.download_blob(offset=offset, length=length, max_concurrency=1, **kwargs)
            return await stream.readall(), _version_of(stream.properties)

        return self._sync(fetch)

    def properties(self, version_id=None):
        return self._sync(self._c.get_blob_properties, **({"version_id": version_id} if version_id else {}))

    def set_metadata(self, metadata, etag) -> None:
        from azure.core import MatchConditions

        kwargs = {"etag": etag, "match_condition": MatchConditions.IfNotModified} if etag else {}
        self._sync(self._c.set_blob_metadata, metadata, **kwargs)


def _split(fs, path: str) -> tuple[str, str, str | None]:
    container, blob, version_id = fs.split_path(path)
    if not container or not blob:
        raise IsADirectoryError(errno.EISDIR, "not a blob path (container/name)", path)
    return container, blob, version_id


def blob_client_for(fs, path: str, *, use_adlfs_client: bool = False):
    """``(blob operations, version_id)`` for ``path`` on the adlfs filesystem ``fs``.

    ``use_adlfs_client`` forces adlfs' asynchronous client (what is used
    anyway when the filesystem only holds an asynchronous credential).
    """
    container, blob, version_id = _split(fs, path)
    service = None if use_adlfs_client else _service_for(fs)
    if service is None:
        return _AdlfsBlob(fs, container, blob), version_id
    return _SyncBlob(service.get_blob_client(container, blob)), version_id


# -- metadata ----------------------------------------------------------------


def _encode_value(value) -> str:
    return quote(str(value), safe=_SAFE)


def header_metadata(header: Header, header_length: int, ciphertext_size: int) -> dict[str, str]:
    """The ``cmkfs_*`` metadata describing a file with this header and size."""
    params = header.params
    return {
        "cmkfs_format": str(params.version),
        "cmkfs_key_uri": _encode_value(header.key_block.key_uri),
        "cmkfs_key_version": _encode_value(header.key_block.key_version),
        "cmkfs_plaintext_size": str(plaintext_size(ciphertext_size, header_length, params.segment_size)),
        "cmkfs_segment_size": str(params.segment_size),
        "cmkfs_header_length": str(header_length),
        "cmkfs_content_class": params.content_class.name.lower(),
    }


def decode_metadata(raw: dict | None) -> dict:
    """The ``cmkfs_*`` entries of a blob's metadata, decoded (numbers as ints).

    Empty for a blob cmkfs did not write.  Unauthenticated: a hint for
    listings and tooling, never a basis for a security decision.
    """
    out: dict = {}
    for name, value in (raw or {}).items():
        lname = name.lower()  # the service treats metadata names case-insensitively
        if not lname.startswith(METADATA_PREFIX):
            continue
        text = unquote(value)
        if lname in _INT_FIELDS:
            try:
                out[lname] = int(text)
            except ValueError:
                continue  # not ours, or damaged: drop rather than guess
        else:
            out[lname] = text
    return out


def blob_metadata(fs, path: str) -> dict:
    """The decoded ``cmkfs_*`` metadata of the blob at ``path`` (one HEAD request)."""
    ops, version_id = blob_client_for(fs, path)
    try:
        props = ops.properties(version_id)
    except Exception as exc:
        if _is_azure_error(exc):
            raise _translate(exc, path) from exc
        raise
    return decode_metadata(props.metadata)


def set_blob_metadata(fs, path: str, header: Header, *, etag: str | None = None) -> None:
    """Rewrite the ``cmkfs_*`` metadata from ``header`` (e.g. after a key
    rotation rewrote it), keeping every other metadata entry.

    A separate request from the content's commit: pass the ``etag`` the
    header was read from so a blob replaced meanwhile is left alone.
    """
    ops, version_id = blob_client_for(fs, path)
    if version_id:
        raise ValueError("cannot set metadata on a blob version")
    try:
        props = ops.properties()
        keep = {k: v for k, v in (props.metadata or {}).items() if not k.lower().startswith(METADATA_PREFIX)}
        keep.update(header_metadata(header, header.length, props.size))
        ops.set_metadata(keep, etag or props.etag)
    except Exception as exc:
        if _is_azure_error(exc):
            raise _translate(exc, path) from exc
        raise


def _is_azure_error(exc: BaseException) -> bool:
    return isinstance(exc, _azure_errors().AzureError)


# -- the sink ----------------------------------------------------------------


class AzureBlobSink:
    """Stage ciphertext as uncommitted blocks; publish them on :meth:`commit`.

    Nothing is visible at ``path`` before ``commit()`` returns; after
    ``discard()`` (or a crash) the previous blob, if any, is unchanged.
    """

    def __init__(self, fs, path: str, metadata: dict | None = None, *, exclusive: bool = False,
                 block_size: int = DEFAULT_BLOCK_SIZE, max_inflight: int = DEFAULT_MAX_INFLIGHT,
                 use_adlfs_client: bool = False) -> None:
        if not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE:
            raise ConfigurationError(f"block_size must be between {MIN_BLOCK_SIZE} and {MAX_BLOCK_SIZE} bytes")
        self.path = path
        self._ops, version_id = blob_client_for(fs, path, use_adlfs_client=use_adlfs_client)
        if version_id:
            raise ValueError("cannot write to a blob version")
        self._exclusive = exclusive
        self._extra = {str(k): _encode_value(v) for k, v in (metadata or {}).items()}
        self._block_size = block_size
        self._max_inflight = max(1, max_inflight)
        # Random per upload: concurrent writers of one path never share block ids.
        self._id_prefix = secrets.token_hex(8)
        self._ids: list[str] = []
        self._buf = bytearray()
        self._pending: deque[Future] = deque()
        self._head = bytearray()  # the first bytes: the header, parsed for metadata at commit
        self.bytes_written = 0
        self._state = "open"
        if exclusive:
            self._check_absent()

    def __repr__(self) -> str:
        return f"AzureBlobSink(path={self.path!r}, {self._state}, {self.bytes_written} bytes)"

    def __reduce__(self):
        raise TypeError("an open AzureBlobSink cannot be pickled")

    def _check_absent(self) -> None:
        try:
            self._ops.properties()
        except Exception as exc:
            if _is_azure_error(exc) and isinstance(_translate(exc, self.path), FileNotFoundError):
                return
            if _is_azure_error(exc):
                raise _translate(exc, self.path) from exc
            raise
        raise FileExistsError(errno.EEXIST, "blob exists", self.path)

    def write(self, data) -> int:
        if self._state != "open":
            raise ValueError("write to a committed or discarded sink")
        view = memoryview(data).cast("B")
        n = len(view)
        if len(self._head) < MAX_HEADER_SIZE:
            self._head += view[: MAX_HEADER_SIZE - len(self._head)]
        while len(view):
            take = min(len(view), self._current_block_size() - len(self._buf))
            self._buf += view[:take]
            view = view[take:]
            if len(self._buf) >= self._current_block_size():
                self._stage_buffer()
        self.bytes_written += n
        return n

    def _current_block_size(self) -> int:
        return min(MAX_BLOCK_SIZE, self._block_size * (1 + len(self._ids) // GROW_EVERY))

    def _stage_buffer(self) -> None:
        if len(self._ids) >= MAX_BLOCKS:
            raise OSError(errno.EFBIG, "file too large for one block blob", self.path)
        block, self._buf = self._buf, bytearray()
        block_id = f"{self._id_prefix}-{len(self._ids):06d}"  # equal lengths: the service requires it
        self._ids.append(block_id)
        self._pending.append(_uploads().submit(self._ops.stage, block_id, bytes(block)))
        # Bounded memory: at most max_inflight blocks uploading, one filling.
        while len(self._pending) >= self._max_inflight:
            self._wait_one()

    def _wait_one(self) -> None:
        future = self._pending.popleft()
        try:
            future.result()
        except Exception as exc:
            if _is_azure_error(exc):
                raise _translate(exc, self.path, writing=True) from exc
            raise

    def _metadata(self) -> dict[str, str]:
        meta = dict(self._extra)
        try:
            header_len = header_length_from_prefix(bytes(self._head))
            header = Header.decode(bytes(self._head[:header_len]))
            meta.update(header_metadata(header, header_len, self.bytes_written))
        except (FormatError, IntegrityError):
            pass  # not a cmkfs stream: the caller's metadata only
        return meta

    def commit(self) -> None:
        """Upload what is buffered and publish the blob with its metadata."""
        if self._state == "committed":
            return
        if self._state != "open":
            raise ValueError("commit of a discarded sink")
        try:
            if self._buf:
                self._stage_buffer()  # (an empty list commits an empty blob: no empty block)
            while self._pending:
                self._wait_one()
            try:
                self._ops.commit(self._ids, self._metadata(), self._exclusive)
            except Exception as exc:
                if _is_azure_error(exc):
                    raise _translate(exc, self.path, writing=True) from exc
                raise
        except BaseException:
            self.discard()
            raise
        self._state = "committed"
        self._buf = bytearray()

    def discard(self) -> None:
        """Publish nothing.  Staged blocks are left for the service to collect."""
        if self._state != "open":
            return
        self._state = "discarded"
        self._buf = bytearray()
        self._head = bytearray()
        for future in self._pending:
            future.cancel()
        for future in self._pending:
            if not future.cancelled():
                try:
                    future.result()
                except Exception:  # noqa: BLE001 - discarding anyway
                    pass
        self._pending.clear()

    # No close(): a generic "close what you opened" path must never publish
    # a stream that failed part-way.  Callers say commit() or discard().


# -- the source --------------------------------------------------------------


class AzureBlobSource:
    """Ranged reads of one blob version: one *Get Blob* per ``read_range``.

    ``bytes_fetched`` and ``requests`` count the downloads (and the
    properties request made when ``size`` is not given).
    """

    def __init__(self, fs, path: str, size: int | None = None, *, use_adlfs_client: bool = False) -> None:
        self.path = path
        self._ops, self._version_id = blob_client_for(fs, path, use_adlfs_client=use_adlfs_client)
        self._lock = threading.Lock()
        self._etag: str | None = None
        self.bytes_fetched = 0
        self.requests = 0
        if size is None:
            props = self._call(self._ops.properties, self._version_id)
            self._etag = props.etag
            self.metadata = decode_metadata(props.metadata)
            size = props.size
        else:
            self.metadata = None
        self.size = int(size)

    def __repr__(self) -> str:
        return f"AzureBlobSource(path={self.path!r}, size={self.size})"

    def _call(self, fn, *args):
        with self._lock:
            self.requests += 1
        try:
            return fn(*args)
        except Exception as exc:
            if _is_azure_error(exc):
                raise _translate(exc, self.path) from exc
            raise

    def read_range(self, start: int, end: int):
        if start < 0 or start > end or end > self.size:
            raise ValueError("range outside the blob")
        if start == end:
            return b""
        data, (etag, total) = self._call(self._ops.download, start, end - start, self._etag, self._version_id)
        with self._lock:
            self.bytes_fetched += len(data)
            if self._etag is None:
                # The first response fixes the version read from now on.
                self._etag = etag
                if total is not None and total != self.size:
                    raise OSError(errno.ESTALE, "the blob changed size since it was listed; open it again", self.path)
        if len(data) != end - start:
            raise IntegrityError()  # shorter than its size: truncated under us
        return data

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# -- header only -------------------------------------------------------------


def read_header_range(fs, path: str) -> bytes:
    """The header bytes of the cmkfs file at ``path``: usually one request of
    at most 4 KiB, never any payload beyond that."""
    source = AzureBlobSource(fs, path, size=None)
    probe = bytes(source.read_range(0, min(source.size, HEADER_PROBE_SIZE)))
    header_len = header_length_from_prefix(probe)
    if header_len > source.size:
        raise IntegrityError()
    if header_len > len(probe):
        probe += bytes(source.read_range(len(probe), header_len))
    return probe[:header_len]


def read_blob_header(fs, path: str) -> Header:
    """The decoded (checksummed, not yet key-verified) header of ``path``."""
    return Header.decode(read_header_range(fs, path))


# -- registration --------------------------------------------------------------


def _is_adlfs(fs) -> bool:
    return callable(getattr(fs, "split_path", None)) and hasattr(fs, "service_client")


def open_blob_sink(fs, path: str, metadata: dict | None = None, exclusive: bool = False, **options):
    """Sink factory for :func:`cmkfs.targets.register_target`."""
    if not _is_adlfs(fs):
        from .targets import FsspecSink

        return FsspecSink(fs, path, metadata=metadata, exclusive=exclusive)
    return AzureBlobSink(fs, path, metadata, exclusive=exclusive, **options)


def open_blob_source(fs, path: str, size: int | None = None, **options):
    """Source factory for :func:`cmkfs.targets.register_target`."""
    if not _is_adlfs(fs):
        from .targets import CatFileSource

        return CatFileSource(fs, path, size=size)
    return AzureBlobSource(fs, path, size=size, **options)


def _register() -> None:
    from .targets import register_target

    register_target(PROTOCOLS, sink_factory=open_blob_sink, source_factory=open_blob_source)


_register()
