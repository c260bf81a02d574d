"""`cmkfs init` and `cmkfs capacity`: the key policy from the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from click.testing import CliRunner

from cmkfs.cli import cli
from cmkfs.filesystem import CMKFileSystem
from cmkfs.policy import load_policy
from cmkfs.stream import BytesSource, read_header


def run(*args, code=0):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == code, (result.exit_code, result.output, result.stderr)
    return result


def test_init_creates_vault_tenant_key_and_policy(isolated_cmkfs_home):
    result = run("init")
    assert "created key local://tenant" in result.stderr and "df.to_parquet" in result.stderr
    policy = load_policy()
    assert policy.default_key == "local://tenant" and policy.mode == "cmk"
    again = run("init")
    assert "nothing to change" in again.stderr
    assert json.loads(run("init", "--mode", "byok", "--json").stdout)["mode"] == "byok"


def test_capacities_from_add_to_remove(isolated_cmkfs_home, tmp_path):
    run("init", "--mode", "byok")
    run("keys", "create", "sales")
    run("capacity", "add", "sales", str(tmp_path / "sales"), "--key", "sales")
    run("capacity", "add", "hr", str(tmp_path / "hr"))
    rows = json.loads(run("capacity", "list", "--json").stdout)
    assert [(r["name"], r["key"]) for r in rows] == [("hr", "local://tenant"), ("sales", "local://sales")]
    shown = json.loads(run("capacity", "show", "sales", "--json").stdout)
    assert shown["url"] == f"file://{tmp_path}/sales" and shown["own_key"] == "local://sales"
    result = run("capacity", "add", "inner", str(tmp_path / "sales" / "ws"), code=7)
    assert "overlaps capacity sales" in result.stderr
    run("keys", "create", "hr")
    assign = run("capacity", "assign", "hr", "hr")
    assert "cmkfs rewrap" in assign.stderr
    assert load_policy().capacities["hr"].key == "local://hr"
    run("capacity", "remove", "hr")
    assert "hr" not in load_policy().capacities
    assert "no capacity named nope" in run("capacity", "show", "nope", code=7).stderr


def test_a_capacity_decides_the_key_of_new_files(isolated_cmkfs_home, tmp_path):
    run("init", "--mode", "byok")
    run("keys", "create", "sales")
    run("capacity", "add", "sales", str(tmp_path / "sales"), "--key", "sales")
    (tmp_path / "sales" / "ws").mkdir(parents=True)
    fs = CMKFileSystem(target_protocol="file", skip_instance_cache=True)
    fs.pipe_file(str(tmp_path / "sales" / "ws" / "f.bin"), b"data")
    header = read_header(BytesSource((tmp_path / "sales" / "ws" / "f.bin").read_bytes()))
    assert header.key_block.key_uri == "local://sales"


def test_the_real_entry_point(isolated_cmkfs_home, tmp_path):
    env = {**os.environ, "CMKFS_HOME": str(isolated_cmkfs_home)}
    out = subprocess.run(
        [sys.executable, "-m", "cmkfs", "init", "--json"], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["default_key"] == "local://tenant"
    bad = subprocess.run(
        [sys.executable, "-m", "cmkfs", "capacity", "add", "bad name", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert bad.returncode == 7 and "capacity name" in bad.stderr and "Traceback" not in bad.stderr


def test_unexpected_errors_are_one_line_unless_debug(isolated_cmkfs_home, monkeypatch):
    import cmkfs.cli.capacity as capacity_cli

    def broken(home=None):
        raise RuntimeError("something unexpected")

    monkeypatch.setattr(capacity_cli, "load_policy", broken)
    result = CliRunner().invoke(cli, ["capacity", "list"])
    assert result.exit_code == 1 and "RuntimeError: something unexpected" in result.stderr
    assert "--debug" in result.stderr and "Traceback" not in result.stderr
    debug = CliRunner().invoke(cli, ["--debug", "capacity", "list"])
    assert isinstance(debug.exception, RuntimeError)  # re-raised: click's runner shows the traceback


def test_concurrent_edits_lose_nothing(isolated_cmkfs_home, tmp_path):
    env = {**os.environ, "CMKFS_HOME": str(isolated_cmkfs_home)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "cmkfs", "capacity", "add", f"c{i}", str(tmp_path / f"c{i}")],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for i in range(12)
    ]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    assert sorted(load_policy().capacities) == sorted(f"c{i}" for i in range(12))


def test_list_separates_fields_with_real_tabs(isolated_cmkfs_home, tmp_path):
    run("init")
    run("capacity", "add", "sales", str(tmp_path / "sales"))
    line = run("capacity", "list").stdout.strip()
    assert line.split("\t") == ["sales", f"file://{tmp_path}/sales", "local://tenant"]


def test_rotate_status_rewrap_by_capacity_name(isolated_cmkfs_home, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # "sales" is not a path here: it names the capacity
    run("init", "--mode", "byok")
    run("keys", "create", "sales")
    run("capacity", "add", "sales", str(tmp_path / "store"), "--key", "sales")
    (tmp_path / "store" / "ws").mkdir(parents=True)
    CMKFileSystem(target_protocol="file", skip_instance_cache=True).pipe_file(str(tmp_path / "store/ws/f"), b"x")
    run("keys", "rotate", "sales")
    before = json.loads(run("status", "sales", "--json").stdout)["stores"][0]
    assert before["total"]["older_version"] == 1
    assert "re-wrapped 1" in run("rewrap", "sales", "-r").stdout
    after = json.loads(run("status", "sales", "--json").stdout)["stores"][0]
    assert after["total"]["current"] == 1 and after["total"]["older_version"] == 0
