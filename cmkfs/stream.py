"""Streaming encryption and random-access decryption of format v1 files.

:class:`EncryptingWriter` takes writes of any size and emits the header and
then one sealed segment per ``segment_size`` plaintext bytes, holding a bounded
amount in memory (two segments, plus about 2 MiB per pool thread).  The
final segment carries the "last" flag, so the writer never writes out a
segment before it knows more data follows: a partial segment waits in a
buffer, and the last whole segment of a large write waits sealed as "not
last" (closing right after it reopens and reseals it as final).  Closing
seals whatever is buffered as the final segment (an empty one only for an
empty file).

:class:`DecryptingReader` opens a file from any ranged source, authenticates
the header commitment and the final segment (which proves the file's length,
so truncation at a segment boundary is caught at open), then serves any
plaintext range by fetching and opening only the segments that cover it.

Both re-ask their :class:`~cmkfs.keys.KeySource` for the DEK whenever the
key's deadline has passed, before the next segment: a revoked key stops
long-lived handles too.
"""

from __future__ import annotations

import io
import os
import threading
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import BinaryIO, NoReturn, Protocol

from . import forksafe  # noqa: F401 - registers the fork hooks (this pool among them)
from .errors import IntegrityError, KeyRevokedError, UnsupportedOperationError
from .format import (
    DEFAULT_SEGMENT_SIZE,
    MAX_SEGMENTS,
    NONCE_PREFIX_SIZE,
    SALT_SIZE,
    TAG_SIZE,
    ContentClass,
    FileParams,
    Header,
    check_segment_size,
    header_length_from_prefix,
    plaintext_size,
)
from .keys import DataKey, KeySource, register_key_holder
from .secret import BytesLike
from .segment import SegmentCipher, check_commitment
from .wipe import wipe

__all__ = [
    "EncryptingWriter",
    "DecryptingReader",
    "RangeSource",
    "BytesSource",
    "FileSource",
    "read_header",
    "shared_executor",
]

# A first read this large fetches a whole header in one request in practice
# (headers are 150-800 bytes), without pulling much payload.
HEADER_PROBE_SIZE = 4096
# Files up to this size are read whole at open (header and final segment in
# one request); larger ones fetch a header probe, then the final segment.
SMALL_FILE_FETCH = 512 * 1024
# Largest ciphertext window fetched at once by a large read: bounds memory
# for read(-1) on big files and lets decryption overlap the next fetch.
MAX_FETCH = 8 * 1024 * 1024
# Plaintext one thread seals per batch when a large write is split across the
# pool: big enough that the hand-off (~20 us) is noise, small enough that the
# output buffers stay a few MiB whatever the write size.
BATCH_BYTES = 2 * 1024 * 1024

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def shared_executor() -> ThreadPoolExecutor:
    """The process-wide pool that seals/opens segments in parallel.

    cryptography >= 42 releases the GIL inside AES-GCM, so a few threads
    scale with cores.  Created lazily; sized to the machine (at most 4).
    """
    global _executor
    with _executor_lock:
        if _executor is None:
            workers = max(1, min(4, os.cpu_count() or 1))
            _executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cmkfs-seg")
        return _executor


def _forget_executor() -> None:
    # In a forked child (cmkfs.forksafe): the pool's threads stayed in the
    # parent and a submit would wait for ever; the next use makes a new pool.
    global _executor
    _executor = None


_DEFAULT_THREADS = max(1, min(4, os.cpu_count() or 1))


def default_threads() -> int:
    return _DEFAULT_THREADS


