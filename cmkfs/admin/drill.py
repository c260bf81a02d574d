"""``cmkfs drill``: disable a key while readers and a writer use it, and measure when each one stops.

The evidence behind "unreadable within the TTL" (docs/SECURITY.md, "The TTL promise"),
measured on this host in real processes (docs/DRILL.md says how to read it):

1. a **scratch** embedded vault (a new 0700 directory) with one fresh key
   ``local://drill-<id>``: never a user's key, and the user's configuration in
   their own ``$CMKFS_HOME`` plays no part;
2. **canaries** in a fresh folder ``cmkfs-drill-<id>/`` of the target (a temporary
   local directory by default): a multi-segment binary file and a Parquet file;
3. N **readers** and one **writer** (:mod:`.drill_agents`), each a process of its own
   (or the readers as tasks on a Dask ``LocalCluster``), each with the key cache TTL;
4. once every agent has succeeded, the key is disabled; the call's start and return
   are read on :func:`cmkfs.clock.key_clock`, and the **bound** is
   ``disable_returned + TTL + TOLERANCE`` (until the call commits the vault still
   confirms the key; any copy cached before that expires within the TTL of it);
5. the agents go on until the bound plus a margin, always (so that every agent makes
   attempts after the bound); then they are stopped and their attempts collected;
6. clean-up, always (also on Ctrl-C, and on SIGTERM or SIGHUP under
   :func:`termination_interrupts`): agents stopped, the scratch key destroyed,
   canaries and scratch vault removed.

An agent **passes** when its first attempt refused by the key began at or before the
bound, it made attempts after the bound, and none of those returned data (a reader)
or published a file (the writer).  The drill passes when every agent does.

With ``mount=True`` (``cmkfs drill --mount``) the canary folder is mounted with
``python -m cmkfs mount ... --foreground --cache-ttl <reader TTL> --key <scratch key>`` at a
private temporary mountpoint, and the agents are the ``mount-`` kinds: plain OS file I/O on the
mountpoint, so the kernel's FUSE layer and its caches are between them and the key.  The mount
is always unmounted in clean-up, after the agents are gone (``cmkfs unmount``; the mount
process stopped; ``fusermount3 -u -z`` only for a mount whose process is gone).

The user's own key settings and secrets (:data:`WITHHELD_ENV`) are out of this
process's environment for the whole run, so that no agent, Dask worker included,
inherits them; the drill never needs them.  A Dask cluster of the drill's speaks
mutual TLS with certificates made for it alone, and serves no HTTP routes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from ..clock import key_clock
from ..config import ENV_HOME, ENV_KEY
from ..errors import ConfigurationError
from ..keycache import purge_key
from ..policy import normalize_url
from ..providers.local import ENV_PASSPHRASE, LocalVaultProvider
from ..providers.pkcs11.sessions import PIN_ENV
from .drill_agents import (
    MOUNT_READER_KINDS,
    MOUNT_WRITER,
    OK,
    READER_KINDS,
    READY_MARK,
    REFUSED_MARK,
    STOP_MARK,
    WRITE_SIZE,
    WRITES_DIR,
    AgentSpec,
    drill_filesystem,
    ignore_terminal_signals,
    run_agent,
    write_canaries,
    write_name,
)
from .drill_evidence import (
    CANARY_FOLDER_PREFIX,
    DEFAULT_READERS,
    DEFAULT_TTL,
    MAX_TTL,
    MIN_TTL,
    TOLERANCE,
    AgentFigures,
    DisableCall,
    DrillConfig,
    DrillResult,
    agent_figures,
    check_result,
    default_report_path,
    redact_url,
    utc_now,
    versions,
    write_report,
)

__all__ = [
    "DEFAULT_READERS",
    "DEFAULT_TTL",
    "MAX_TTL",
    "MIN_TTL",
    "TOLERANCE",
    "AgentFigures",
    "DrillConfig",
    "DrillError",
    "DrillResult",
    "check_fuse",
    "default_report_path",
    "redact_url",
    "run_drill",
    "termination_interrupts",
    "write_report",
]

READY_TIMEOUT = 60.0  # every agent must succeed once within this (a Dask cluster starts in it too)
STOP_TIMEOUT = 15.0  # for all agents to finish their last attempt and report
KILL_TIMEOUT = 5.0  # after SIGTERM, before SIGKILL
AGENT_SLACK = 30.0  # an agent outlives its drill by at most this long, even if nobody stops it
POLL = 0.05
AGENT_MODULE = "cmkfs.admin.drill_agents"
MOUNT_TIMEOUT = 30.0  # for the mount to appear (a remote store's first checks included)
UNMOUNT_TIMEOUT = 40.0  # for `cmkfs unmount` (its own fusermount wait is 30 s)
MOUNT_FSTYPE = "fuse.cmkfs"
# A writer's attempt whose close() returned but whose file is not in the store: recorded so, not as "ok".
NOT_PUBLISHED = "NotPublished"
# The user's default key and the secrets that unlock their vaults: never needed by a drill (it uses its own
# scratch vault, unprotected), so never inherited by its agents and workers.  $CMKFS_AUDIT_LOG stays: a
# path, and the audit log is where the scratch key's life is meant to show (docs/DRILL.md).
WITHHELD_ENV = (ENV_KEY, ENV_PASSPHRASE, PIN_ENV)
# SIGTERM (kill, a service manager) and SIGHUP (the terminal closed) end a drill as Ctrl-C does: cleaned up.
TERMINATING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
# The scheduler and each worker start an HTTP server whatever the dashboard setting; with no routes it
# serves nothing (the default routes would tell any local user the scheduler's address, and more).
NO_HTTP: dict[str, list[str]] = {"distributed.scheduler.http.routes": [], "distributed.worker.http.routes": []}

Say = Callable[[str], None]


class DrillError(Exception):
    """The drill could not be run to a verdict (an agent never became ready, ...).  Clean-up was done."""


# -- agents ---------------------------------------------------------------------------------------------------------


class _Agent(Protocol):
    spec: AgentSpec

    def finished(self) -> bool: ...

    def collect(self, deadline: float) -> dict[str, Any] | None: ...

    def kill(self) -> None: ...


class _ProcessAgent:
    """``python -m cmkfs.admin.drill_agents``: the spec on stdin, the result in a private file as stdout."""

    def __init__(self, spec: AgentSpec, env: dict[str, str], control: Path) -> None:
        self.spec = spec
        self.out = control / f"{spec.name}.out"
        with open(self.out, "wb") as out, open(control / f"{spec.name}.err", "wb") as err:
            # A session of its own: a Ctrl-C on the terminal reaches the drill, which stops the agents itself.
            self.process = subprocess.Popen(
                [sys.executable, "-m", AGENT_MODULE],
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=err,
                env=env,
                start_new_session=True,
            )
        stdin = self.process.stdin
        assert stdin is not None
        try:
            stdin.write(spec.to_json())
        except BrokenPipeError:
            pass  # it died at once: seen as an agent that never became ready
        finally:
            with contextlib.suppress(BrokenPipeError):
                stdin.close()

    def finished(self) -> bool:
        return self.process.poll() is not None

    def collect(self, deadline: float) -> dict[str, Any] | None:
        try:
            self.process.wait(timeout=max(0.0, deadline - key_clock()))
        except subprocess.TimeoutExpired:
            self.kill()
            return None
        try:
            lines = self.out.read_bytes().splitlines()
            return check_result(self.spec.name, json.loads(lines[-1])) if lines else None
        except (OSError, ValueError):
            return None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=KILL_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=KILL_TIMEOUT)


class _DaskAgent:
    """:func:`run_agent` as a task pinned to one worker of the drill's own LocalCluster."""

    def __init__(self, spec: AgentSpec, client: Any, worker: str) -> None:
        self.spec = spec
        self.future = client.submit(
            run_agent,
            spec.to_dict(),
            key=f"cmkfs-drill-{spec.name}-{secrets.token_hex(4)}",
            pure=False,
            workers=[worker],
            allow_other_workers=False,
        )

    def finished(self) -> bool:
        return bool(self.future.done())

    def collect(self, deadline: float) -> dict[str, Any] | None:
        try:
            return check_result(self.spec.name, self.future.result(timeout=max(0.1, deadline - key_clock())))
        except Exception:  # noqa: BLE001 - a task that failed or timed out has no figures; the verdict says so
            self.kill()
            return None

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.future.cancel()


