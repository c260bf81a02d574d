"""What runs a drill's agents: their handles (a process each, or a task on a Dask worker) and the Dask cluster.

:class:`ProcessAgent` starts ``python -m cmkfs.admin.drill_agents`` and reads its result;
:class:`DaskAgent` submits :func:`~.drill_agents.run_agent` to one worker of the drill's own
:class:`DaskCluster`, which speaks mutual TLS with certificates made for it alone and serves no HTTP
routes.  The timings the drill keeps with them, and :class:`DrillError`, are here too.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ..clock import key_clock
from ..config import ENV_HOME
from .drill_agents import AgentSpec, ignore_terminal_signals, run_agent
from .drill_evidence import check_result

__all__ = [
    "AGENT_MODULE",
    "KILL_TIMEOUT",
    "NO_HTTP",
    "POLL",
    "READY_TIMEOUT",
    "STOP_TIMEOUT",
    "Agent",
    "DaskAgent",
    "DaskCluster",
    "DrillError",
    "ProcessAgent",
    "Say",
]

READY_TIMEOUT = 60.0  # every agent must succeed once within this (a Dask cluster starts in it too)
STOP_TIMEOUT = 15.0  # for all agents to finish their last attempt and report
KILL_TIMEOUT = 5.0  # after SIGTERM, before SIGKILL
POLL = 0.05
AGENT_MODULE = "cmkfs.admin.drill_agents"
# The scheduler and each worker start an HTTP server whatever the dashboard setting; with no routes it
# serves nothing (the default routes would tell any local user the scheduler's address, and more).
NO_HTTP: dict[str, list[str]] = {"distributed.scheduler.http.routes": [], "distributed.worker.http.routes": []}

Say = Callable[[str], None]


class DrillError(Exception):
    """The drill could not be run to a verdict (an agent never became ready, ...).  Clean-up was done."""


# -- agents ---------------------------------------------------------------------------------------------------------


class Agent(Protocol):
    spec: AgentSpec

    def finished(self) -> bool: ...

    def collect(self, deadline: float) -> dict[str, Any] | None: ...

    def kill(self) -> None: ...


class ProcessAgent:
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


class DaskAgent:
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


# -- the Dask cluster -----------------------------------------------------------------------------------------------


class DaskCluster:
    """The drill's own LocalCluster and its client, so that clean-up knows what of them exists."""

    def __init__(self, home: Path, say: Say) -> None:
        self.home, self.say = home, say  # the scratch vault's folder
        self.cluster: Any = None
        self.client: Any = None

    def start(self, n: int) -> list[str]:
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

    @property
    def started(self) -> bool:
        """Whether there is anything to close: the cluster or its client was made."""
        return self.client is not None or self.cluster is not None

    def close(self) -> None:
        try:
            if self.client is not None:
                self.client.close(timeout=STOP_TIMEOUT)
        finally:
            if self.cluster is not None:
                self.cluster.close(timeout=STOP_TIMEOUT)
