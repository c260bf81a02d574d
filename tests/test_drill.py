"""``cmkfs drill`` end to end: the command in a process of its own, its agents in theirs (or on a
Dask LocalCluster), a real scratch vault, the real clock; on local disk and on Azurite.

Every run points ``$TMPDIR`` at a folder of the test's own, where the drill makes its scratch
vault and (by default) its target: an empty folder afterwards is the proof of clean-up.  The only
timing asserted is the drill's own verdict: refused within TTL + tolerance of the disable call's
return, and nothing after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from cmkfs.admin.drill import TOLERANCE, DisableCall, DrillConfig, DrillResult, agent_figures, redact_url
from cmkfs.admin.drill_agents import CANARY_PREFIX, AgentSpec
from cmkfs.admin.drill_evidence import NOT_OBSERVED
from cmkfs.clock import KEY_CLOCK_NAME
from cmkfs.errors import ConfigurationError
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
MOUNT_KINDS = ["mount-held-open", "mount-new-open", "mount-parquet", "mount-writer"]
needs_fuse = pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="--mount needs /dev/fuse")


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


def _assert_passed(report: dict, *, readers: int = 3, ttl: float = TTL, kinds: list[str] = KINDS) -> None:
    assert report["verdict"] == "passed", report
    assert report["failed_agents"] == []
    assert report["ttl_seconds"] == ttl
    assert report["tolerance_seconds"] == TOLERANCE
    assert report["bound_seconds"] == ttl + TOLERANCE
    assert report["bound_measured_from"] == "disable_returned"
    disable = report["disable"]
    assert disable["started_utc"] <= disable["returned_utc"]
    assert disable["call_seconds"] == pytest.approx(
        disable["returned_clock_seconds"] - disable["started_clock_seconds"], abs=0.002
    )
    assert report["clock"]["name"] == KEY_CLOCK_NAME
    assert report["key"]["uri"] == f"local://drill-{report['drill_id']}"
    assert report["canary_folder"] == f"cmkfs-drill-{report['drill_id']}"
    assert set(report["cleanup"].values()) == {True}
    for name in ("cmkfs", "python", "platform", "cryptography", "fsspec", "pyarrow"):
        assert report["versions"][name]
    agents = report["agents"]
    assert [a["name"] for a in agents] == [f"reader-{i + 1}" for i in range(readers)] + ["writer"]
    assert [a["kind"] for a in agents] == [kinds[i % 3] for i in range(readers)] + [kinds[3]]
    refusal = "EACCES" if kinds == MOUNT_KINDS else "KeyRevokedError"  # through a mount: the errno
    for agent in agents:
        # The figures behind the verdict: used the key before, refused in an attempt begun within the bound,
        # seen trying after it (the drill runs to the bound plus the margin), and nothing after it.
        assert agent["verdict"] == "pass", agent
        assert agent["ok_before_disable"] >= 1
        assert agent["errors_before_disable"] == 0
        assert agent["refused_attempt_started_after_seconds"] <= ttl + TOLERANCE
        assert agent["refused_attempt_started_after_seconds"] <= agent["refused_after_seconds"]
        assert agent["attempts_started_after_bound"] >= 1
        assert agent["ok_started_after_bound"] == 0
        assert agent["wrong_data"] == 0
        assert agent["errors_after_disable"].get(refusal, 0) >= 1
        assert agent["attempts"] == (
            agent["ok_before_disable"]
            + agent["ok_after_disable"]
            + agent["errors_before_disable"]
            + sum(agent["errors_after_disable"].values())
        )
    assert len({a["pid"] for a in agents}) == len(agents)
    assert os.getpid() not in {a["pid"] for a in agents}


SPEC = AgentSpec(
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


def _figures(attempts, *, started=100.0, returned=100.0, ttl=2.0):
    """The figures of hand-made attempts, the bound counted from ``returned`` as the drill does."""
    return agent_figures(
        SPEC, {"name": "reader-1", "pid": 7, "attempts": attempts}, started, returned, returned + ttl + TOLERANCE
    )


def test_figures_go_by_start_time_and_by_refusal():
    # The verdict's arithmetic on hand-made attempts (the disable call at 100, bound = 103).
    passed = _figures(
        [
            [99.0, 99.1, "ok"],
            [99.9, 100.2, "ok"],  # started before the disable call: counted before, but its data came after
            [101.0, 101.5, "KeyRevokedError"],
            [102.0, 102.1, "OSError"],  # an error, but not the key refusing
            [103.5, 103.6, "KeyRevokedError"],
        ]
    )
    assert (passed.ok_before, passed.ok_after, passed.refused_after, passed.ok_after_bound) == (2, 0, 1.5, 0)
    assert (passed.refused_started_after, passed.attempts_after_bound) == (1.0, 1)
    assert passed.last_data_after == pytest.approx(0.2)
    assert passed.errors_after == {"KeyRevokedError": 2, "OSError": 1}
    assert passed.passed
    late = _figures([[99.0, 99.1, "ok"], [101.0, 101.1, "OSError"], [103.1, 103.2, "ok"]])
    assert late.failures == ["data after the bound", "never refused"]
    assert agent_figures(SPEC, None, 100.0, 100.0, 103.0).failures == ["no results (stopped by force)", "never refused"]


def test_a_refusal_not_seen_within_the_bound_fails():
    # Stalled across the bound (stopped, swapped out): refused only in an attempt begun 15.5 s after
    # the disable call, and never seen with data after the bound.  That is no evidence of refusal in time.
    stalled = _figures(
        [[99.0, 99.1, "ok"], [99.5, 99.6, "ok"], [115.5, 116.56, "KeyRevokedError"], [116.6, 116.7, "KeyRevokedError"]]
    )
    assert stalled.refused_after == pytest.approx(16.56)
    assert stalled.ok_after_bound == 0
    assert stalled.failures == [NOT_OBSERVED]
    # Refused in time, but not one attempt after the bound: nothing shows it stayed refused.
    stopped_early = _figures([[99.0, 99.1, "ok"], [101.0, 101.5, "KeyRevokedError"]])
    assert stopped_early.attempts_after_bound == 0
    assert stopped_early.failures == [NOT_OBSERVED]
    # The boundary: a refused attempt begun exactly at the bound is in time.
    at_bound = _figures([[99.0, 99.1, "ok"], [103.0, 103.1, "KeyRevokedError"], [103.2, 103.3, "KeyRevokedError"]])
    assert at_bound.passed


def test_the_bound_counts_from_the_disable_calls_return():
    # A slow disable call (100 to 101.5): the vault confirms the key until the call commits, so data 3.2 s
    # after the call began (1.7 s after it returned) is within the TTL, and so is a refusal at 104.1.
    slow_call = [
        [99.0, 99.1, "ok"],
        [103.2, 103.3, "ok"],
        [104.0, 104.1, "KeyRevokedError"],
        [105, 105.1, "KeyRevokedError"],
    ]
    figures = _figures(slow_call, started=100.0, returned=101.5)
    assert figures.passed, figures.failures
    assert (figures.ok_after, figures.ok_after_bound) == (1, 0)
    assert figures.refused_after == pytest.approx(2.6)  # seconds after the return, as the bound
    assert figures.last_data_after == pytest.approx(1.8)


def _result(*figures) -> DrillResult:
    result = DrillResult("0" * 12, DrillConfig(ttl=2.0), target="file:///t", key_uri="local://drill-x", started="")
    result.disable = DisableCall(100.0, 100.0, "", "")
    result.agents = list(figures)
    return result


def test_the_verdict_line_says_within_only_when_every_refusal_was_within():
    in_time = _figures([[99.0, 99.1, "ok"], [101.0, 101.5, "KeyRevokedError"], [103.5, 103.6, "KeyRevokedError"]])
    # Refused in an attempt begun before the bound that took until 104.5 to finish: a pass, but not "within".
    slow = _figures([[99.0, 99.1, "ok"], [102.9, 104.5, "KeyRevokedError"], [104.6, 104.7, "KeyRevokedError"]])
    assert in_time.passed and slow.passed
    assert _result(in_time).summary().startswith("PASSED: every agent was refused within 3 s")
    line = _result(in_time, slow).summary()
    assert line.startswith("PASSED") and "4.50 s" in line
    assert "within" not in line
    stalled = _figures([[99.0, 99.1, "ok"], [115.5, 116.56, "KeyRevokedError"], [116.6, 116.7, "KeyRevokedError"]])
    line = _result(in_time, stalled).summary()
    assert line.startswith("FAILED: 1 of 2") and "within" not in line


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("ftp://user:pw-SECRET@host:2121/drills", "ftp://***@host:2121/drills"),
        ("abfs://c/p?sv=2024&sig=SECRET", "abfs://c/p?***"),
        ("https://acct.example/c/p#SECRET", "https://acct.example/c/p#***"),
        ("sftp://SECRET@host/a@b/c", "sftp://***@host/a@b/c"),  # an "@" in the path is the path's
        ("simplecache::s3://k:SECRET@bucket/x?y=SECRET", "simplecache::s3://***@bucket/x?***"),
        ("file:///tmp/drills", "file:///tmp/drills"),
        ("abfs://container/drills", "abfs://container/drills"),
    ],
)
def test_urls_are_shown_without_credentials(url, shown):
    assert redact_url(url) == shown


def test_a_target_refused_as_a_url_is_not_quoted_with_its_credentials():
    with pytest.raises(ConfigurationError) as refused:
        DrillConfig(target="ftp://user:pw-SECRET@host/a/../b?sig=SECRET").check()
    assert "SECRET" not in str(refused.value)
    assert "ftp://***@host/a/../b?***" in str(refused.value)


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


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _listening_ports(processes: list[psutil.Process]) -> set[int]:
    ports: set[int] = set()
    for process in processes:
        with contextlib.suppress(psutil.Error):
            ports |= {c.laddr.port for c in process.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
    return ports


def _http_answers(port: int, path: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return response.status < 400
    except (OSError, ValueError, http.client.HTTPException):  # refused, reset, not HTTP, 404: no answer
        return False


async def _dask_answers(address: str, **connection_args) -> bool:
    """Whether a Dask server at ``address`` answers an ``identity`` request from this process."""
    from distributed.comm import connect

    try:
        comm = await asyncio.wait_for(connect(address, timeout=1, **connection_args), 3)
    except Exception:  # noqa: BLE001 - refused, reset, handshake failed, timed out: no answer
        return False
    try:
        await asyncio.wait_for(comm.write({"op": "identity"}), 2)
        return isinstance(await asyncio.wait_for(comm.read(), 2), dict)
    except Exception:  # noqa: BLE001
        return False
    finally:
        comm.abort()


async def _probe(ports: set[int]) -> dict[str, bool]:
    """Every way in a local user has without the drill's certificate: plain TCP, TLS with a certificate of
    their own, and the HTTP routes that tell the scheduler's address (or run code)."""
    from distributed.security import Security

    theirs = Security.temporary().get_connection_args("client")
    probes = {}
    for port in ports:
        probes[f"tcp://127.0.0.1:{port}"] = _dask_answers(f"tcp://127.0.0.1:{port}")
        probes[f"tls://127.0.0.1:{port}"] = _dask_answers(f"tls://127.0.0.1:{port}", **theirs)
        for path in ("/json/identity.json", "/health", "/info/main/workers.html", "/metrics"):
            probes[f"http://127.0.0.1:{port}{path}"] = asyncio.to_thread(_http_answers, port, path)
    answers = await asyncio.gather(*probes.values())
    return dict(zip(probes, answers, strict=True))


