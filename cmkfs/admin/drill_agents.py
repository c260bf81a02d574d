"""The agents of ``cmkfs drill`` (:mod:`.drill`): readers and a writer that keep using a scratch key.

An agent runs either as its own process, ``python -m cmkfs.admin.drill_agents`` with its
:class:`AgentSpec` as JSON on **stdin** (the spec holds storage options, which may hold
secrets: never a command line) and its result as one JSON line on stdout, or as
:func:`run_agent` in a Dask worker.  Kinds (:data:`KINDS`):

``held-open``   one handle on the binary canary, opened before the key is disabled and
                kept open across the drill; each attempt reads a random range through it
``new-handle``  each attempt opens the binary canary anew and reads a random range
``parquet``     each attempt reads one column of the Parquet canary through pyarrow
``writer``      each attempt publishes a new small file (``with fs.open(..., "wb")``)

and, through a FUSE mount of the canary folder (``cmkfs drill --mount``), with plain OS file
I/O only (no fsspec, no cmkfs in their data path), the ``mount-`` kinds:

``mount-held-open``  one descriptor, opened before the key is disabled; each attempt
                     reads a random range with ``os.pread``
``mount-new-open``   each attempt opens, reads a random range (``os.pread``) and closes
``mount-parquet``    each attempt reads one column with ``pyarrow.parquet.read_table(path)``
``mount-writer``     each attempt writes a new small file with ``open``/``write``/``close``;
                     ``ok`` means ``close()`` returned without error (the drill then checks
                     the store, :func:`write_name`)

A read counts as data only if the bytes are the canary's own (a wrong answer is
:class:`CanaryMismatch`).  Every attempt is recorded as ``[start, end, outcome]``, the
times on :func:`cmkfs.clock.key_clock` (system-wide, so comparable across the processes
of one host), the outcome ``"ok"`` or the class name of the error: never its text, which
may quote paths, options or data.  Through a mount an ``OSError`` is recorded by its errno's
name (``EACCES``, ``EIO``, ...): that is all a program using the mount is told, and ``EACCES``
is how the mount reports a key refused (docs/MOUNT.md, "Errors").

Control, through files in the drill's private control directory:

``ready-NAME``    written (holding the agent's pid) after its first successful attempt
``refused-NAME``  present while its latest attempt was refused by the key (:data:`REFUSALS`)
``stop``          written by the drill: finish the attempt in progress, report, exit

An agent also stops by itself when the control directory goes away, when its parent
process is gone (a process agent), or after ``max_seconds``: nothing outlives a drill
that was killed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..clock import key_clock

__all__ = [
    "AgentSpec",
    "CanaryMismatch",
    "KINDS",
    "MOUNT_READER_KINDS",
    "MOUNT_WRITER",
    "READER_KINDS",
    "OK",
    "READY_MARK",
    "REFUSALS",
    "REFUSED",
    "REFUSED_MARK",
    "REFUSED_THROUGH_MOUNT",
    "STOP_MARK",
    "WRITES_DIR",
    "WRITE_SIZE",
    "binary_canary",
    "drill_filesystem",
    "ignore_terminal_signals",
    "main",
    "run_agent",
    "write_canaries",
    "write_name",
]

READER_KINDS = ("held-open", "new-handle", "parquet")  # assigned to readers in this order, cycling
MOUNT_READER_KINDS = ("mount-held-open", "mount-new-open", "mount-parquet")  # the same, through a mount
MOUNT_WRITER = "mount-writer"
KINDS = (*READER_KINDS, "writer", *MOUNT_READER_KINDS, MOUNT_WRITER)
MOUNT_PREFIX = "mount-"
OK = "ok"
REFUSED = "KeyRevokedError"  # the key refusing, through cmkfs
REFUSED_THROUGH_MOUNT = errno.errorcode[errno.EACCES]  # the same through a mount (docs/MOUNT.md, "Errors")
REFUSALS = frozenset({REFUSED, REFUSED_THROUGH_MOUNT})  # the outcomes that count as the key refusing
BINARY_NAME = "canary.bin"
PARQUET_NAME = "canary.parquet"
WRITES_DIR = "writes"
# Several segments at the default segment size (256 KiB), so random ranges cross segment boundaries.
BINARY_SIZE = 4 * 1024 * 1024
READ_SIZE = 64 * 1024
WRITE_SIZE = 4 * 1024
PARQUET_ROWS = 2000
# The canaries are synthetic; the prefix lets a test show that no plaintext reaches a report.
CANARY_PREFIX = b"cmkfs drill canary plaintext\n"
MAX_SPEC_BYTES = 1024 * 1024  # bounded before parsing
READY_MARK, REFUSED_MARK, STOP_MARK = "ready-", "refused-", "stop"
Attempt = tuple[float, float, str]


class CanaryMismatch(Exception):
    """A read returned bytes that are not the canary's: data, but the wrong data."""


