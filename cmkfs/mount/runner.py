"""Mounting a ``cmk`` store with FUSE: in the foreground, as a detached process, and unmounting.

:func:`serve` mounts and serves in the calling (main) thread until the mount goes away.  It blocks
SIGINT, SIGTERM and SIGHUP in every thread and waits for them on a thread of its own: libfuse's
own handlers only stop its loop when the signal lands on the main thread, and Python's never run
while the main thread is inside libfuse.  The first signal unmounts (``fusermount3 -u``); if
programs still have files open, new opens are refused and the unmount is retried until they have
closed them (never lazily: see :meth:`_Stopper.try_unmount`).  A second signal stops at once,
discarding unfinished writes.

:func:`start_background` starts ``python -m cmkfs.mount`` in a new session, hands it the
:class:`MountSpec` on its stdin (storage options may hold credentials: never on a command line),
and returns its pid once the mountpoint is mounted.  Until then the child's stderr is a pipe to
the caller, so an error is reported where the command was typed; once mounted, the child's
output goes to the log file (or nowhere).

:func:`unmount` unmounts a cmkfs mount with ``fusermount3 -u`` (``fusermount``, or ``umount`` as
root, where that is what there is) and says plainly when programs still use it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from types import ModuleType
from typing import Any, NoReturn

from ..errors import CMKError, ConfigurationError
from .operations import ATTR_TIMEOUT, MountOperations

__all__ = [
    "FSTYPE",
    "READY_TIMEOUT",
    "MountBusyError",
    "MountError",
    "MountSpec",
    "NotMountedError",
    "check_mountpoint",
    "exit_process",
    "load_fuse",
    "mount_type",
    "open_target",
    "serve",
    "start_background",
    "unmount",
]

log = logging.getLogger("cmkfs.mount")

#: The filesystem type the kernel lists for a cmkfs mount (``fuse.`` + the subtype).
FSTYPE = "fuse.cmkfs"
#: Seconds a mount may take to appear (a remote store's first checks included).
READY_TIMEOUT = 30.0
#: Seconds between unmount attempts while a stopping mount waits for open files to be closed.
DRAIN_INTERVAL = 0.25
#: Seconds ``unmount`` retries a busy mount before it says so.
BUSY_GRACE = 1.0
#: Seconds ``fusermount -u`` may take.
UNMOUNT_TIMEOUT = 30.0
#: libfuse worker threads: requests served at once (concurrent readers, a listing beside a copy).
MAX_THREADS = 16
MAX_IDLE_THREADS = 8
STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
FUSE_PACKAGE = "fuse3"  # Debian and Ubuntu: libfuse3 and fusermount3
# libfuse 3.16+ (fuse_common.h): lets MAP_SHARED map direct_io files through the page cache.
FUSE_CAP_DIRECT_IO_ALLOW_MMAP = 1 << 28
PR_SET_DUMPABLE = 4  # linux/prctl.h


class MountError(CMKError):
    """Mounting or unmounting failed (the message says why and what to do)."""


class MountBusyError(MountError):
    """The mount is in use: programs have files or directories open under it."""


class NotMountedError(MountError):
    """Nothing is mounted there."""


@dataclass
class MountSpec:
    """What to mount where: plain values only (it travels to a detached mount process as JSON)."""

    target: str  # a cmk:: URL, a plain URL or path, or a capacity name
    mountpoint: str
    read_only: bool = False
    key: str | None = None
    cache_ttl: float | None = None
    storage_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    log_file: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> MountSpec:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ConfigurationError("a mount spec is a JSON object")
        return cls(**data)


# -- prerequisites ------------------------------------------------------------------------------


def load_fuse() -> ModuleType:
    """mfusepy, imported on first use, or an ``ImportError`` that says what to install."""
    already = "mfusepy" in sys.modules
    # mfusepy takes libfuse 2 when both are installed; 3 has rename flags, larger requests and
    # atomic O_TRUNC by default.  An explicit FUSE_LIBRARY_PATH or FUSE_LIBRARY_NAME wins.
    prefer3 = not already and not (os.environ.get("FUSE_LIBRARY_PATH") or os.environ.get("FUSE_LIBRARY_NAME"))
    if prefer3 and ctypes.util.find_library("fuse3"):
        os.environ["FUSE_LIBRARY_NAME"] = "fuse3"
    else:
        prefer3 = False
    try:
        import mfusepy
    except ModuleNotFoundError as exc:
        if exc.name != "mfusepy":
            raise
        raise ImportError("cmkfs mount needs mfusepy: pip install 'cmkfs[mount]'") from exc
    except (OSError, AttributeError) as exc:  # mfusepy loads libfuse when imported
        raise ImportError(
            f"cmkfs mount needs libfuse 3 (or 2): apt-get install {FUSE_PACKAGE} on Debian and Ubuntu, "
            f"dnf install fuse3 on Fedora ({exc})"
        ) from exc
    finally:
        if prefer3:
            del os.environ["FUSE_LIBRARY_NAME"]  # read once, at import
    module: ModuleType = mfusepy
    return module


def check_mountpoint(mountpoint: str) -> str:
    """The mountpoint with symlinks resolved (as the kernel lists it in /proc/mounts), after the
    checks that give a clear message before libfuse's own."""
    path = os.path.realpath(os.path.expanduser(mountpoint))
    if not os.path.isdir(path):
        raise MountError(f"{path}: the mountpoint must be an existing directory")
    if mount_type(path) is not None or os.path.ismount(path):
        raise MountError(f"{path} is already a mountpoint")
    if sys.platform.startswith("linux") and not os.path.exists("/dev/fuse"):
        raise MountError(
            "/dev/fuse is missing: load the fuse module (modprobe fuse); in a container, "
            "pass the device (docker run --device /dev/fuse --cap-add SYS_ADMIN)"
        )
    if os.geteuid() != 0 and _fusermount() is None:
        raise MountError(f"fusermount3 is missing: apt-get install {FUSE_PACKAGE}")
    return path