@pytest.mark.dask
def test_dask_drill_passes_on_a_cluster_no_one_else_can_use(scratch_tmp, tmp_path):
    pytest.importorskip("distributed")
    ttl = 3.0  # time enough to probe the cluster while it runs
    report_path = tmp_path / "reports" / "dask.json"
    # The user's default key and vault passphrase: no worker (nor agent) may inherit them.
    secrets = {"CMKFS_PASSPHRASE": "passphrase-SECRET-0815", "CMKFS_KEY": "local://key-SECRET-0815"}
    with _running_drill(
        scratch_tmp,
        *("--ttl", str(ttl), "--dask", "--readers", "3", "--report", str(report_path), "--json"),
        env=secrets,
    ) as (process, lines, seen):
        _until(lines, " ready", seen)  # the cluster is up, its workers running the readers
        processes = _tree(process.pid)
        ports = _listening_ports(processes)
        answers = asyncio.run(_probe(ports))
        running = process.poll() is None  # the probes met a live cluster
        environments = []
        for child in processes[1:]:
            with contextlib.suppress(psutil.Error):
                environments.append(child.environ())
        stdout = process.stdout.read()
        process.wait(timeout=RUN_TIMEOUT)
    _drain(lines, seen)
    assert process.returncode == 0, "".join(seen)
    assert running
    assert len(ports) >= 1 + 2 * 3  # the scheduler, and each worker and its nanny
    assert [probe for probe, answered in answers.items() if answered] == []
    assert len(environments) >= 3 + 1  # the workers and the writer at least
    for environment in environments:
        assert not set(secrets.values()) & set(environment.values())
    report = json.loads(stdout)  # --json: the report on stdout, and the same in the file
    assert json.loads(report_path.read_text()) == report
    assert report_path.stat().st_mode & 0o777 == 0o600
    _assert_passed(report, ttl=ttl)
    assert report["runner"] == "dask"
    assert report["versions"]["distributed"] and report["versions"]["dask"]
    _assert_cleaned_up(scratch_tmp, [a["pid"] for a in report["agents"]])


