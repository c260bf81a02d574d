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

This module is the run itself: its steps, its clean-up, signals and the withheld
environment.  The agents' handles and the Dask cluster are in :mod:`.drill_runners`,
the mount in :mod:`.drill_mount`, the figures and the report in :mod:`.drill_evidence`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..clock import key_clock
from ..config import ENV_HOME, ENV_KEY, environment
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
    AgentSpec,
    drill_filesystem,
    write_canaries,
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
    default_report_path,
    redact_url,
    utc_now,
    versions,
    write_report,
)
from .drill_mount import DrillMount, check_fuse
from .drill_runners import (
    POLL,
    READY_TIMEOUT,
    STOP_TIMEOUT,
    Agent,
    DaskAgent,
    DaskCluster,
    DrillError,
    ProcessAgent,
    Say,
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

AGENT_SLACK = 30.0  # an agent outlives its drill by at most this long, even if nobody stops it
# The user's default key and the secrets that unlock their vaults: never needed by a drill (it uses its own
# scratch vault, unprotected), so never inherited by its agents and workers.  $CMKFS_AUDIT_LOG stays: a
# path, and the audit log is where the scratch key's life is meant to show (docs/DRILL.md).
WITHHELD_ENV = (ENV_KEY, ENV_PASSPHRASE, PIN_ENV)
# SIGTERM (kill, a service manager) and SIGHUP (the terminal closed) end a drill as Ctrl-C does: cleaned up.
TERMINATING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


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
        self.agents: list[Agent] = []
        self.results: dict[str, dict[str, Any] | None] = {}
        self.dask: DaskCluster | None = None  # --dask: the drill's own LocalCluster, once started
        self.disable_call: DisableCall | None = None
        self.mount: DrillMount | None = None  # --mount: the canary folder mounted, once started

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

    @property
    def mountpoint(self) -> Path | None:
        """--mount: a private directory of ours, mounted while the drill runs."""
        return self.mount.mountpoint if self.mount is not None else None

    @property
    def mount_writes(self) -> dict[str, int]:
        return self.mount.writes if self.mount is not None else {}

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

    # --mount: the canary folder through FUSE (.drill_mount)
    def start_mount(self) -> None:
        self.mount = DrillMount(
            self.config,
            self.drill_id,
            self.target,
            self.folder_url,
            self.key_uri,
            self.home,
            self.control,
            self._agent_env,
            self.say,
        )
        self.mount.start()

    def stop_mount(self) -> None:
        if self.mount is not None:
            self.mount.stop()

    def check_mount_writes(self) -> None:
        if self.mount is not None:
            self.mount.check_writes(self.results.get("writer"))

    def start_agents(self) -> None:
        env = self._agent_env()
        specs = self._specs()
        readers, writer = specs[:-1], specs[-1]
        if self.config.use_dask:
            self.dask = DaskCluster(self.home, self.say)
            workers = self.dask.start(len(readers))
            self.agents += [DaskAgent(s, self.dask.client, w) for s, w in zip(readers, workers, strict=True)]
        else:
            self.agents += [ProcessAgent(_with_parent(s), env, self.control) for s in readers]
        self.agents.append(ProcessAgent(_with_parent(writer), env, self.control))

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

    def _not_ready(self, agent: Agent) -> str:
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
        if self.dask is not None and self.dask.started:
            done["cluster_closed"] = _step(self.say, "closing the Dask cluster", self.dask.close)
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


def _with_parent(spec: AgentSpec) -> AgentSpec:
    """``spec`` for a process agent: it stops by itself if this process goes away."""
    return dataclasses.replace(spec, parent_pid=os.getpid())


def _named(agent: Agent) -> str:
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
    with environment(**dict.fromkeys(WITHHELD_ENV)):
        yield


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