def _fusermount() -> str | None:
    return shutil.which("fusermount3") or shutil.which("fusermount")


def mount_type(path: str) -> str | None:
    """The filesystem type mounted at ``path`` (``/proc/self/mounts``), or None."""
    path = os.path.realpath(path)  # the kernel lists the resolved path
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="surrogateescape") as mounts:
            lines = mounts.read().splitlines()
    except OSError:
        return None
    found = None
    for line in lines:
        fields = line.split(" ")
        if len(fields) >= 3 and _unescape(fields[1]) == path:
            found = fields[2]  # the last one listed is the one on top
    return found


def _unescape(text: str) -> str:
    """A path as /proc/self/mounts writes it (space, tab, newline, backslash as octal escapes)."""
    for code in ("\\040", "\\011", "\\012", "\\134"):
        text = text.replace(code, chr(int(code[1:], 8)))
    return text


# -- the store ----------------------------------------------------------------------------------


def open_target(spec: MountSpec) -> tuple[Any, str]:
    """``(cmk filesystem, root path)`` for ``spec.target``; the root is made if it is missing
    (a new capacity), unless the mount is read-only."""
    from ..admin.convert import open_location
    from ..policy import load_policy

    options = {protocol: dict(values) for protocol, values in (spec.storage_options or {}).items()}
    if spec.cache_ttl is not None:
        options.setdefault("cmk", {})["cache_ttl"] = spec.cache_ttl
    location = open_location(spec.target, load_policy(), key=spec.key, storage_options=options)
    fs, root = location.fs, location.path
    try:
        info = fs.info(root)
    except FileNotFoundError:
        if spec.read_only:
            raise MountError(f"{spec.target}: no such folder") from None
        fs.makedirs(root, exist_ok=True)
    else:
        if info.get("type") != "directory":
            raise MountError(f"{spec.target} is a file: mount the folder that holds it")
    return fs, root


