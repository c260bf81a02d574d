"""Shared by the tests of ``cmkfs status``, ``verify`` and ``clean``: the CLI runner and a store
with one file of every kind status tells apart (each test module wraps them in its fixtures)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import fsspec
from click.testing import CliRunner

from cmkfs.cli import cli
from cmkfs.format import HEADER_PREFIX_SIZE, MAGIC, Header, header_length_from_prefix

PARTIAL = ".late.bin.cmkfs-partial-0123456789abcdef"


def cli_runner():
    """``invoke(*args)``: the CLI through click's runner; never a traceback in the output."""
    runner = CliRunner()

    def invoke(*args: str):
        result = runner.invoke(cli, list(args), catch_exceptions=False)
        assert "Traceback" not in result.output
        return result

    return invoke


def as_json(result) -> dict:
    return json.loads(result.stdout)


def cmk_fs(key: str | None = None, **options):
    """A ``cmk`` filesystem over local disk, under the policy (or ``key``, overriding it)."""
    if key is not None:
        options |= {"key": key, "override_policy": True}
    return fsspec.filesystem("cmk", target_protocol="file", skip_instance_cache=True, **options)


def header_length(path: Path) -> int:
    return header_length_from_prefix(path.read_bytes()[:HEADER_PREFIX_SIZE])


def header_of(path: Path) -> Header:
    data = path.read_bytes()
    return Header.decode(data[: header_length_from_prefix(data[:HEADER_PREFIX_SIZE])])


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def age(path: Path, seconds: float) -> None:
    """Make ``path`` look last written ``seconds`` ago."""
    then = os.path.getmtime(path) - seconds
    os.utime(path, (then, then))


@dataclass
class Store:
    root: Path  # the capacity "sales"
    finance: Path  # workspace: current, older version, other key
    raw: Path  # workspace: plaintext, damaged header, partial file


def make_store(run, tmp_path: Path) -> Store:
    """Capacity ``sales`` (tenant key local://sales) with, in workspace ``finance``: a current file, a
    file under an older version of the key (written before ``keys rotate``) and one under
    local://other; in workspace ``raw``: a plaintext file, a file with a damaged header and a stray
    partial file of a killed writer."""
    root = tmp_path / "sales"
    assert run("keys", "create", "sales", "--default").exit_code == 0
    assert run("keys", "create", "other").exit_code == 0
    assert run("capacity", "add", "sales", str(root)).exit_code == 0
    (root / "finance").mkdir(parents=True)
    (root / "raw").mkdir()
    cmk_fs().pipe_file(str(root / "finance" / "old.bin"), os.urandom(300_000))
    assert run("keys", "rotate", "sales").stdout == "2\n"
    cmk_fs().pipe_file(str(root / "finance" / "new.bin"), os.urandom(5_000))
    cmk_fs("local://other").pipe_file(str(root / "finance" / "other.bin"), os.urandom(5_000))
    (root / "raw" / "plain.csv").write_text("region,amount\nnorth,12\n")
    cmk_fs().pipe_file(str(root / "raw" / "damaged.bin"), os.urandom(5_000))
    flip(root / "raw" / "damaged.bin", 40)  # inside the header: its checksum fails
    (root / "raw" / PARTIAL).write_bytes(MAGIC + os.urandom(992))  # a killed writer's: the magic, then whatever
    age(root / "raw" / PARTIAL, 3 * 86400)
    return Store(root, root / "finance", root / "raw")
