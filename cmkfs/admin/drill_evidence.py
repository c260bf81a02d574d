"""What ``cmkfs drill`` was asked, what it measured and what it concludes: the configuration, each
agent's figures, the verdict, and the JSON report an auditor keeps (docs/DRILL.md, "The report").

Pure bookkeeping over the attempts the agents return: no processes, no keys.  :mod:`.drill` runs the drill.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..atomicfile import write_atomically
from ..clock import COUNTS_SUSPEND, KEY_CLOCK_NAME
from ..errors import ConfigurationError
from ..keycache import MAX_CACHE_TTL
from ..policy import normalize_url
from .drill_agents import OK, REFUSALS, AgentSpec

__all__ = [
    "CANARY_FOLDER_PREFIX",
    "DEFAULT_READERS",
    "DEFAULT_TTL",
    "MAX_TTL",
    "MIN_TTL",
    "TOLERANCE",
    "AgentFigures",
    "DrillConfig",
    "DisableCall",
    "DrillResult",
    "agent_figures",
    "check_result",
    "default_report_path",
    "redact_url",
    "utc_now",
    "versions",
    "write_report",
]

DEFAULT_TTL = 10.0
MIN_TTL = 1.0
MAX_TTL = MAX_CACHE_TTL
DEFAULT_READERS = 3
MAX_READERS = 32
# Scheduling slack on top of the TTL: an attempt's clock read and its first key check not being
# one instant, and a loaded host delaying either.  Not a grace period for the key; the disable
# call's own duration is not in it (the bound is counted from the call's return).
TOLERANCE = 1.0
MIN_MARGIN = 1.5  # seconds the agents go on past the bound: every agent makes attempts after it
MIN_PACE, MAX_PACE = 0.05, 1.0  # seconds between an agent's attempts: ttl/100 within these
REPORT_FORMAT = 2
CANARY_FOLDER_PREFIX = "cmkfs-drill-"
REDACTED = "***"
BOUND_FROM = "disable_returned"  # the instant the bound and every "after" figure are counted from
NOT_OBSERVED = "refusal not observed within the bound"


@dataclass(frozen=True)
class DrillConfig:
    """What ``cmkfs drill`` was asked to do."""

    readers: int = DEFAULT_READERS
    use_dask: bool = False
    ttl: float = DEFAULT_TTL
    reader_ttl: float | None = None  # for testing the drill itself: readers keep keys this long instead
    target: str | None = None  # a URL or local path; default: a new temporary directory
    storage_options: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)  # may hold secrets
    mount: bool = False  # the agents go through a FUSE mount of the canary folder (its cache TTL: reader_ttl)

    @property
    def reader_cache_ttl(self) -> float:
        """The readers' key cache TTL (a mount's too, with --mount): the drill's unless ``reader_ttl`` says."""
        return self.reader_ttl if self.reader_ttl is not None else self.ttl

    def check(self) -> None:
        if not 1 <= self.readers <= MAX_READERS:
            raise ConfigurationError(f"readers must be between 1 and {MAX_READERS}")
        if not MIN_TTL <= self.ttl <= MAX_TTL:
            raise ConfigurationError(f"the drill's ttl must be between {MIN_TTL:g} and {MAX_TTL:g} seconds")
        # Readers with a shorter TTL than the one reported would make a passing report about a TTL nobody
        # used; a longer one exists only to make a drill fail on purpose.
        if self.reader_ttl is not None and not self.ttl <= self.reader_ttl <= MAX_TTL:
            raise ConfigurationError(
                f"reader_ttl must be between the drill's ttl ({self.ttl:g}) and {MAX_TTL:g} seconds: "
                "it exists only to make a drill fail on purpose"
            )
        if self.target is not None:
            try:
                target = normalize_url(self.target)
            except ConfigurationError:
                # Its text quotes the URL, credentials and all.
                raise ConfigurationError(
                    f"the target {redact_url(self.target)} is not a storage URL ('.' and '..' are not allowed)"
                ) from None
            if target.startswith("memory://"):
                raise ConfigurationError("a memory:// target lives in one process: the agents could never see it")
        if self.mount and self.use_dask:
            raise ConfigurationError("--mount and --dask do not go together: the agents of --mount are processes")
        if "cmk" in self.storage_options:
            raise ConfigurationError(
                "storage options for the drill name only the target's protocol: it sets the cmk layer itself"
            )

    @property
    def pace(self) -> float:
        return min(MAX_PACE, max(MIN_PACE, self.ttl / 100))

    @property
    def margin(self) -> float:
        return max(MIN_MARGIN, 3 * self.pace)