def test_a_reader_ttl_below_the_ttl_is_refused(scratch_tmp, isolated_cmkfs_home):
    # The report would pass a TTL the readers never used.
    done = _drill(scratch_tmp, "--reader-ttl", str(TTL / 2))
    assert done.returncode == 7, done.stderr
    assert "reader_ttl" in done.stderr
    assert not (isolated_cmkfs_home / "drills").exists()
    assert list(scratch_tmp.iterdir()) == []


def test_a_reader_keeping_keys_past_the_bound_fails_the_drill(scratch_tmp, tmp_path, isolated_cmkfs_home):
    # The target carries a token in its query, as a SAS URL does: a local folder named so, which fsspec
    # takes as it is.  The token is shown nowhere.
    secret = "sig=SECRET-TOKEN-4711"
    target = tmp_path / f"t?sv=1&{secret}"
    target.mkdir()
    done = _drill(scratch_tmp, "--reader-ttl", "30", "--target", str(target))
    assert done.returncode == 1, done.stderr
    assert "FAILED" in done.stdout
    failure = [line for line in done.stderr.splitlines() if line.startswith("cmkfs: error:")]
    assert len(failure) == 1
    for name in ("reader-1", "reader-2", "reader-3"):
        assert name in failure[0]
    assert "writer" not in failure[0]  # the writer kept the drill's TTL, and was refused in time
    path, report = _report(isolated_cmkfs_home)
    assert report["verdict"] == "failed"
    assert report["failed_agents"] == ["reader-1", "reader-2", "reader-3"]
    assert report["reader_ttl_seconds"] == 30
    for agent in report["agents"][:3]:
        assert agent["ok_started_after_bound"] > 0
        assert agent["refused_after_seconds"] is None
    assert report["agents"][3]["verdict"] == "pass"
    _assert_cleaned_up(scratch_tmp, [a["pid"] for a in report["agents"]])
    assert list(target.iterdir()) == []
    assert report["target"] == f"file://{tmp_path}/t?***"
    assert "canaries in " in done.stderr
    for output in (path.read_text(), done.stdout, done.stderr):
        assert "SECRET-TOKEN" not in output