def resolve_target(target: str) -> str:
    """``target`` as a URL that means the same in any working directory (capacity names as their root)."""
    from ..policy import load_policy

    return load_policy().resolve(target)[0]


# -- serving ------------------------------------------------------------------------------------


class _Stopper:
    """Turns stop signals into an unmount (see the module docstring)."""

    def __init__(self, mountpoint: str, ops: MountOperations) -> None:
        self.mountpoint = mountpoint
        self.ops = ops
        self.lock = threading.Lock()
        self.signals = 0
        self.ready = False
        self.draining = False  # asked to stop while busy: waiting for open files to be closed
        self.done = False

    def mounted(self) -> None:
        with self.lock:
            self.ready = True
            stopping = self.signals > 0
        if stopping:
            self.try_unmount()  # a signal came while mounting

    def on_signal(self, signum: int) -> None:
        with self.lock:
            self.signals += 1
            first, ready = self.signals == 1, self.ready
        name = signal.Signals(signum).name
        if first:
            log.info("%s: unmounting", name)
            if ready:
                self.try_unmount()
            return
        # A second signal: stop now.  Unfinished writes are discarded (the previous versions stay).
        log.warning("%s again: stopping now with %d open file(s)", name, self.ops.open_files)
        self.ops.close_all()
        try:
            unmount(self.mountpoint, lazy=True)  # nothing left to lose: every writer is discarded
        except MountError:
            pass
        logging.shutdown()
        os._exit(128 + signum)

    def try_unmount(self) -> None:
        """Unmount; if programs still use the mount, refuse new opens and try again later.

        Never lazily: after a lazy unmount the kernel drops the release of a file closed later,
        so a write the program closed successfully would never be published."""
        try:
            unmount(self.mountpoint, grace=0)  # called again and again while draining
        except MountBusyError:
            if not self.draining:
                self.draining = True
                self.ops.draining = True
                log.warning(
                    "%s is busy (%d open file(s)): new opens are refused; unmounting once they are closed "
                    "(signal again to stop now, discarding unfinished writes)",
                    self.mountpoint,
                    self.ops.open_files,
                )
        except MountError as exc:
            log.error("%s", exc)


def _wait_for_signals(stopper: _Stopper) -> None:
    while True:
        # Wake up now and then: while draining (which the readiness thread may start too), to try
        # the unmount again.
        info = signal.sigtimedwait(STOP_SIGNALS, DRAIN_INTERVAL)
        if stopper.done:
            return
        if info is not None:
            stopper.on_signal(info.si_signo)
        elif stopper.draining:
            stopper.try_unmount()


def _watch_ready(stopper: _Stopper, on_ready: Callable[[], None] | None) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while not stopper.done and time.monotonic() < deadline:
        if os.path.ismount(stopper.mountpoint):
            try:
                if on_ready is not None:
                    on_ready()
            except Exception as exc:  # noqa: BLE001 - reported, and the mount goes
                log.error("%s: %s", stopper.mountpoint, exc)
                with stopper.lock:
                    stopper.signals += 1  # as if stopped: mounted() unmounts
            stopper.mounted()
            return
        time.sleep(0.02)
    if not stopper.done:
        log.error("%s did not appear within %.0f s", stopper.mountpoint, READY_TIMEOUT)


def _fuse_class(mfusepy: ModuleType) -> Any:
    """mfusepy's ``FUSE``, passing renameat2's flags on (mfusepy 3.1 drops them, so that
    ``RENAME_NOREPLACE`` would overwrite).  Kept here, with a test that fails if mfusepy moves."""
    base = mfusepy.FUSE
    if not hasattr(base, "rename_fuse_3"):
        return base  # libfuse 2 has no rename flags
    version = (int(mfusepy.fuse_version_major), int(mfusepy.fuse_version_minor))

    class FUSE(base):  # type: ignore[misc, valid-type]  # mfusepy is untyped
        def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
            result: int = self.operations.rename(
                old.decode(self.encoding, self.errors), new.decode(self.encoding, self.errors), flags
            )
            return result

        def init_fuse_3(self, conn: Any, config: Any) -> None:
            if conn:
                refuse_shared_mmap(conn.contents, version)
            super().init_fuse_3(conn, config)

    return FUSE