# -- figures ------------------------------------------------------------------------------------------------------


@dataclass
class AgentFigures:
    """One agent's attempts around the disable call, which began at ``disable_started`` and returned at
    ``disable_returned``.  Successes count as before or after by their start, errors by their end (an
    error that ended before the call began is not the key's doing).  Seconds are counted from
    ``disable_returned``, as the bound is: ``refused_after`` can be a little below zero when the vault
    refused while the call was still finishing."""

    name: str
    kind: str
    pid: int | None
    cache_ttl: float
    bound_after: float = 0.0  # the bound, in seconds from disable_returned (TTL + TOLERANCE)
    attempts: int = 0
    ok_before: int = 0  # reads that returned the canary's bytes, or files published, started before the call
    ok_after: int = 0
    errors_before: int = 0
    errors_after: dict[str, int] = field(default_factory=dict)  # class name -> count
    refused_after: float | None = None  # seconds to the end of the first refused attempt
    refused_started_after: float | None = None  # seconds to the start of that attempt
    last_data_after: float | None = None  # seconds to the end of the last successful attempt
    attempts_after_bound: int = 0  # attempts that started after the bound: without one, nothing was seen there
    ok_after_bound: int = 0  # successful attempts that started after the bound
    mismatches: int = 0  # reads that returned bytes other than the canary's
    problem: str | None = None  # why there are no (complete) figures

    @property
    def failures(self) -> list[str]:
        reasons = []
        if self.problem is not None:
            reasons.append(self.problem)
        if self.mismatches:
            reasons.append("returned wrong data")
        if self.ok_after_bound:
            reasons.append("published after the bound" if self.kind.endswith("writer") else "data after the bound")
        if self.refused_started_after is None:
            reasons.append("never refused")
        elif self.refused_started_after > self.bound_after or not self.attempts_after_bound:
            # Refused only in an attempt begun after the bound (an agent stalled across it), or nothing
            # attempted after the bound: either way the drill did not see the key refuse it in time.
            reasons.append(NOT_OBSERVED)
        return reasons

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "pid": self.pid,
            "cache_ttl_seconds": self.cache_ttl,
            "attempts": self.attempts,
            "ok_before_disable": self.ok_before,
            "ok_after_disable": self.ok_after,
            "errors_before_disable": self.errors_before,
            "errors_after_disable": dict(sorted(self.errors_after.items())),
            "refused_after_seconds": _rounded(self.refused_after),
            "refused_attempt_started_after_seconds": _rounded(self.refused_started_after),
            "last_data_after_seconds": _rounded(self.last_data_after),
            "attempts_started_after_bound": self.attempts_after_bound,
            "ok_started_after_bound": self.ok_after_bound,
            "wrong_data": self.mismatches,
            "problem": self.problem,
            "verdict": "pass" if self.passed else "fail",
            "reasons": self.failures,
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def agent_figures(
    spec: AgentSpec, result: dict[str, Any] | None, disable_started: float, disable_returned: float, bound: float
) -> AgentFigures:
    """Figures of one agent from its attempts; all times on one clock, ``bound`` is
    ``disable_returned + TTL + TOLERANCE``.

    The bound counts from the call's *return*: until its commit the vault still confirms the key, and
    every cached copy was fetched before the return, so it expires within the TTL of it.
    """
    figures = AgentFigures(spec.name, spec.kind, None, spec.cache_ttl, bound_after=bound - disable_returned)
    if result is None:
        figures.problem = "no results (stopped by force)"
        return figures
    figures.pid = result.get("pid") if isinstance(result.get("pid"), int) else None
    attempts = result.get("attempts")
    if not isinstance(attempts, list):
        figures.problem = "no results"
        return figures
    if result.get("fatal"):
        figures.problem = f"stopped by {result['fatal']}"
    for start, end, outcome in sorted(attempts):
        figures.attempts += 1
        if start > bound:
            figures.attempts_after_bound += 1
        if outcome == OK:
            if start < disable_started:
                figures.ok_before += 1
            else:
                figures.ok_after += 1
            if end >= disable_returned:
                figures.last_data_after = end - disable_returned
            if start > bound:
                figures.ok_after_bound += 1
            continue
        if outcome == "CanaryMismatch":
            figures.mismatches += 1
        if end < disable_started:
            figures.errors_before += 1
            continue
        figures.errors_after[outcome] = figures.errors_after.get(outcome, 0) + 1
        if outcome in REFUSALS and figures.refused_after is None:
            figures.refused_after = end - disable_returned
            figures.refused_started_after = start - disable_returned
    return figures