def test_an_agent_stalled_across_the_bound_fails_the_drill(scratch_tmp, isolated_cmkfs_home):
    # A real stall: reader-1 stopped (SIGSTOP) as soon as it is ready, so before the key is disabled, and
    # let go after the bound.  It is refused then, and got no data after the bound; but the drill never
    # saw it refused within the bound, and must not pass it.
    stalled: int | None = None
    with _running_drill(scratch_tmp, "--ttl", str(TTL)) as (process, lines, seen):
        try:
            _until(lines, "reader-1 (held-open) pid", seen)
            stalled = _ready_pids(seen[-1:])[0]
            os.kill(stalled, signal.SIGSTOP)
            _until(lines, "key disabled", seen)
            time.sleep(TTL + TOLERANCE + 0.5)  # past the bound, before the bound plus the margin (1.5 s)
            os.kill(stalled, signal.SIGCONT)
            stdout = process.stdout.read()
            process.wait(timeout=RUN_TIMEOUT)
        finally:
            if stalled is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(stalled, signal.SIGCONT)
    _drain(lines, seen)
    assert process.returncode == 1, "".join(seen)
    assert stdout.splitlines()[-2].startswith("FAILED: 1 of 4 agent(s) did not pass")
    _, report = _report(isolated_cmkfs_home)
    assert report["failed_agents"] == ["reader-1"]
    (reader,) = report["agents"][:1]
    assert reader["pid"] == stalled
    assert reader["reasons"] == [NOT_OBSERVED]
    assert reader["ok_started_after_bound"] == 0
    _assert_cleaned_up(scratch_tmp, [a["pid"] for a in report["agents"]])


