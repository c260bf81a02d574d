"""``cmkfs clean``: only partial files of writers, and only those untouched for the grace period."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cmkfs.admin.clean import clean_partials
from cmkfs.cli.status import parse_duration
from cmkfs.format import DEFAULT_SEGMENT_SIZE, MAGIC
from tests.admin_helpers import PARTIAL, age, as_json, cli_runner, cmk_fs, make_store


@pytest.fixture
def run():
    return cli_runner()


@pytest.fixture
def store(run, tmp_path):
    return make_store(run, tmp_path)


def partials(directory) -> list[str]:
    return sorted(n for n in os.listdir(directory) if ".cmkfs-partial-" in n)


def test_clean_removes_only_old_partial_files(run, store):
    young = store.finance / ".young.bin.cmkfs-partial-00000000000000aa"
    young.write_bytes(MAGIC + b"x" * 10)  # a writer's temp file starts with the magic
    age(young, 3600)  # an hour: within the default day
    old_plain = store.raw / "plain.csv"
    age(old_plain, 30 * 86400)  # old, but not a partial file: never touched
    not_ours = store.raw / ".late.bin.cmkfs-partial-XYZ"  # not the writers' pattern
    not_ours.write_bytes(b"x")
    age(not_ours, 30 * 86400)

    dry = run("clean", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    actions = {os.path.basename(f["path"]): f["action"] for f in as_json(dry)["files"]}
    assert actions == {PARTIAL: "would_remove", young.name: "kept"}
    assert partials(store.raw) == [PARTIAL, not_ours.name]  # a dry run removes nothing
    assert f"would remove {store.raw / PARTIAL}" in run("clean", "--dry-run").stdout

    result = run("clean", "sales")
    assert result.exit_code == 0, result.output
    assert f"removed {store.raw / PARTIAL}" in result.stdout and "removed 1, kept 1, failed 0" in result.stdout
    assert partials(store.raw) == [not_ours.name] and partials(store.finance) == [young.name]
    assert old_plain.exists() and sorted(os.listdir(store.finance)) == sorted(
        ["old.bin", "new.bin", "other.bin", young.name]
    )

    result = run("clean", "--older-than", "30m", "--json")
    assert as_json(result)["summary"]["removed"] == 1 and partials(store.finance) == []


def test_a_live_writer_keeps_its_partial_file(run, store):
    """A writer in progress writes sealed segments to its partial file, so its mtime stays recent."""
    target = store.finance / "live.bin"
    data = os.urandom(3 * DEFAULT_SEGMENT_SIZE)
    with cmk_fs().open(str(target), "wb") as f:
        f.write(data[: 2 * DEFAULT_SEGMENT_SIZE + 1])
        (live,) = partials(store.finance)
        assert os.path.getsize(store.finance / live) > DEFAULT_SEGMENT_SIZE  # segments reach the disk
        result = run("clean", "--older-than", "60s", "--json")
        assert [f["action"] for f in as_json(result)["files"]] == ["kept", "removed"]  # its own; the old one
        assert partials(store.finance) == [live]
        f.write(data[2 * DEFAULT_SEGMENT_SIZE + 1 :])
    assert cmk_fs().cat_file(str(target)) == data


def test_a_stalled_writer_whose_file_was_removed_fails_loudly(store):
    target = store.finance / "stalled.bin"
    cmk_fs().pipe_file(str(target), b"before")
    f = cmk_fs().open(str(target), "wb")
    f.write(os.urandom(2 * DEFAULT_SEGMENT_SIZE))
    (stalled,) = partials(store.finance)
    age(store.finance / stalled, 2 * 86400)  # as if it had not written for two days
    assert [r.action for r in clean_partials(cmk_fs().fs, str(store.finance))] == ["removed"]
    with pytest.raises(OSError):
        f.close()  # publishes nothing
    assert cmk_fs().cat_file(str(target)) == b"before"


def test_durations():
    assert parse_duration("90") == 90 and parse_duration("90s") == 90 and parse_duration("30m") == 1800
    assert parse_duration("24h") == 86400 and parse_duration("1.5d") == 1.5 * 86400


def test_bad_duration_is_a_usage_error(run, store):
    result = run("clean", "--older-than", "soon")
    assert result.exit_code == 2 and "--older-than" in result.output


def test_clean_in_a_real_process(store):
    result = subprocess.run(
        [sys.executable, "-m", "cmkfs", "clean", "--json"], capture_output=True, text=True, env=dict(os.environ)
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["summary"]["removed"] == 1 and partials(store.raw) == []


def test_clean_keeps_a_plaintext_file_named_like_a_partial(run, store):
    named = store.finance / ".ledger.cmkfs-partial-0123456789abcdef"
    named.write_bytes(b"customer plaintext\n")
    age(named, 3 * 86400)
    real = store.finance / ".real.bin.cmkfs-partial-00000000000000bb"
    real.write_bytes(MAGIC + b"\x01rest")
    age(real, 3 * 86400)
    result = run("clean", str(store.finance))
    assert result.exit_code == 0, result.output
    assert named.read_bytes() == b"customer plaintext\n"
    assert not real.exists()
