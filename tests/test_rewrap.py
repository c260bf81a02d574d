"""Re-wrap (key rotation and migration) against the real embedded vault, local
files, fsspec's memory filesystem and Azure Blob on Azurite: only the key
block changes, the segments stay byte-identical, and a refused or failed
re-wrap leaves the file exactly as it was."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys

import fsspec
import pytest
from click.testing import CliRunner
from fsspec.implementations.local import LocalFileSystem

from cmkfs import rewrap as rewrap_module
from cmkfs.cli import cli
from cmkfs.cli.output import EXIT_FORMAT, EXIT_INTEGRITY, EXIT_REVOKED
from cmkfs.errors import FormatError, IntegrityError, KeyNotFoundError, KeyRevokedError
from cmkfs.filesystem import CMKFileSystem
from cmkfs.format import Header
from cmkfs.providers.local import LocalVaultProvider
from cmkfs.rewrap import RewrapResult, rewrap_file, rewrap_tree
from cmkfs.stream import BytesSource, read_header
from cmkfs.targets import PARTIAL_MARKER, CatFileSource, is_partial_name, register_target

SEG = 4096
SIZES = [0, 1, SEG - 1, SEG, SEG + 1, 3 * SEG + 500]


def payload(n: int, seed: int = 0) -> bytes:
    return bytes((i * 31 + seed) % 251 for i in range(n))


@pytest.fixture
def vault(isolated_cmkfs_home):
    provider = LocalVaultProvider()
    provider.create("k")
    return provider


def new_fs(**kwargs) -> CMKFileSystem:
    """A new instance, so a new key cache: nothing unwrapped before."""
    kwargs.setdefault("key", "local://k")
    kwargs.setdefault("segment_size", SEG)
    if "fs" not in kwargs:
        kwargs.setdefault("target_protocol", "file")
    return CMKFileSystem(skip_instance_cache=True, **kwargs)


def split(blob: bytes) -> tuple[Header, bytes]:
    header = read_header(BytesSource(blob))
    return header, blob[header.length :]


def raw(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def write_files(fs, root, sizes=SIZES) -> dict[str, bytes]:
    files = {}
    fs.makedirs(root, exist_ok=True)
    for i, n in enumerate(sizes):
        path = f"{root}/f{n}.bin"
        files[path] = payload(n, i)
        fs.pipe_file(path, files[path])
    return files


# -- local files --------------------------------------------------------------------


def test_rotate_rewrap_keeps_segments_and_survives_destroying_the_old_version(vault, tmp_path):
    fs = new_fs()
    root = str(tmp_path / "store")
    files = write_files(fs, root)
    fs.pipe_file(f"{root}/left-behind.bin", b"not re-wrapped")
    before = {p: raw(p) for p in files}
    assert vault.rotate("k") == "2"

    for path, plain in files.items():
        result = fs.rewrap(path)
        assert isinstance(result, RewrapResult)
        assert (result.old_key_uri, result.old_version, result.new_key_uri, result.new_version) == (
            "local://k",
            "1",
            "local://k",
            "2",
        )
        assert result.changed and not result.dry_run and result.error is None
        after = raw(path)
        assert result.bytes_written == len(after)
        old_header, old_payload = split(before[path])
        new_header, new_payload = split(after)
        assert new_header.key_block.key_version == "2"
        assert new_header.params == old_header.params and new_header.commitment == old_header.commitment
        assert new_payload == old_payload  # the segments, byte for byte
        assert fs.cat_file(path) == plain

    vault.destroy("k", version="1")
    reader = new_fs()  # a new process's view: no cached data keys
    for path, plain in files.items():
        assert reader.cat_file(path) == plain
    with pytest.raises((KeyRevokedError, KeyNotFoundError)):
        reader.cat_file(f"{root}/left-behind.bin")
    assert not [n for n in os.listdir(root) if is_partial_name(n)]


def test_migration_to_another_key(vault, tmp_path):
    vault.create("other")
    vault.rotate("other")
    fs = new_fs()
    path = str(tmp_path / "m.bin")
    data = payload(2 * SEG + 7)
    fs.pipe_file(path, data)
    old_payload = split(raw(path))[1]

    result = fs.rewrap(path, key="local://other")
    assert (result.old_key_uri, result.old_version, result.new_key_uri, result.new_version) == (
        "local://k",
        "1",
        "local://other",
        "2",
    )
    header, new_payload = split(raw(path))
    assert header.key_block.key_uri == "local://other" and new_payload == old_payload

    vault.destroy("k")  # the whole old key: the migrated file does not need it
    assert new_fs().cat_file(path) == data
    # A versioned URI pins the version that wraps, and counts as current.
    again = rewrap_file(new_fs(), path, key="local://other?version=1")
    assert again.changed and again.new_version == "1"
    assert split(raw(path))[0].key_block.key_version == "1"
    assert new_fs().cat_file(path) == data


def test_current_files_are_not_rewritten(vault, tmp_path):
    fs = new_fs()
    path = str(tmp_path / "c.bin")
    fs.pipe_file(path, payload(5000))
    stat, content = os.stat(path), raw(path)
    result = fs.rewrap(path)
    assert not result.changed and result.bytes_written == 0
    assert (result.old_version, result.new_version) == ("1", "1")
    assert os.stat(path).st_mtime_ns == stat.st_mtime_ns and os.stat(path).st_ino == stat.st_ino
    assert raw(path) == content
    vault.rotate("k")
    assert fs.rewrap(path).changed
    stat, content = os.stat(path), raw(path)
    assert not fs.rewrap(path).changed  # the second run finds it current
    assert os.stat(path).st_mtime_ns == stat.st_mtime_ns and raw(path) == content


def test_dry_run_changes_nothing(vault, tmp_path):
    fs = new_fs()
    root = str(tmp_path / "d")
    files = write_files(fs, root, [0, SEG + 1])
    vault.rotate("k")
    stats = {p: (os.stat(p).st_mtime_ns, raw(p)) for p in files}
    results = fs.rewrap(root, recursive=True, dry_run=True)
    assert [r.changed for r in results] == [True, True] and all(r.dry_run and r.bytes_written == 0 for r in results)
    assert all(r.new_version == "2" for r in results)
    assert {p: (os.stat(p).st_mtime_ns, raw(p)) for p in files} == stats


def _recheck(header_bytes: bytearray) -> bytes:
    body = bytes(header_bytes[:-16])
    return body + hashlib.sha256(body).digest()[:16]


@pytest.mark.parametrize(
    "edit", ["commitment-with-checksum", "key-block-without-checksum", "wrapped-dek-with-checksum"]
)
def test_tampered_header_is_refused_and_the_file_left_alone(vault, tmp_path, edit):
    fs = new_fs()
    path = str(tmp_path / "t.bin")
    fs.pipe_file(path, payload(SEG + 3))
    vault.rotate("k")
    blob = bytearray(raw(path))
    length = read_header(BytesSource(bytes(blob))).length
    if edit == "commitment-with-checksum":
        blob[60] ^= 1
        blob[:length] = _recheck(blob[:length])
    elif edit == "key-block-without-checksum":
        blob[100] ^= 1
    else:
        blob[length - 20] ^= 1  # inside the wrapped DEK's tag
        blob[:length] = _recheck(blob[:length])
    with open(path, "wb") as f:
        f.write(blob)
    stat = os.stat(path)
    with pytest.raises(IntegrityError):
        new_fs().rewrap(path)
    assert raw(path) == bytes(blob) and os.stat(path).st_mtime_ns == stat.st_mtime_ns
    assert not [n for n in os.listdir(tmp_path) if is_partial_name(n)]


def test_foreign_files_are_refused(vault, tmp_path):
    fs = new_fs()
    for name, content in (("plain.txt", b"hello, world\n" * 20), ("empty", b"")):
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(FormatError):
            fs.rewrap(str(path))
        assert path.read_bytes() == content


def test_disabled_keys_refuse_rewrap(vault, tmp_path):
    vault.create("other")
    fs = new_fs()
    path = str(tmp_path / "r.bin")
    data = payload(3 * SEG)
    fs.pipe_file(path, data)
    vault.rotate("k")
    content = raw(path)

    vault.disable("k")
    with pytest.raises(KeyRevokedError):
        fs.rewrap(path)  # the target key is disabled
    with pytest.raises(KeyRevokedError):
        new_fs().rewrap(path, key="local://other")  # the file's own key is disabled: no unwrap
    assert raw(path) == content

    vault.enable("k")
    vault.disable("other")
    with pytest.raises(KeyRevokedError):
        new_fs().rewrap(path, key="local://other")
    assert raw(path) == content
    assert new_fs().rewrap(path).new_version == "2"
    assert new_fs().cat_file(path) == data


def test_a_missing_key_is_refused_before_anything_is_read(vault, tmp_path):
    fs = new_fs()
    path = str(tmp_path / "x.bin")
    fs.pipe_file(path, b"x")
    with pytest.raises(KeyNotFoundError):
        fs.rewrap(path, key="local://nope")


# -- failures part-way ---------------------------------------------------------------


class FailingLocalFileSystem(LocalFileSystem):
    """The real local filesystem, whose ranged reads fail (or let a writer
    replace the file) once ``budget`` bytes have been served."""

    protocol = ("cmkfs-test-failing",)
    budget = None
    on_exhausted = "fail"

    def cat_file(self, path, start=None, end=None, **kwargs):
        data = super().cat_file(path, start=start, end=end, **kwargs)
        if self.budget is not None:
            if self.budget < len(data):
                if self.on_exhausted == "fail":
                    raise OSError("injected read failure part-way through the copy")
                self.on_exhausted(path)
                self.budget = None
            else:
                self.budget -= len(data)
        return data


register_target(
    FailingLocalFileSystem.protocol, source_factory=lambda fs, path, size=None: CatFileSource(fs, path, size)
)


def test_a_failure_mid_copy_leaves_the_original_intact(vault, tmp_path, monkeypatch):
    monkeypatch.setattr(rewrap_module, "COPY_CHUNK", SEG)  # many chunks, so the sink has written some
    target = FailingLocalFileSystem(skip_instance_cache=True)
    fs = new_fs(fs=target)
    path = str(tmp_path / "big.bin")
    data = payload(10 * SEG + 11)
    fs.pipe_file(path, data)
    vault.rotate("k")
    content = raw(path)

    target.budget = 4096 + 3 * SEG  # the header probe, then three payload chunks
    with pytest.raises(OSError, match="injected"):
        fs.rewrap(path)
    assert raw(path) == content
    assert not [n for n in os.listdir(tmp_path) if PARTIAL_MARKER in n]
    assert new_fs().cat_file(path) == data

    target.budget = None
    assert fs.rewrap(path).new_version == "2"
    assert new_fs().cat_file(path) == data


@pytest.mark.parametrize("newer_size", [100, 10 * SEG])  # shorter: reads fail; longer: reads succeed, mixed
def test_a_file_replaced_during_the_copy_is_not_overwritten(vault, tmp_path, monkeypatch, newer_size):
    monkeypatch.setattr(rewrap_module, "COPY_CHUNK", SEG)
    target = FailingLocalFileSystem(skip_instance_cache=True)
    fs = new_fs(fs=target)
    path = str(tmp_path / "busy.bin")
    fs.pipe_file(path, payload(6 * SEG))
    vault.rotate("k")
    newer = payload(newer_size, seed=9)

    def concurrent_writer(_path):
        new_fs().pipe_file(path, newer)  # a real atomic write by another writer

    target.budget = 4096 + 2 * SEG
    target.on_exhausted = concurrent_writer
    with pytest.raises(OSError, match="changed while it was being re-wrapped"):
        fs.rewrap(path)
    assert new_fs().cat_file(path) == newer
    assert not [n for n in os.listdir(tmp_path) if PARTIAL_MARKER in n]


# -- trees -----------------------------------------------------------------------------


def test_tree_skips_partial_files_and_reports_errors(vault, tmp_path):
    fs = new_fs()
    root = tmp_path / "tree"
    files = write_files(fs, str(root / "a"), [0, 10])
    files.update(write_files(fs, str(root / "a" / "b"), [SEG + 1]))
    (root / "plain.csv").write_bytes(b"a,b\n1,2\n")
    partial = root / "a" / f".f0.bin{PARTIAL_MARKER}0123456789abcdef"
    partial.write_bytes(b"in progress")
    vault.rotate("k")

    results = list(rewrap_tree(fs, str(root)))
    by_path = {r.path: r for r in results}
    assert str(partial) not in by_path and partial.read_bytes() == b"in progress"
    assert isinstance(by_path[str(root / "plain.csv")].error, FormatError)
    for path, plain in files.items():
        assert by_path[path].changed and by_path[path].new_version == "2"
        assert new_fs().cat_file(path) == plain
    assert len(results) == len(files) + 1
    assert [r.path for r in results] == sorted(by_path)
    with pytest.raises(FileNotFoundError):
        list(rewrap_tree(fs, str(root / "missing")))


# -- memory target ---------------------------------------------------------------


def test_memory_target(vault):
    mem = fsspec.filesystem("memory")
    mem.store.clear()
    try:
        fs = new_fs(target_protocol="memory")
        files = write_files(fs, "/rewrap", [0, SEG, 2 * SEG + 500])
        before = {p: mem.cat_file(p) for p in files}
        vault.rotate("k")
        results = fs.rewrap("/rewrap", recursive=True)
        assert all(r.changed and r.new_version == "2" for r in results) and len(results) == len(files)
        for path in files:
            assert split(mem.cat_file(path))[1] == split(before[path])[1]
        vault.destroy("k", version="1")
        reader = new_fs(target_protocol="memory")
        assert all(reader.cat_file(p) == plain for p, plain in files.items())
    finally:
        mem.store.clear()


# -- Azure Blob (Azurite) ------------------------------------------------------------


@pytest.mark.azurite
@pytest.mark.timeout(120)
def test_azure_blob_rewrap_updates_metadata(vault, abfs, abfs_container, azurite):
    from cmkfs.targets.azure import blob_metadata

    fs = new_fs(fs=abfs)
    files: dict[str, bytes] = {}
    for i, n in enumerate([0, SEG + 1, 40 * SEG]):
        path = f"{abfs_container}/dir/f{n}.bin"
        files[path] = payload(n, i)
        fs.pipe_file(path, files[path], metadata={"origin": "unit test"})
    odd = f"{abfs_container}/dir/f0.bin"
    with azurite.service_client() as client:  # metadata written by another tool, unencoded
        blob = client.get_blob_client(abfs_container, "dir/f0.bin")
        meta = blob.get_blob_properties().metadata
        meta["owner"] = "team a, 100%"
        blob.set_blob_metadata(meta)
    abfs.invalidate_cache()
    before = {p: abfs.cat_file(p) for p in files}
    user_meta = {p: {k: v for k, v in abfs.info(p)["metadata"].items() if not k.startswith("cmkfs_")} for p in files}
    assert user_meta[odd]["origin"] == "unit%20test"  # cmkfs percent-encodes what it writes
    assert blob_metadata(abfs, odd)["cmkfs_key_version"] == "1"
    vault.rotate("k")

    results = fs.rewrap(f"{abfs_container}/dir", recursive=True)
    assert [r.error for r in results] == [None] * 3 and all(r.new_version == "2" for r in results)
    abfs.invalidate_cache()
    for path, plain in files.items():
        assert split(abfs.cat_file(path))[1] == split(before[path])[1]
        meta = blob_metadata(abfs, path)
        assert meta["cmkfs_key_version"] == "2" and meta["cmkfs_plaintext_size"] == len(plain)
        after = abfs.info(path)["metadata"]
        assert {k: v for k, v in after.items() if not k.startswith("cmkfs_")} == user_meta[path]
    with azurite.service_client() as client:
        props = client.get_blob_client(abfs_container, "dir/f0.bin").get_blob_properties()
        assert props.metadata["owner"] == "team a, 100%"
        _, uncommitted = client.get_blob_client(abfs_container, f"dir/f{40 * SEG}.bin").get_block_list("uncommitted")
        assert not uncommitted

    vault.destroy("k", version="1")
    reader = new_fs(fs=abfs)
    assert all(reader.cat_file(p) == plain for p, plain in files.items())
    assert not fs.rewrap(odd).changed


# -- the command line ------------------------------------------------------------------


@pytest.fixture
def run():
    runner = CliRunner()

    def invoke(*args):
        result = runner.invoke(cli, list(args), catch_exceptions=False)
        assert "Traceback" not in result.output
        return result

    return invoke


def test_cli_recursive_json(vault, tmp_path, run):
    fs = new_fs()
    root = tmp_path / "cli"
    files = write_files(fs, str(root), [0, SEG + 1])
    (root / "sub").mkdir()
    fs.pipe_file(str(root / "sub" / "x.parquet"), b"PAR1")
    vault.rotate("k")
    url = f"cmk::file://{root}"

    dry = run("rewrap", url, "--recursive", "--dry-run", "--key", "local://k", "--verbose")
    assert dry.exit_code == 0 and "would re-wrap local://k v1 -> v2, authenticated" in dry.stdout
    assert "would re-wrap 3, unchanged 0, failed 0; 3 file(s) unwrapped and authenticated" in dry.stdout

    result = run("rewrap", url, "--recursive", "--json", "--key", "local://k")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["summary"] == {
        "files": 3,
        "rewrapped": 3,
        "unchanged": 0,
        "skipped_symlink": 0,
        "failed": 0,
        "dry_run": False,
        "bytes_written": sum(r["bytes_written"] for r in doc["files"]),
    }
    assert {(r["old_version"], r["new_version"], r["changed"]) for r in doc["files"]} == {("1", "2", True)}

    again = run("rewrap", str(root), "-r", "--key", "local://k", "-v")  # a plain path is a local one
    assert again.exit_code == 0 and "unchanged 3" in again.stdout and "unchanged (local://k v2)" in again.stdout

    not_dir = run("rewrap", url, "--key", "local://k")
    assert not_dir.exit_code == 1 and "--recursive" in not_dir.stderr

    (root / "plain.txt").write_bytes(b"plaintext")
    mixed = run("rewrap", url, "-r", "--key", "local://k")
    assert mixed.exit_code == EXIT_FORMAT and "plain.txt" in mixed.stderr and "failed 1" in mixed.stdout

    vault.disable("k")
    refused = run("rewrap", url, "-r", "--key", "local://k")
    assert refused.exit_code == EXIT_REVOKED and refused.stderr.count("\n") == 1

    bad = run("rewrap", url, "--storage-options", "[1]")
    assert bad.exit_code == 2
    vault.enable("k")
    for path, plain in files.items():
        assert new_fs().cat_file(path) == plain


def test_cli_subprocess(vault, tmp_path, isolated_cmkfs_home):
    fs = new_fs()
    root = tmp_path / "proc"
    files = write_files(fs, str(root), [1, 2 * SEG])
    vault.rotate("k")
    env = dict(os.environ, CMKFS_HOME=str(isolated_cmkfs_home), CMKFS_KEY="local://k")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cmkfs",
            "rewrap",
            f"cmk::file://{root}",
            "--recursive",
            "--json",
            "--storage-options",
            json.dumps({"cmk": {"cache_ttl": 0}}),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["summary"]["rewrapped"] == 2 and {r["new_version"] for r in doc["files"]} == {"2"}
    vault.destroy("k", version="1")
    assert all(new_fs().cat_file(p) == plain for p, plain in files.items())


# -- which key: the file's own, unless --key says otherwise -----------------------------------


def _key_of(path) -> tuple[str, str]:
    block = split(raw(path))[0].key_block
    return block.key_uri, block.key_version


def test_cli_rewrap_keeps_each_file_with_its_own_key(vault, tmp_path, run, isolated_cmkfs_home):
    # The recipe after `cmkfs keys rotate bulk`: files under bulk move to bulk's new version, never to the
    # default key (sales), and the output is a summary, not one line per file.
    vault.create("sales")
    vault.set_default("sales")
    vault.create("bulk")
    root = tmp_path / "store"
    bulk = write_files(new_fs(key="local://bulk"), str(root / "bulk"), [0, 10, SEG + 1])
    sales = write_files(new_fs(key="local://sales"), str(root / "sales"), [5])
    vault.rotate("bulk")

    result = run("rewrap", str(root), "-r")
    assert result.exit_code == 0, result.output
    assert result.stdout == "re-wrapped 3, unchanged 1, failed 0\n"
    assert {_key_of(p) for p in bulk} == {("local://bulk", "2")}
    assert {_key_of(p) for p in sales} == {("local://sales", "1")}
    for path, plain in {**bulk, **sales}.items():
        assert new_fs().cat_file(path) == plain

    vault.rotate("sales")
    verbose = run("rewrap", str(root), "-r", "-v")
    assert verbose.exit_code == 0 and "local://sales v1 -> v2" in verbose.stdout
    assert verbose.stdout.count("unchanged (local://bulk v2)") == 3
    doc = json.loads(run("rewrap", str(root), "-r", "--json").stdout)
    assert [f["path"] for f in doc["files"]] == sorted([*bulk, *sales])
    assert {f["outcome"] for f in doc["files"]} == {"unchanged"}

    # Another key only when asked, by bare name as in `cmkfs keys`.
    moved = run("rewrap", str(root / "bulk"), "-r", "--key", "sales")
    assert moved.exit_code == 0 and moved.stdout.startswith("re-wrapped 3,")
    assert {_key_of(p) for p in bulk} == {("local://sales", "2")}
    assert run("rewrap", str(root), "-r", "--key", "nope").exit_code == 3


def test_python_rewrap_without_key_uses_the_files_key(vault, tmp_path):
    vault.create("bulk")
    path = str(tmp_path / "b.bin")
    new_fs(key="local://bulk").pipe_file(path, b"bulk data")
    vault.rotate("bulk")
    fs = new_fs(key="local://k")  # the filesystem's own key is not where the file goes
    result = fs.rewrap(path)
    assert (result.old_key_uri, result.new_key_uri, result.new_version) == ("local://bulk", "local://bulk", "2")
    assert _key_of(path) == ("local://bulk", "2")
    assert [r.outcome for r in fs.rewrap(str(tmp_path), recursive=True)] == ["unchanged"]


# -- dry run proves every file ------------------------------------------------------------


def test_cli_dry_run_authenticates_every_file(vault, tmp_path, run):
    fs = new_fs()
    root = tmp_path / "dry"
    files = write_files(fs, str(root), [10, 3 * SEG + 5])
    good, big = f"{root}/f10.bin", f"{root}/f{3 * SEG + 5}.bin"
    before = {p: raw(p) for p in files}

    ok = run("rewrap", str(root), "-r", "--dry-run")
    assert ok.exit_code == 0 and ok.stdout.startswith("would re-wrap 0, unchanged 2, failed 0;")

    # A vault that cannot unwrap the files: not "unchanged".
    vault.disable("k")
    refused = run("rewrap", str(root), "-r", "--dry-run")
    assert refused.exit_code == EXIT_REVOKED and "failed 2" in refused.stdout
    assert refused.stderr.count("cmkfs: error:") == 3  # each file, then the summary
    vault.enable("k")

    # A damaged payload (a middle segment, not the header or the final segment): not "would re-wrap".
    vault.rotate("k")
    blob = bytearray(before[big])
    blob[read_header(BytesSource(bytes(blob))).length + SEG + 100] ^= 1
    with open(big, "wb") as f:
        f.write(blob)
    damaged = run("rewrap", str(root), "-r", "--dry-run", "--json")
    assert damaged.exit_code == EXIT_INTEGRITY
    outcome = {f["path"]: f for f in json.loads(damaged.stdout)["files"]}
    assert outcome[good]["outcome"] == "would_rewrap" and outcome[good]["verified"] is True
    assert outcome[big]["outcome"] == "failed" and outcome[big]["error"]["type"] == "IntegrityError"
    assert big in damaged.stderr and "failed authentication" in damaged.stderr
    assert raw(good) == before[good] and raw(big) == bytes(blob)  # a dry run writes nothing


# -- killed part-way: every file readable, the next run finishes ----------------------------


@pytest.mark.timeout(120)
def test_a_killed_rewrap_leaves_files_readable_and_a_second_run_finishes(vault, tmp_path, isolated_cmkfs_home):
    fs = new_fs()
    root = tmp_path / "many"
    files: dict[str, bytes] = {}
    root.mkdir()
    for i in range(400):
        path = f"{root}/part-{i:04d}.bin"
        files[path] = payload(100 + i, i)
    for path, plain in files.items():
        fs.pipe_file(path, plain)
    vault.rotate("k")
    env = dict(os.environ, CMKFS_HOME=str(isolated_cmkfs_home))
    argv = [sys.executable, "-m", "cmkfs", "rewrap", str(root), "-r", "--storage-options", '{"cmk": {"cache_ttl": 0}}']
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        done = 0
        while done < 20 and proc.poll() is None:
            done = sum(1 for p in sorted(files)[:40] if _key_of(p)[1] == "2")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the walk finished before it could be killed"
    versions = {p: _key_of(p)[1] for p in files}
    assert 20 <= sum(v == "2" for v in versions.values()) < len(files)
    reader = new_fs()
    for path, plain in files.items():
        assert reader.cat_file(path) == plain  # old or new form, never torn

    again = subprocess.run([*argv, "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)["summary"]
    assert summary["failed"] == 0 and summary["files"] == len(files)
    assert summary["unchanged"] == sum(v == "2" for v in versions.values())
    vault.destroy("k", version="1")
    reader = new_fs()
    assert all(reader.cat_file(p) == plain for p, plain in files.items())
    assert sorted(n for n in os.listdir(root) if not is_partial_name(n)) == sorted(os.path.basename(p) for p in files)


# -- errors name the user's path ----------------------------------------------------------


def test_integrity_errors_name_the_file(vault, tmp_path):
    fs = new_fs()
    root = tmp_path / "dataset"
    write_files(fs, str(root), [10, 3 * SEG + 5])
    damaged = f"{root}/f{3 * SEG + 5}.bin"
    blob = bytearray(raw(damaged))
    blob[read_header(BytesSource(bytes(blob))).length + SEG + 100] ^= 1  # a middle segment
    with open(damaged, "wb") as f:
        f.write(blob)
    reader = new_fs()
    for read in (
        lambda: reader.cat_file(damaged),
        lambda: reader.open(damaged, "rb").read(),
        lambda: reader.get_file(damaged, str(tmp_path / "out.bin")),
    ):
        with pytest.raises(IntegrityError) as info:
            read()
        assert str(info.value).startswith(f"{damaged}: encrypted file failed authentication")
        assert info.value.path == damaged
    assert not (tmp_path / "out.bin").exists()
    head = bytearray(raw(damaged))
    head[60] ^= 1  # the header: refused at open
    with open(damaged, "wb") as f:
        f.write(head)
    with pytest.raises(IntegrityError, match=f"^{re.escape(damaged)}: encrypted file failed"):
        new_fs().open(damaged, "rb")


def test_write_errors_name_the_path_not_the_temp_file(vault, tmp_path):
    path = str(tmp_path / "no-such-dir" / "sales.parquet")
    with pytest.raises(FileNotFoundError) as info:
        new_fs().pipe_file(path, b"data")
    assert info.value.filename == path and PARTIAL_MARKER not in str(info.value)


def test_a_partitioned_dataset_names_its_damaged_file(vault, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs = new_fs()
    root = tmp_path / "sales"
    fs.makedirs(str(root), exist_ok=True)
    for i in range(3):
        with fs.open(f"{root}/part-{i}.parquet", "wb") as f:
            pq.write_table(pa.table({"a": list(range(20_000))}), f)
    damaged = f"{root}/part-1.parquet"
    blob = bytearray(raw(damaged))
    blob[len(blob) // 2] ^= 1
    with open(damaged, "wb") as f:
        f.write(blob)
    with pytest.raises(IntegrityError, match=f"^{re.escape(damaged)}: encrypted file failed authentication"):
        pq.read_table(str(root), filesystem=new_fs())


def test_cli_rewrap_skips_symbolic_links(vault, tmp_path, run):
    fs = new_fs()
    target = tmp_path / "hr" / "file.bin"
    target.parent.mkdir()
    fs.pipe_file(str(target), b"hr data")
    (tmp_path / "sales").mkdir()
    link = tmp_path / "sales" / "link.bin"
    link.symlink_to(target)
    vault.rotate("k")
    result = run("rewrap", str(tmp_path / "sales"), "-r", "--json")
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(result.stdout)["files"]
    assert entry["outcome"] == "skipped_symlink" and json.loads(result.stdout)["summary"]["skipped_symlink"] == 1
    assert link.is_symlink() and _key_of(target) == ("local://k", "1")  # the link and its target as they were


def test_cli_rewrap_key_must_be_the_capacitys_unless_overridden(vault, tmp_path, run, isolated_cmkfs_home):
    from cmkfs.policy import load_policy

    vault.create("sales")
    vault.create("rogue")
    root = tmp_path / "sales"
    root.mkdir()
    policy = load_policy()
    policy.mode = "byok"
    policy.add("sales", str(root), "local://sales")
    policy.save()
    path = root / "own.bin"
    new_fs(key="local://sales").pipe_file(str(path), b"own")

    refused = run("rewrap", str(path), "--key", "rogue")
    assert refused.exit_code == 7, refused.output
    assert "cmkfs capacity assign sales local://rogue" in refused.stderr and "--override-policy" in refused.stderr
    assert _key_of(path) == ("local://sales", "1")
    assert run("rewrap", str(root), "-r", "--key", "sales").exit_code == 0  # the policy's own key is fine

    forced = run("rewrap", str(path), "--key", "rogue", "--override-policy")
    assert forced.exit_code == 0, forced.output
    assert _key_of(path) == ("local://rogue", "1")