def check_result(name: str, raw: object) -> dict[str, Any] | None:
    """An agent's JSON result, or None if it is not one (attempts as ``[float, float, str]``)."""
    if not isinstance(raw, dict) or raw.get("name") != name or not isinstance(raw.get("attempts"), list):
        return None
    for attempt in raw["attempts"]:
        if not (
            isinstance(attempt, (list, tuple))
            and len(attempt) == 3
            and all(isinstance(t, (int, float)) for t in attempt[:2])
            and isinstance(attempt[2], str)
        ):
            return None
    return raw


# -- the result -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DisableCall:
    """When the disable call began and returned: on the key clock (as the attempts) and in UTC."""

    started: float
    returned: float
    started_utc: str
    returned_utc: str

    @property
    def seconds(self) -> float:
        return self.returned - self.started

    def to_dict(self) -> dict[str, Any]:
        return {
            "started_utc": self.started_utc,
            "returned_utc": self.returned_utc,
            "started_clock_seconds": round(self.started, 6),
            "returned_clock_seconds": round(self.returned, 6),
            "call_seconds": round(self.seconds, 3),
        }


@dataclass
class DrillResult:
    """Everything the report says.  Holds no storage options, key material or canary bytes."""

    drill_id: str
    config: DrillConfig
    target: str  # as shown: through redact_url, never with credentials
    key_uri: str
    started: str
    ended: str = ""
    disable: DisableCall | None = None
    agents: list[AgentFigures] = field(default_factory=list)
    cleanup: dict[str, bool] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    mount_writes: dict[str, int] = field(default_factory=dict)  # --mount: the writes checked in the store

    @property
    def bound(self) -> float:
        """Seconds from the disable call's return."""
        return self.config.ttl + TOLERANCE

    @property
    def passed(self) -> bool:
        return bool(self.agents) and all(a.passed for a in self.agents)

    @property
    def failed_agents(self) -> list[AgentFigures]:
        return [a for a in self.agents if not a.passed]

    def summary(self) -> str:
        """The verdict in one line.  "Within" only when every refusal was seen within the bound."""
        bound = f"{self.bound:g} s (TTL {self.config.ttl:g} s + tolerance {TOLERANCE:g} s)"
        if not self.passed:
            failed = len(self.failed_agents)
            return f"FAILED: {failed} of {len(self.agents)} agent(s) did not pass; the bound: {bound}"
        last = max((a.refused_after or 0.0 for a in self.agents), default=0.0)
        if last <= self.bound:
            return (
                f"PASSED: every agent was refused within {bound} of the disable call's return; "
                f"the last after {last:.2f} s"
            )
        # A refused attempt begun before the bound may end after it (a slow read, a loaded host).
        return (
            f"PASSED: every agent was refused in an attempt begun before the bound of {bound} after the disable "
            f"call's return, and got nothing after it; the last refusal ended {last:.2f} s after that return"
        )

    def to_dict(self) -> dict[str, Any]:
        config = self.config
        return {
            "report_format": REPORT_FORMAT,
            "drill_id": self.drill_id,
            "verdict": "passed" if self.passed else "failed",
            "failed_agents": [a.name for a in self.failed_agents],
            "started_utc": self.started,
            "ended_utc": self.ended,
            "disable": self.disable.to_dict() if self.disable is not None else None,
            "ttl_seconds": config.ttl,
            "reader_ttl_seconds": config.reader_cache_ttl,
            "tolerance_seconds": TOLERANCE,
            "bound_seconds": self.bound,
            "bound_measured_from": BOUND_FROM,
            "margin_seconds": config.margin,
            "pace_seconds": config.pace,
            "clock": {"name": KEY_CLOCK_NAME, "counts_suspend": COUNTS_SUSPEND, "scope": "one host"},
            "host": platform.node(),
            "target": self.target,
            "canary_folder": CANARY_FOLDER_PREFIX + self.drill_id,
            "runner": "dask" if config.use_dask else "processes",
            "through": "fuse mount" if config.mount else "cmk filesystem",
            "mount": (
                {"cache_ttl_seconds": config.reader_cache_ttl, "writes": dict(sorted(self.mount_writes.items()))}
                if config.mount
                else None
            ),
            "readers": config.readers,
            "key": {"uri": self.key_uri, "vault": "scratch embedded vault"},
            "agents": [a.to_dict() for a in self.agents],
            "cleanup": dict(self.cleanup),
            "versions": dict(self.versions),
        }