def refuse_shared_mmap(conn: Any, fuse_version: tuple[int, int]) -> None:
    """Never ask the kernel for ``FUSE_DIRECT_IO_ALLOW_MMAP`` (libfuse 3.16+, kernel 6.6+).

    With it, ``mmap(MAP_SHARED)`` of a ``direct_io`` file goes through the page cache: plaintext
    kept by the kernel and served without the key check.  Without it such a mapping fails with
    ``ENODEV``.  ``conn`` is libfuse's ``fuse_conn_info``, in the init callback."""
    if fuse_version >= (3, 16):
        conn.want &= ~FUSE_CAP_DIRECT_IO_ALLOW_MMAP


def fuse_options(
    *, read_only: bool, attr_timeout: float = ATTR_TIMEOUT, fuse_version: tuple[int, int] = (3, 0)
) -> dict[str, Any]:
    """The libfuse mount options of a cmkfs mount (docs/MOUNT.md, "Caching")."""
    options: dict[str, Any] = {
        "foreground": True,  # never libfuse's fork: this process has threads
        "fsname": "cmkfs",
        "subtype": "cmkfs",  # listed as fuse.cmkfs
        "default_permissions": True,  # the kernel checks modes (0444 on a read-only mount)
        "ro": read_only,
        "attr_timeout": attr_timeout,  # metadata only, and briefly
        "entry_timeout": attr_timeout,
        "negative_timeout": 0,  # a file created in the store shows up at once
        "direct_io": True,  # no page cache: every read reaches the key check (also set per handle)
        "hard_remove": True,  # no .fuse_hidden files in the store for removed open files
    }
    if fuse_version < (3, 0):
        # libfuse 2: O_TRUNC in open (not a separate truncate that would publish an empty version
        # before the new one is written), and writes larger than 4 KiB.
        options["atomic_o_trunc"] = True
        options["big_writes"] = True
    else:
        # Idle worker threads kept (libfuse 3.12 to 3.14.0 default to an invalid value and say so).
        options["max_idle_threads"] = MAX_IDLE_THREADS
    if fuse_version >= (3, 12):
        options["max_threads"] = MAX_THREADS
    return options


def serve(
    fs: Any,
    root: str,
    mountpoint: str,
    *,
    read_only: bool = False,
    on_ready: Callable[[], None] | None = None,
    attr_timeout: float = ATTR_TIMEOUT,
) -> None:
    """Mount ``root`` of ``fs`` at ``mountpoint`` and serve it until it is unmounted.

    Call from the main thread.  ``on_ready`` runs once the mountpoint is mounted.  Returns after
    an unmount (``cmkfs unmount``, ``fusermount3 -u``, SIGINT, SIGTERM or SIGHUP); raises
    :class:`MountError` if libfuse could not mount."""
    mfusepy = load_fuse()
    version = (int(mfusepy.fuse_version_major), int(mfusepy.fuse_version_minor))
    logging.getLogger("fuse").setLevel(logging.WARNING)  # mfusepy's debug lines quote raw requests

    def caller() -> int:
        pid: int = mfusepy.fuse_get_context()[2]  # the task whose request is being served
        return pid

    ops = MountOperations(fs, root, read_only=read_only, attr_timeout=attr_timeout, caller=caller)
    harden_process()
    stopper = _Stopper(mountpoint, ops)
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # every thread started from here on too
    waiter = threading.Thread(target=_wait_for_signals, args=(stopper,), name="cmkfs-mount-signals", daemon=True)
    watcher = threading.Thread(target=_watch_ready, args=(stopper, on_ready), name="cmkfs-mount-ready", daemon=True)
    waiter.start()
    watcher.start()
    try:
        _fuse_class(mfusepy)(
            ops,
            mountpoint,
            raw_fi=True,
            **fuse_options(read_only=read_only, attr_timeout=attr_timeout, fuse_version=version),
        )
    except RuntimeError as exc:
        if not stopper.ready:
            raise MountError(f"libfuse could not mount {mountpoint} (its message is above)") from exc
        # Served, then ended with an error code: the kernel aborted the connection as the mount
        # went (libfuse 3.14 counts ECONNABORTED as an error).  The mount is gone either way.
        log.warning("%s: the FUSE connection ended with an error (%s)", mountpoint, exc)
    finally:
        stopper.done = True
        ops.close_all()
        if waiter.is_alive():
            with contextlib.suppress(ProcessLookupError):
                signal.pthread_kill(waiter.ident or 0, signal.SIGHUP)  # wakes sigwait; it sees done and returns
            waiter.join(5)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    log.info("unmounted %s", mountpoint)


