"""Azure Blob Storage (adlfs filesystems): staged blocks, one commit; exact ranged reads.

Imported by :mod:`cmkfs.targets` on first use of an ``abfs``, ``az`` or
``abfss`` filesystem; registers :func:`open_blob_sink` and
:func:`open_blob_source` for them.  What a writer, a reader and the blob
metadata promise is in docs/AZURE_BLOB.md.

The sink stages ciphertext with *Put Block* (invisible to readers) and
publishes it with one *Put Block List* in :meth:`AzureBlobSink.commit`,
together with ``cmkfs_*`` metadata taken from the header it streamed.  The
source pins the ETag of its first response, so a blob replaced mid-read fails
instead of mixing versions.  Both talk through a synchronous SDK client built
from the adlfs filesystem's settings, or through adlfs' own asynchronous
client when only an asynchronous credential is available.

SDK errors become builtins at one boundary, :func:`_storage_errors`, by the
table :data:`_ERRORS`.
"""

from __future__ import annotations

import inspect
import os
import secrets
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from errno import EACCES, EBUSY, ECONNREFUSED, EEXIST, EFBIG, EIO, EISDIR, ENOENT, ESTALE
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any, NoReturn, Protocol
from urllib.parse import quote, unquote

from fsspec.spec import AbstractFileSystem

from ..azure_preflight import STORAGE_ACCOUNT_FIX, check_reachable, check_token, once
from ..errors import ConfigurationError, FormatError, IntegrityError
from ..format import MAX_HEADER_SIZE, Header, plaintext_size
from ..secret import BytesLike
from ..stream import BytesSource, RangeSource, read_header
from . import METADATA_PREFIX, AtomicSink, StoredMetadata, register_target
from .generic import CatFileSource, FsspecSink

if TYPE_CHECKING:
    from azure.storage.blob import BlobClient, BlobProperties, BlobServiceClient

__all__ = [
    "PROTOCOLS",
    "DEFAULT_BLOCK_SIZE",
    "AzureBlobSink",
    "AzureBlobSource",
    "BlobOps",
    "open_blob_sink",
    "open_blob_source",
    "blob_metadata",
    "set_blob_metadata",
    "header_metadata",
    "decode_metadata",
    "blob_client_for",
    "check_blob_filesystem",
    "open_blob_filesystem",
]

PROTOCOLS = ("abfs", "az", "abfss")
STORAGE_SCOPE = "https://storage.azure.com/.default"
PREFLIGHT_REQUEST_TIMEOUT = 5  # seconds for the one authenticated request of the preflight
# What adlfs reads from the environment when no option names the account.
_ACCOUNT_ENV = ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT_NAME")
DEFAULT_BLOCK_SIZE = 4 * 1024 * 1024
MIN_BLOCK_SIZE = 64 * 1024
MAX_BLOCK_SIZE = 256 * 1024 * 1024  # the service takes up to 4000 MiB; memory is the real bound
MAX_BLOCKS = 50_000  # committed blocks per blob, a service limit
# Past this many blocks the block size grows, so a file of any size the
# service accepts fits in MAX_BLOCKS without making small files buffer more.
GROW_EVERY = 10_000
DEFAULT_MAX_INFLIGHT = 2
_INT_FIELDS = ("cmkfs_format", "cmkfs_plaintext_size", "cmkfs_segment_size", "cmkfs_header_length")
# Metadata values must be ASCII; key URIs may not be.  Percent-encode
# anything else (and "%" itself) so values round-trip exactly.
_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%")

# -- errors ------------------------------------------------------------------