def redact_url(url: str) -> str:
    """``url`` fit for the report and progress lines: a userinfo (``user:password@``) and a query or
    fragment (a SAS token, a signature) each become ``***``; each part of a chained URL alike.

    ``abfs://container@account...`` shows as ``abfs://***@account...``: a container name is lost, but
    a rule that guessed which userinfo is harmless would one day show a password.
    """
    return "::".join(_redact_one(part) for part in url.split("::"))


def _redact_one(url: str) -> str:
    cut = min((i for i in (url.find("?"), url.find("#")) if i >= 0), default=len(url))
    head, tail = url[:cut], url[cut:]
    scheme, sep, rest = head.partition("://")
    if sep:
        authority, slash, path = rest.partition("/")
        if "@" in authority:
            head = f"{scheme}{sep}{REDACTED}@{authority.rpartition('@')[2]}{slash}{path}"
    return head + (tail[0] + REDACTED if tail else "")


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def versions(use_dask: bool) -> dict[str, str]:
    from importlib import metadata

    found = {"cmkfs": __version__, "python": platform.python_version(), "platform": platform.platform()}
    optional = [name for name in ("adlfs",) if name in sys.modules]  # the Azure target, when one was used
    for name in ("cryptography", "fsspec", "pyarrow", *(("dask", "distributed") if use_dask else ()), *optional):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "unknown"
    return found


# -- the report -----------------------------------------------------------------------------------------------------


def default_report_path(home: Path, result: DrillResult) -> Path:
    """``HOME/drills/drill-<UTC timestamp>-<id>.json``."""
    stamp = result.started[:19].replace("-", "").replace(":", "") + "Z"
    return home / "drills" / f"drill-{stamp}-{result.drill_id}.json"


def write_report(result: DrillResult, path: Path) -> Path:
    """Write the report to ``path`` atomically, mode 0600 (its folder made 0700 if new); return the path."""
    path = path.expanduser()
    for folder in reversed([path.parent, *path.parent.parents]):
        if not folder.exists():
            folder.mkdir(mode=0o700)
    data = (json.dumps(result.to_dict(), indent=2, sort_keys=True) + "\n").encode("utf-8")
    write_atomically(path, data, temp_prefix=f".{path.name}.")
    return path