def exit_process(code: int) -> NoReturn:
    """End the process after :func:`serve`, skipping the interpreter's C-level teardown.

    libfuse stops its worker threads with ``pthread_cancel``; one cancelled while printing (its
    "reading device" message when the kernel aborts the connection) leaves the C ``stderr`` lock
    taken, and the interpreter's last ``fflush(stderr)`` would then wait for ever.  Python's own
    streams and the log are flushed first; nothing else is pending (writers were discarded)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def harden_process() -> None:
    """The mount process holds plaintext and keys: no core dump, no ptrace, no /proc/PID/mem.

    ``PR_SET_DUMPABLE 0`` (Linux) stops core dumps even where ``core_pattern`` pipes them to a
    program (which ignores ``RLIMIT_CORE``), and keeps processes of the same user from attaching
    to this one or reading its memory.  Best effort: the mount works without either."""
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ImportError, ValueError, OSError):
        pass
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
        except (OSError, AttributeError):
            pass


# -- in the background --------------------------------------------------------------------------


def start_background(spec: MountSpec, *, timeout: float = READY_TIMEOUT) -> int:
    """Start a detached mount process for ``spec``; return its pid once the mount is there."""
    spec.mountpoint = check_mountpoint(spec.mountpoint)
    load_fuse()  # a missing package is reported here, not in a child's log
    spec.target = resolve_target(spec.target)
    if spec.log_file is not None:
        spec.log_file = os.path.abspath(spec.log_file)
        try:
            os.close(open_log(spec.log_file))  # writable: checked here, where a failure can be reported
        except OSError as exc:
            raise MountError(f"--log-file {spec.log_file}: {exc.strerror}") from None
    child = subprocess.Popen(
        [sys.executable, "-m", "cmkfs.mount"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # not stopped by the terminal's Ctrl-C or hangup
        close_fds=True,
    )
    assert child.stdin is not None and child.stderr is not None
    try:
        child.stdin.write(spec.to_json().encode())
        child.stdin.close()
    except BrokenPipeError:
        pass
    output: list[bytes] = []
    stderr = child.stderr
    reader = threading.Thread(target=lambda: output.append(stderr.read()), daemon=True)
    reader.start()
    # The child closes its end of the pipe once the mount is there (or when it exits).
    reader.join(timeout)
    if reader.is_alive():
        child.kill()
        child.wait()
        _unmount_quietly(spec.mountpoint)
        raise MountError(f"{spec.mountpoint} was not mounted within {timeout:.0f} s")
    text = b"".join(output).decode(errors="replace").strip()
    if child.poll() is None and os.path.ismount(spec.mountpoint):
        return child.pid
    try:
        code = child.wait(5)
    except subprocess.TimeoutExpired:
        child.kill()
        code = child.wait()
    raise MountError(text or f"the mount process exited with code {code}")


def open_log(path: str) -> int:
    """A descriptor appending to the log file ``path``, which is made (or kept) ``0600``.

    The log names paths and keys: never readable by others whatever the umask, and never a file
    that a planted symlink points at (``O_NOFOLLOW``: ``ELOOP``)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an existing log, made under a looser umask
    except OSError:
        os.close(fd)
        raise
    return fd