@dataclass(frozen=True)
class AgentSpec:
    """What one agent does, and where.  Plain values only: it travels as JSON or to a Dask worker."""

    name: str
    kind: str
    folder_url: str  # the drill's canary folder on the target, without cmk::
    key_uri: str
    home: str  # the scratch vault's home
    cache_ttl: float
    control_dir: str
    pace: float  # seconds between attempts
    max_seconds: float  # the agent stops by itself after this long, whatever happens
    storage_options: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)  # may hold secrets
    seed: str = field(default="", repr=False)  # hex: the binary canary's content
    parent_pid: int | None = None
    mountpoint: str = ""  # the mount kinds: where the canary folder is mounted

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown agent kind {self.kind!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict()).encode("utf-8")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AgentSpec:
        return cls(**dict(data))

    @classmethod
    def from_json(cls, raw: bytes) -> AgentSpec:
        if len(raw) > MAX_SPEC_BYTES:
            raise ValueError("agent spec too large")
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("an agent spec is a JSON object")
        return cls.from_dict(data)


# -- the canaries ---------------------------------------------------------------------------------------------------


def binary_canary(seed: str) -> bytes:
    """The binary canary's plaintext: a fixed prefix, then bytes drawn from ``seed`` (readers check against it)."""
    return CANARY_PREFIX + hashlib.shake_256(bytes.fromhex(seed)).digest(BINARY_SIZE - len(CANARY_PREFIX))


def _parquet_table() -> Any:
    import pyarrow as pa

    return pa.table({"n": list(range(PARQUET_ROWS)), "label": [f"canary-row-{i:05d}" for i in range(PARQUET_ROWS)]})


def drill_filesystem(
    folder_url: str, storage_options: Mapping[str, Mapping[str, Any]], key_uri: str, home: str, cache_ttl: float
) -> tuple[Any, str]:
    """``(cmk filesystem, folder path)`` over the drill's canary folder, using only the scratch vault.

    ``policy={}`` and the scratch home as the local provider's home: the user's own
    configuration (default key, capacities, cache TTL) plays no part, whatever
    ``$CMKFS_HOME`` says.
    """
    import fsspec

    cmk = {
        "key": key_uri,
        "cache_ttl": cache_ttl,
        "policy": {},
        "key_provider_options": {"local": {"home": home}},
        "skip_instance_cache": True,  # a key cache of its own: never one another drill or caller shares
    }
    options = {protocol: dict(value) for protocol, value in storage_options.items()}
    fs, path = fsspec.url_to_fs("cmk::" + folder_url, cmk=cmk, **options)
    return fs, str(path).rstrip("/")


def write_canaries(fs: Any, folder: str, seed: str) -> None:
    """Write the binary and Parquet canaries into ``folder`` (and make the writer's folder)."""
    import pyarrow.parquet as pq

    fs.makedirs(f"{folder}/{WRITES_DIR}", exist_ok=True)
    with fs.open(f"{folder}/{BINARY_NAME}", "wb") as f:
        f.write(binary_canary(seed))
    with fs.open(f"{folder}/{PARQUET_NAME}", "wb") as f:
        pq.write_table(_parquet_table(), f)


# -- one attempt of each kind ---------------------------------------------------------------------------------------


class _HeldOpen:
    """One handle, opened at the first attempt and never reopened: what a long-running reader holds."""

    def __init__(self, fs: Any, folder: str, spec: AgentSpec) -> None:
        self.fs, self.path = fs, f"{folder}/{BINARY_NAME}"
        self.expected = binary_canary(spec.seed)
        self.rng = random.Random(spec.name)
        self.handle: Any = None

    def __call__(self) -> None:
        if self.handle is None:
            self.handle = self.fs.open(self.path, "rb")
        offset = self.rng.randrange(BINARY_SIZE - READ_SIZE)
        self.handle.seek(offset)
        if self.handle.read(READ_SIZE) != self.expected[offset : offset + READ_SIZE]:
            raise CanaryMismatch()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


