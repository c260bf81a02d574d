"""Small helpers shared by the benchmarks: timing, medians, ratios, tables, peak memory.

Numbers on a shared machine are noisy, so every benchmark here runs the
variants it compares *interleaved* (one round = each variant once, in a
rotating order) and reports medians over rounds, never a single run.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterable, Sequence

__all__ = [
    "KiB",
    "MiB",
    "GiB",
    "human_size",
    "interleaved",
    "median",
    "ratio",
    "table",
    "peak_memory",
    "environment",
    "save_json",
]

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


def human_size(n: int) -> str:
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} B"


def interleaved(cases: dict[str, Callable[[], object]], rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each case, ``rounds`` times, variants interleaved.

    Each round runs every case once; the starting case rotates between rounds
    so that no variant always runs right after the same neighbour (caches,
    CPU frequency, a noisy neighbour process).
    """
    names = list(cases)
    for _ in range(warmup):
        for name in names:
            cases[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            fn = cases[name]
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def ratio(a: float, b: float) -> float:
    """``a / b``, or NaN when ``b`` is zero or missing."""
    return a / b if b else float("nan")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table, columns right-aligned except the first."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=False)))

    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        return f"{value:.2f}"
    return str(value)


_PEAK_PRELUDE = """
import sys

def _status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])  # kB
    raise RuntimeError(field)

"""

_PEAK_RESET = """
# Reset the high-water mark so imports and setup do not count.
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
_baseline = _status("VmRSS")
"""

_PEAK_REPORT = """
print("PEAK", _baseline, _status("VmHWM"))
"""


def peak_memory(setup: str, body: str, *, timeout: float = 600) -> tuple[int, int]:
    """Run ``setup`` then ``body`` in a fresh interpreter; return (baseline, peak) RSS in bytes.

    The peak is VmHWM after ``echo 5 > /proc/self/clear_refs`` between setup
    and body, so it covers the body only (``ru_maxrss`` would include the
    parent's, inherited across fork+exec).  ``peak - baseline`` is what the
    body added on top of the interpreter and its setup.
    """
    code = _PEAK_PRELUDE + textwrap.dedent(setup) + _PEAK_RESET + textwrap.dedent(body) + _PEAK_REPORT
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_repo_root(), env.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe failed:\n{proc.stderr}")
    for line in proc.stdout.splitlines():
        if line.startswith("PEAK "):
            _, base, peak = line.split()
            return int(base) * 1024, int(peak) * 1024
    raise RuntimeError(f"memory probe printed no result:\n{proc.stdout}")


def _repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def environment() -> dict[str, object]:
    """What the numbers were measured on, for the JSON output."""
    info: dict[str, object] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    try:
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    try:
        import cryptography

        info["cryptography"] = cryptography.__version__
    except ImportError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def save_json(path: str, results: dict) -> None:
    with open(path, "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)
        f.write("\n")
