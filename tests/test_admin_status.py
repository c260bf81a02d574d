"""``cmkfs status``: every kind of file counted per workspace from headers alone; rewrap brings a
workspace in sync."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cmkfs.admin.status import StoreStatus, store_status
from cmkfs.admin.walk import list_files, run_bounded, stderr_progress, workspace_of
from cmkfs.policy import load_policy
from tests.admin_helpers import PARTIAL, as_json, cli_runner, cmk_fs, make_store


@pytest.fixture
def run():
    return cli_runner()


@pytest.fixture
def store(run, tmp_path):
    return make_store(run, tmp_path)


ZERO = {"current": 0, "older_version": 0, "other_key": 0, "key_unchecked": 0, "plaintext": 0, "unreadable": 0}


def workspaces(report: dict) -> dict[str, dict]:
    return {w["workspace"]: w for w in report["workspaces"]}


def test_status_counts_each_kind_of_file_and_says_not_in_sync(run, store):
    result = run("status", "--json")
    assert result.exit_code == 0, result.output
    (report,) = as_json(result)["stores"]
    assert report["capacity"] == "sales" and report["url"] == f"file://{store.root}"
    assert report["key"]["key_uri"] == "local://sales" and report["key"]["current_version"] == "2"
    finance, raw = workspaces(report)["finance"], workspaces(report)["raw"]
    assert {k: finance[k] for k in ZERO} == ZERO | {"current": 1, "older_version": 1, "other_key": 1}
    assert {k: raw[k] for k in ZERO} == ZERO | {"plaintext": 1, "unreadable": 1}
    assert finance["files"] == 3 and raw["files"] == 2 and raw["partial"] == 1
    assert finance["bytes"] == sum(p.stat().st_size for p in store.finance.iterdir())
    assert finance["sync"] == raw["sync"] == report["total"]["sync"] == "NotInSyncWithWorkspace"
    assert report["total"]["in_sync"] is False and report["total"]["files"] == 5
    # The partial file is not a file of the workspace: counted apart, with its age.
    (partial,) = report["partial_files"]
    assert partial["path"] == str(store.raw / PARTIAL) and 3 * 86400 - 60 < partial["age_seconds"] < 3 * 86400 + 60
    not_current = {os.path.basename(f["path"]): f for f in report["not_current"]}
    assert not_current["old.bin"]["state"] == "older_version" and not_current["old.bin"]["key_version"] == "1"
    assert not_current["other.bin"]["key_uri"] == "local://other"
    assert not_current["plain.csv"]["state"] == "plaintext"
    assert (
        not_current["damaged.bin"]["state"] == "unreadable"
        and not_current["damaged.bin"]["problem"] == "damaged_header"
    )

    text = run("status", "sales", "--files").stdout
    assert "capacity sales" in text and "local://sales version 2" in text
    assert "NotInSyncWithWorkspace" in text and "InSyncWithWorkspace" not in text.replace("NotInSync", "")
    assert PARTIAL in text and "3.0 days old" in text
    assert "old.bin: older_version" in text and "plain.csv: plaintext" in text


def test_rewrap_brings_a_workspace_in_sync(run, store):
    result = run("rewrap", "--recursive", "--key", "local://sales", str(store.finance))
    assert result.exit_code == 0, result.output
    report = as_json(run("status", "sales", "--json"))["stores"][0]
    finance, raw = workspaces(report)["finance"], workspaces(report)["raw"]
    assert finance["current"] == finance["files"] == 3 and finance["in_sync"] is True
    assert finance["sync"] == "InSyncWithWorkspace"
    assert raw["sync"] == "NotInSyncWithWorkspace"  # plaintext and damage are not a rewrap's to fix
    # A URL below the capacity: a store of its own, under the capacity's key.
    sub = as_json(run("status", str(store.finance), "--json"))["stores"][0]
    assert sub["capacity"] is None and sub["key"]["key_uri"] == "local://sales" and sub["total"]["in_sync"]
    assert [w["workspace"] for w in sub["workspaces"]] == [""]  # files directly in the root


def test_status_reads_headers_only(run, store):
    """No vault call: a disabled key does not stop status (it shows the key disabled)."""
    assert run("keys", "disable", "sales").exit_code == 0
    result = run("status", "sales", "--json")
    assert result.exit_code == 0, result.output
    report = as_json(result)["stores"][0]
    assert report["key"]["enabled"] is False and workspaces(report)["finance"]["current"] == 1
    assert "DISABLED" in run("status", "sales").stdout


def test_byok_capacity_is_checked_against_its_own_key(run, store, tmp_path):
    root = tmp_path / "hr"
    (root / "people").mkdir(parents=True)
    policy = load_policy()
    policy.mode = "byok"
    policy.add("hr", str(root), "local://other")
    policy.save()
    cmk_fs().pipe_file(str(root / "people" / "a.bin"), b"a" * 100)  # written under hr's key by policy
    stores = {s["capacity"]: s for s in as_json(run("status", "--json"))["stores"]}
    assert set(stores) == {"hr", "sales"}  # no argument: every capacity
    assert stores["hr"]["key"]["key_uri"] == "local://other" and stores["hr"]["total"]["in_sync"]
    assert workspaces(stores["sales"])["finance"]["other_key"] == 1


def test_a_capacity_with_no_files_yet_and_bad_targets(run, tmp_path):
    assert run("keys", "create", "t", "--default").exit_code == 0
    assert run("capacity", "add", "empty", str(tmp_path / "nothing-yet")).exit_code == 0
    report = as_json(run("status", "--json"))["stores"][0]
    assert report["exists"] is False and report["total"]["in_sync"] is True
    result = run("status", str(tmp_path / "missing"))
    assert result.exit_code == 1 and str(tmp_path / "missing") in result.stderr
    result = run("status", "no-such-capacity")
    assert result.exit_code == 7 and "neither a capacity" in result.stderr


def test_no_capacities_is_a_configuration_error(run):
    result = run("status")
    assert result.exit_code == 7 and "no capacities" in result.stderr


def test_a_vault_that_cannot_be_asked_is_reported_with_its_exit_code(run, store):
    policy = load_policy()
    policy.default_key = "local://gone"  # no such key in the vault
    policy.save()
    result = run("status", "sales", "--json")
    assert result.exit_code == 3
    report = json.loads(result.stdout)["stores"][0]
    assert report["key"]["error"]["type"] == "KeyNotFoundError"
    assert workspaces(report)["finance"]["other_key"] == 3  # still a report: nothing is under the policy key


def test_paths_from_storage_are_escaped(run, store):
    evil = store.raw / "bad\x1b[31mname.csv"
    evil.write_text("plain")
    text = run("status", "sales", "--files").stdout
    assert "\x1b" not in text and "bad\\x1b[31mname.csv" in text


def test_walk_helpers(tmp_path):
    assert workspace_of("/r", "/r/ws/a/b") == "ws" and workspace_of("/r/", "/r/file") == ""
    assert list(run_bounded(lambda x: x * 2, range(50), workers=3)) == [x * 2 for x in range(50)]
    done = []
    list(run_bounded(str, range(5), workers=2, total=5, progress=lambda d, t: done.append((d, t))))
    assert done == [(i, 5) for i in range(1, 6)]
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"x")
    import fsspec

    local = fsspec.filesystem("file")
    (entry,) = list_files(local, str(tmp_path))
    assert entry.path == str(tmp_path / "d" / "f") and entry.size == 1 and entry.mtime is not None
    assert isinstance(store_status(local, str(tmp_path), _no_key()), StoreStatus)


def test_progress_only_on_a_terminal():
    import io

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    with stderr_progress("walk", 3, stream=io.StringIO()) as progress:
        assert progress is None
    screen = Terminal()
    with stderr_progress("walk", 3, stream=screen) as progress:
        assert progress is not None
        for done in (1, 2, 3):
            progress(done, 3)
    assert "walk" in screen.getvalue() and "3/3" in screen.getvalue()
    screen = Terminal()
    with stderr_progress("[bold]store[/bold]", 1, stream=screen) as progress:
        progress(1, 1)
    assert "[bold]store[/bold]" in screen.getvalue()  # a name is shown as it is, never read as markup


def _no_key():
    from cmkfs.admin.keystate import KeyState

    return KeyState(None)


def test_status_in_a_real_process(store):
    env = dict(os.environ)
    result = subprocess.run(
        [sys.executable, "-m", "cmkfs", "status", "--json"], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["stores"][0]["total"]["sync"] == "NotInSyncWithWorkspace"
    assert result.stderr == ""  # not a terminal: no progress drawn


def test_a_plaintext_file_named_like_a_partial_is_plaintext_not_partial(run, store):
    named = store.finance / ".ledger.cmkfs-partial-0123456789abcdef"
    named.write_bytes(b"customer plaintext\n")
    (report,) = as_json(run("status", "--json"))["stores"]
    finance = workspaces(report)["finance"]
    assert finance["plaintext"] == 1 and finance["partial"] == 0 and finance["sync"] == "NotInSyncWithWorkspace"
    assert str(named) not in {p["path"] for p in report["partial_files"]}
