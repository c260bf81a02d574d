"""``cmkfs encrypt`` and ``cmkfs decrypt``: in-place conversion (atomic, resumable, guarded) and safe exports,
through the CLI entry point on local disk and on Azurite."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.local import LocalFileSystem

from cmkfs.admin.convert import CHANGED, encrypt_file
from cmkfs.cli.output import EXIT_CONFIG, EXIT_OK
from cmkfs.filesystem import CMKFileSystem
from cmkfs.format import MAGIC
from cmkfs.policy import load_policy
from cmkfs.providers.local import LocalVaultProvider
from cmkfs.stream import read_header
from cmkfs.targets import open_range_source

SEGMENT = 64 * 1024


def cmk(key: str | None = None) -> CMKFileSystem:
    return CMKFileSystem(target_protocol="file", key=key, skip_instance_cache=True)


def contents(n: int, size: int) -> bytes:
    return (f"row {n}," * (size // 6 + 1)).encode()[:size]


def key_of(path: Path) -> str:
    source = open_range_source(LocalFileSystem(), str(path))
    try:
        return read_header(source).key_block.key_uri
    finally:
        source.close()


def make_store(root: Path, key: str) -> dict[Path, bytes]:
    """Plaintext files of boundary sizes, nested, and two files already encrypted."""
    sizes = [0, 1, SEGMENT - 1, SEGMENT + 1, 3 * 1024 * 1024 + 500]
    expected = {}
    for n, size in enumerate(sizes):
        path = root / ("ws1" if n % 2 else "ws2") / f"plain{n}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(contents(n, size))
        expected[path] = contents(n, size)
    fs = cmk(key)
    for n in (10, 11):
        path = root / "ws1" / f"enc{n}.bin"
        fs.pipe_file(str(path), contents(n, 5000))
        expected[path] = contents(n, 5000)
    return expected


def test_encrypt_a_directory_in_place(run, key, tmp_path):
    root = tmp_path / "store"
    expected = make_store(root, key)
    encrypted_before = {p: p.read_bytes() for p in expected if p.name.startswith("enc")}

    result = run("encrypt", root, "--json")
    assert result.exit_code == EXIT_OK, result.output
    report = json.loads(result.stdout)
    summary = report["summary"]
    assert summary["files"] == 7 and summary["encrypted"] == 5 and summary["already_encrypted"] == 2
    assert summary["changed"] == summary["failed"] == 0 and summary["key"] == key
    fs = cmk()
    for path, data in expected.items():
        assert path.read_bytes().startswith(MAGIC), path
        assert fs.cat_file(str(path)) == data
        assert key_of(path) == key
    for path, raw in encrypted_before.items():
        assert path.read_bytes() == raw  # skipped, not re-encrypted
    assert not [p for p in root.rglob("*") if ".cmkfs-partial-" in p.name]

    again = run("encrypt", root)
    assert again.exit_code == EXIT_OK
    assert again.stdout.startswith("encrypted 0, already encrypted 7, changed 0")


def test_dry_run_changes_nothing(run, key, tmp_path):
    root = tmp_path / "store"
    expected = make_store(root, key)
    before = {p: p.read_bytes() for p in expected}
    result = run("encrypt", root, "--dry-run", "--json")
    assert result.exit_code == EXIT_OK
    summary = json.loads(result.stdout)["summary"]
    assert summary["would_encrypt"] == 5 and summary["encrypted"] == 0 and summary["dry_run"] is True
    assert {p: p.read_bytes() for p in expected} == before


def test_a_capacity_is_encrypted_under_the_key_the_policy_gives_it(run, key, tmp_path):
    LocalVaultProvider().create("sales-key")
    root = tmp_path / "sales"
    (root / "ws").mkdir(parents=True)
    (root / "ws" / "a.csv").write_bytes(b"a,b\n1,2\n")
    assert run("capacity", "add", "sales", root).exit_code == EXIT_OK
    policy = load_policy()
    policy.mode = "byok"
    policy.assign("sales", "local://sales-key")
    policy.save()

    result = run("encrypt", "sales", "--json")
    assert result.exit_code == EXIT_OK, result.output
    assert json.loads(result.stdout)["summary"]["key"] == "local://sales-key"
    assert key_of(root / "ws" / "a.csv") == "local://sales-key"
    assert cmk().cat_file(str(root / "ws" / "a.csv")) == b"a,b\n1,2\n"


def test_a_key_that_contradicts_the_capacitys_is_refused_before_any_file_is_touched(run, key, tmp_path):
    LocalVaultProvider().create("sales-key")
    root = tmp_path / "sales"
    root.mkdir()
    (root / "a.csv").write_bytes(b"plain")
    assert run("capacity", "add", "sales", root).exit_code == EXIT_OK
    policy = load_policy()
    policy.mode = "byok"
    policy.assign("sales", "local://sales-key")
    policy.save()
    result = run("encrypt", "sales", "--key", "tenant")
    assert result.exit_code == EXIT_CONFIG and "sales-key" in result.stderr
    assert (root / "a.csv").read_bytes() == b"plain"


def test_without_a_key_nothing_is_touched(run, tmp_path):
    (tmp_path / "a.txt").write_bytes(b"plain")
    result = run("encrypt", tmp_path)
    assert result.exit_code == EXIT_CONFIG and "no key configured" in result.stderr
    assert (tmp_path / "a.txt").read_bytes() == b"plain"


class _AppendsWhileRead(LocalFileSystem):
    """A real concurrent writer: every time the file is opened for reading, a line is appended to it on disk."""

    def _open(self, path, mode="rb", **kwargs):
        f = super()._open(path, mode, **kwargs)
        if mode == "rb":
            with open(path, "ab") as other:
                other.write(b"late line\n")
        return f


def test_a_file_that_changes_while_it_is_encrypted_is_left_alone(key, tmp_path):
    path = tmp_path / "busy.log"
    path.write_bytes(b"first line\n" * 1000)
    fs = CMKFileSystem(fs=_AppendsWhileRead(), key=key, skip_instance_cache=True)
    result = encrypt_file(fs, str(path))
    assert result.outcome == CHANGED and not result.ok
    data = path.read_bytes()
    assert not data.startswith(MAGIC) and data.endswith(b"late line\n")  # the writer's bytes are not lost
    assert not [p for p in tmp_path.iterdir() if ".cmkfs-partial-" in p.name]


def test_a_killed_encrypt_leaves_every_file_readable_and_a_second_run_finishes(key, tmp_path, isolated_cmkfs_home):
    root = tmp_path / "store"
    expected = {}
    for n in range(300):
        path = root / f"ws{n % 3}" / f"f{n:03d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        expected[path] = contents(n, 200_000 + n)
        path.write_bytes(expected[path])
    env = {**os.environ, "CMKFS_HOME": str(isolated_cmkfs_home)}
    cmd = [sys.executable, "-m", "cmkfs", "encrypt", str(root), "--workers", "2"]

    def converted() -> int:
        n = 0
        for path in expected:
            with open(path, "rb") as f:
                n += f.read(len(MAGIC)) == MAGIC
        return n

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while converted() < 20 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    done = converted()
    assert proc.returncode == -signal.SIGKILL and 20 <= done < len(expected), (proc.returncode, done)

    fs = cmk()
    for path, data in expected.items():
        raw = path.read_bytes()
        assert raw == data or (raw.startswith(MAGIC) and fs.cat_file(str(path)) == data), path

    again = subprocess.run([*cmd, "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == EXIT_OK, again.stderr
    summary = json.loads(again.stdout)["summary"]
    assert summary["encrypted"] == len(expected) - done and summary["already_encrypted"] == done
    for path, data in expected.items():
        assert path.read_bytes().startswith(MAGIC) and fs.cat_file(str(path)) == data


# -- decrypt ------------------------------------------------------------------------------------


@pytest.fixture
def encrypted_tree(key, tmp_path):
    root = tmp_path / "enc"
    fs = cmk(key)
    expected = {}
    for rel, size in {"a.csv": 10, "ws/b.bin": SEGMENT + 3, "ws/deep/c.txt": 0}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        fs.pipe_file(str(root / rel), contents(len(rel), size))
        expected[rel] = contents(len(rel), size)
    return root, expected


@pytest.mark.parametrize("where", ["same", "inside", "holding", "file-in-source", "capacity"])
def test_decrypt_refuses_to_write_plaintext_over_or_beside_the_source(run, encrypted_tree, tmp_path, where):
    root, _ = encrypted_tree
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    src, dest = (
        root,
        {
            "same": root,
            "inside": root / "ws" / "out",
            "holding": tmp_path,
            "file-in-source": root / "a.csv",
            "capacity": tmp_path / "other" / "export",
        }[where],
    )
    if where == "file-in-source":
        src = root / "a.csv"
    if where == "capacity":
        (tmp_path / "other").mkdir()
        assert run("capacity", "add", "other", tmp_path / "other").exit_code == EXIT_OK
    result = run("decrypt", src, dest, "-r", "--force")
    assert result.exit_code == EXIT_CONFIG, result.output
    assert "overlaps the encrypted source" in result.stderr or "inside capacity other" in result.stderr
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
    assert not (tmp_path / "other" / "export").exists()


def test_decrypt_refuses_through_a_symbolic_link(run, encrypted_tree, tmp_path):
    root, _ = encrypted_tree
    (tmp_path / "link").symlink_to(root)
    result = run("decrypt", root, tmp_path / "link" / "out", "-r")
    assert result.exit_code == EXIT_CONFIG and "overlaps" in result.stderr


def test_decrypt_exports_a_tree(run, encrypted_tree, tmp_path):
    root, expected = encrypted_tree
    out = tmp_path / "export"
    result = run("decrypt", root, out)
    assert result.exit_code != EXIT_OK and "--recursive" in result.stderr and not out.exists()

    result = run("decrypt", root, out, "-r", "--json")
    assert result.exit_code == EXIT_OK, result.output
    assert json.loads(result.stdout)["summary"] == {"files": 3, "decrypted": 3}
    assert {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()} == expected

    (out / "a.csv").write_bytes(b"mine")
    result = run("decrypt", root, out, "-r")
    assert result.exit_code != EXIT_OK and "exists" in result.stderr
    assert (out / "a.csv").read_bytes() == b"mine"
    assert run("decrypt", root, out, "-r", "--force").exit_code == EXIT_OK
    assert (out / "a.csv").read_bytes() == expected["a.csv"]


def test_decrypt_a_tampered_file_leaves_no_output(run, encrypted_tree, tmp_path):
    root, _ = encrypted_tree
    raw = bytearray((root / "ws" / "b.bin").read_bytes())
    raw[-5] ^= 1
    (root / "ws" / "b.bin").write_bytes(bytes(raw))
    out = tmp_path / "export"
    result = run("decrypt", root, out, "-r")
    assert result.exit_code == 6, result.output
    assert "b.bin" in result.stderr and ".cmkfs-partial-" not in result.stderr
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["a.csv", "c.txt"]


# -- Azure Blob (Azurite) ---------------------------------------------------------------------------


@pytest.mark.azurite
def test_encrypt_and_decrypt_on_azure_blob(run, key, azurite, abfs, abfs_container, tmp_path):
    options = json.dumps({"abfs": azurite.storage_options})
    plain = {f"{abfs_container}/sales/ws{n % 2}/f{n}.csv": contents(n, 1000 * n) for n in range(6)}
    for path, data in plain.items():
        abfs.pipe_file(path, data)
    enc = f"{abfs_container}/sales/ws0/already.bin"
    fsspec.filesystem("cmk", fs=abfs, key=key, skip_instance_cache=True).pipe_file(enc, b"already")
    raw_before = abfs.cat_file(enc)

    url = f"abfs://{abfs_container}/sales"
    result = run("encrypt", url, "--storage-options", options, "--json")
    assert result.exit_code == EXIT_OK, result.output
    summary = json.loads(result.stdout)["summary"]
    assert summary["encrypted"] == 6 and summary["already_encrypted"] == 1
    abfs.invalidate_cache()
    cfs = fsspec.filesystem("cmk", fs=abfs, skip_instance_cache=True)
    for path, data in plain.items():
        assert abfs.cat_file(path)[: len(MAGIC)] == MAGIC
        assert cfs.cat_file(path) == data
    assert abfs.cat_file(enc) == raw_before

    listing = json.loads(run("ls", f"cmk::{url}/ws1", "--storage-options", options, "--json").stdout)
    assert {(e["name"].rsplit("/", 1)[-1], e["size"], e["encrypted"]) for e in listing} == {
        (f"f{n}.csv", 1000 * n, True) for n in (1, 3, 5)
    }

    out = tmp_path / "export"
    result = run("decrypt", url, out, "-r", "--storage-options", options)
    assert result.exit_code == EXIT_OK, result.output
    for path, data in plain.items():
        assert (out / path.split("/sales/", 1)[1]).read_bytes() == data
    assert (out / "ws0" / "already.bin").read_bytes() == b"already"


# -- review fixes: links below DEST, symlinked folders, hard links, partial-named files -------------------------


@pytest.mark.parametrize("into", ["capacity", "source"])
def test_decrypt_writes_nothing_through_a_symbolic_link_below_dest(run, encrypted_tree, tmp_path, into):
    root, _ = encrypted_tree
    target = tmp_path / "hr"
    target.mkdir()
    assert run("capacity", "add", "hr", target).exit_code == EXIT_OK
    out = tmp_path / "out"
    out.mkdir()
    # A folder below DEST named like the source's ws/, leading into a capacity or back onto the source.
    (out / "ws").symlink_to(target if into == "capacity" else root / "ws")
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}

    result = run("decrypt", root, out, "-r", "--force", "--json")
    assert result.exit_code == EXIT_CONFIG, result.output
    assert f"{out / 'ws'} is a symbolic link" in result.stderr
    assert sorted(os.listdir(target)) == []
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
    refused = {r["path"] for r in json.loads(result.stdout)["files"] if r["error"]}
    assert refused == {str(root / "ws" / "b.bin"), str(root / "ws" / "deep" / "c.txt")}
    assert (out / "a.csv").is_file()  # the safe file still went out


def test_get_refuses_a_destination_that_is_a_symbolic_link(run, encrypted_tree, tmp_path):
    root, _ = encrypted_tree
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    (out / "a.csv").symlink_to(victim)
    result = run("get", root / "a.csv", out, "--force")
    assert result.exit_code == EXIT_CONFIG, result.output
    assert (out / "a.csv").is_symlink() and victim.read_text() == "keep"


def test_encrypt_skips_a_symbolic_link_to_a_folder(run, key, tmp_path):
    root = tmp_path / "data"
    (root / "ws").mkdir(parents=True)
    (root / "ws" / "a.csv").write_bytes(b"a\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / "ws" / "link").symlink_to(elsewhere)
    result = run("encrypt", root, "--json")
    assert result.exit_code == EXIT_OK, result.output
    summary = json.loads(result.stdout)["summary"]
    assert summary["skipped_symlink"] == 1 and summary["failed"] == 0 and summary["encrypted"] == 1


def test_encrypt_warns_that_other_hard_links_still_hold_plaintext(run, key, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "h.csv").write_bytes(b"hard\n")
    outside = tmp_path / "h-link.csv"
    os.link(root / "h.csv", outside)
    result = run("encrypt", root, "--json")
    assert result.exit_code == EXIT_OK, result.output
    doc = json.loads(result.stdout)
    assert [f["outcome"] for f in doc["files"]] == ["encrypted_other_links_plaintext"]
    assert "other hard links" in result.stderr and "h.csv" in result.stderr
    assert outside.read_bytes() == b"hard\n"  # the warning's point
    assert key_of(root / "h.csv") == key


def test_a_plaintext_file_named_like_a_partial_is_not_hidden_from_encrypt(run, key, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    named = root / ".ledger.cmkfs-partial-0123456789abcdef"
    named.write_bytes(b"customer plaintext\n")
    result = run("encrypt", root, "--json")
    # Refused, not hidden: once encrypted it could not be told from a killed writer's temp file.
    assert result.exit_code == EXIT_CONFIG, result.output
    assert "named like a writer's temp file" in result.stderr
    assert named.read_bytes() == b"customer plaintext\n"