class _Keyed:
    """The shared "hold a file key, re-confirm it at the deadline" logic."""

    def __init__(self, keys: KeySource, header: Header, data_key: DataKey, cipher: SegmentCipher | None = None) -> None:
        self._keys = keys
        self._clock = keys.clock
        self._header = header
        self._cipher: SegmentCipher | None = None
        self._closed = False
        # One caller at a time (fsspec's background cache reads from a second
        # thread), and the key sweeper only touches an idle handle.
        self._lock = threading.RLock()
        self._deadline = float("-inf")
        if cipher is None:
            self._install(data_key)
        else:
            # A writer derived the key itself (it needed the commitment first).
            self._cipher = cipher
            self._data_key = data_key
            self._deadline = data_key.expires_at

    def _install(self, data_key: DataKey) -> None:
        # Key material stays inside DataKey and SegmentCipher objects: no
        # local here holds a DEK or a file key for an error report to show.
        data_key, cipher, commitment = self._derive(data_key)
        try:
            # A DEK that does not match the header's commitment is the wrong
            # key, or a tampered key block: refuse before opening anything.
            check_commitment(self._header.commitment, commitment)
        except IntegrityError:
            cipher.wipe()
            raise
        if self._cipher is not None:
            self._cipher.wipe()
        self._cipher = cipher
        self._data_key = data_key
        self._deadline = data_key.expires_at

    def _derive(self, data_key: DataKey) -> tuple[DataKey, SegmentCipher, bytes]:
        """This file's cipher and commitment; if the cache wiped the DEK meanwhile, ask the source again."""
        for _ in range(3):
            derived = data_key.derive(self._header.params)
            if derived is not None:
                return data_key, *derived
            data_key = self._keys.data_key_for_read(data_key.key_block)
        raise KeyRevokedError("the data key was withdrawn while in use")

    def _expired(self) -> bool:
        # The live DataKey, not a copy of its deadline: a revocation seen by
        # the cache wipes it and stops this handle at its next segment.
        return self._clock() >= self._data_key.expires_at

    def _cipher_now(self) -> SegmentCipher:
        """The cipher, after re-confirming the key with the source if its TTL passed."""
        if self._closed:
            raise ValueError("I/O operation on closed file")
        if self._cipher is None or self._expired():
            self._refresh()
        assert self._cipher is not None  # _refresh installs one or raises
        return self._cipher

    def _refresh(self) -> None:
        data_key = self._keys.data_key_for_read(self._header.key_block)
        self._install(data_key)

    def _forget_key(self) -> None:
        self._closed = True
        if self._cipher is not None:
            self._cipher.wipe()
            self._cipher = None

    def drop_key_if_expired(self) -> None:
        """Called by the key sweeper: an idle handle whose DEK has expired (or
        was revoked) wipes its file key and cached plaintext now; its next
        segment asks the vault again.  A busy handle is left alone: it checks
        the deadline itself before every segment."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            if self._cipher is not None and self._expired():
                self._cipher.wipe()
                self._cipher = None
                self._drop_plaintext()
        finally:
            self._lock.release()

    def _drop_plaintext(self) -> None:
        """Forget cached plaintext that can be fetched again (readers)."""

    # The key confirmation last reported by confirm_key() (a class default
    # until the first call): a new DataKey object means a new confirmation.
    _confirmed: DataKey | None = None
    _generation = 0

    def confirm_key(self) -> int:
        """Re-confirm the key with the source if its TTL passed (raises if the
        vault refuses) and return a number that changes whenever the key was
        confirmed anew: caches layered on a handle drop what they hold then."""
        if self._cipher is not None and not self._closed and self._data_key is self._confirmed and not self._expired():
            return self._generation  # the usual case, on every cached read: no lock, one clock read
        with self._lock:
            self._cipher_now()
            if self._data_key is not self._confirmed:
                self._confirmed = self._data_key
                self._generation += 1
            return self._generation

    def key_expired(self) -> bool:
        """True once the key's TTL passed or it was revoked (no vault call)."""
        return self._closed or self._expired()