# Errors raised with no HTTP answer at all, as a pseudo status.
NO_RESPONSE = 0
# SDK exception types (azure.core.exceptions), as the status they stand for:
# some are raised without a response to read the status from.
_SDK_TYPE_STATUS = {
    "ResourceNotFoundError": 404,
    "ResourceExistsError": 409,
    "ResourceModifiedError": 412,
    "ClientAuthenticationError": 403,
    "ServiceRequestError": NO_RESPONSE,
    "ServiceResponseError": NO_RESPONSE,
}
# Azure Storage errors as the builtins a caller catches; the first row that
# matches wins.  Columns: status, only this service error code, only when
# writing (True) or reading (False), the exception, its errno, its message.
# "{reason}" is the service's error code, else the status: never the SDK's
# message, which can quote the request URL and so a SAS token.
_ERRORS: tuple[tuple[int, str | None, bool | None, type[Exception], int | None, str | None], ...] = (
    (404, None, None, FileNotFoundError, ENOENT, "no such blob or container ({reason})"),
    (409, "BlobAlreadyExists", None, FileExistsError, EEXIST, "blob exists ({reason})"),
    (409, None, True, FileExistsError, EEXIST, "blob exists ({reason})"),
    (412, None, True, FileExistsError, EEXIST, "blob exists (create-only write)"),
    (412, None, False, OSError, ESTALE, "the blob was replaced while it was being read; open it again"),
    (403, None, None, PermissionError, EACCES, "access denied by Azure Storage ({reason})"),
    (400, "InvalidBlockList", None, OSError, EBUSY, "another writer committed this blob first; nothing was written"),
    (416, None, None, IntegrityError, None, None),  # a range past the end: the blob is shorter than it claimed
    (NO_RESPONSE, None, None, ConnectionError, ECONNREFUSED, "cannot reach Azure Storage"),
)


def _azure_errors() -> ModuleType:
    from azure.core import exceptions

    return exceptions


def _translate(exc: Exception, path: str, *, writing: bool = False) -> Exception:
    """The builtin for the Azure SDK error ``exc``, by :data:`_ERRORS`."""
    sdk = _azure_errors()
    status = getattr(getattr(exc, "response", None), "status_code", None) or getattr(exc, "status_code", None)
    code = getattr(exc, "error_code", None)
    statuses = {status} | {s for name, s in _SDK_TYPE_STATUS.items() if isinstance(exc, getattr(sdk, name))}
    for row_status, row_code, row_writing, raises, err, message in _ERRORS:
        if row_status not in statuses or row_code not in (None, code) or row_writing not in (None, writing):
            continue
        if err is None or message is None:
            return raises()
        return raises(err, message.format(reason=code or status), path)
    return OSError(EIO, f"Azure Storage request failed ({code or status or type(exc).__name__})", path)


@contextmanager
def _storage_errors(path: str, *, writing: bool = False) -> Iterator[None]:
    """Re-raise an Azure SDK error from the block as its builtin (``from`` the original)."""
    try:
        yield
    except Exception as exc:
        if not isinstance(exc, _azure_errors().AzureError):
            raise
        raise _translate(exc, path, writing=writing) from exc


# -- clients ---------------------------------------------------------------

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _uploads() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            workers = max(2, min(8, 2 * (os.cpu_count() or 1)))
            _executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cmkfs-abfs")
        return _executor


def _forget_uploads() -> None:
    # In a forked child (cmkfs.forksafe): the pool's threads stayed in the
    # parent and a submit would wait for ever; the next use makes a new pool.
    global _executor
    _executor = None


def _is_async_credential(credential: object) -> bool:
    get_token = getattr(credential, "get_token", None)
    return get_token is not None and inspect.iscoroutinefunction(get_token)


def _sync_service_client(fs: AbstractFileSystem) -> BlobServiceClient | None:
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


_CLIENTS: weakref.WeakKeyDictionary[AbstractFileSystem, tuple[int, BlobServiceClient | None]] = (
    weakref.WeakKeyDictionary()
)
_CLIENTS_LOCK = threading.Lock()


def _service_for(fs: AbstractFileSystem) -> BlobServiceClient | None:
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


# (ETag, whole blob size) of one download.
Version = tuple[str, int | None]


def _version_of(props: BlobProperties) -> Version:
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


def _if_match(etag: str | None) -> dict[str, Any]:
    from azure.core import MatchConditions

    return {"etag": etag, "match_condition": MatchConditions.IfNotModified} if etag else {}