def detach_output(log_file: str | None) -> None:
    """Point stdin at /dev/null and stdout and stderr at ``log_file`` (or /dev/null): the caller
    that read them until now has gone."""
    null = os.open(os.devnull, os.O_RDWR)
    out = null
    if log_file is not None:
        out = open_log(log_file)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(null)
    if out != null:
        os.close(out)


class _EscapingFormatter(logging.Formatter):
    """Paths in log lines come from programs and the store: control characters are shown as
    escapes (and backslashes doubled), as ``cmkfs.cli.output.printable`` does for the terminal."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return "".join(ch if ch.isprintable() and ch != "\\" else ascii(ch)[1:-1] for ch in text)


def main_detached() -> int:
    """``python -m cmkfs.mount``: the detached mount process (:func:`start_background`)."""
    handler = logging.StreamHandler()
    handler.setFormatter(_EscapingFormatter("%(asctime)s cmkfs mount[%(process)d]: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        spec = MountSpec.from_json(sys.stdin.read())
        fs, root = open_target(spec)
        os.chdir("/")  # hold no directory busy

        def ready() -> None:
            detach_output(spec.log_file)
            log.info("mounted %s at %s%s", spec.target, spec.mountpoint, " (read-only)" if spec.read_only else "")

        serve(fs, root, spec.mountpoint, read_only=spec.read_only, on_ready=ready)
    except (CMKError, OSError, ImportError, ValueError, TypeError) as exc:
        print(f"cmkfs: error: {exc}", file=sys.stderr)
        return 1
    exit_process(0)


# -- unmounting ---------------------------------------------------------------------------------


def unmount(mountpoint: str, *, lazy: bool = False, grace: float = BUSY_GRACE) -> None:
    """Unmount the cmkfs mount at ``mountpoint``.

    Raises :class:`MountBusyError` if programs still use it after ``grace`` seconds of retrying
    (the kernel keeps a mount busy until the release of a file just closed is answered),
    :class:`NotMountedError` if nothing is mounted there, :class:`MountError` if something else
    is.  ``lazy`` detaches it even so: only for a mount whose process is gone or discarding its
    writes, since the kernel drops the release of a file closed after a lazy unmount (its write
    would be lost)."""
    path = os.path.realpath(mountpoint)  # as /proc/mounts lists it
    kind = mount_type(path)
    if kind is None and os.path.exists("/proc/self/mounts"):
        raise NotMountedError(f"{path} is not mounted")
    if kind is not None and kind != FSTYPE:
        raise MountError(f"{path} is not a cmkfs mount (it is {kind})")
    tool = _fusermount()
    if tool is not None:
        command = [tool, "-u", *(["-z"] if lazy else []), path]
    elif os.geteuid() == 0 and shutil.which("umount"):
        command = ["umount", *(["-l"] if lazy else []), path]
    else:
        raise MountError(f"fusermount3 is missing: apt-get install {FUSE_PACKAGE}")
    deadline = time.monotonic() + grace
    while True:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=UNMOUNT_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            raise MountError(f"{' '.join(command)} did not finish within {UNMOUNT_TIMEOUT:.0f} s") from None
        if done.returncode == 0:
            return
        message = (done.stderr or done.stdout).strip()
        if "busy" not in message.lower() or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    if "busy" in message.lower():
        raise MountBusyError(
            f"{path} is busy: programs have files or directories open under it (fuser -vm {path} lists "
            "them); close them, or send the mount process SIGTERM: it refuses new opens and unmounts "
            "once they are closed"
        )
    if "not found" in message.lower() or "not mounted" in message.lower():
        raise NotMountedError(f"{path} is not mounted")
    raise MountError(message or f"{command[0]} exited with code {done.returncode}")


def _unmount_quietly(mountpoint: str) -> None:
    try:
        unmount(mountpoint, lazy=True)
    except MountError:
        pass