class EncryptingWriter(_Keyed):
    """Encrypts a stream of writes into ``sink`` (anything with ``write``).

    ``sink.write`` must consume its argument before returning (a file or a
    socket does): output buffers are reused.  Call :meth:`close` to seal the
    final segment; :meth:`abort` drops everything without sealing, so an
    interrupted stream never ends with a valid final segment.
    """

    def __init__(
        self,
        sink: Sink,
        keys: KeySource,
        *,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        content_class: ContentClass = ContentClass.OTHER,
        threads: int | None = None,
        executor: Executor | None = None,
    ) -> None:
        check_segment_size(segment_size)
        self._sink = sink
        self._size = segment_size
        params = FileParams(
            segment_size, os.urandom(SALT_SIZE), os.urandom(NONCE_PREFIX_SIZE), ContentClass(content_class)
        )
        for _ in range(3):
            data_key = keys.data_key_for_write(content_class)
            # Derived inside the key objects: no DEK or file key in a local here.
            derived = data_key.derive(params)  # None if the cache wiped the DEK just now
            if derived is not None:
                break
        else:
            raise KeyRevokedError("the data key was withdrawn while in use")
        cipher, commitment = derived
        header = Header(params, commitment, data_key.key_block)
        super().__init__(keys, header, data_key, cipher)
        self._threads = default_threads() if threads is None else max(1, threads)
        self._executor = executor if executor is not None else (shared_executor() if self._threads > 1 else None)
        # Large writes are sealed on the pool in batches of this many
        # segments per thread (one hand-off per batch, not per segment).
        self._per_thread = max(1, BATCH_BYTES // segment_size)
        # Buffers are allocated on first use and grow only as far as needed:
        # a 50 KB image never pays for (or wipes) a whole 256 KiB segment.
        self._buf = bytearray()  # plaintext of the segment being filled
        self._fill = 0
        self._index = 0
        self._plain = 0
        self._out: bytearray | None = None  # reusable output for whole segments
        # The last whole segment of a large write, sealed as "not last" but
        # not yet written: if the file ends there, close() reopens it and
        # seals it again as the final segment.  This spares copying every
        # large write's tail segment into our buffer (the common case).
        self._held: bytearray | None = None
        self._held_index = -1
        self._failed = False
        self._aborted = False
        self._run_outs: list[bytearray] = []  # one output buffer per thread for _seal_run
        self.closed = False
        self.header = header
        try:
            self._sink.write(header.encode())
        except BaseException:
            self._forget_key()  # a writer that never started holds no file key
            raise
        register_key_holder(self)

    def __repr__(self) -> str:
        # Also shown for a writer whose __init__ failed, by reports that capture locals.
        if not hasattr(self, "header"):
            return "EncryptingWriter(<not started>)"
        state = "closed" if self.closed else f"{self._plain} bytes written"
        return f"EncryptingWriter(key_uri={self.header.key_block.key_uri!r}, {state})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("an open EncryptingWriter cannot be pickled")

    @property
    def plaintext_written(self) -> int:
        return self._plain

    def writable(self) -> bool:
        return True

    def write(self, data: BytesLike) -> int:
        with self._lock:
            if self._failed:
                raise ValueError("an earlier write failed: abort this writer and start the file again")
            view = memoryview(data)  # a wrong type is refused here, before anything is sealed
            try:
                return self._write(view)
            except BaseException:
                # Part of the data may be sealed already: going on would lose
                # or reorder it, so the stream can only be aborted now.
                self._failed = True
                raise

    def _write(self, view: memoryview) -> int:
        if self.closed:
            raise ValueError("write to closed file")
        if view.format != "B" or view.ndim != 1 or not view.c_contiguous:
            # cryptography only takes unsigned-byte buffers: pyarrow hands out
            # format "b" views, numpy anything.  A non-contiguous view is copied.
            view = view.cast("B") if view.c_contiguous else memoryview(view.tobytes())
        n = len(view)
        size = self._size
        if n and self._held_index >= 0:
            self._release_held()  # more data: the held segment was not the last
        while len(view):
            if self._fill == size:
                # More data follows, so the buffered segment is not the last.
                self._emit_buffer()
            if self._fill == 0 and len(view) >= size:
                # Seal whole segments straight from the caller's memory (no
                # copy).  All but the last are followed by more data; the last
                # may end the file, so it is held back, sealed speculatively.
                count = len(view) // size
                if count > 1:
                    if self._executor is not None and (count - 1) * size >= BATCH_BYTES:
                        self._seal_run(view[: (count - 1) * size], count - 1)
                    else:
                        for i in range(count - 1):
                            self._emit(view[i * size : (i + 1) * size])
                self._hold(view[(count - 1) * size : count * size])
                view = view[count * size :]
                continue
            take = min(size - self._fill, len(view))
            end = self._fill + take
            if end <= len(self._buf):
                self._buf[self._fill : end] = view[:take]
            else:
                self._buf[self._fill :] = view[:take]  # grows the buffer, up to one segment
            self._fill = end
            view = view[take:]
        self._plain += n
        return n

    def _emit_buffer(self) -> None:
        self._emit(memoryview(self._buf)[: self._size])
        self._fill = 0  # sealed synchronously: the buffer is free again

    def _emit(self, plain: memoryview, last: bool = False) -> None:
        """Seal one segment on this thread and write it out.

        Buffered segments (from small writes) are sealed inline: handing one
        segment to the pool costs more than it saves.  Only runs of whole
        segments from large writes go to the pool (:meth:`_seal_run`).
        """
        if self._index >= MAX_SEGMENTS:
            raise OverflowError("file too large for this segment size")
        self._release_held()
        cipher = self._cipher_now()
        index = self._index
        self._index += 1
        if len(plain) == self._size:
            if self._out is None:
                self._out = bytearray(self._size + TAG_SIZE)
            out = self._out
        else:
            out = bytearray(len(plain) + TAG_SIZE)
        cipher.seal_into(index, last, plain, out)
        self._sink.write(out)

    def _hold(self, plain: memoryview) -> None:
        """Seal a whole segment as "not last" into the held buffer."""
        if self._index >= MAX_SEGMENTS:
            raise OverflowError("file too large for this segment size")
        self._release_held()
        cipher = self._cipher_now()
        if self._held is None:
            self._held = bytearray(self._size + TAG_SIZE)
        self._held_index = self._index
        self._index += 1
        cipher.seal_into(self._held_index, False, plain, self._held)

    def _release_held(self) -> None:
        """More follows the held segment: it was rightly sealed as not last."""
        if self._held_index >= 0 and self._held is not None:
            self._sink.write(self._held)
            self._held_index = -1

    def _outs_for(self, count: int) -> list[bytearray]:
        outs = self._run_outs
        while len(outs) < count:
            outs.append(bytearray(self._per_thread * (self._size + TAG_SIZE)))
        return outs

    def _seal_run(self, run: memoryview, count: int) -> None:
        """Seal ``count`` whole, non-final segments of ``run`` on the pool and write them.

        The calling thread seals one share itself and hands the others over in
        contiguous batches (one task per thread, not one per segment), so the
        per-segment cost stays a slice and a call.
        """
        self._release_held()
        size = self._size
        step = size + TAG_SIZE
        threads = self._threads
        per_batch = self._per_thread
        outs = self._outs_for(threads)
        done = 0
        while done < count:
            cipher = self._cipher_now()  # re-confirmed before every round of batches
            n = min(count - done, per_batch * threads)
            share = -(-n // threads)
            batches: list[tuple[SegmentCipher, int, memoryview, bytearray]] = []
            for t, lo in enumerate(range(0, n, share)):
                hi = min(n, lo + share)
                batches.append((cipher, self._index + lo, run[(done + lo) * size : (done + hi) * size], outs[t]))
            if self._index + n > MAX_SEGMENTS:
                raise OverflowError("file too large for this segment size")
            executor = self._executor
            assert executor is not None  # runs go to the pool only when there is one
            futures = [executor.submit(_seal_batch, size, *b) for b in batches[1:]]
            try:
                _seal_batch(size, *batches[0])
            finally:
                for f in futures:
                    f.result()
            for _, _, plain, out in batches:
                view = memoryview(out)
                for k in range(len(plain) // size):
                    self._sink.write(view[k * step : (k + 1) * step])
            done += n
            self._index += n  # per round: a failure later never lets an index be sealed twice

    def flush(self) -> None:
        """Nothing to do: a partial segment cannot be sealed before close."""

    def close(self) -> None:
        """Seal the final segment and finish.  Does not close the sink."""
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self.closed:
            if self._aborted:
                # Whoever aborted the stream (a failure, a fork) meant it: a
                # later close must not let the sink publish an unsealed file.
                raise ValueError("the stream was aborted: nothing was sealed")
            return
        if self._failed:
            self.abort()  # never seal a final segment after a failed write
            raise ValueError("an earlier write failed: the stream was aborted, nothing was sealed")
        try:
            if self._held_index >= 0 and self._fill == 0:
                # The file ended on the held segment: take it back (our own
                # ciphertext, opened with our own key) and seal it as final.
                index, self._held_index = self._held_index, -1
                assert self._held is not None  # a held index always has its buffer
                if len(self._buf) < self._size:
                    wipe(self._buf)
                    self._buf = bytearray(self._size)
                self._cipher_now().open_into(index, False, self._held, memoryview(self._buf)[: self._size])
                self._index, self._fill = index, self._size
            self._emit(memoryview(self._buf)[: self._fill], last=True)
        except BaseException:
            self.abort()
            raise
        self.closed = True
        self._release()

    def abort(self) -> None:
        """Drop buffered plaintext and keys without sealing a final segment."""
        with self._lock:
            self.closed = True
            self._aborted = True
            self._release()

    def _release(self) -> None:
        self._forget_key()
        self._held_index = -1
        wipe(self._buf)  # plaintext does not outlive the writer
        self._run_outs.clear()
        self._fill = 0

    def __enter__(self) -> EncryptingWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: object, tb: object) -> None:
        # Never seal a final segment for a stream that failed part-way.
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _drop_frames(exc: BaseException) -> None:
    """Forget the tracebacks of ``exc``'s chain (they keep frames, and their locals, alive)."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        link.__traceback__ = None
        link = link.__cause__ or link.__context__


def _seal_batch(size: int, cipher: SegmentCipher, index: int, plain: memoryview, out: bytearray) -> None:
    """Seal consecutive whole segments of ``plain`` (none final) into ``out``, back to back."""
    seal = cipher.seal_into
    step = size + TAG_SIZE
    view = memoryview(out)
    for k in range(len(plain) // size):
        seal(index + k, False, plain[k * size : (k + 1) * size], view[k * step : (k + 1) * step])


def _open_batch(cipher: SegmentCipher, jobs: list[tuple[int, bool, memoryview, memoryview]]) -> None:
    """Open ``(index, last, ciphertext, out)`` jobs in order."""
    open_into = cipher.open_into
    for index, last, ct, out in jobs:
        open_into(index, last, ct, out)


class Sink(Protocol):
    """Where the writer puts ciphertext: ``write`` must consume its argument
    before returning (output buffers are reused)."""

    def write(self, data: BytesLike, /) -> object: ...


class RangeSource(Protocol):
    """Ranged, read-only access to one file's ciphertext: what the reader consumes
    and what :func:`cmkfs.targets.open_range_source` returns.

    A source may also offer ``read_range_into(start, out)``, filling a writable
    buffer; the reader uses it when present (reused buffers spare page faults).
    """

    @property
    def size(self) -> int:
        """The ciphertext size, fixed when the source was opened."""
        ...

    def read_range(self, start: int, end: int) -> BytesLike:
        """Exactly the bytes ``[start, end)`` (``end <= size``)."""
        ...

    def close(self) -> None: ...


class BytesSource:
    """A :class:`RangeSource` over an in-memory ciphertext."""

    def __init__(self, data: BytesLike) -> None:
        self._view = memoryview(data)
        self.size = len(self._view)

    def read_range(self, start: int, end: int) -> memoryview:
        return self._view[start:end]

    def close(self) -> None:
        pass  # the caller's buffer: nothing of ours to release


class FileSource:
    """A :class:`RangeSource` over a seekable binary file object (which stays the caller's to close)."""

    def __init__(self, fileobj: BinaryIO, size: int | None = None) -> None:
        self._f = fileobj
        if size is None:
            size = fileobj.seek(0, os.SEEK_END)
        self.size = size
        self._lock = threading.Lock()

    def read_range(self, start: int, end: int) -> bytes:
        with self._lock:
            self._f.seek(start)
            data = self._f.read(end - start)
        if len(data) != end - start:
            raise IntegrityError()  # the file shrank under us
        return data

    def close(self) -> None:
        pass


class DecryptingReader(_Keyed):
    """Random-access plaintext view of an encrypted file.

    Opening reads the header (one request), unwraps the DEK through ``keys``,
    checks the key commitment and authenticates the final segment.  After
    that :meth:`read` fetches only the segments covering the asked range.
    """

    def __init__(self, source: RangeSource, keys: KeySource, *, threads: int | None = None) -> None:
        self._source = source
        size = source.size
        # A small file is fetched whole: one request instead of two (header,
        # then final segment), which on a remote store is most of the cost.
        header, header_len, probe = _fetch_header(source, size if size <= SMALL_FILE_FETCH else HEADER_PROBE_SIZE)
        self.header = header
        self.header_length = header_len
        self.segment_size = header.params.segment_size
        self.ciphertext_size = size
        self.size = plaintext_size(size, header_len, self.segment_size)
        self.segment_count = max(1, -(-self.size // self.segment_size))
        super().__init__(keys, header, keys.data_key_for_read(header.key_block))
        self._threads = default_threads() if threads is None else max(1, threads)
        # Small plaintext cache: the final segment (proved at open, and where
        # Parquet footers live) and the most recently opened segment, kept in
        # one reused buffer so a small read allocates only its result.
        self._cache: dict[int, bytes] = {}
        self._scratch = bytearray(0)  # grown on first use to the segments it opens
        self._ct_buf = bytearray(0)  # ciphertext window, for sources that read into a buffer
        self._recent: int | None = None
        try:
            self._cache[self.segment_count - 1] = self._open_final(probe)
        except BaseException:
            self._forget_key()  # a file that fails at open leaves no key behind
            raise
        register_key_holder(self)

    def _open_final(self, probe: bytes | None = None) -> bytes:
        """Authenticate the final segment: proves the file's length."""
        last = self.segment_count - 1
        last_start = self.header_length + last * (self.segment_size + TAG_SIZE)
        if probe is not None and len(probe) == self.ciphertext_size:
            final = memoryview(probe)[last_start:]  # already here: the whole file came with the header
        else:
            final = self._fetch(last, last + 1)
        return self._cipher_now().open(last, True, final)

    def __repr__(self) -> str:
        # Also shown for a reader whose __init__ failed, by reports that capture locals.
        if not hasattr(self, "size"):
            return "DecryptingReader(<not opened>)"
        return f"DecryptingReader(key_uri={self.header.key_block.key_uri!r}, size={self.size})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("an open DecryptingReader cannot be pickled")

    @property
    def content_class(self) -> ContentClass:
        return self.header.params.content_class

    def close(self) -> None:
        with self._lock:
            self._forget_key()
            self._drop_plaintext()

    def _drop_plaintext(self) -> None:
        self._cache.clear()
        wipe(self._scratch)
        self._recent = None

    def __enter__(self) -> DecryptingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _segment_plain_len(self, index: int) -> int:
        if index < self.segment_count - 1:
            return self.segment_size
        return self.size - (self.segment_count - 1) * self.segment_size

    def _fetch(self, first: int, stop: int) -> memoryview:
        """The ciphertext of segments ``[first, stop)``, in one ranged read.

        Sources that can fill a buffer (local files, memory) read into one
        reused buffer: valid until the next fetch, which is all a window needs.
        """
        seg_ct = self.segment_size + TAG_SIZE
        start = self.header_length + first * seg_ct
        end = min(self.ciphertext_size, self.header_length + stop * seg_ct)
        read_into = getattr(self._source, "read_range_into", None)
        if read_into is not None:
            if len(self._ct_buf) < end - start:
                self._ct_buf = bytearray(end - start)
            ciphertext = memoryview(self._ct_buf)[: end - start]
            read_into(start, ciphertext)
            return ciphertext
        ciphertext = memoryview(self._source.read_range(start, end))
        if len(ciphertext) != end - start:
            raise IntegrityError()
        return ciphertext

    def read(self, offset: int = 0, length: int = -1) -> bytes:
        """Plaintext bytes ``[offset, offset + length)`` (clipped to the file).

        Safe to call from several threads: calls are serialised (they share
        the scratch and fetch buffers)."""
        with self._lock:
            return self._read(offset, length)

    def _read(self, offset: int, length: int) -> bytes:
        if self._closed:
            raise ValueError("I/O operation on closed file")
        if offset < 0:
            raise ValueError("negative offset")
        end = self.size if length is None or length < 0 else min(self.size, offset + length)
        if offset >= end:
            return b""
        seg = self.segment_size
        first, stop = offset // seg, (end - 1) // seg + 1
        if stop - first == 1:
            base = first * seg
            return bytes(self._segment(first)[offset - base : end - base])
        # Several segments: open them straight into the result.  A BytesIO
        # grown to the size gives a writable view of its own buffer, and
        # getvalue() then hands that object back as bytes without a copy
        # (CPython; elsewhere it copies once, which is still correct).  One
        # allocation per read: a second one (a zeroed bytes, a copy) costs
        # fresh-page faults that are slower than the AES.
        result = io.BytesIO()
        result.seek(end - offset - 1)
        result.write(b"\0")
        view = result.getbuffer()
        try:
            window = max(1, MAX_FETCH // (seg + TAG_SIZE))
            for i in range(first, stop, window):
                self._open_window(i, min(stop, i + window), offset, end, view)
        except BaseException as exc:  # noqa: BLE001 - re-raised, with the frames dropped
            wipe(view)  # never leave a partly verified result behind
            # The frames below (and the exceptions chained to this one) hold
            # slices of the result buffer: drop them here, so the buffer is
            # released now rather than by a later garbage collection, which
            # Python 3.13 reports as an error.
            _drop_frames(exc)
            raise exc.with_traceback(None) from None
        finally:
            view.release()
        return result.getvalue()

    def _open_window(self, first: int, stop: int, offset: int, end: int, view: memoryview) -> None:
        """Fetch segments ``[first, stop)`` in one request; put plaintext ``[offset, end)`` of them into ``view``.

        Segments wholly inside the range are opened in place; a partly
        covered first or last one goes through the scratch buffer.
        """
        ciphertext = self._fetch(first, stop)
        seg = self.segment_size
        step = seg + TAG_SIZE
        last_index = self.segment_count - 1
        # One key check per window: a refresh inside the loop would wipe the
        # cipher that the jobs built so far still hold.
        cipher = self._cipher_now()
        whole = []
        for index in range(first, stop):
            lo = index * seg
            n = seg if index < last_index else self.size - lo
            ct = ciphertext[(index - first) * step : (index - first) * step + n + TAG_SIZE]
            if offset <= lo and lo + n <= end:
                whole.append((index, index == last_index, ct, view[lo - offset : lo - offset + n]))
            else:
                plain = self._open_scratch(cipher, index, index == last_index, ct, n)
                a, b = max(offset, lo), min(end, lo + n)
                view[a - offset : b - offset] = plain[a - lo : b - lo]
        if self._threads > 1 and len(whole) > 1:
            share = -(-len(whole) // self._threads)
            futures = [
                shared_executor().submit(_open_batch, cipher, whole[k : k + share])
                for k in range(share, len(whole), share)
            ]
            try:
                _open_batch(cipher, whole[:share])
            finally:
                errors = [f.exception() for f in futures]
            for exc in errors:
                if exc is not None:
                    raise exc
        else:
            _open_batch(cipher, whole)

    def _open_scratch(self, cipher: SegmentCipher, index: int, last: bool, ct: memoryview, n: int) -> memoryview:
        """Open one segment into the reused scratch buffer, which then caches it."""
        self._recent = None
        if len(self._scratch) < n:
            wipe(self._scratch)
            self._scratch = bytearray(n)
        plain = memoryview(self._scratch)[:n]
        try:
            cipher.open_into(index, last, ct, plain)
        except IntegrityError:
            plain[:] = bytes(n)
            raise
        self._recent = index
        return plain

    def _segment(self, index: int) -> bytes | memoryview:
        """The plaintext of one segment, from a cache or fetched and opened."""
        cached = self._cache.get(index)
        if cached is not None:
            self._cipher_now()  # the key must still be valid to serve cached plaintext
            return cached
        n = self._segment_plain_len(index)
        if self._recent == index:
            self._cipher_now()
            return memoryview(self._scratch)[:n]
        ciphertext = self._fetch(index, index + 1)
        return self._open_scratch(self._cipher_now(), index, index == self.segment_count - 1, ciphertext, n)

    def segments_for(self, offset: int, length: int) -> tuple[int, int]:
        """Ciphertext byte range that a read of ``[offset, offset+length)`` fetches."""
        seg = self.segment_size
        end = min(self.size, offset + length)
        first, stop = offset // seg, max(offset // seg + 1, (end - 1) // seg + 1)
        seg_ct = seg + TAG_SIZE
        return self.header_length + first * seg_ct, min(self.ciphertext_size, self.header_length + stop * seg_ct)


def encrypt_bytes(
    data: BytesLike,
    keys: KeySource,
    *,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
    content_class: ContentClass = ContentClass.OTHER,
    threads: int | None = 1,
) -> bytes:
    """One-shot encryption of an in-memory buffer (a convenience over the writer)."""
    chunks: list[bytes] = []

    class _Collect:
        def write(self, b: BytesLike) -> int:
            chunks.append(bytes(b))
            return len(b)

    with EncryptingWriter(
        _Collect(), keys, segment_size=segment_size, content_class=content_class, threads=threads
    ) as w:
        w.write(data)
    return b"".join(chunks)


def decrypt_bytes(blob: BytesLike, keys: KeySource) -> bytes:
    """One-shot decryption of an in-memory ciphertext."""
    with DecryptingReader(BytesSource(blob), keys, threads=1) as reader:
        return reader.read(0, -1)


def read_header(source: RangeSource) -> Header:
    """The decoded header of ``source``: bounds and checksum checked, no key needed
    (status, rewrap, blob metadata)."""
    return _fetch_header(source, HEADER_PROBE_SIZE)[0]


def _fetch_header(source: RangeSource, first_read: int) -> tuple[Header, int, bytes]:
    """``(header, header length, bytes fetched)``: the one place a header is read.

    The first request asks for ``first_read`` bytes (fewer for a shorter file);
    a header longer than that costs one more request for the rest.
    """
    size = source.size
    probe = bytes(source.read_range(0, min(size, first_read)))
    header_len = header_length_from_prefix(probe)  # bounded before the rest is fetched or parsed
    if header_len > size:
        raise IntegrityError()  # cut short inside its header: truncation, whichever reader finds it
    if header_len > len(probe):
        probe += bytes(source.read_range(len(probe), header_len))
    return Header.decode(probe[:header_len]), header_len, probe


def reject_append() -> None:
    raise UnsupportedOperationError("encrypted files cannot be appended to; rewrite the file")
