"""``cmkfs ls | cat | get | put | cp``: round trips through the CLI entry point, on local disk and on Azurite."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys

import fsspec
import pytest

from cmkfs.cli.output import EXIT_CONFIG, EXIT_FORMAT, EXIT_OK
from cmkfs.filesystem import CMKFileSystem
from cmkfs.format import MAGIC
from cmkfs.providers.local import LocalVaultProvider

SEGMENT = 64 * 1024


@pytest.fixture
def tree(tmp_path):
    src = tmp_path / "plain"
    files = {"a.txt": b"hello\n", "sub/b.bin": os.urandom(SEGMENT + 7), "sub/deeper/c.csv": b""}
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    return src, files


def test_put_ls_cat_get_round_trip(run, key, tmp_path):
    plain = tmp_path / "report.csv"
    plain.write_bytes(b"a,b\n" * 1000)
    store = tmp_path / "store"
    store.mkdir()
    result = run("put", plain, f"cmk::file://{store}/")
    assert result.exit_code == EXIT_OK, result.output
    stored = store / "report.csv"
    assert stored.read_bytes().startswith(MAGIC) and b"a,b" not in stored.read_bytes()

    (store / "notes.txt").write_bytes(b"not encrypted")
    listing = json.loads(run("ls", store, "--json").stdout)
    assert [(os.path.basename(e["name"]), e["size"], e["encrypted"]) for e in listing] == [
        ("notes.txt", 13, False),
        ("report.csv", 4000, True),
    ]
    lines = run("ls", store).stdout.splitlines()
    assert "PLAINTEXT" in lines[0] and "encrypted" in lines[1] and "4000" in lines[1]

    result = run("cat", f"cmk::file://{stored}")
    assert result.exit_code == EXIT_OK and result.stdout_bytes == b"a,b\n" * 1000
    result = run("cat", store / "notes.txt")
    assert result.exit_code == EXIT_FORMAT and "not a cmkfs encrypted file" in result.stderr

    out = tmp_path / "back.csv"
    assert run("get", stored, out).exit_code == EXIT_OK
    assert out.read_bytes() == plain.read_bytes()


def test_trees_round_trip_and_cp_re_encrypts_under_the_destination_key(run, key, tree, tmp_path):
    src, files = tree
    store = tmp_path / "store"
    result = run("put", src, store)
    assert result.exit_code != EXIT_OK and "--recursive" in result.stderr
    result = run("put", src, store, "-r", "--json")
    assert result.exit_code == EXIT_OK, result.output
    assert json.loads(result.stdout)["summary"] == {"files": 3, "encrypted": 3}

    LocalVaultProvider().create("other")
    copy = tmp_path / "copy"
    result = run("cp", store, copy, "-r", "--key", "other")
    assert result.exit_code == EXIT_OK, result.output
    fs = CMKFileSystem(target_protocol="file", skip_instance_cache=True)
    for rel, data in files.items():
        assert fs.cat_file(str(copy / rel)) == data
        assert (copy / rel).read_bytes().startswith(MAGIC)
        # Re-encrypted: the copy names the other key (its key block differs from the original's).
        assert b"local://other" in (copy / rel).read_bytes()[:512]

    out = tmp_path / "out"
    assert run("get", copy, out, "-r").exit_code == EXIT_OK
    assert {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()} == files
    result = run("get", copy, out, "-r")  # existing files are kept
    assert result.exit_code != EXIT_OK and "exists" in result.stderr


def test_get_refuses_to_decrypt_into_the_source(run, key, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    CMKFileSystem(target_protocol="file", key=key, skip_instance_cache=True).pipe_file(str(store / "f"), b"secret")
    result = run("get", store / "f", store / "f.plain")
    assert result.exit_code == EXIT_CONFIG and "overlaps" in result.stderr
    assert not (store / "f.plain").exists()


def test_cp_onto_itself_is_refused(run, key, tmp_path):
    fs = CMKFileSystem(target_protocol="file", key=key, skip_instance_cache=True)
    fs.pipe_file(str(tmp_path / "f"), b"data")
    result = run("cp", tmp_path / "f", tmp_path / "f")
    assert result.exit_code == EXIT_CONFIG and "same file" in result.stderr
    assert fs.cat_file(str(tmp_path / "f")) == b"data"


def _cat_on_a_terminal(path, *extra):
    """``python -m cmkfs cat`` with stdout on a pseudo-terminal: (exit code, what the terminal got, stderr)."""
    primary, secondary = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "cmkfs", "cat", str(path), *extra],
            stdout=secondary,
            stderr=subprocess.PIPE,
            timeout=60,
        )
        os.close(secondary)
        secondary = -1
        shown = b""
        while True:
            try:
                data = os.read(primary, 65536)
            except OSError:  # EIO: the terminal is closed and drained
                break
            if not data:
                break
            shown += data
        return proc.returncode, shown, proc.stderr.decode()
    finally:
        os.close(primary)
        if secondary != -1:
            os.close(secondary)


def test_cat_writes_only_text_to_a_terminal_unless_forced(key, tmp_path):
    fs = CMKFileSystem(target_protocol="file", key=key, skip_instance_cache=True)
    fs.pipe_file(str(tmp_path / "text.txt"), "naïve text\n".encode())
    fs.pipe_file(str(tmp_path / "evil.txt"), b"look \x1b]0;owned\x07 here\n")

    code, shown, err = _cat_on_a_terminal(tmp_path / "text.txt")
    assert code == EXIT_OK and "naïve text".encode() in shown, err
    code, shown, err = _cat_on_a_terminal(tmp_path / "evil.txt")
    assert code == 1 and b"\x1b" not in shown and "not plain text" in err and "--force" in err
    code, shown, err = _cat_on_a_terminal(tmp_path / "evil.txt", "--force")
    assert code == EXIT_OK and b"\x1b]0;owned" in shown


@pytest.mark.azurite
def test_file_commands_on_azure_blob(run, key, azurite, abfs, abfs_container, tree, tmp_path):
    src, files = tree
    options = ["--storage-options", json.dumps({"abfs": azurite.storage_options})]
    url = f"abfs://{abfs_container}/data"
    result = run("put", src, url, "-r", *options)
    assert result.exit_code == EXIT_OK, result.output
    assert abfs.cat_file(f"{abfs_container}/data/a.txt")[: len(MAGIC)] == MAGIC

    listing = json.loads(run("ls", f"cmk::{url}/sub", *options, "--json").stdout)
    assert {(e["name"].rsplit("/", 1)[-1], e["type"], e["size"]) for e in listing} == {
        ("b.bin", "file", SEGMENT + 7),
        ("deeper", "directory", None),
    }
    result = run("cat", f"{url}/a.txt", *options)
    assert result.exit_code == EXIT_OK and result.stdout_bytes == b"hello\n"

    result = run("cp", url, f"abfs://{abfs_container}/copy", "-r", *options)
    assert result.exit_code == EXIT_OK, result.output
    out = tmp_path / "out"
    result = run("get", f"abfs://{abfs_container}/copy", out, "-r", *options)
    assert result.exit_code == EXIT_OK, result.output
    assert {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()} == files
    cfs = fsspec.filesystem("cmk", fs=abfs, skip_instance_cache=True)
    assert cfs.cat_file(f"{abfs_container}/copy/sub/b.bin") == files["sub/b.bin"]