@contextlib.contextmanager
def _running_drill(scratch_tmp: Path, *args: str, env: dict[str, str] | None = None):
    """``cmkfs drill ARGS`` started, its stderr pumped line by line; killed if the test leaves it running.

    Yields ``(process, lines, seen)`` for :func:`_until` and :func:`_drain`."""
    process = subprocess.Popen(
        [sys.executable, "-m", "cmkfs", "drill", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(_env(scratch_tmp), **(env or {})),
    )
    seen: list[str] = []
    try:
        yield process, _stderr_lines(process), seen
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


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


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["SIGINT", "SIGTERM", "SIGHUP"])
def test_an_interrupted_drill_cleans_up(scratch_tmp, tmp_path, isolated_cmkfs_home, signum):
    target = tmp_path / "target"
    target.mkdir()
    with _running_drill(scratch_tmp, "--ttl", "30", "--target", str(target)) as (process, lines, seen):
        _until(lines, "key disabled", seen)  # mid-drill: agents running, key disabled, canaries in place
        pids = _ready_pids(seen)
        assert len(pids) == 4 and all(_agent_alive(pid) for pid in pids)
        assert [p.name for p in target.iterdir()] != []
        process.send_signal(signum)
        process.wait(timeout=60)
    _drain(lines, seen)
    assert process.returncode == 1
    assert "drill interrupted" in "".join(seen)
    assert list(target.iterdir()) == []  # the canary folder is gone
    assert not (isolated_cmkfs_home / "drills").exists()  # no verdict, so no report
    _assert_cleaned_up(scratch_tmp, pids)


@pytest.mark.azurite
def test_drill_on_azurite_passes_and_keeps_secrets_out(scratch_tmp, isolated_cmkfs_home, azurite, abfs_container):
    options = json.dumps({"abfs": {"connection_string": azurite.connection_string}})
    with _running_drill(
        scratch_tmp, "--ttl", str(TTL), "--target", f"abfs://{abfs_container}/drills", "--storage-options", options
    ) as (process, lines, seen):
        _until(lines, "key disabled", seen)
        # The agents got the storage options on stdin: not in their command lines, nor their environment.
        for pid in _ready_pids(seen):
            agent = psutil.Process(pid)
            assert azurite.account_key not in " ".join(agent.cmdline())
            assert azurite.account_key not in json.dumps(agent.environ())
        stdout, _ = process.communicate(timeout=RUN_TIMEOUT)
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


def _cmkfs_mounts_under(folder: Path) -> list[str]:
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        return [line for line in mounts if line.split(" ")[1].startswith(str(folder))]


