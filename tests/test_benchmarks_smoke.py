"""The benchmarks stay runnable: each runs once in its smallest form.

These check that the scripts work end to end (and that the engine, the
filesystem and every key provider they drive still round-trip), not how
fast anything is: timings are never asserted in tests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow

_NO_FUSE = (
    "needs /dev/fuse"
    if not os.path.exists("/dev/fuse")
    else "needs fusermount3 (apt-get install fuse3)"
    if (shutil.which("fusermount3") or shutil.which("fusermount")) is None
    else None
)


def _run(*args: str) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_engine_benchmark_runs(tmp_path):
    out = _run("benchmarks/bench_engine.py", "--quick", "--json", str(tmp_path / "engine.json"))
    assert "raw AESGCM" in out and "writer t=1" in out
    assert (tmp_path / "engine.json").stat().st_size > 0


def test_filesystem_benchmark_runs(tmp_path):
    out = _run(
        "benchmarks/bench_fs.py",
        "--quick",
        "--rounds",
        "1",
        "--only",
        "small",
        "--only",
        "parquet",
        "--only",
        "vertipaq",
    )
    assert "50 KB write" in out and "ls(detail=True)" in out and "footer + 1 of 8 columns" in out
    assert "VertiPaq model" in out


def test_key_benchmark_runs_every_provider():
    out = _run("benchmarks/bench_keys.py", "--files", "20", "--cold-files", "4")
    for provider in ("local://", "https://", "pkcs11:"):
        assert provider in out
    assert "not measured" not in out


@pytest.mark.skipif(_NO_FUSE is not None, reason=_NO_FUSE or "")
def test_mount_benchmark_runs_and_unmounts(tmp_path):
    work, saved = tmp_path / "work", tmp_path / "mount.json"
    work.mkdir()
    out = _run("benchmarks/bench_mount.py", "--quick", "--rounds", "1", "--dir", str(work), "--json", str(saved))
    assert "not measured" not in out, out
    for heading in ("Sequential write", "Sequential read", "One column of 8 (sum(c0))"):
        assert heading in out, out
    for case in ("plain disk, Python", "cmk::file://, fsspec", "mount, Python", "mount, cp", "mount, cat"):
        assert case in out, out
    for case in ("duckdb: plain file", "duckdb: mount", "pyarrow: mount", "pyarrow: cmk::file://, fsspec"):
        assert case in out, out
    assert set(json.loads(saved.read_text())["tables"]) == {"write", "read", "parquet"}
    # The script unmounted and removed its folders, its vault included.
    with open("/proc/self/mounts") as mounts:
        assert str(work) not in mounts.read()
    assert list(work.iterdir()) == []