def _if_missing(exclusive: bool) -> dict[str, Any]:
    from azure.core import MatchConditions

    return {"match_condition": MatchConditions.IfMissing} if exclusive else {}


class BlobOps(Protocol):
    """The few operations on one blob that the sink and source use."""

    def stage(self, block_id: str, data: bytes) -> None: ...

    def commit(self, block_ids: list[str], metadata: dict[str, str], exclusive: bool) -> None: ...

    def download(self, offset: int, length: int, etag: str | None, version_id: str | None) -> tuple[bytes, Version]: ...

    def properties(self, version_id: str | None = None) -> BlobProperties: ...

    def set_metadata(self, metadata: dict[str, str], etag: str | None) -> None: ...


class _SyncBlob:
    """One blob through the synchronous SDK."""

    def __init__(self, client: BlobClient) -> None:
        self._c = client

    def stage(self, block_id: str, data: bytes) -> None:
        self._c.stage_block(block_id, data, length=len(data))

    def commit(self, block_ids: list[str], metadata: dict[str, str], exclusive: bool) -> None:
        from azure.storage.blob import BlobBlock

        self._c.commit_block_list([BlobBlock(i) for i in block_ids], metadata=metadata, **_if_missing(exclusive))

    def download(self, offset: int, length: int, etag: str | None, version_id: str | None) -> tuple[bytes, Version]:
        kwargs = _if_match(etag)
        if version_id:
            kwargs["version_id"] = version_id
        stream = self._c.download_blob(offset=offset, length=length, max_concurrency=1, encoding=None, **kwargs)
        return stream.readall(), _version_of(stream.properties)

    def properties(self, version_id: str | None = None) -> BlobProperties:
        if version_id:
            return self._c.get_blob_properties(version_id=version_id)
        return self._c.get_blob_properties()

    def set_metadata(self, metadata: dict[str, str], etag: str | None) -> None:
        self._c.set_blob_metadata(metadata, **_if_match(etag))


