"""A bounded-concurrency walk over every file of a store, with progress.

:func:`list_files` lists a root on the *target* filesystem (ciphertext, temp
files of writers and all), :func:`run_bounded` applies a function to each
entry on a few threads and yields the results in listing order, never
holding more than a few requests in flight (remote stores throttle
callers that fan out without bound).  :func:`stderr_progress` draws
``done/total`` on stderr when stderr is a terminal, and nothing otherwise.
"""

from __future__ import annotations

import datetime
import errno
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from fsspec.spec import AbstractFileSystem

from ..format import MAGIC, looks_like_cmkfs
from ..targets import is_partial_name

__all__ = [
    "DEFAULT_WORKERS",
    "FileEntry",
    "is_partial_file",
    "Progress",
    "list_files",
    "mtime_of",
    "open_store",
    "run_bounded",
    "stderr_progress",
    "workspace_of",
]

# Requests in flight at once: enough to hide a remote store's latency,
# few enough that no store throttles a single admin command.
DEFAULT_WORKERS = 8

_T = TypeVar("_T")
_R = TypeVar("_R")
#: ``progress(done, total)``, called after each item.
Progress = Callable[[int, int], None]
# Keys of a target's info dict that hold a modification time, in order of preference.
_MTIME_KEYS = ("mtime", "last_modified", "LastModified", "updated", "created")


@dataclass(frozen=True)
class FileEntry:
    """One file as the target lists it: its path, ciphertext size and modification time (seconds, or None)."""

    path: str
    size: int
    mtime: float | None


def open_store(url: str, storage_options: dict[str, dict[str, Any]] | None = None) -> tuple[AbstractFileSystem, str]:
    """``(target filesystem, root path)`` for a store URL (``file://``, ``abfs://``, ...; no ``cmk::``).

    ``storage_options`` are fsspec options keyed by protocol (``{"abfs": {...}}``).
    """
    import fsspec

    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    return fs, str(root)


def list_files(fs: AbstractFileSystem, root: str) -> list[FileEntry]:
    """Every file under ``root`` on ``fs`` (or ``root`` itself if it is a file), sorted by path.

    Raises ``FileNotFoundError`` naming ``root`` when it does not exist.
    """
    root = fs._strip_protocol(root)
    fs.invalidate_cache(root)
    if not fs.exists(root):
        raise FileNotFoundError(errno.ENOENT, "no such file or directory", root)
    found: dict[str, dict[str, Any]] = fs.find(root, detail=True)
    entries = [
        FileEntry(str(name), int(info.get("size") or 0), mtime_of(info))
        for name, info in found.items()
        if info.get("type", "file") == "file"
    ]
    return sorted(entries, key=lambda e: e.path)


def is_partial_file(fs: AbstractFileSystem, path: str, size: int | None = None) -> bool:
    """Whether ``path`` on the target ``fs`` is the temp file of a writer (live or killed).

    Its name says so (:func:`cmkfs.targets.is_partial_name`) *and* its
    content does: a writer's temp file is empty or starts with the cmkfs
    magic.  A file merely named like one (plaintext, say) is an ordinary
    file: status and verify report it, encrypt converts it, clean keeps it.
    """
    if not is_partial_name(path):
        return False
    try:
        if size is None:
            size = int(fs.size(path) or 0)
        if size == 0:
            return True
        return looks_like_cmkfs(bytes(fs.cat_file(path, 0, len(MAGIC))))
    except (OSError, ValueError):
        return False  # unreadable: an ordinary file, so the walk reports it


def mtime_of(info: dict[str, Any]) -> float | None:
    """A target's modification time as POSIX seconds (local: a float; Azure: a datetime; memory: a datetime)."""
    for key in _MTIME_KEYS:
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, datetime.datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=datetime.timezone.utc)
            return value.timestamp()
        if isinstance(value, str):
            try:
                parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=datetime.timezone.utc)
            return parsed.timestamp()
    return None


def workspace_of(root: str, path: str) -> str:
    """The first-level folder of ``path`` below ``root``; ``""`` for a file directly in ``root``."""
    root = root.rstrip("/")
    rest = path[len(root) :].lstrip("/") if path.startswith(root) else path
    head, sep, _ = rest.partition("/")
    return head if sep else ""


def run_bounded(
    func: Callable[[_T], _R],
    items: Iterable[_T],
    *,
    workers: int = DEFAULT_WORKERS,
    total: int | None = None,
    progress: Progress | None = None,
) -> Iterator[_R]:
    """``func(item)`` for each item on at most ``workers`` threads, yielded in the items' order.

    At most ``2 * workers`` calls are queued at once, so a walk over millions
    of files holds only a few results in memory.  ``func`` should catch what
    it wants to report per item: an exception it lets out ends the walk.
    """
    workers = max(1, int(workers))
    done = 0
    if workers == 1:
        for item in items:
            result = func(item)
            done += 1
            if progress is not None:
                progress(done, total or done)
            yield result
        return
    pending: deque[Future[_R]] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cmkfs-walk") as pool:
        try:
            for item in items:
                pending.append(pool.submit(func, item))
                if len(pending) >= 2 * workers:
                    done += 1
                    yield _next(pending, done, total, progress)
            while pending:
                done += 1
                yield _next(pending, done, total, progress)
        finally:
            for future in pending:
                future.cancel()


def _next(pending: deque[Future[_R]], done: int, total: int | None, progress: Progress | None) -> _R:
    result = pending.popleft().result()
    if progress is not None:
        progress(done, total or done)
    return result


@contextmanager
def stderr_progress(label: str, total: int, *, stream: Any = None) -> Iterator[Progress | None]:
    """A ``progress(done, total)`` callback that draws a bar on stderr if stderr is a terminal, else ``None``.

    Scripts that capture stderr get no control sequences: the bar exists only for a person watching.
    """
    stream = stream if stream is not None else sys.stderr
    if not (hasattr(stream, "isatty") and stream.isatty()) or total <= 0:
        yield None
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as Bar

    console = Console(file=stream)
    with Bar(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(escape(label), total=total)  # a store's name is text, not rich markup
        last = [0.0]

        def update(done: int, _total: int) -> None:
            now = time.monotonic()
            if done >= total or now - last[0] >= 0.1:  # rich redraws on its own timer: skip most updates
                last[0] = now
                bar.update(task, completed=done)

        yield update
