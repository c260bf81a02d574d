"""``cmkfs drill`` end to end: the command in a process of its own, its agents in theirs (or on a
Dask LocalCluster), a real scratch vault, the real clock; on local disk and on Azurite.

Every run points ``$TMPDIR`` at a folder of the test's own, where the drill makes its scratch
vault and (by default) its target: an empty folder afterwards is the proof of clean-up.  The only
timing asserted is the drill's own verdict: refused within TTL + tolerance.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

from cmkfs.admin.drill import TOLERANCE, agent_figures
from cmkfs.admin.drill_agents import CANARY_PREFIX, AgentSpec
from cmkfs.clock import KEY_CLOCK_NAME
from cmkfs.providers.local import LocalVaultProvider

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        not sys.platform.startswith("linux"), reason="the drill compares CLOCK_BOOTTIME across processes"
    ),
]

TTL = 2.0
RUN_TIMEOUT = 120
KINDS = ["held-open", "new-handle", "parquet", "writer"]


@pytest.fixture
def scratch_tmp(tmp_path):
    """The drill's $TMPDIR: empty before, and it must be empty after."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    return folder


@pytest.fixture
def user_vault(isolated_cmkfs_home):
    """The user's own embedded vault, with a key the drill must never touch."""
    LocalVaultProvider(isolated_cmkfs_home).create("tenant", protect=False)
    meta = isolated_cmkfs_home / "vault" / "tenant" / "meta.json"
    return meta, meta.read_bytes()


def _env(scratch_tmp: Path) -> dict[str, str]:
    return dict(os.environ, TMPDIR=str(scratch_tmp))


def _drill(scratch_tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cmkfs", "drill", "--ttl", str(TTL), *args],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        env=_env(scratch_tmp),
    )


def _report(home: Path) -> tuple[Path, dict]:
    (path,) = (home / "drills").glob("drill-*.json")
    return path, json.loads(path.read_text())


