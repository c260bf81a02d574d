"""``cmkfs verify``: every byte authenticated; each failure named by path and reason, with the right exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cmkfs.format import DEFAULT_SEGMENT_SIZE, MAGIC
from tests.admin_helpers import PARTIAL, cli_runner, cmk_fs, flip, header_length, make_store


@pytest.fixture
def run():
    return cli_runner()


@pytest.fixture
def store(run, tmp_path):
    return make_store(run, tmp_path)


@pytest.fixture
def sound(run, tmp_path):
    """Capacity ``ledger`` with three sound files (two workspaces), all written by one filesystem."""
    root = tmp_path / "ledger"
    assert run("keys", "create", "ledger", "--default").exit_code == 0
    assert run("capacity", "add", "ledger", str(root)).exit_code == 0
    for name in ("q1", "q2"):
        (root / name).mkdir(parents=True)
    fs = cmk_fs()
    fs.pipe_file(str(root / "q1" / "big.bin"), os.urandom(3 * DEFAULT_SEGMENT_SIZE + 500))
    fs.pipe_file(str(root / "q1" / "other.bin"), os.urandom(3 * DEFAULT_SEGMENT_SIZE + 500))
    fs.pipe_file(str(root / "q2" / "small.csv"), b"a,b\n1,2\n")
    return root


def results(result) -> dict[str, dict]:
    return {os.path.basename(f["path"]): f for f in json.loads(result.stdout)["files"]}


def test_sound_files_verify_with_one_vault_call_per_key_block(run, sound, tmp_path, monkeypatch):
    audit = tmp_path / "audit.jsonl"
    monkeypatch.setenv("CMKFS_AUDIT_LOG", str(audit))
    result = run("verify", "--json")
    assert result.exit_code == 0, result.output
    files = results(result)
    assert set(files) == {"big.bin", "other.bin", "small.csv"}
    assert all(f["outcome"] == "ok" and f["reason"] is None for f in files.values())
    assert files["big.bin"]["plaintext_bytes"] == 3 * DEFAULT_SEGMENT_SIZE + 500
    assert files["small.csv"]["key_uri"] == "local://ledger"
    # The three files share one data key (one writer within the TTL): one unwrap for the whole walk.
    unwraps = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(u["op"], u["outcome"]) for u in unwraps] == [("unwrap", "ok")]
    text = run("verify", "ledger")
    assert text.exit_code == 0 and text.stdout == "verified 3 file(s): 3 ok, 0 failed\n"


def test_flipped_truncated_and_spliced_files_are_named_exit_6(run, sound):
    big, other, small = sound / "q1" / "big.bin", sound / "q1" / "other.bin", sound / "q2" / "small.csv"
    flip(big, header_length(big) + DEFAULT_SEGMENT_SIZE + 100)  # one payload byte, second segment
    data = other.read_bytes()
    other.write_bytes(data[: len(data) - DEFAULT_SEGMENT_SIZE // 2])  # cut short mid-segment
    victim = sound / "q2" / "victim.bin"
    cmk_fs().pipe_file(str(victim), b"x" * len(b"a,b\n1,2\n"))
    spliced = small.read_bytes()[: header_length(small)] + victim.read_bytes()[header_length(victim) :]
    victim.write_bytes(spliced)  # another file's header on this file's segments

    result = run("verify", "--json")
    assert result.exit_code == 6
    files = results(result)
    assert files["big.bin"]["outcome"] == "integrity" and files["big.bin"]["ok"] is False
    assert files["other.bin"]["outcome"] == "integrity"
    assert files["victim.bin"]["outcome"] == "integrity"
    assert files["small.csv"]["outcome"] == "ok"
    assert json.loads(result.stdout)["summary"] == {
        "files": 4,
        "ok": 1,
        "failed": 3,
        "by_outcome": {"integrity": 3},
    }
    text = run("verify")
    assert text.exit_code == 6
    for path in (big, other, victim):
        assert f"{path}: integrity failure: encrypted file failed authentication" in text.stdout
    assert str(small) not in text.stdout
    assert "3 of 4 file(s) failed verification" in text.stderr and "Traceback" not in text.stderr


def test_a_size_no_writer_makes_is_named_truncated(run, sound):
    big = sound / "q1" / "big.bin"
    seg_ct = DEFAULT_SEGMENT_SIZE + 16
    big.write_bytes(big.read_bytes()[: header_length(big) + seg_ct + 5])  # a final segment shorter than a tag
    files = results(run("verify", "--json"))
    assert files["big.bin"]["outcome"] == "truncated"


def test_plaintext_in_a_capacity_exits_8_and_integrity_wins_over_it(run, sound):
    (sound / "q2" / "leak.csv").write_text("name,salary\n")
    result = run("verify")
    assert result.exit_code == 8
    assert f"{sound / 'q2' / 'leak.csv'}: plaintext (not encrypted)" in result.stdout
    foreign = sound / "q2" / "future.bin"
    foreign.write_bytes(MAGIC + bytes([9, 1]) + os.urandom(200))  # a format version from the future
    files = results(run("verify", "--json"))
    assert files["future.bin"]["outcome"] == "foreign" and files["leak.csv"]["outcome"] == "plaintext"
    big = sound / "q1" / "big.bin"
    flip(big, header_length(big) + 10)
    assert run("verify").exit_code == 6


def test_damaged_header_and_partial_files(run, store):
    """The mixed store: the damaged header is an integrity failure, the partial file is not verified."""
    result = run("verify", "sales", "--json")
    assert result.exit_code == 6
    files = results(result)
    assert files["damaged.bin"]["outcome"] == "integrity" and "damaged header" in files["damaged.bin"]["reason"]
    assert files["plain.csv"]["outcome"] == "plaintext"
    assert {files[n]["outcome"] for n in ("old.bin", "new.bin", "other.bin")} == {"ok"}
    assert not any("cmkfs-partial" in name for name in files)


def test_a_revoked_key_is_named_exit_4(run, sound):
    assert run("keys", "disable", "ledger").exit_code == 0
    result = run("verify", "--json")
    assert result.exit_code == 4
    assert {f["outcome"] for f in results(result).values()} == {"key_revoked"}


def test_verify_a_url_and_a_missing_one(run, sound, tmp_path):
    result = run("verify", str(sound / "q2"), "--json")
    assert result.exit_code == 0 and set(results(result)) == {"small.csv"}
    result = run("verify", str(tmp_path / "nope"))
    assert result.exit_code == 1 and str(tmp_path / "nope") in result.stderr


def test_verify_in_a_real_process(sound):
    flip(sound / "q1" / "big.bin", header_length(sound / "q1" / "big.bin") + 1)
    result = subprocess.run(
        [sys.executable, "-m", "cmkfs", "verify"], capture_output=True, text=True, env=dict(os.environ), timeout=120
    )
    assert result.returncode == 6
    assert "big.bin: integrity failure" in result.stdout
    assert result.stderr == "cmkfs: error: 1 of 3 file(s) failed verification\n"


def test_a_plaintext_file_named_like_a_partial_is_verified(run, store):
    named = store.finance / ".ledger.cmkfs-partial-0123456789abcdef"
    named.write_bytes(b"customer plaintext\n")
    result = run("verify", "sales", "--json")
    files = results(result)
    assert files[named.name]["outcome"] == "plaintext"
    assert PARTIAL not in files  # a real temp file (the magic, then ciphertext) is still skipped