# -- the run --------------------------------------------------------------------------------------------------------


class _Drill:
    """The state of one drill, so that clean-up knows what exists at whatever point it is reached."""

    def __init__(self, config: DrillConfig, say: Say) -> None:
        self.config, self.say = config, say
        self.drill_id = secrets.token_hex(6)
        self.key_name = f"drill-{self.drill_id}"
        self.seed = secrets.token_hex(16)
        self._home: Path | None = None  # the scratch vault, once made
        self.own_target: Path | None = None  # the default target, a temporary directory of ours
        self.target = ""
        self.folder_url = ""
        self.target_fs: Any = None
        self.folder = ""
        self.agents: list[_Agent] = []
        self.results: dict[str, dict[str, Any] | None] = {}
        self.cluster: Any = None
        self.client: Any = None
        self.disable_call: DisableCall | None = None
        self.mountpoint: Path | None = None  # --mount: a private directory of ours, mounted while the drill runs
        self.mount_process: subprocess.Popen[bytes] | None = None
        self.mount_writes: dict[str, int] = {}

    @property
    def home(self) -> Path:
        assert self._home is not None, "prepare() makes the scratch vault first"
        return self._home

    @property
    def control(self) -> Path:
        return self.home / "control"

    @property
    def key_uri(self) -> str:
        return f"local://{self.key_name}"

    # 1-2: the scratch vault and the canaries
    def prepare(self) -> None:
        import fsspec

        # mkdtemp makes it 0700: the scratch vault's KEK is as private as a real vault's.
        self._home = Path(tempfile.mkdtemp(prefix=f"{CANARY_FOLDER_PREFIX}{self.drill_id}-home-"))
        self.control.mkdir(mode=0o700)
        LocalVaultProvider(self.home).create(self.key_name, protect=False)  # no passphrase: nothing to leak
        self.say(f"scratch key {self.key_uri} in a scratch vault")
        if self.config.target is None:
            self.own_target = Path(tempfile.mkdtemp(prefix=f"{CANARY_FOLDER_PREFIX}{self.drill_id}-target-"))
            self.target = normalize_url(str(self.own_target))
        else:
            self.target = normalize_url(self.config.target)
        self.folder_url = f"{self.target}/{CANARY_FOLDER_PREFIX}{self.drill_id}"
        self.target_fs, folder = fsspec.url_to_fs(self.folder_url, **self.config.storage_options)
        if self.target_fs.exists(folder):  # never: the id is random; and clean-up must not remove what is not ours
            raise DrillError(f"{self.shown_folder} exists already: the drill writes only into a new folder")
        self.folder = str(folder)  # from here on, whatever is in it is the drill's to remove
        self.target_fs.makedirs(self.folder, exist_ok=True)
        fs, folder = drill_filesystem(
            self.folder_url, self.config.storage_options, self.key_uri, str(self.home), self.config.ttl
        )
        write_canaries(fs, folder, self.seed)
        self.say(f"canaries in {self.shown_folder}")

    @property
    def shown_folder(self) -> str:
        """The canary folder's URL as messages show it: never with the target's credentials."""
        return redact_url(self.folder_url)

    # 3: the agents
    def _specs(self) -> list[AgentSpec]:
        config = self.config
        reader_ttl = config.reader_cache_ttl
        writer = AgentSpec(
            name="writer",
            kind=MOUNT_WRITER if config.mount else "writer",
            folder_url=self.folder_url,
            key_uri=self.key_uri,
            home=str(self.home),
            cache_ttl=config.ttl,
            control_dir=str(self.control),
            pace=config.pace,
            max_seconds=READY_TIMEOUT + config.ttl + TOLERANCE + config.margin + STOP_TIMEOUT + AGENT_SLACK,
            storage_options=config.storage_options,
            seed=self.seed,
        )
        kinds = READER_KINDS
        if config.mount:
            # Through the mount every agent, the writer too, is held to the mount's key cache TTL; they get
            # the mountpoint and no key, no vault and no storage options.
            kinds = MOUNT_READER_KINDS
            writer = dataclasses.replace(
                writer, cache_ttl=reader_ttl, mountpoint=str(self.mountpoint), storage_options={}, key_uri="", home=""
            )
        readers = [
            dataclasses.replace(writer, name=f"reader-{i + 1}", kind=kinds[i % len(kinds)], cache_ttl=reader_ttl)
            for i in range(config.readers)
        ]
        return [*readers, writer]

    def _agent_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in WITHHELD_ENV}  # withheld already, and here too
        env[ENV_HOME] = str(self.home)  # the scratch vault: the user's own home is never consulted
        return env

    # --mount: the canary folder through FUSE
    def start_mount(self) -> None:
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
            self.mount_process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self._agent_env(),
                start_new_session=True,
            )
        stdin = self.mount_process.stdin
        assert stdin is not None
        with contextlib.suppress(BrokenPipeError):
            if config.storage_options:
                stdin.write(json.dumps(config.storage_options).encode("utf-8"))
        with contextlib.suppress(BrokenPipeError):
            stdin.close()
        deadline = key_clock() + MOUNT_TIMEOUT
        while _mount_type(self.mountpoint) != MOUNT_FSTYPE or not os.path.ismount(self.mountpoint):
            code = self.mount_process.poll()
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

    def stop_mount(self) -> None:
        """Unmount and stop the mount process, whatever state it is in; the agents are gone by now.

        ``cmkfs unmount`` first (it refuses while a file is open); then SIGTERM, on which the mount
        refuses new opens and unmounts once the open files are closed; then SIGKILL.  A lazy
        ``fusermount3 -u -z`` only for a mount whose process is gone: never while it could still
        publish a write (docs/MOUNT.md).  The mountpoint is removed only once nothing is mounted there.
        """
        mountpoint, process = self.mountpoint, self.mount_process
        if mountpoint is None:
            return
        if process is not None:
            if process.poll() is None and _mount_type(mountpoint) is not None:
                with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                    subprocess.run(
                        [sys.executable, "-m", "cmkfs", "unmount", str(mountpoint)],
                        stdin=subprocess.DEVNULL,
                        capture_output=True,
                        env=self._agent_env(),
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

    def check_mount_writes(self) -> None:
        """Each write through the mount whose ``close()`` returned must be in the store, with its size.

        After the mount process is gone (every release answered), before the key is destroyed.  Sizes
        come from the headers: the key is disabled, so the contents are not read back.  An attempt
        whose file is missing is recorded as :data:`NOT_PUBLISHED` instead of ``ok``; one refused at
        ``close()`` whose file is there anyway as ``ok`` (published: the verdict must see it).
        """
        result = self.results.get("writer")
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
        self.mount_writes = counts
        found, ok = counts["closed_ok_found"], counts["closed_ok"]
        self.say(f"writes through the mount: {found} of {ok} closed without error are in the store")
        if counts["refused_but_published"]:
            self.say(f"{counts['refused_but_published']} write(s) refused at close() were published all the same")

    def start_agents(self) -> None:
        env = self._agent_env()
        specs = self._specs()
        readers, writer = specs[:-1], specs[-1]
        if self.config.use_dask:
            workers = self._start_cluster(len(readers))
            self.agents += [_DaskAgent(s, self.client, w) for s, w in zip(readers, workers, strict=True)]
        else:
            self.agents += [_ProcessAgent(_with_parent(s), env, self.control) for s in readers]
        self.agents.append(_ProcessAgent(_with_parent(writer), env, self.control))

    def _start_cluster(self, n: int) -> list[str]:
        import dask
        from distributed import Client, LocalCluster
        from distributed.security import Security

        self.say(f"starting a Dask LocalCluster of {n} worker process(es)")
        # Mutual TLS with a certificate made now, held in memory and handed to the workers only: any local
        # user can reach 127.0.0.1, and a plain cluster runs whatever it is sent as the drill's user, with
        # the scratch vault and the storage options (in the tasks' arguments) within reach.
        security = Security.temporary()  # type: ignore[no-untyped-call]  # distributed is not fully typed
        # Dask's scratch space (scheduler and workers) goes into the scratch vault's folder, and with it.
        # The nannies take this configuration to their workers when they are made, here.
        with dask.config.set({"temporary-directory": str(self.home / "dask"), **NO_HTTP}):
            self.cluster = LocalCluster(  # type: ignore[no-untyped-call]  # distributed is not fully typed
                n_workers=n,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                protocol="tls://",
                security=security,
                dashboard_address=None,
                env={ENV_HOME: str(self.home)},
            )
        if not str(self.cluster.scheduler_address).startswith("tls://"):  # never: checked rather than trusted
            raise DrillError("the drill's Dask cluster came up without TLS")
        self.client = Client(self.cluster, timeout=READY_TIMEOUT)  # type: ignore[no-untyped-call]
        self.client.wait_for_workers(n, timeout=READY_TIMEOUT)
        # A Ctrl-C or a hang-up on the terminal reaches every process of its group: the workers leave it to
        # the drill, which stops the tasks and the cluster itself (a worker killed by it would take its figures
        # along, and a closed terminal must not leave the drill's clean-up to a cluster half gone).
        self.client.run(ignore_terminal_signals)
        return sorted(self.client.scheduler_info()["workers"])[:n]

    def wait_ready(self) -> None:
        """Until every agent has succeeded once; else stop them all and say why, by error class."""
        deadline = key_clock() + READY_TIMEOUT
        pending = {a.spec.name: a for a in self.agents}
        while pending:
            for name, agent in list(pending.items()):
                mark = self.control / f"{READY_MARK}{name}"
                if mark.exists():
                    self.say(f"{name} ({agent.spec.kind}) pid {mark.read_text().strip()} ready")
                    del pending[name]
                elif agent.finished():
                    self.stop_agents()
                    raise DrillError(f"{self._not_ready(agent)}: it stopped before it ever succeeded")
            if pending and key_clock() >= deadline:
                self.stop_agents()
                names = "; ".join(self._not_ready(a) for a in pending.values())
                raise DrillError(f"not one success within {READY_TIMEOUT:.0f} s: {names}")
            time.sleep(POLL)

    def _not_ready(self, agent: _Agent) -> str:
        """``NAME (KIND)`` and what stopped it: error class names only (their text may hold data or options)."""
        result = self.results.get(agent.spec.name)
        if result is None:
            return f"{_named(agent)}, no result"
        outcomes = sorted({a[2] for a in result["attempts"]} - {OK})
        if result.get("fatal"):
            outcomes.append(f"stopped by {result['fatal']}")
        return f"{_named(agent)}, {', '.join(outcomes) or 'no attempt'}"

    # 4-5: disable, watch
    def disable(self) -> DisableCall:
        self.say(f"every agent is using the key; disabling {self.key_uri}")
        started, started_utc = key_clock(), utc_now()
        LocalVaultProvider(self.home).disable(self.key_name)
        returned, returned_utc = key_clock(), utc_now()
        self.disable_call = DisableCall(started, returned, started_utc, returned_utc)
        return self.disable_call

    @property
    def bound(self) -> float:
        """On the key clock: from the disable call's return, when no vault answer can confirm the key any more."""
        assert self.disable_call is not None, "disable() first"
        return self.disable_call.returned + self.config.ttl + TOLERANCE

    def watch(self) -> None:
        """Until the bound plus the margin, always: every agent must be seen making attempts after the bound."""
        assert self.disable_call is not None
        returned = self.disable_call.returned
        deadline = self.bound + self.config.margin
        took, left = self.disable_call.seconds, deadline - key_clock()
        self.say(f"key disabled (the call took {took:.3f} s); watching for {left:.1f} s")
        reported: set[str] = set()
        while (now := key_clock()) < deadline:
            refused = {a.spec.name for a in self.agents if (self.control / f"{REFUSED_MARK}{a.spec.name}").exists()}
            for name in sorted(refused - reported):
                self.say(f"{name} refused after {now - returned:.1f} s")
            reported |= refused
            time.sleep(POLL)

    def stop_agents(self) -> None:
        """Ask every agent to stop, collect what each says; stop by force any that does not."""
        if self._home is not None and self.control.is_dir():
            with contextlib.suppress(OSError):
                (self.control / STOP_MARK).write_text("")
        deadline = key_clock() + STOP_TIMEOUT
        for agent in self.agents:
            if agent.spec.name not in self.results:
                self.results[agent.spec.name] = agent.collect(deadline)
        for agent in self.agents:
            agent.kill()

    # 6: clean-up
    def cleanup(self) -> dict[str, bool]:
        done: dict[str, bool] = {}
        done["agents_stopped"] = _step(self.say, "stopping the agents", self.stop_agents)
        if self.config.mount and self._home is not None:
            done["unmounted"] = _step(self.say, "unmounting the canary folder", self.stop_mount)
        if self.client is not None or self.cluster is not None:
            done["cluster_closed"] = _step(self.say, "closing the Dask cluster", self._close_cluster)
        if self._home is not None:
            done["key_destroyed"] = _step(self.say, "destroying the scratch key", self._destroy_key)
        if self.folder:
            done["canaries_removed"] = _step(self.say, "removing the canaries", self._remove_canaries)
        if self.own_target is not None:
            target = self.own_target
            done["target_removed"] = _step(self.say, "removing the temporary target", lambda: _rmtree(target))
        if self._home is not None:
            home = self._home
            done["scratch_vault_removed"] = _step(self.say, "removing the scratch vault", lambda: _rmtree(home))
        return done

    def _close_cluster(self) -> None:
        try:
            if self.client is not None:
                self.client.close(timeout=STOP_TIMEOUT)
        finally:
            if self.cluster is not None:
                self.cluster.close(timeout=STOP_TIMEOUT)

    def _destroy_key(self) -> None:
        vault = LocalVaultProvider(self.home)
        if self.key_name in vault.list_keys():
            vault.destroy(self.key_name)
        purge_key(self.key_uri)  # the canary writer's cached data key, in this process

    def _remove_canaries(self) -> None:
        fs = self.target_fs
        fs.invalidate_cache()
        if fs.exists(self.folder):
            fs.rm(self.folder, recursive=True)
        fs.invalidate_cache()
        if fs.exists(self.folder):
            raise OSError(f"{self.folder_url} is still there")


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


def _with_parent(spec: AgentSpec) -> AgentSpec:
    """``spec`` for a process agent: it stops by itself if this process goes away."""
    return dataclasses.replace(spec, parent_pid=os.getpid())


def _named(agent: _Agent) -> str:
    return f"{agent.spec.name} ({agent.spec.kind})"


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():
        raise OSError(f"{path} could not be removed")


def _step(say: Say, what: str, action: Callable[[], None]) -> bool:
    try:
        action()
        return True
    except Exception as exc:  # noqa: BLE001 - clean-up goes on past any failure, and says which step failed
        say(f"clean-up: {what} failed ({type(exc).__name__})")
        return False


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Clean-up runs to its end: SIGINT, SIGTERM and SIGHUP during it are held, then raised as KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def hold(signum: int, _frame: object) -> None:
        caught.append(signum)

    previous = {s: signal.signal(s, hold) for s in (signal.SIGINT, *TERMINATING_SIGNALS)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if caught:
        raise KeyboardInterrupt


@contextlib.contextmanager
def termination_interrupts() -> Iterator[None]:
    """Within the block SIGTERM and SIGHUP raise KeyboardInterrupt, as Ctrl-C does: all reach the same clean-up."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, interrupt) for s in TERMINATING_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def _withheld_environment() -> Iterator[None]:
    """:data:`WITHHELD_ENV` out of ``os.environ`` for the block, back after it.

    Out of this process's environment rather than only out of the agents' copies: a Dask nanny starts
    its worker with this process's environment as it is at that moment.
    """
    saved = {var: os.environ.pop(var) for var in WITHHELD_ENV if var in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _no_say(_message: str) -> None:
    pass


def run_drill(config: DrillConfig, say: Say = _no_say) -> DrillResult:
    """Run one drill (the steps of the module docstring) and return its figures.

    Raises :class:`DrillError` when no verdict could be reached, ``KeyboardInterrupt``
    when interrupted; either way after clean-up.  For the duration of the call the
    variables of :data:`WITHHELD_ENV` are out of ``os.environ`` (of the whole process).
    """
    config.check()
    if config.use_dask:
        try:
            import distributed  # noqa: F401 - only to say now, before anything is created, that it is missing
        except ImportError:
            raise ConfigurationError(
                "--dask needs dask.distributed: pip install 'dask[distributed]' (it is in cmkfs's test extra)"
            ) from None
    if config.mount:
        check_fuse()
    drill = _Drill(config, say)
    result = DrillResult(drill.drill_id, config, target="", key_uri=drill.key_uri, started=utc_now())
    with _withheld_environment():
        try:
            drill.prepare()
            result.target = redact_url(drill.target)
            if config.mount:
                drill.start_mount()
            drill.start_agents()
            drill.wait_ready()
            disable = result.disable = drill.disable()
            drill.watch()
            say("stopping the agents")
            drill.stop_agents()
            if config.mount:
                say("unmounting the canary folder")
                drill.stop_mount()
                drill.check_mount_writes()
                result.mount_writes = drill.mount_writes
            result.ended = utc_now()
        finally:
            with _signals_held():
                result.cleanup = drill.cleanup()
    bound = drill.bound
    result.agents = [
        agent_figures(a.spec, drill.results.get(a.spec.name), disable.started, disable.returned, bound)
        for a in drill.agents
    ]
    result.versions = versions(config.use_dask)
    return result