def _agent_alive(pid: int) -> bool:
    try:
        return "cmkfs.admin.drill_agents" in " ".join(psutil.Process(pid).cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return False


def _assert_cleaned_up(scratch_tmp: Path, pids) -> None:
    assert list(scratch_tmp.iterdir()) == []  # scratch vault (and its key), default target, control files
    assert not [pid for pid in pids if _agent_alive(pid)]


def _assert_passed(report: dict, *, readers: int = 3) -> None:
    assert report["verdict"] == "passed", report
    assert report["failed_agents"] == []
    assert report["ttl_seconds"] == TTL
    assert report["tolerance_seconds"] == TOLERANCE
    assert report["bound_seconds"] == TTL + TOLERANCE
    assert report["clock"]["name"] == KEY_CLOCK_NAME
    assert report["key"]["uri"] == f"local://drill-{report['drill_id']}"
    assert report["canary_folder"] == f"cmkfs-drill-{report['drill_id']}"
    assert set(report["cleanup"].values()) == {True}
    for name in ("cmkfs", "python", "platform", "cryptography", "fsspec", "pyarrow"):
        assert report["versions"][name]
    agents = report["agents"]
    assert [a["name"] for a in agents] == [f"reader-{i + 1}" for i in range(readers)] + ["writer"]
    assert [a["kind"] for a in agents] == [KINDS[i % 3] for i in range(readers)] + ["writer"]
    for agent in agents:
        # The figures behind the verdict: used the key before, refused within the bound, nothing after it.
        assert agent["verdict"] == "pass", agent
        assert agent["ok_before_disable"] >= 1
        assert agent["errors_before_disable"] == 0
        assert 0 <= agent["refused_after_seconds"] <= TTL + TOLERANCE
        assert agent["ok_started_after_bound"] == 0
        assert agent["wrong_data"] == 0
        assert agent["errors_after_disable"].get("KeyRevokedError", 0) >= 1
        assert agent["attempts"] == (
            agent["ok_before_disable"]
            + agent["ok_after_disable"]
            + agent["errors_before_disable"]
            + sum(agent["errors_after_disable"].values())
        )
    assert len({a["pid"] for a in agents}) == len(agents)
    assert os.getpid() not in {a["pid"] for a in agents}


def test_figures_go_by_start_time_and_by_refusal():
    # The verdict's arithmetic on hand-made attempts (t_disable = 100, bound = 103).
    spec = AgentSpec(
        name="reader-1",
        kind="held-open",
        folder_url="",
        key_uri="",
        home="",
        cache_ttl=2,
        control_dir="",
        pace=0.05,
        max_seconds=1,
    )
    passed = agent_figures(
        spec,
        {
            "name": "reader-1",
            "pid": 7,
            "attempts": [
                [99.0, 99.1, "ok"],
                [99.9, 100.2, "ok"],  # started before t_disable: counted before, but its data came after
                [101.0, 101.5, "KeyRevokedError"],
                [102.0, 102.1, "OSError"],  # an error, but not the key refusing
                [103.5, 103.6, "KeyRevokedError"],
            ],
        },
        t_disable=100.0,
        bound=103.0,
    )
    assert (passed.ok_before, passed.ok_after, passed.refused_after, passed.ok_after_bound) == (2, 0, 1.5, 0)
    assert passed.last_data_after == pytest.approx(0.2)
    assert passed.errors_after == {"KeyRevokedError": 2, "OSError": 1}
    assert passed.passed
    late = agent_figures(
        spec,
        {"name": "reader-1", "attempts": [[99.0, 99.1, "ok"], [101.0, 101.1, "OSError"], [103.1, 103.2, "ok"]]},
        t_disable=100.0,
        bound=103.0,
    )
    assert late.failures == ["data after the bound", "never refused"]
    assert agent_figures(spec, None, 100.0, 103.0).failures == ["no results (stopped by force)", "never refused"]


def test_local_drill_passes_and_leaves_nothing_behind(scratch_tmp, isolated_cmkfs_home, user_vault):
    done = _drill(scratch_tmp)
    assert done.returncode == 0, done.stderr
    assert "PASSED" in done.stdout
    path, report = _report(isolated_cmkfs_home)
    assert f"report: {path}" in done.stdout
    assert path.stat().st_mode & 0o777 == 0o600
    _assert_passed(report)
    assert report["runner"] == "processes"
    assert report["target"].startswith(f"file://{scratch_tmp}/")
    rows = [line.split()[:3] for line in done.stdout.splitlines()[1:5]]  # one table row per agent
    assert rows == [[a["name"], a["kind"], str(a["pid"])] for a in report["agents"]]
    _assert_cleaned_up(scratch_tmp, [a["pid"] for a in report["agents"]])
    # The user's vault: the same one key, untouched; their home holds only it and the report.
    meta, before = user_vault
    assert LocalVaultProvider(isolated_cmkfs_home).list_keys() == ["tenant"]
    assert meta.read_bytes() == before
    assert sorted(p.name for p in isolated_cmkfs_home.iterdir()) == ["drills", "vault"]


@pytest.mark.dask
def test_dask_drill_passes(scratch_tmp, tmp_path):
    pytest.importorskip("distributed")
    report_path = tmp_path / "reports" / "dask.json"
    done = _drill(scratch_tmp, "--dask", "--readers", "3", "--report", str(report_path), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)  # --json: the report on stdout, and the same in the file
    assert json.loads(report_path.read_text()) == report
    assert report_path.stat().st_mode & 0o777 == 0o600
    _assert_passed(report)
    assert report["runner"] == "dask"
    assert report["versions"]["distributed"] and report["versions"]["dask"]
    _assert_cleaned_up(scratch_tmp, [a["pid"] for a in report["agents"]])


def test_a_reader_keeping_keys_past_the_bound_fails_the_drill(scratch_tmp, isolated_cmkfs_home):
    done = _drill(scratch_tmp, "--reader-ttl", "30")
    assert done.returncode == 1, done.stderr
    assert "FAILED" in done.stdout
    failure = [line for line in done.stderr.splitlines() if line.startswith("cmkfs: error:")]
    assert len(failure) == 1
    for name in ("reader-1", "reader-2", "reader-3"):
        assert name in failure[0]
    assert "writer" not in failure[0]  # the writer kept the drill's TTL, and was refused in time
    _, report = _report(isolated_cmkfs_home)
    assert report["verdict"] == "failed"
    assert report["failed_agents"] == ["reader-1", "reader-2", "reader-3"]
    assert report["reader_ttl_seconds"] == 30
    for agent in report["agents"][:3]:
        assert agent["ok_started_after_bound"] > 0
        assert agent["refused_after_seconds"] is None
    assert report["agents"][3]["verdict"] == "pass"
    _assert_cleaned_up(scratch_tmp, [a["pid"] for a in report["agents"]])


def _stderr_lines(process: subprocess.Popen) -> queue.Queue:
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in process.stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _until(lines: queue.Queue, text: str, seen: list[str]) -> None:
    while True:
        line = lines.get(timeout=RUN_TIMEOUT)
        assert line is not None, "".join(seen)
        seen.append(line)
        if text in line:
            return


def _drain(lines: queue.Queue, seen: list[str]) -> None:
    while (line := lines.get(timeout=30)) is not None:
        seen.append(line)


def _ready_pids(seen: list[str]) -> list[int]:
    return [int(line.split(" pid ")[1].split()[0]) for line in seen if line.rstrip().endswith(" ready")]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_drill_cleans_up(scratch_tmp, tmp_path, isolated_cmkfs_home, signum):
    target = tmp_path / "target"
    target.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-m", "cmkfs", "drill", "--ttl", "30", "--target", str(target)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(scratch_tmp),
    )
    seen: list[str] = []
    try:
        lines = _stderr_lines(process)
        _until(lines, "key disabled", seen)  # mid-drill: agents running, key disabled, canaries in place
        pids = _ready_pids(seen)
        assert len(pids) == 4 and all(_agent_alive(pid) for pid in pids)
        assert [p.name for p in target.iterdir()] != []
        process.send_signal(signum)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    _drain(lines, seen)
    assert process.returncode == 1
    assert "drill interrupted" in "".join(seen)
    assert list(target.iterdir()) == []  # the canary folder is gone
    assert not (isolated_cmkfs_home / "drills").exists()  # no verdict, so no report
    _assert_cleaned_up(scratch_tmp, pids)