class _AdlfsBlob:
    """One blob through adlfs' own asynchronous client, on adlfs' event loop."""

    def __init__(self, fs: AbstractFileSystem, container: str, blob: str) -> None:
        self._fs = fs
        self._c = fs.service_client.get_blob_client(container, blob)  # adlfs: azure.storage.blob.aio

    def _run(self, coro_fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        from fsspec.asyn import sync

        return sync(self._fs.loop, coro_fn, *args, **kwargs)

    def stage(self, block_id: str, data: bytes) -> None:
        self._run(self._c.stage_block, block_id, data, length=len(data))

    def commit(self, block_ids: list[str], metadata: dict[str, str], exclusive: bool) -> None:
        from azure.storage.blob import BlobBlock

        blocks = [BlobBlock(i) for i in block_ids]
        self._run(self._c.commit_block_list, blocks, metadata=metadata, **_if_missing(exclusive))

    def download(self, offset: int, length: int, etag: str | None, version_id: str | None) -> tuple[bytes, Version]:
        kwargs = _if_match(etag)
        if version_id:
            kwargs["version_id"] = version_id

        async def fetch() -> tuple[bytes, Version]:
            stream = await self._c.download_blob(offset=offset, length=length, max_concurrency=1, **kwargs)
            return await stream.readall(), _version_of(stream.properties)

        result: tuple[bytes, Version] = self._run(fetch)
        return result

    def properties(self, version_id: str | None = None) -> BlobProperties:
        props: BlobProperties = self._run(
            self._c.get_blob_properties, **({"version_id": version_id} if version_id else {})
        )
        return props

    def set_metadata(self, metadata: dict[str, str], etag: str | None) -> None:
        self._run(self._c.set_blob_metadata, metadata, **_if_match(etag))


def _split(fs: AbstractFileSystem, path: str) -> tuple[str, str, str | None]:
    container, blob, version_id = fs.split_path(path)
    if not container or not blob:
        raise IsADirectoryError(EISDIR, "not a blob path (container/name)", path)
    return container, blob, version_id


def blob_client_for(fs: AbstractFileSystem, path: str, *, use_adlfs_client: bool = False) -> tuple[BlobOps, str | None]:
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


def _encode_value(value: object) -> str:
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


def decode_metadata(raw: Mapping[str, str] | None) -> dict[str, int | str]:
    """The ``cmkfs_*`` entries of a blob's metadata, decoded (numbers as ints).

    Empty for a blob cmkfs did not write.  Unauthenticated: a hint for
    listings and tooling, never a basis for a security decision.
    """
    out: dict[str, int | str] = {}
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


def blob_metadata(fs: AbstractFileSystem, path: str) -> dict[str, int | str]:
    """The decoded ``cmkfs_*`` metadata of the blob at ``path`` (one HEAD request)."""
    ops, version_id = blob_client_for(fs, path)
    with _storage_errors(path):
        props = ops.properties(version_id)
    return decode_metadata(props.metadata)


def set_blob_metadata(fs: AbstractFileSystem, path: str, header: Header, *, etag: str | None = None) -> None:
    """Rewrite the ``cmkfs_*`` metadata from ``header`` (e.g. after a key
    rotation rewrote it), keeping every other metadata entry.

    A separate request from the content's commit: pass the ``etag`` the
    header was read from so a blob replaced meanwhile is left alone.
    """
    ops, version_id = blob_client_for(fs, path)
    if version_id:
        raise ValueError("cannot set metadata on a blob version")
    with _storage_errors(path):
        props = ops.properties()
        keep = {k: v for k, v in (props.metadata or {}).items() if not k.lower().startswith(METADATA_PREFIX)}
        keep.update(header_metadata(header, header.length, props.size))
        ops.set_metadata(keep, etag or props.etag)


# -- the sink ----------------------------------------------------------------


class AzureBlobSink:
    """Stage ciphertext as uncommitted blocks; publish them on :meth:`commit`.

    Nothing is visible at ``path`` before ``commit()`` returns; after
    ``discard()`` (or a crash) the previous blob, if any, is unchanged.
    """

    def __init__(
        self,
        fs: AbstractFileSystem,
        path: str,
        metadata: Mapping[str, object] | None = None,
        *,
        exclusive: bool = False,
        block_size: int = DEFAULT_BLOCK_SIZE,
        max_inflight: int = DEFAULT_MAX_INFLIGHT,
        use_adlfs_client: bool = False,
    ) -> None:
        if not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE:
            raise ConfigurationError(f"block_size must be between {MIN_BLOCK_SIZE} and {MAX_BLOCK_SIZE} bytes")
        self.path = path
        self._ops, version_id = blob_client_for(fs, path, use_adlfs_client=use_adlfs_client)
        if version_id:
            raise ValueError("cannot write to a blob version")
        self._exclusive = exclusive
        if isinstance(metadata, StoredMetadata):
            self._extra = dict(metadata)  # values as the service stored them: already valid, kept exactly
        else:
            self._extra = {str(k): _encode_value(v) for k, v in (metadata or {}).items()}
        self._block_size = block_size
        self._max_inflight = max(1, max_inflight)
        # Random per upload: concurrent writers of one path never share block ids.
        self._id_prefix = secrets.token_hex(8)
        self._ids: list[str] = []
        self._buf = bytearray()
        self._pending: deque[Future[None]] = deque()
        self._head = bytearray()  # the first bytes: the header, for the metadata set at commit
        self.bytes_written = 0
        self._state = "open"
        if exclusive:
            self._check_absent()

    def __repr__(self) -> str:
        return f"AzureBlobSink(path={self.path!r}, {self._state}, {self.bytes_written} bytes)"

    def __reduce__(self) -> NoReturn:
        raise TypeError("an open AzureBlobSink cannot be pickled")

    def _check_absent(self) -> None:
        try:
            with _storage_errors(self.path):
                self._ops.properties()
        except FileNotFoundError:
            return
        raise FileExistsError(EEXIST, "blob exists", self.path)

    def write(self, data: BytesLike) -> int:
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
            raise OSError(EFBIG, "file too large for one block blob", self.path)
        block, self._buf = self._buf, bytearray()
        block_id = f"{self._id_prefix}-{len(self._ids):06d}"  # equal lengths: the service requires it
        self._ids.append(block_id)
        self._pending.append(_uploads().submit(self._ops.stage, block_id, bytes(block)))
        # Bounded memory: at most max_inflight blocks uploading, one filling.
        while len(self._pending) >= self._max_inflight:
            self._wait_one()

    def _wait_one(self) -> None:
        future = self._pending.popleft()
        with _storage_errors(self.path, writing=True):
            future.result()

    def _metadata(self) -> dict[str, str]:
        meta = dict(self._extra)
        try:
            header = read_header(BytesSource(bytes(self._head)))
            meta.update(header_metadata(header, header.length, self.bytes_written))
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
            with _storage_errors(self.path, writing=True):
                self._ops.commit(self._ids, self._metadata(), self._exclusive)
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

    def __init__(
        self, fs: AbstractFileSystem, path: str, size: int | None = None, *, use_adlfs_client: bool = False
    ) -> None:
        self.path = path
        self._ops, self._version_id = blob_client_for(fs, path, use_adlfs_client=use_adlfs_client)
        self._lock = threading.Lock()
        self._etag: str | None = None
        self.bytes_fetched = 0
        self.requests = 0
        self.metadata: dict[str, int | str] | None = None
        if size is None:
            self._count_request()
            with _storage_errors(path):
                props = self._ops.properties(self._version_id)
            self._etag = props.etag
            self.metadata = decode_metadata(props.metadata)
            size = props.size
        self.size = int(size)

    def __repr__(self) -> str:
        return f"AzureBlobSource(path={self.path!r}, size={self.size})"

    def _count_request(self) -> None:
        with self._lock:
            self.requests += 1

    def read_range(self, start: int, end: int) -> bytes:
        if start < 0 or start > end or end > self.size:
            raise ValueError("range outside the blob")
        if start == end:
            return b""
        self._count_request()
        with _storage_errors(self.path):
            data, (etag, total) = self._ops.download(start, end - start, self._etag, self._version_id)
        with self._lock:
            self.bytes_fetched += len(data)
            if self._etag is None:
                # The first response fixes the version read from now on.
                self._etag = etag
                if total is not None and total != self.size:
                    raise OSError(ESTALE, "the blob changed size since it was listed; open it again", self.path)
        if len(data) != end - start:
            raise IntegrityError()  # shorter than its size: truncated under us
        return data

    def close(self) -> None:
        pass

    def __enter__(self) -> AzureBlobSource:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# -- failing fast --------------------------------------------------------------


def open_blob_filesystem(protocol: str = "abfs", **options: Any) -> AbstractFileSystem:
    """``fsspec.filesystem(protocol, **options)`` for Azure Blob Storage, checked up front.

    No account named anywhere is a ConfigurationError saying how to name one (adlfs says
    ``ValueError`` with a traceback); then :func:`check_blob_filesystem`.
    """
    import fsspec

    if not (options.get("connection_string") or options.get("account_name")) and not any(
        os.environ.get(v) for v in _ACCOUNT_ENV
    ):
        raise ConfigurationError(f"no Azure Storage account for {protocol}://: {STORAGE_ACCOUNT_FIX}")
    try:
        fs = fsspec.filesystem(protocol, **options)
    except ValueError as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        message = f"cannot use Azure Storage for {protocol}:// ({reason}): {STORAGE_ACCOUNT_FIX}"
        raise ConfigurationError(message) from exc
    check_blob_filesystem(fs)
    return fs


def check_blob_filesystem(fs: AbstractFileSystem, path: str | None = None) -> None:
    """Once per process per (account, credential): the account answers and accepts the credentials.

    Within a few seconds, before the first real request (whose SDK retries would take minutes):
    the account's host resolves and answers, a token credential gives a token, and one request
    without retries is not refused.  Raises ConfigurationError (what is missing and how to
    supply it) or ConnectionError (the account does not answer), naming ``path`` when given.
    """
    if not _is_adlfs(fs):
        return
    service = _service_for(fs)
    if service is None:
        return  # only an asynchronous credential: adlfs' own client reports what it finds
    credential = getattr(service, "credential", None)
    name = getattr(fs, "account_name", None) or getattr(service, "account_name", None) or "?"
    where = f"Azure Storage account {name}"
    container = None
    if path:
        try:
            container = fs.split_path(path)[0] or None
        except (ValueError, TypeError):
            container = None

    def unreachable(message: str) -> Exception:
        return ConnectionError(ECONNREFUSED, message, path) if path else ConnectionError(ECONNREFUSED, message)

    def check() -> None:
        check_reachable(service.url, where, unreachable=unreachable)
        if (
            credential is not None
            and callable(getattr(credential, "get_token", None))
            and not _is_async_credential(credential)
        ):
            check_token(credential, STORAGE_SCOPE, where)
        _check_accepted(service, container, where, unreachable)

    once(("blob", service.primary_endpoint, str(id(credential))), credential, check)


def _check_accepted(
    service: BlobServiceClient, container: str | None, where: str, unreachable: Callable[[str], Exception]
) -> None:
    """One request, no retries: is this client let in?  (Not found is fine: that is for the real call.)"""
    from azure.storage.blob import BlobServiceClient

    sdk = _azure_errors()
    probe = BlobServiceClient(
        service.url,
        credential=service.credential,
        retry_total=0,
        connection_timeout=PREFLIGHT_REQUEST_TIMEOUT,
        read_timeout=PREFLIGHT_REQUEST_TIMEOUT,
    )
    try:
        with probe:
            if container:
                probe.get_container_client(container).get_container_properties(timeout=PREFLIGHT_REQUEST_TIMEOUT)
            else:
                next(iter(probe.list_containers(results_per_page=1, timeout=PREFLIGHT_REQUEST_TIMEOUT)), None)
    except sdk.ResourceNotFoundError:
        return
    except sdk.HttpResponseError as exc:
        if isinstance(exc, sdk.ClientAuthenticationError) or exc.status_code in (401, 403):
            code = getattr(exc, "error_code", None) or exc.status_code or "no token"
            raise ConfigurationError(
                f"{where} refused the credentials ({getattr(code, 'value', code)}): check the account key, "
                "SAS token, or the identity's role on the account (e.g. Storage Blob Data Contributor)"
            ) from exc
        # Anything else (a SAS scoped to one container, throttling): the real request decides.
    except (sdk.ServiceRequestError, sdk.ServiceResponseError) as exc:
        raise unreachable(f"{where} did not answer within {PREFLIGHT_REQUEST_TIMEOUT} s") from exc


# -- registration --------------------------------------------------------------


def _is_adlfs(fs: AbstractFileSystem) -> bool:
    return callable(getattr(fs, "split_path", None)) and hasattr(fs, "service_client")


def open_blob_sink(
    fs: AbstractFileSystem,
    path: str,
    metadata: Mapping[str, object] | None = None,
    exclusive: bool = False,
    **options: Any,
) -> AtomicSink:
    """Sink factory for :func:`cmkfs.targets.register_target`."""
    if not _is_adlfs(fs):
        return FsspecSink(fs, path, metadata=metadata, exclusive=exclusive)
    check_blob_filesystem(fs, path)
    return AzureBlobSink(fs, path, metadata, exclusive=exclusive, **options)


def open_blob_source(fs: AbstractFileSystem, path: str, size: int | None = None, **options: Any) -> RangeSource:
    """Source factory for :func:`cmkfs.targets.register_target`."""
    if not _is_adlfs(fs):
        return CatFileSource(fs, path, size=size)
    check_blob_filesystem(fs, path)
    return AzureBlobSource(fs, path, size=size, **options)


register_target(PROTOCOLS, sink_factory=open_blob_sink, source_factory=open_blob_source)