class _NewHandle(_HeldOpen):
    """A new handle for every read: the header, the key lookup and the read, each time."""

    def __call__(self) -> None:
        offset = self.rng.randrange(BINARY_SIZE - READ_SIZE)
        with self.fs.open(self.path, "rb") as f:
            f.seek(offset)
            data = f.read(READ_SIZE)
        if data != self.expected[offset : offset + READ_SIZE]:
            raise CanaryMismatch()


class _Parquet:
    """One column of the Parquet canary through pyarrow, as an analytics engine reads it."""

    def __init__(self, fs: Any, folder: str, spec: AgentSpec) -> None:
        self.fs, self.path = fs, f"{folder}/{PARQUET_NAME}"

    def __call__(self) -> None:
        import pyarrow.parquet as pq

        column = pq.read_table(self.path, filesystem=self.fs, columns=["n"]).column("n")
        if len(column) != PARQUET_ROWS or column.to_pylist() != list(range(PARQUET_ROWS)):
            raise CanaryMismatch()

    def close(self) -> None:
        pass


class _Writer:
    """A new small file per attempt, published by ``close()`` at the end of its ``with`` block."""

    def __init__(self, fs: Any, folder: str, spec: AgentSpec) -> None:
        self.fs, self.folder, self.name = fs, f"{folder}/{WRITES_DIR}", spec.name
        self.count = 0

    def __call__(self) -> None:
        self.count += 1
        with self.fs.open(f"{self.folder}/{write_name(self.name, self.count)}", "wb") as f:
            f.write(os.urandom(WRITE_SIZE))

    def close(self) -> None:
        pass


def write_name(agent: str, count: int) -> str:
    """The name of a writer's ``count``-th file (from 1) in the writes folder: one per attempt."""
    return f"{agent}-{count:06d}.bin"


class _MountHeldOpen:
    """One descriptor on the binary canary through the mount, opened at the first attempt and kept."""

    def __init__(self, _fs: Any, mountpoint: str, spec: AgentSpec) -> None:
        self.path = os.path.join(mountpoint, BINARY_NAME)
        self.expected = binary_canary(spec.seed)
        self.rng = random.Random(spec.name)
        self.fd: int | None = None

    def _read(self, fd: int) -> None:
        offset = self.rng.randrange(BINARY_SIZE - READ_SIZE)
        if os.pread(fd, READ_SIZE, offset) != self.expected[offset : offset + READ_SIZE]:
            raise CanaryMismatch()

    def __call__(self) -> None:
        if self.fd is None:
            self.fd = os.open(self.path, os.O_RDONLY)
        self._read(self.fd)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)


class _MountNewOpen(_MountHeldOpen):
    """Open, read, close through the mount, each attempt: a lookup, an open and a read every time."""

    def __call__(self) -> None:
        fd = os.open(self.path, os.O_RDONLY)
        try:
            self._read(fd)
        finally:
            os.close(fd)


class _MountParquet:
    """One column of the Parquet canary by its path in the mount: pyarrow's own local file reader."""

    def __init__(self, _fs: Any, mountpoint: str, spec: AgentSpec) -> None:
        self.path = os.path.join(mountpoint, PARQUET_NAME)

    def __call__(self) -> None:
        import pyarrow.parquet as pq

        column = pq.read_table(self.path, columns=["n"]).column("n")
        if len(column) != PARQUET_ROWS or column.to_pylist() != list(range(PARQUET_ROWS)):
            raise CanaryMismatch()

    def close(self) -> None:
        pass


class _MountWriter:
    """A new small file per attempt through the mount; ``ok`` when ``close()`` returned without error.

    The mount confirms the key at ``close(2)`` (its ``flush``) and publishes at the release that
    follows; a refusal there fails the ``close`` and nothing is published (docs/MOUNT.md).
    """

    def __init__(self, _fs: Any, mountpoint: str, spec: AgentSpec) -> None:
        self.folder, self.name = os.path.join(mountpoint, WRITES_DIR), spec.name
        self.count = 0

    def __call__(self) -> None:
        self.count += 1
        with open(os.path.join(self.folder, write_name(self.name, self.count)), "wb", buffering=0) as f:
            f.write(os.urandom(WRITE_SIZE))

    def close(self) -> None:
        pass