@needs_fuse
def test_drill_through_a_mount_passes_and_unmounts(scratch_tmp, isolated_cmkfs_home):
    done = _drill(scratch_tmp, "--mount", "--readers", "2")
    assert done.returncode == 0, done.stderr
    assert "canary folder mounted (cache TTL 2 s)" in done.stderr
    assert "through a FUSE mount (cache TTL 2 s)" in done.stdout
    _, report = _report(isolated_cmkfs_home)
    _assert_passed(report, readers=2, kinds=MOUNT_KINDS)
    assert (report["runner"], report["through"]) == ("processes", "fuse mount")
    mount = report["mount"]
    assert mount["cache_ttl_seconds"] == TTL
    # Every write whose close() returned is in the store; none refused at close() was published.
    writes = mount["writes"]
    assert writes["closed_ok"] >= 1
    assert writes["closed_ok_found"] == writes["closed_ok"]
    assert (writes["closed_ok_missing"], writes["refused_but_published"]) == (0, 0)
    assert report["cleanup"]["unmounted"] is True
    assert _cmkfs_mounts_under(scratch_tmp) == []
    _assert_cleaned_up(scratch_tmp, [a["pid"] for a in report["agents"]])


@needs_fuse
def test_a_mount_keeping_keys_past_the_bound_fails_the_drill(scratch_tmp, isolated_cmkfs_home):
    # The mount's cache TTL follows the readers': a mount that keeps serving after the bound is caught.
    done = _drill(scratch_tmp, "--mount", "--readers", "2", "--reader-ttl", "30")
    assert done.returncode == 1, done.stderr
    failure = [line for line in done.stderr.splitlines() if line.startswith("cmkfs: error:")]
    assert len(failure) == 1
    for name in ("reader-1 (mount-held-open)", "reader-2 (mount-new-open)", "writer (mount-writer)"):
        assert name in failure[0]  # the writer goes through the same mount, with the same TTL
    _, report = _report(isolated_cmkfs_home)
    assert report["verdict"] == "failed"
    assert report["failed_agents"] == ["reader-1", "reader-2", "writer"]
    assert report["mount"]["cache_ttl_seconds"] == 30
    for agent in report["agents"]:
        assert agent["ok_started_after_bound"] > 0
        assert agent["refused_after_seconds"] is None
    assert report["cleanup"]["unmounted"] is True
    assert _cmkfs_mounts_under(scratch_tmp) == []
    _assert_cleaned_up(scratch_tmp, [a["pid"] for a in report["agents"]])


@pytest.mark.parametrize(
    ("args", "env", "said"),
    [
        (["--mount", "--dask"], {}, "--mount and --dask"),
        (["--mount"], {"FUSE_LIBRARY_PATH": "/nonexistent/libfuse3.so.3"}, "needs libfuse"),
    ],
    ids=["with-dask", "no-libfuse"],
)
def test_mount_drill_configuration_errors(scratch_tmp, isolated_cmkfs_home, args, env, said):
    done = subprocess.run(
        [sys.executable, "-m", "cmkfs", "drill", "--ttl", str(TTL), *args],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        env=dict(_env(scratch_tmp), **env),
    )
    assert done.returncode == 7, done.stderr
    assert said in done.stderr
    assert not (isolated_cmkfs_home / "drills").exists()
    assert list(scratch_tmp.iterdir()) == []


@needs_fuse
def test_an_interrupted_mount_drill_unmounts(scratch_tmp, isolated_cmkfs_home):
    with _running_drill(scratch_tmp, "--ttl", "30", "--mount", "--readers", "1") as (process, lines, seen):
        _until(lines, "key disabled", seen)  # mid-drill: mounted, a descriptor held open through it
        pids = _ready_pids(seen)
        assert len(pids) == 2 and all(_agent_alive(pid) for pid in pids)
        assert len(_cmkfs_mounts_under(scratch_tmp)) == 1
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    _drain(lines, seen)
    assert process.returncode == 1
    assert "drill interrupted" in "".join(seen)
    assert _cmkfs_mounts_under(scratch_tmp) == []
    assert not (isolated_cmkfs_home / "drills").exists()
    _assert_cleaned_up(scratch_tmp, pids)
