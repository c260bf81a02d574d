"""The README's main job: ``cmkfs demo``, through its entry point, in a fresh home."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import fsspec
import pandas as pd
import pytest

from cmkfs.cli.demo_job import MARKER, PLAINTEXT_MARKERS
from cmkfs.format import MAGIC


def _demo(*args, env=None, timeout=180):
    return subprocess.run(
        [sys.executable, "-m", "cmkfs", "demo", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One JSON run of the demo, shared by the tests that check what it claims."""
    directory = tmp_path_factory.mktemp("demo") / "d"
    user_home = tmp_path_factory.mktemp("user-home")
    proc = _demo("--dir", str(directory), "--rows", "4000", "--json", env={"CMKFS_HOME": str(user_home)})
    assert proc.returncode == 0, proc.stderr
    return directory, user_home, json.loads(proc.stdout)


def test_demo_refreshes_two_capacities_under_their_own_keys(demo_run):
    directory, _, result = demo_run
    assert result["home"] == str(directory / "home")
    sales, hr = result["capacities"]["sales"], result["capacities"]["hr"]
    assert sales["key_uri"] == "local://tenant"
    assert hr["key_uri"] == "local://hr"
    assert sales["rows"] == 4000 and hr["rows"] == 4000 // 15
    assert sales["dataset_files"] == 4  # one per region partition
    assert sales["model_reads_back_equal"] is True and hr["model_reads_back_equal"] is True
    assert len(sales["images"]) == 2 and len(hr["images"]) == 2
    assert set(result["revenue_by_region"]) == {"north", "south", "east", "west"}


def test_demo_leaves_only_ciphertext_on_disk(demo_run):
    directory, _, result = demo_run
    files = [p for p in (directory / "store").rglob("*") if p.is_file()]
    assert len(files) == result["ciphertext_files"] > 20
    for path in files:
        raw = path.read_bytes()
        assert raw.startswith(MAGIC), path
        for marker in (*PLAINTEXT_MARKERS, b"north", b"revenue"):
            assert marker not in raw, (path, marker)


def test_demo_revocation_refuses_hr_within_the_ttl_and_keeps_sales(demo_run):
    directory, _, result = demo_run
    assert result["revocation_held"] is True
    assert result["new_reader_refused_at_once"] is True
    assert 0 <= result["hr_refused_after_seconds"] <= result["ttl"] + 1.0
    assert result["sales_readable_while_hr_revoked"] is True
    assert result["hr_restored_after_enable"] is True
    audit = (directory / "home" / "audit.log").read_text()
    events = [json.loads(line) for line in audit.splitlines()]
    assert [e["op"] for e in events if e.get("key_uri") == "local://hr" and e["op"] in ("disable", "enable")] == [
        "disable",
        "enable",
    ]


def test_demo_never_touches_the_users_home(demo_run):
    _, user_home, _ = demo_run
    assert list(user_home.iterdir()) == []


def test_demo_data_opens_in_pandas_with_the_demo_home(demo_run, monkeypatch):
    directory, _, result = demo_run
    monkeypatch.setenv("CMKFS_HOME", result["home"])
    fs = fsspec.filesystem("cmk", target_protocol="file", skip_instance_cache=True)
    frame = pd.read_parquet(
        str(directory / "store" / "sales" / "dataset"), filesystem=fs, columns=["region", "revenue"]
    )
    by_region = frame.groupby("region", observed=True)["revenue"].sum().round(2)
    assert {str(k): float(v) for k, v in by_region.items()} == pytest.approx(result["revenue_by_region"])


def test_demo_story_shows_status_and_next_steps_and_reruns_in_place(tmp_path):
    cache = tmp_path / "cache"
    env = {"XDG_CACHE_HOME": str(cache)}
    first = _demo("--rows", "1000", env=env)
    assert first.returncode == 0, first.stderr
    second = _demo("--rows", "1000", env=env)  # a re-run starts afresh in the same directory
    assert second.returncode == 0, second.stderr
    out = second.stdout
    directory = cache / "cmkfs-demo"
    assert (directory / MARKER).is_file()
    assert f"Everything is in {directory}" in out
    assert "status" in out and "capacity sales" in out and "capacity hr" in out  # the status table
    assert "refused at once" in out and "refused too (KeyRevokedError)" in out
    for step in ("open the data in pandas", "cmkfs status", "drill"):
        assert step in out, step
    assert second.stderr == ""
    # The first thing to try works as printed, in a shell.
    lines = out.splitlines()
    export = next(i for i, line in enumerate(lines) if line.strip().startswith("export CMKFS_HOME="))
    tried = subprocess.run(
        ["sh", "-c", lines[export].strip() + "\n" + lines[export + 1].strip()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert tried.returncode == 0, tried.stderr
    assert all(region in tried.stdout for region in ("north", "south", "east", "west"))


def test_demo_refuses_a_directory_it_did_not_make(tmp_path):
    directory = tmp_path / "precious"
    directory.mkdir()
    (directory / "thesis.tex").write_text("keep me")
    proc = _demo("--dir", str(directory), "--rows", "100")
    assert proc.returncode == 7
    assert str(directory) in proc.stderr and "not made by cmkfs demo" in proc.stderr
    assert [p.name for p in directory.iterdir()] == ["thesis.tex"]


def test_demo_never_follows_a_symlinked_home_into_another_vault(tmp_path):
    real_home = tmp_path / "real-home"
    real_home.mkdir()
    (real_home / "config.json").write_text('{"default_key": "local://mine"}')
    directory = tmp_path / "d"
    directory.mkdir()
    (directory / MARKER).write_text("")
    (directory / "home").symlink_to(real_home)
    proc = _demo("--dir", str(directory), "--rows", "100")
    assert proc.returncode == 7
    assert str(directory / "home") in proc.stderr
    assert [p.name for p in real_home.iterdir()] == ["config.json"]
    assert (real_home / "config.json").read_text() == '{"default_key": "local://mine"}'
