"""``cmkfs status`` and ``verify`` on Azure Blob Storage (Azurite) and with a Key Vault key (the HTTPS test server)."""

from __future__ import annotations

import json
import os

import fsspec
import pytest

from cmkfs.format import DEFAULT_SEGMENT_SIZE, header_length_from_prefix
from cmkfs.policy import load_policy
from cmkfs.testing import fake_key_vault
from tests.admin_helpers import as_json, cli_runner, cmk_fs


@pytest.fixture
def run():
    return cli_runner()


def _by_name(result) -> dict[str, dict]:
    return {os.path.basename(f["path"]): f for f in json.loads(result.stdout)["files"]}


@pytest.mark.azurite
def test_status_and_verify_on_azure_blob(run, azurite, abfs, abfs_container):
    options = json.dumps({"abfs": azurite.storage_options})
    assert run("keys", "create", "blobkey", "--default").exit_code == 0
    url = f"abfs://{abfs_container}/store"
    assert run("capacity", "add", "blobs", url).exit_code == 0
    cmk = fsspec.filesystem(
        "cmk", target_protocol="abfs", target_options=azurite.storage_options, skip_instance_cache=True
    )
    cmk.pipe_file(f"{abfs_container}/store/sales/a.bin", os.urandom(2 * DEFAULT_SEGMENT_SIZE + 7))
    cmk.pipe_file(f"{abfs_container}/store/sales/b.bin", os.urandom(1000))
    abfs.pipe_file(f"{abfs_container}/store/hr/plain.csv", b"name,salary\n")

    result = run("status", "--storage-options", options, "--json")
    assert result.exit_code == 0, result.output
    (report,) = as_json(result)["stores"]
    spaces = {w["workspace"]: w for w in report["workspaces"]}
    assert spaces["sales"]["current"] == 2 and spaces["sales"]["sync"] == "InSyncWithWorkspace"
    assert spaces["hr"]["plaintext"] == 1 and spaces["hr"]["sync"] == "NotInSyncWithWorkspace"
    assert report["url"] == url and report["key"]["current_version"] == "1"

    result = run("verify", "blobs", "--storage-options", options, "--json")
    assert result.exit_code == 8  # the plaintext blob, nothing worse
    files = _by_name(result)
    assert files["a.bin"]["outcome"] == "ok" and files["plain.csv"]["outcome"] == "plaintext"

    path = f"{abfs_container}/store/sales/a.bin"
    data = bytearray(abfs.cat_file(path))
    data[header_length_from_prefix(bytes(data[:200])) + DEFAULT_SEGMENT_SIZE + 3] ^= 0x80
    abfs.pipe_file(path, bytes(data))
    result = run("verify", url, "--storage-options", options)
    assert result.exit_code == 6
    assert f"{path}: integrity failure" in result.stdout and "b.bin" not in result.stdout


def test_status_and_verify_with_a_key_vault_key(run, tmp_path, monkeypatch):
    audit = tmp_path / "audit.jsonl"
    with fake_key_vault() as vault:
        vault.create_key("tenant")
        assert run("keys", "list").exit_code == 0  # the embedded vault exists, and is not used here
        policy = load_policy()
        policy.default_key = vault.key_uri("tenant")
        policy.add("kv", str(tmp_path / "kv"))
        policy.save()
        (tmp_path / "kv" / "ws").mkdir(parents=True)
        writer = cmk_fs()
        writer.pipe_file(str(tmp_path / "kv" / "ws" / "a.bin"), os.urandom(5000))
        writer.pipe_file(str(tmp_path / "kv" / "ws" / "b.bin"), os.urandom(5000))
        new_version = vault.rotate("tenant")
        cmk_fs().pipe_file(str(tmp_path / "kv" / "ws" / "c.bin"), os.urandom(5000))  # a new instance: a new DEK

        report = as_json(run("status", "--json"))["stores"][0]
        assert report["key"]["current_version"] == new_version
        (ws,) = report["workspaces"]
        assert (ws["current"], ws["older_version"], ws["sync"]) == (1, 2, "NotInSyncWithWorkspace")

        monkeypatch.setenv("CMKFS_AUDIT_LOG", str(audit))
        result = run("verify", "kv", "--json")
        assert result.exit_code == 0, result.output
        assert {f["outcome"] for f in _by_name(result).values()} == {"ok"}
        unwraps = [json.loads(line) for line in audit.read_text().splitlines() if '"unwrap"' in line]
        assert len(unwraps) == 2  # two distinct key blocks (before and after the rotation), three files

        vault.disable("tenant")
        result = run("verify", "--json")
        assert result.exit_code == 4
        assert {f["outcome"] for f in _by_name(result).values()} == {"key_revoked"}
        vault.stop()
        result = run("status", "kv")
        assert result.exit_code == 5 and "could not be checked" in result.stderr
