"""``cmkfs drill --mount``: the canary folder mounted through FUSE while the drill runs, and what it wrote.

:class:`DrillMount` starts ``python -m cmkfs mount ... --foreground`` at a private temporary
mountpoint, unmounts and stops it once the agents are gone, and checks that each write through the
mount whose ``close()`` returned is in the store.  :func:`check_fuse` says beforehand whether a
mount can run on this host.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..clock import key_clock
from ..errors import ConfigurationError
from .drill_agents import OK, WRITE_SIZE, WRITES_DIR, drill_filesystem, write_name
from .drill_evidence import CANARY_FOLDER_PREFIX, DrillConfig, redact_url
from .drill_runners import POLL, STOP_TIMEOUT, DrillError, Say

__all__ = ["MOUNT_FSTYPE", "MOUNT_TIMEOUT", "NOT_PUBLISHED", "UNMOUNT_TIMEOUT", "DrillMount", "check_fuse"]

MOUNT_TIMEOUT = 30.0  # for the mount to appear (a remote store's first checks included)
UNMOUNT_TIMEOUT = 40.0  # for `cmkfs unmount` (its own fusermount wait is 30 s)
MOUNT_FSTYPE = "fuse.cmkfs"
# A writer's attempt whose close() returned but whose file is not in the store: recorded so, not as "ok".
NOT_PUBLISHED = "NotPublished"


class DrillMount:
    """The mount of one drill's canary folder, so that clean-up knows what of it exists."""

    def __init__(
        self,
        config: DrillConfig,
        drill_id: str,
        target: str,
        folder_url: str,
        key_uri: str,
        home: Path,
        control: Path,
        agent_env: Callable[[], dict[str, str]],
        say: Say,
    ) -> None:
        self.config, self.drill_id, self.say = config, drill_id, say
        self.target, self.folder_url, self.key_uri = target, folder_url, key_uri
        self.home, self.control = home, control  # the scratch vault and the drill's control folder in it
        self.agent_env = agent_env  # the environment of the drill's processes, as it is at each call
        self.mountpoint: Path | None = None  # a private directory of ours, mounted while the drill runs
        self.process: subprocess.Popen[bytes] | None = None
        self.writes: dict[str, int] = {}

    @property
    def shown_folder(self) -> str:
        """The canary folder's URL as messages show it: never with the target's credentials."""
        return redact_url(self.folder_url)

    def start(self) -> None:
        """``python -m cmkfs mount`` of the canary folder, in the foreground of a process of its own."""
        config = self.config
        self.mountpoint = Path(tempfile.mkdtemp(prefix=f"{CANARY_FOLDER_PREFIX}{self.drill_id}-mnt-"))
        command = [sys.executable, "-m", "cmkfs", "mount", self.folder_url, str(self.mountpoint), "--foreground"]
        command += ["--cache-ttl", f"{config.reader_cache_ttl:g}", "--key", self.key_uri]
        if config.storage_options:
            command += ["--storage-options", "-"]  # on stdin: a command line is visible to every user
        log = self.control / "mount.log"
        with open(log, "wb") as out:
            # A session of its own: a Ctrl-C reaches the drill, which unmounts after the agents are gone.
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.agent_env(),
                start_new_session=True,
            )
        stdin = self.process.stdin
        assert stdin is not None
        with contextlib.suppress(BrokenPipeError):
            if config.storage_options:
                stdin.write(json.dumps(config.storage_options).encode("utf-8"))
        with contextlib.suppress(BrokenPipeError):
            stdin.close()
        deadline = key_clock() + MOUNT_TIMEOUT
        while _mount_type(self.mountpoint) != MOUNT_FSTYPE or not os.path.ismount(self.mountpoint):
            code = self.process.poll()
            if code is not None or key_clock() >= deadline:
                why = f"it exited with {code}" if code is not None else f"not within {MOUNT_TIMEOUT:.0f} s"
                raise DrillError(f"the mount of {self.shown_folder} did not appear ({why}){self._mount_said(log)}")
            time.sleep(POLL)
        self.say(f"canary folder mounted (cache TTL {config.reader_cache_ttl:g} s)")

    def _mount_said(self, log: Path) -> str:
        """The mount's last log line, for an error message: with the canary folder's URL shown redacted."""
        try:
            lines = log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        if not lines:
            return ""
        line = lines[-1].replace(self.folder_url, self.shown_folder).replace(self.target, redact_url(self.target))
        return f": {line[:300]}"

    def stop(self) -> None:
        """Unmount and stop the mount process, whatever state it is in; the agents are gone by now.

        ``cmkfs unmount`` first (it refuses while a file is open); then SIGTERM, on which the mount
        refuses new opens and unmounts once the open files are closed; then SIGKILL.  A lazy
        ``fusermount3 -u -z`` only for a mount whose process is gone: never while it could still
        publish a write (docs/MOUNT.md).  The mountpoint is removed only once nothing is mounted there.
        """
        mountpoint, process = self.mountpoint, self.process
        if mountpoint is None:
            return
        if process is not None:
            if process.poll() is None and _mount_type(mountpoint) is not None:
                with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                    subprocess.run(
                        [sys.executable, "-m", "cmkfs", "unmount", str(mountpoint)],
                        stdin=subprocess.DEVNULL,
                        capture_output=True,
                        env=self.agent_env(),
                        timeout=UNMOUNT_TIMEOUT,
                    )
            for stop in (None, process.terminate, process.kill):
                if stop is not None and process.poll() is None:
                    stop()
                try:
                    process.wait(timeout=STOP_TIMEOUT)
                    break
                except subprocess.TimeoutExpired:
                    continue
            if process.poll() is None:
                raise OSError("the mount process does not stop")
        if _mount_type(mountpoint) is not None:
            _lazy_unmount(mountpoint)  # its process is gone: nothing left to publish
        if _mount_type(mountpoint) is not None:
            raise OSError(f"{mountpoint} is still mounted")
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(mountpoint)  # never rmtree: had the unmount failed, that would remove through the mount
        self.mountpoint = None

    def check_writes(self, result: dict[str, Any] | None) -> None:
        """Each write through the mount whose ``close()`` returned must be in the store, with its size.

        ``result`` is the writer's, its attempts corrected in place.  After the mount process is gone
        (every release answered), before the key is destroyed.  Sizes come from the headers: the key is
        disabled, so the contents are not read back.  An attempt whose file is missing is recorded as
        :data:`NOT_PUBLISHED` instead of ``ok``; one refused at ``close()`` whose file is there anyway
        as ``ok`` (published: the verdict must see it).
        """
        if result is None:
            return
        fs, folder = drill_filesystem(
            self.folder_url, self.config.storage_options, self.key_uri, str(self.home), self.config.ttl
        )
        fs.invalidate_cache()
        try:
            entries = fs.ls(f"{folder}/{WRITES_DIR}", detail=True)
        except FileNotFoundError:
            entries = []
        sizes = {str(e["name"]).rstrip("/").rsplit("/", 1)[-1]: e.get("size") for e in entries}
        counts = dict.fromkeys(("closed_ok", "closed_ok_found", "closed_ok_missing", "refused_but_published"), 0)
        attempts = result["attempts"]
        for i, (start, end, outcome) in enumerate(attempts):
            present = sizes.get(write_name("writer", i + 1)) == WRITE_SIZE
            if outcome == OK:
                counts["closed_ok"] += 1
                counts["closed_ok_found" if present else "closed_ok_missing"] += 1
                if not present:
                    attempts[i] = [start, end, NOT_PUBLISHED]
            elif present:
                counts["refused_but_published"] += 1
                attempts[i] = [start, end, OK]
        self.writes = counts
        found, ok = counts["closed_ok_found"], counts["closed_ok"]
        self.say(f"writes through the mount: {found} of {ok} closed without error are in the store")
        if counts["refused_but_published"]:
            self.say(f"{counts['refused_but_published']} write(s) refused at close() were published all the same")


def _mount_type(path: Path) -> str | None:
    from ..mount.runner import mount_type

    return mount_type(str(path))


def _lazy_unmount(mountpoint: Path) -> None:
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    command = [tool, "-u", "-z"] if tool else ["umount", "-l"]
    subprocess.run([*command, str(mountpoint)], stdin=subprocess.DEVNULL, capture_output=True, timeout=UNMOUNT_TIMEOUT)


def check_fuse() -> None:
    """``--mount`` can run here: /dev/fuse, fusermount (or root's umount) and mfusepy with libfuse."""
    if not sys.platform.startswith("linux") or not os.path.exists("/dev/fuse"):
        raise ConfigurationError(
            "--mount needs /dev/fuse: load the fuse module (modprobe fuse); in a container, "
            "pass the device (--device /dev/fuse --cap-add SYS_ADMIN)"
        )
    if not (shutil.which("fusermount3") or shutil.which("fusermount")) and not (
        os.geteuid() == 0 and shutil.which("umount")
    ):
        raise ConfigurationError("--mount needs fusermount3: apt-get install fuse3")
    from ..mount.runner import load_fuse

    try:
        load_fuse()
    except ImportError as exc:
        raise ConfigurationError(f"--mount: {exc}") from None