_OPERATIONS: dict[str, Callable[[Any, str, AgentSpec], Any]] = {
    "held-open": _HeldOpen,
    "new-handle": _NewHandle,
    "parquet": _Parquet,
    "writer": _Writer,
    "mount-held-open": _MountHeldOpen,
    "mount-new-open": _MountNewOpen,
    "mount-parquet": _MountParquet,
    MOUNT_WRITER: _MountWriter,
}


def _outcome(exc: Exception, through_mount: bool) -> str:
    """An error as recorded: its class name; through a mount an ``OSError`` by its errno's name."""
    code = exc.errno if through_mount and isinstance(exc, OSError) else None
    if code is not None and code in errno.errorcode:
        return errno.errorcode[code]
    return type(exc).__name__


# -- the loop -------------------------------------------------------------------------------------------------------


def _mark(path: Path, present: bool, content: str = "") -> None:
    try:
        if present:
            # Whole or not at all: the drill reads a mark (the agent's pid) as soon as it sees it.
            partial = path.with_name(f".{path.name}.{os.getpid()}")
            partial.write_text(content)
            os.replace(partial, path)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass  # the control directory is gone: the loop sees it and stops


def _told_to_stop(spec: AgentSpec, control: Path, deadline: float) -> bool:
    if not control.is_dir() or (control / STOP_MARK).exists():
        return True
    if spec.parent_pid is not None and os.getppid() != spec.parent_pid:
        return True  # the drill is gone (killed): do not outlive it
    return key_clock() >= deadline


def run_agent(spec: AgentSpec | Mapping[str, Any]) -> dict[str, Any]:
    """Attempt, record, pause, until told to stop; return ``{name, kind, pid, cache_ttl, attempts, fatal}``.

    ``fatal`` is the class name of an error that stopped the agent outside an
    attempt (setting up its filesystem), else ``None``.
    """
    if not isinstance(spec, AgentSpec):
        spec = AgentSpec.from_dict(spec)
    control = Path(spec.control_dir)
    deadline = key_clock() + spec.max_seconds
    attempts: list[Attempt] = []
    fatal: str | None = None
    operation: Any = None
    ready = refused = False
    try:
        through_mount = spec.kind.startswith(MOUNT_PREFIX)
        if through_mount:  # plain OS file I/O on the mountpoint: no filesystem, no key in this process
            fs, folder = None, spec.mountpoint
        else:
            fs, folder = drill_filesystem(
                spec.folder_url, spec.storage_options, spec.key_uri, spec.home, spec.cache_ttl
            )
        operation = _OPERATIONS[spec.kind](fs, folder, spec)
        while not _told_to_stop(spec, control, deadline):
            start = key_clock()
            try:
                operation()
                outcome = OK
            except Exception as exc:  # noqa: BLE001 - every failure is an outcome; only its class is kept
                outcome = _outcome(exc, through_mount)
            attempts.append((start, key_clock(), outcome))
            if outcome == OK and not ready:
                ready = True
                _mark(control / f"{READY_MARK}{spec.name}", True, str(os.getpid()))
            if ready and (outcome in REFUSALS) != refused:
                refused = outcome in REFUSALS
                _mark(control / f"{REFUSED_MARK}{spec.name}", refused)
            time.sleep(spec.pace)
    except Exception as exc:  # noqa: BLE001 - reported by class name; the drill says the agent failed
        fatal = type(exc).__name__
    finally:
        if operation is not None:
            try:
                operation.close()
            except Exception:  # noqa: BLE001 - a handle refused by the key may refuse to close too
                pass
    return {
        "name": spec.name,
        "kind": spec.kind,
        "pid": os.getpid(),
        "cache_ttl": spec.cache_ttl,
        "attempts": attempts,
        "fatal": fatal,
    }


def ignore_terminal_signals() -> None:
    """Run on each Dask worker (its main thread): Ctrl-C and a hang-up are for the drill, which stops the agents."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def main() -> int:
    """``python -m cmkfs.admin.drill_agents``: a spec on stdin, the result as one JSON line on stdout."""
    try:
        spec = AgentSpec.from_json(sys.stdin.buffer.read(MAX_SPEC_BYTES + 1))
    except (ValueError, TypeError) as exc:
        print(json.dumps({"fatal": type(exc).__name__}), flush=True)
        return 1
    result = run_agent(spec)
    print(json.dumps(result), flush=True)
    return 0 if result["fatal"] is None else 1


if __name__ == "__main__":
    sys.exit(main())