@pytest.mark.azurite
def test_drill_on_azurite_passes_and_keeps_secrets_out(scratch_tmp, isolated_cmkfs_home, azurite, abfs_container):
    options = json.dumps({"abfs": {"connection_string": azurite.connection_string}})
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cmkfs",
            "drill",
            "--ttl",
            str(TTL),
            "--target",
            f"abfs://{abfs_container}/drills",
            "--storage-options",
            options,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(scratch_tmp),
    )
    seen: list[str] = []
    try:
        lines = _stderr_lines(process)
        _until(lines, "key disabled", seen)
        # The agents got the storage options on stdin: not in their command lines, nor their environment.
        for pid in _ready_pids(seen):
            agent = psutil.Process(pid)
            assert azurite.account_key not in " ".join(agent.cmdline())
            assert azurite.account_key not in json.dumps(agent.environ())
        stdout, _ = process.communicate(timeout=RUN_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    _drain(lines, seen)
    stderr = "".join(seen)
    assert process.returncode == 0, stderr
    path, report = _report(isolated_cmkfs_home)
    _assert_passed(report)
    assert report["target"] == f"abfs://{abfs_container}/drills"
    assert report["versions"]["adlfs"]
    _assert_cleaned_up(scratch_tmp, [a["pid"] for a in report["agents"]])
    with azurite.service_client() as client:
        assert list(client.get_container_client(abfs_container).list_blobs()) == []  # canaries removed
    # No secret and no canary plaintext in the report, the table or the progress lines.
    text = path.read_text()
    for output in (text, stdout, stderr):
        assert azurite.account_key not in output
        assert "AccountKey" not in output
        assert CANARY_PREFIX.decode().strip() not in output
        assert "canary-row" not in output
